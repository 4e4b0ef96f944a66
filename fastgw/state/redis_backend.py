"""The `redis` backend: every operation is one Lua script, run with EVALSHA in one round trip, atomic in Redis.

Scripts read Redis's own clock (`TIME`), so instances whose clocks differ still agree on every bucket; the
client's clock only names a budget's calendar period (a key per day or month: a skew of seconds moves the
rollover by as much). Keys live under `prefix` (see `fastgw.state.model.key`); buckets and concurrency sets
expire once idle; a budget key expires `RETENTION` after its period ends ("total" ones never). Durability
is Redis's: run it with `appendonly yes` (AOF) for budgets that survive a Redis restart; the scripts write
only what they decide (effects replication), so replicas and the AOF see plain SET/HINCRBY/ZADD commands.

Several keys per script means one Redis node (a Redis Cluster would need every key in one hash slot);
Sentinel or a managed primary with failover is fine (a failover may lose the replication lag's writes).
The client is `fastgw.state.resp` (why not redis-py or coredis: measured there).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from fastgw.state.model import (EPOCH, KIND_BREAKER, KIND_BUDGET, KIND_REQUESTS, KIND_SLOTS, KIND_TOKENS,
                                TOLERANCE, Admission, Ask, BreakerState, RateState, Settle, SlotState, SpendState,
                                StateUnavailable, Usage, key, unescape)
from fastgw.state.resp import ReplyError, RespClient, pack, parse_url

__all__ = ["RedisBackend", "Script", "ADMIT", "RECONCILE", "RENEW", "BREAKER"]

#: A budget key outlives its period by this many seconds, so `fastgw usage` can still show last month.
RETENTION = 40 * 86400
#: A breaker key is dropped after this long without a change: failures that old no longer count.
BREAKER_TTL_MS = 3_600_000

_PRELUDE = f"""
local t = redis.call('TIME')
local now = (tonumber(t[1]) - {EPOCH}) * 1000000 + tonumber(t[2])
local function f17(x) return string.format('%.17g', x) end
"""

#: KEYS: rate keys, slot keys, spend keys. ARGV: holder, lease µs, #rates, #slots, #spends, then per rate
#: interval (µs/unit), burst, take; per slot: limit; per spend: limit, cost, expires (Unix s, 0: never).
#: Returns {ok, per rate: passed, remaining, reset µs, wait µs, never; per slot: passed, in use, wait µs;
#: per spend: passed, used}. Checks everything first, writes only if everything passed.
ADMIT = _PRELUDE + f"""
local holder, lease = ARGV[1], tonumber(ARGV[2])
local nr, ns, nb = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out, ok, a, news = {{0}}, true, 6, {{}}
for i = 1, nr do
  local interval, burst, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local base = tonumber(redis.call('GET', KEYS[i]) or '0')
  if base < now then base = now end
  local tau = interval * burst
  local new = base + interval * n
  local pass, never, wait, at = 0, 0, 0, base
  if n > burst then never = 1; ok = false
  elseif new - tau > now + {TOLERANCE} then wait = new - tau - now; ok = false
  else pass = 1; at = new end
  news[i] = new
  local rem = math.floor((now + tau - at) / interval + 1e-9)
  if rem < 0 then rem = 0 end
  out[#out + 1] = pass; out[#out + 1] = rem; out[#out + 1] = math.ceil(at - now)
  out[#out + 1] = math.ceil(wait); out[#out + 1] = never
end
for j = 1, ns do
  local k, limit = KEYS[nr + j], tonumber(ARGV[a])
  a = a + 1
  redis.call('ZREMRANGEBYSCORE', k, '-inf', f17(now))  -- leases that ran out: their worker died
  local n = redis.call('ZCARD', k)
  local pass, wait = 1, 0
  if n >= limit then
    pass = 0; ok = false
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if first[2] then wait = math.ceil(tonumber(first[2]) - now) end
  end
  out[#out + 1] = pass; out[#out + 1] = n; out[#out + 1] = wait
end
local sa = a
for m = 1, nb do
  local limit, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 3
  local used = tonumber(redis.call('HGET', KEYS[nr + ns + m], 'used') or '0')
  local pass = 0
  if used < limit and used + cost <= limit then pass = 1 else ok = false end
  out[#out + 1] = pass; out[#out + 1] = used
end
if not ok then return out end
out[1] = 1
for i = 1, nr do
  redis.call('SET', KEYS[i], f17(news[i]), 'PX', string.format('%d', math.ceil((news[i] - now) / 1000) + 1000))
end
local lease_end, lease_ms = f17(now + lease), string.format('%d', math.ceil(lease / 1000) + 1000)
for j = 1, ns do
  redis.call('ZADD', KEYS[nr + j], lease_end, holder)
  redis.call('PEXPIRE', KEYS[nr + j], lease_ms)
end
for m = 1, nb do
  local k = KEYS[nr + ns + m]
  redis.call('HINCRBY', k, 'used', ARGV[sa + 1])
  redis.call('HINCRBY', k, 'held', ARGV[sa + 1])
  if ARGV[sa + 2] ~= '0' then redis.call('EXPIREAT', k, ARGV[sa + 2]) end
  sa = sa + 3
end
return out
"""

#: KEYS: rate keys, slot keys, spend keys. ARGV: holder, #rates, #slots, #spends, then per rate: interval, units
#: to add (negative: refund); per spend: change of `used`, change of `held` (integers, nano-USD).
RECONCILE = _PRELUDE + """
local holder, nr, ns, nb = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local a = 5
for i = 1, nr do
  local base = tonumber(redis.call('GET', KEYS[i]) or '0')
  if base < now then base = now end
  local new = base + tonumber(ARGV[a]) * tonumber(ARGV[a + 1])
  a = a + 2
  if new > now then
    redis.call('SET', KEYS[i], f17(new), 'PX', string.format('%d', math.ceil((new - now) / 1000) + 1000))
  else
    redis.call('DEL', KEYS[i])  -- full again: absent means full
  end
end
for j = 1, ns do redis.call('ZREM', KEYS[nr + j], holder) end
for m = 1, nb do
  local k = KEYS[nr + ns + m]
  redis.call('HINCRBY', k, 'used', ARGV[a])
  redis.call('HINCRBY', k, 'held', ARGV[a + 1])
  a = a + 2
end
return 1
"""

#: KEYS: slot keys. ARGV: holder, lease µs. Only a live lease is pushed: one that ran out may have been replaced.
RENEW = _PRELUDE + """
local lease = tonumber(ARGV[2])
local lease_end, lease_ms = f17(now + lease), string.format('%d', math.ceil(lease / 1000) + 1000)
local n = 0
for j = 1, #KEYS do
  local s = redis.call('ZSCORE', KEYS[j], ARGV[1])
  if s and tonumber(s) > now then
    redis.call('ZADD', KEYS[j], 'XX', lease_end, ARGV[1])
    redis.call('PEXPIRE', KEYS[j], lease_ms)
    n = n + 1
  end
end
return n
"""

#: KEYS[1]: the breaker hash. ARGV: op (fail | probe | success | hint | get), then fail: failures, cooldown µs;
#: probe: lease µs; hint: retry-after µs. Returns {state, failures, retry_in µs, probe 0/1}. Same rules as
#: `fastgw.state.core.breaker_fail` / `breaker_try_probe`.
BREAKER = _PRELUDE + f"""
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'until', 'probe_until', 'hint_until')
local state, failures = h[1] or 'closed', tonumber(h[2] or '0')
local till, probe_until, hint_until = tonumber(h[3] or '0'), tonumber(h[4] or '0'), tonumber(h[5] or '0')
local op, probe = ARGV[1], 0
if op == 'fail' then
  failures = failures + 1
  if state == 'half_open' or (state == 'closed' and failures >= tonumber(ARGV[2])) then
    state, till, probe_until = 'open', now + tonumber(ARGV[3]), 0
  end
elseif op == 'probe' then
  if hint_until <= now then
    if state == 'closed' then probe = 1
    elseif (state == 'open' and now >= till) or (state == 'half_open' and now >= probe_until) then
      state, probe_until, probe = 'half_open', now + tonumber(ARGV[2]), 1
    end
  end
elseif op == 'success' then
  state, failures, till, probe_until = 'closed', 0, 0, 0
elseif op == 'hint' then
  if now + tonumber(ARGV[2]) > hint_until then hint_until = now + tonumber(ARGV[2]) end
end
if op ~= 'get' then
  redis.call('HSET', KEYS[1], 'state', state, 'failures', failures, 'until', f17(till),
             'probe_until', f17(probe_until), 'hint_until', f17(hint_until))
  redis.call('PEXPIRE', KEYS[1], {BREAKER_TTL_MS})
end
local held = 0
if state == 'open' then held = till elseif state == 'half_open' then held = probe_until end
local wait = math.max(held - now, hint_until - now, 0)
return {{state, failures, math.ceil(wait), probe}}
"""


class Script:
    """A Lua script run by SHA; on NOSCRIPT (a restarted or flushed Redis) it is sent whole once, which loads it."""

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: RespClient, keys: Sequence[str], args: Sequence[Any],
                       late: Callable[[Any], None] | None = None) -> Any:
        """The script's reply (`late`: see `RespClient.send`; a NOSCRIPT it gets means the script did not run)."""
        reply = await client.send(pack("EVALSHA", self.sha, len(keys), *keys, *args), late)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await client.send(pack("EVAL", self.source, len(keys), *keys, *args), late)
        if isinstance(reply, ReplyError):
            raise StateUnavailable(f"redis refused the script: {reply}")
        return reply


_ADMIT, _RECONCILE, _RENEW, _BREAKER = Script(ADMIT), Script(RECONCILE), Script(RENEW), Script(BREAKER)


def _admission(ask: Ask, out: list[Any]) -> Admission:
    i = 1
    rates = []
    for _ in ask.rates:
        rates.append(RateState(out[i] == 1, out[i + 1], out[i + 2] / 1e6, out[i + 3] / 1e6, out[i + 4] == 1))
        i += 5
    slots = []
    for _ in ask.slots:
        slots.append(SlotState(out[i] == 1, out[i + 1], out[i + 2] / 1e6))
        i += 3
    spends = []
    for _ in ask.spends:
        spends.append(SpendState(out[i] == 1, out[i + 1]))
        i += 2
    return Admission(out[0] == 1, rates, slots, spends)


def _breaker_state(reply: list[Any]) -> BreakerState:
    return BreakerState(reply[0].decode(), int(reply[1]), reply[2] / 1e6, bool(reply[3]))


class RedisBackend:
    kind = "redis"
    remote = True

    def __init__(self, url: str, prefix: str = "fastgw", timeout: float = 0.05) -> None:
        self.prefix = prefix
        # The scripts are loaded with every connection: no first call pays a NOSCRIPT round trip, and none meets
        # NOSCRIPT unless Redis's script cache is flushed under a live connection (then a call resends it whole).
        self.client = RespClient(parse_url(url), timeout,
                                 tuple(pack("SCRIPT", "LOAD", s.source) for s in (_ADMIT, _RECONCILE, _RENEW, _BREAKER)))

    async def admit(self, ask: Ask, orphan: Callable[[Admission], None] | None = None) -> Admission:
        """`orphan`: given the admission when this call failed by its deadline or was cancelled after Redis had the
        script, and Redis answered later (it may have admitted: the caller releases what nobody will use)."""
        late = None if orphan is None else (lambda out: orphan(_admission(ask, out)) if isinstance(out, list)
                                            else None)
        keys = [r.key for r in ask.rates]
        keys += [s.key for s in ask.slots]
        keys += [b.key for b in ask.spends]
        args: list[Any] = [ask.holder, repr(ask.lease * 1e6), len(ask.rates), len(ask.slots), len(ask.spends)]
        for r in ask.rates:
            args += (repr(r.interval), r.burst, r.take)
        for s in ask.slots:
            args.append(s.limit)
        for b in ask.spends:
            args += (b.limit, b.cost, b.expires)
        return _admission(ask, await _ADMIT(self.client, keys, args, late))

    async def reconcile(self, settle: Settle, late: Callable[[bool], None] | None = None) -> None:
        """`late(ran)`: when this call ended (its deadline, its caller cancelled) before Redis's answer, what that
        answer said once it came: True, the settlement ran; False, it did not (never sent, or NOSCRIPT)."""
        keys = [k for k, _, _ in settle.rates]
        keys += settle.slots
        keys += [k for k, _, _ in settle.spends]
        args: list[Any] = [settle.holder, len(settle.rates), len(settle.slots), len(settle.spends)]
        for _, interval, delta in settle.rates:
            args += (repr(interval), delta)
        for _, reserved, actual in settle.spends:
            args += (actual - reserved, -reserved)
        await _RECONCILE(self.client, keys, args, None if late is None else (lambda out: late(out == 1)))

    async def renew(self, holder: str, slots: Sequence[str], lease: float) -> None:
        if slots:
            await _RENEW(self.client, slots, (holder, repr(lease * 1e6)))

    async def usage(self) -> Usage:
        t = await self.client.call("TIME")
        u = Usage((int(t[0]) - EPOCH) * 1e6 + int(t[1]))
        cursor = b"0"
        found: list[str] = []
        while True:
            cursor, batch = await self.client.call("SCAN", cursor, "MATCH", _glob(self.prefix) + ":*", "COUNT", 1000)
            found += [k.decode() for k in batch]
            if cursor == b"0":
                break
        head = len(self.prefix) + 1
        for k in sorted(set(found)):
            kind = k[head:head + 2]
            if kind in (KIND_REQUESTS, KIND_TOKENS):
                v = await self.client.call("GET", k)
                if v is not None and float(v) > u.now:
                    u.rates[k] = float(v)
            elif kind == KIND_SLOTS:
                flat = await self.client.call("ZRANGEBYSCORE", k, f"({u.now!r}", "+inf", "WITHSCORES")
                if flat:
                    u.slots[k] = {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2)}
            elif kind == KIND_BUDGET:
                used, held = await self.client.call("HMGET", k, "used", "held")
                u.spends[k] = (int(used or 0), int(held or 0))
            elif kind == KIND_BREAKER:
                u.breakers[unescape(k[head + 3:])] = _breaker_state(await _BREAKER(self.client, [k], ["get"]))
        return u

    def _breaker_key(self, target: str) -> str:
        return key(self.prefix, KIND_BREAKER, target)

    async def breaker_fail(self, target: str, failures: int, cooldown: float) -> BreakerState:
        return _breaker_state(await _BREAKER(self.client, [self._breaker_key(target)],
                                             ["fail", failures, repr(cooldown * 1e6)]))

    async def breaker_try_probe(self, target: str, lease: float) -> BreakerState:
        return _breaker_state(await _BREAKER(self.client, [self._breaker_key(target)], ["probe", repr(lease * 1e6)]))

    async def breaker_success(self, target: str) -> None:
        await _BREAKER(self.client, [self._breaker_key(target)], ["success"])

    async def upstream_hint(self, target: str, retry_after: float) -> None:
        await _BREAKER(self.client, [self._breaker_key(target)], ["hint", repr(retry_after * 1e6)])

    async def close(self) -> None:
        await self.client.close()


def _glob(s: str) -> str:
    """`s` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)
