"""systemd/fastgw.service and fastgw.socket: they verify, the sandbox scores OK, the keys the deployment needs are set.

The static checks double as documentation: each expected key carries the reason it is set.
`systemd-analyze` comes from Debian's `systemd` package: `make test` installs it when missing
(its `sysdeps` step); a bare pytest run installs it once itself (root + apt-get, under a lock file),
and where that is impossible the tests fail with the reason rather than skip (see systemd/README.md, "Tests").
"""

from __future__ import annotations

import configparser
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fastgw.config import load_config
from fastgw.api import limits as api_limits
from fastgw.proto import limits
from tests.support.procs import REPO_ROOT

UNITS = REPO_ROOT / "systemd"
SERVICE = UNITS / "fastgw.service"
SOCKET = UNITS / "fastgw.socket"
README = UNITS / "README.md"
EXAMPLE = REPO_ROOT / "examples" / "production.yaml"

#: The path the unit runs; it does not exist on a development machine, which is all verify may say about it.
INSTALLED_BINARY = "/usr/local/bin/fastgw"
#: The issue's target for `systemd-analyze security` ("OK" ends at 2.0 on systemd's scale).
MAX_EXPOSURE = 2.0
#: What master._shutdown adds to graceful_timeout before it returns: waits graceful + 5 s, SIGKILLs the
#: workers left, waits up to 5 s more. TimeoutStopSec must cover it or systemd kills mid-drain.
MASTER_STOP_OVERHEAD = 10.0
#: The master's own boot deadline for workers (master.BOOT_TIMEOUT); TimeoutStartSec must exceed it.
MASTER_BOOT_TIMEOUT = 30.0
#: Exposures `systemd-analyze security` still counts, each unavoidable for a gateway that calls the internet.
ACCEPTED_EXPOSURES = {
    "PrivateNetwork=": "it must reach providers",
    "RestrictAddressFamilies=~AF_(INET|INET6)": "it must reach providers",
    "IPAddressDeny=": "provider addresses are not known in advance",
    "RestrictAddressFamilies=~AF_UNIX": "sd_notify, the journal and NSS are unix sockets",
    "RootDirectory=/RootImage=": "ProtectSystem=strict already makes the host read-only",
    "DeviceAllow=": "char-rtc:r comes from ProtectClock= itself; PrivateDevices= leaves no RTC node",
}
#: The README's LoadCredential= drop-in starts with this line.
DROPIN_MARK = "# /etc/systemd/system/fastgw.service.d/credentials.conf"

_INSTALL_LOCK = Path(tempfile.gettempdir()) / "fastgw-systemd-install.lock"
_APT_TIMEOUT = 420

# Installing the systemd package (only where it is missing) can take minutes; everything else is ~1 s.
pytestmark = pytest.mark.timeout(_APT_TIMEOUT + 120)


# ---- systemd-analyze ---------------------------------------------------------------------------------------

