"""OpenAI and any OpenAI-compatible upstream: the request goes out as the client sent it (model rewritten if aliased)."""

from __future__ import annotations

import orjson

from fastgw.providers.base import TargetRuntime, UpstreamRequest, split_base_url

__all__ = ["build_request"]

_UA = b"fastgw/0.1"


def build_request(target: TargetRuntime, endpoint: str, body: dict, raw: bytes | None, stream: bool
                  ) -> UpstreamRequest:
    """The upstream request for an OpenAI-shaped call.

    The client's body bytes are forwarded untouched when nothing changed them (raw given) and the
    model name needs no rewrite (no decode/encode round trip); otherwise `body` is re-encoded.
    The client's Authorization is never forwarded: the target's own key is used.
    """
    assert target.base_url is not None
    scheme, host, port, prefix = split_base_url(target.base_url)
    if raw is None or body.get("model") != target.model:
        raw = orjson.dumps({**body, "model": target.model})
    default_port = 443 if scheme == "https" else 80
    headers: list[tuple[bytes, bytes]] = [
        (b"host", host.encode("idna") if port == default_port else b"%s:%d" % (host.encode("idna"), port)),
        (b"content-type", b"application/json"),
        (b"accept", b"text/event-stream" if stream else b"application/json"),
        (b"user-agent", _UA),
    ]
    if target.api_key:
        headers.append((b"authorization", b"Bearer " + target.api_key.encode()))
    headers.extend(target.extra_headers)
    return UpstreamRequest(scheme, host, port, "POST", f"{prefix}/{endpoint}", headers, raw)
