"""The decoder of a whole answer's `usage` object, read without decoding the rest.

Its own module, not the pipeline's, so that the pipeline can be compiled with mypyc: a msgspec Struct declared in
a compiled module no longer decodes (mypyc rewrites its annotations; tests/test_compiled.py).
"""

from __future__ import annotations

import msgspec

__all__ = ["USAGE_ONLY", "with_chat_names"]


class _UsageOnly(msgspec.Struct):
    usage: dict | None = None


#: An answer's `usage` alone (msgspec skips the rest without building it): a few µs for a whole answer. Read by
#: `fastgw.pipeline.usage_of`, which is compiled (an interpreted function here cost ~1,500 instructions a request).
USAGE_ONLY = msgspec.json.Decoder(_UsageOnly)


def with_chat_names(usage: dict) -> dict:
    """A Responses or Messages `usage` (input_tokens, output_tokens) with the chat names added beside them, which
    the quota settlement, the metrics and the logs read (`prompt_tokens`, `completion_tokens`). Callers test
    `"prompt_tokens" not in usage` first: a chat usage, nearly every answer, makes no call here."""
    if "prompt_tokens" not in usage and "input_tokens" in usage:
        return {**usage, "prompt_tokens": usage.get("input_tokens") or 0,
                "completion_tokens": usage.get("output_tokens") or 0}
    return usage
