"""The `rbac` policy: who is calling (a gateway key, known only by its SHA-256) and what their roles let them do.

Built once in the master from the `Rbac` settings; it holds plain data (dicts, tuples,
compiled regexes), so forked workers share it as is. `authenticate` maps the key a
client sends (`Authorization: Bearer <key>` or Azure's `api-key`) to a principal and its
roles (401 otherwise); `authorize` checks endpoint, model and streaming against those
roles (403 otherwise, with the most specific reason); `visible_models` filters a model
list for GET /v1/models.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

import msgspec

from fastgw.policy.base import AuthError, Forbidden, RequestContext
from fastgw.policy.settings import OnError, Problems, Settings

__all__ = ["RbacPolicy", "Rbac", "RbacKey", "RbacRole", "RbacConfigError", "MISSING_KEY_MESSAGE",
           "INVALID_KEY_MESSAGE", "problems"]

NAME = "rbac"
MISSING_KEY_MESSAGE = "Missing API key: send Authorization: Bearer <key>"
#: Never echoes the key: it would end up in client logs and in our own error logs.
INVALID_KEY_MESSAGE = "Invalid API key"

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_GLOB_CHARS = frozenset("*?[")

# Forbidden codes, least to most specific: a role that got past the endpoint check but refused
# the model says more about the request than one that refused the endpoint.
_ENDPOINT, _MODEL, _STREAM = 0, 1, 2
_CODES = ("endpoint_not_allowed", "model_not_allowed", "stream_not_allowed")


# ---- settings -------------------------------------------------------------------------------

class RbacKey(Settings):
    name: str
    #: SHA-256 of the key, hex: keys are never stored in plain text (`fastgw keys hash`).
    sha256: str
    roles: list[str] = msgspec.field(default_factory=list)


class RbacRole(Settings):
    #: Model names or globs (fnmatch) this role may use.
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    #: Endpoint paths or globs.
    endpoints: list[str] = msgspec.field(default_factory=lambda: ["*"])
    stream: bool = True
    #: This role may request provider-run tools / remote MCP servers even where the target does not allow them.
    allow_server_tools: bool = False
    allow_mcp: bool = False


class Rbac(Settings):
    keys: list[RbacKey] = msgspec.field(default_factory=list)
    roles: dict[str, RbacRole] = msgspec.field(default_factory=dict)
    on_error: OnError = "block"


def problems(settings: Rbac) -> Problems:
    """Every unusable setting, in the order `RbacPolicy` would meet them (paths relative to the rbac settings)."""
    errs = _role_problems(settings.roles)
    first_name: dict[str, int] = {}
    first_digest: dict[str, int] = {}
    for i, k in enumerate(settings.keys):
        p = f"keys[{i}]"
        if not k.name:
            errs.append((f"{p}.name", "a key name must not be empty"))
        elif k.name in first_name:
            errs.append((f"{p}.name", f"duplicate key name {k.name!r} (first at keys[{first_name[k.name]}])"))
        else:
            first_name[k.name] = i
        # The value is not echoed: a plain key pasted here by mistake must not reach the logs.
        if not _HEX64.fullmatch(k.sha256):
            got = "a non-hex character" if len(k.sha256) == 64 else f"{len(k.sha256)} characters"
            errs.append((f"{p}.sha256", f"key {k.name!r}: expected the SHA-256 of the key as 64 hex "
                                        f"characters, got {got} (make one with `fastgw keys hash`)"))
        else:
            digest = k.sha256.lower()
            if digest in first_digest:
                j = first_digest[digest]
                errs.append((f"{p}.sha256", f"key {k.name!r} has the same sha256 as keys[{j}] "
                                            f"({settings.keys[j].name!r}): one key, two names"))
            else:
                first_digest[digest] = i
        for j, rname in enumerate(k.roles):
            if rname not in settings.roles:
                known = ", ".join(sorted(settings.roles)) or "none defined"
                errs.append((f"{p}.roles[{j}]", f"key {k.name!r}: unknown role {rname!r} (roles: {known})"))
    return errs


def _role_problems(roles: dict[str, RbacRole]) -> Problems:
    errs: Problems = []
    for rname, role in roles.items():
        if not rname:
            errs.append(("roles", "a role name must not be empty"))
        for i, ep in enumerate(role.endpoints):
            # A glob like "chat/completions" can never match (paths start with "/"): refuse it
            # here instead of silently refusing every request.
            if not ep or not (ep[0] == "/" or ep[0] in _GLOB_CHARS):
                errs.append((f"roles.{rname}.endpoints[{i}]", f"expected a path starting with '/' "
                                                              f"(e.g. '/v1/chat/completions'), got {ep!r}"))
    return errs


# ---- the compiled policy ------------------------------------------------------------------

class RbacConfigError(ValueError):
    """An unusable rbac setting; `path` is relative to the rbac settings (e.g. "keys[1].roles[0]")."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class _Globs:
    """A list of fnmatch globs compiled once: exact names in a set, the rest in one regex."""

    __slots__ = ("any", "exact", "regex")

    def __init__(self, globs: Iterable[str]) -> None:
        globs = list(globs)
        #: "*" alone matches everything: skip the regex on the common case.
        self.any = "*" in globs
        self.exact = frozenset(g for g in globs if not _GLOB_CHARS & set(g))
        wild = [g for g in globs if _GLOB_CHARS & set(g)]
        # fnmatch.translate, not fnmatch.fnmatch: the latter normalises case on Windows and
        # re-translates per call; one alternation is a single regex run per check.
        self.regex = re.compile("|".join(fnmatch.translate(g) for g in wild)) if wild else None

    def __call__(self, name: str) -> bool:
        if self.any or name in self.exact:
            return True
        return self.regex is not None and self.regex.match(name) is not None


