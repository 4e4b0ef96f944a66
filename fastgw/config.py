"""The config schema (msgspec Structs) and its loader: YAML in the "pack" layout, unknown keys rejected, errors that name file, line and key.

Defaults come from `fastgw.proto.limits`, where each carries its reason.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, get_args

import msgspec
import yaml

from fastgw.api import limits as api_limits
from fastgw.proto import limits

__all__ = ["Config", "ConfigError", "load_config", "parse_bind", "dump_config"]


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
    graceful_timeout: float = api_limits.GRACEFUL_TIMEOUT
    worker_timeout: float = api_limits.WORKER_TIMEOUT
    header_timeout: float = limits.HEADER_TIMEOUT
    body_timeout: float = limits.BODY_TIMEOUT
    keepalive_timeout: float = limits.KEEPALIVE_TIMEOUT
    max_header_bytes: int = limits.MAX_HEADER_BYTES
    max_headers: int = limits.MAX_HEADERS
    max_body_bytes: int = limits.MAX_BODY_BYTES
    send_timeout: float = limits.SEND_TIMEOUT
    #: When set, GET /metrics requires `Authorization: Bearer <token>` (metrics name models and targets).
    metrics_token_ref: EnvRef | None = None


class EnvRef(_Base):
    env: str


class MockOptions(_Base):
    #: Reply text; the built-in paragraph when neither text nor text_file is set.
    text: str | None = None
    text_file: str | None = None
    #: Characters per streamed chunk (about one token of English).
    chunk_size: int = 4
    #: Content chunks per reply; the text repeats to fill them. Default: as many as the text needs.
    chunks: int | None = None
    #: Seconds between chunks.
    delay: float = 0.0
    #: Seconds before the first chunk.
    ttft: float = 0.0


Provider = Literal["openai", "azure", "groq", "mistral", "together", "vllm", "anthropic", "gemini", "ollama",
                   "cohere", "bedrock", "mock"]

#: Where each provider lives when a target names no base_url (None: base_url is required).
DEFAULT_BASE_URLS: dict[str, str | None] = {
    "openai": "https://api.openai.com/v1", "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1", "together": "https://api.together.xyz/v1", "vllm": None,
    "azure": None, "anthropic": "https://api.anthropic.com", "gemini": "https://generativelanguage.googleapis.com",
    "ollama": "http://127.0.0.1:11434", "cohere": "https://api.cohere.com", "bedrock": None,
}


class Timeouts(_Base):
    connect: float = api_limits.CONNECT_TIMEOUT
    ttft: float = api_limits.TTFT_TIMEOUT
    idle: float = api_limits.IDLE_TIMEOUT
    max_duration: float = api_limits.MAX_DURATION
    #: While waiting for the first event, send `: ping` SSE comments this often (0: never). A heartbeat
    #: commits the response: after one, a failure is an in-stream error, no longer a transparent fallback.
    heartbeat: float = 0.0


class CircuitBreaker(_Base):
    failures: int = api_limits.BREAKER_FAILURES
    cooldown: float = api_limits.BREAKER_COOLDOWN


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
    weight: float = 1.0
    mock: MockOptions | None = None
    #: azure: the deployment name (default: model) and the api-version query parameter.
    deployment: str | None = None
    api_version: str = "2024-10-21"
    #: bedrock: AWS region (default: AWS_REGION); base_url then overrides the regional endpoint.
    region: str | None = None


class Providers(_Base):
    targets: list[Target]


RetryOn = Literal["connect_error", "timeout", "429", "5xx"]


class Retry(_Base):
    #: Tries per target, the first included (1: no retry).
    attempts: int = 2
    #: Seconds before the first retry; doubles each time.
    backoff: float = 0.2
    #: The longest upstream Retry-After we are willing to wait; longer ones go to the next target instead.
    max_retry_after: float = 10.0
    on: list[RetryOn] = msgspec.field(default_factory=lambda: ["connect_error", "timeout", "429", "5xx"])


class Route(_Base):
    model: str
    targets: list[str]
    strategy: Literal["fallback", "loadbalance"] = "fallback"
    retry: Retry = msgspec.field(default_factory=Retry)


# --- policies -------------------------------------------------------------------------------

#: Policy names a chain may hold.
POLICY_NAMES = ("rbac", "prompt-injection", "pii-detector", "safety-filter", "quality-scorer", "audit-logger")

OnError = Literal["block", "allow"]


class CustomPattern(_Base):
    name: str
    regex: str
    #: Longest match in bytes (bounds memory and the streaming holdback).
    max_width: int | None = None


class PiiDetector(_Base):
    action: Literal["redact", "block", "observe"] = "redact"
    streaming_mode: Literal["realtime", "buffered"] = "realtime"
    #: Built-in entities to detect; all of them when not set.
    entities: list[str] | None = None
    #: "{entity}" is replaced by the entity name; a single character masks the span instead.
    replacement: str = "[REDACTED:{entity}]"
    apply_to: list[Literal["input", "output"]] = msgspec.field(default_factory=lambda: ["input", "output"])
    custom: list[CustomPattern] = msgspec.field(default_factory=list)
    #: A policy that fails internally refuses the request ("block", fail closed) or is skipped ("allow").
    on_error: OnError = "block"


class SafetyFilter(_Base):
    action: Literal["block", "redact", "observe"] = "block"
    streaming_mode: Literal["realtime", "buffered"] = "realtime"
    #: Phrases matched literally (whitespace inside a phrase matches any run of whitespace).
    terms: list[str] = msgspec.field(default_factory=list)
    #: Hyperscan regular expressions.
    regex: list[str] = msgspec.field(default_factory=list)
    #: Files with one phrase per line (# comments and blank lines ignored).
    files: list[str] = msgspec.field(default_factory=list)
    case_insensitive: bool = True
    #: Match with Unicode semantics (UTF-8, Unicode case folding and word classes).
    unicode: bool = False
    #: Longest match in bytes for `regex` entries (bounds the streaming holdback).
    max_width: int = 256
    replacement: str = "[FILTERED]"
    apply_to: list[Literal["input", "output"]] = msgspec.field(default_factory=lambda: ["input", "output"])
    on_error: OnError = "block"


class InjectionPattern(_Base):
    regex: str
    weight: float = 1.0


class PromptInjection(_Base):
    action: Literal["block", "observe"] = "block"
    #: Block when the summed weight of distinct matched patterns reaches this.
    threshold: float = 1.0
    #: Use the curated built-in phrasings.
    builtin: bool = True
    patterns: list[InjectionPattern] = msgspec.field(default_factory=list)
    on_error: OnError = "block"


class RbacKey(_Base):
    name: str
    #: SHA-256 of the key, hex: keys are never stored in plain text (`fastgw keys hash`).
    sha256: str
    roles: list[str] = msgspec.field(default_factory=list)


class RbacRole(_Base):
    #: Model names or globs (fnmatch) this role may use.
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    #: Endpoint paths or globs.
    endpoints: list[str] = msgspec.field(default_factory=lambda: ["*"])
    stream: bool = True


class Rbac(_Base):
    keys: list[RbacKey] = msgspec.field(default_factory=list)
    roles: dict[str, RbacRole] = msgspec.field(default_factory=dict)
    on_error: OnError = "block"


class QualityThresholds(_Base):
    min_aggregate: float = 0.7


class QualityScorer(_Base):
    action: Literal["block", "observe"] = "block"
    #: Always buffered: it judges the whole answer.
    streaming_mode: Literal["buffered"] = "buffered"
    thresholds: QualityThresholds = msgspec.field(default_factory=QualityThresholds)
    on_error: OnError = "block"


class AuditLogger(_Base):
    #: Directory for the audit files (one per worker and day); default: $STATE_DIRECTORY or ./audit.
    #: retention_days: files older than this are deleted at start and at each daily rotation (0 keeps all).
    path: str | None = None
    #: Chain each record to the previous one with SHA-256 (`fastgw audit verify`).
    immutable: bool = True
    retention_days: int = 365
    #: Also record requests refused by an earlier policy (401, 403, 409).
    log_all_access: bool = True
    #: Disk durability on top of "handed to the OS": fsync every record, every `fsync_interval`, or never.
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval: float = 1.0
    on_error: OnError = "block"


class PolicySettings(_Base):
    pii_detector: PiiDetector | None = msgspec.field(default=None, name="pii-detector")
    safety_filter: SafetyFilter | None = msgspec.field(default=None, name="safety-filter")
    prompt_injection: PromptInjection | None = msgspec.field(default=None, name="prompt-injection")
    rbac: Rbac | None = None
    quality_scorer: QualityScorer | None = msgspec.field(default=None, name="quality-scorer")
    audit_logger: AuditLogger | None = msgspec.field(default=None, name="audit-logger")

    def get(self, name: str) -> object:
        """The settings struct of a policy by its chain name (None when not configured)."""
        return getattr(self, name.replace("-", "_"))


class Policies(_Base):
    chain: list[str] = msgspec.field(default_factory=list)


class Config(_Base):
    pack: Pack
    providers: Providers
    server: Server = msgspec.field(default_factory=Server)
    policies: Policies = msgspec.field(default_factory=Policies)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    routing: list[Route] = msgspec.field(default_factory=list)

    def pii(self) -> PiiDetector | None:
        """The pii-detector settings when the chain enables it (defaults if it has no settings)."""
        if "pii-detector" not in self.policies.chain:
            return None
        return self.policy.pii_detector or PiiDetector()


# --- validation beyond types ----------------------------------------------------

_POSITIVE = ("graceful_timeout", "worker_timeout", "header_timeout", "body_timeout", "keepalive_timeout", "send_timeout",
             "max_header_bytes", "max_headers", "max_body_bytes")


def _semantic_errors(cfg: Config) -> list[tuple[str, str]]:
    """(key path, problem) pairs for what the types alone cannot express."""
    errs: list[tuple[str, str]] = []
    s = cfg.server
    if s.workers < 0:
        errs.append(("$.server.workers", "expected an integer >= 0 (0 = one per CPU)"))
    for name in _POSITIVE:
        if getattr(s, name) <= 0:
            errs.append((f"$.server.{name}", "expected a number > 0"))
    if not s.bind:
        errs.append(("$.server.bind", "expected at least one address"))
    for i, b in enumerate(s.bind):
        try:
            parse_bind(b)
        except ValueError as e:
            errs.append((f"$.server.bind[{i}]", str(e)))
    seen: set[str] = set()
    for i, t in enumerate(cfg.providers.targets):
        p = f"$.providers.targets[{i}]"
        if t.id in seen:
            errs.append((f"{p}.id", f"duplicate target id {t.id!r}"))
        seen.add(t.id)
        if t.provider != "mock":
            if not t.base_url and DEFAULT_BASE_URLS.get(t.provider) is None and t.provider != "bedrock":
                errs.append((f"{p}.base_url", f"required for provider {t.provider!r}"))
            elif t.base_url and not re.match(r"^https?://[^/\s]+", t.base_url):
                errs.append((f"{p}.base_url", f"expected an http:// or https:// URL, got {t.base_url!r}"))
        if t.mock is not None:
            if t.provider != "mock":
                errs.append((f"{p}.mock", "only valid with provider: mock"))
            if t.mock.chunk_size <= 0:
                errs.append((f"{p}.mock.chunk_size", "expected an integer > 0"))
            if t.mock.chunks is not None and t.mock.chunks < 0:
                errs.append((f"{p}.mock.chunks", "expected an integer >= 0"))
            if t.mock.delay < 0 or t.mock.ttft < 0:
                errs.append((f"{p}.mock", "delay and ttft must be >= 0"))
        for h in t.headers:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", h) or any(c in t.headers[h] for c in "\r\n\0"):
                errs.append((f"{p}.headers.{h}", "not a valid header name/value"))
        for name in ("connect", "ttft", "idle", "max_duration"):
            if getattr(t.timeouts, name) <= 0:
                errs.append((f"{p}.timeouts.{name}", "expected a number of seconds > 0"))
        if t.timeouts.heartbeat < 0:
            errs.append((f"{p}.timeouts.heartbeat", "expected a number of seconds >= 0 (0: no heartbeats)"))
        if t.circuit_breaker.failures < 1 or t.circuit_breaker.cooldown <= 0:
            errs.append((f"{p}.circuit_breaker", "expected failures >= 1 and cooldown > 0"))
        if t.weight < 0:
            errs.append((f"{p}.weight", "expected a number >= 0"))
    if not cfg.providers.targets:
        errs.append(("$.providers.targets", "expected at least one target"))
    ids = {t.id for t in cfg.providers.targets}
    routed: set[str] = set()
    for i, r in enumerate(cfg.routing):
        if r.model in routed:
            errs.append((f"$.routing[{i}].model", f"model {r.model!r} is routed twice"))
        routed.add(r.model)
        if not r.targets:
            errs.append((f"$.routing[{i}].targets", "expected at least one target id"))
        for j, tid in enumerate(r.targets):
            if tid not in ids:
                errs.append((f"$.routing[{i}].targets[{j}]", f"unknown target id {tid!r}"))
        if r.retry.attempts < 1:
            errs.append((f"$.routing[{i}].retry.attempts", "expected an integer >= 1"))
        if r.retry.backoff < 0 or r.retry.max_retry_after < 0:
            errs.append((f"$.routing[{i}].retry", "backoff and max_retry_after must be >= 0"))
    for i, name in enumerate(cfg.policies.chain):
        if name not in POLICY_NAMES:
            errs.append((f"$.policies.chain[{i}]", f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})"))
        elif cfg.policies.chain.index(name) != i:
            errs.append((f"$.policies.chain[{i}]", f"policy {name!r} appears twice"))
    for name in POLICY_NAMES:
        if cfg.policy.get(name) is not None and name not in cfg.policies.chain:
            errs.append((f"$.policy.{name}", f"policy {name!r} is configured but not in policies.chain "
                                             "(add it to the chain, or remove its settings)"))
    pii = cfg.policy.pii_detector
    if pii is not None:
        errs.extend(_pii_errors(pii))
    if cfg.policy.safety_filter is not None:
        errs.extend(_safety_errors(cfg.policy.safety_filter))
    if cfg.policy.prompt_injection is not None:
        errs.extend(_injection_errors(cfg.policy.prompt_injection))
    if cfg.policy.rbac is not None:
        from fastgw.policy.rbac import RbacConfigError, RbacPolicy

        try:
            RbacPolicy(cfg.policy.rbac)
        except RbacConfigError as e:
            errs.append((f"$.policy.rbac.{e.path}", e.problem))
    elif "rbac" in cfg.policies.chain:
        errs.append(("$.policy.rbac", "rbac is in the chain but has no keys: every request would be refused"))
    qs = cfg.policy.quality_scorer
    if qs is not None and not 0 <= qs.thresholds.min_aggregate <= 1:
        errs.append(("$.policy.quality-scorer.thresholds.min_aggregate", "expected a number between 0 and 1"))
    audit = cfg.policy.audit_logger
    if audit is not None:
        if audit.retention_days < 0:
            errs.append(("$.policy.audit-logger.retention_days", "expected an integer >= 0 (0 keeps every file)"))
        if audit.fsync_interval <= 0:
            errs.append(("$.policy.audit-logger.fsync_interval", "expected a number > 0"))
    return errs


def _safety_errors(sf: SafetyFilter) -> list[tuple[str, str]]:
    from fastgw.scan.database import Pattern, PatternError, compile_patterns

    errs: list[tuple[str, str]] = []
    base = "$.policy.safety-filter"
    for i, f in enumerate(sf.files):
        if not Path(f).is_file():
            errs.append((f"{base}.files[{i}]", f"no such file {f!r}"))
    for i, rx in enumerate(sf.regex):
        try:
            compile_patterns([Pattern(f"regex{i}", "SAFETY_REGEX", rx.encode(), sf.max_width,
                                      caseless=sf.case_insensitive, utf8=sf.unicode)])
        except PatternError as e:
            errs.append((f"{base}.regex[{i}]", str(e)))
    if not (sf.terms or sf.regex or sf.files):
        errs.append((base, "expected at least one of terms, regex or files"))
    return errs


def _injection_errors(pi: PromptInjection) -> list[tuple[str, str]]:
    from fastgw.scan.database import Pattern, PatternError, compile_patterns

    errs: list[tuple[str, str]] = []
    if not pi.threshold > 0:
        errs.append(("$.policy.prompt-injection.threshold", "expected a number > 0"))
    for i, c in enumerate(pi.patterns):
        try:
            compile_patterns([Pattern(f"custom{i}", "INJECTION", c.regex.encode(), 256, caseless=True)])
        except PatternError as e:
            errs.append((f"$.policy.prompt-injection.patterns[{i}].regex", str(e)))
        if not c.weight >= 0:
            errs.append((f"$.policy.prompt-injection.patterns[{i}].weight", "expected a number >= 0"))
    return errs


def _pii_errors(pii: PiiDetector) -> list[tuple[str, str]]:
    from fastgw.scan.database import PatternError, compile_patterns
    from fastgw.scan.patterns import ENTITIES, custom_pattern

    errs: list[tuple[str, str]] = []
    base = "$.policy.pii-detector"
    for i, e in enumerate(pii.entities or []):
        if e not in ENTITIES:
            errs.append((f"{base}.entities[{i}]", f"unknown entity {e!r} (known: {', '.join(ENTITIES)})"))
    if not pii.replacement:
        errs.append((f"{base}.replacement", "expected a non-empty string"))
    names: set[str] = set(ENTITIES)
    for i, c in enumerate(pii.custom):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", c.name) or c.name in names:
            errs.append((f"{base}.custom[{i}].name", f"expected a new identifier (letters, digits, _), got {c.name!r}"))
        names.add(c.name)
        if c.max_width is not None and not 0 < c.max_width <= 65536:
            errs.append((f"{base}.custom[{i}].max_width", "expected an integer between 1 and 65536"))
            continue
        try:
            compile_patterns([custom_pattern(c.name, c.regex, c.max_width)])
        except PatternError as e:
            errs.append((f"{base}.custom[{i}].regex", str(e)))
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
    return f"{file}:{node.start_mark.line + 1}"


def load_config(path: str | os.PathLike[str], *, resolve_secrets: bool = True) -> tuple[Config, dict[str, str]]:
    """Load and validate a config file. Returns (config, secrets by target id). Raises ConfigError."""
    file = str(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{file}: cannot read config: {e.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{file}:{mark.line + 1}" if mark else file
        raise ConfigError(f"{loc}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level (pack, server, providers)")
    try:
        cfg = msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as e:
        raise ConfigError(_explain(file, root, str(e))) from None
    errs = _semantic_errors(cfg)
    if errs:
        # Every problem at once, each with its place: fixing a config should not be a loop of one error a run.
        raise ConfigError("\n".join(f"{_where(file, _node_at(root, key))}: {key}: {problem}" for key, problem in errs))
    secrets: dict[str, str] = {}
    if resolve_secrets and cfg.server.metrics_token_ref is not None:
        if not os.environ.get(cfg.server.metrics_token_ref.env):
            key = "$.server.metrics_token_ref.env"
            raise ConfigError(f"{_where(file, _node_at(root, key))}: {key}: environment variable "
                              f"{cfg.server.metrics_token_ref.env} is not set (the /metrics token)")
    if resolve_secrets:
        for i, t in enumerate(cfg.providers.targets):
            if t.secret_key_ref is not None:
                val = os.environ.get(t.secret_key_ref.env)
                if not val:
                    key = f"$.providers.targets[{i}].secret_key_ref.env"
                    raise ConfigError(
                        f"{_where(file, _node_at(root, key))}: {key}: environment variable "
                        f"{t.secret_key_ref.env} is not set (target {t.id!r} needs it for its API key)"
                    )
                secrets[t.id] = val
            if t.mock is not None and t.mock.text_file:
                if not Path(t.mock.text_file).is_file():
                    key = f"$.providers.targets[{i}].mock.text_file"
                    raise ConfigError(f"{_where(file, _node_at(root, key))}: {key}: no such file {t.mock.text_file!r}")
            if t.provider == "bedrock" and not (t.region or os.environ.get("AWS_REGION")
                                                 or os.environ.get("AWS_DEFAULT_REGION")
                                                 or (t.base_url and "bedrock-runtime." in t.base_url)):
                key = f"$.providers.targets[{i}].region"
                raise ConfigError(f"{_where(file, _node_at(root, f'$.providers.targets[{i}]'))}: {key}: "
                                  f"bedrock target {t.id!r} needs a region (set region, or AWS_REGION)")
            if t.ca_file and not Path(t.ca_file).is_file():
                key = f"$.providers.targets[{i}].ca_file"
                raise ConfigError(f"{_where(file, _node_at(root, key))}: {key}: no such file {t.ca_file!r}")
    return cfg, secrets


def _explain(file: str, root: yaml.Node | None, msg: str) -> str:
    """Turn msgspec's 'Expected `int`, got `str` - at `$.server.workers`' into 'file:line: $.server.workers: ...'."""
    m = re.match(r"^(.*?)(?: - at `([^`]*)`)?$", msg, re.S)
    problem, path = (m.group(1), m.group(2)) if m else (msg, None)
    path = path or "$"
    unknown = re.match(r"Object contains unknown field `([^`]*)`", problem)
    if unknown:
        node = _unknown_key_node(root, path, unknown.group(1))
        full = f"{path}.{unknown.group(1)}"
        return f"{_where(file, node)}: {full}: unknown key (check the spelling; see the README's configuration reference)"
    missing = re.match(r"Object missing required field `([^`]*)`", problem)
    if missing:
        return f"{_where(file, _node_at(root, path))}: {path}.{missing.group(1)}: required key is missing"
    if problem.startswith("Invalid enum value") and path.endswith(".provider"):
        problem += " (expected one of: " + ", ".join(get_args(Provider)) + ")"
    return f"{_where(file, _node_at(root, path))}: {path}: {problem[:1].lower() + problem[1:]}"


def dump_config(cfg: Config) -> str:
    """The effective config (defaults filled in) as YAML."""
    return yaml.safe_dump(msgspec.to_builtins(cfg), sort_keys=False, default_flow_style=False)
