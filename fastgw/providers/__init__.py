"""Provider adapters: one module per provider family, looked up by the target's `provider` name
(the names, default URLs and native endpoints are in `fastgw.providers.registry`)."""

from __future__ import annotations

import importlib

from fastgw.providers.base import Adapter
from fastgw.providers.registry import PROVIDERS

__all__ = ["adapter_for", "ADAPTERS"]

#: The adapters made so far, by provider name (compiled callers look here first: a call of this interpreted
#: module's function costs ~1,000 instructions, a dict lookup a few dozen).
ADAPTERS: dict[str, Adapter] = {}


def adapter_for(provider: str) -> Adapter:
    """The adapter for a provider name (raises KeyError for an unknown one)."""
    a = ADAPTERS.get(provider)
    if a is None:
        module, cls = PROVIDERS[provider].adapter
        a = ADAPTERS[provider] = getattr(importlib.import_module(module), cls)()
    return a
