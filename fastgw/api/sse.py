"""The OpenAI streaming wire constants the relay, translators and the mock share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

__all__ = ["DONE", "drop_null_usage", "drop_null_usage_py", "drop_null_usage_text", "usage_c"]

#: The OpenAI end-of-stream sentinel event (chat and legacy completions streams end with it).
DONE = b"data: [DONE]\n\n"

#: The `"usage": null` member an OpenAI-compatible server writes on every chunk once `stream_options.include_usage`
#: is set: compact (OpenAI, vLLM) or spaced (Python's json.dumps). `,"` only stands outside a JSON string (a quote
#: inside one is escaped), so these bytes are always a member of an object, never text.
_NULL_USAGE = (b',"usage":null', b', "usage": null')
_NULL_USAGE_TEXT = tuple(n.decode() for n in _NULL_USAGE)


def drop_null_usage_py(data: bytes) -> bytes:
    """Whole SSE events without their `"usage": null` members. The gateway asks the upstream for usage on a client's
    behalf; a client that did not ask gets chunks without the member, as the provider would send them (the spec
    allows no null usage on a legacy completion). `drop_null_usage` is this, in C where it is built."""
    if b'"usage"' not in data:
        return data
    for n in _NULL_USAGE:
        data = data.replace(n, b"")
    return data


def _load_c() -> Any:
    """fastgw.api._usagec (why C: its head comment), or None where it is not built (a checkout without `make`)."""
    try:
        from fastgw.api import _usagec
    except ImportError:
        return None
    return _usagec


#: The C forms of the stream's usage searches (`drop_null_usage`, and the relay's `first_empty_choices` and
#: `count_data`), or None: their Python forms run.
usage_c: Final[Any] = _load_c()
#: `drop_null_usage_py`, in C where it is built (5x faster on a stream read at once).
drop_null_usage: Final[Callable[[bytes], bytes]] = (drop_null_usage_py if usage_c is None
                                                    else usage_c.drop_null_usage)


def drop_null_usage_text(data: str) -> str:
    """`drop_null_usage` for an event's decoded data."""
    if '"usage"' not in data:
        return data
    for n in _NULL_USAGE_TEXT:
        data = data.replace(n, "")
    return data
