#!/usr/bin/env bash
# The interpreted calls a request still makes, per request: bench/pycalls.sh [-m stream|nonstream] [-p|-l] [DIR]
# A 1-worker fastgw from DIR (default: this checkout) on the mock upstream (bench/upstream.py, 50 events), with
# bench/pycalls_hook on its PYTHONPATH: wrk (8 connections) warms it up for 2 s, the worker's counting is switched
# on for 3 s of load, and each function's calls are printed divided by the requests wrk completed. Compiled code
# is invisible to the hook, so what it lists is what runs interpreted (each line one frame per request or more).
# -p: bench run's fastgw-redact chain; -l: the rate-limiter on `local` (as cpu_ab.sh and ir_ab.sh). TOP=N lines.
set -uo pipefail
mode=nonstream chain= limit=
while getopts "m:pl" o; do case $o in m) mode=$OPTARG;; p) chain=1;; l) limit=1;; *) exit 2;; esac; done
shift $((OPTIND - 1))
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$here}
py=$here/.venv/bin/python
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$here/bench/ab_setup.sh"
ab_setup "$tmp" "$mode" "$chain" "$limit" 18122 18121
(cd "$here" && exec "$py" -m bench.upstream --port 18121 --events 50 >/dev/null 2>&1) & up=$!
(cd "$dir" && PYCALLS_OUT=$tmp/calls.txt PYTHONPATH=$here/bench/pycalls_hook:$dir exec "$py" -m fastgw serve \
   --config "$tmp/gw.yaml" --access-log off >"$tmp/gw.log" 2>&1) & gw=$!
for _ in $(seq 200); do curl -s -o /dev/null -m 5 http://127.0.0.1:18122/healthz && break; sleep 0.3; done
worker=$(pgrep -P "$gw" | head -1)
[ -n "$worker" ] || { echo "pycalls.sh: no worker" >&2; cat "$tmp/gw.log" >&2; kill "$gw" "$up"; exit 1; }
wrk -t1 -c8 -d2s -s "$tmp/req.lua" http://127.0.0.1:18122/v1/chat/completions >/dev/null
kill -s SIGRTMIN+3 "$worker"
n=$(wrk -t1 -c8 -d3s -s "$tmp/req.lua" http://127.0.0.1:18122/v1/chat/completions | awk '/requests in/ {print $1}')
kill -s SIGRTMIN+3 "$worker"
for _ in $(seq 50); do [ -s "$tmp/calls.txt" ] && break; sleep 0.1; done
kill "$gw" "$up"; wait "$gw" "$up" 2>/dev/null
echo "$mode $([ -n "$chain" ] && echo chain || { [ -n "$limit" ] && echo limit || echo pass-through; }) $dir: $n requests; calls per request:"
awk -v n="$n" -F'\t' '$1 / n >= 0.01 {printf "%8.2f  %s  %s\n", $1 / n, $3, $2}' "$tmp/calls.txt" | head -"${TOP:-40}"
