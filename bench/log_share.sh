#!/usr/bin/env bash
# The access log's share of a loaded worker's CPU, sampled where it runs (issue 18: the log on costs <= 3 %):
#   bench/log_share.sh [-m stream|nonstream] [-s SECONDS] DIR [DIR ...]
# Each DIR in turn: the mock upstream (bench/upstream.py, 50 events) on CPU 1, a 1-worker fastgw from DIR with its
# JSON access log on (stdout to /dev/null) on CPU 0, wrk (64 connections, CPU 1) loading it as `bench run` does; after
# 3 s of warm-up, `perf record -e cpu-clock --call-graph dwarf` samples the worker for SECONDS (default 5), user and
# kernel time alike. Printed: the share of the worker's samples with `log_request` on their stack (the line, and the
# batch's writes when a full batch goes out from it), with the batch timer's `flush` on its own, and the requests/s.
# Unlike bench/ir_ab.sh (instructions under valgrind, where the worker is ~50x slower and a batch holds a few
# lines), this is time at full load, batches full, cache misses and system calls in. Needs perf and root.
set -uo pipefail
mode=nonstream secs=5
while getopts "m:s:" o; do case $o in m) mode=$OPTARG;; s) secs=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1))
command -v perf >/dev/null && command -v wrk >/dev/null || { echo "log_share.sh: needs perf and wrk" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
py=$here/.venv/bin/python
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$here/bench/ab_setup.sh"
ab_setup "$tmp" "$mode" "" "" 18312 18311
for dir in "$@"; do
  (cd "$here" && exec taskset -c 1 "$py" -m bench.upstream --port 18311 --events 50 >/dev/null 2>&1) & up=$!
  (cd "$dir" && PYTHONPATH=$dir exec taskset -c 0 "$py" -m fastgw serve --config "$tmp/gw.yaml" --access-log json \
     >/dev/null 2>"$tmp/gw.log") & gw=$!
  for _ in $(seq 100); do curl -s -o /dev/null -m 2 http://127.0.0.1:18312/healthz && break; sleep 0.2; done
  worker=$(pgrep -P "$gw" | head -1)
  [ -n "$worker" ] || { echo "log_share.sh: no worker for $dir" >&2; cat "$tmp/gw.log" >&2; kill "$gw" "$up"; exit 1; }
  taskset -c 1 wrk -t1 -c64 -d"$((secs + 4))s" -s "$tmp/req.lua" http://127.0.0.1:18312/v1/chat/completions \
    >"$tmp/wrk.txt" & load=$!
  sleep 3
  perf record -q -e cpu-clock -F 2000 --call-graph dwarf,16384 -p "$worker" -o "$tmp/perf.data" -- sleep "$secs" \
    >/dev/null 2>&1
  wait "$load"
  kill "$gw" "$up"; wait "$gw" "$up" 2>/dev/null
  perf script -i "$tmp/perf.data" -F ip,sym 2>/dev/null | "$py" -c '
import sys
samples, stack = [], []
for line in sys.stdin:
    part = line.split(None, 1)
    if not part:
        if stack:
            samples.append(stack)
        stack = []
        continue
    stack.append(part[1].split("+")[0].strip() if len(part) > 1 else "?")
if stack:
    samples.append(stack)
n = len(samples) or 1
line = sum(1 for s in samples if "CPyDef_accesslog___log_request" in s)
timer = sum(1 for s in samples if "CPyDef_accesslog___flush" in s and "CPyDef_accesslog___log_request" not in s)
print(f"  {len(samples)} samples: log_request {100 * line / n:.2f} %, the timer'"'"'s flush {100 * timer / n:.2f} %, "
      f"the log {100 * (line + timer) / n:.2f} % of the worker'"'"'s CPU")
'
  echo "$mode $dir: $(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.txt") requests/s"
done
