"""The OpenAI streaming wire constants the relay, translators and the mock share."""

from __future__ import annotations

__all__ = ["DONE"]

#: The OpenAI end-of-stream sentinel event (chat and legacy completions streams end with it).
DONE = b"data: [DONE]\n\n"
