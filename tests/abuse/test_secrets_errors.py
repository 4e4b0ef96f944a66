"""Nothing of the operator's leaks through errors (issue 15, item 6): an upstream 401/403 is a 502
`upstream_auth_error` without the upstream's text (OpenAI's quotes the last characters of the operator's key);
relayed upstream errors lose organization/project ids and key-shaped strings; the operator's organization header
is not passed on; a connect error names the target id, never its address."""

from __future__ import annotations

import asyncio
import socket
import ssl

import orjson
import pytest

from fastgw.api.errors import UpstreamAuthError, UpstreamConnectError, from_transport
from fastgw.attempt import scrub, upstream_error_answer
from fastgw.proto.client import ConnectFailed, UpstreamPool
from fastgw.providers.base import TargetRuntime
from tests.abuse._h3support import OPERATOR_KEY, CannedUpstream, chat, request
from tests.conftest import GatewayFactory
from tests.support.procs import free_port

JSON = {"content-type": "application/json"}


def _connect_failed(cause: BaseException) -> ConnectFailed:
    """A ConnectFailed raised as proto.client raises it: worded with the address, `from None`, cause in context."""
    try:
        try:
            raise cause
        except BaseException:
            raise ConnectFailed("cannot connect to 10.1.2.3:18699: Connect call failed ('10.1.2.3', 18699)") from None
    except ConnectFailed as e:
        return e


@pytest.mark.parametrize("cause, reason", [
    (ConnectionRefusedError(111, "Connect call failed ('10.1.2.3', 18699)"), "connection refused"),
    (TimeoutError(), "connect timed out"),
    (socket.gaierror(-2, "Name or service not known"), "cannot resolve its host name"),
    (ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] hostname mismatch for 10.1.2.3"),
     "TLS handshake failed"),
])
def test_connect_errors_name_the_target_not_its_address(cause: BaseException, reason: str) -> None:
    err = from_transport(_connect_failed(cause), "openai")
    assert isinstance(err, UpstreamConnectError) and err.status == 502
    assert err.message.startswith(f"cannot connect to target 'openai': {reason}")
    assert "10.1.2.3" not in err.message and "18699" not in err.message


def test_a_real_refused_connect_names_the_target_only() -> None:
    port = free_port()

    async def go() -> ConnectFailed:
        pool = UpstreamPool(asyncio.get_running_loop())
        with pytest.raises(ConnectFailed) as e:
            await pool.exchange(("http", "127.0.0.1", port), b"GET / HTTP/1.1\r\n\r\n", connect_timeout=2,
                                head_timeout=2)
        return e.value

    exc = asyncio.run(go())
    assert str(port) in str(exc)  # proto.client's own wording has it ...
    err = from_transport(exc, "openai")
    assert err.message == "cannot connect to target 'openai': connection refused"  # ... the client's has not
    assert "127.0.0.1" not in err.body().decode() and str(port) not in err.body().decode()


def test_scrub_takes_out_account_ids_and_the_key() -> None:
    target = TargetRuntime(id="openai", provider="openai", model="m", api_key=OPERATOR_KEY)
    body = orjson.dumps({"error": {"message": f"key {OPERATOR_KEY} or sk-proj-****9f3a in org-OPERATORORG123 "
                                              "project proj_OPERATORPROJ42; a task-force is no key",
                                   "type": "x"}})
    out = scrub(body, target).decode()
    for leak in (OPERATOR_KEY, "9f3a", "OPERATORORG", "OPERATORPROJ"):
        assert leak not in out
    assert "task-force is no key" in out
    orjson.loads(out)  # still the upstream's JSON envelope
    answer = upstream_error_answer(502, b"<html>internal-lb-7.corp.example</html>", [], target)
    assert b"corp.example" not in answer.body and b"target 'openai'" in answer.body


def test_upstream_auth_error_is_a_502_without_key_material() -> None:
    err = UpstreamAuthError("openai", 401)
    body = orjson.loads(err.body())["error"]
    assert err.status == 502 and body["code"] == "upstream_auth_error" and body["type"] == "upstream_error"
    assert "'openai'" in body["message"] and "401" in body["message"]


