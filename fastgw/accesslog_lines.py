"""The msgspec Structs of the access log's common line (`fastgw.accesslog` encodes a batch of them in one call).

Their own module, interpreted: `fastgw.accesslog` is compiled with mypyc, and a Struct declared in a compiled
module (or naming a compiled class) does not load (tests/test_compiled.py).
"""

from __future__ import annotations

import msgspec

__all__ = ["Line", "Tokens"]


class Tokens(msgspec.Struct, omit_defaults=True):
    """`tokens` of a line (`partial` only when true, as `_tokens` writes it)."""

    prompt: int | None
    completion: int | None
    estimated: bool
    partial: bool = False


class Line(msgspec.Struct):
    """A JSON line of the common request, its fields in `_record`'s order: a batch of these is encoded in one C
    call (`Encoder.encode_lines`), which the f-string it replaced took ~1.5 µs a line to do in Python."""

    ts: str
    request_id: str
    principal: str | None
    client: str | None
    method: str
    route: str
    model: str | None
    target: str | None
    stream: bool
    status: int
    ttft_ms: float | None
    duration_ms: float
    bytes: int | None
    tokens: Tokens | None
    policy: dict[str, str]
    retries: int
    error: str | None
