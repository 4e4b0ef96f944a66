"""What the pii-detector output policy costs on the streaming path: CPU per event and holdback delay.

Run `python -m bench.pii --help`. This drives `python -m bench.stream` (each run a
fresh upstream and gateway, as subprocesses) over the comparison the issue asks for:

  load (closed loop, same load for all three; repeated --repeat times, interleaved):
    off          gateway without a policy chain, upstream text: clean prose
    redact/prose pii-detector action redact, the same clean prose
    redact/pii   pii-detector action redact, prose with 1 PII value per --pii-every characters

  holdback (concurrency 1, upstream paced at --delay s per event, --trace requests):
    off          as above
    redact/prose as above  (and redact/pii with --trace-pii)

and reports events/s through the gateway, gateway CPU per request and per SSE event,
the gateway CPU per event added over pass-through (paired per repetition: each
repetition runs the three configurations back to back, and the difference is taken
within it), and the holdback distribution: for data event i after the first,
h_i = (t_i - t_0)/delay - i (t_0 = arrival of the first data event), rounded to whole
events, against the nominal schedule i x delay and against the off run's median
arrival of the same index (which cancels the mock upstream's own timer drift and what
the gateway adds without a policy). Each run also reads one answer whole and checks it
(count of `[REDACTED:`, PII values left, exact expected text); each traced answer is
checked too.

Only `fastgw serve` is started (by bench.stream); nothing is imported from fastgw.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stream import REPO, RESULTS, _w, baseline_offsets, busy_cpu_seconds, holdback_stats, machine

LOAD = (("off", "none", "prose"), ("redact/prose", "redact", "prose"), ("redact/pii", "redact", "pii"))
TRACE = (("off", "none", "prose"), ("redact/prose", "redact", "prose"))
TRACE_PII = ("redact/pii", "redact", "pii")

#: Targets of the issue.
TARGET_US_PER_EVENT = 2.0
TARGET_HOLDBACK_EVENTS = 1


def _common(args) -> list[str]:
    a = ["--events", str(args.events), "--chunk-size", str(args.chunk_size), "--pii-every", str(args.pii_every),
         "--text-seed", str(args.text_seed), "--workers", str(args.workers), "--log-level", args.log_level]
    if args.source:
        a += ["--source", str(args.source)]
    for opt in ("gateway_cpus", "upstream_cpus", "client_cpus"):
        if getattr(args, opt):
            a += ["--" + opt.replace("_", "-"), getattr(args, opt)]
    return a


def _run(cmd: list[str], out: Path, log: Path) -> tuple[int, dict | None]:
    """One bench.stream run; its console output goes to `log` (and is echoed), its numbers to `out`."""
    print("$ " + shlex.join(["python", "-m", "bench.stream"] + cmd), flush=True)
    with open(log, "ab") as fh:
        p = subprocess.run([sys.executable, "-m", "bench.stream", *cmd, "--json", str(out)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        fh.write(p.stdout)
    for line in p.stdout.decode(errors="replace").splitlines():
        if line.startswith(("output check", "policy probe", "NOTE", "WARNING", "bench:", "[stream]")):
            print("   " + line, flush=True)
    data = json.loads(out.read_text()) if out.exists() else None
    return p.returncode, data


def _med(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _f(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _span(xs: list[float | None], nd: int = 1) -> str:
    """median, and the range when there are several values."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return _f(xs[0], nd)
    return f"{_f(statistics.median(xs), nd)} ({_f(min(xs), nd)}–{_f(max(xs), nd)})"


def _check_cell(d: dict) -> str:
    c = (d.get("checks") or {}).get("stream/gateway")
    if not c:
        return "-"
    if "error" in c or c.get("status") != 200:
        return f"request failed ({c.get('error') or c.get('status')})"
    ents = ", ".join(f"{k}" for k in sorted(c.get("redacted_by_entity", {})))
    return (f"{c['values_in_text']} values, `[REDACTED:` × {c['redacted']}" + (f" ({ents})" if ents else "")
            + f", leaked {sum(c['leaked'].values()) or 0}, text {'as expected' if c['as_expected'] else 'WRONG'}")


