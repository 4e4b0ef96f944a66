"""The policy chain of a config: compiled once in the master, run per request in chain order by every worker.

One engine for every path: input policies run on the parsed request of every
endpoint; streamed answers go through `StreamPolicy`; non-streamed answers through
the same scanning policies on whole texts and the same buffered checks; the audit
logger records every request, refused ones included.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import orjson

from fastgw.api.errors import GatewayError
from fastgw.api.limits import MAX_REQUEST_CPU
from fastgw.api.usage import with_chat_names
from fastgw.policy.base import AuthError, Forbidden, PolicyFailure, PolicyViolation, RequestContext
from fastgw.policy.findings import Findings
from fastgw.policy.stream import StreamPolicy, open_stream
from fastgw.policy.textscan import (Prefilter, RequestTooExpensive, ScanPolicy, Slicer, Slot, decide_clean,
                                     process_slots, process_slots_sliced, request_slots, response_slots)
from fastgw.scan.database import JointDB
from fastgw.scan.scanner import find_spans

if TYPE_CHECKING:  # audit is imported when a worker starts it (its thread and files cost nothing otherwise)
    from fastgw.policy.audit import AuditLog, AuditLogger

__all__ = ["Chain", "build_chain", "RequestTooExpensive", "Slicer"]

log = logging.getLogger("fastgw.policy")

_REFUSALS = (PolicyViolation, AuthError, Forbidden, RequestTooExpensive)

#: Non-streamed answers up to this size are checked in one go by `check_output_body_async` (see
#: `fastgw.pipeline.SYNC_INPUT_BYTES` for the trade-off: the same for answers).
SYNC_OUTPUT_BYTES: Final = 16384


class Chain:
    """The enabled policies in chain order."""

    def __init__(self, order: list[str] | None = None, policies: dict[str, Any] | None = None,
                 findings: Findings | None = None) -> None:
        self.order = order or []
        self.policies = policies or {}
        self.findings = findings or Findings()
        self.scanners: list[ScanPolicy] = [self.policies[n] for n in self.order
                                           if isinstance(self.policies.get(n), ScanPolicy)]
        for i, p in enumerate(self.scanners):
            p.index = i
        self.output_scanners = [p for p in self.scanners if p.output]
        self.input_steps = [n for n in self.order if n in ("rbac", "prompt-injection")
                            or (n in self.policies and isinstance(self.policies[n], ScanPolicy)
                                and self.policies[n].input)]
        #: Each direction's scanning policies as one block database: a body none of them can find anything in is
        #: decided with one block scan per text (`Prefilter`).
        scanning_input = [self.policies[n] for n in self.input_steps if isinstance(self.policies[n], ScanPolicy)]
        self._input_filter = Prefilter(scanning_input) if scanning_input else None
        self._output_filter = Prefilter(self.output_scanners) if self.output_scanners else None
        #: The output policies' stream databases as one, when there are several: a streamed answer's text is
        #: scanned once for all of them (`JointDB`).
        self._output_joint = JointDB([p.db for p in self.output_scanners]) if len(self.output_scanners) > 1 else None
        self.quality = self.policies.get("quality-scorer")
        self.audit: AuditLog | None = None  # started per worker
        self._audit_settings: AuditLogger | None = self.policies.get("audit-logger")
        # What every request asks of the chain, as attributes (the chain does not change once built): properties
        # were interpreted calls on every request's path, a chain or none (issue 18).
        pii = self.policies.get("pii-detector")
        self.pii: ScanPolicy | None = pii if isinstance(pii, ScanPolicy) else None
        self.rbac: Any = self.policies.get("rbac")
        #: Whether answers must be decoded (anything inspects, holds or records them).
        self.decodes_output = (bool(self.output_scanners) or self.quality is not None
                               or self._audit_settings is not None)
        #: Whether a streamed answer is held until it is judged whole.
        self.buffered = self.quality is not None or any(p.buffered and p.action != "observe"
                                                        for p in self.output_scanners)
        self._audit_redactor: ScanPolicy | None = None
        #: CPU seconds the policies may spend on one request, both directions (`server.max_request_cpu`: the
        #: app sets it from the config; the default is `fastgw.api.limits.MAX_REQUEST_CPU`).
        self.max_request_cpu = MAX_REQUEST_CPU
        #: Input-policy CPU of requests whose large body was checked in slices, by id(ctx), while the request
        #: runs (the pipeline notes and forgets it): their stream policy gets what is left of the budget.
        self._input_cpu: dict[int, float] = {}

    # ---- lifecycle (per worker) ----------------------------------------------------------------
    def allocate_scratch(self) -> None:
        """Per-worker scan state (Hyperscan scratch), after fork."""
        for p in self.policies.values():
            alloc = getattr(p, "allocate_scratch", None)
            if alloc is not None:
                alloc()
        for flt in (self._input_filter, self._output_filter):
            if flt is not None:
                flt.allocate_scratch()
        if self._output_joint is not None:
            self._output_joint.allocate_scratch()
        if self._audit_redactor is not None:
            self._audit_redactor.allocate_scratch()

    def start(self, worker_id: int) -> None:
        """Worker start: scratch, and the audit writer thread."""
        self.allocate_scratch()
        if self._audit_settings is not None:
            from fastgw.policy.audit import AuditLog

            self.audit = AuditLog(self._audit_settings, worker_id)
            self.audit.start()

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close(5.0)

    # ---- input ------------------------------------------------------------------------------------
    def authenticate(self, ctx: RequestContext) -> None:
        """rbac first of all: who is asking (every /v1 endpoint, /v1/models included)."""
        rbac = self.rbac
        if rbac is not None:
            self._guarded("rbac", "input", ctx, lambda: rbac.authenticate(ctx))

    def check_input(self, ctx: RequestContext, body: dict) -> bool:
        """Input policies in chain order. Refusals raise; returns True when the body was changed."""
        changed = False
        #: The body's texts, walked once for every scanning policy (a redaction replaces a text in its container,
        #: where the next policy reads it), and whether `Prefilter` finds nothing in them.
        texts: tuple[list[Slot], bool] | None = None
        for name in self.input_steps:
            pol = self.policies[name]
            if name == "rbac":
                self._guarded(name, "input", ctx,
                              lambda: pol.authorize(ctx, ctx.path, ctx.model, ctx.stream))
                ctx.decide(name, "input", "allow", principal=ctx.principal)
            elif name == "prompt-injection":
                self._guarded(name, "input", ctx, lambda: self._injection(pol, ctx, body))
            else:
                # `_guarded` written out: this is every chained request's path, where its closures cost more
                # than the step when the prefilter vouches for the texts.
                try:
                    if texts is None:
                        texts = self._input_texts(body)
                    if texts[1]:
                        decide_clean(ctx, [pol], "input")
                    else:
                        changed |= process_slots([pol], iter(texts[0]), "input", self.findings, ctx)
                except _REFUSALS:
                    raise
                except Exception as e:  # noqa: BLE001 - as in `_guarded`
                    self._failed(name, "input", ctx, e)
        return changed

    def _input_texts(self, body: dict) -> tuple[list[Slot], bool]:
        slots = list(request_slots(body))
        flt = self._input_filter
        return slots, flt is not None and flt.clean(slots)

    async def check_input_async(self, ctx: RequestContext, body: dict, slicer: Slicer | None = None) -> bool:
        """`check_input` in slices of the event loop, within the request's CPU budget (`Slicer`): the same
        decisions and the same body, for bodies too large to check in one go. Raises RequestTooExpensive past
        the budget (the slicer's, else `max_request_cpu`)."""
        sl = slicer if slicer is not None else Slicer(self.max_request_cpu)
        changed = False
        for name in self.input_steps:
            pol = self.policies[name]
            if name == "rbac":
                self._guarded(name, "input", ctx, lambda: pol.authorize(ctx, ctx.path, ctx.model, ctx.stream))
                ctx.decide(name, "input", "allow", principal=ctx.principal)
            elif name == "prompt-injection":
                await self._guarded_async(name, "input", ctx, lambda: self._injection_sliced(pol, ctx, body, sl))
            else:
                changed |= bool(await self._guarded_async(name, "input", ctx, lambda: process_slots_sliced(
                    [pol], request_slots(body), "input", self.findings, ctx, sl)))
            if sl.due():
                await sl.pause()
        sl.charge()
        return changed

    def note_input_cpu(self, ctx: RequestContext, seconds: float) -> None:
        """The input policies' CPU time of a request still running (its stream policy gets the rest)."""
        self._input_cpu[id(ctx)] = seconds

    def forget(self, ctx: RequestContext) -> None:
        """The request is over (see `note_input_cpu`)."""
        self._input_cpu.pop(id(ctx), None)

    def _injection(self, pol: Any, ctx: RequestContext, body: dict) -> None:
        texts = _untrusted_texts(body, getattr(pol, "roles", None), ctx.endpoint)
        self._injection_verdict(ctx, *pol.check(texts))

    async def _injection_sliced(self, pol: Any, ctx: RequestContext, body: dict, slicer: Slicer) -> None:
        from fastgw.policy.injection import iter_request_texts

        roles = getattr(pol, "roles", None)
        texts = (text for role, text in iter_request_texts(body, ctx.endpoint) if roles is None or role in roles)
        self._injection_verdict(ctx, *await pol.check_sliced(texts, slicer))

    def _injection_verdict(self, ctx: RequestContext, blocked: bool, score: float, names: list[str]) -> None:
        if blocked:
            ctx.decide("prompt-injection", "input", "block", score=round(score, 3), matched=names)
            raise PolicyViolation("Request blocked: prompt injection detected", "prompt-injection", "input")
        ctx.decide("prompt-injection", "input", "observe" if names else "allow", score=round(score, 3),
                   matched=names)

    def _guarded(self, name: str, phase: str, ctx: RequestContext, fn: Callable[[], Any]) -> Any:
        """Run one policy step: refusals pass through; an internal failure fails closed unless on_error: allow."""
        try:
            return fn()
        except _REFUSALS:
            raise
        except Exception as e:  # noqa: BLE001 - a policy bug must not crash the worker or let the request slip
            return self._failed(name, phase, ctx, e)

    async def _guarded_async(self, name: str, phase: str, ctx: RequestContext, fn: Callable[[], Awaitable[Any]]) -> Any:
        """`_guarded` for a step that awaits (a sliced check)."""
        try:
            return await fn()
        except _REFUSALS:
            raise
        except Exception as e:  # noqa: BLE001 - a policy bug must not crash the worker or let the request slip
            return self._failed(name, phase, ctx, e)

    def _failed(self, name: str, phase: str, ctx: RequestContext, e: Exception) -> Any:
        """A policy step raised: let the request pass (on_error: allow, recorded) or fail closed (PolicyFailure)."""
        pol = self.policies.get(name)
        if getattr(pol, "on_error", "block") == "allow":
            log.exception("policy %s failed on request %s; on_error: allow lets it pass", name, ctx.request_id)
            ctx.decide(name, phase, "error", allowed=True, error=type(e).__name__)
            return None
        log.exception("policy %s failed on request %s; failing closed", name, ctx.request_id)
        ctx.decide(name, phase, "error", allowed=False, error=type(e).__name__)
        raise PolicyFailure(name) from None

    # ---- output -----------------------------------------------------------------------------------
    def stream_policy(self, ctx: RequestContext, dialect: str = "chat", strip_usage: bool = False) -> StreamPolicy:
        """The output engine for one streamed answer, of the dialect's class ("chat", "responses", "messages");
        `strip_usage`: take out the usage chunk the gateway asked the upstream for on the client's behalf."""
        policy = open_stream(self.output_scanners, self.findings, ctx, buffered=self.buffered,
                             judge=self._judge if self.quality is not None else None, dialect=dialect)
        policy.strip_usage = strip_usage
        policy.prefilter = self._output_filter
        policy.joint = self._output_joint
        # What the input policies left of the request's CPU budget (a small body's input costs are not metered).
        policy.cpu_budget = self.max_request_cpu
        policy.cpu_left = self.max_request_cpu - self._input_cpu.get(id(ctx), 0.0)
        return policy

    def _judge(self, ctx: RequestContext) -> None:
        """Buffered checks on the whole answer (as the client would receive it)."""
        from fastgw.policy.quality import wants_json

        q = self.quality
        result = self._guarded("quality-scorer", "output", ctx,
                               lambda: q.evaluate(ctx.texts, ctx.finish, wants_json(ctx.body)))  # type: ignore
        if result is None:
            return
        blocked, aggregate, _details = result
        low = aggregate < q.min_aggregate  # type: ignore[union-attr]
        ctx.decide("quality-scorer", "output", "block" if blocked else ("observe" if low else "allow"),
                   aggregate=round(aggregate, 3))
        if blocked:
            raise PolicyViolation("Response blocked: quality below threshold", "quality-scorer", "output")

    def check_output_body(self, ctx: RequestContext, data: bytes) -> bytes:
        """A non-streamed answer through the output policies: the same bytes unless a policy changed it."""
        if not self.decodes_output or not data:
            return data
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            if self.output_scanners:
                # A success body the output policies cannot read (not JSON, or JSON orjson refuses, such as a
                # lone UTF-16 surrogate escape) cannot be vouched for: refuse it, as the streamed path does.
                raise GatewayError("upstream sent an answer the output policy cannot parse", status=502,
                                   type="upstream_error", code="upstream_protocol_error") from None
            return data  # nothing inspects the text: pass it on as it came
        if not isinstance(obj, dict):
            return data
        changed = False
        if self.output_scanners:
            try:  # `_guarded`, written out as in `check_input`
                changed = self._output_texts(ctx, obj)
            except _REFUSALS:
                raise
            except Exception as e:  # noqa: BLE001 - as in `_guarded`
                self._failed("output", "output", ctx, e)
        self._collect(ctx, obj)
        if self.quality is not None:
            self._judge(ctx)
        return orjson.dumps(obj) if changed else data

    def _output_texts(self, ctx: RequestContext, obj: dict) -> bool:
        """The output scanning policies on a non-streamed answer's texts (decided at once when `Prefilter` finds
        nothing for any of them); True when a text changed."""
        slots = list(response_slots(obj))
        flt = self._output_filter
        if flt is not None and flt.clean(slots):
            decide_clean(ctx, self.output_scanners, "output")
            return False
        return process_slots(self.output_scanners, iter(slots), "output", self.findings, ctx)

    async def check_output_body_async(self, ctx: RequestContext, data: bytes) -> bytes:
        """`check_output_body` in slices of the event loop, within what the input left of the request's CPU
        budget (RequestTooExpensive past it): the same answer, for bodies too large to check in one go."""
        if not self.decodes_output or len(data) <= SYNC_OUTPUT_BYTES or not self.output_scanners:
            return self.check_output_body(ctx, data)
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.check_output_body(ctx, data)  # refused as unreadable there
        if not isinstance(obj, dict):
            return data
        slicer = Slicer(self.max_request_cpu, self._input_cpu.get(id(ctx), 0.0))
        changed = bool(await self._guarded_async("output", "output", ctx, lambda: process_slots_sliced(
            self.output_scanners, response_slots(obj), "output", self.findings, ctx, slicer)))
        slicer.charge()
        self._collect(ctx, obj)
        if self.quality is not None:
            self._judge(ctx)
        return orjson.dumps(obj) if changed else data

    @staticmethod
    def _collect(ctx: RequestContext, obj: dict) -> None:
        choices = obj.get("choices")
        if isinstance(choices, list):
            for ch in choices:
                if not isinstance(ch, dict):
                    continue
                idx = ch.get("index", 0) if isinstance(ch.get("index"), int) else 0
                msg = ch.get("message")
                text = msg.get("content") if isinstance(msg, dict) else ch.get("text")
                if isinstance(text, str):
                    ctx.texts[idx] = text
                if isinstance(ch.get("finish_reason"), str):
                    ctx.finish[idx] = ch["finish_reason"]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            # As `pipeline.usage_of` reads it when no policy parsed the answer: Responses and Messages usage with
            # the chat names added, which the quota settlement reads.
            ctx.usage = usage if "prompt_tokens" in usage else with_chat_names(usage)

    # ---- audit --------------------------------------------------------------------------------------
    async def record(self, ctx: RequestContext) -> None:
        """Hand the request's audit record to the OS (awaited before the response's last byte)."""
        audit = self.audit
        if audit is None or self._audit_settings is None:
            return
        if not self._audit_settings.log_all_access and ctx.status in (401, 403, 409):
            return  # refusals by a policy are recorded only with log_all_access
        from fastgw.policy.audit import record_from_context

        await audit.write(record_from_context(ctx, self._redact_for_audit))

    def redact_for_log(self, text: str) -> str:
        """`text` (a short client-supplied value: a model name, a path; <= 256 bytes) with what the chain's
        pii-detector finds replaced by `[REDACTED:<ENTITY>]`; unchanged without a pii-detector. Never raises:
        a log value is best effort (on any failure the value is withheld whole)."""
        pii = self.pii
        if pii is None or not text:
            return text
        try:
            data = text.encode("utf-8", "surrogatepass")
            spans = find_spans(pii.db, data)
            if not spans:
                return text
            out: list[bytes] = []
            pos = 0
            for sp in spans:
                if sp.start > pos:
                    out.append(data[pos:sp.start])
                if sp.start >= pos and not sp.cont:
                    out.append(b"[REDACTED:" + sp.entity.encode() + b"]")
                pos = max(pos, sp.end)
            out.append(data[pos:])
            return b"".join(out).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - best effort: a value we could not check is not logged as it is
            log.exception("redacting a log value failed")
            return "[REDACTED]"

    def _redact_for_audit(self, text: str) -> str:
        """Audit records never hold raw PII: the built-in detector redacts them whatever the chain did."""
        if self._audit_redactor is None:
            from fastgw.policy.pii import PiiDetector, PiiPolicy

            self._audit_redactor = PiiPolicy(PiiDetector())
            self._audit_redactor.allocate_scratch()
        data, spans = self._audit_redactor.scan_text(text)
        return self._audit_redactor.redact(data, spans).decode() if spans else text


def _untrusted_texts(body: dict, roles: frozenset[str] | None = None, endpoint: str = "") -> list[str]:
    """Every text of the request the model will read, on every endpoint, whose role is in `roles` (None: all).
    The client chooses every role, so a gateway cannot tell the operator's system prompt from a caller's: which
    roles count is the policy's `roles` setting (`PromptInjection.roles` maps each field to its role)."""
    from fastgw.policy.injection import request_texts

    return [text for role, text in request_texts(body, endpoint) if roles is None or role in roles]


def build_chain(policies: Iterable[tuple[str, object | None]]) -> Chain:
    """Compile the enabled policies (Hyperscan databases) once, in the master, before fork.

    `policies`: (chain name, its settings struct, or None for the defaults) in chain order, as
    `Config.chain_settings()` gives them; empty when the pack is disabled.
    """
    # The rate-limiter is not a step of the chain: the pipeline admits and settles through it (fastgw.quota).
    built = {name: _build(name, settings) for name, settings in policies if name != "rate-limiter"}
    return Chain(list(built), built)


def _build(name: str, settings: Any) -> Any:
    """One policy compiled from its own settings struct (each policy module defines it)."""
    if name == "pii-detector":
        from fastgw.policy.pii import PiiDetector, PiiPolicy

        return PiiPolicy(settings or PiiDetector())
    if name == "safety-filter":
        from fastgw.policy.safety import SafetyFilter, SafetyPolicy

        return SafetyPolicy(settings or SafetyFilter())
    if name == "prompt-injection":
        from fastgw.policy.injection import InjectionPolicy, PromptInjection

        return InjectionPolicy(settings or PromptInjection())
    if name == "rbac":
        from fastgw.policy.rbac import Rbac, RbacPolicy

        return RbacPolicy(settings or Rbac())
    if name == "quality-scorer":
        from fastgw.policy.quality import QualityPolicy, QualityScorer

        return QualityPolicy(settings or QualityScorer())
    if name == "audit-logger":
        from fastgw.policy.audit import AuditLogger

        return settings or AuditLogger()
    raise ValueError(f"unknown policy {name!r}")


