"""Every HTTP-level limit, size and timeout default in one place, each with its reason and precedent.

The config schema (`fastgw.config`) takes its defaults from here and from
`fastgw.api.limits` (the LLM and process ones), so a default changes in exactly
one place. Durations are seconds.
"""

from __future__ import annotations

# --- client side (HTTP/1.1 server) -------------------------------------------

#: Time allowed to receive a complete request head; slowloris defence. nginx client_header_timeout is 60 s,
#: Envoy request_headers_timeout is unset; 10 s is ample for a head that fits in one packet.
HEADER_TIMEOUT = 10.0
#: Longest silence between two bytes of a request body (a slow-body attack holds a connection otherwise).
#: nginx client_body_timeout is 60 s; request bodies here are JSON sent at once.
BODY_TIMEOUT = 30.0
#: Idle time between requests on a keep-alive connection. nginx keepalive_timeout 75 s; above common LB idle (60 s)
#: so the load balancer, not us, closes first.
KEEPALIVE_TIMEOUT = 75.0
#: Total bytes of request line + headers. Envoy max_request_headers_kb default 60 KiB; nginx 4 x 8 KiB buffers.
MAX_HEADER_BYTES = 64 * 1024
#: Number of request headers. Envoy max_headers_count default 100; Go net/http has no count limit but 1 MiB of bytes.
MAX_HEADERS = 100
#: Request body size. LLM requests with images inline as base64 reach a few MiB; OpenAI caps bodies near 20 MiB.
MAX_BODY_BYTES = 16 * 1024 * 1024
#: A client that accepts no bytes for this long is dropped. nginx send_timeout is 60 s.
SEND_TIMEOUT = 60.0
#: Request targets whose split into path and query a worker keeps (proto.h1): the few a gateway's clients send, with
#: room for model paths; a client that varies them only refills the table. Longer targets are split every time.
TARGET_CACHE_ENTRIES = 256
TARGET_CACHE_KEY_BYTES = 256
#: Bytes of one chunk-size line (size + extensions). RFC 9112 sets none; Node (CVE-2024-22019) and
#: the brief cap extensions at 4 KiB: nothing legitimate sends more.
MAX_CHUNK_LINE = 4096 + 32
#: Write-buffer high watermark per client connection: above it we stop reading the upstream.
#: asyncio's default is 64 KiB; a few SSE events of headroom keeps latency flat.
WRITE_HIGH_WATER = 64 * 1024
#: Write-buffer low watermark: below it upstream reading resumes.
WRITE_LOW_WATER = 16 * 1024
#: Bytes per read from the socket; uvloop's default read buffer.
READ_SIZE = 256 * 1024
#: Kernel receive buffer of an upstream connection once it carries a stream (SO_RCVBUF; Linux doubles it).
#: Autotuned it grows to tens of MiB: a provider could push that much of an answer the client has not read into
#: the kernel (charged to the service's memory). 256 KiB is seconds of any token stream and one read.
STREAM_RCVBUF = 256 * 1024
#: Slowest request body accepted once a body has taken longer than BODY_TIMEOUT (bytes/s): a body dripped to
#: hold a connection is cut within about 2 x BODY_TIMEOUT. nginx has no rate floor; Apache mod_reqtimeout
#: uses MinRate=500; 1 KiB/s is a 2G phone link, far below any real client.
MIN_BODY_RATE = 1024.0
#: Open client connections per worker; past it a new one gets 503 and is closed (never a silent reset).
#: nginx worker_connections defaults to 512 (1024 in Debian's config); a stream costs ~16 KiB here, and the
#: unit's LimitNOFILE leaves room for upstream sockets.
MAX_CONNECTIONS = 4096
#: Request body bytes a worker holds at once (all connections); past it new bodies get 503 + Retry-After.
#: Four maximum-size bodies: a hostile client cannot take a worker's memory with uploads.
MAX_BUFFERED_BODY_BYTES = 4 * MAX_BODY_BYTES
#: Longest client-supplied string written to a log or audit record (model, path, ids, header values); longer
#: ones are cut and their length noted, so one hostile request costs a few KiB of log at most.
MAX_LOGGED_STRING = 256

# --- upstream side (HTTP/1.1 client) ------------------------------------------

#: Idle keep-alive connections kept per upstream (scheme, host, port) per worker. aiohttp limit_per_host default
#: is unlimited, urllib3 maxsize 10; 64 covers bursts without hoarding provider sockets.
POOL_MAX_IDLE_PER_HOST = 64
#: A pooled connection unused for this long is closed: OpenAI and most CDNs drop idle keep-alive near 60-90 s.
POOL_IDLE_TIMEOUT = 50.0
#: Largest upstream response head. Same as the client-side header limit.
MAX_UPSTREAM_HEADER_BYTES = 64 * 1024
#: Largest non-streamed upstream body we will hold to relay (an embeddings batch of 2048 x 3072 floats as JSON ~ 60 MiB).
MAX_UPSTREAM_BODY_BYTES = 128 * 1024 * 1024

# --- SSE -----------------------------------------------------------------------

#: Longest SSE event held while incomplete. One chat chunk is < 1 KiB; a tool-call argument delta or a
#: big base64 image event can reach hundreds of KiB. Bounded so a hostile upstream cannot grow memory.
MAX_SSE_EVENT_BYTES = 1024 * 1024
#: A pass-through stream's first read larger than this has its first event written before the rest is relayed:
#: past a page of events (~16 chat chunks) the rest's work outweighs one more write. nginx writes a burst in
#: proxy_buffer_size pieces (one page) for the same reason.
EARLY_WRITE_BYTES = 4096

# --- NDJSON --------------------------------------------------------------------

#: Longest NDJSON line (Ollama streams: one token or one whole tool call per line); same bound as MAX_SSE_EVENT_BYTES.
MAX_NDJSON_LINE_BYTES = 1024 * 1024

# --- AWS event stream ----------------------------------------------------------

#: Largest AWS event-stream frame held until its CRC checks (Bedrock events are JSON deltas < 1 KiB; the format
#: allows 16 MiB, botocore 24 MiB, but a frame is buffered whole, so it is capped like an SSE event).
MAX_EVENTSTREAM_FRAME_BYTES = 1024 * 1024
