"""`python -m bench run`: the mock upstream's framing, nginx/fastgw config generation, wrk output parsing,
medians/ratios, and real runs end to end.

Short forms in `make test`: a quick run of fastgw + direct, and a quick nginx run (the bench installs Debian's
nginx-light when it is missing, as `make test` does; without nginx the test fails, it is not skipped). The long
form, marked `slow` (`make test-slow`): the full comparison of every system, as `make bench` runs it."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import h11
import pytest

from bench import run as bench_run
from bench import wrk
from bench.stream import PROBE_TEXT, REPO, free_port
from bench.systems import DEFAULT_SYSTEMS, fastgw_yaml, nginx_conf, start_upstream
from fastgw.config import load_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------
# mock upstream
# ------------------------------------------------------------------------------------------

def _exchange(sock: socket.socket, conn: h11.Connection, body: dict) -> tuple[h11.Response, list[h11.Data], float]:
    """One request on a keep-alive connection, parsed with h11: (response, its Data events, seconds taken)."""
    raw = json.dumps(body).encode()
    t = time.monotonic()
    sock.sendall(conn.send(h11.Request(method="POST", target="/v1/chat/completions",
                                       headers=[("Host", "x"), ("Content-Type", "application/json"),
                                                ("Content-Length", str(len(raw)))]))
                 + conn.send(h11.Data(data=raw)) + conn.send(h11.EndOfMessage()))
    resp, data = None, []
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(ev, h11.Response):
            resp = ev
        elif isinstance(ev, h11.Data):
            data.append(ev)
        elif isinstance(ev, h11.EndOfMessage):
            conn.start_next_cycle()  # keep-alive: the next request goes on the same connection
            return resp, data, time.monotonic() - t


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    srv = start_upstream(tmp_path_factory.mktemp("up"), port, events=50, delay=0.002, cpus=None)
    try:
        srv.wait_ready(30)
        yield port
    finally:
        srv.stop()


def test_upstream_framing_parsed_with_h11(upstream: int):
    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection(("127.0.0.1", upstream)) as sock:
        resp, data, _ = _exchange(sock, conn, {"model": "bench-model", "stream": True, "messages": []})
        headers = dict(resp.headers)
        assert resp.status_code == 200 and headers[b"content-type"] == b"text/event-stream"
        assert headers[b"transfer-encoding"] == b"chunked" and b"content-length" not in headers
        # Each SSE event is exactly one HTTP chunk.
        events = [bytes(d.data) for d in data]
        assert all(d.chunk_start and d.chunk_end for d in data)
        assert len(events) == 53 and all(e.startswith(b"data: ") and e.endswith(b"\n\n") and e.count(b"data:") == 1
                                          for e in events)
        assert events[-1] == b"data: [DONE]\n\n"
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(len(c["choices"][0]["delta"]["content"]) == 4 for c in chunks[1:51])
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)

        # Same connection: a non-streamed answer with Content-Length and the same text.
        resp, data, _ = _exchange(sock, conn, {"model": "bench-model", "stream": False, "messages": []})
        body = b"".join(bytes(d.data) for d in data)
        assert dict(resp.headers)[b"content-length"] == str(len(body)).encode()
        obj = json.loads(body)
        assert obj["object"] == "chat.completion" and obj["choices"][0]["message"]["content"] == content

        # Asked for usage (as fastgw asks on every stream): OpenAI's form, `"usage": null` on each chunk and the
        # usage chunk (no choices) before [DONE]; the same text.
        resp, data, _ = _exchange(sock, conn, {"model": "bench-model", "stream": True, "messages": [],
                                               "stream_options": {"include_usage": True}})
        asked = [json.loads(bytes(d.data)[6:]) for d in data[:-1]]
        assert len(data) == 54 and bytes(data[-1].data) == b"data: [DONE]\n\n"
        assert all(c["usage"] is None and c["choices"] for c in asked[:-1]) and asked[-1]["choices"] == []
        assert asked[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 50, "total_tokens": 55}
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in asked[:-1]) == content

        # The probe model answers with the probe text (one email).
        resp, data, _ = _exchange(sock, conn, {"model": "bench-probe", "stream": True})
        text = "".join(json.loads(bytes(d.data)[6:])["choices"][0]["delta"].get("content", "")
                       for d in data[:-1])
        assert text == PROBE_TEXT

        # The peer profile's model: the same events (its own model name), non-streamed the same answer.
        resp, data, _ = _exchange(sock, conn, {"model": "bench-peer", "stream": True, "messages": []})
        peer = [json.loads(bytes(d.data)[6:]) for d in data[:-1]]
        assert len(data) == 53 and bytes(data[-1].data) == b"data: [DONE]\n\n" and all(d.chunk_start for d in data)
        assert [c["choices"] for c in peer] == [c["choices"] for c in chunks] and peer[0]["model"] == "bench-peer"
        resp, data, _ = _exchange(sock, conn, {"model": "bench-peer", "stream": False, "messages": []})
        obj = json.loads(b"".join(bytes(d.data) for d in data))
        assert obj["choices"][0]["message"]["content"] == content and obj["model"] == "bench-peer"

        # The paced model: the same 53 events, one every 2 ms on an absolute schedule.
        resp, data, took = _exchange(sock, conn, {"model": "bench-paced", "stream": True})
        assert len(data) == 53 and bytes(data[-1].data) == b"data: [DONE]\n\n"
        assert 52 * 0.002 * 0.8 <= took < 2.0  # uvloop timers have millisecond resolution


def test_peer_profile_writes_smaller_pieces():
    """bench-peer's stream is cut into writes of whole events of at least `peer_write` bytes (the last may be
    shorter), which put together are the one-write answer's framing; its non-streamed answer is head + body."""
    from bench.upstream import PEER_WRITE, render

    a = render()
    parts = a.peer_parts
    assert 4 <= len(parts) <= 8 and all(len(p) >= PEER_WRITE for p in parts[:-1])
    assert all(p.endswith(b"\n\n\r\n") for p in parts[:-1]) and parts[-1].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    whole = b"".join(parts)
    assert whole.startswith(a.stream[:a.stream.index(b"\r\n\r\n") + 4])  # the same head
    assert whole.count(b"data: ") == a.stream.count(b"data: ") == 53
    head, body = a.peer_nonstream
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: %d\r\n" % len(body) in head
    assert len(render(peer_write=100_000).peer_parts) == 1
    # Asked for usage, each profile's stream has the usage chunk, once, before [DONE].
    u = a.with_usage
    assert u is not None and u.with_usage is None
    for whole in (u.stream, b"".join(u.peer_parts), b"".join(u.paced_parts), u.probe_stream):
        assert whole.count(b'"choices":[]') == 1 and whole.index(b'"choices":[]') < whole.index(b"data: [DONE]")
        assert whole.count(b"data: ") - 2 == whole.count(b'"usage":null')
    assert b'"usage"' not in a.stream + b"".join(a.peer_parts + a.paced_parts)