def _install_systemd() -> str:
    """Install Debian's systemd package once per machine; returns why it could not ("" when it could)."""
    if os.geteuid() != 0:
        return "not root, so it cannot be installed here: run `apt-get install -y systemd`"
    apt = shutil.which("apt-get")
    if apt is None:
        return "no apt-get here: install your distribution's systemd package (it ships systemd-analyze)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [apt, "install", "-y", "--no-install-recommends", "systemd"]
    with open(_INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions: one installs, the others wait and find it
        if shutil.which("systemd-analyze"):
            return ""
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT)
            if r.returncode != 0:  # a fresh container has no package lists yet
                subprocess.run([apt, "update"], env=env, capture_output=True, timeout=_APT_TIMEOUT)
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` did not finish within {_APT_TIMEOUT} s"
        if r.returncode != 0:
            return f"`{' '.join(cmd)}` failed:\n{(r.stdout + r.stderr)[-1500:]}"
    return ""


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        why = _install_systemd()
        path = shutil.which("systemd-analyze")
        if path is None:
            pytest.fail("systemd-analyze is required to check systemd/fastgw.service and was not found; "
                        + (why or "the systemd package installed but provides no systemd-analyze"), pytrace=False)
    return path


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def _real_binary() -> str:
    """An executable that exists, for ExecStart= in the copies verify checks: the venv's fastgw when there."""
    venv = Path(sys.executable).with_name("fastgw")
    return str(venv) if venv.is_file() else (shutil.which("fastgw") or sys.executable)


def _unit_copy(tmp: Path, dropin: str | None = None) -> Path:
    """Both units in `tmp`, the service's ExecStart pointing at a binary that exists (and a drop-in, if given)."""
    text = SERVICE.read_text()
    assert INSTALLED_BINARY in text
    (tmp / "fastgw.service").write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={_real_binary()} "))
    shutil.copy(SOCKET, tmp / "fastgw.socket")
    if dropin is not None:
        (tmp / "fastgw.service.d").mkdir()
        (tmp / "fastgw.service.d" / "credentials.conf").write_text(dropin)
    return tmp


def _complaints(r: subprocess.CompletedProcess) -> list[str]:
    """verify's lines about our units (lines about the host's own units are not ours to judge)."""
    return [line for line in (r.stdout + r.stderr).splitlines() if "fastgw" in line]


def test_units_verify_clean(systemd_analyze: str, tmp_path: Path) -> None:
    d = _unit_copy(tmp_path)
    r = _run([systemd_analyze, "verify", "./fastgw.service", "./fastgw.socket"], cwd=d)
    assert r.returncode == 0 and not _complaints(r), r.stdout + r.stderr


def test_pristine_unit_only_lacks_the_installed_binary(systemd_analyze: str, tmp_path: Path) -> None:
    """Unmodified, verify's one possible complaint is that /usr/local/bin/fastgw is not installed here."""
    shutil.copy(SERVICE, tmp_path / "fastgw.service")
    shutil.copy(SOCKET, tmp_path / "fastgw.socket")
    r = _run([systemd_analyze, "verify", "./fastgw.service", "./fastgw.socket"], cwd=tmp_path)
    if Path(INSTALLED_BINARY).exists():
        assert r.returncode == 0 and not _complaints(r), r.stdout + r.stderr
    else:
        assert _complaints(r), "verify should have noticed the missing binary"
        assert all(INSTALLED_BINARY in line for line in _complaints(r)), r.stdout + r.stderr


def test_security_exposure_ok(systemd_analyze: str) -> None:
    r = _run([systemd_analyze, "security", "--offline=yes", str(SERVICE)])
    m = re.search(r"Overall exposure level for fastgw\.service: (\d+(?:\.\d+)?) (\w+)", r.stdout)
    assert m, f"no 'Overall exposure level' line:\n{r.stdout}{r.stderr}"
    exposure = float(m.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} {m.group(2)} > {MAX_EXPOSURE}:\n{r.stdout}"
    # Every point of exposure left is one we accept, with its reason above.
    r = _run([systemd_analyze, "security", "--offline=yes", "--json=short", str(SERVICE)])
    items = json.loads(r.stdout)
    exposed = {i["name"]: i["description"] for i in items if i.get("exposure") not in (None, "0.0")}
    unexpected = {k: v for k, v in exposed.items() if k not in ACCEPTED_EXPOSURES}
    assert not unexpected, f"new exposures (harden the unit, or accept them with a reason): {unexpected}"


# ---- the README's LoadCredential= drop-in ---------------------------------------------------------------------

def _readme_dropin() -> str:
    blocks = re.findall(r"```ini\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith(DROPIN_MARK)]
    assert len(found) == 1, f"systemd/README.md should hold one ini block starting with {DROPIN_MARK!r}"
    return found[0]


def test_credentials_dropin_verifies(systemd_analyze: str, tmp_path: Path) -> None:
    d = _unit_copy(tmp_path, dropin=_readme_dropin())
    r = _run([systemd_analyze, "verify", "./fastgw.service"], cwd=d)
    assert r.returncode == 0 and not _complaints(r), r.stdout + r.stderr
    r = _run([systemd_analyze, "security", "--offline=yes", "./fastgw.service"], cwd=d)
    m = re.search(r"Overall exposure level for fastgw\.service: (\d+(?:\.\d+)?)", r.stdout)
    assert m and float(m.group(1)) <= MAX_EXPOSURE, r.stdout


def test_credentials_dropin_exports_every_key_the_example_needs(tmp_path: Path) -> None:
    """The drop-in's shell, run as systemd would run it, turns each credential into the variable the config names."""
    dropin = _readme_dropin()
    creds = dict(re.findall(r"^LoadCredential=([\w.-]+):(\S+)$", dropin, flags=re.M))
    execs = re.findall(r"^ExecStart=(.*)$", dropin, flags=re.M)
    assert execs[0] == "" and len(execs) == 2, "the drop-in must reset ExecStart= before setting its own"
    argv = shlex.split(execs[1])  # systemd's quoting agrees with the shell's for this line
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3
    script = argv[2].replace("$$", "$")  # "$$" is systemd's escape for a literal "$"
    tail = f"exec {INSTALLED_BINARY} serve --config /etc/fastgw/fastgw.yaml"
    assert script.endswith(tail), "the shell must exec the gateway (same PID: NotifyAccess=main, LISTEN_PID)"
    cfg, _ = load_config(EXAMPLE, resolve_secrets=False)
    wanted = {t.secret_key_ref.env for t in cfg.providers.targets if t.secret_key_ref is not None}
    cred_dir = tmp_path / "credentials"
    cred_dir.mkdir()
    for name in creds:
        (cred_dir / name).write_text(f"secret-{name}\n")
    probe = script[: -len(tail)] + "exec env"
    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(cred_dir)}
    r = _run(["/bin/sh", "-c", probe], env=env)
    assert r.returncode == 0, r.stderr
    got = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    missing = wanted - got.keys()
    assert not missing, f"variables the example config needs but the drop-in does not set: {missing}"
    assert {got[v] for v in wanted} == {f"secret-{n}" for n in creds}  # trailing newline stripped
    (cred_dir / sorted(creds)[0]).unlink()  # a missing credential stops the start instead of an empty key
    r = _run(["/bin/sh", "-c", probe], env=env)
    assert r.returncode != 0 and not any(v in r.stdout for v in wanted)


