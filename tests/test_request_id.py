"""Every answer names its request (issue 17): `x-request-id` on 404, 405, /healthz and /readyz as on /v1 answers,
each a different id, and a client's own sane id echoed."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import uvloop

from fastgw.app import App, build_targets
from fastgw.config import Config, Pack, Providers, Target
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


def test_fresh_ids_are_the_counts_in_hex() -> None:
    """A fresh id is `req_<worker prefix><count, 6 hex digits at least>`, whose high digits are formatted once per 256
    ids: the same ids the whole format gives, across the low byte's wrap and past six digits, none twice."""
    cfg = Config(pack=Pack(name="t"), providers=Providers(targets=[Target(id="m", provider="mock", model="mock-1")]))
    loop = uvloop.new_event_loop()
    try:
        app = App(cfg, build_targets(cfg, {}), loop)
        prefix = app._id_prefix
        got = [app._fresh_id() for _ in range(3 * 256 + 7)]
        assert got == ["req_%s%06x" % (prefix, n) for n in range(1, 3 * 256 + 8)]
        app._id_count = 0xFFFF00  # (a multiple of 256, as the count is at a wrap)
        past = [app._fresh_id() for _ in range(600)]
        assert past == ["req_%s%06x" % (prefix, n) for n in range(0xFFFF00, 0xFFFF00 + 600)]
        assert past[256] == "req_%s1000000" % prefix and len(set(got + past)) == len(got) + len(past)
    finally:
        loop.close()
