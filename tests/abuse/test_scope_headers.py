"""The operator decides which Anthropic API version and betas reach the provider (issue 15, item 5): a client's
`anthropic-version` is forwarded only when the target lists it, its `anthropic-beta` flags only those the target
lists, and both must be short token lists; anything else is a 400 in Anthropic's error envelope."""

from __future__ import annotations

import anthropic
import orjson
import pytest

from fastgw.api.errors import GatewayError
from fastgw.providers.anthropic import ANTHROPIC_VERSION
from fastgw.providers.base import TargetRuntime
from fastgw.providers.native import messages_request
from fastgw.providers.scope import MAX_HEADER_VALUE
from tests.abuse._h3support import request
from tests.conftest import GatewayFactory
from tests.support.procs import Upstream, start_upstream

BODY = {"model": "claude-test", "max_tokens": 50, "messages": [{"role": "user", "content": "text"}]}


def target(**kw: object) -> TargetRuntime:
    return TargetRuntime(id="claude", provider="anthropic", model="claude-test", base_url="https://api.anthropic.com",
                         api_key="sk-ant-operator", **kw)  # type: ignore[arg-type]


def sent(t: TargetRuntime, headers: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for n, v in messages_request(t, BODY, False, headers).headers:
        out.setdefault(n, []).append(v)
    return out


def refused(t: TargetRuntime, headers: list[tuple[bytes, bytes]]) -> dict:
    with pytest.raises(GatewayError) as e:
        messages_request(t, BODY, False, headers)
    assert e.value.status == 400 and e.value.style == "anthropic"
    body = orjson.loads(e.value.body())
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    return body["error"]


def test_no_allowlist_sends_our_version_whatever_the_client_asks() -> None:
    h = sent(target(), [(b"anthropic-version", b"2099-01-01"), (b"x-api-key", b"client-key"),
                        (b"authorization", b"Bearer client")])
    assert h[b"anthropic-version"] == [ANTHROPIC_VERSION]
    assert h[b"x-api-key"] == [b"sk-ant-operator"] and b"authorization" not in h and b"anthropic-beta" not in h


def test_an_allowed_version_is_forwarded_another_refused() -> None:
    t = target(anthropic_versions=("2023-06-01", "2024-10-22"))
    assert sent(t, [(b"anthropic-version", b"2024-10-22")])[b"anthropic-version"] == [b"2024-10-22"]
    assert sent(t, [])[b"anthropic-version"] == [ANTHROPIC_VERSION]
    err = refused(t, [(b"anthropic-version", b"2099-01-01")])
    assert "anthropic-version" in err["message"] and "2099-01-01" in err["message"]
    assert "message" in err and set(err) == {"type", "message"}  # Anthropic's envelope, nothing else


def test_a_version_pinned_in_the_target_headers_wins() -> None:
    t = target(anthropic_versions=("2024-10-22",), extra_headers=[(b"anthropic-version", b"2023-06-01")])
    assert sent(t, [(b"anthropic-version", b"2024-10-22")])[b"anthropic-version"] == [b"2023-06-01"]


def test_betas_only_from_the_allowlist() -> None:
    t = target(anthropic_betas=("prompt-caching-2024-07-31", "token-efficient-tools-2025-02-19"))
    h = sent(t, [(b"anthropic-beta", b"prompt-caching-2024-07-31, token-efficient-tools-2025-02-19"),
                 (b"anthropic-beta", b"prompt-caching-2024-07-31")])
    assert h[b"anthropic-beta"] == [b"prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"]
    assert "mcp-client-2025-04-04" in refused(t, [(b"anthropic-beta", b"mcp-client-2025-04-04")])["message"]
    assert "anthropic-beta" in refused(target(), [(b"anthropic-beta", b"prompt-caching-2024-07-31")])["message"]
    assert b"anthropic-beta" not in sent(t, [(b"anthropic-beta", b"")])  # an empty value asks for nothing


@pytest.mark.parametrize("name", [b"anthropic-version", b"anthropic-beta"])
@pytest.mark.parametrize("value", [b"\xff\xfe", b"a" * (MAX_HEADER_VALUE + 1), b"2023-06-01;drop", b"a b",
                                   b"x" * 60_000, b"a,,b", b"\"quoted\""])
def test_malformed_values_are_refused(name: bytes, value: bytes) -> None:
    t = target(anthropic_versions=("2023-06-01",), anthropic_betas=("a",))
    err = refused(t, [(name, value)])
    assert name.decode() in err["message"] and len(err["message"]) < 200  # the value is never echoed back


def test_two_versions_are_ambiguous() -> None:
    t = target(anthropic_versions=("2023-06-01", "2024-10-22"))
    assert "more than once" in refused(t, [(b"anthropic-version", b"2023-06-01"),
                                           (b"anthropic-version", b"2024-10-22")])["message"]


# ---- through a gateway, with the official SDK ---------------------------------------------------------------

@pytest.fixture(scope="module")
def mock() -> Upstream:
    up = start_upstream(module="tests.support.mock_anthropic")
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(mock: Upstream, tmp_path_factory: pytest.TempPathFactory):
    f = GatewayFactory(tmp_path_factory.mktemp("scope-headers"))
    cfg = {"pack": {"name": "t"}, "providers": {"targets": [
        {"id": "claude", "provider": "anthropic", "model": "claude-test", "base_url": mock.base,
         "secret_key_ref": {"env": "H3_ANTHROPIC_KEY"}},
        {"id": "claude-nokey", "provider": "anthropic", "model": "claude-nokey", "base_url": mock.base}]}}
    try:
        yield f.start(cfg, env={"H3_ANTHROPIC_KEY": "sk-ant-operator"})
    finally:
        f.close()


def test_the_sdk_works_and_its_headers_are_not_forwarded(gw, mock: Upstream) -> None:
    client = anthropic.Anthropic(base_url=gw.base, api_key="client-key", max_retries=0, timeout=20,
                                 default_headers={"anthropic-version": "2099-01-01"})
    msg = client.messages.create(**BODY)
    assert msg.content[0].text
    seen = mock.last("/v1/messages")["headers"]
    assert seen["anthropic-version"] == ANTHROPIC_VERSION.decode() and "anthropic-beta" not in seen
    assert seen["x-api-key"] == "sk-ant-operator"


@pytest.mark.parametrize("value", ["prompt-caching-2024-07-31", "x" * 60_000])
def test_a_beta_the_operator_did_not_choose_is_a_400_anthropic_error(gw, value: str) -> None:
    client = anthropic.Anthropic(base_url=gw.base, api_key="client-key", max_retries=0, timeout=20)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(**BODY, extra_headers={"anthropic-beta": value})
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "anthropic-beta" in e.value.body["error"]["message"]


def test_raw_0xff_header_is_refused(gw) -> None:
    status, _, body = request(gw.base, "POST", "/v1/messages", orjson.dumps(BODY),
                              [("content-type", "application/json"), ("anthropic-version", "\xff\xff2023")])
    assert status == 400 and orjson.loads(body)["error"]["type"] == "invalid_request_error"


def test_upstream_401_on_messages_is_a_502_in_anthropics_envelope(gw) -> None:
    client = anthropic.Anthropic(base_url=gw.base, api_key="client-key", max_retries=0, timeout=20)
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(**{**BODY, "model": "claude-nokey"})
    assert e.value.status_code == 502 and e.value.body["type"] == "error"
    assert "claude-nokey" in e.value.body["error"]["message"] and "credentials" in e.value.body["error"]["message"]
