"""Flow control without sockets: idempotent read pausing, write pause routed to the producer, drain waiters."""

from __future__ import annotations

import asyncio


from fastgw.proto.flow import FlowControl


class T:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


class Listener:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")

    def client_lost(self) -> None:
        self.calls.append("lost")


def flow() -> tuple[FlowControl, T, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    t = T()
    f = FlowControl(loop)
    f.connection_made(t)
    return f, t, loop


def test_read_pause_and_resume_are_idempotent():
    f, t, _ = flow()
    f.pause_reading()
    f.pause_reading()
    f.resume_reading()
    f.resume_reading()
    assert t.calls == ["pause", "resume"]


def test_no_read_calls_after_the_connection_is_lost_or_before_it_is_made():
    f, t, _ = flow()
    f.connection_lost()
    f.pause_reading()
    assert t.calls == [] and f.lost
    early = FlowControl(asyncio.new_event_loop())
    early.pause_reading()
    assert not early.read_paused


def test_write_pause_reaches_the_listener_once_and_a_late_listener_at_once():
    f, _, _ = flow()
    a = Listener()
    f.set_listener(a)
    f.pause_writing()
    f.pause_writing()
    assert a.calls == ["pause"] and f.write_paused
    b = Listener()
    f.set_listener(b)
    assert b.calls == ["pause"]  # it joins a paused connection
    f.resume_writing()
    f.resume_writing()
    assert b.calls == ["pause", "resume"] and not f.write_paused


def test_connection_lost_tells_the_listener_and_forgets_it():
    f, _, _ = flow()
    a = Listener()
    f.set_listener(a)
    assert f.connection_lost() is True
    assert a.calls == ["lost"] and f.listener is None
    assert f.connection_lost() is False  # nobody left to tell: the shell cancels the task itself


def test_drain_waits_for_resume_and_returns_when_the_client_is_gone():
    f, _, loop = flow()

    async def scenario() -> list[str]:
        seen: list[str] = []
        await f.drain()  # not paused: returns at once
        seen.append("free")
        f.pause_writing()
        w1 = loop.create_task(f.drain())
        w2 = loop.create_task(f.drain())
        await asyncio.sleep(0)
        assert not w1.done() and not w2.done()
        f.resume_writing()
        await asyncio.gather(w1, w2)
        seen.append("resumed")
        f.pause_writing()
        w3 = loop.create_task(f.drain())
        await asyncio.sleep(0)
        f.connection_lost()
        await w3
        await f.drain()  # lost: returns at once even though paused
        seen.append("lost")
        return seen

    assert loop.run_until_complete(scenario()) == ["free", "resumed", "lost"]
    loop.close()
