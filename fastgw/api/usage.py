"""The `usage` object of a whole answer, read without decoding the rest.

Its own module, not the pipeline's, so that the pipeline can be compiled with mypyc: a msgspec Struct declared in
a compiled module no longer decodes (mypyc rewrites its annotations; tests/test_compiled.py).
"""

from __future__ import annotations

import msgspec

__all__ = ["usage_of"]


class _UsageOnly(msgspec.Struct):
    usage: dict | None = None


# Only `usage` is decoded (msgspec skips the rest without building it): a few µs for a whole answer.
_USAGE = msgspec.json.Decoder(_UsageOnly)


def usage_of(body: bytes) -> dict | None:
    """The `usage` object of a whole answer (chat, completions, Responses, Messages), when it has one."""
    try:
        usage = _USAGE.decode(body).usage
    except msgspec.DecodeError:
        return None
    if usage is None:
        return None
    if "prompt_tokens" not in usage and "input_tokens" in usage:  # Responses and Messages name them so
        usage = {**usage, "prompt_tokens": usage.get("input_tokens") or 0,
                 "completion_tokens": usage.get("output_tokens") or 0}
    return usage
