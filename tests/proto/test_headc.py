"""The response head written in C (fastgw/proto/_headc.c) is the Python form's (`build_head_py`) byte for byte over
hostile headers, refuses the same injected heads with the same error, hands what it does not take to the Python form,
and writes the Date `email.utils.formatdate` does; without the module the writer runs the Python form."""

from __future__ import annotations

import subprocess
import sys
import time
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.proto import _headc, writer
from fastgw.proto.writer import _REASONS, build_head, build_head_py

#: Bytes of names and values: the forbidden three, their neighbours, separators, UTF-8 and Latin-1.
_field = st.lists(st.sampled_from([b"a", b"Z", b"-", b" ", b":", b"\t", b"\r", b"\n", b"\x00", b"\x0b", b"\x0c",
                                   b"\x0e", b"\r\n", b"\xff", b"\xc3\xa9", b"content-length"]) | st.binary(max_size=6),
                  max_size=8).map(b"".join)
_pairs = st.lists(st.tuples(_field, _field), max_size=6)
_status = st.sampled_from(sorted(_REASONS)) | st.integers(100, 999)
_framing = st.sampled_from([b"", b"content-length: 0\r\n", b"content-length: 1234567\r\n",
                            b"transfer-encoding: chunked\r\n"])


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    """What a call gives: ("ok", head with its Date value as "D") or ("error", type, message). The Date is the
    clock's (test_the_date_is_formatdates); here the two forms may read it a second apart."""
    try:
        head = fn(*args)
    except Exception as e:  # noqa: BLE001 - the two forms must fail alike
        return ("error", type(e), str(e))
    if head is None:
        return ("ok", None)
    start = head.index(b"\r\ndate: ") + 8
    return ("ok", head[:start] + b"D" + head[head.index(b"\r\n", start):])


@settings(max_examples=400, deadline=None)
@given(status=_status, headers=_pairs, extra=_pairs, framing=_framing, keep_alive=st.booleans())
def test_the_c_head_is_the_python_head(status: int, headers: list, extra: list, framing: bytes,
                                       keep_alive: bool) -> None:
    c = _outcome(_headc.head, status, _REASONS.get(status, b"Unknown"), headers, extra, framing, keep_alive)
    assert c == _outcome(build_head_py, status, headers, extra, framing, keep_alive)
    assert c == _outcome(build_head, status, headers, extra, framing, keep_alive)
    bad = any(ch in f for n, v in headers + extra for f in (n, v) for ch in (b"\r", b"\n", b"\x00"))
    assert (c[0] == "error") == bad
    if bad:
        assert c[1] is ValueError and c[2].startswith("invalid header ")


def test_the_head_as_a_client_reads_it() -> None:
    head = _headc.head(200, b"OK", [(b"content-type", b"application/json"), (b"x-request-id", b"req_1")],
                       [(b"x-ratelimit-remaining", b"9")], b"content-length: 2\r\n", True)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK" and lines[1].startswith(b"date: ") and lines[2] == b"server: fastgw"
    assert lines[3:8] == [b"content-type: application/json", b"x-request-id: req_1", b"x-ratelimit-remaining: 9",
                          b"content-length: 2", b"connection: keep-alive"]
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n") == 9
    closing = _headc.head(503, b"Service Unavailable", [], [], b"", False)
    assert closing.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert closing.endswith(b"\r\nserver: fastgw\r\nconnection: close\r\n\r\n")
    # An upstream's status the table does not name keeps its number (the writer passes b"Unknown").
    assert build_head(418, [], [], b"", True).startswith(b"HTTP/1.1 418 Unknown\r\n")


def test_the_date_is_formatdates() -> None:
    for _ in range(3):
        before = int(time.time())
        head = _headc.head(200, b"OK", [], [], b"", True)
        if int(time.time()) == before:
            break
    value = head.split(b"\r\n")[1]
    assert value == b"date: " + formatdate(before, usegmt=True).encode()
    assert len(value) == 35 and value.endswith(b" GMT")


@pytest.mark.parametrize("headers, extra", [
    ([[b"x", b"y"]], []),                          # a list, not a tuple
    ([(b"x", b"y", b"z")], []),                     # three items
    ([(b"x", bytearray(b"y"))], []),                # not bytes
    ([], [(memoryview(b"x"), b"y")]),
    ((( b"x", b"y"),), []),                         # a tuple of pairs, not a list
])
def test_what_only_the_python_form_takes_goes_to_it(headers, extra) -> None:  # type: ignore[no-untyped-def]
    assert _headc.head(200, b"OK", headers, extra, b"", True) is None
    assert _outcome(build_head, 200, headers, extra, b"", True) == _outcome(build_head_py, 200, headers, extra, b"",
                                                                               True)


@pytest.mark.parametrize("status", [99, 1000, -200, 2 ** 70, True])
def test_a_status_outside_three_digits_goes_to_the_python_form(status: int) -> None:
    assert _headc.head(status, b"Unknown", [], [], b"", True) is None
    assert build_head(status, [], [], b"", True).startswith(b"HTTP/1.1 %d Unknown\r\n" % status)


def test_an_injected_header_before_a_shape_only_python_takes_is_refused_alike() -> None:
    headers = [(b"x", b"a\r\nset-cookie: evil"), [b"y", b"z"]]
    with pytest.raises(ValueError, match=r"invalid header b'x'"):
        _headc.head(200, b"OK", headers, [], b"", True)
    with pytest.raises(ValueError, match=r"invalid header b'x'"):
        build_head_py(200, headers, [], b"", True)


@pytest.mark.parametrize("args", [(), (200, b"OK", [], [], b""), ("200", b"OK", [], [], b"", True),
                                  (200, "OK", [], [], b"", True), (200, b"OK", [], [], "", True)])
def test_wrong_calls_are_type_errors(args: tuple) -> None:
    with pytest.raises(TypeError):
        _headc.head(*args)


def test_the_writer_uses_the_c_head() -> None:
    assert writer._c_head is _headc.head


def test_without_the_c_module_the_python_form_runs() -> None:
    script = """
import sys
sys.modules["fastgw.proto._headc"] = None  # an import of a module that is not built: ImportError
from fastgw.proto import writer
assert writer._c_head is None
head = writer.build_head(201, [(b"a", b"b")], [], b"content-length: 0\\r\\n", False)
assert head.startswith(b"HTTP/1.1 201 Created\\r\\ndate: ") and head.endswith(b"a: b\\r\\ncontent-length: 0\\r\\n"
                                                                           b"connection: close\\r\\n\\r\\n"), head
try:
    writer.build_head(200, [(b"a", b"b\\n")], [], b"", True)
except ValueError as e:
    assert str(e) == "invalid header b'a'"
else:
    raise AssertionError("injected")
print("python form ok")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "python form ok" in run.stdout, run.stdout + run.stderr
