"""Provider names in one place: per provider, its adapter, its default base URL and the native endpoints it serves.

`fastgw.config` takes `Provider` and `DEFAULT_BASE_URLS` from here; the request pipeline takes
`NATIVE_ENDPOINTS` and `OPENAI_COMPATIBLE`. This module imports nothing of fastgw, so the config
schema can import it without pulling in any adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["Provider", "ProviderInfo", "PROVIDERS", "DEFAULT_BASE_URLS", "NATIVE_ENDPOINTS", "OPENAI_COMPATIBLE",
           "is_openai_compatible"]

#: The provider names a target may use. A Literal (msgspec validates the config against it), so it is written out;
#: a test checks it names exactly the keys of PROVIDERS.
Provider = Literal["openai", "azure", "groq", "mistral", "together", "vllm", "anthropic", "gemini", "ollama",
                   "cohere", "bedrock", "mock"]


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """What the gateway knows of one provider name."""

    #: The adapter, as (module, class), imported on first use so unused providers cost nothing.
    adapter: tuple[str, str]
    #: Where the provider lives when a target names no base_url (None: base_url is required, or derived).
    base_url: str | None = None
    #: The request and answer bodies are OpenAI's own: forwarded and relayed untouched.
    openai_compatible: bool = False
    #: The endpoints (path after /v1/) besides chat/completions... that speak this provider's own API natively.
    native: frozenset[str] = frozenset()
    #: The OpenAI endpoints it serves (None: all of them).
    serves: frozenset[str] | None = None


_OPENAI = ("fastgw.providers.openai", "OpenAIAdapter")

PROVIDERS: dict[str, ProviderInfo] = {
    "openai": ProviderInfo(_OPENAI, "https://api.openai.com/v1", True, frozenset({"responses"})),
    "azure": ProviderInfo(("fastgw.providers.openai", "AzureAdapter"), None, True, frozenset({"responses"})),
    "groq": ProviderInfo(_OPENAI, "https://api.groq.com/openai/v1", True),
    "mistral": ProviderInfo(_OPENAI, "https://api.mistral.ai/v1", True),
    "together": ProviderInfo(_OPENAI, "https://api.together.xyz/v1", True),
    "vllm": ProviderInfo(_OPENAI, None, True),
    "anthropic": ProviderInfo(("fastgw.providers.anthropic", "AnthropicAdapter"), "https://api.anthropic.com",
                              native=frozenset({"messages"})),
    "gemini": ProviderInfo(("fastgw.providers.gemini", "GeminiAdapter"), "https://generativelanguage.googleapis.com"),
    "ollama": ProviderInfo(("fastgw.providers.ollama", "OllamaAdapter"), "http://127.0.0.1:11434"),
    "cohere": ProviderInfo(("fastgw.providers.cohere", "CohereAdapter"), "https://api.cohere.com"),
    # No default: the endpoint follows from the target's AWS region (see providers/bedrock.py).
    "bedrock": ProviderInfo(("fastgw.providers.bedrock", "BedrockAdapter")),
    # The built-in mock: answered in process (fastgw.upstreams.MockUpstream), OpenAI-shaped.
    "mock": ProviderInfo(("fastgw.providers.mock", "MockAdapter"), None, True,
                         serves=frozenset({"chat/completions", "completions", "embeddings"})),
}
assert set(PROVIDERS) == set(get_args(Provider)), "Provider and PROVIDERS must name the same providers"

#: Where each provider lives when a target names no base_url (None: base_url is required). The mock has none.
DEFAULT_BASE_URLS: dict[str, str | None] = {name: p.base_url for name, p in PROVIDERS.items() if name != "mock"}

#: Endpoint (path after /v1/) that speaks one provider family's own API -> the providers that serve it.
NATIVE_ENDPOINTS: dict[str, frozenset[str]] = {
    endpoint: frozenset(name for name, p in PROVIDERS.items() if endpoint in p.native)
    for endpoint in sorted({e for p in PROVIDERS.values() for e in p.native})
}

#: Providers whose bodies are already OpenAI-shaped (requests forwarded, answers relayed as they are).
OPENAI_COMPATIBLE: frozenset[str] = frozenset(name for name, p in PROVIDERS.items() if p.openai_compatible)


def is_openai_compatible(provider: str) -> bool:
    """True when `provider` speaks OpenAI's own wire format (nothing to translate)."""
    return provider in OPENAI_COMPATIBLE
