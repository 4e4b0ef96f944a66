"""What every policy's settings struct shares: a strict msgspec base, the on_error switch, and how problems are named.

Each policy module defines its own settings struct on `Settings` (`pii.PiiDetector`,
`rbac.Rbac`, ...) and a `problems()` function for what types alone cannot say;
`fastgw.config` composes the structs and prefixes each problem's path with
`$.policy.<name>`. Nothing here knows the config file or the layers above.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["Settings", "OnError", "Phase", "Problems", "join"]

#: A policy that fails internally refuses the request ("block", fail closed) or is skipped ("allow").
OnError = Literal["block", "allow"]
#: Where a scanning policy applies.
Phase = Literal["input", "output"]
#: (key path relative to the policy's settings, e.g. "entities[1]" or "" for the whole struct, what is wrong).
Problems = list[tuple[str, str]]


class Settings(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False, kw_only=True):
    """Base of a policy's settings: unknown keys are refused (a typo must not silently disable a check)."""


def join(base: str, rel: str) -> str:
    """`base` extended by a relative key path from `Problems` ("" is `base` itself)."""
    if not rel:
        return base
    return base + rel if rel[0] == "[" else f"{base}.{rel}"
