"""Locust load test for an OpenAI-compatible gateway: streamed chat completions, with TTFT and tokens/s.

Each simulated user POSTs `/v1/chat/completions` with `"stream": true`, reads the SSE body line by line
as it arrives, and reports to Locust, besides the request itself:

- `TTFT` entries: time from sending the request to the first content token (first delta with non-empty
  `content`, `reasoning_content`, `refusal` or tool-call arguments), in ms; response_length = bytes read
  until then.
- `tokens/s` entries: output rate of one stream, **in tokens per second in the "response time" columns**
  (Locust only knows response times): (tokens - 1) / (last token - first token), or tokens / whole
  request time when a stream has a single token or they all arrived at once; response_length = tokens.
  Tokens are `usage.completion_tokens` when the server reports usage, else the number of content deltas.

The request entry (`POST /v1/chat/completions (stream)`) times the whole stream and fails on a non-200
status, an in-stream error event (`data: {"error": ...}`), a malformed event, or a stream that ends
without `data: [DONE]`. A share of requests can be sent non-streamed (`... (non-stream)` entries, with
`usage.completion_tokens` as response_length).

Options (command line, or the environment variable in brackets):

  --model NAME          model to ask for [LOCUST_MODEL] (default: mock-1, fastgw's built-in mock)
  --api-key KEY         sent as `Authorization: Bearer KEY` [LOCUST_API_KEY] (default: none)
  --prompt TEXT         the user message [LOCUST_PROMPT]
  --max-tokens N        `max_tokens` of each request, 0 to leave it out [LOCUST_MAX_TOKENS] (default: 0)
  --non-stream-share F  fraction 0..1 of requests sent with `"stream": false` [LOCUST_NON_STREAM_SHARE]
  --no-usage            do not ask for `stream_options.include_usage` [LOCUST_NO_USAGE]

Example (10 users for one minute, without the web UI, CSV files out/run_stats.csv etc.):

    .venv/bin/locust -f bench/locustfile.py --headless -u 10 -r 10 -t 60s \\
        --host http://127.0.0.1:8080 --model mock-1 --max-tokens 64 --csv out/run --only-summary

Uses FastHttpUser (geventhttpclient), the cheaper client; lines are taken from the body as soon as
each is complete. Imports nothing from fastgw.
"""

from __future__ import annotations

import random
import time
from http.client import HTTPException

from locust import FastHttpUser, events, task
from locust.exception import LocustError

try:  # orjson when present (fastgw's venv), else the standard library
    from orjson import loads
except ImportError:  # pragma: no cover
    from json import loads

__all__ = ["ChatStreamUser", "read_stream", "StreamResult"]

CHAT_PATH = "/v1/chat/completions"
DEFAULT_PROMPT = "Write a short paragraph about load testing."


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    """Register the custom options (also settable through LOCUST_* variables and the web UI)."""
    parser.add_argument("--model", type=str, env_var="LOCUST_MODEL", default="mock-1", help="model to ask for")
    parser.add_argument("--api-key", type=str, env_var="LOCUST_API_KEY", default="",
                        help="bearer token for the gateway")
    parser.add_argument("--prompt", type=str, env_var="LOCUST_PROMPT", default=DEFAULT_PROMPT, help="user message")
    parser.add_argument("--max-tokens", type=int, env_var="LOCUST_MAX_TOKENS", default=0,
                        help="max_tokens per request (0: not sent)")
    parser.add_argument("--non-stream-share", type=float, env_var="LOCUST_NON_STREAM_SHARE", default=0.0,
                        help="fraction of requests sent with stream=false")
    parser.add_argument("--no-usage", action="store_true", env_var="LOCUST_NO_USAGE", default=False,
                        help="do not request stream_options.include_usage")


class StreamResult:
    """What one streamed answer looked like; `error` is None when it was complete and clean."""

    __slots__ = ("first_token", "last_token", "deltas", "usage_tokens", "done", "error", "bytes_read",
                 "bytes_at_first")

    def __init__(self) -> None:
        self.first_token: float | None = None  # perf_counter of the first content delta
        self.last_token: float | None = None
        self.deltas = 0
        self.usage_tokens: int | None = None
        self.done = False
        self.error: str | None = None
        self.bytes_read = 0
        self.bytes_at_first = 0

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.deltas


def _has_token(delta: dict) -> bool:
    if delta.get("content") or delta.get("reasoning_content") or delta.get("refusal"):
        return True
    for tc in delta.get("tool_calls") or ():
        if isinstance(tc, dict) and (tc.get("function") or {}).get("arguments"):
            return True
    return False


def _on_data(data: str, res: StreamResult) -> bool:
    """Handle one event's data; False ends the stream (sentinel or error)."""
    if data == "[DONE]":
        res.done = True
        return False
    try:
        obj = loads(data)
    except ValueError:
        res.error = f"malformed event: {data[:200]!r}"
        return False
    if not isinstance(obj, dict):
        res.error = f"unexpected event: {data[:200]!r}"
        return False
    if "error" in obj:
        err = obj["error"]
        res.error = "error event: " + str(err.get("message") if isinstance(err, dict) else err)[:300]
        return False
    usage = obj.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        res.usage_tokens = usage["completion_tokens"]
    for ch in obj.get("choices") or ():
        delta = ch.get("delta") if isinstance(ch, dict) else None
        if isinstance(delta, dict) and _has_token(delta):
            now = time.perf_counter()
            if res.first_token is None:
                res.first_token = now
                res.bytes_at_first = res.bytes_read
            res.last_token = now
            res.deltas += 1
    return True


