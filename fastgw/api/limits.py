"""The LLM-facing and process limits: upstream deadlines, circuit breakers, worker supervision.

HTTP-level limits live in `fastgw.proto.limits`; the config schema takes its
defaults from both, so each default changes in exactly one place. Durations are seconds.
"""

from __future__ import annotations

# --- process ---------------------------------------------------------------------

#: A worker whose event loop has not answered the master for this long is hung: aborted and replaced.
#: gunicorn's worker timeout is 30 s.
WORKER_TIMEOUT = 30.0
#: Drain budget on SIGTERM before in-flight streams are cut. gunicorn graceful_timeout is 30 s.
GRACEFUL_TIMEOUT = 30.0
#: Access lines wait at most this long in the worker before one write(2) takes them all: a busy worker finishes
#: about one request per loop iteration, so a write per iteration was a syscall per request (~2 % of its CPU).
#: What a hard crash (SIGKILL, segfault) can lose; an orderly exit writes them all.
ACCESS_LOG_FLUSH_DELAY = 0.01
#: Bytes per write(2) at most to a pipe, a socket or a stream of unknown kind (a line longer than this alone
#: excepted): PIPE_BUF, so on a pipe shared by the workers (stdout under a supervisor) each write is atomic and lines
#: never interleave. A regular file or a character device takes a batch in one write (fastgw.accesslog `_most`).
ACCESS_LOG_BATCH_BYTES = 4096
#: ... and written at once when this many are waiting (bounds the memory a burst of requests holds in lines).
ACCESS_LOG_BATCH_LINES = 128
#: Young-generation threshold of a worker's cyclic GC (CPython's default: 700). Requests free what they allocate
#: by reference count, but 64 requests in flight hold ~700 tracked objects at any time, so at 700 the collector
#: ran ~80 times a second for nothing (3.8 % of worker CPU measured with boot's objects in it, 2.3 % frozen);
#: at 5,000 it ran twice in 10 s. Cyclic garbage waits for at most this many net allocations (< 1 MB).
GC_YOUNG_THRESHOLD = 5000

# --- upstream ---------------------------------------------------------------------

#: TCP + TLS connect to a provider. Envoy connect_timeout default 5 s (1 s is too tight for TLS across regions).
CONNECT_TIMEOUT = 5.0
#: Encoded request heads a target keeps (one per path, accept and credentials: a handful in practice); a client
#: that varies a forwarded header (anthropic-beta) can only make the cache start over, never grow.
REQUEST_HEADS = 64
#: Request sent -> first upstream event (or the response head of a non-streamed call). Reasoning models think
#: for a minute or more before their first token; peers default between 60 s (LiteLLM) and none.
TTFT_TIMEOUT = 120.0
#: Silence between two upstream events once streaming. Providers send keep-alive pings well within 30 s.
IDLE_TIMEOUT = 60.0
#: A whole answer, streamed or not. OpenAI's own SDK default request timeout is 600 s.
MAX_DURATION = 600.0
#: Consecutive failures that open a target's circuit, and seconds before one half-open probe (Envoy-like).
BREAKER_FAILURES = 5
BREAKER_COOLDOWN = 30.0

#: CPU seconds the policies may spend on one request (both directions, scanning included) before it is refused
#: (413 `request_too_expensive` before the upstream is called, an in-stream error after). A 16 MiB body scans
#: in well under a second; the budget stops inputs built to be slow, whatever they are.
MAX_REQUEST_CPU = 2.0
#: Longest stretch a policy holds the event loop before it yields to other requests (seconds): large bodies are
#: scanned in slices of about this much work.
SCAN_SLICE = 0.002
#: Texts one streamed answer may open for the output policies (a choice's content, a tool call's arguments, a
#: Responses part, a Messages block): each holds a Hyperscan stream and its state per scanning policy (~3 KB)
#: until it is final, so an upstream that opened texts without end held memory without end (20,000 tool calls,
#: 3.4 MB of events: 60 MB, measured in process). Real answers open a few dozen; a heavy agentic answer (many
#: server-tool results, each result's fields a text) a few hundred. Past it the stream ends with
#: `upstream_protocol_error`.
MAX_STREAM_TEXTS = 4096
