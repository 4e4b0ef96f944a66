"""The systems `python -m bench run` compares, and the mock upstream they all forward to.

    fastgw         fastgw serve, 1 worker, provider openai, no policy chain (pass-through); its default JSON access
                   log on (stdout, which the bench sends to a file)
    fastgw-nolog   the same with `--access-log off`: fastgw minus its access log
    fastgw-redact  the same with the realtime chain pii-detector (redact) + safety-filter (redact)
    fastgw-otel    fastgw with `telemetry:` on (traces at sample_ratio 1.0 and metrics) to an OTLP/HTTP sink
                   (bench.otlp_sink, a thread of the harness): the cost of OpenTelemetry
    nginx          Debian's nginx as a streaming reverse proxy: 1 worker, proxy_buffering off,
                   HTTP/1.1 upstream keep-alive, chunked pass-through (the reference); access_log off
    nginx-log      the same with a JSON access_log of fastgw's fields (those nginx knows) to a file, unbuffered
                   (one write(2) per request, nginx's default): nginx plus its access log
    direct         no system at all: the load hits the mock upstream itself (the baseline for "added")
    fastgw-limit-local   fastgw with the rate-limiter on (`state.backend: local`): a request, token and concurrency
                   limit per key and a budget, set so high nothing is refused (what admission + settlement cost)
    fastgw-limit-redis   the same on `state.backend: redis`, against a redis-server the bench starts on the
                   load CPUs (its CPU is not the gateway's; `redis_calls_per_req` counts the round trips)

Every system is started once, in its own session, pinned to the system CPUs, and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.otlp_sink import OtlpSink
from bench.stream import MODEL, PROBE_MODEL, REPO, Server, free_port, server_cmd
from bench.upstream import PACED_MODEL, PEER_MODEL

__all__ = ["SYSTEMS", "DEFAULT_SYSTEMS", "System", "redis_round_trips", "fastgw_yaml", "nginx_conf", "ensure_nginx", "start_upstream", "start_system"]

#: Run by default. fastgw-nolog beside fastgw: nginx runs with its access log off, so the like-with-like ratio
#: to nginx is fastgw-nolog's, and the difference between the two is what fastgw's default access log costs.
DEFAULT_SYSTEMS = ("fastgw", "fastgw-nolog", "fastgw-redact", "nginx", "direct")
#: Every system `--systems` may name.
SYSTEMS = DEFAULT_SYSTEMS + ("nginx-log", "fastgw-otel", "fastgw-limit-local", "fastgw-limit-redis")

# Own template rather than bench.stream.GATEWAY_YAML: the paced model needs a third target.
_FASTGW_YAML = """\
pack: {{name: bench-run, version: 1.0.0, enabled: true}}
server: {{bind: ["127.0.0.1:{port}"], workers: 1{server}}}
providers:
  targets:
{targets}
{policy}"""

_REDACT_POLICY = ("policies: {chain: [pii-detector, safety-filter]}\n"
                  "policy:\n"
                  "  pii-detector: {action: redact}\n"
                  "  safety-filter: {action: redact, terms: [forbidden fruit, secret sauce]}\n")


# Limits no bench load reaches: every request is admitted and settled, none refused (the cost, not the refusals).
_LIMIT_POLICY = ("{state}"
                 "policies: {{chain: [rate-limiter]}}\n"
                 "policy:\n"
                 "  rate-limiter:\n"
                 "    limits:\n"
                 "      - {{name: per-key, per: key, requests_per_minute: 1000000000, tokens_per_minute: 1000000000000,"
                 " concurrent: 100000}}\n"
                 "    budgets:\n"
                 "      - {{name: monthly, per: key, usd: 1000000000, period: month}}\n")


def fastgw_yaml(port: int, upstream_port: int, redact: bool = False, state: str | None = None,
                otlp: str | None = None, max_connections: int | None = None) -> str:
    """fastgw config: one worker, every bench model forwarded (provider openai) to the mock upstream; `state`: the
    `state:` block of a rate-limited system (its limits set out of reach); with `otlp`, telemetry on to that
    OTLP/HTTP base URL; `max_connections`: `server.max_connections` (client connections per worker)."""
    pricing = ", pricing: {input: 0.15, output: 0.6}" if state is not None else ""
    targets = "\n".join(
        f'    - {{id: {tid}, provider: openai, model: {m}, base_url: "http://127.0.0.1:{upstream_port}/v1"{pricing}}}'
        for tid, m in (("up", MODEL), ("paced", PACED_MODEL), ("probe", PROBE_MODEL), ("peer", PEER_MODEL)))
    policy = _REDACT_POLICY if redact else _LIMIT_POLICY.format(state=state) if state is not None else ""
    if otlp is not None:
        policy += f"telemetry: {{otlp_endpoint: {otlp!r}, traces: true, metrics: true, sample_ratio: 1.0}}\n"
    server = f", max_connections: {max_connections}" if max_connections is not None else ""
    return _FASTGW_YAML.format(port=port, targets=targets, policy=policy, server=server)


def redis_round_trips(port: int) -> int:
    """Commands clients have sent this redis-server (EVALSHA and the like; not those scripts run inside, not INFO):
    each one is a round trip, since the gateway's client sends one at a time per request."""
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    total = 0
    for line in out.splitlines():
        name, _, rest = line.partition(":")
        if name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_evalsha_ro", "cmdstat_script", "cmdstat_ping",
                    "cmdstat_hello", "cmdstat_auth", "cmdstat_select"):
            total += int(rest.split(",")[0].split("=")[1])
    return total


