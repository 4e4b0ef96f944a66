"""One raw HTTP exchange with a gateway, and the JSON objects its answer carries: the whole body, or each SSE
event's `data:` (with its `event:` name) up to `[DONE]`. Raw, not through an SDK: an SDK would parse leniently
and hide the very fields the conformance suite judges."""

from __future__ import annotations

import http.client
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Exchange:
    """What the gateway answered: status, headers (lower-case names), and the JSON objects of the body."""

    status: int
    headers: dict[str, str]
    raw: bytes
    #: (SSE event name or "", object): one per event when streamed, one for a JSON body
    objects: list[tuple[str, Any]] = field(default_factory=list)
    streamed: bool = False
    done: bool = False  # a streamed answer ended with `data: [DONE]`


def sse_objects(raw: bytes) -> tuple[list[tuple[str, Any]], bool]:
    """The JSON objects of an SSE body (a `data:` that is not JSON fails the test), and whether `[DONE]` came."""
    objects: list[tuple[str, Any]] = []
    done = False
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = "", []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
        if not data:
            continue  # a comment (`: ping`) or the empty tail
        payload = b"\n".join(data)
        if payload == b"[DONE]":
            done = True
            continue
        objects.append((name, orjson.loads(payload)))
    return objects, done


def exchange(base: str, method: str, path: str, body: dict | bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = 20.0) -> Exchange:
    """Send one request to `base` (`http://host:port`) and read the whole answer."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = orjson.dumps(body) if isinstance(body, dict) else body
        hdrs = {"content-type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        heads = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    ex = Exchange(resp.status, heads, raw)
    ctype = heads.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        ex.streamed = True
        ex.objects, ex.done = sse_objects(raw)
    elif raw:
        assert ctype.startswith("application/json"), (ctype, raw[:200])
        ex.objects = [("", orjson.loads(raw))]
    return ex