def read_stream(readline, res: StreamResult) -> StreamResult:
    """Parse an SSE body from `readline()` (one line per call, b"" at the end) into `res`.

    Minimal WHATWG parsing: `data:` lines of a block are joined with LF and dispatched at the blank line;
    comments (`: ping`) and other fields are ignored; any line end (CRLF, LF) is accepted.
    """
    data: list[str] = []
    while True:
        line = readline()
        if not line:
            break
        res.bytes_read += len(line)
        line = line.rstrip(b"\r\n")
        if not line:
            if data and not _on_data("\n".join(data), res):
                return res
            data = []
        elif line.startswith(b"data:"):
            v = line[5:]
            data.append((v[1:] if v[:1] == b" " else v).decode("utf-8", "replace"))
    if data:
        _on_data("\n".join(data), res)  # a last block without its blank line
    if res.error is None and not res.done:
        res.error = "stream ended without data: [DONE]"
    return res


def _http_error(resp) -> str:
    """A failure message for a response that is not 200 (status 0: no response, e.g. connection refused)."""
    if not resp.status_code:
        return f"no response: {getattr(resp, 'error', None)!r}"
    try:
        text = resp.text or ""
    except Exception as e:  # noqa: BLE001 - the body itself may be unreadable
        text = f"(body unreadable: {e!r})"
    return f"HTTP {resp.status_code}: {str(text)[:300]}"


class ChatStreamUser(FastHttpUser):
    """Sends chat completions back to back (no think time: a closed-loop load of `-u` concurrent clients)."""

    # A long answer may take a while; Locust's 60 s default would cut long generations short.
    network_timeout = 300.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.model = getattr(opts, "model", "mock-1")
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                        # A compressed SSE body could not be read line by line.
                        "Accept-Encoding": "identity"}
        key = getattr(opts, "api_key", "")
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.body = {"model": self.model, "messages": [{"role": "user", "content": getattr(opts, "prompt",
                                                                                            DEFAULT_PROMPT)}]}
        max_tokens = getattr(opts, "max_tokens", 0)
        if max_tokens:
            self.body["max_tokens"] = max_tokens
        self.non_stream_share = getattr(opts, "non_stream_share", 0.0)
        self.usage = not getattr(opts, "no_usage", False)

    @task
    def chat(self) -> None:
        """One request, streamed unless it falls in the non-stream share."""
        if self.non_stream_share > 0 and random.random() < self.non_stream_share:
            self._whole()
        else:
            self._stream()

    def _fire(self, kind: str, value: float, length: int) -> None:
        self.environment.events.request.fire(request_type=kind, name=self.model, response_time=value,
                                             response_length=length, exception=None, context={})

    def _stream(self) -> None:
        body = dict(self.body, stream=True)
        if self.usage:
            body["stream_options"] = {"include_usage": True}
        res = StreamResult()
        start = time.perf_counter()
        with self.client.post(CHAT_PATH, json=body, headers=self.headers, stream=True, catch_response=True,
                              name=CHAT_PATH + " (stream)") as resp:
            if resp.status_code != 200:
                resp.failure(_http_error(resp))
                return
            # FastResponse.iter_content(n) blocks until n bytes are buffered (which would delay the first
            # token); geventhttpclient's own readline returns each line as soon as it is complete.
            raw = resp._response
            try:
                read_stream(lambda: raw.readline(b"\n"), res)
            except (OSError, HTTPException, LocustError, ValueError) as e:  # reset, timeout, cut or bad framing
                res.error = f"stream read failed: {e!r}"
            finally:
                raw.release()  # no-op after a complete body; closes a connection left mid-body
            end = time.perf_counter()
            # Time the whole stream: with stream=True Locust would report the time to the response head.
            resp.request_meta["response_time"] = (end - start) * 1000
            resp.request_meta["response_length"] = res.bytes_read
            if res.error is None:
                resp.success()
            else:
                resp.failure(res.error)
        if res.first_token is not None:
            self._fire("TTFT", (res.first_token - start) * 1000, res.bytes_at_first)
        if res.error is None and res.tokens > 0:
            span = (res.last_token or end) - (res.first_token or start)
            rate = (res.tokens - 1) / span if res.tokens > 1 and span > 0 else res.tokens / (end - start)
            self._fire("tokens/s", rate, res.tokens)

    def _whole(self) -> None:
        with self.client.post(CHAT_PATH, json=dict(self.body, stream=False), headers=self.headers,
                              catch_response=True, name=CHAT_PATH + " (non-stream)") as resp:
            if resp.status_code != 200:
                resp.failure(_http_error(resp))
                return
            try:
                obj = loads(resp.content)
                tokens = (obj.get("usage") or {}).get("completion_tokens", 0)
                if not obj.get("choices"):
                    raise ValueError("no choices in the answer")
            except (ValueError, AttributeError, TypeError) as e:
                resp.failure(f"bad answer: {e}")
                return
            resp.request_meta["response_length"] = tokens if isinstance(tokens, int) else 0
            resp.success()
