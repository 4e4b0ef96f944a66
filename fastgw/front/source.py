"""A chat answer streamed to a client of another API: the relay `Source` that sits between the upstream connection
and the relay, turning the chat answer into the client dialect's events in the same loop iteration.

The chat answer is a translator's chunks (a translated provider) or an OpenAI chat SSE body (OpenAI-compatible
targets and the built-in mock), parsed here. The relay (with its output policies for the dialect) gets the
events as bytes, as if the upstream spoke the client's API: everything after it works unchanged. An upstream
failure before any event reaches the relay as it happened (the attempt may fall back); after the first, the
writer's closing events (`response.failed`) go first, then the relay adds the dialect's error event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import orjson

from fastgw.api.errors import GatewayError, UpstreamError, UpstreamProtocolError, from_transport
from fastgw.front.common import StreamWriter
from fastgw.proto.errors import ProtocolError
from fastgw.proto.sse import SSEDecoder
from fastgw.providers.base import Translator

if TYPE_CHECKING:
    import asyncio

__all__ = ["FrontSource"]


class Relay(Protocol):
    """What the source feeds (`fastgw.stream.SSERelay`)."""

    done: asyncio.Future

    def on_data(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def on_end(self) -> None: ...
    def on_error(self, exc: BaseException) -> None: ...


class Upstream(Protocol):
    """What the source reads (an upstream connection or the mock's source)."""

    def set_sink(self, sink: FrontSource) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def detach(self) -> None: ...


class FrontSource:
    """An upstream's chat stream as another API's events (see the module docstring)."""

    __slots__ = ("_conn", "_translator", "writer", "_sink", "_decoder", "_done", "_over")

    def __init__(self, conn: Upstream, translator: Translator | None, writer: StreamWriter) -> None:
        self._conn = conn
        self._translator = translator
        #: The stream's writer (its `usage` is the upstream's count once the stream ended).
        self.writer = writer
        self._sink: Relay | None = None
        self._decoder = SSEDecoder() if translator is None else None
        #: `data: [DONE]` was seen (an OpenAI chat body).
        self._done = False
        #: This source has finished (ended or failed): later calls do nothing.
        self._over = False

    def set_sink(self, sink: Relay) -> None:
        self._sink = sink
        self._conn.set_sink(self)

    # ---- from the upstream ---------------------------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        sink = self._sink
        if sink is None or self._over or sink.done.done():
            return
        err: GatewayError | None = None
        try:
            if self._translator is not None:
                chunks = self._translator.feed(data)
            else:
                chunks, err = self._parse(data)
        except GatewayError as e:
            chunks, err = [], e
        if chunks:
            out = self.writer.feed(chunks)
            if out:
                sink.on_data(out)
        if err is not None:
            self._conn.detach()  # a connection with an unfinished response is never reused
            self._fail(err)

    def _parse(self, data: bytes) -> tuple[list[dict], GatewayError | None]:
        """The chunks of an OpenAI chat SSE body that `data` completes, and the error that came after them."""
        assert self._decoder is not None
        try:
            events = self._decoder.feed(data)
        except ProtocolError as e:
            return [], UpstreamProtocolError(f"upstream SSE stream invalid: {e.message}")
        out: list[dict] = []
        for ev in events:
            d = ev.data
            if not d:
                continue  # a comment or a data-less event
            if d == "[DONE]":
                self._done = True
                continue
            try:
                obj = orjson.loads(d)
            except orjson.JSONDecodeError:
                return out, UpstreamProtocolError("upstream sent an event that is not JSON")
            if not isinstance(obj, dict):
                return out, UpstreamProtocolError("upstream sent an event that is not a JSON object")
            if obj.get("error") is not None:
                error = obj["error"]
                message = error.get("message") if isinstance(error, dict) else str(error)
                return out, UpstreamError(f"upstream error: {str(message)[:512]}")
            out.append(obj)
        return out, None

    def flush(self) -> None:
        if self._sink is not None and not self._over:
            self._sink.flush()

    def on_end(self) -> None:
        sink = self._sink
        if sink is None or self._over or sink.done.done():
            return
        try:
            if self._translator is not None:
                chunks = self._translator.finish()
            else:
                assert self._decoder is not None
                if self._decoder.has_partial and not self._done:
                    raise UpstreamProtocolError("upstream ended the stream in the middle of an event")
                chunks = []
            out = self.writer.feed(chunks) if chunks else b""
            if self.writer.finish is None and not self._done:
                raise UpstreamProtocolError("upstream ended the stream before its answer was finished")
        except GatewayError as e:
            self._fail(e)
            return
        self._over = True
        sink.on_data(out + self.writer.end())
        sink.on_end()

    def on_error(self, exc: BaseException) -> None:
        if self._sink is None or self._over or self._sink.done.done():
            return
        if self._done:
            self.on_end()  # the answer was complete ([DONE] seen): a connection dropped after it is no failure
            return
        self._fail(from_transport(exc))

    def _fail(self, err: GatewayError) -> None:
        """End on an upstream failure: before any event the relay fails as before its first byte (a fallback may
        answer); after, the writer's closing events go first."""
        sink = self._sink
        assert sink is not None
        self._over = True
        if self.writer.started:
            out = self.writer.fail(err)
            if out:
                sink.on_data(out)
        sink.on_error(err)

    # ---- from the relay (flow control) ---------------------------------------------------------------------
    def pause_reading(self) -> None:
        self._conn.pause_reading()

    def resume_reading(self) -> None:
        self._conn.resume_reading()

    def detach(self) -> None:
        self._conn.detach()
