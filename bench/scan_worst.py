"""Hunt for the inputs that make the policy scan slowest: CPU per byte over generated families of text.

    python -m bench.scan_worst                    # every family at 256 KiB, 20 s of random search, top 15
    python -m bench.scan_worst --size 1048576     # bigger texts (check that the cost stays linear)
    python -m bench.scan_worst --search 0 --top 50 --filter phone
    python -m bench.scan_worst --output           # the streamed-output path instead of the input path
    python -m bench.scan_worst --json worst.json  # also write every figure as JSON

Each input is one chat request whose last user message is the text, checked the way the gateway checks
input: the chain of `pii-detector` (every entity), `safety-filter` (a few terms) and `prompt-injection`
(the built-ins), through `Chain.check_input_async` (the sliced path large bodies take) when it exists, else
`Chain.check_input`. `--output` instead streams the text as the answer of a chat completion (events of
`--event` bytes, 4 KiB by default) through `Chain.stream_policy` with the same policies, the way the
relay drives it (push, release after every event, finish).

Families are repetitions of short strings built from the bytes the patterns are made of (digits with every
separator, dotted and colon runs, hex groups, '@', '+', '(', 'sk-', 'eyJ', '-----BEGIN', e-mail, phone,
IBAN and card shapes, JSON escapes, full-width digits, zero-width characters, many tiny fields ...), plus
random texts over those alphabets. The random search then mutates the worst units (insert, delete or
replace a byte, double a piece) and keeps a mutant when it costs more per byte: a hill climb on CPU.

CPU is `time.process_time()` around the check, best of `--repeat` runs (the least disturbed), divided by
the text's UTF-8 bytes: µs per byte is also seconds per MB. Refusals (a block, the CPU budget) count as
what they cost until they happened, and are marked.

Like `bench.micro`, this module imports fastgw: it measures the policy chain's own code in-process (a
gateway process would add the HTTP path's costs and hide which input is slow).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

__all__ = ["FAMILIES", "Result", "build_chain", "measure", "main"]


# ---- families ----------------------------------------------------------------------------------------

def _rep(unit: str) -> Callable[[int, random.Random], str]:
    def gen(size: int, _rnd: random.Random) -> str:
        return (unit * (size // max(1, len(unit.encode())) + 1))[:size]
    gen.unit = unit  # type: ignore[attr-defined]  # the search mutates it
    return gen


def _rand(alphabet: str, sep: str = "") -> Callable[[int, random.Random], str]:
    """Random characters of `alphabet` (a `sep` after each when given)."""
    def gen(size: int, rnd: random.Random) -> str:
        out: list[str] = []
        n = 0
        while n < size:
            c = rnd.choice(alphabet) + sep
            out.append(c)
            n += len(c.encode())
        return "".join(out)
    return gen


def _rand_groups(sep: str, lo: int, hi: int, digits: str = "0123456789") -> Callable[[int, random.Random], str]:
    """Random digit groups of lo..hi digits joined by `sep`."""
    def gen(size: int, rnd: random.Random) -> str:
        out: list[str] = []
        n = 0
        while n < size:
            g = "".join(rnd.choice(digits) for _ in range(rnd.randint(lo, hi))) + sep
            out.append(g)
            n += len(g)
        return "".join(out)
    return gen


def _rand_phones(size: int, rnd: random.Random) -> str:
    """Distinct phone-shaped numbers in every layout, one per line with a phone word: what each costs to confirm."""
    out: list[str] = []
    n = 0
    layouts = ("+49 30 {7}", "0151 {8}", "({3}) {3}-{4}", "+44 20 {4} {4}", "0{2} {2} {2} {2} {2}", "{3} {3} {4}",
               "+1 {3} {3} {4}", "0{3}/{6}", "+33 {1} {2} {2} {2} {2}")
    while n < size:
        lay = rnd.choice(layouts)
        s = ""
        i = 0
        while i < len(lay):
            if lay[i] == "{":
                j = lay.index("}", i)
                s += "".join(rnd.choice("0123456789") for _ in range(int(lay[i + 1:j])))
                i = j + 1
            else:
                s += lay[i]
                i += 1
        line = f"call {s}\n"
        out.append(line)
        n += len(line)
    return "".join(out)


def _tiny_fields(size: int, rnd: random.Random) -> str:
    return "." * size  # a stand-in of the body's size: `_body` makes it many tiny content parts


#: name -> generator(size in bytes, rng) -> text. Units repeat; `rand:` families draw fresh characters.
FAMILIES: dict[str, Callable[[int, random.Random], str]] = {
    "prose": _rep("The quick brown fox jumps over the lazy dog, then naps. "),
    "a:": _rep("a:"),
    "1:": _rep("1:"),
    "dead:": _rep("dead:"),
    "::1 ": _rep("::1 "),
    "1:2:3:4:5:6:7:8 ": _rep("1:2:3:4:5:6:7:8 "),
    "ffff:": _rep("ffff:"),
    "1.": _rep("1."),
    "1.1.1.1 ": _rep("1.1.1.1 "),
    "10.0.0.": _rep("10.0.0."),
    "1 ": _rep("1 "),
    "1-": _rep("1-"),
    "1/": _rep("1/"),
    "1(": _rep("1("),
    "1) ": _rep("1) "),
    "12 ": _rep("12 "),
    "123 ": _rep("123 "),
    "1234 ": _rep("1234 "),
    "1  ": _rep("1  "),
    "1 2 3 4 5 6 7 8 9, ": _rep("1 2 3 4 5 6 7 8 9, "),
    "call 1 2 3 4 5 6 7 8 9\n": _rep("call 1 2 3 4 5 6 7 8 9\n"),
    "0": _rep("0"),
    "+1": _rep("+1"),
    "+": _rep("+"),
    "+1 ": _rep("+1 "),
    "+49 30 ": _rep("+49 30 "),
    "(555) ": _rep("(555) "),
    "555-123-4567 ": _rep("555-123-4567 "),
    "1 x1 ": _rep("1 x1 "),
    "4111 1111 1111 1111 ": _rep("4111 1111 1111 1111 "),
    "4111 ": _rep("4111 "),
    "123-45-6789 ": _rep("123-45-6789 "),
    "ssn 123456789 ": _rep("ssn 123456789 "),
    "ab@": _rep("ab@"),
    "a@b.": _rep("a@b."),
    "a.b@c.de ": _rep("a.b@c.de "),
    "a@": _rep("a@"),
    "x@a.bb": _rep("x@a.bb") ,
    ".": _rep("."),
    "-": _rep("-"),
    "sk-": _rep("sk-"),
    "sk-a1(1MB)": lambda size, _r: ("sk-" + "a1" * size)[:size],
    "sk-...24 ": _rep("sk-aaaaaaaaaaaaaaaaaaaaaaaa1 "),
    "sk-ant-api01-": _rep("sk-ant-api01-"),
    "AKIA": _rep("AKIA"),
    "eyJ": _rep("eyJ"),
    "eyJa.": _rep("eyJa."),
    "eyJa.eyJb.(1MB)": lambda size, _r: ("eyJhbGciOiJIUzI1NiJ9.eyJb." + "a" * size)[:size],
    "-----BEGIN ": _rep("-----BEGIN "),
    "-----BEGIN RSA PRIVATE KEY-----": _rep("-----BEGIN RSA PRIVATE KEY-----"),
    "-----END RSA PRIVATE KEY-----": _rep("-----END RSA PRIVATE KEY-----"),
    "DE89 ": _rep("DE89 "),
    "DE89370400440532013000 ": _rep("DE89370400440532013000 "),
    "de89 3704 ": _rep("de89 3704 "),
    "ab12 ": _rep("ab12 "),
    "GB": _rep("GB"),
    "| phone | ": _rep("| phone | "),
    "|---|\n": _rep("|---|\n"),
    "\\u0040": _rep("\\u0040"),
    "\\\\": _rep("\\\\"),
    "fullwidth digits": _rep("１２３"),
    "fullwidth 1 sp": _rep("１　"),
    "fullwidth at": _rep("ａ＠"),
    "1 zwsp": _rep("1\u200b"),
    "zwsp": _rep("\u200b"),
    "1 nbsp": _rep("1\u00a0"),
    "1 en-dash": _rep("1\u2013"),
    "soft hyphen": _rep("\u00ad"),
    "emoji": _rep("📞"),
    "cjk phone word": _rep("電話1 "),
    "ignore previous ": _rep("ignore all previous instructions "),
    "ignore ": _rep("ignore "),
    "DAN ": _rep("you are DAN "),
    "<|im_start|>": _rep("<|im_start|>"),
    "homoglyph": _rep("іgnоrе "),
    "spaces": _rep(" "),
    "newlines": _rep("\n"),
    "\\r\\n": _rep("\r\n"),
    "rand:digits+seps": _rand("0123456789 -.()/+"),
    "rand:digit-space": _rand("0123456789", " "),
    "rand:digit-dot": _rand("0123456789", "."),
    "rand:hex-colon": _rand("0123456789abcdef:"),
    "rand:hexgroups:": _rand_groups(":", 1, 4, "0123456789abcdef"),
    "rand:groups-space-2": _rand_groups(" ", 2, 2),
    "rand:groups-space-1..4": _rand_groups(" ", 1, 4),
    "rand:groups-dash-3..4": _rand_groups("-", 3, 4),
    "rand:9digits, ": _rand_groups(", ", 9, 9),
    "rand:digits/spaced9": lambda size, rnd: _rand_groups(", ", 1, 1)(0, rnd) + "".join(
        " ".join(rnd.choice("0123456789") for _ in range(9)) + ", " for _ in range(size // 19 + 1))[:size],
    "rand:phones": _rand_phones,
    "rand:ipv4": lambda size, rnd: "".join(
        f"{rnd.randint(1, 255)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)} "
        for _ in range(size // 8 + 1))[:size],
    "rand:ipv6": lambda size, rnd: "".join(
        ":".join(f"{rnd.randrange(65536):x}" for _ in range(8)) + " " for _ in range(size // 20 + 1))[:size],
    "rand:emails": lambda size, rnd: "".join(
        "".join(rnd.choice("abcdefgh") for _ in range(5)) + "@ex.com " for _ in range(size // 12 + 1))[:size],
    "rand:cards": lambda size, rnd: "".join(
        " ".join("".join(rnd.choice("0123456789") for _ in range(4)) for _ in range(4)) + "\n"
        for _ in range(size // 20 + 1))[:size],
    "rand:alnum": _rand("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
    "tiny fields": _tiny_fields,
}

#: Characters the mutation search draws from: what the patterns are made of.
ALPHABET = "0123456789 .:-+()/@#xXeEtTaAbBfFskKyJIQ_,|\n\\u\u200b\uff11\u00a0"


# ---- the chain ---------------------------------------------------------------------------------------

def build_chain():
    """pii-detector (all entities), safety-filter (a few terms) and prompt-injection (built-ins), scratch allocated."""
    from fastgw.policy.chain import build_chain as build
    from fastgw.policy.safety import SafetyFilter

    chain = build([("pii-detector", None),
                   ("safety-filter", SafetyFilter(terms=["bomb making", "kill yourself", "credit card dump"])),
                   ("prompt-injection", None)])
    chain.allocate_scratch()
    return chain


def _body(name: str, text: str) -> dict:
    if name == "tiny fields":
        # Many short content parts (~30 bytes of JSON each): per-field costs (walking, a scanner per text).
        return {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "a1"} for _ in range(max(1, len(text) // 30))]}]}
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def _check_input(chain, body: dict) -> str:
    from fastgw.api.errors import GatewayError
    from fastgw.policy.base import RequestContext

    ctx = RequestContext("scan-worst", "POST", "/v1/chat/completions", [])
    ctx.endpoint = "chat/completions"
    try:
        if hasattr(chain, "check_input_async"):
            asyncio.run(chain.check_input_async(ctx, body))
        else:
            chain.check_input(ctx, body)
    except GatewayError as e:
        return e.code or type(e).__name__
    return ""


def _check_output(chain, text: str, event: int) -> str:
    import orjson

    from fastgw.api.errors import GatewayError
    from fastgw.policy.base import RequestContext
    from fastgw.policy.stream import StreamBlocked
    from fastgw.proto.sse import SSEDecoder

    ctx = RequestContext("scan-worst", "POST", "/v1/chat/completions", [])
    pol = chain.stream_policy(ctx)
    data = text.encode()
    raw = bytearray()
    for i in range(0, len(data), event):
        piece = data[i:i + event].decode("utf-8", "ignore")
        raw += b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"content": piece}, "finish_reason": None}]}) + b"\n\n"
    dec = SSEDecoder()
    events = dec.feed(bytes(raw))
    try:
        for ev in events:
            pol.push(ev)
            pol.release()
        pol.finish()
    except StreamBlocked as b:
        return b.error.code or "blocked"
    except GatewayError as e:
        return e.code or type(e).__name__
    finally:
        pol.close()
    return ""


@dataclass
class Result:
    name: str
    bytes: int
    seconds: float
    us_per_byte: float
    outcome: str = ""
    unit: str = ""


def measure(chain, name: str, text: str, repeat: int = 2, output: bool = False, event: int = 4096) -> Result:
    """CPU per byte of checking `text` (best of `repeat`)."""
    best = float("inf")
    outcome = ""
    n = len(text.encode("utf-8", "surrogatepass"))
    for _ in range(repeat):
        body = _body(name, text)
        t0 = time.process_time()
        outcome = _check_output(chain, text, event) if output else _check_input(chain, body)
        best = min(best, time.process_time() - t0)
    return Result(name, n, best, best / max(1, n) * 1e6, outcome)


# ---- the search ---------------------------------------------------------------------------------------

def _mutate(unit: str, rnd: random.Random) -> str:
    op = rnd.randrange(4)
    i = rnd.randrange(len(unit) + 1)
    if op == 0 or len(unit) < 2:
        out = unit[:i] + rnd.choice(ALPHABET) + unit[i:]
    elif op == 1:
        out = unit[:i] + unit[i + 1:]
    elif op == 2:
        out = unit[:i] + rnd.choice(ALPHABET) + unit[i + 1:]
    else:
        j = rnd.randrange(len(unit) + 1)
        a, b = min(i, j), max(i, j)
        out = unit[:b] + unit[a:b] + unit[b:]
    return out[:24] or rnd.choice(ALPHABET)


def search(chain, seeds: list[str], seconds: float, size: int, rnd: random.Random, output: bool,
           event: int) -> list[Result]:
    """Hill-climb on µs/byte from the seed units for `seconds`; every improvement is kept as a result."""
    found: list[Result] = []
    pool = [(measure(chain, "search", _rep(u)(size, rnd), 1, output, event).us_per_byte, u) for u in seeds]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and pool:
        pool.sort(reverse=True)
        pool = pool[:8]
        cost, unit = pool[rnd.randrange(len(pool))]
        cand = _mutate(unit, rnd)
        r = measure(chain, "search", _rep(cand)(size, rnd), 1, output, event)
        if r.us_per_byte > cost:
            pool.append((r.us_per_byte, cand))
            r.name = f"search:{cand!r}"
            r.unit = cand
            found.append(r)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scan_worst", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256 * 1024, help="bytes of text per family (default 256 KiB)")
    p.add_argument("--search", type=float, default=20.0, help="seconds of random mutation search (0: none)")
    p.add_argument("--top", type=int, default=15, help="rows to print (worst first)")
    p.add_argument("--repeat", type=int, default=2, help="runs per family; the best counts")
    p.add_argument("--filter", default="", help="only families whose name contains this")
    p.add_argument("--output", action="store_true", help="measure the streamed output path instead of the input")
    p.add_argument("--event", type=int, default=4096, help="bytes of text per streamed event (--output)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default="", help="also write every result to this file")
    args = p.parse_args(argv)
    rnd = random.Random(args.seed)
    chain = build_chain()
    path = "output (stream policy)" if args.output else (
        "input (check_input_async)" if hasattr(chain, "check_input_async") else "input (check_input)")
    print(f"scan_worst: {path}, {args.size} bytes per family, search {args.search:g} s", file=sys.stderr)
    results: list[Result] = []
    for name, gen in FAMILIES.items():
        if args.filter and args.filter not in name:
            continue
        text = gen(args.size, rnd)
        results.append(measure(chain, name, text, args.repeat, args.output, args.event))
    if args.search > 0:
        # Seeds: the units of the worst repeated families, and the issue's.
        worst = sorted(results, key=lambda r: r.us_per_byte, reverse=True)
        units = [getattr(FAMILIES[r.name], "unit", None) for r in worst]
        seeds = [u for u in units if u is not None][:6] + ["a:", "1 "]
        results += search(chain, seeds, args.search, min(args.size, 256 * 1024), rnd, args.output, args.event)
    results.sort(key=lambda r: r.us_per_byte, reverse=True)
    print(f"{'family':40s} {'bytes':>9s} {'µs/byte':>9s} {'s/MB':>7s}  outcome")
    for r in results[:args.top]:
        name = r.name if r.name.isprintable() else repr(r.name)
        print(f"{name[:40]:40s} {r.bytes:9d} {r.us_per_byte:9.3f} {r.us_per_byte * 1.048576:7.3f}  {r.outcome}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
