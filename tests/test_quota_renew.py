"""The quota's slot renewal: one task per worker renews the leases of every reservation still streaming (no task
per request), until the reservation is settled; then it stops."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from fastgw import quota as quota_mod
from fastgw.config import Retry
from fastgw.policy.base import RequestContext
from fastgw.policy.ratelimit import Limit, RateLimiter, RateLimitPolicy, Reservation
from fastgw.proto.flow import FlowControl
from fastgw.proto.writer import Responder
from fastgw.providers.base import TargetRuntime
from fastgw.quota import Quota
from fastgw.routing import Plan
from fastgw.state import MemoryBackend


def _quota(backend: MemoryBackend) -> Quota:
    settings = RateLimiter(limits=[Limit(name="c", per="key", concurrent=5)])
    return Quota(RateLimitPolicy(settings, backend, lease=0.1), {}, "memory")


def test_streaming_reservations_keep_their_slots_until_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quota_mod, "RENEW_EVERY", 0.03)
    backend = MemoryBackend()
    q = _quota(backend)
    ctx = RequestContext("r", "POST", "/v1/chat/completions", [])
    ctx.principal, ctx.model, ctx.body = "alice", "m", {}
    ctx.usage = {"prompt_tokens": 1, "completion_tokens": 1}
    plan = Plan([TargetRuntime(id="up", provider="openai", model="m")], Retry())

    async def holders() -> int:
        return sum(len(h) for h in (await backend.usage()).slots.values())

    async def go() -> None:
        # A response writer no byte is written to (the admission only adds its headers to it).
        resp = Responder(object(), FlowControl(asyncio.get_running_loop()), True, False)  # type: ignore[arg-type]
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        streaming = [await q.admit(ctx, body, plan, resp) for _ in range(2)]
        idle = await q.admit(ctx, body, plan, resp)
        tokens = [q.renew_while_streaming(r) for r in streaming]
        assert all(isinstance(t, Reservation) for t in tokens) and q._renewer is not None
        await asyncio.sleep(0.35)  # more than three leases of 0.1 s
        assert await holders() == 2  # the two streaming ones were renewed; the other one's lease ran out
        await q.settle(ctx, streaming[0], tokens[0])
        await q.settle(ctx, idle, None)
        await asyncio.sleep(0.2)
        assert await holders() == 1
        await q.settle(ctx, streaming[1], tokens[1])
        await asyncio.sleep(0.1)
        assert await holders() == 0 and q._renewer is None  # nothing left to renew: the task ended

    uvloop.run(go())
