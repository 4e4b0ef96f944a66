"""The access log cannot be used against the operator (issue 15, item 4): every response gets a line with the
peer's address (refusals and protocol errors included), client strings are capped at 256 bytes with their
length noted and pass PII redaction, no client byte can forge a line, X-Forwarded-For counts only from trusted
proxies, and a file is rotated by size.

Bounds stated: a `GET /v1/models/<65,000 x A>` costs one access line under 1 KB (the issue: a 65 KB line);
a 1 MB model name one line under 1 KB; nothing else is written for either (no warning, no traceback).
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from fastgw.api.limits import ACCESS_LOG_BATCH_LINES
from tests.abuse import gateway as G

H = b"Host: x\r\n"
AUTH = b"Authorization: Bearer " + G.KEY.encode() + b"\r\n"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    from tests.conftest import GatewayFactory

    factory = GatewayFactory(tmp_path_factory.mktemp("conn-accesslog"))
    try:
        cfg = G.config(header_timeout=1, max_header_bytes=80_000, max_body_bytes=2_000_000,
                       metrics_token_ref={"env": "FASTGW_TEST_METRICS_TOKEN"})
        yield factory.start(cfg, env={"FASTGW_TEST_METRICS_TOKEN": "scrape"})
    finally:
        factory.close()


def _line_for(gw, marker: str, timeout: float = 5.0) -> dict:  # noqa: ANN001
    """The access line whose request id is `marker` (sent as x-request-id)."""
    found: list[dict] = []

    def seen() -> bool:
        found[:] = [ln for ln in G.access_lines(gw) if ln.get("request_id") == marker]
        return bool(found)

    assert G.wait_for(seen, timeout), f"no access line for {marker}"
    assert len(found) == 1, found
    return found[0]


def _lines_since(gw, n: int, want: int, timeout: float = 5.0) -> list[dict]:  # noqa: ANN001
    G.wait_for(lambda: len(G.access_lines(gw)) >= n + want, timeout)
    return G.access_lines(gw)[n:]


@pytest.mark.parametrize("name, raw, status, error", [
    ("no-host", b"GET /v1/models HTTP/1.1\r\n\r\n", 400, "bad_host"),
    ("unknown", b"GET /nope HTTP/1.1\r\n" + H + b"\r\n", 404, "unknown_url"),
    ("method", b"DELETE /v1/models HTTP/1.1\r\n" + H + b"\r\n", 405, "method_not_allowed"),
    ("too-large", b"POST /v1/chat/completions HTTP/1.1\r\n" + H + AUTH + b"Content-Length: 9000000\r\n\r\n", 413,
     "request_too_large"),
    ("header-fields", b"GET /v1/models HTTP/1.1\r\n" + H + b"X: " + b"a" * 90_000 + b"\r\n\r\n", 431,
     "request_header_fields_too_large"),
    ("metrics", b"GET /metrics HTTP/1.1\r\n" + H + b"\r\n", 401, "invalid_api_key"),
    ("keyless", b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\n", 401,
     "invalid_api_key"),
    ("http09", b"GET /healthz\n", 400, "unsupported_http_version"),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported"),
    ("head-timeout", b"GET /v1/models HTTP/1.1\r\n", 408, "request_timeout"),
])
def test_every_response_gets_a_line_with_the_peer(gw, name, raw, status, error):
    before = len(G.access_lines(gw))
    body = None
    with G.connect(gw) as s:
        s.sendall(raw)
        if status in (505, 408):
            G.closed_soon(s, 4)
        else:
            body = G.read_response(s)[2]
    lines = _lines_since(gw, before, 1)
    assert [(ln["status"], ln["error"]) for ln in lines] == [(status, error)], name
    assert lines[0]["client"] == "127.0.0.1"
    if body is not None:  # the bytes of the body sent, not 0 (issue 17)
        assert lines[0]["bytes"] == len(body) > 0, name


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}', 404),
    (b'{"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}', 200),
])
def test_the_line_counts_the_bytes_of_error_answers_and_whole_answers_tokens(gw, body, status):
    marker = f"req-bytes-{status}"
    raw = (b"POST /v1/chat/completions HTTP/1.1\r\n" + H + AUTH + b"x-request-id: " + marker.encode() + b"\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    got, _, answer = G.request(gw, raw)
    assert got == status
    line = _line_for(gw, marker)
    assert line["status"] == status and line["bytes"] == len(answer) > 0
    if status == 200:  # a whole (non-streamed) answer's usage is on its line
        assert line["tokens"]["prompt"] > 0 and line["tokens"]["completion"] > 0


def test_a_successful_probe_is_not_logged_but_a_failed_one_would_be(gw):
    before = len(G.access_lines(gw))
    for _ in range(5):
        assert G.request(gw, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
    G.request(gw, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    lines = _lines_since(gw, before, 1)
    assert [ln["route"] for ln in lines] == ["/nope"]


def test_a_65kb_path_costs_one_short_line_and_a_short_answer(gw):
    err_before = len(gw.stderr_text())
    raw = b"GET /v1/models/" + b"A" * 65000 + b" HTTP/1.1\r\nHost: x\r\nx-request-id: long-path-1\r\n" + AUTH + b"\r\n"
    with G.connect(gw) as s:
        s.sendall(raw)
        status, _, body = G.read_response(s)
    assert status == 404 and len(body) < 1024
    line = _line_for(gw, "long-path-1")
    # Cut, and what is kept redacted (a 65,000-character run reads as an opaque token to the secret patterns).
    assert line["route_len"] == len("/v1/models/") + 65000 and line["route"].startswith("/v1/models/")
    assert len(line["route"].encode()) <= 256
    grown = len(gw.stderr_text()) - err_before
    assert grown < 1024, f"{grown} bytes of log for one hostile request"


def test_a_1mb_model_name_costs_one_short_line(gw):
    err_before = len(gw.stderr_text())
    body = orjson.dumps({"model": "M" * 1_000_000, "messages": [{"role": "user", "content": "hi"}]})
    status, _, payload = G.request(gw, G.chat_request(body, extra=b"x-request-id: long-model-1\r\n"), timeout=10)
    assert status == 404 and len(payload) < 2048
    line = _line_for(gw, "long-model-1")
    assert line["model_len"] == 1_000_000 and len(line["model"].encode()) <= 256
    grown = len(gw.stderr_text()) - err_before
    assert grown < 1024, f"{grown} bytes of log for one hostile request"


def test_keys_and_addresses_in_paths_and_models_are_redacted(gw):
    secret = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e"
    G.request(gw, b"GET /v1/models/" + secret.encode() + b" HTTP/1.1\r\nHost: x\r\nx-request-id: redact-1\r\n"
              + AUTH + b"\r\n")
    body = orjson.dumps({"model": "alice.smith@example.com", "messages": [{"role": "user", "content": "hi"}]})
    G.request(gw, G.chat_request(body, extra=b"x-request-id: redact-2\r\n"))
    line1, line2 = _line_for(gw, "redact-1"), _line_for(gw, "redact-2")
    assert line1["route"].startswith("/v1/models/") and "REDACTED" in line1["route"]
    assert "REDACTED" in line2["model"]
    text = gw.stderr_text()
    assert "sk-live" not in text and "alice.smith" not in text


def test_the_pii_detector_redacts_model_names_when_the_chain_has_one(gateway_factory):
    gw = gateway_factory.start(G.config(pii=True))
    body = orjson.dumps({"model": "card 4111 1111 1111 1111", "messages": [{"role": "user", "content": "hi"}]})
    G.request(gw, G.chat_request(body, extra=b"x-request-id: pii-1\r\n"))
    line = _line_for(gw, "pii-1")
    assert "4111" not in line["model"] and "REDACTED" in line["model"]
    assert "4111 1111" not in gw.stderr_text()


def test_a_newline_in_a_model_name_cannot_forge_a_text_line(gateway_factory):
    gw = gateway_factory.start(G.config(), extra_args=["--access-log", "text"])
    forged = 'x\n2030-01-01T00:00:00.000Z req_forged admin POST /v1/chat/completions 200 model=gpt-4o'
    body = orjson.dumps({"model": forged + "\u2028\r\x85y", "messages": [{"role": "user", "content": "hi"}]})
    assert G.request(gw, G.chat_request(body, extra=b"x-request-id: text-1\r\n"))[0] == 404
    assert G.wait_for(lambda: "text-1" in gw.stderr_text(), 5)
    lines = [ln for ln in gw.stderr_text().splitlines() if "text-1" in ln or "req_forged" in ln]
    assert len(lines) == 1, lines
    assert ' model="x\\n2030' in lines[0] and "\\u2028\\r\\u0085y\"" in lines[0]  # quoted, escaped
    assert not any(ln.startswith("2030-01-01") for ln in gw.stderr_text().splitlines())


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(gateway_factory):
    trusting = gateway_factory.start(G.config(rbac=False, trusted_proxies=["127.0.0.1", "10.0.0.0/8"]))
    xff = b"X-Forwarded-For: 203.0.113.9, 198.51.100.7\r\nX-Forwarded-For: 10.1.2.3\r\n"
    G.request(trusting, b"GET /nope HTTP/1.1\r\nHost: x\r\nx-request-id: xff-1\r\n" + xff + b"\r\n")
    line = _line_for(trusting, "xff-1")
    assert line["client"] == "198.51.100.7"  # the rightmost address that is not a trusted proxy
    assert line["forwarded"] == "203.0.113.9, 198.51.100.7,10.1.2.3"
    plain = gateway_factory.start(G.config(rbac=False))
    G.request(plain, b"GET /nope HTTP/1.1\r\nHost: x\r\nx-request-id: xff-2\r\n" + xff + b"\r\n")
    line = _line_for(plain, "xff-2")
    assert line["client"] == "127.0.0.1" and "forwarded" not in line
    long_chain = b"X-Forwarded-For: " + b"1.1.1.1, " * 500 + b"\r\n"
    G.request(trusting, b"GET /nope HTTP/1.1\r\nHost: x\r\nx-request-id: xff-3\r\n" + long_chain + b"\r\n")
    line = _line_for(trusting, "xff-3")
    assert line["forwarded_len"] == len((b"1.1.1.1, " * 500).rstrip())
    assert len(line["forwarded"].encode()) <= 256


def test_the_access_file_is_rotated_by_size_across_workers(gateway_factory, tmp_path: Path):
    path = tmp_path / "logs" / "access.log"
    path.parent.mkdir()
    gw = G.start(gateway_factory, G.config(rbac=False, access_log={"path": str(path), "max_bytes": 20_000,
                                                                   "backups": 2}), workers=2)
    n = 0
    end = time.monotonic() + 3
    while time.monotonic() < end and n < 600:
        with G.connect(gw) as s:  # a new connection each time: both workers take some
            s.sendall(b"GET /nope-%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
            G.read_response(s)
        n += 1
    time.sleep(0.3)
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["access.log", "access.log.1", "access.log.2"], names
    routes = set()
    files = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    longest = max(len(ln) + 1 for data in files.values() for ln in data.splitlines())
    # A file ends below max_bytes before the write that crosses it, and each worker writes at most once more
    # (one batch: ACCESS_LOG_BATCH_LINES lines at most) before it follows the rotation. How many lines a batch
    # holds depends on how many responses end in ACCESS_LOG_FLUSH_DELAY, which a slow box can stretch; the
    # exact bound in writes is held by test_rotating_file_shared_by_two_processes.
    for name, data in files.items():
        assert len(data) < 20_000 + 2 * ACCESS_LOG_BATCH_LINES * longest, name
        for ln in data.decode().splitlines():
            routes.add(orjson.loads(ln)["route"])  # whole lines only: no two workers' lines interleaved
    assert len(files["access.log.1"]) >= 20_000 and len(files["access.log.2"]) >= 20_000  # rotated by size
    assert f"/nope-{n - 1}" in routes
    assert "/nope-0" not in routes  # the oldest went with the file beyond `backups`
    assert not [ln for ln in gw.stderr_text().splitlines() if ln.startswith("{")]  # none on stdout


# ---- the pieces, in process ----------------------------------------------------------------------------------

def test_cap_cuts_at_a_character_boundary_and_notes_the_length():
    from fastgw import accesslog

    assert accesslog.cap("short") == ("short", None)
    value, n = accesslog.cap("é" * 1000)
    assert n == 2000 and value.endswith("…") and len(value.encode()) <= 256
    value.encode("utf-8")  # no half character


def test_json_lines_escape_what_line_splitters_break_on():
    from fastgw import accesslog

    line = accesslog._json({"model": "a\u2028b\x85c\x7fd\ne"})
    assert len(line.splitlines()) == 1 and "\\u2028" in line and "\\n" in line


def test_rotating_file_shared_by_two_processes(tmp_path: Path):
    import multiprocessing

    from fastgw.accesslog import RotatingFile

    path = tmp_path / "a.log"

    def writer(tag: str) -> None:
        f = RotatingFile(str(path), 4096, 3)
        for i in range(400):
            f.write(orjson.dumps({"w": tag, "i": i}).decode() + "\n")

    procs = [multiprocessing.get_context("fork").Process(target=writer, args=(t,)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == ["a.log", "a.log.1", "a.log.2", "a.log.3"]
    for p in files:
        assert p.stat().st_size <= 4096 + 64
        for ln in p.read_text().splitlines():
            orjson.loads(ln)  # whole lines only


def test_a_key_straddling_the_cut_is_redacted_whole():
    from fastgw import accesslog

    rec: dict = {}
    key = "sk-live-" + "9f3a" * 10
    accesslog._client_string(rec, "route", "/v1/models/" + "a/" * 110 + key + "/x" * 200, True)
    assert "9f3a" not in rec["route"] and rec["route_len"] > 256 and len(rec["route"].encode()) <= 256