#: nginx-log's line: fastgw's access-line fields that nginx knows (no model, principal, tokens or policy: it
#: reads no body), JSON-escaped by nginx (escape=json), numbers nginx may print as "-" quoted.
_NGINX_LOG_FORMAT = ("log_format fastgw escape=json '{\"ts\":\"$time_iso8601\",\"request_id\":\"$request_id\","
                     "\"principal\":null,\"client\":\"$remote_addr\",\"method\":\"$request_method\","
                     "\"route\":\"$uri\",\"model\":null,\"target\":\"$upstream_addr\",\"stream\":null,"
                     "\"status\":$status,\"ttft_ms\":\"$upstream_header_time\",\"duration_ms\":$request_time,"
                     "\"bytes\":$body_bytes_sent,\"tokens\":null,\"policy\":{},\"retries\":0,\"error\":null}';")


def nginx_conf(port: int, upstream_port: int, prefix: Path, access_log: bool = False, connections: int = 8192) -> str:
    """nginx.conf for a streaming reverse proxy equivalent to fastgw's pass-through path.

    proxy_buffering off: each upstream read is sent on at once (what a streaming gateway must do);
    HTTP/1.1 + `Connection ""` + keepalive: upstream connections are reused, like fastgw's pool;
    nginx de-chunks the upstream body and re-chunks it to the client read by read (chunked pass-through).
    `access_log`: a JSON line per request to `prefix`/access.log (nginx-log), else none. `connections`: the
    worker's connection limit (a proxied stream holds two).
    """
    log = (f"    {_NGINX_LOG_FORMAT}\n    access_log {prefix}/access.log fastgw;" if access_log
           else "    access_log off;")
    temp = "\n".join(f"    {k}_temp_path {prefix}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # Running as root, nginx would switch its worker to `nobody`, which cannot use a 0700 temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; multi_accept on; }}
http {{
{log}
{temp}
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream mock {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_cache off;
            chunked_transfer_encoding on;
            tcp_nodelay on;
        }}
    }}
}}
"""


def ensure_nginx() -> str:
    """Path of the nginx binary; installs Debian's nginx-light with apt-get only if none is found."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found:
        return found
    print("bench: nginx not found, installing Debian's nginx-light with apt-get ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    tail = ""
    for pkg in ("nginx-light", "nginx"):
        r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", pkg], env=env,
                           capture_output=True, text=True)
        if r.returncode == 0 and (found := shutil.which("nginx") or
                                  (os.access("/usr/sbin/nginx", os.X_OK) and "/usr/sbin/nginx")):
            return found
        tail = (r.stderr or r.stdout).strip()[-400:]
    raise RuntimeError("nginx is not installed and `apt-get install -y nginx-light` (then nginx) failed; install "
                       f"it by hand (as root: apt-get update && apt-get install -y nginx-light) or leave nginx out "
                       f"of --systems.\n{tail}")


