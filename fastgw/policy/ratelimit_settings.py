"""The rate-limiter's settings (issue 16's names), apart from its request path (`fastgw.policy.ratelimit`): msgspec
Structs, which a module compiled with mypyc cannot define."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from fastgw.policy.settings import OnError, Problems, Settings

__all__ = ["Limit", "Budget", "RateLimiter", "problems"]

Per = Literal["key", "role", "model", "key+model", "global"]
BudgetPer = Literal["key", "role", "global"]
Period = Literal["day", "month", "total"]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


# ---- settings (issue 16's names) ------------------------------------------------------------------------------

class Limit(Settings):
    #: Names the limit in keys, headers, metrics and `fastgw usage`: letters, digits, '_', '.', '-'.
    name: str
    #: One bucket (and concurrency set) per caller key, per role of the caller, per model, per key and model, or one.
    per: Per = "key"
    #: Globs (fnmatch) on the requested model; the limit applies only to those.
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    requests_per_minute: PositiveInt | None = None
    #: Requests that pass at once after idle (default: requests_per_minute).
    request_burst: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    #: Tokens that pass at once after idle (default: tokens_per_minute); one request can never take more.
    token_burst: PositiveInt | None = None
    #: Requests in flight at once.
    concurrent: PositiveInt | None = None


class Budget(Settings):
    name: str
    usd: Annotated[float, msgspec.Meta(gt=0)]
    per: BudgetPer = "key"
    #: Calendar periods in UTC; total never resets.
    period: Period = "month"


class RateLimiter(Settings):
    limits: list[Limit] = msgspec.field(default_factory=list)
    budgets: list[Budget] = msgspec.field(default_factory=list)
    #: Output tokens reserved (and counted against token limits and budgets) when a request sets no max_tokens.
    completion_reserve: PositiveInt = 1024
    #: An internal failure of the policy (not an unreachable state: that is state.on_failure) refuses or skips.
    on_error: OnError = "block"


def problems(settings: RateLimiter) -> Problems:
    """Every unusable setting, paths relative to the rate-limiter settings."""
    errs: Problems = []
    for what, names in (("limits", [x.name for x in settings.limits]), ("budgets", [x.name for x in settings.budgets])):
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if not _NAME.fullmatch(name):
                errs.append((f"{what}[{i}].name", f"expected letters, digits, '_', '.' or '-', got {name!r}"))
            elif name in seen:
                errs.append((f"{what}[{i}].name", f"duplicate name {name!r} (first at {what}[{seen[name]}])"))
            else:
                seen[name] = i
    for i, lim in enumerate(settings.limits):
        p = f"limits[{i}]"
        if lim.requests_per_minute is None and lim.tokens_per_minute is None and lim.concurrent is None:
            errs.append((p, "sets no limit: expected requests_per_minute, tokens_per_minute or concurrent"))
        if lim.request_burst is not None and lim.requests_per_minute is None:
            errs.append((f"{p}.request_burst", "needs requests_per_minute"))
        if lim.token_burst is not None and lim.tokens_per_minute is None:
            errs.append((f"{p}.token_burst", "needs tokens_per_minute"))
        burst = lim.token_burst or lim.tokens_per_minute
        if lim.tokens_per_minute is not None and burst is not None and burst <= settings.completion_reserve:
            errs.append((f"{p}.token_burst" if lim.token_burst else f"{p}.tokens_per_minute",
                         f"{burst} tokens at once is no more than completion_reserve ({settings.completion_reserve}): "
                         "a request without max_tokens could never pass"))
        if not lim.models:
            errs.append((f"{p}.models", "expected at least one glob (omit models for every model)"))
        for j, g in enumerate(lim.models):
            if not g:
                errs.append((f"{p}.models[{j}]", "expected a model name or glob"))
    return errs
