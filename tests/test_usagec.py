"""The usage members of an OpenAI stream found in C (fastgw/api/_usagec.c): its `drop_null_usage` is the Python
form's (`drop_null_usage_py`, two `bytes.replace`), byte for byte, its `first_empty_choices` is the least of two
`bytes.find`, its `count_data` counts the lines that begin with `data:`, and its `event_span` and `without` are the
relay's finds and slices, over hostile inputs; and without the C module the relay runs the Python forms."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.api import _usagec
from fastgw.api.sse import drop_null_usage_py
from fastgw.stream import _count_data_py, _event_span_py, _without_py

#: Pieces that make matches, near-matches, overlaps and joins (a cut that brings two halves of another together).
_PIECES = [b',"usage":null', b', "usage": null', b',"usage":nul', b'"usage":null', b',"usage": null', b", ",
           b',"usage":', b'null', b',', b'"', b'"choices":[]', b'"choices": []', b'"choices":[', b'"choices": [',
           b' []', b'[]', b'data: {"id":"x","choices":[{"delta":{"content":"hi"}}]', b'}\n\n', b'\xe2\x80\xa8', b'\x00']
_blocks = st.lists(st.sampled_from(_PIECES) | st.binary(max_size=12), max_size=40).map(b"".join)


def _first_py(data: bytes, start: int) -> int:
    hits = [i for i in (data.find(b'"choices":[]', start), data.find(b'"choices": []', start)) if i >= 0]
    return min(hits) if hits else -1


@settings(max_examples=600, deadline=None)
@given(data=_blocks)
def test_drop_null_usage_is_the_two_replaces(data: bytes) -> None:
    assert _usagec.drop_null_usage(data) == drop_null_usage_py(data)


@settings(max_examples=600, deadline=None)
@given(data=_blocks, start=st.integers(0, 600))
def test_first_empty_choices_is_the_least_of_two_finds(data: bytes, start: int) -> None:
    assert _usagec.first_empty_choices(data, start) == _first_py(data, start)


@settings(max_examples=600, deadline=None)
@given(data=st.lists(st.sampled_from([b"data:", b"data", b"ata:", b"d", b"dd", b":", b"data: [DONE]\n\n", b"\n",
                                      b"\r", b"\r\n", b"\n\n", b"\ndata", b'"data:"', b"event: x\n"])
                     | st.binary(max_size=8), max_size=40).map(b"".join))
def test_count_data_counts_the_data_lines(data: bytes) -> None:
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    assert _usagec.count_data(data) == _count_data_py(data) == sum(ln.startswith(b"data:") for ln in lines)


@settings(max_examples=600, deadline=None)
@given(data=st.lists(st.sampled_from([b"\n", b"\n\n", b"\n\n\n", b"\r\n", b"x", b"data: {}", b'"choices":[]']),
                     max_size=30).map(b"".join), i=st.integers(0, 400), j=st.integers(0, 400))
def test_event_span_and_without_are_the_finds_and_the_slices(data: bytes, i: int, j: int) -> None:
    i %= len(data) + 1
    assert _usagec.event_span(data, i) == _event_span_py(data, i)
    start, end = sorted((i, j % (len(data) + 1)))
    assert _usagec.without(data, start, end) == _without_py(data, start, end) == data[:start] + data[end:]


def test_a_data_inside_an_events_json_is_no_event() -> None:
    """The usage estimate counts events: content that spells `data:` (or a whole fake event) adds none."""
    block = (b'data: {"choices":[{"delta":{"content":"data: data:\\n\\ndata: x"}}]}\n\n'
             b'event: message\r\ndata: {"a":"data:"}\r\n\r\ndata: [DONE]\n\n')
    assert _usagec.count_data(block) == _count_data_py(block) == 3
    assert block.count(b"data:") == 7


def test_the_stream_as_the_mock_writes_it() -> None:
    """The mock's 53-event answer with usage (one null member per chunk, the usage chunk before [DONE])."""
    event = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"ab"}}],' \
            b'"usage":null}\n\n'
    usage = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":50}}\n\n'
    block = event * 52 + usage + b"data: [DONE]\n\n"
    out = _usagec.drop_null_usage(block)
    assert out == drop_null_usage_py(block) and out.count(b'"usage":null') == 0 and out.count(b"usage") == 1
    assert _usagec.first_empty_choices(block) == block.index(b'"choices":[]')
    assert _usagec.first_empty_choices(block, block.index(b'"choices":[]') + 1) == -1
    assert _usagec.count_data(block) == 54 == block.count(b"data:") == _count_data_py(block)
    at = block.index(b'"choices":[]')
    assert _usagec.event_span(block, at) == (len(event) * 52, len(event) * 52 + len(usage))
    assert _usagec.without(block, *_usagec.event_span(block, at)) == event * 52 + b"data: [DONE]\n\n"
    plain = event.replace(b',"usage":null', b"")
    assert _usagec.drop_null_usage(plain) is plain  # nothing cut: the same object, as bytes.replace gives


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(TypeError):
        _usagec.drop_null_usage("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _usagec.count_data(memoryview(b"data:"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _usagec.first_empty_choices(bytearray(b"x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _usagec.first_empty_choices(b"x", -1)
    assert _usagec.first_empty_choices(b'"choices":[]', 99) == -1
    for i in (-1, 4):
        with pytest.raises(ValueError):
            _usagec.event_span(b"abc", i)
    for start, end in ((-1, 0), (2, 1), (0, 4)):
        with pytest.raises(ValueError):
            _usagec.without(b"abc", start, end)
    with pytest.raises(TypeError):
        _usagec.without(b"abc", 0)  # type: ignore[call-arg]


def test_without_the_c_module_the_python_forms_run() -> None:
    script = """
import sys
sys.modules["fastgw.api._usagec"] = None  # an import of a module that is not built: ImportError
from fastgw import stream
from fastgw.api import sse
assert sse.drop_null_usage is sse.drop_null_usage_py
assert type(stream._first_empty_choices.__self__).__name__ == "Literals"
assert stream._first_empty_choices(b'xx"choices": []', 0) == 2
assert stream._count_data is stream._count_data_py and stream._count_data(b"data: 1\\n\\ndata: 2") == 2
assert stream._event_span is stream._event_span_py and stream._without is stream._without_py
print("python forms ok")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "python forms ok" in run.stdout, run.stdout + run.stderr