@dataclass
class System:
    """A started system under test: where to send load, and the process tree to account for."""

    name: str
    port: int
    server: Server | None = None  # None for direct
    #: The redis-server of fastgw-limit-redis (its port), stopped with the system.
    redis: subprocess.Popen | None = None
    redis_port: int | None = None
    sink: OtlpSink | None = None  # fastgw-otel's OTLP receiver

    @property
    def pid(self) -> int | None:
        return self.server.pid if self.server else None

    def stop(self) -> None:
        if self.server:
            self.server.stop()
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(10)
        if self.sink:
            print(f"bench: {self.name}'s OTLP sink received {self.sink.summary()}", file=sys.stderr, flush=True)
            self.sink.stop()


def start_upstream(tmp: Path, port: int, events: int, delay: float, cpus: list[int] | None,
                   processes: int = 1, name: str = "upstream") -> Server:
    """The mock upstream (bench.upstream, `processes` serving processes) in its own session, logging to
    `tmp`/`name`.log; call wait_ready() on it."""
    cmd = [sys.executable, "-m", "bench.upstream", "--port", str(port), "--events", str(events),
           "--delay", str(delay), "--processes", str(processes)]
    return Server(name, cmd, port, tmp / f"{name}.log", cpus, REPO)


def start_system(name: str, tmp: Path, port: int, upstream_port: int, cpus: list[int] | None,
                 log_level: str = "warning", source: Path = REPO, load_cpus: list[int] | None = None) -> System:
    """Start `name` (one of SYSTEMS) on `port` in front of the upstream; call wait_ready() on its server.
    `source`: the directory whose `fastgw` package runs (e.g. a worktree of an older commit, for before/after)."""
    if name == "direct":
        return System(name, upstream_port)
    if name in ("fastgw", "fastgw-nolog", "fastgw-redact", "fastgw-otel"):
        sink = OtlpSink() if name == "fastgw-otel" else None
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(fastgw_yaml(port, upstream_port, redact=name == "fastgw-redact",
                                   otlp=sink.url if sink is not None else None))
        cmd = server_cmd(cfg, port, 1, log_level) + (["--access-log", "off"] if name == "fastgw-nolog" else [])
        return System(name, port, Server(name, cmd, port, tmp / f"{name}.log", cpus, source), sink)
    if name in ("nginx", "nginx-log"):
        binary = ensure_nginx()
        prefix = tmp / name
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(port, upstream_port, prefix, access_log=name == "nginx-log"))
        cmd = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        return System(name, port, Server(name, cmd, port, tmp / f"{name}.log", cpus))
    if name in ("fastgw-limit-local", "fastgw-limit-redis"):
        redis = redis_port = None
        if name == "fastgw-limit-redis":
            redis_port = free_port()
            binary = shutil.which("redis-server") or "/usr/bin/redis-server"
            pre = (lambda: os.sched_setaffinity(0, load_cpus)) if load_cpus else None
            redis = subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=pre)
            _wait_port(redis_port)
            state = f"state: {{backend: redis, url: 'redis://127.0.0.1:{redis_port}/0'}}\n"
        else:
            state = f"state: {{backend: local, path: '{tmp / 'state'}'}}\n"
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(fastgw_yaml(port, upstream_port, state=state))
        return System(name, port, Server(name, server_cmd(cfg, port, 1, log_level), port, tmp / f"{name}.log",
                                         cpus, source), redis, redis_port)
    raise ValueError(f"unknown system {name!r} (known: {', '.join(SYSTEMS)})")




def _wait_port(port: int, timeout: float = 10.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server did not listen on {port} within {timeout:g} s")