# ------------------------------------------------------------------------------------------
# generated configs and parsers
# ------------------------------------------------------------------------------------------

def test_nginx_conf_is_a_streaming_keepalive_proxy(tmp_path: Path):
    conf = nginx_conf(8081, 9001, tmp_path)
    for needle in ("worker_processes 1;", "daemon off;", "proxy_buffering off;", "proxy_http_version 1.1;",
                   'proxy_set_header Connection "";', "keepalive 256;", "server 127.0.0.1:9001;",
                   "listen 127.0.0.1:8081", "chunked_transfer_encoding on;", "proxy_request_buffering off;",
                   f"pid {tmp_path}/nginx.pid;"):
        assert needle in conf, needle
    assert conf.count("{") == conf.count("}") and "access_log off;" in conf
    logged = nginx_conf(8081, 9001, tmp_path, access_log=True)
    assert "access_log off;" not in logged and f"access_log {tmp_path}/access.log fastgw;" in logged
    assert "log_format fastgw escape=json" in logged
    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        for text in (conf, logged):
            (tmp_path / "nginx.conf").write_text(text)
            r = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                                "-e", str(tmp_path / "error.log")], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("redact", [False, True])
def test_fastgw_config_loads(tmp_path: Path, redact: bool):
    path = tmp_path / "gw.yaml"
    path.write_text(fastgw_yaml(8080, 9001, redact=redact))
    cfg, _ = load_config(path)
    assert cfg.server.workers == 1
    assert {t.model for t in cfg.providers.targets} == {"bench-model", "bench-paced", "bench-probe", "bench-peer"}
    assert all(t.base_url == "http://127.0.0.1:9001/v1" for t in cfg.providers.targets)
    assert list(cfg.policies.chain) == (["pii-detector", "safety-filter"] if redact else [])


