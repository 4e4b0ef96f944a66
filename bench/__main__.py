"""`python -m bench <command>`: the benchmark tool.

Commands:
  run   start fastgw, fastgw-redact, nginx and/or a direct baseline in front of one mock upstream, load them in
        turn (interleaved, repeated) and report medians and ratios to nginx (bench/run.py).

The older single-purpose benchmarks stay runnable as modules: `python -m bench.stream`, `bench.pii`,
`bench.streams2k`, `bench.loadgen`, `bench.upstream`, `bench.ttft_split` (the c=1 time to first event, split into
the request's and the answer's way through the system).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and dispatch to the subcommand."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    from bench import run  # imported here so `--help` of a future light command does not pay for matplotlib
    r = sub.add_parser("run", help="compare systems side by side", description=run.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_arguments(r)
    from bench import scale
    sc = sub.add_parser("scale", help="costs that should stay flat as the work grows", description=scale.__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    scale.add_arguments(sc)
    args = p.parse_args(argv)
    if args.command == "run":
        return run.main(args, argv)
    if args.command == "scale":
        return scale.main(args, argv)
    p.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
