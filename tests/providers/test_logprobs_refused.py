"""Providers without logprobs refuse `logprobs: true` (a 400 naming the param) instead of answering without them;
`logprobs: false` is a no-op (issue 17: Gemini and Ollama dropped it silently while the README said it is refused)."""

from __future__ import annotations

import pytest

from fastgw.api.errors import GatewayError
from fastgw.providers import anthropic, cohere, gemini, ollama
from fastgw.providers.base import TargetRuntime

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("mod", [gemini, cohere, anthropic, ollama], ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_logprobs_true_is_refused_and_false_is_a_no_op(mod) -> None:  # noqa: ANN001
    target = TargetRuntime(id="t", provider=mod.__name__.rsplit(".", 1)[1], model="m", base_url="http://x.invalid")
    with pytest.raises(GatewayError) as exc:
        mod.translate_request(target, {**BODY, "logprobs": True, "top_logprobs": 2}, False)
    assert exc.value.status == 400 and exc.value.param == "logprobs"
    assert mod.translate_request(target, {**BODY, "logprobs": False}, False)
