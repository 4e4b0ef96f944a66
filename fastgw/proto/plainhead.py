"""The C readers of plain HTTP/1.1 heads (fastgw/proto/_plainheadc.c), or None where the module is not built: llhttp
then reads every head (the readers are a fast path whose absence changes no answer; h1.py and client.py use them)."""

from __future__ import annotations

from typing import Callable, Final, Optional

__all__ = ["RequestHead", "ResponseHead", "read_request", "read_response"]

#: method, target, fields, the offset past the blank line.
RequestHead = Optional[tuple[str, bytes, list[tuple[bytes, bytes]], int]]
#: status, fields, Content-Length (-1: chunked), the offset past the blank line.
ResponseHead = Optional[tuple[int, list[tuple[bytes, bytes]], int, int]]

try:
    from fastgw.proto import _plainheadc
except ImportError:
    _plainheadc = None  # type: ignore[assignment]

read_request: Final[Callable[[bytes, int, int, int], RequestHead] | None] = (
    None if _plainheadc is None else _plainheadc.request)
read_response: Final[Callable[[bytes, int, int, int], ResponseHead] | None] = (
    None if _plainheadc is None else _plainheadc.response)
