"""The config schema (msgspec Structs) and its loader: YAML in the "pack" layout, unknown keys rejected, errors that name file, line and key.

Defaults come from `fastgw.proto.limits` and `fastgw.api.limits`, where each carries its reason.
Each policy owns its settings struct (`fastgw.policy.pii.PiiDetector`, ...); this module
composes them under `policy:` and re-exports them. Ranges sit on the fields
(`msgspec.Meta`) and are reported by the type pass; rules that span fields, or whose
message must say more than a range, are checked after it, every one at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import msgspec
import yaml

from fastgw.api import limits as api_limits
from fastgw import state as state_layer
from fastgw.policy import audit, injection, pii, ratelimit, rbac, safety
from fastgw.policy.audit import AuditLogger
from fastgw.policy.injection import InjectionPattern, PromptInjection
from fastgw.policy.pii import CustomPattern, PiiDetector
from fastgw.policy.quality import QualityScorer, QualityThresholds
from fastgw.policy.ratelimit import RateLimiter
from fastgw.policy.rbac import Rbac, RbacKey, RbacRole
from fastgw.state.settings import State
from fastgw.policy.safety import SafetyFilter
from fastgw.policy.settings import Problems, join
from fastgw.proto import limits

__all__ = ["Config", "ConfigError", "load_config", "parse_bind", "dump_config",
           # the policies' own settings structs, composed here (and importable from here)
           "AuditLogger", "CustomPattern", "InjectionPattern", "PiiDetector", "PromptInjection", "QualityScorer",
           "QualityThresholds", "Rbac", "RbacKey", "RbacRole", "SafetyFilter", "Telemetry"]

#: Range constraints on fields: a violation reads `file:line: $.path: expected `float` > 0.0`.
Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


class ConfigError(Exception):
    """A config that cannot be used; the message names the file, line and key path."""


class _Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False, kw_only=True):
    pass


class Pack(_Base):
    name: str
    version: str = "1.0.0"
    enabled: bool = True


class Server(_Base):
    bind: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8080"])
    #: 0 means one worker per CPU.
    workers: int = 0
    graceful_timeout: Positive = api_limits.GRACEFUL_TIMEOUT
    worker_timeout: Positive = api_limits.WORKER_TIMEOUT
    header_timeout: Positive = limits.HEADER_TIMEOUT
    body_timeout: Positive = limits.BODY_TIMEOUT
    keepalive_timeout: Positive = limits.KEEPALIVE_TIMEOUT
    max_header_bytes: PositiveInt = limits.MAX_HEADER_BYTES
    max_headers: PositiveInt = limits.MAX_HEADERS
    max_body_bytes: PositiveInt = limits.MAX_BODY_BYTES
    send_timeout: Positive = limits.SEND_TIMEOUT
    #: When set, GET /metrics requires `Authorization: Bearer <token>` (metrics name models and targets).
    metrics_token_ref: EnvRef | None = None
    #: Bytes/s a request body must keep up once it has taken longer than `body_timeout` (0: no floor).
    min_body_rate: NonNegative = limits.MIN_BODY_RATE
    #: Open client connections per worker; past it: 503 and close, logged at most once per second.
    max_connections: PositiveInt = limits.MAX_CONNECTIONS
    #: Request body bytes one worker buffers at once; past it: 503 with Retry-After.
    max_buffered_body_bytes: PositiveInt = limits.MAX_BUFFERED_BODY_BYTES
    #: CPU seconds the policies may spend on one request before it is refused.
    max_request_cpu: Positive = api_limits.MAX_REQUEST_CPU
    #: Proxies (IP addresses or CIDR networks) whose X-Forwarded-For is believed for the logged client address.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    #: Where access lines go and how much of them is kept.
    access_log: AccessLogFile = msgspec.field(default_factory=lambda: AccessLogFile())


class EnvRef(_Base):
    env: str


class AccessLogFile(_Base):
    #: A file for access lines; None: stdout (the journal under systemd, which has its own size limits).
    path: str | None = None
    #: Size-based retention of `path`: rotated at this size (`path.1` ... `path.<backups>`, oldest dropped).
    max_bytes: PositiveInt = 100 * 1024 * 1024
    backups: NonNegativeInt = 5


class MockOptions(_Base):
    #: Reply text; the built-in paragraph when neither text nor text_file is set.
    text: str | None = None
    text_file: str | None = None
    #: Characters per streamed chunk (about one token of English).
    chunk_size: PositiveInt = 4
    #: Content chunks per reply; the text repeats to fill them. Default: as many as the text needs.
    chunks: NonNegativeInt | None = None
    #: Seconds between chunks.
    delay: NonNegative = 0.0
    #: Seconds before the first chunk.
    ttft: NonNegative = 0.0


from fastgw.providers.registry import DEFAULT_BASE_URLS, Provider  # noqa: E402 - provider names live in one place


class Timeouts(_Base):
    connect: Positive = api_limits.CONNECT_TIMEOUT
    ttft: Positive = api_limits.TTFT_TIMEOUT
    idle: Positive = api_limits.IDLE_TIMEOUT
    max_duration: Positive = api_limits.MAX_DURATION
    #: While waiting for the first event, send `: ping` SSE comments this often (0: never). A heartbeat
    #: commits the response: after one, a failure is an in-stream error, no longer a transparent fallback.
    heartbeat: float = 0.0


class CircuitBreaker(_Base):
    failures: Annotated[int, msgspec.Meta(ge=1)] = api_limits.BREAKER_FAILURES
    cooldown: Positive = api_limits.BREAKER_COOLDOWN
    #: Count failures and hold the half-open probe through `state`: every worker of every instance together.
    shared: bool = False


class Pricing(_Base):
    #: USD per million input (prompt) and output (completion) tokens: what budgets charge.
    input: NonNegative
    output: NonNegative


class Target(_Base):
    id: str
    provider: Provider
    model: str
    aliases: list[str] = msgspec.field(default_factory=list)
    base_url: str | None = None
    secret_key_ref: EnvRef | None = None
    #: CA bundle for TLS to this target (PEM); system CAs otherwise.
    ca_file: str | None = None
    #: Extra headers sent upstream on every request (e.g. OpenAI-Organization).
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    circuit_breaker: CircuitBreaker = msgspec.field(default_factory=CircuitBreaker)
    #: Share of traffic under `strategy: loadbalance`.
    weight: NonNegative = 1.0
    mock: MockOptions | None = None
    #: azure: the deployment name (default: model) and the api-version query parameter.
    deployment: str | None = None
    api_version: str = "2024-10-21"
    #: bedrock: AWS region (default: AWS_REGION); base_url then overrides the regional endpoint.
    region: str | None = None
    #: anthropic: client `anthropic-version` values forwarded upstream (others: 400); none listed: the client's
    #: header is never forwarded and the adapter's own version is sent.
    anthropic_versions: list[str] = msgspec.field(default_factory=list)
    #: anthropic: `anthropic-beta` flags forwarded when a client asks for them (others: 400).
    anthropic_betas: list[str] = msgspec.field(default_factory=list)
    #: Provider-run tools (web_search, web_fetch, code execution, ...) may be requested through this target.
    allow_server_tools: bool = False
    #: Remote MCP servers (`mcp_servers`, Responses `mcp` tools) may be requested through this target.
    allow_mcp: bool = False
    #: USD per million tokens; budgets need it (a target without it costs nothing).
    pricing: Pricing | None = None


class Providers(_Base):
    targets: list[Target]


RetryOn = Literal["connect_error", "timeout", "429", "5xx"]


class Retry(_Base):
    #: Tries per target, the first included (1: no retry).
    attempts: Annotated[int, msgspec.Meta(ge=1)] = 2
    #: Seconds before the first retry; doubles each time.
    backoff: NonNegative = 0.2
    #: The longest upstream Retry-After we are willing to wait; longer ones go to the next target instead.
    max_retry_after: NonNegative = 10.0
    on: list[RetryOn] = msgspec.field(default_factory=lambda: ["connect_error", "timeout", "429", "5xx"])


class Route(_Base):
    model: str
    targets: list[str]
    strategy: Literal["fallback", "loadbalance"] = "fallback"
    retry: Retry = msgspec.field(default_factory=Retry)


# --- policies -------------------------------------------------------------------------------

#: Policy names a chain may hold.
POLICY_NAMES = ("rbac", "rate-limiter", "prompt-injection", "pii-detector", "safety-filter", "quality-scorer",
                "audit-logger")


class PolicySettings(_Base):
    pii_detector: PiiDetector | None = msgspec.field(default=None, name="pii-detector")
    safety_filter: SafetyFilter | None = msgspec.field(default=None, name="safety-filter")
    prompt_injection: PromptInjection | None = msgspec.field(default=None, name="prompt-injection")
    rbac: Rbac | None = None
    quality_scorer: QualityScorer | None = msgspec.field(default=None, name="quality-scorer")
    audit_logger: AuditLogger | None = msgspec.field(default=None, name="audit-logger")
    rate_limiter: RateLimiter | None = msgspec.field(default=None, name="rate-limiter")

    def get(self, name: str) -> object:
        """The settings struct of a policy by its chain name (None when not configured)."""
        return getattr(self, name.replace("-", "_"))


class Policies(_Base):
    chain: list[str] = msgspec.field(default_factory=list)


class Telemetry(_Base):
    """OpenTelemetry export (fastgw.telemetry): on when this section is present."""

    #: OTLP/HTTP base URL (`/v1/traces` and `/v1/metrics` are appended). None: OTEL_EXPORTER_OTLP_ENDPOINT, else
    #: http://localhost:4318. OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / _METRICS_ENDPOINT override it per signal.
    otlp_endpoint: str | None = None
    traces: bool = True
    metrics: bool = True
    #: Share of new traces recorded (a client's traceparent decides for its own trace: parent-based).
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0


class Config(_Base):
    pack: Pack
    providers: Providers
    server: Server = msgspec.field(default_factory=Server)
    policies: Policies = msgspec.field(default_factory=Policies)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    routing: list[Route] = msgspec.field(default_factory=list)
    state: State = msgspec.field(default_factory=State)
    #: None (absent): no telemetry, and the OpenTelemetry SDK is never imported.
    telemetry: Telemetry | None = None

    def pii(self) -> PiiDetector | None:
        """The pii-detector settings when the chain enables it (defaults if it has no settings)."""
        if "pii-detector" not in self.policies.chain:
            return None
        return self.policy.pii_detector or PiiDetector()

    def chain_settings(self) -> list[tuple[str, object | None]]:
        """(name, settings or None for the defaults) of each policy in chain order; none when the pack is disabled."""
        if not self.pack.enabled:
            return []
        return [(name, self.policy.get(name)) for name in self.policies.chain]


# --- validation beyond types ----------------------------------------------------

#: Each policy's check of its own settings; paths come back relative to `$.policy.<name>`.
_POLICY_PROBLEMS: dict[str, Callable[[Any], Problems]] = {
    "pii-detector": pii.problems, "safety-filter": safety.problems, "prompt-injection": injection.problems,
    "rbac": rbac.problems, "audit-logger": audit.problems, "rate-limiter": ratelimit.problems,
}

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _semantic_errors(cfg: Config) -> Problems:
    """(key path, problem) pairs for what the types alone cannot express, every one of them."""
    ids = {t.id for t in cfg.providers.targets}
    return [*_server_errors(cfg.server), *_target_errors(cfg.providers.targets), *_routing_errors(cfg.routing, ids),
            *_chain_errors(cfg), *_policy_errors(cfg.policy), *_state_errors(cfg),
            *_telemetry_errors(cfg.telemetry)]


def _telemetry_errors(t: Telemetry | None) -> Problems:
    errs: Problems = []
    if t is None:
        return errs
    if t.otlp_endpoint is not None and not re.match(r"^https?://[^/\s]+", t.otlp_endpoint):
        errs.append(("$.telemetry.otlp_endpoint", f"expected an http:// or https:// URL (OTLP/HTTP), got "
                                                  f"{t.otlp_endpoint!r}"))
    if not t.traces and not t.metrics:
        errs.append(("$.telemetry", "traces and metrics are both false: remove the section to turn telemetry off"))
    return errs


def _state_errors(cfg: Config) -> Problems:
    """The state section, and what quotas need from the targets: a budget charges `pricing`."""
    errs: Problems = [(join("$.state", rel), what) for rel, what in state_layer.problems(cfg.state)]
    rl = cfg.policy.rate_limiter
    if rl is not None and rl.budgets and "rate-limiter" in cfg.policies.chain:
        for i, t in enumerate(cfg.providers.targets):
            if t.pricing is None and t.provider != "mock":
                errs.append((f"$.providers.targets[{i}].pricing", f"budgets are configured: target {t.id!r} needs "
                                                                  "pricing {input, output} (USD per million tokens)"))
    return errs


def _server_errors(s: Server) -> Problems:
    errs: Problems = []
    if s.workers < 0:
        errs.append(("$.server.workers", "expected an integer >= 0 (0 = one per CPU)"))
    if not s.bind:
        errs.append(("$.server.bind", "expected at least one address"))
    for i, b in enumerate(s.bind):
        try:
            parse_bind(b)
        except ValueError as e:
            errs.append((f"$.server.bind[{i}]", str(e)))
    return errs


def _target_errors(targets: list[Target]) -> Problems:
    errs: Problems = []
    if not targets:
        errs.append(("$.providers.targets", "expected at least one target"))
    seen: set[str] = set()
    for i, t in enumerate(targets):
        p = f"$.providers.targets[{i}]"
        if t.id in seen:
            errs.append((f"{p}.id", f"duplicate target id {t.id!r}"))
        seen.add(t.id)
        errs += _provider_errors(p, t)
        for h, v in t.headers.items():
            if not _HEADER_NAME.fullmatch(h) or any(c in v for c in "\r\n\0"):
                errs.append((f"{p}.headers.{h}", "not a valid header name/value"))
        if t.timeouts.heartbeat < 0:
            errs.append((f"{p}.timeouts.heartbeat", "expected a number of seconds >= 0 (0: no heartbeats)"))
    return errs


def _provider_errors(p: str, t: Target) -> Problems:
    """What depends on the target's provider: where it lives, and options only one provider takes."""
    errs: Problems = []
    if t.provider != "mock":
        if not t.base_url and DEFAULT_BASE_URLS.get(t.provider) is None and t.provider != "bedrock":
            errs.append((f"{p}.base_url", f"required for provider {t.provider!r}"))
        elif t.base_url and not re.match(r"^https?://[^/\s]+", t.base_url):
            errs.append((f"{p}.base_url", f"expected an http:// or https:// URL, got {t.base_url!r}"))
        if t.mock is not None:
            errs.append((f"{p}.mock", "only valid with provider: mock"))
    return errs


