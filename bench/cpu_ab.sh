#!/usr/bin/env bash
# Gateway CPU per request of one or more fastgw checkouts, interleaved so that they share the box's drift:
#   bench/cpu_ab.sh [-n ROUNDS] [-m stream|nonstream] [-p] [-l] DIR [DIR ...]
# -l: with the rate-limiter on `state.backend: local` (bench run's fastgw-limit-local limits: one limit per key
# with requests, tokens and a slot, one budget, out of reach), its state in a fresh directory per run.
# Each round starts, for each DIR in turn, the mock upstream (bench/upstream.py, 50 events) and a 1-worker
# fastgw from DIR pinned to CPU 0, drives it with wrk (64 connections, CPU 1) for 1 s of warm-up and 5 s
# measured, and prints the worker's utime+stime over the measured run divided by the requests wrk completed.
# DIR@off runs DIR with its access log off (`--access-log off`), to compare a checkout with itself.
# -p: with bench run's fastgw-redact chain (pii-detector redact + safety-filter redact).
set -euo pipefail
# One run at a time on the box: two would share the ports and CPUs, and measure each other.
exec 9>"${TMPDIR:-/tmp}/fastgw-cpu_ab.lock"; flock 9
rounds=3 mode=nonstream limit= chain=
while getopts "n:m:pl" o; do case $o in n) rounds=$OPTARG;; m) mode=$OPTARG;; p) chain=1;; l) limit=1;; *) exit 2;; esac; done
[ -n "$chain" ] && [ -n "$limit" ] && { echo "cpu_ab.sh: -p and -l are exclusive" >&2; exit 2; }
shift $((OPTIND - 1))
here=$(cd "$(dirname "$0")/.." && pwd)
py=$here/.venv/bin/python
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$here/bench/ab_setup.sh"
ab_setup "$tmp" "$mode" "$chain" "$limit" 18102 18101
cputicks() { "$py" -c "import sys; s=open(f'/proc/{sys.argv[1]}/stat').read().rsplit(')',1)[1].split(); print(int(s[11])+int(s[12]))" "$1"; }
for ((r = 1; r <= rounds; r++)); do
  for arg in "$@"; do
    dir=${arg%@off} alog=json
    [ "$dir" != "$arg" ] && alog=off
    rm -rf "$tmp/state"
    # The servers do not inherit the lock's descriptor (a run that failed would leave it held).
    (cd "$here" && exec taskset -c 1 "$py" -m bench.upstream --port 18101 --events 50 >/dev/null 2>&1 9>&-) & up=$!
    sleep 0.7
    (cd "$dir" && PYTHONPATH=$dir exec "$py" -m fastgw serve --config "$tmp/gw.yaml" --access-log "$alog" \
      >"$tmp/gw.log" 2>&1 9>&-) & gw=$!
    # Ready when the worker answers (a chain's databases take a while to compile on a slow box).
    for _ in $(seq 100); do
      curl -s -o /dev/null http://127.0.0.1:18102/healthz && break
      sleep 0.1
    done
    worker=$(pgrep -P "$gw" | head -1)
    [ -n "$worker" ] || { echo "cpu_ab.sh: no worker for $arg" >&2; cat "$tmp/gw.log" >&2; kill "$gw" "$up"; exit 1; }
    taskset -pc 0 "$worker" >/dev/null
    taskset -c 1 wrk -t1 -c64 -d1s -s "$tmp/req.lua" http://127.0.0.1:18102/v1/chat/completions >/dev/null
    t0=$(cputicks "$worker")
    n=$(taskset -c 1 wrk -t1 -c64 -d5s -s "$tmp/req.lua" http://127.0.0.1:18102/v1/chat/completions | awk '/requests in/ {print $1}')
    t1=$(cputicks "$worker")
    hz=$(getconf CLK_TCK)
    echo "round $r $mode $arg: $("$py" -c "print(round(($t1-$t0)/$hz*1e6/$n, 1))") µs CPU/request ($n requests)"
    kill "$gw" "$up"; wait "$gw" "$up" 2>/dev/null || true
  done
done
