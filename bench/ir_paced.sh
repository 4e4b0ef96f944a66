#!/usr/bin/env bash
# User-space instructions per paced event (one event per upstream read, the real LLM case) of one or more fastgw
# checkouts' worker, counted by valgrind (callgrind's Ir), for A/B comparisons of the per-event path:
#   bench/ir_paced.sh [-p] [-e EVENTS] [-d DELAY] DIR[@off] [DIR[@off] ...]
# Each DIR in turn: the mock upstream (bench/upstream.py, model bench-paced: EVENTS events, one every DELAY s,
# default 100 and 0.1) and a 1-worker fastgw from DIR under callgrind, dumping its counters before every read and
# writev; a client makes two streamed requests on one connection. An event's processing is what the worker does
# from the upstream read that brings it to its writev to the client. Printed: every dump's instructions but the
# worker's start and its one-time first uses (a dump over 1,000,000: imports, the first metric series) ÷ the events
# the two answers streamed (EVENTS + 3 each), the requests' own work included; and the
# median of the dumps taken before a writev (an event's read to its write; an event a policy holds back is written
# with the next, its work falls in a read's dump), and of those taken before a read (the loop's wait and the read).
# Dumping is slow: at a shorter DELAY, events arrive while one is handled and share a read. DIR@off: its access log off.
# -p: bench run's fastgw-redact chain (pii-detector + safety-filter, redact). KEEP=DIR: the worker's dumps are
# copied there, for callgrind_annotate.
set -uo pipefail
exec 9>"${TMPDIR:-/tmp}/fastgw-ir_ab.lock"; flock 9
chain= events=100 delay=0.1
while getopts "pe:d:" o; do case $o in p) chain=1;; e) events=$OPTARG;; d) delay=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1))
command -v valgrind >/dev/null || { echo "ir_paced.sh: needs valgrind" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
py=$here/.venv/bin/python
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$here/bench/ab_setup.sh"
ab_setup "$tmp" stream "$chain" "" 18112 18111
sed -i 's/model: bench-model/model: bench-paced/' "$tmp/gw.yaml"  # the target asks the upstream for the paced answer
for arg in "$@"; do
  dir=${arg%@off} alog=json
  [ "$dir" != "$arg" ] && alog=off
  rm -f "$tmp"/cg.*
  (cd "$here" && exec "$py" -m bench.upstream --port 18111 --events "$events" --delay "$delay" >/dev/null 2>&1 9>&-) & up=$!
  (cd "$dir" && PYTHONPATH=$dir exec valgrind --tool=callgrind --trace-children=yes --dump-before=read \
     --dump-before=writev --callgrind-out-file="$tmp/cg.%p" "$py" -m fastgw serve --config "$tmp/gw.yaml" \
     --access-log "$alog" >"$tmp/gw.log" 2>&1 9>&-) & gw=$!
  for _ in $(seq 600); do curl -s -o /dev/null -m 5 http://127.0.0.1:18112/healthz && break; sleep 0.5; done
  worker=$(pgrep -P "$gw" | head -1); [ -n "$worker" ] && { w=$(pgrep -P "$worker" | head -1); [ -n "$w" ] && worker=$w; }
  [ -n "$worker" ] || { echo "ir_paced.sh: no worker for $arg" >&2; cat "$tmp/gw.log" >&2; kill "$gw" "$up"; exit 1; }
  n=$("$py" - "$here" <<'CLIENT'
import socket, sys
sys.path.insert(0, sys.argv[1])
from bench.loadgen import build_request, chat_body
from bench.upstream import PACED_MODEL
req = build_request("127.0.0.1", 18112, "/v1/chat/completions", chat_body(PACED_MODEL, True), {})
s = socket.create_connection(("127.0.0.1", 18112))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
events = 0
for _ in range(2):
    s.sendall(req)
    buf = b""
    while not buf.endswith(b"0\r\n\r\n"):
        data = s.recv(65536)
        if not data:
            sys.exit("ir_paced.sh: the gateway closed the connection")
        buf += data
    events += buf.count(b"data: ")
print(events)
CLIENT
)
  kill "$gw" "$up"; wait "$gw" "$up" 2>/dev/null
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$tmp/cg.$worker".* "$KEEP"
  "$py" - "$tmp" "$worker" "$arg" "$([ -n "$chain" ] && echo chain || echo pass-through)" "$n" <<'MEDIAN'
import glob, re, statistics, sys
tmp, worker, arg, what, events = sys.argv[1:]
by: dict[str, list[int]] = {"writev": [], "read": []}
steady = 0  # every dump but the worker's start and its one-time first uses (each > 1,000,000)
for f in glob.glob(f"{tmp}/cg.{worker}.*"):
    text = open(f, errors="replace").read()
    trigger = re.search(r"^desc: Trigger: .*--dump-before=(\w+)", text, re.M)
    total = re.search(r"^totals: (\d+)", text, re.M)
    if trigger and total and trigger.group(1) in by:
        by[trigger.group(1)].append(int(total.group(1)))
    if total and int(total.group(1)) < 1_000_000:
        steady += int(total.group(1))
if len(by["writev"]) < 20:
    sys.exit(f"ir_paced.sh: only {len(by['writev'])} writev dumps for {arg}")
w, r = statistics.median(by["writev"]), statistics.median(by["read"])
print(f"paced {what} {arg}: {steady / int(events):.0f} Ir/event (all but one-time work ÷ {events} events, the "
      f"requests' own included); median {w:.0f} from a read to its writev ({len(by['writev'])} writevs), {r:.0f} a read")
MEDIAN
done
