#!/usr/bin/env bash
# User-space instructions per request of one or more fastgw checkouts' worker, counted by valgrind (callgrind's
# Ir), for A/B comparisons on a box whose CPU time drifts by more than the change being measured:
#   bench/ir_ab.sh [-m stream|nonstream] [-p|-l] [-s SECONDS] DIR[@off] [DIR[@off] ...]
# Each DIR in turn: the mock upstream (bench/upstream.py, 50 events) and a 1-worker fastgw from DIR whose processes
# run under callgrind; wrk (8 connections) warms the worker up for 4 s, its counters are zeroed, wrk runs SECONDS
# (default 8), and the worker's counters, dumped, are divided by the requests wrk completed. Ir leaves out the
# kernel (system calls: ~25 % of the pass-through's CPU) and weighs every instruction the same, so it ranks
# changes to the gateway's own code; it reads the same to ~0.5 % run to run where cpu_ab.sh's figures move 30 %.
# DIR@off: its access log off. -p: bench run's fastgw-redact chain. -l: the rate-limiter on `local`, as cpu_ab.sh.
# KEEP=FILE: the (last) worker's callgrind dump is copied to FILE, for callgrind_annotate.
set -uo pipefail
exec 9>"${TMPDIR:-/tmp}/fastgw-ir_ab.lock"; flock 9
mode=nonstream chain= limit= secs=8
while getopts "m:pls:" o; do case $o in m) mode=$OPTARG;; p) chain=1;; l) limit=1;; s) secs=$OPTARG;; *) exit 2;; esac; done
[ -n "$chain" ] && [ -n "$limit" ] && { echo "ir_ab.sh: -p and -l are exclusive" >&2; exit 2; }
shift $((OPTIND - 1))
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || { echo "ir_ab.sh: needs valgrind" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
py=$here/.venv/bin/python
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$here/bench/ab_setup.sh"
ab_setup "$tmp" "$mode" "$chain" "$limit" 18112 18111
for arg in "$@"; do
  dir=${arg%@off} alog=json
  [ "$dir" != "$arg" ] && alog=off
  rm -rf "$tmp/state" "$tmp"/cg.*
  (cd "$here" && exec "$py" -m bench.upstream --port 18111 --events 50 >/dev/null 2>&1 9>&-) & up=$!
  (cd "$dir" && PYTHONPATH=$dir exec valgrind --tool=callgrind --trace-children=yes \
     --callgrind-out-file="$tmp/cg.%p" "$py" -m fastgw serve --config "$tmp/gw.yaml" --access-log "$alog" \
     >"$tmp/gw.log" 2>&1 9>&-) & gw=$!
  # Under valgrind a worker takes a while to start (a chain's databases: a minute or more).
  for _ in $(seq 600); do curl -s -o /dev/null -m 5 http://127.0.0.1:18112/healthz && break; sleep 0.5; done
  worker=$(pgrep -P "$gw" | head -1); [ -n "$worker" ] && { w=$(pgrep -P "$worker" | head -1); [ -n "$w" ] && worker=$w; }
  [ -n "$worker" ] || { echo "ir_ab.sh: no worker for $arg" >&2; cat "$tmp/gw.log" >&2; kill "$gw" "$up"; exit 1; }
  wrk -t1 -c8 -d4s -s "$tmp/req.lua" http://127.0.0.1:18112/v1/chat/completions >/dev/null
  callgrind_control -z "$worker" >/dev/null 2>&1
  n=$(wrk -t1 -c8 -d"${secs}s" -s "$tmp/req.lua" http://127.0.0.1:18112/v1/chat/completions | awk '/requests in/ {print $1}')
  callgrind_control -d "$worker" >/dev/null 2>&1
  kill "$gw" "$up"; wait "$gw" "$up" 2>/dev/null; [ -n "${KEEP:-}" ] && cp "$tmp/cg.$worker".* "$KEEP"
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$tmp/cg.$worker".*)
  echo "$mode $([ -n "$chain" ] && echo chain || { [ -n "$limit" ] && echo limit || echo pass-through; }) $arg: $("$py" -c "print(round($ir / $n))") Ir/request ($n requests)"
done
