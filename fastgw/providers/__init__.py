"""Provider adapters: one module per provider family, looked up by the target's `provider` name."""

from __future__ import annotations

import importlib

from fastgw.providers.base import Adapter

__all__ = ["adapter_for"]

#: provider name -> (module, adapter class) ; imported on first use so unused providers cost nothing.
_REGISTRY = {
    "openai": ("fastgw.providers.openai", "OpenAIAdapter"),
    "groq": ("fastgw.providers.openai", "OpenAIAdapter"),
    "mistral": ("fastgw.providers.openai", "OpenAIAdapter"),
    "together": ("fastgw.providers.openai", "OpenAIAdapter"),
    "vllm": ("fastgw.providers.openai", "OpenAIAdapter"),
    "azure": ("fastgw.providers.openai", "AzureAdapter"),
    "anthropic": ("fastgw.providers.anthropic", "AnthropicAdapter"),
    "gemini": ("fastgw.providers.gemini", "GeminiAdapter"),
    "ollama": ("fastgw.providers.ollama", "OllamaAdapter"),
    "cohere": ("fastgw.providers.cohere", "CohereAdapter"),
    "bedrock": ("fastgw.providers.bedrock", "BedrockAdapter"),
}
_cache: dict[str, Adapter] = {}


def adapter_for(provider: str) -> Adapter:
    """The adapter for a provider name (raises KeyError for an unknown one)."""
    a = _cache.get(provider)
    if a is None:
        module, cls = _REGISTRY[provider]
        a = _cache[provider] = getattr(importlib.import_module(module), cls)()
    return a