def _routing_errors(routes: list[Route], ids: set[str]) -> Problems:
    errs: Problems = []
    routed: set[str] = set()
    for i, r in enumerate(routes):
        if r.model in routed:
            errs.append((f"$.routing[{i}].model", f"model {r.model!r} is routed twice"))
        routed.add(r.model)
        if not r.targets:
            errs.append((f"$.routing[{i}].targets", "expected at least one target id"))
        for j, tid in enumerate(r.targets):
            if tid not in ids:
                errs.append((f"$.routing[{i}].targets[{j}]", f"unknown target id {tid!r}"))
    return errs


def _chain_errors(cfg: Config) -> Problems:
    """The chain names known policies once each, and every configured policy is in it."""
    errs: Problems = []
    chain = cfg.policies.chain
    for i, name in enumerate(chain):
        if name not in POLICY_NAMES:
            errs.append((f"$.policies.chain[{i}]", f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})"))
        elif chain.index(name) != i:
            errs.append((f"$.policies.chain[{i}]", f"policy {name!r} appears twice"))
    for name in POLICY_NAMES:
        if cfg.policy.get(name) is not None and name not in chain:
            errs.append((f"$.policy.{name}", f"policy {name!r} is configured but not in policies.chain "
                                             "(add it to the chain, or remove its settings)"))
    if "rbac" in chain and cfg.policy.rbac is None:
        errs.append(("$.policy.rbac", "rbac is in the chain but has no keys: every request would be refused"))
    return errs