class _Served(Protocol):
    """What `usable_targets` reads of a target: the model it serves."""

    @property
    def model(self) -> str: ...


_T = TypeVar("_T", bound=_Served)


class _Role:
    __slots__ = ("name", "models", "endpoints", "stream", "allow_server_tools", "allow_mcp")

    def __init__(self, name: str, role: RbacRole) -> None:
        self.name = name
        self.models = _Globs(role.models)
        self.endpoints = _Globs(role.endpoints)
        self.stream = role.stream
        self.allow_server_tools = role.allow_server_tools
        self.allow_mcp = role.allow_mcp

    def refusal(self, endpoint_path: str, model: str | None, stream: bool) -> int | None:
        """None when this role allows the request, else which check refused it (_ENDPOINT, _MODEL, _STREAM)."""
        if not self.endpoints(endpoint_path):
            return _ENDPOINT
        if model is not None and not self.models(model):
            return _MODEL
        if stream and not self.stream:
            return _STREAM
        return None


class _Key:
    __slots__ = ("name", "digest", "role_names", "roles")

    def __init__(self, name: str, digest: str, roles: tuple[_Role, ...]) -> None:
        self.name = name
        self.digest = digest
        self.role_names = tuple(r.name for r in roles)
        self.roles = roles


class RbacPolicy:
    """Compiled rbac settings: keys by digest, roles with precompiled globs."""

    __slots__ = ("_by_digest", "_by_name", "on_error")

    name = NAME

    def __init__(self, settings: Rbac) -> None:
        errs = problems(settings)
        if errs:
            raise RbacConfigError(*errs[0])
        roles = {rname: _Role(rname, role) for rname, role in settings.roles.items()}
        self._by_digest: dict[str, _Key] = {}
        self._by_name: dict[str, _Key] = {}
        for k in settings.keys:
            # dict.fromkeys: a role named twice on one key counts once, first place kept.
            key = _Key(k.name, k.sha256.lower(), tuple(roles[r] for r in dict.fromkeys(k.roles)))
            self._by_digest[key.digest] = key
            self._by_name[k.name] = key
        self.on_error = settings.on_error

    # ---- authentication -------------------------------------------------------------------
    def authenticate(self, ctx: RequestContext) -> None:
        """Set `ctx.principal` and `ctx.roles` from the request's key; AuthError (401) when missing or unknown."""
        auth = api_key = None
        for n, v in ctx.headers:
            if n == b"authorization":
                auth = v
            elif n == b"api-key":
                api_key = v
        key: bytes | None = None
        malformed = False
        if auth is not None:
            # RFC 7235: the scheme is case-insensitive; the token follows one or more spaces.
            if auth[:6].lower() == b"bearer" and (len(auth) == 6 or auth[6] in b" \t"):
                key = auth[6:].strip(b" \t")
            else:
                malformed = True  # Basic or another scheme: a key was meant, but not one we read
        if not key and api_key is not None:
            key = api_key.strip(b" \t")
        if not key:
            raise AuthError(INVALID_KEY_MESSAGE if malformed else MISSING_KEY_MESSAGE)
        digest = hashlib.sha256(key).hexdigest()
        found = self._by_digest.get(digest)
        # The dict lookup already decided; compare_digest guards against a future lookup that is not exact.
        if found is None or not hmac.compare_digest(found.digest, digest):
            raise AuthError(INVALID_KEY_MESSAGE)
        ctx.principal = found.name
        ctx.roles = found.role_names

    # ---- authorization --------------------------------------------------------------------
    def _roles(self, ctx: RequestContext) -> tuple[_Role, ...]:
        key = self._by_name.get(ctx.principal) if ctx.principal is not None else None
        return key.roles if key is not None else ()

    def grants(self, ctx: RequestContext, name: str) -> bool:
        """Whether one of the caller's roles sets `name` ("allow_server_tools", "allow_mcp")."""
        return any(getattr(role, name) for role in self._roles(ctx))

    def authorize(self, ctx: RequestContext, endpoint_path: str, model: str | None, stream: bool) -> None:
        """Allow when any of the principal's roles allows endpoint, model (unless None) and streaming.

        Otherwise Forbidden (403) with the most specific refusal among the roles: stream, then model, then endpoint.
        """
        worst = -1
        for role in self._roles(ctx):
            why = role.refusal(endpoint_path, model, stream)
            if why is None:
                return
            worst = max(worst, why)
        who = f"key {ctx.principal!r}" if ctx.principal is not None else "an unauthenticated request"
        if worst < 0:
            raise Forbidden(f"{who} has no roles", _CODES[_ENDPOINT])
        if worst == _ENDPOINT:
            msg = f"{who} may not use endpoint {endpoint_path!r}"
        elif worst == _MODEL:
            msg = f"{who} may not use model {model!r}"
        else:
            msg = f"{who} may not stream" + (f" model {model!r}" if model is not None else "") + " (send stream: false)"
        raise Forbidden(msg, _CODES[worst])

    def usable_targets(self, ctx: RequestContext, endpoint_path: str, stream: bool, targets: Sequence[_T]) -> list[_T]:
        """The targets, in order, whose model a role allowing this request may use too: a role's model rules apply
        to the requested name and to the model the target serves, so an alias cannot reach a model the role does
        not name, and a fallback target it may not use is skipped. Forbidden (403) when none is left."""
        roles = [r for r in self._roles(ctx) if r.refusal(endpoint_path, ctx.model, stream) is None]
        usable = [t for t in targets if any(r.models(t.model) for r in roles)]
        if not usable:
            served = ", ".join(dict.fromkeys(repr(t.model) for t in targets))
            raise Forbidden(f"key {ctx.principal!r} may not use model {ctx.model!r}: it is served by {served}",
                            _CODES[_MODEL])
        return usable

    def visible_models(self, ctx: RequestContext, models: list[str]) -> list[str]:
        """The models, in order, that at least one of the principal's roles may use (by model glob alone)."""
        roles = self._roles(ctx)
        return [m for m in models if any(r.models(m) for r in roles)]
