"""Time to first event through the output policies: when one upstream read brings the whole answer and the worker
has no other request in flight (`early_write`), the first final event is written before the rest of the read is
scanned, and the answer is the same; a busy worker writes the read once."""

from __future__ import annotations

import asyncio

from fastgw.policy.base import RequestContext
from fastgw.policy_relay import PolicyRelay
from fastgw.proto.flow import FlowControl
from fastgw.proto.server import Responder
from tests.policy.test_cpu_stream import _chain, _event, _Source, _texts, _Transport


class _Writes(_Transport):
    """Records each write separately (a writev is one write)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.writes.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        super().writelines(parts)
        self.writes.append(b"".join(parts))


async def relay_reads(reads: list[bytes], t: _Transport, early: bool = True) -> str:
    """The client's text of an answer through the chain's policy relay, the upstream's bytes coming in `reads`
    (`early`: the relay's `early_write`, as the attempt sets it for a worker with no other request in flight)."""
    loop = asyncio.get_running_loop()
    resp = Responder(t, FlowControl(loop), True, False)  # type: ignore[arg-type]
    ctx = RequestContext("r", "POST", "/v1/chat/completions", [])
    ctx.endpoint = "chat/completions"
    relay = PolicyRelay(resp, _Source(), loop, (200, [(b"content-type", b"text/event-stream")]),
                        _chain().stream_policy(ctx))
    relay.early_write = early
    relay.start()
    for data in reads:
        relay.on_data(data)
        relay.flush()
    relay.on_end()
    end = await relay.done
    if end.tail is not None:
        relay.close_with(end.tail)
    text, errors = _texts(b"".join(t.parts))
    assert not errors
    return text


async def _one_read(words: list[str], early: bool = True) -> tuple[_Writes, str]:
    t = _Writes()
    text = await relay_reads([b"".join(_event(w) for w in words) + b"data: [DONE]\n\n"], t, early)  # the whole answer
    return t, text


def test_the_first_final_event_leaves_before_the_rest_of_the_read_is_scanned() -> None:
    words = [f"word{i} " for i in range(40)] + ["mail jo@example.com now"]
    t, text = asyncio.run(_one_read(words))
    assert len(t.writes) >= 2
    first = t.writes[0]
    assert first.startswith(b"HTTP/1.1 200") and b"word0 " in first  # the head with the first event
    assert b"word39" not in first and b"mail" not in first  # written before the rest was judged
    assert text == "".join(words[:-1]) + "mail [REDACTED:EMAIL] now"  # the same answer, redacted as in one go


def test_a_busy_worker_writes_the_read_once() -> None:
    words = [f"word{i} " for i in range(40)] + ["mail jo@example.com now"]
    t, text = asyncio.run(_one_read(words, early=False))
    first = t.writes[0]
    assert first.startswith(b"HTTP/1.1 200") and b"word39" in first and b"[REDACTED:EMAIL]" in first  # all at once
    assert text == "".join(words[:-1]) + "mail [REDACTED:EMAIL] now"
