"""The request pipeline of a model endpoint, top to bottom: parse → input policies → plan → attempts → answer.

Authentication ran before (every /v1 route needs it); the audit record and the
access line are written by the route dispatch, for refusals too. Attempts follow
the plan's targets in order with the retry policy; each attempt's outcome is
explicit (`fastgw.attempt`), and its breaker permit is resolved here, in one
place, whatever happened — success, failure, neutral, or the client leaving.
"""

from __future__ import annotations

import asyncio
import logging
import typing

import msgspec
import orjson

from fastgw import metrics, telemetry
from fastgw.api.errors import GatewayError, InvalidRequest, ModelNotFound
from fastgw.api.usage import USAGE_ONLY, with_chat_names
from fastgw.attempt import JSON, Answer, Attempt, Final, Outcome, Retry, Streamed
from fastgw.front import FRONTS
from fastgw.policy.audit import AuditUnavailable
from fastgw.policy.base import PolicyFailure, RequestContext
from fastgw.policy.chain import Chain, Slicer
from fastgw.proto.server import Request, Responder
from fastgw.quota import Quota, SharedBreakers, prompt_estimate
from fastgw.providers.base import Endpoint
from fastgw.providers.registry import NATIVE_ENDPOINTS, PROVIDERS
from fastgw.routing import Plan, Router, Verdict
from fastgw.upstreams import Call

__all__ = ["Pipeline", "account"]

log = logging.getLogger("fastgw.pipeline")

#: Request bodies up to this size have their input policies run in one go (the common case: no clock reads,
#: no await); larger ones in slices of `SCAN_SLICE`. One go holds the loop ~0.5 ms for 16 KiB of prose and
#: at most ~25 ms at the slowest text found (`python -m bench.scan_worst`); the sliced path costs ~10 µs more.
SYNC_INPUT_BYTES: typing.Final = 16384


def account(ctx: RequestContext, partial: bool) -> None:
    """The usage record: the provider's count when it gave one, else an estimate (marked), and `partial`
    when the client left before the end."""
    if ctx.usage is None:
        prompt = prompt_estimate(ctx.body) if ctx.body else 0
        completion = sum(len(t) for t in ctx.texts.values()) // 4 if ctx.texts else max(0, ctx.events - 3)
        ctx.usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion, "estimated": True}
    if partial:
        ctx.usage = {**ctx.usage, "partial": True}


# The registries read per request, as Final aliases of the same dicts: compiled, a name imported from a module that
# is not compiled is a lookup in this module's dictionary at each use (~130 instructions).
_PROVIDERS: typing.Final = PROVIDERS
_FRONTS: typing.Final = FRONTS
_NATIVE_ENDPOINTS: typing.Final = NATIVE_ENDPOINTS
_loads: typing.Final = orjson.loads  # (a module's attribute too is a lookup at each call)


def usage_of(body: bytes) -> dict | None:
    """The `usage` object of a whole answer (chat, completions, Responses, Messages), when it has one."""
    try:
        usage = USAGE_ONLY.decode(body).usage
    except msgspec.DecodeError:
        return None
    if usage is None:
        return None
    return usage if "prompt_tokens" in usage else with_chat_names(usage)  # Responses and Messages: input/output


def parse_body(req: Request) -> dict:
    """The JSON object of a model request, with `model` and `stream` checked (400 otherwise)."""
    ctype = req.header(b"content-type")
    # The value SDKs send compared first (a method call with arguments costs ~600 instructions); then find, not
    # `in`: a bytes `in` first tries the needle as an int, raising and clearing a TypeError (~1,800 instructions).
    if ctype is not None and ctype != b"application/json" and ctype.lower().find(b"json") < 0:
        raise GatewayError("Content-Type must be application/json", status=415, type="invalid_request_error",
                           code="unsupported_media_type", no_retry=True, origin="client")
    if not req.body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = _loads(req.body)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {e.msg} "
                             f"(line {e.lineno}, column {e.colno}).", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model", code="missing_model")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream", code="invalid_type")
    return body