def export_rev(rev: str) -> Path:
    """`git archive` of `rev` into a fresh temporary directory, with the full hash in `.bench-commit`."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    dest = Path(tempfile.mkdtemp(prefix=f"fastgw-{sha[:8]}-"))
    archive = subprocess.Popen(["git", "archive", sha], cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    archive.stdout.close()  # type: ignore[union-attr]
    if archive.wait() != 0:
        raise SystemExit(f"git archive {sha} failed")
    (dest / ".bench-commit").write_text(sha[:12] + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.pii", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=_w("Measure the pii-detector output policy on the streaming path: three closed-loop runs "
                       "with the same load (policy off on clean prose, redact on clean prose, redact on prose "
                       "with PII values) for events/s and gateway CPU per request and per event, and two "
                       "concurrency-1 runs against a paced upstream (off, redact on prose) for the holdback "
                       "delay per event. Each configuration is a separate `python -m bench.stream` run "
                       "(fresh upstream and gateway); see its --help for the method. Prints a markdown "
                       "section, appended to bench/RESULTS.md with --write."),
        epilog="Example: python -m bench.pii --duration 5 --repeat 3 --write")
    g = p.add_argument_group("load runs")
    g.add_argument("--duration", "-d", type=float, default=5.0, help="measured seconds per loaded run")
    g.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each loaded run")
    g.add_argument("--connections", "-c", type=int, default=64, help="connections in flight (closed loop)")
    g.add_argument("--repeat", type=int, default=1,
                   help="repetitions of the three loaded runs (interleaved: off, redact/prose, redact/pii, off, ...)")
    g.add_argument("--load", action=argparse.BooleanOptionalAction, default=True, help="run the loaded runs")
    g = p.add_argument_group("holdback runs")
    g.add_argument("--delay", type=float, default=0.005, help="seconds between upstream events")
    g.add_argument("--trace", type=int, default=100, help="traced sequential requests per configuration (0: none)")
    g.add_argument("--trace-warmup", type=int, default=10, help="unrecorded requests before them")
    g.add_argument("--trace-pii", action="store_true", help="also trace redact on the PII text")
    g = p.add_argument_group("shared")
    g.add_argument("--events", type=int, default=50, help="content chunks per response")
    g.add_argument("--chunk-size", type=int, default=4, help="characters per content chunk (about one token)")
    g.add_argument("--pii-every", type=int, default=200, metavar="N", help="one PII value per N characters of text")
    g.add_argument("--text-seed", type=int, default=1, help="seed of the generated text")
    g.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    g.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="servers' log level (info logs every finding)")
    g.add_argument("--source", type=Path, help="directory whose fastgw is started (default: this checkout); "
                                                "e.g. mkdir /tmp/fgw && git archive HEAD | tar -x -C /tmp/fgw")
    g.add_argument("--rev", metavar="COMMIT",
                   help="start fastgw as of this commit: `git archive` it into a temporary directory (read-only "
                        "for the repository) and use that as --source; for measuring while others edit the "
                        "checkout")
    g.add_argument("--gateway-cpus", help="pin the gateway")
    g.add_argument("--upstream-cpus", help="pin the mock upstream")
    g.add_argument("--client-cpus", help="pin the load generator")
    g = p.add_argument_group("output")
    g.add_argument("--write", action="store_true", help="append the section to --results")
    g.add_argument("--results", type=Path, default=RESULTS, help="markdown file for --write")
    g.add_argument("--note", default="", help="text added to the section heading")
    g.add_argument("--json", type=Path, metavar="PATH", help="write all numbers (and each run's JSON) here")
    args = p.parse_args(argv)

    command = "python -m bench.pii " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.rev:
        if args.source:
            p.error("--rev and --source exclude each other")
        args.source = export_rev(args.rev)
        print(f"fastgw {args.rev} exported to {args.source}", flush=True)
    if args.source:
        args.source = args.source.resolve()
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(args.source or REPO), "command": command}
    b0, t = busy_cpu_seconds(), time.monotonic()
    time.sleep(1.0)
    meta["background_busy_cores"] = (busy_cpu_seconds() - b0) / (time.monotonic() - t)
    print(f"background load before the runs: {meta['background_busy_cores']:.2f} busy cores", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="fastgw-bench-pii-"))
    log = tmp / "runs.log"
    common = _common(args)
    load: dict[str, list[dict]] = {name: [] for name, _, _ in LOAD}
    traces: dict[str, dict] = {}
    commands: list[str] = []
    problems: list[str] = []
    try:
        if args.load:
            for rep in range(args.repeat):
                for name, pol, text in LOAD:
                    cmd = ["--mode", "stream", "--no-direct", "--no-concurrency1", "--duration", str(args.duration),
                           "--warmup", str(args.warmup), "--connections", str(args.connections), "--policy", pol,
                           "--text", text, *common]
                    if rep == 0:
                        commands.append(shlex.join(["python", "-m", "bench.stream", *cmd]))
                    rc, d = _run(cmd, tmp / f"load-{name.replace('/', '-')}-{rep}.json", log)
                    if d is None:
                        problems.append(f"load {name} #{rep + 1}: bench.stream failed (rc {rc}), see {log}")
                        continue
                    if rc:
                        problems.append(f"load {name} #{rep + 1}: bench.stream exit status {rc}: "
                                        + "; ".join(d.get("notes") or []))
                    load[name].append(d)
        if args.trace:
            for name, pol, text in TRACE + ((TRACE_PII,) if args.trace_pii else ()):
                cmd = ["--no-load", "--no-concurrency1", "--no-direct", "--delay", str(args.delay), "--trace",
                       str(args.trace), "--trace-warmup", str(args.trace_warmup), "--policy", pol, "--text", text,
                       *common]
                commands.append(shlex.join(["python", "-m", "bench.stream", *cmd]))
                rc, d = _run(cmd, tmp / f"trace-{name.replace('/', '-')}.json", log)
                if d is None or "gateway" not in d.get("traces", {}):
                    problems.append(f"trace {name}: bench.stream failed (rc {rc}), see {log}")
                    continue
                if rc:
                    problems.append(f"trace {name}: bench.stream exit status {rc}: " + "; ".join(d.get("notes") or []))
                traces[name] = d
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    # ---- figures ----------------------------------------------------------------------------------
    def row(d: dict) -> dict:
        return d["rows"][0] if d.get("rows") else {}

    summary: dict = {"load": {}, "trace": {}}
    off = load.get("off", [])
    for name, _, _ in LOAD:
        runs = load[name]
        if not runs:
            continue
        rws = [row(d) for d in runs]
        us = [r.get("gateway_cpu_us_per_event") for r in rws]
        # Paired with the off run of the same repetition.
        added = [u - row(o).get("gateway_cpu_us_per_event") for u, o in zip(us, off)
                 if u is not None and row(o).get("gateway_cpu_us_per_event") is not None] if name != "off" else []
        gl = [next((r for r in d["runs"] if r["target"] == "gateway" and r["kind"] == "load"), {}) for d in runs]
        summary["load"][name] = {
            "events_per_s": [r.get("events_per_s") for r in rws], "rps": [r.get("rps") for r in rws],
            "cpu_ms_per_req": [r.get("gateway_cpu_ms_per_req") for r in rws], "cpu_us_per_event": us,
            "added_us_per_event": added, "events_per_response": [r.get("events_per_response") for r in rws],
            "errors": [r.get("errors") for r in rws], "other_cores": [g.get("other_cores") for g in gl],
            "box_busy_cores": [g.get("box_busy_cores") for g in gl],
            "background_busy_cores": [d.get("background_busy_cores") for d in runs], "check": _check_cell(runs[0]),
            "policy_probe": sorted({d.get("policy_probe") or "-" for d in runs}),
            "rss_mb": [r.get("gateway_rss_worker_max_mb") for r in rws],
        }
    base = baseline_offsets(traces["off"]["traces"]["gateway"]["offsets"]) if "off" in traces else None
    for name, d in traces.items():
        t = d["traces"]["gateway"]
        st = holdback_stats(t["offsets"], args.delay, base)
        summary["trace"][name] = {"requests": t["requests"], "errors": t["errors"], "stats": st,
                                  "first_event_ms_p50": t.get("first_event_ms_p50"),
                                  "reads_per_response": t.get("reads_per_response"),
                                  "not_as_expected": t.get("not_as_expected"), "leaked_values": t.get("leaked_values"),
                                  "background_busy_cores": d.get("background_busy_cores")}

    lines = section(args, meta, commands, summary, problems)
    print()
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({**meta, "summary": summary, "problems": problems, "commands": commands,
                                         "runs": {"load": load, "trace": traces}}, indent=1))
    if args.write:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"appended to {args.results}")
    print(f"bench.stream output in {log}")
    return 2 if problems else 0


def section(args, meta: dict, commands: list[str], summary: dict, problems: list[str]) -> list[str]:
    m = meta["machine"]
    n_chars = args.events * args.chunk_size
    lines = [f"## {meta['date']} — pii-detector on the streaming path" + (f": {args.note}" if args.note else ""), "",
             f"- machine: {m['nproc']} CPUs usable ({m['cpu_count']} online), {m['cpu_model']}, Linux {m['kernel']}, "
             f"Python {m['python']}; load average before: {' '.join(m['loadavg_before'])}; busy cores with nothing "
             f"of ours running: {_f(meta['background_busy_cores'], 2)}",
             (f"- fastgw from {args.source} (commit: {m['commit']})" if args.source else
              f"- fastgw commit {m['commit']} (working tree may have had uncommitted changes)"),
             f"- command: `{meta['command']}`, which runs:"]
    lines += [f"  - `{c}`" for c in commands]
    lines += [f"- upstream: fastgw mock, {args.events} content chunks × {args.chunk_size} characters ({n_chars} "
              f"characters, {args.events + 3} SSE events per response with role, finish and [DONE]), text generated by "
              f"bench/text.py (seed {args.text_seed}); PII text: 1 value per {args.pii_every} characters; "
              f"gateway {args.workers} worker(s), log level {args.log_level}; load: closed loop, "
              f"{args.connections} connections, {args.warmup:g} s warm-up + {args.duration:g} s measured, "
              f"{args.repeat} repetition(s) interleaved", ""]
    ld = summary["load"]
    if ld:
        lines += ["Load (median over repetitions, range in brackets; µs/event = gateway CPU over the window / SSE "
                  "events delivered in it; added = minus the off run of the same repetition):", "",
                  "| config | events/s | req/s | gw CPU ms/req | gw CPU µs/event | added µs/event vs off | "
                  "unattributed busy cores | errors | policy probe | output check (one request) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for name, s in ld.items():
            lines.append(f"| {name} | {_span(s['events_per_s'], 0)} | {_span(s['rps'], 0)} | "
                         f"{_span(s['cpu_ms_per_req'], 3)} | {_span(s['cpu_us_per_event'])} | "
                         f"{_span(s['added_us_per_event']) if name != 'off' else '-'} | "
                         f"{_span(s['other_cores'], 2)} | {sum(e or 0 for e in s['errors'])} | "
                         f"{', '.join(s['policy_probe'])} | {s['check']} |")
        lines.append("")
    tr = summary["trace"]
    if tr:
        lines += [f"Holdback at concurrency 1, upstream paced at {args.delay * 1000:g} ms per event, {args.trace} "
                  f"sequential requests per config after {args.trace_warmup} warm-up; per data event after the "
                  f"first, h = (t_i - t_0)/delay - i rounded to whole events. Basis \"ideal\": the nominal "
                  f"schedule i × delay, as in the issue; it includes the mock upstream's timer overshoot (its "
                  f"period is 3–6% above the delay, differently in each upstream process), so even the off run "
                  f"drifts 1.5–3 events by the end. Basis \"paced\": delay replaced by the response's own mean "
                  f"period d_r = (t_last - t_0)/(n - 1), which is the upstream's real pace because the last event "
                  f"([DONE], released with the finish chunk) is never held; {args.events + 1} events per response "
                  f"(the last is the calibration point). This is the holdback figure. Basis \"off\": the off "
                  f"run's median arrival of the same index (shares only the drift common to both runs). Added ms "
                  f"= (t_i - t_0) minus the basis' time for event i:", "",
                  "| config | basis | responses | h=0 | h=1 | h=2 | h≥3 | mean h | added ms p50 | added ms p99 | "
                  "h p99 / max | errors, wrong texts, leaks |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for name, t in tr.items():
            for basis, key in (("ideal", "vs_ideal"), ("paced", "vs_paced"), ("off", "vs_baseline")):
                st = t["stats"].get(key)
                if not st:
                    continue
                sh = st["share"]
                lines.append(f"| {name} | {basis} | {t['requests']} | {sh['0']:.1%} | {sh['1']:.1%} | {sh['2']:.1%} | "
                             f"{sh['>=3']:.1%} | {st['h_mean']:.2f} | {st['added_ms_p50']:.2f} | "
                             f"{st['added_ms_p99']:.2f} | {st['h_p99']:.2f} / {st['h_max']:.2f} | "
                             f"{t['errors'] or 0}, {t.get('not_as_expected') or 0}, {t.get('leaked_values') or 0} |")
        lines.append("")
    # ---- targets
    verdict = []
    rp = ld.get("redact/prose")
    if rp and rp["added_us_per_event"]:
        a = _med(rp["added_us_per_event"])
        verdict.append(f"- target ≤ {TARGET_US_PER_EVENT:g} µs of added gateway CPU per event on clean text: "
                       f"measured {_f(a)} µs/event → {'met' if a <= TARGET_US_PER_EVENT else 'NOT met'}")
    hp = tr.get("redact/prose", {}).get("stats", {}).get("vs_paced")
    if hp:
        share = hp["share"]["0"] + hp["share"]["1"]
        verdict.append(f"- target ≤ {TARGET_HOLDBACK_EVENTS} event of delay on prose (basis paced): "
                       f"{share:.1%} of events within it, p99 h {hp['h_p99']:.2f}, max {hp['h_max']:.2f} → "
                       + ("met at p99" if hp["h_p99"] < TARGET_HOLDBACK_EVENTS + 0.5 else
                          "met for the median event, NOT at p99" if hp["h_p50"] < TARGET_HOLDBACK_EVENTS + 0.5 else
                          "NOT met"))
    lines += verdict
    lines += [f"- PROBLEM: {x}" for x in problems]
    lines.append("")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
