"""A mock Amazon Bedrock runtime (Converse / ConverseStream) for tests, run as its own process.

`python -m tests.support.mock_bedrock --port 0` binds, prints `LISTENING <port>` once it serves, and answers
`POST /model/{modelId}/converse` (JSON) and `POST /model/{modelId}/converse-stream` (AWS binary event stream,
`application/vnd.amazon.eventstream`) the way bedrock-runtime does. Every request must be signed: SigV4 with
the test credentials below is verified in full (botocore recomputes the signature over the request exactly as
received: method, raw path, signed headers, body), or `Authorization: Bearer <API_KEY>`; anything else gets
403 with Bedrock's error body and `x-amzn-ErrorType`.

The answer is chosen by the last user message's text (a script name; anything else gets `text`):

- `text`, `email` (an email address cut across two events), `tool`, `tools2` (two parallel tool calls),
  `instream-error` (modelStreamErrorException after some text): recorded streams served from
  `tests/fixtures/bedrock/` (`<name>.eventstream`, and `<name>.json` for Converse where there is one).
- `finish:<stopReason>`: a short text then that stopReason (end_turn, stop_sequence, max_tokens, tool_use,
  guardrail_intervened, content_filtered).
- `cache`: usage with cacheReadInputTokens / cacheWriteInputTokens.
- `throttle-instream`: a throttlingException message right after messageStart.
- `error-frame`: a `:message-type error` message (`:error-code`, `:error-message` headers).
- `cut`: a few events, then half a frame, then the TCP connection is aborted (Converse: part of the body, then the
  abort).
- `corrupt`: a few events, then a frame whose message CRC is wrong.
- `error429`, `error400`, `error403`, `error500`: that HTTP status before any stream, Bedrock's body
  `{"message": ...}` and `x-amzn-ErrorType`.

`GET /_last` returns `{"path", "model", "operation", "headers", "body"}` of the last model request (404 before any);
`POST /_reset` forgets it.
`--write-fixtures` regenerates the recorded streams (from `build_fixtures()`) and exits.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import unquote

from aiohttp import web

from fastgw.proto.eventstream import encode_message, event, exception
from tests.support import mockkit, mockserver

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bedrock"

#: The credentials tests give the gateway (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN).
ACCESS_KEY = "AKIAMOCKBEDROCK00001"
SECRET_KEY = "mockSecretKey/For+BedrockTests0000000000"
SESSION_TOKEN = "mock-session-token//ABCDEF=="
API_KEY = "mock-bedrock-api-key"

_SIGV4 = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request, "
                    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")
_PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream)$")
_SCRIPTED = ("text", "email", "tool", "tools2", "instream-error")

#: Bedrock pads each event payload with a "p" field so that sizes do not reveal the text (its docs call it
#: obfuscation); consumers must ignore it.
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123"


def _payload(obj: dict, pad: int) -> bytes:
    return json.dumps({**obj, "p": _PAD[:pad]}, separators=(",", ":")).encode()


def _ev(kind: str, obj: dict, pad: int = 8) -> bytes:
    return event(kind, _payload(obj, pad))


def text_events(texts: list[str], stop: str = "end_turn", usage: dict | None = None) -> list[bytes]:
    frames = [_ev("messageStart", {"role": "assistant"}, 4)]
    frames += [_ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}}, 3 + i % 7)
               for i, t in enumerate(texts)]
    frames += [_ev("contentBlockStop", {"contentBlockIndex": 0}, 11),
               _ev("messageStop", {"stopReason": stop}, 6),
               _ev("metadata", {"usage": usage or {"inputTokens": 13, "outputTokens": len(texts) * 3,
                                                    "totalTokens": 13 + len(texts) * 3},
                                "metrics": {"latencyMs": 317}}, 9)]
    return frames


def tool_events(calls: list[tuple[str, str, list[str]]], lead: str | None) -> list[bytes]:
    frames = [_ev("messageStart", {"role": "assistant"}, 4)]
    idx = 0
    if lead:
        frames += [_ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": lead}}),
                   _ev("contentBlockStop", {"contentBlockIndex": 0})]
        idx = 1
    for call_id, name, parts in calls:
        frames.append(_ev("contentBlockStart",
                          {"contentBlockIndex": idx, "start": {"toolUse": {"toolUseId": call_id, "name": name}}}))
        frames += [_ev("contentBlockDelta", {"contentBlockIndex": idx, "delta": {"toolUse": {"input": p}}}, 5)
                   for p in parts]
        frames.append(_ev("contentBlockStop", {"contentBlockIndex": idx}))
        idx += 1
    frames += [_ev("messageStop", {"stopReason": "tool_use"}),
               _ev("metadata", {"usage": {"inputTokens": 412, "outputTokens": 58, "totalTokens": 470},
                                "metrics": {"latencyMs": 1204}})]
    return frames


TEXT = ["Hello", "! I'm a", " model served", " by Amazon", " Bedrock", "."]
EMAIL = ["You can reach Jane at jane.doe@exam", "ple.com any time", "."]
WEATHER = ("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "get_weather", ['{"location":', ' "Seattle, WA",', ' "unit": "c"}'])
CACHE_USAGE = {"inputTokens": 7, "outputTokens": 2, "totalTokens": 129, "cacheReadInputTokens": 100,
               "cacheWriteInputTokens": 20}
TIME = ("tooluse_Bq8n1xT3QWa2cYk4r0nVjg", "get_time", ['{"timezone": "America/Los_Angeles"}'])


def converse_json(blocks: list[dict], stop: str, usage: dict) -> bytes:
    return json.dumps({"output": {"message": {"role": "assistant", "content": blocks}}, "stopReason": stop,
                       "usage": usage, "metrics": {"latencyMs": 842}}, indent=2).encode() + b"\n"


def build_fixtures() -> dict[str, bytes]:
    """The recorded streams and bodies, shaped as the Bedrock API reference (ConverseStream, Converse) shows."""
    weather_input = {"location": "Seattle, WA", "unit": "c"}
    out = {
        "text.eventstream": b"".join(text_events(TEXT)),
        "email.eventstream": b"".join(text_events(EMAIL)),
        "tool.eventstream": b"".join(tool_events([WEATHER], "Let me check the weather.")),
        "tools2.eventstream": b"".join(tool_events([WEATHER, TIME], None)),
        "instream-error.eventstream": b"".join([
            _ev("messageStart", {"role": "assistant"}, 4),
            _ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Partial answer"}}),
            exception("modelStreamErrorException", json.dumps({
                "message": "The model encountered an error while streaming the response.",
                "originalStatusCode": 500, "originalMessage": "Internal error"}).encode())]),
        "text.json": converse_json([{"text": "".join(TEXT)}], "end_turn",
                                   {"inputTokens": 13, "outputTokens": 18, "totalTokens": 31}),
        "tool.json": converse_json([{"text": "Let me check the weather."},
                                    {"toolUse": {"toolUseId": WEATHER[0], "name": WEATHER[1],
                                                 "input": weather_input}}],
                                   "tool_use", {"inputTokens": 412, "outputTokens": 58, "totalTokens": 470}),
        "tools2.json": converse_json([{"toolUse": {"toolUseId": WEATHER[0], "name": WEATHER[1],
                                                   "input": weather_input}},
                                      {"toolUse": {"toolUseId": TIME[0], "name": TIME[1],
                                                   "input": {"timezone": "America/Los_Angeles"}}}],
                                     "tool_use", {"inputTokens": 412, "outputTokens": 74, "totalTokens": 486}),
        "error-429.json": b'{"message":"Too many requests, please wait before trying again."}',
        "error-400.json": b'{"message":"The provided model identifier is invalid."}',
    }
    return out


_ERRORS = {
    "error429": (429, "ThrottlingException", "error-429.json"),
    "error400": (400, "ValidationException", "error-400.json"),
    "error403": (403, "AccessDeniedException", None),
    "error500": (500, "InternalServerException", None),
}


# ---------------------------------------------------------------- requests


REC = mockkit.Recorder()


def error_response(status: int, kind: str, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"message": message}).encode(), headers={
        "content-type": "application/json", "x-amzn-RequestId": str(uuid.uuid4()),
        "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"})


def check_auth(request: web.Request, body: bytes) -> web.Response | None:
    """None when the request is signed with the test credentials (or carries the test API key)."""
    auth = request.headers.get("authorization", "")
    if auth.startswith("Bearer "):
        if auth[7:] == API_KEY:
            return None
        return error_response(403, "AccessDeniedException",
                              "Invalid API Key format: Must start with pre-defined prefix")
    m = _SIGV4.match(auth)
    if not m:
        return error_response(403, "IncompleteSignatureException",
                              f"Authorization header requires AWS4-HMAC-SHA256 SigV4 parameters: {auth[:60]!r}")
    key_id, date, region, service, signed, _signature = m.groups()
    if key_id != ACCESS_KEY:
        return error_response(403, "UnrecognizedClientException",
                              "The security token included in the request is invalid.")
    if service != "bedrock":
        return error_response(403, "InvalidSignatureException",
                              f"Credential should be scoped to 'bedrock', not {service!r}")
    amz_date = request.headers.get("x-amz-date", "")
    if not re.fullmatch(r"\d{8}T\d{6}Z", amz_date) or not amz_date.startswith(date):
        return error_response(403, "IncompleteSignatureException",
                              "X-Amz-Date missing or not the credential's date")
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names or names != sorted(names):
        return error_response(403, "InvalidSignatureException", "SignedHeaders must include host and x-amz-date")
    token = request.headers.get("x-amz-security-token")
    if token is not None and (token != SESSION_TOKEN or "x-amz-security-token" not in names):
        return error_response(403, "UnrecognizedClientException",
                              "The security token included in the request is invalid.")
    if any(n not in request.headers for n in names):
        return error_response(403, "InvalidSignatureException", "a signed header is missing from the request")
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    headers = {n: request.headers[n] for n in names}
    url = f"http://{request.headers['host']}{request.raw_path}"  # the path exactly as received
    req = botocore.awsrequest.AWSRequest(method=request.method, url=url, data=body, headers=headers)
    when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    creds = botocore.credentials.Credentials(ACCESS_KEY, SECRET_KEY, token)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        botocore.auth.SigV4Auth(creds, service, region).add_auth(req)
    if req.headers["Authorization"] != auth:
        return error_response(403, "InvalidSignatureException",
                              "The request signature we calculated does not match the signature you provided. "
                              "Check your AWS Secret Access Key and signing method.")
    return None


def last_user_text(body: Any) -> str:
    msgs = body.get("messages") if isinstance(body, dict) else None
    for m in reversed(msgs or []):
        if isinstance(m, dict) and m.get("role") == "user":
            texts = [b["text"] for b in m.get("content") or []
                     if isinstance(b, dict) and isinstance(b.get("text"), str)]
            if texts:
                return texts[-1].strip()
    return ""


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


async def model_request(request: web.Request) -> web.StreamResponse:
    m = _PATH.match(request.raw_path)
    if m is None or request.method != "POST":
        await request.read()
        return error_response(404, "UnknownOperationException", f"no operation at {request.method} {request.raw_path}")
    model_id, op = unquote(m.group(1)), m.group(2)
    raw, body = await mockkit.read_json(request, REC, path=request.raw_path, model=model_id, operation=op)
    denied = check_auth(request, raw)
    if denied is not None:
        return denied
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return error_response(400, "ValidationException", "messages is required")
    script = last_user_text(body)
    if script in _ERRORS:
        status, kind, name = _ERRORS[script]
        message = json.loads(fixture(name))["message"] if name else f"mock {kind}"
        return error_response(status, kind, message)
    if op == "converse":
        if script == "cut":
            return await mockkit.cut_body(request, "application/json", b'{"output":{"message":{"role":"assis')
        return converse(script)
    return await converse_stream(request, script)


def converse(script: str) -> web.Response:
    if script.startswith("finish:"):
        data = converse_json([{"text": "Finishing."}], script[7:], {"inputTokens": 5, "outputTokens": 2,
                                                                     "totalTokens": 7})
    elif script == "cache":
        data = converse_json([{"text": "Cached."}], "end_turn", CACHE_USAGE)
    elif script == "email":
        data = converse_json([{"text": "".join(EMAIL)}], "end_turn", {"inputTokens": 9, "outputTokens": 11,
                                                                      "totalTokens": 20})
    else:
        data = fixture(f"{script}.json" if script in ("tool", "tools2") else "text.json")
    return web.Response(body=data, headers={"content-type": "application/json", "x-amzn-RequestId": str(uuid.uuid4())})


def stream_frames(script: str) -> list[bytes] | None:
    if script in _SCRIPTED:
        return None
    if script.startswith("finish:"):
        return text_events(["Finishing", " now."], stop=script[7:])
    if script == "cache":
        return text_events(["Cached", "."], usage=CACHE_USAGE)
    if script == "throttle-instream":
        return [_ev("messageStart", {"role": "assistant"}),
                exception("throttlingException", b'{"message":"Too many tokens, please wait before trying again."}')]
    if script == "error-frame":
        return [_ev("messageStart", {"role": "assistant"}),
                encode_message({":message-type": "error", ":error-code": "InternalFailure",
                                ":error-message": "An internal error occurred."})]
    if script == "corrupt":
        frames = text_events(TEXT)
        bad = bytearray(frames[3])
        bad[-1] ^= 0xFF
        return frames[:3] + [bytes(bad)] + frames[4:]
    return None


async def converse_stream(request: web.Request, script: str) -> web.StreamResponse:
    headers = {"content-type": "application/vnd.amazon.eventstream", "x-amzn-RequestId": str(uuid.uuid4())}
    if script == "cut":
        frames = text_events(TEXT)
        return await mockkit.stream(request, frames[:3] + [frames[3][: len(frames[3]) // 2]], headers, cut=True)
    frames = stream_frames(script)
    if frames is None:
        frames = split_frames(fixture(f"{script if script in _SCRIPTED else 'text'}.eventstream"))
    # One chunk per event, as Bedrock sends them. An exception or error frame comes after the model worked a while:
    # the events before it are flushed to the client first, so the failure is in-stream, not an HTTP error.
    return await mockkit.stream(request, frames, headers,
                                late=lambda i, f: b":exception-type" in f or b":error-code" in f)


def split_frames(data: bytes) -> list[bytes]:
    """A recorded stream cut back into its frames (each starts with its own total length)."""
    out = []
    pos = 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        out.append(data[pos:pos + n])
        pos += n
    return out


def make_app() -> web.Application:
    return mockkit.make_app(REC, [], model_request)


def main(argv: list[str] | None = None) -> int:
    parser = mockserver.parser("Mock Amazon Bedrock runtime (Converse) for fastgw tests.")
    parser.add_argument("--write-fixtures", action="store_true", help="regenerate tests/fixtures/bedrock and exit")
    args = parser.parse_args(argv)
    if args.write_fixtures:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for name, data in build_fixtures().items():
            (FIXTURES / name).write_bytes(data)
            print(FIXTURES / name)
        return 0
    asyncio.run(mockserver.serve(make_app, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