def _policy_errors(settings: PolicySettings) -> Problems:
    """Each configured policy's own problems, under `$.policy.<name>`."""
    errs: Problems = []
    for name, problems in _POLICY_PROBLEMS.items():
        own = settings.get(name)
        if own is not None:
            base = f"$.policy.{name}"
            errs += [(join(base, rel), what) for rel, what in problems(own)]
    return errs


def _environment_errors(cfg: Config) -> Problems:
    """What the environment and the file system must supply (secrets, files, a Bedrock region), every one at once."""
    errs: Problems = []
    ref = cfg.server.metrics_token_ref
    if ref is not None and not os.environ.get(ref.env):
        errs.append(("$.server.metrics_token_ref.env",
                     f"environment variable {ref.env} is not set (the /metrics token)"))
    for i, t in enumerate(cfg.providers.targets):
        p = f"$.providers.targets[{i}]"
        if t.secret_key_ref is not None and not os.environ.get(t.secret_key_ref.env):
            errs.append((f"{p}.secret_key_ref.env", f"environment variable {t.secret_key_ref.env} is not set "
                                                    f"(target {t.id!r} needs it for its API key)"))
        if t.mock is not None and t.mock.text_file and not Path(t.mock.text_file).is_file():
            errs.append((f"{p}.mock.text_file", f"no such file {t.mock.text_file!r}"))
        if t.provider == "bedrock" and not (t.region or os.environ.get("AWS_REGION")
                                             or os.environ.get("AWS_DEFAULT_REGION")
                                             or (t.base_url and "bedrock-runtime." in t.base_url)):
            errs.append((f"{p}.region", f"bedrock target {t.id!r} needs a region (set region, or AWS_REGION)"))
        if t.ca_file and not Path(t.ca_file).is_file():
            errs.append((f"{p}.ca_file", f"no such file {t.ca_file!r}"))
    return errs