# ---- static checks: what the deployment relies on --------------------------------------------------------

def _parse(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    cp.read_string(path.read_text(), source=str(path))
    return cp


def _all_values(path: Path, section: str, key: str) -> list[str]:
    """Every value of a repeatable key, in order (configparser keeps only the last)."""
    out, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[] ")
        elif current == section and line.startswith(f"{key}="):
            out.append(line.split("=", 1)[1])
    return out


def _seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|min)?", v.strip())
    assert m, f"unsupported time span {v!r}"
    return float(m.group(1)) * {"ms": 0.001, "min": 60.0}.get(m.group(2) or "s", 1.0)


#: Single-valued [Service] keys and the value they must have, with why.
SERVICE_KEYS = {
    "Type": "notify",                                  # READY=1 once every worker serves
    "NotifyAccess": "main",                            # only the master may talk to systemd
    "ExecStart": f"{INSTALLED_BINARY} serve --config /etc/fastgw/fastgw.yaml",
    "ExecReload": "/bin/kill -HUP $MAINPID",           # new workers first, then the old ones drain
    "KillMode": "mixed",                               # SIGTERM to the master alone: it coordinates the drain
    "Restart": "on-failure",
    "EnvironmentFile": "-/etc/fastgw/fastgw.env",      # provider keys; optional
    "StateDirectory": "fastgw",                        # $STATE_DIRECTORY: the audit log's default
    "RuntimeDirectory": "fastgw",                      # $RUNTIME_DIRECTORY: the workers' metric files
    "LogsDirectory": "fastgw",
    "UMask": "0077",
    "LimitNOFILE": "65536",                            # two descriptors per stream
    "DynamicUser": "yes",
    "PrivateUsers": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectControlGroups": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",                   # no W+X mapping in master or workers (README)
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",                  # a refused call fails instead of killing with SIGSYS
}

#: Keys the service must not set, with why.
SERVICE_ABSENT = {
    "User": "DynamicUser= allocates the user",
    "IPAddressDeny": "the gateway must reach providers at addresses not known in advance",
    "PrivateNetwork": "same",
}


def test_service_keys() -> None:
    svc = _parse(SERVICE)["Service"]
    wrong = {k: (svc.get(k), v) for k, v in SERVICE_KEYS.items() if svc.get(k) != v}
    assert not wrong, f"[Service] key: (found, expected): {wrong}"
    present = {k: why for k, why in SERVICE_ABSENT.items() if k in svc}
    assert not present, f"must not be set: {present}"
    assert _all_values(SERVICE, "Service", "SystemCallFilter") == ["@system-service", "~@privileged @resources"]


def test_service_timeouts_cover_the_master() -> None:
    svc = _parse(SERVICE)["Service"]
    assert _seconds(svc["TimeoutStopSec"]) > api_limits.GRACEFUL_TIMEOUT + MASTER_STOP_OVERHEAD
    assert _seconds(svc["TimeoutStartSec"]) > MASTER_BOOT_TIMEOUT
    assert 0 < _seconds(svc["WatchdogSec"])  # the master pings every WatchdogSec / 2
    # The example production config keeps the default drain budget the unit is sized for.
    cfg, _ = load_config(EXAMPLE, resolve_secrets=False)
    assert _seconds(svc["TimeoutStopSec"]) > cfg.server.graceful_timeout + MASTER_STOP_OVERHEAD


def test_service_unit_section() -> None:
    cp = _parse(SERVICE)
    assert "network-online.target" in cp["Unit"]["Wants"].split()
    assert "network-online.target" in cp["Unit"]["After"].split()
    assert cp["Install"]["WantedBy"] == "multi-user.target"


def test_socket_keys() -> None:
    cp = _parse(SOCKET)
    sock = cp["Socket"]
    assert _all_values(SOCKET, "Socket", "ListenStream") == ["127.0.0.1:8080"]
    assert sock["Accept"] == "no"  # one master takes the socket and shares it with its workers
    assert sock["NoDelay"] == "yes"  # as the gateway's own bind sets TCP_NODELAY
    assert int(sock["Backlog"]) == 2048  # master.BACKLOG
    assert "ReusePort" not in sock
    assert cp["Install"]["WantedBy"] == "sockets.target"


def test_production_example_matches_the_unit() -> None:
    """examples/production.yaml is what the unit runs: loopback, rbac/pii/audit chain, audit in $STATE_DIRECTORY."""
    cfg, _ = load_config(EXAMPLE, resolve_secrets=False)
    assert cfg.server.bind == ["127.0.0.1:8080"]
    assert {t.provider for t in cfg.providers.targets} >= {"openai", "anthropic"}
    assert cfg.policies.chain == ["rbac", "pii-detector", "audit-logger"]
    assert cfg.policy.audit_logger is not None and cfg.policy.audit_logger.path is None
    assert all(t.secret_key_ref is not None for t in cfg.providers.targets)