class Pipeline:
    """Runs one model request to its answer."""

    def __init__(self, chain: Chain, router: Router, attempt: Attempt, quota: Quota | None = None,
                 shared: SharedBreakers | None = None) -> None:
        self.chain = chain
        self.router = router
        self.attempt = attempt
        #: The rate-limiter (issue 16), when the chain has one.
        self.quota = quota
        #: Breakers counted in the shared state, for targets with `circuit_breaker.shared: true`.
        self.shared = shared

    async def run(self, endpoint: str, req: Request, resp: Responder, ctx: RequestContext) -> None:
        body = parse_body(req)
        model = body["model"]
        stream = body.get("stream") is True and endpoint != Endpoint.EMBEDDINGS
        ctx.endpoint, ctx.body, ctx.model, ctx.stream = endpoint, body, model, stream
        # One body: the upstream gets the object the policies judged, re-encoded (the client's bytes could hold a
        # duplicated key that the policies never saw). Measured: re-encoding costs a third (350 bytes) to a tenth
        # (100 KB) of the parse; detecting duplicates with the stdlib's pairs hook costs 3-28 times the parse.
        chain = self.chain
        sliced = len(req.body) > SYNC_INPUT_BYTES and bool(chain.input_steps)
        if not sliced:
            if chain.input_steps:
                chain.check_input(ctx, body)  # the common case: in one go, no clock read
        else:
            # A large body: checked in slices of the loop, within the request's CPU budget (413 past it); its
            # stream gets what is left of the budget.
            slicer = Slicer(chain.max_request_cpu)
            await chain.check_input_async(ctx, body, slicer)
            chain.note_input_cpu(ctx, slicer.spent)
        try:
            plan = self.router.plan(model)
            if plan is None:
                raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.",
                                    param="model")
            rbac = self.chain.rbac
            if rbac is not None:
                usable = rbac.usable_targets(ctx, ctx.path, stream, plan.targets)
                if len(usable) < len(plan.targets):
                    skipped = [t.id for t in plan.targets if t not in usable]
                    ctx.decide("rbac", "input", "allow", skipped_targets=skipped)
                    plan = Plan(usable, plan.retry)
            _check_endpoint(endpoint, model, plan)
            quota = self.quota
            # Quotas: one admission before any upstream (429/503 refusals raise), one settlement on every path.
            res = await quota.admit(ctx, body, plan, resp) if quota is not None else None
            renewing = quota.renew_while_streaming(res) if quota is not None and stream else None
            # Settled on every path, a client gone (CancelledError) included; the settlement is awaited after the
            # handler rather than in a `finally`: a coroutine compiled with mypyc that awaits while handling an
            # exception leaves it as the thread's handled exception for the tasks that run meanwhile
            # (tests/test_compiled.py refuses the shape).
            failed: BaseException | None = None
            try:
                call = Call(endpoint, body, stream, ctx.request_id, ctx.headers)
                outcome = await self._attempts(plan, call, resp, ctx)
                if isinstance(outcome, Streamed):
                    await self._finish_stream(outcome, resp, ctx)
                else:
                    answer = _final_answer(outcome)
                    ctx.status = answer.status
                    if ctx.usage is None and answer.status == 200:
                        ctx.usage = usage_of(answer.body)
                    if self.chain.audit is not None:
                        await self.record(ctx, resp)  # handed to the OS before the answer's last byte
                    resp.send(answer.status, answer.headers, answer.body)
            except BaseException as e:  # noqa: BLE001 - re-raised below, once settled
                failed = e
            if quota is not None:
                await quota.settle(ctx, res, renewing)
            if failed is not None:
                try:
                    raise failed
                finally:
                    failed = None  # (no frame-traceback cycle left behind)
        finally:
            if sliced:
                chain.forget(ctx)

    async def count_tokens(self, req: Request, resp: Responder, ctx: RequestContext) -> None:
        """`/v1/messages/count_tokens`: Anthropic's own count for an anthropic target (its native endpoint, through
        the model's anthropic targets in order), else the gateway's prompt estimate (`quota.prompt_estimate`).
        Input policies and rbac apply as on /v1/messages; the rate-limiter does not (nothing is generated)."""
        body = parse_body(req)
        model = body["model"]
        ctx.endpoint, ctx.body, ctx.model, ctx.stream = Endpoint.COUNT_TOKENS, body, model, False
        if not isinstance(body.get("messages"), list):
            raise InvalidRequest("messages: Field required (a list)", param="messages")
        self.chain.check_input(ctx, body)
        plan = self.router.plan(model)
        if plan is None:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
        rbac = self.chain.rbac
        targets = plan.targets if rbac is None else rbac.usable_targets(ctx, ctx.path, False, plan.targets)  # or 403
        if targets[0].provider == "anthropic":
            native = Plan([t for t in targets if t.provider == "anthropic"], plan.retry)
            call = Call(Endpoint.COUNT_TOKENS, body, False, ctx.request_id, ctx.headers)
            answer = _final_answer(await self._attempts(native, call, resp, ctx))
        else:
            answer = Answer(200, [JSON], orjson.dumps({"input_tokens": prompt_estimate(body)}))
        ctx.status = answer.status
        await self.record(ctx, resp)
        resp.send(answer.status, answer.headers, answer.body)

    async def _attempts(self, plan: Plan, call: Call, resp: Responder, ctx: RequestContext) -> Outcome:
        """Try the plan's targets in order, retrying each per the retry policy, until one answers. Only
        failures before the first byte to the client come back as `Retry`; after it, errors are in-stream."""
        retry = plan.retry
        last: Retry | None = None
        waits: list[float] = []
        for target in plan.targets:
            breaker = self.router.breakers[target.id]
            shared = self.shared if target.breaker_shared else None
            for n in range(retry.attempts):
                may = await shared.may_try(target) if shared is not None else None
                if may is not None and not may[0]:
                    waits.append(may[1])
                    break
                permit = breaker.acquire()
                if permit is None:
                    waits.append(breaker.retry_after())
                    break
                try:
                    outcome = await self.attempt.run(target, call, resp, ctx)
                except BaseException:
                    # A cancelled or crashed attempt learned nothing. (Not a `finally` reading `outcome`: compiled,
                    # a task cancelled in that await finds it None there whatever its type says; see
                    # tests/test_compiled.py.)
                    permit.resolve(Verdict.NEUTRAL)
                    if telemetry.ON:
                        telemetry.attempt_ended(ctx, None)
                    raise
                permit.resolve(outcome.verdict)
                if telemetry.ON:
                    telemetry.attempt_ended(ctx, outcome)
                if shared is not None and may is not None:
                    await shared.learned(target, outcome.verdict, getattr(outcome, "retry_after", None))
                if not isinstance(outcome, Retry):
                    metrics.upstream_attempt(target.id, "ok" if outcome.verdict == Verdict.SUCCESS else "neutral")
                    return outcome
                metrics.upstream_attempt(target.id, outcome.kind)
                last = outcome
                ctx.decide("routing", "upstream", "retry", target=target.id, kind=outcome.kind, attempt=n + 1)
                if outcome.kind not in retry.on or n + 1 >= retry.attempts:
                    metrics.fallback(ctx.model, outcome.kind)
                    break
                delay = outcome.retry_after if outcome.retry_after is not None else retry.backoff * (2 ** n)
                if delay > retry.max_retry_after or not breaker.allow():
                    break  # too long to wait here: the next target may answer sooner
                await asyncio.sleep(delay)
        if last is not None:
            return Final(Verdict.FAILURE, answer=last.answer, error=None if last.answer else last.error)
        after = max(1, int(min(waits) + 0.999)) if waits else 1
        raise GatewayError("all targets for this model are unavailable (circuit open); retry later", status=503,
                           type="upstream_error", code="upstream_unavailable",
                           headers=[(b"retry-after", str(after).encode())])

    async def _finish_stream(self, outcome: Streamed, resp: Responder, ctx: RequestContext) -> None:
        end = outcome.end
        if resp.first_write is not None:
            metrics.ttft(ctx.model, ctx.target, resp.first_write - ctx.started)
        ctx.status = 200
        ctx.events = ctx.events or end.events
        # The client left before the end (not a clean end, no error): what was counted is partial.
        account(ctx, partial=end.client_left and end.error is None)
        if end.error is not None:
            ctx.error = end.error.code
        if end.tail is not None:
            await self.record(ctx, resp)
            outcome.relay.close_with(end.tail)
        elif self.chain.audit is not None:
            await self.record(ctx, resp)  # written already, or the client left: the record says what happened

    async def record(self, ctx: RequestContext, resp: Responder) -> None:
        """The audit record is handed to the OS before the response's last byte (if audit is on)."""
        if self.chain.audit is None:
            return
        ctx.first_byte = resp.first_write
        if not ctx.status:
            ctx.status = resp.status or 200
        try:
            await self.chain.record(ctx)
        except OSError:
            # The disk or quota is full (or max_bytes reached, or EIO): the audit log has raised its alarm and
            # refuses every audited request until it can write again; this one fails closed the same way.
            raise AuditUnavailable() from None
        except Exception:  # noqa: BLE001 - an audit trail that cannot be written must not be skipped quietly
            log.exception("audit record for %s could not be written", ctx.request_id)
            raise PolicyFailure("audit-logger", "cannot write the audit record") from None


def _final_answer(outcome: Outcome) -> Answer:
    """The answer a `Final` outcome carries; its error is raised (the route dispatch records and renders it)."""
    assert isinstance(outcome, Final)
    if outcome.error is not None:
        raise outcome.error
    assert outcome.answer is not None
    return outcome.answer


def _check_endpoint(endpoint: str, model: str, plan: Plan) -> None:
    """The first target must serve this endpoint (one it serves; Responses and Messages through chat completions
    where it lacks them natively, `fastgw.front`): a clear 400 if not."""
    first = plan.targets[0]
    serves = _PROVIDERS[first.provider].serves
    if serves is None:
        return
    if endpoint in _FRONTS and first.provider not in _NATIVE_ENDPOINTS.get(endpoint, ()):
        endpoint = Endpoint.CHAT  # what the target is sent
    if endpoint not in serves:
        raise InvalidRequest(f"provider {first.provider} does not serve /v1/{endpoint}", code="unsupported_endpoint",
                             param="model")


__all__ += ["parse_body", "JSON", "Answer"]
