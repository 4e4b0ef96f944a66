"""The `fastgw` command: `serve` runs the gateway, `check` validates a config and prints the effective one; `keys`,
`audit verify`, `scan` and `usage` are the operator's tools. The README's "Command line" block lists every
command and option (a test holds them together)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from typing import TYPE_CHECKING

from fastgw import __version__
from fastgw.config import Config, ConfigError, dump_config, load_config, parse_bind

if TYPE_CHECKING:
    from fastgw.master import Runtime

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgw", description="A drop-in, OpenAI-compatible gateway for LLM traffic.")
    p.add_argument("--version", action="version", version=f"fastgw {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (master + pre-forked workers)")
    serve.add_argument("--config", required=True, metavar="PATH", help="YAML config (pack layout)")
    serve.add_argument("--bind", action="append", metavar="HOST:PORT",
                       help="listen address (repeatable; also unix:/path); overrides server.bind")
    serve.add_argument("--workers", type=int, metavar="N", help="worker processes (default: server.workers, "
                                                                 "else one per CPU)")
    serve.add_argument("--log-level", default=os.environ.get("FASTGW_LOG_LEVEL", "info"),
                       choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", default=os.environ.get("FASTGW_ACCESS_LOG", "json"),
                       choices=["json", "text", "off"], help="access line format, or off: one line per request on stdout (default json; also "
                       "FASTGW_ACCESS_LOG)")
    check = sub.add_parser("check", help="validate a config and print the effective one")
    check.add_argument("--config", required=True, metavar="PATH")
    check.add_argument("--bind", action="append", metavar="HOST:PORT")
    check.add_argument("--workers", type=int, metavar="N")
    check.add_argument("--no-secrets", action="store_true",
                       help="do not require the environment variables named by secret_key_ref")
    keys = sub.add_parser("keys", help="gateway API keys for rbac: only their SHA-256 goes in the config")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("new", help="print a fresh random key and its sha256")
    keys_sub.add_parser("hash", help="read a key on stdin, print its sha256")
    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain of an audit file or directory")
    verify.add_argument("path", metavar="PATH")
    scan = sub.add_parser("scan", help="redact text from stdin with the config's pii-detector and list findings")
    scan.add_argument("--config", required=True, metavar="PATH")
    scan.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    usage = sub.add_parser("usage", help="print the rate-limiter's live buckets, requests in flight and spend")
    usage.add_argument("--config", required=True, metavar="PATH")
    usage.add_argument("--principal", metavar="NAME", help="only this key's rows (its rbac key name)")
    usage.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    return p


def _usage(args: argparse.Namespace) -> int:
    """`fastgw usage`: read the shared state the rate-limiter keeps (local file or Redis), as every instance sees it."""
    import asyncio

    import orjson

    from fastgw.policy.ratelimit import RateLimiter, RateLimitPolicy
    from fastgw.state import StateUnavailable, open_backend

    try:
        cfg, _ = load_config(args.config, resolve_secrets=False)
    except ConfigError as e:
        print(f"fastgw: config error: {e}", file=sys.stderr)
        return 1
    settings = cfg.policy.rate_limiter or RateLimiter()
    backend = open_backend(cfg.state)
    policy = RateLimitPolicy(settings, backend, on_failure=cfg.state.on_failure)

    async def read() -> list[dict]:
        try:
            return policy.usage_rows(await backend.usage(), args.principal)
        finally:
            await backend.close()

    try:
        rows = asyncio.run(read())
    except StateUnavailable as e:
        print(f"fastgw: the {cfg.state.backend} state cannot be read: {e}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps({"backend": cfg.state.backend, "rows": rows}).decode() + "\n")
        return 0
    if not rows:
        print(f"no rate-limiter state in the {cfg.state.backend} backend"
              + (f" for {args.principal!r}" if args.principal else ""))
    for r in rows:
        subject = "/".join(r["subject"]) or "-"
        if r["kind"] in ("requests", "tokens"):
            print(f"{r['kind']:<10} {r['limit']:<16} {r['per']:<9} {subject:<24} {r['remaining']}/{r['burst']} left, "
                  f"{r['limit_per_minute']}/min, full in {r['reset_s']} s")
        elif r["kind"] == "concurrent":
            print(f"{'concurrent':<10} {r['limit']:<16} {r['per']:<9} {subject:<24} {r['in_flight']}/{r['max']} in flight")
        else:
            print(f"{'budget':<10} {r['budget']:<16} {r['per']:<9} {subject:<24} {r['period']}: "
                  f"${r['spent_usd']:.6f} spent + ${r['reserved_usd']:.6f} reserved of ${r['limit_usd']:.2f}")
    return 0


def _scan(args: argparse.Namespace) -> int:
    """`fastgw scan`: try patterns on text without running a gateway."""
    import orjson

    from fastgw.policy.pii import PiiDetector, PiiPolicy

    try:
        cfg, _ = load_config(args.config, resolve_secrets=False)
    except ConfigError as e:
        print(f"fastgw: config error: {e}", file=sys.stderr)
        return 1
    pii = PiiPolicy(cfg.policy.pii_detector or PiiDetector())
    pii.allocate_scratch()
    data, spans = pii.scan_text(sys.stdin.read())
    redacted = pii.redact(data, spans).decode()
    findings = [{"entity": s.entity, "pattern": s.pattern, "start": s.start, "end": s.end} for s in spans]
    if args.json:
        sys.stdout.write(orjson.dumps({"redacted": redacted, "findings": findings}).decode() + "\n")
    else:
        sys.stdout.write(redacted if redacted.endswith("\n") else redacted + "\n")
        print(f"--- {len(findings)} finding(s) (byte offsets; values are never printed)")
        for f in findings:
            print(f"{f['entity']}\t{f['pattern']}\t{f['start']}-{f['end']}")
    return 0


def _apply_overrides(cfg: Config, args: argparse.Namespace) -> None:
    if args.bind:
        for b in args.bind:
            try:
                parse_bind(b)
            except ValueError as e:
                raise ConfigError(f"--bind: {e}") from None
        cfg.server.bind = list(args.bind)
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError("--workers: expected an integer >= 1")
        cfg.server.workers = args.workers
    if cfg.server.workers == 0:
        cfg.server.workers = os.cpu_count() or 1


def _raise_nofile() -> None:
    """Each stream holds two sockets (client and upstream): the common soft limit of 1024 would cap a worker
    near 500 streams and refuse connections silently. Raise the soft limit to the hard one (as nginx's
    worker_rlimit_nofile does); systemd's LimitNOFILE sets the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return
    if hard < 4096:
        logging.getLogger("fastgw").warning("open-file limit is %d: about %d concurrent streams per worker at most "
                                            "(raise LimitNOFILE / ulimit -n)", hard, hard // 2 - 50)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "scan":
        return _scan(args)
    if args.command == "usage":
        return _usage(args)
    if args.command == "keys":
        from fastgw import keys

        return keys.main_new(sys.stdout) if args.keys_command == "new" else keys.main_hash(sys.stdin, sys.stdout)
    if args.command == "audit":
        from fastgw.policy.audit import main_verify

        return main_verify(args.path, sys.stdout)
    if args.command == "check":
        try:
            cfg, _ = load_config(args.config, resolve_secrets=not args.no_secrets)
            _apply_overrides(cfg, args)
        except ConfigError as e:
            print(f"fastgw: config error: {e}", file=sys.stderr)
            return 1
        sys.stdout.write(dump_config(cfg))
        print(f"# {args.config}: OK", file=sys.stderr)
        return 0
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    """`fastgw serve`: load the config, compile the chain and bind once in the master, then fork and supervise."""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    from fastgw import accesslog

    accesslog.configure("off" if args.access_log == "off" else "info",
                        "text" if args.access_log == "text" else "json")
    try:
        cfg, secrets = load_config(args.config)
        _apply_overrides(cfg, args)
    except ConfigError as e:
        print(f"fastgw: config error: {e}", file=sys.stderr)
        return 1
    _raise_nofile()
    from fastgw import sdnotify
    from fastgw.app import build_targets
    from fastgw.master import BootError, Master, bind_sockets
    from fastgw.policy.chain import build_chain

    def load_runtime() -> Runtime:
        """Read, check and compile the config (at start, and again on SIGHUP)."""
        c, sec = load_config(args.config)
        _apply_overrides(c, args)
        if not c.pack.enabled:
            logging.getLogger("fastgw").warning("pack %r is disabled (pack.enabled: false): no policy runs, "
                                                "traffic passes through unchecked", c.pack.name)
        # Hyperscan databases compile here, before fork.
        return c, build_targets(c, sec), build_chain(c.chain_settings())

    try:
        targets = build_targets(cfg, secrets)
        chain = build_chain(cfg.chain_settings())  # Hyperscan databases compile once, here, before fork
        sockets = sdnotify.listen_fds()  # systemd socket activation, when it started us
        inherited = bool(sockets)
        if sockets:
            logging.getLogger("fastgw").info("serving %d socket(s) from systemd; server.bind is not used",
                                             len(sockets))
        else:
            sockets = bind_sockets(cfg.server.bind)
    except (BootError, OSError, ValueError) as e:
        print(f"fastgw: cannot start: {e}", file=sys.stderr)
        return 1
    if not cfg.pack.enabled:
        print(f"fastgw: WARNING: pack {cfg.pack.name!r} is disabled (pack.enabled: false): no policy runs, "
              "traffic passes through unchecked", file=sys.stderr)
    return Master(cfg, targets, sockets, cfg.server.workers, chain, loader=load_runtime, inherited=inherited).run()


if __name__ == "__main__":
    raise SystemExit(main())
