"""An OpenAI-compatible upstream that keeps the books a quota test checks, run as its own process.

`python -m tests.state.quota_upstream --port 0 --hold 0.05` prints `LISTENING <port>` once it serves
`POST /v1/chat/completions` (stream and not). Each answer takes `--hold` seconds; it reports usage the
way OpenAI does (in the body, or in a last chunk when `stream_options.include_usage` asks for it):
`prompt_tokens` = characters of the messages' text // 4 + 1 (the gateway's own estimate, so reservations
are exact for prompts), `completion_tokens` = `max_tokens` when set, else `DEFAULT_COMPLETION`.

Per requested model it records requests, the most answers in flight at once, and the tokens it
reported: `GET /_stats` -> `{model: {requests, inflight, max_inflight, prompt_tokens, completion_tokens}}`,
`POST /_reset` forgets them. An answer counts as in flight from the moment its request arrives until just
before its last bytes are written: the gateway cannot have seen the end of it (nor released its slot)
while it is counted. It imports nothing from fastgw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import defaultdict
from typing import Any

from aiohttp import web

#: Completion tokens of an answer to a request without max_tokens (a test sets completion_reserve below it,
#: so such a request really does use more than it reserved).
DEFAULT_COMPLETION = 40
CHUNKS = 4


class Books:
    """What one model's answers cost and how many overlapped."""

    def __init__(self) -> None:
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0


def _text_chars(messages: Any) -> int:
    n = 0
    for m in messages if isinstance(messages, list) else []:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            n += len(c)
        elif isinstance(c, list):
            n += sum(len(p.get("text", "")) for p in c if isinstance(p, dict))
    return n


def make_app(hold: float) -> web.Application:
    books: defaultdict[str, Books] = defaultdict(Books)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model"))
        b = books[model]
        b.requests += 1
        b.inflight += 1
        b.max_inflight = max(b.max_inflight, b.inflight)
        counted = True
        try:
            prompt = _text_chars(body.get("messages")) // 4 + 1
            mt = body.get("max_completion_tokens") or body.get("max_tokens")
            completion = int(mt) if isinstance(mt, int) and mt > 0 else DEFAULT_COMPLETION
            usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion}
            words = ["tok"] * completion
            base = {"id": "chatcmpl-q", "created": 1_700_000_000, "model": model}
            if not body.get("stream"):
                await asyncio.sleep(hold)
                b.inflight -= 1
                counted = False
                b.prompt_tokens += prompt
                b.completion_tokens += completion
                return web.json_response({**base, "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                     "finish_reason": "length" if mt else "stop"}], "usage": usage})
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)

            def event(obj: dict) -> bytes:
                return b"data: " + json.dumps({**base, "object": "chat.completion.chunk", **obj}).encode() + b"\n\n"

            await resp.write(event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None}]}))
            per = max(1, completion // CHUNKS)
            for i in range(0, completion, per):
                await asyncio.sleep(hold / CHUNKS)
                await resp.write(event({"choices": [{"index": 0, "delta": {"content": " ".join(words[i:i + per])},
                                                     "finish_reason": None}]}))
            tail = event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length" if mt else "stop"}]})
            so = body.get("stream_options")
            if isinstance(so, dict) and so.get("include_usage"):
                tail += event({"choices": [], "usage": usage})
            b.inflight -= 1
            counted = False
            b.prompt_tokens += prompt
            b.completion_tokens += completion
            await resp.write(tail + b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            if counted:  # cut before the end: what was generated is unknown to the books, the slot is not
                b.inflight -= 1

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({m: vars(b) for m, b in books.items()})

    async def reset(request: web.Request) -> web.Response:
        books.clear()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--hold", type=float, default=0.05, help="seconds each answer takes")
    args = p.parse_args(argv)

    async def serve() -> None:
        runner = web.AppRunner(make_app(args.hold), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"LISTENING {port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