# ---- through a gateway ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    up = CannedUpstream()
    dead = free_port()
    targets = [{"id": name, "provider": "openai", "model": name, "base_url": up.url,
                "secret_key_ref": {"env": "H3_OPERATOR_KEY"}} for name in ("auth-401", "auth-403", "rate-429",
                                                                           "proxy-502", "ok")]
    targets += [{"id": "dead", "provider": "openai", "model": "dead-model", "base_url": f"http://127.0.0.1:{dead}/v1"},
                # a model served by a target whose key is refused, then by a good one: the fallback answers
                {"id": "bad-key", "provider": "openai", "model": "fallback-model", "base_url": up.url,
                 "secret_key_ref": {"env": "H3_OPERATOR_KEY"}},
                {"id": "good-key", "provider": "openai", "model": "fallback-model", "base_url": up.url}]
    f = GatewayFactory(tmp_path_factory.mktemp("secrets"))
    gw = f.start({"pack": {"name": "t"}, "providers": {"targets": targets}}, env={"H3_OPERATOR_KEY": OPERATOR_KEY})
    try:
        yield gw, up, dead
    finally:
        f.close()
        up.stop()


@pytest.mark.parametrize("model, status", [("auth-401", 401), ("auth-403", 403)])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_401_403_is_a_502_upstream_auth_error(stack, model: str, status: int, stream: bool) -> None:
    gw, _, _ = stack
    got, headers, body = request(gw.base, "POST", "/v1/chat/completions", chat(model, stream=stream), JSON)
    assert got == 502
    err = orjson.loads(body)["error"]
    assert err["code"] == "upstream_auth_error" and err["type"] == "upstream_error"
    assert f"target {model!r}" in err["message"] and f"HTTP {status}" in err["message"]
    for leak in (b"9f3a", b"sk-", b"OPERATOR", b"invalid_api_key", b"platform.openai.com"):
        assert leak not in body
    assert "openai-organization" not in headers
    assert headers.get("x-should-retry") == "false"
    assert f"target {model} refused the gateway's credentials (HTTP {status})" in gw.stderr_text()


def test_relayed_upstream_errors_lose_the_organization(stack) -> None:
    gw, _, _ = stack
    status, headers, body = request(gw.base, "POST", "/v1/chat/completions", chat("rate-429"), JSON)
    assert status == 429 and headers.get("retry-after") == "20"  # what the SDKs need stays
    assert b"OPERATORORG" not in body and b"[redacted]" in body and b"Rate limit reached" in body
    assert "openai-organization" not in headers
    status, headers, body = request(gw.base, "POST", "/v1/chat/completions", chat("ok"), JSON)
    assert status == 200 and "openai-organization" not in headers


def test_a_proxy_page_is_not_relayed(stack) -> None:
    gw, _, _ = stack
    status, _, body = request(gw.base, "POST", "/v1/chat/completions", chat("proxy-502"), JSON)
    assert status == 502 and b"corp.example" not in body and b"8443" not in body
    assert orjson.loads(body)["error"]["message"] == "target 'proxy-502' answered HTTP 502 without an error envelope"


def test_a_dead_upstream_is_named_by_its_target_id(stack) -> None:
    gw, _, dead = stack
    status, _, body = request(gw.base, "POST", "/v1/chat/completions", chat("dead-model"), JSON)
    err = orjson.loads(body)["error"]
    assert status == 502 and err["code"] == "upstream_connect_error"
    assert err["message"] == "cannot connect to target 'dead': connection refused"
    assert b"127.0.0.1" not in body and str(dead).encode() not in body


def test_a_refused_key_falls_back_to_the_next_target(stack) -> None:
    gw, up, _ = stack
    before = len(up.seen)
    status, _, body = request(gw.base, "POST", "/v1/chat/completions", chat("fallback-model"), JSON)
    assert status == 200 and orjson.loads(body)["choices"][0]["message"]["content"] == "canned answer"
    tried = [dict(r["headers"]).get("authorization") for r in up.seen[before:]]
    assert tried == [f"Bearer {OPERATOR_KEY}", None]  # refused once (not retried on that target), then the next
