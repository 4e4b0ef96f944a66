"""Support for the audit, secrets and scope abuse tests: a canned upstream (one fixed answer per model name, the
request headers it saw kept), raw HTTP requests, reading audit files, and a small tmpfs for a full disk.

Imports nothing from fastgw."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

#: The operator's upstream key the canned answers quote the way OpenAI's 401 does (last four characters).
OPERATOR_KEY = "sk-proj-OPERATORSECRET-9f3a"
CHAT_OK = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "canned",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": "canned answer"}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})


@dataclass
class Canned:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


#: Answers by the request's `model`.
ANSWERS = {
    "auth-401": Canned(401, orjson.dumps({"error": {
        "message": "Incorrect API key provided: sk-proj-****9f3a. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}),
        [("openai-organization", "org-OPERATORORG123")]),
    "auth-403": Canned(403, orjson.dumps({"error": {"message": "Project proj_OPERATORPROJ42 does not have access "
                                                              "to model gpt-4o", "type": "invalid_request_error",
                                                   "code": "model_not_found"}})),
    "rate-429": Canned(429, orjson.dumps({"error": {
        "message": "Rate limit reached for gpt-4o in organization org-OPERATORORG123 on tokens per min (TPM): "
                   "Limit 30000, Used 30000, Requested 1.", "type": "tokens", "code": "rate_limit_exceeded"}}),
        [("retry-after", "20"), ("openai-organization", "org-OPERATORORG123")]),
    "proxy-502": Canned(502, b"<html><body>502 Bad Gateway from internal-lb-7.corp.example:8443</body></html>"),
    "ok": Canned(200, CHAT_OK, [("openai-organization", "org-OPERATORORG123")]),
}


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while self._one():
                pass

    def _one(self) -> bool:
        line = self.rfile.readline()
        if not line:
            return False
        headers: list[tuple[str, str]] = []
        length = 0
        while True:
            h = self.rfile.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        server: CannedUpstream = self.server.owner  # type: ignore[attr-defined]
        server.seen.append({"line": line.decode("latin-1").strip(), "headers": headers, "body": body})
        ans = ANSWERS.get(body.get("model", ""), ANSWERS["ok"])
        if body.get("model") == "fallback-model" and ("authorization", f"Bearer {OPERATOR_KEY}") in headers:
            ans = ANSWERS["auth-401"]  # this model refuses the operator's key (another target has a good one)
        head = [f"HTTP/1.1 {ans.status} X", "content-type: application/json", f"content-length: {len(ans.body)}"]
        head += [f"{k}: {v}" for k, v in ans.headers]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + ans.body)
        self.wfile.flush()
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class CannedUpstream:
    """`CannedUpstream()`: `.url` is the /v1 base; `.seen` every request (line, headers, body); `.stop()`."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self._srv = _Server(("127.0.0.1", 0), _Handler)
        self._srv.owner = self  # type: ignore[attr-defined]
        self.port = self._srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._t = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._t.start()

    def stop(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()


def request(base: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | list[tuple[str, str]] | None = None,
            timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request: (status, lower-cased headers, body)."""
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        for k, v in items:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def chat(model: str, **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def audit_records(directory: Path) -> list[dict]:
    """Every record of the directory's audit files (a torn fragment left by a failed write is skipped, as
    `fastgw audit verify` does when the chain steps over it)."""
    out = []
    for line in audit_lines(directory):
        with contextlib.suppress(orjson.JSONDecodeError):
            out.append(orjson.loads(line))
    return out


def audit_lines(directory: Path) -> list[bytes]:
    return [x for f in sorted(directory.glob("audit-*.jsonl")) for x in f.read_bytes().splitlines()]


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[Path | None]:
    """A tmpfs of `size` mounted at `path` (yields None where mounting is not allowed: not root, no tmpfs)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield None
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> Path:
    """Write a file in `path` until the file system is full (ENOSPC); returns it (delete it to free the space)."""
    filler = path / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        block = b"\0" * 4096
        with contextlib.suppress(OSError):
            while True:
                f.write(block)
    with open(filler, "ab", buffering=0) as f:  # the last partial block, byte by byte
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0")
    return filler