def parse_bind(b: str) -> tuple[str, str | int]:
    """'HOST:PORT', '[v6]:PORT' or 'unix:/path' -> ('tcp', host, port) style tuple (family, address)."""
    if b.startswith("unix:"):
        path = b[5:]
        if not path:
            raise ValueError("expected unix:/path")
        return ("unix", path)
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", b)
    if not m:
        raise ValueError(f"expected HOST:PORT, [IPv6]:PORT or unix:/path, got {b!r}")
    host = m.group(1) or m.group(3) or "0.0.0.0"
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {b!r}")
    return (host, port)


# --- loading with line numbers ------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true/false (any case form) are booleans; `on`, `off`,
    `yes`, `no`, `y`, `n` are strings, as YAML 1.2 (and every other modern parser) reads them. So `on:` in a
    retry block is the key "on", not True; write `true`/`false` for a boolean."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _duplicate_keys(file: str, node: yaml.Node | None, path: str = "$") -> list[str]:
    """Every key given twice in one mapping, with both places (YAML says keys are unique; PyYAML keeps the last)."""
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, yaml.Node] = {}
        for k, v in node.value:
            key = getattr(k, "value", None)
            sub = f"{path}.{key}"
            if isinstance(key, str) and key in seen:
                first = seen[key]
                out.append(f"{_where(file, k)}: {sub}: duplicate key (first at line {first.start_mark.line + 1})")
            elif isinstance(key, str):
                seen[key] = k
            out += _duplicate_keys(file, v, sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _duplicate_keys(file, v, f"{path}[{i}]")
    return out


def _drop(data: Any, path: str, key: str | None) -> bool:
    """Remove the value at `path` (or its unknown `key`) from `data`, so the type pass can go on to the next
    error; False when the path cannot be followed."""
    parts = re.findall(r"\.([^.\[]+)|\[(\d+)\]", path)
    if key is not None:
        parts.append((key, ""))
    if not parts:
        return False
    node = data
    for name, idx in parts[:-1]:
        try:
            node = node[name] if name else node[int(idx)]
        except (KeyError, IndexError, TypeError, ValueError):
            return False
    name, idx = parts[-1]
    try:
        if name:
            del node[name]
        else:
            node[int(idx)] = None
    except (KeyError, IndexError, TypeError, ValueError):
        return False
    return True


#: Type errors reported from one file before giving up (each costs a conversion pass).
_MAX_TYPE_ERRORS = 50

def _node_at(node: yaml.Node | None, path: str) -> yaml.Node | None:
    """Walk a composed YAML node tree along a msgspec path like `$.a.b[0].c`; the deepest node found."""
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        key, idx = part
        if isinstance(node, yaml.MappingNode) and key:
            nxt = None
            for k, v in node.value:
                if getattr(k, "value", None) == key:
                    nxt = v
                    break
            if nxt is None:
                # the key itself (e.g. an unknown field) is what the error is about
                return node
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and idx:
            i = int(idx)
            if i >= len(node.value):
                return node
            node = node.value[i]
        else:
            return node
    return node


def _unknown_key_node(node: yaml.Node | None, path: str, key: str) -> yaml.Node | None:
    parent = _node_at(node, path)
    if isinstance(parent, yaml.MappingNode):
        for k, _ in parent.value:
            if getattr(k, "value", None) == key:
                return k
    return parent


def _where(file: str, node: yaml.Node | None) -> str:
    if node is None:
        return file
    return f"{file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def load_config(path: str | os.PathLike[str], *, resolve_secrets: bool = True) -> tuple[Config, dict[str, str]]:
    """Load and validate a config file. Returns (config, secrets by target id). Raises ConfigError."""
    file = str(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{file}: cannot read config: {e.strerror}") from None
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise ConfigError(f"{loc}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level (pack, server, providers)")
    dups = _duplicate_keys(file, root)
    type_errors: list[str] = []
    dropped: set[str] = set()
    cfg: Config | None = None
    while cfg is None:
        try:
            cfg = msgspec.convert(data, Config, strict=True)
        except msgspec.ValidationError as e:
            # Every type error at once: report this one, drop the value at fault, convert again (a required
            # value dropped that way ends the pass: its "missing" would only repeat the error).
            line, path, key, missing = _explain(file, root, str(e))
            if missing and f"{path}.{key}" in dropped:
                break
            type_errors.append(line)
            if len(type_errors) >= _MAX_TYPE_ERRORS or missing or not _drop(data, path, key):
                break
            dropped.add(f"{path}.{key}" if key else path)
    if dups or type_errors or cfg is None:
        raise ConfigError("\n".join(dups + type_errors))
    errs = _semantic_errors(cfg) + (_environment_errors(cfg) if resolve_secrets else [])
    if errs:
        # Every problem at once, each with its place: fixing a config should not be a loop of one error a run.
        raise ConfigError("\n".join(f"{_where(file, _node_at(root, key))}: {key}: {problem}" for key, problem in errs))
    secrets: dict[str, str] = {}
    if resolve_secrets:
        for t in cfg.providers.targets:
            if t.secret_key_ref is not None:
                secrets[t.id] = os.environ[t.secret_key_ref.env]
    return cfg, secrets


def _explain(file: str, root: yaml.Node | None, msg: str) -> tuple[str, str, str | None, bool]:
    """Turn msgspec's 'Expected `int`, got `str` - at `$.server.workers`' into 'file:line:column: $.server.workers:
    ...'; also the path at fault, the unknown or missing key if that is the fault, and whether it is missing."""
    m = re.match(r"^(.*?)(?: - at `([^`]*)`)?$", msg, re.S)
    problem, path = (m.group(1), m.group(2)) if m else (msg, None)
    path = path or "$"
    unknown = re.match(r"Object contains unknown field `([^`]*)`", problem)
    if unknown:
        node = _unknown_key_node(root, path, unknown.group(1))
        full = f"{path}.{unknown.group(1)}"
        hint = "check the spelling; see the README's configuration reference"
        if unknown.group(1) in ("true", "false", "True", "False"):
            hint = "a YAML 1.1 boolean word such as on/off/yes/no was read as a key? quote it"
        return f"{_where(file, node)}: {full}: unknown key ({hint})", path, unknown.group(1), False
    missing = re.match(r"Object missing required field `([^`]*)`", problem)
    if missing:
        return (f"{_where(file, _node_at(root, path))}: {path}.{missing.group(1)}: required key is missing",
                path, missing.group(1), True)
    if problem.startswith("Invalid enum value") and path.endswith(".provider"):
        problem += " (expected one of: " + ", ".join(get_args(Provider)) + ")"
    return f"{_where(file, _node_at(root, path))}: {path}: {problem[:1].lower() + problem[1:]}", path, None, False


def dump_config(cfg: Config) -> str:
    """The effective config (defaults filled in) as YAML."""
    return yaml.safe_dump(msgspec.to_builtins(cfg), sort_keys=False, default_flow_style=False)
