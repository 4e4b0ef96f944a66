"""Every answer names its request (issue 17): `x-request-id` on 404, 405, /healthz and /readyz as on /v1 answers,
each a different id, and a client's own sane id echoed."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from tests.support.procs import start_gateway


def _id(base: str, method: str, path: str, given: str | None = None) -> tuple[int, str | None]:
    req = urllib.request.Request(base + path, method=method, headers={"x-request-id": given} if given else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("x-request-id")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-request-id")


def test_every_answer_carries_a_request_id(tmp_path: Path) -> None:
    gw = start_gateway({"pack": {"name": "t"}, "providers": {"targets": [
        {"id": "m", "provider": "mock", "model": "mock-1"}]}}, tmp_path)
    try:
        got = [_id(gw.base, m, p) for m, p in (("GET", "/nope"), ("DELETE", "/v1/chat/completions"),
                                                ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v1/models"))]
        assert [s for s, _ in got] == [404, 405, 200, 200, 200]
        ids = [i for _, i in got]
        assert all(ids) and len(set(ids)) == len(ids)
        assert _id(gw.base, "GET", "/healthz", "trace-abc123") == (200, "trace-abc123")
    finally:
        gw.stop()