def test_fastgw_otel_config_and_sink(tmp_path: Path):
    """fastgw-otel: telemetry on (traces at 1.0, metrics) to the sink, which counts the spans it decodes."""
    import urllib.request

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    from bench.otlp_sink import OtlpSink

    sink = OtlpSink()
    try:
        path = tmp_path / "gw.yaml"
        path.write_text(fastgw_yaml(8080, 9001, otlp=sink.url))
        t = load_config(path)[0].telemetry
        assert t is not None and (t.otlp_endpoint, t.traces, t.metrics, t.sample_ratio) == (sink.url, True, True, 1.0)
        body = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(
            spans=[Span(name="a"), Span(name="b")])])]).SerializeToString()
        req = urllib.request.Request(sink.url + "/v1/traces", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        assert sink.summary().startswith("2 spans in 1 trace exports")
    finally:
        sink.stop()


WRK_OUT = """Running 1s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    19.40ms    2.10ms  40.00ms   90.00%
  Latency Distribution
     50%   19.12ms
     75%  200.00us
     90%    1.50s
     99%   21.00ms
  3301 requests in 1.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:   3290.12
Transfer/sec:     39.90MB
"""


def test_wrk_output_parsed():
    r = wrk.parse_output(WRK_OUT)
    assert r.requests == 3301 and r.seconds == 1.0 and r.rps == 3301 and r.rps_printed == 3290.12
    assert r.latency_ms == {"p50": 19.12, "p75": 0.2, "p90": 1500.0, "p99": 21.0}
    assert r.errors == {"read": 2, "timeout": 1, "status": 3}
    # The script's done() line wins: exact counts and µs latencies.
    j = WRK_OUT + ('WRKJSON {"requests":3300,"duration_us":1002000,"bytes":1,"errors":{"connect":0,"read":0,'
                   '"write":0,"status":0,"timeout":0},"latency_us":{"p50":19000,"p90":20000,"p99":21000,'
                   '"p99.9":22000,"max":40000,"mean":19400.0}}\n')
    r = wrk.parse_output(j)
    assert r.requests == 3300 and abs(r.rps - 3300 / 1.002) < 1e-6 and r.errors == {}
    assert r.latency_ms["p99"] == 21.0


def test_wrk_lua_script():
    s = wrk.lua_script(b'{"model":"m","stream":true}', {"Content-Type": "application/json", "X-A": "b"})
    assert 'wrk.method = "POST"' in s and '{"model":"m","stream":true}' in s
    assert 'wrk.headers["Content-Type"] = "application/json"' in s and "done = function" in s


def test_medians_and_ratios():
    runs = [{"nginx": {"stream_rps": 100.0, "rss_mb": 10.0}, "fastgw": {"stream_rps": 30.0, "rss_mb": 40.0}},
            {"nginx": {"stream_rps": 120.0, "rss_mb": 10.0}, "fastgw": {"stream_rps": 20.0, "rss_mb": None}},
            {"nginx": {"stream_rps": 110.0, "rss_mb": 12.0}, "fastgw": {"stream_rps": 25.0, "rss_mb": 50.0}}]
    out = bench_run.summarize_runs(["fastgw", "nginx"], runs)
    assert out["fastgw"]["median"]["stream_rps"] == 25.0 and out["nginx"]["median"]["stream_rps"] == 110.0
    assert out["fastgw"]["median"]["rss_mb"] == 45.0  # None values are left out
    assert out["fastgw"]["ratio_to_nginx"]["stream_rps"] == pytest.approx(25 / 110)
    assert out["nginx"]["ratio_to_nginx"]["rss_mb"] == 1.0
    assert out["fastgw"]["ratio_to_nginx"]["stream_cpu_ms_per_req"] is None
    assert bench_run.summarize_runs(["fastgw"], [{"fastgw": {"stream_rps": 1.0}}])["fastgw"]["ratio_to_nginx"] == {}


# ------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------

def _bench(tmp_path: Path, systems: str, *extra: str, quick: bool = True,
           timeout: float = 120) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / "results"
    argv = ["run", "--systems", systems, *(["--quick"] if quick else []), "--out-dir", str(out),
            "--json", str(tmp_path / "r.json"), "--results", str(tmp_path / "RESULTS.md"), *extra]
    p = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((tmp_path / "r.json").read_text()), p


def _check_runs(data: dict, names: list[str], repeats: int) -> None:
    """Every system ran `repeats` interleaved rounds with sane figures and no error."""
    systems = data["systems"]
    assert list(systems) == names
    assert data["orders"] == [names[r % len(names):] + names[:r % len(names)] for r in range(repeats)]
    assert data["problems"] == []
    for name, o in systems.items():
        assert len(o["runs"]) == repeats
        for m in o["runs"] + [o["median"]]:
            for key in bench_run.METRICS:
                assert key in m, (name, key)
            assert m["stream_requests"] > 0 and m["nonstream_requests"] > 0
            assert m["stream_rps"] > 0 and m["nonstream_rps"] > 0
            assert m["events_per_stream"] == 53
            assert m["stream_events_per_s"] == pytest.approx(m["stream_rps"] * 53)
            assert m["stream_upstream_cpu_ms_per_req"] > 0
            assert 0 < m["ttft_p50_ms"] <= m["ttft_p99_ms"] < 1000
            assert 0 < m["gap_p50_ms"] <= m["gap_p99_ms"] < 1000
            assert m["errors"] == 0


def test_run_fastgw_and_direct(tmp_path: Path):
    real_results = (REPO / "bench" / "RESULTS.md").read_bytes()
    data, p = _bench(tmp_path, "fastgw,direct", "--repeats", "2", "--write", "--upstream-profiles", "fast")
    systems = data["systems"]
    assert data["orders"] == [["fastgw", "direct"], ["direct", "fastgw"]]  # interleaved, order rotated
    assert data["policy_probe"] == {"fastgw": "passed through", "direct": "passed through"}
    _check_runs(data, ["fastgw", "direct"], 2)
    fg = systems["fastgw"]["median"]
    assert fg["stream_cpu_ms_per_req"] > 0 and fg["nonstream_cpu_ms_per_req"] > 0
    assert 5 < fg["rss_mb"] < 2000
    for key in ("added_ttft_p50_ms", "added_ttft_p99_ms", "added_event_delay_p50_ms", "added_event_delay_p99_ms",
                "added_gap_p50_ms", "added_gap_p99_ms"):
        assert isinstance(fg[key], float) and abs(fg[key]) < 1000, key
        assert systems["direct"]["median"][key] is None  # the baseline adds nothing to itself
    assert systems["direct"]["median"]["stream_cpu_ms_per_req"] is None
    assert systems["fastgw"]["ratio_to_nginx"] == {}  # nginx did not run

    for name in ("throughput", "ttft-cdf", "rss"):
        png = Path(data["plots"][name])
        assert png.parent == tmp_path / "results" and png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000

    md = (tmp_path / "RESULTS.md").read_text()
    assert md.startswith("# fastgw benchmark results")
    assert "python -m bench run --systems fastgw,direct --quick" in md and "--write" in md
    assert "| system | stream req/s | events/s | CPU ms/req stream |" in md
    assert "\n| fastgw | " in md and "\n| direct | " in md and "fastgw commit" in md
    assert "(results/run-" in md and "-throughput.png)" in md
    assert (REPO / "bench" / "RESULTS.md").read_bytes() == real_results  # never the real one
    assert "| fastgw | " in p.stdout


@pytest.mark.timeout(600)  # room for the bench to install nginx-light where `make test` has not
def test_run_nginx(tmp_path: Path):
    data, p = _bench(tmp_path, "nginx", "--modes", "stream", timeout=540)
    m = data["systems"]["nginx"]["median"]
    assert data["policy_probe"] == {"nginx": "passed through"} and data["problems"] == []
    assert m["stream_requests"] > 0 and m["stream_cpu_ms_per_req"] > 0 and m["events_per_stream"] == 53
    assert m["rss_mb"] > 0 and m["nonstream_rps"] is None
    assert data["systems"]["nginx"]["ratio_to_nginx"]["stream_rps"] == 1.0
    assert not (tmp_path / "RESULTS.md").exists()  # no --write, nothing appended
    assert "Ratio to nginx" in p.stdout


def test_run_access_log_systems_and_profiles(tmp_path: Path):
    """fastgw-nolog writes no access line where fastgw writes one per request; nginx-log writes a JSON line of
    fastgw's fields per request; both upstream profiles are measured and tabled, with ratios to nginx-log."""
    data, p = _bench(tmp_path, "fastgw,fastgw-nolog,nginx-log", "--modes", "nonstream", "--c1-requests", "5",
                     "--gap-requests", "1", "--keep-logs")
    logs = Path(p.stdout.rsplit("logs kept in ", 1)[1].strip())
    try:
        gw = [json.loads(x) for x in (logs / "fastgw.log").read_text().splitlines() if x.startswith("{")]
        assert len(gw) >= data["systems"]["fastgw"]["median"]["nonstream_requests"] > 0
        assert not [x for x in (logs / "fastgw-nolog.log").read_text().splitlines() if x.startswith("{")]
        ng = [json.loads(x) for x in (logs / "nginx-log" / "access.log").read_text().splitlines()]
        assert len(ng) >= data["systems"]["nginx-log"]["median"]["nonstream_requests"]
        assert set(ng[-1]) <= set(gw[-1]) and {"ts", "request_id", "route", "status", "bytes"} <= set(ng[-1])
        assert {x["route"] for x in ng} == {"/readyz", "/v1/chat/completions"} and ng[-1]["status"] == 200
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    for name, o in data["systems"].items():
        m = o["median"]
        assert m["nonstream_cpu_ms_per_req"] > 0 and m["peer_nonstream_cpu_ms_per_req"] > 0, name
        assert m["nonstream_requests"] > 0 and m["peer_nonstream_requests"] > 0 and m["errors"] == 0, name
        assert m["stream_cpu_ms_per_req"] is None and m["peer_stream_cpu_ms_per_req"] is None, name
    assert data["args"]["profile_list"] == ["fast", "peer"]
    assert "Both upstream profiles" in p.stdout and "\n| fastgw-nolog | - | - | " in p.stdout
    assert data["systems"]["fastgw"]["ratio_to_nginx"] == {}  # nginx-log is not the reference


def test_upstream_profiles_option():
    ns = bench_run.argparse.ArgumentParser()
    bench_run.add_arguments(ns)
    args = ns.parse_args(["--upstream-profiles", "fast", "--load-tool", "loadgen"])
    bench_run._resolve(args)
    assert args.profile_list == ["fast"]
    for bad in (["--upstream-profiles", "slow"], ["--upstream-profiles", "peer", "--load-tool", "loadgen"]):
        with pytest.raises(SystemExit):
            bench_run._resolve(ns.parse_args(bad))
    args = ns.parse_args(["--load-tool", "loadgen"])
    bench_run._resolve(args)
    assert args.profile_list == ["fast"]  # peer needs wrk's per-model scripts


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_run_full_comparison(tmp_path: Path):
    """The long form: `make bench` (the default systems, default durations, 3 repeats), written to a temporary RESULTS.md."""
    real_results = (REPO / "bench" / "RESULTS.md").read_bytes()
    names = list(DEFAULT_SYSTEMS)
    data, p = _bench(tmp_path, ",".join(names), "--write", quick=False, timeout=1700)
    _check_runs(data, names, 3)
    assert data["policy_probe"] == {n: "redacted" if n == "fastgw-redact" else "passed through" for n in names}
    medians = {n: o["median"] for n, o in data["systems"].items()}
    for n in ("fastgw", "fastgw-redact", "nginx"):
        assert medians[n]["stream_cpu_ms_per_req"] > 0 and medians[n]["rss_mb"] > 0, n
        assert data["systems"][n]["ratio_to_nginx"]["stream_rps"] > 0, n
    assert data["systems"]["nginx"]["ratio_to_nginx"]["stream_rps"] == 1.0
    md = (tmp_path / "RESULTS.md").read_text()
    assert "Ratio to nginx" in p.stdout and all(f"\n| {n} | " in md for n in names)
    assert (REPO / "bench" / "RESULTS.md").read_bytes() == real_results  # never the real one


def test_telemetry_cost_runs():
    """`python -m bench.telemetry_cost` (tiny): every configuration is timed, spans are encoded, off is a flag."""
    r = subprocess.run([sys.executable, "-m", "bench.telemetry_cost", "--n", "20"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("off: ") and len(lines) == 6, r.stdout
    assert "at 2.00 spans/request" in lines[2] and "metrics only: request path" in lines[4]
