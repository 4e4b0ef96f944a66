"""How well the pii-detector policy finds PII on a multi-locale corpus, side by side with Presidio's recognizers.

    python -m bench.pii_eval                       # 2700 items, 9 locales, with Presidio; prints the tables
    python -m bench.pii_eval --n 900 --no-presidio # quicker
    python -m bench.pii_eval --rev HEAD --write    # fastgw as committed (git archive), append to bench/RESULTS.md

The corpus is `bench.pii_corpus.make_corpus(n, seed)`: LLM-style answers in nine Faker
locales, every PII value and decoy at a known position. It imports fastgw internals on
purpose, to measure the gateway's own redaction code rather than a copy: everything runs
through it: the chain is `fastgw.policy.chain.build_chain` of a
`fastgw.policy.pii.PiiDetector`; a whole answer goes through `Chain.check_output_body`
(the non-streamed path: a chat.completion body) and a streamed one through
`Chain.stream_policy` (`fastgw.policy.stream.open_stream`), fed SSE bytes as the relay
reads them and released after every read. Per item:

- removal: the answer, non-streamed, with `replacement: "\\x1a"` (a one-character mask,
  so the output has the input's bytes with each redacted byte masked: exact positions,
  no alignment guesswork). A value is *removed* when none of its letters or digits
  survives unmasked; *partly* when some do. A decoy is *altered* when any of its bytes
  is masked. The same with one entity enabled at a time says which detector altered a
  decoy (the per-type decoy column). Masked bytes outside every value and decoy are
  counted as "clean text altered".
- splits: the answer with the default replacement, whole (non-streamed) and streamed
  under three splits: content cut inside and at the edges of every value and decoy
  (SSE bytes read in random pieces), token-like 1–8 character chunks (one event per
  read), and one of 1-, 3-, 7-character chunks, random 1–64 character chunks or a
  single event (rotating over items). Every streamed client text must equal the whole
  one.
- block: `action: block`, non-streamed (must refuse exactly the answers where the mask
  run found something) and streamed token-like: the client must get exactly the text
  before the first redacted byte, and nothing of any detected value.
- holdback and CPU: on the token-like split (one ~4-character event per read), the
  events held back after each release, and process CPU per event inside the stream
  policy (push + release + finish), on clean prose items and on all items.

Presidio: `presidio_analyzer.AnalyzerEngine` with the predefined pattern recognizers of
the same entity types (EmailRecognizer, PhoneRecognizer with the nine locales' regions,
UsSsnRecognizer, CreditCardRecognizer, IbanRecognizer, IpRecognizer; Presidio has no
recognizer for AWS keys, API keys, JWTs or private keys) and a stub NLP engine (no spaCy
model can be installed here: no NER, no lemma context; with the default score threshold
0 context changes scores, not which spans are returned). Every text is analyzed as
language "en" (the recognizers are registered for "en"), score threshold 0; the union of
the returned spans is masked and judged exactly as ours.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

from bench.pii_corpus import DECOYS, ENTITIES, LOCALES, REGIONS, Item, make_corpus

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
MASK = "\x1a"

#: Presidio entity names of ours.
PRESIDIO_ENTITIES = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "US_SSN": "US_SSN",
                     "CREDIT_CARD": "CREDIT_CARD", "IBAN_CODE": "IBAN", "IP_ADDRESS": "IP_ADDRESS"}

#: Targets of issue 14's "Done means".
TARGET_REMOVED = 0.99
TARGET_DECOYS = 0.01


# ---- the gateway's code path --------------------------------------------------------------------------

class Gateway:
    """pii-detector chains built as the gateway builds them, and the two output paths."""

    def __init__(self) -> None:
        from fastgw.policy.base import PolicyViolation, RequestContext
        from fastgw.policy.chain import build_chain
        from fastgw.policy.findings import Findings
        from fastgw.policy.pii import PiiDetector
        from fastgw.policy.stream import StreamBlocked
        from fastgw.proto.sse import SSEDecoder, encode_data
        from fastgw.scan.patterns import ENTITIES as GW_ENTITIES

        self._build_chain, self._Findings, self._PiiDetector = build_chain, Findings, PiiDetector
        self.RequestContext, self.PolicyViolation, self.StreamBlocked = RequestContext, PolicyViolation, StreamBlocked
        self.SSEDecoder, self.encode_data = SSEDecoder, encode_data
        self.entities = tuple(GW_ENTITIES)
        self.redact = self.chain(action="redact")
        self.mask = self.chain(action="redact", replacement=MASK)
        self.block = self.chain(action="block")
        self.per_entity = {e: self.chain(action="redact", replacement=MASK, entities=[e]) for e in self.entities}

    def chain(self, **settings: Any):
        ch = self._build_chain([("pii-detector", self._PiiDetector(**settings))])
        ch.findings = self._Findings([])  # (the default sink logs every finding)
        ch.allocate_scratch()
        return ch

    def ctx(self):
        return self.RequestContext("bench", "POST", "/v1/chat/completions", [])

    def whole(self, chain, text: str) -> tuple[str | None, bool]:
        """(answer text after the non-streamed output path, refused)."""
        body = json.dumps({"id": "chatcmpl-b", "object": "chat.completion", "created": 1, "model": "m",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop"}]}).encode()
        try:
            out = chain.check_output_body(self.ctx(), body)
        except self.PolicyViolation:
            return None, True
        return json.loads(out)["choices"][0]["message"]["content"], False

    def wire(self, pieces: list[str]) -> bytes:
        def chunk(delta: dict, finish: str | None = None) -> bytes:
            return self.encode_data(json.dumps({"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1,
                                                "model": "m", "choices": [{"index": 0, "delta": delta,
                                                                           "finish_reason": finish}]}).encode())
        return b"".join([chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces]
                        + [chunk({}, "stop"), b"data: [DONE]\n\n"])

    def stream(self, chain, wire: bytes, reads: list[int] | None, held: list[int] | None = None,
               cpu: list[float] | None = None) -> tuple[str, bool]:
        """Client text of a streamed answer and whether it was cut by a block. `reads`: byte offsets where the
        upstream reads end (None: one event per read). Holdback after each release goes to `held`, CPU to `cpu`."""
        sp = chain.stream_policy(self.ctx(), "chat")
        dec = self.SSEDecoder()
        out: list[bytes] = []
        blocked = False
        t = 0.0
        try:
            if reads is None:
                events = dec.feed(wire)
                for ev in events:
                    t0 = time.process_time()
                    sp.push(ev)
                    out += sp.release()
                    t += time.process_time() - t0
                    if held is not None:
                        held.append(sp.held)
            else:
                pos = 0
                for c in reads + [len(wire)]:
                    for ev in dec.feed(wire[pos:c]):
                        sp.push(ev)
                    pos = c
                    out += sp.release()
            t0 = time.process_time()
            out += sp.finish()
            t += time.process_time() - t0
        except self.StreamBlocked as b:
            out += b.prefix
            blocked = True
        finally:
            sp.close()
        if cpu is not None:
            cpu.append(t)
        text = []
        for e in self.SSEDecoder().feed(b"".join(out)):
            if e.data and e.data != "[DONE]":
                for ch in json.loads(e.data)["choices"]:
                    text.append(ch["delta"].get("content") or "")
        return "".join(text), blocked


def masked_chars(text: str, out: str | None) -> list[bool] | None:
    """Per character of `text`: whether any of its bytes was masked in `out` (None: cannot align)."""
    if out is None:
        return None
    a, b = text.encode(), out.encode()
    if len(a) == len(b):
        res: list[bool] = []
        i = 0
        for ch in text:
            n = len(ch.encode())
            res.append(MASK.encode() in b[i:i + n] and a[i:i + n] != b[i:i + n])
            i += n
        if all(x == y or y == 0x1a for x, y in zip(a, b)):
            return res
    if len(text) == len(out) and all(x == y or y == MASK for x, y in zip(text, out)):
        return [y == MASK and x != MASK for x, y in zip(text, out)]
    return None


def _sig(c: str) -> bool:
    return unicodedata.category(c)[0] in "LN"


# ---- splits ---------------------------------------------------------------------------------------------

def _chunks(text: str, sizes) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = next(sizes)
        out.append(text[i:i + n])
        i += n
    return out


def _forever(f):
    while True:
        yield f()


def split(name: str, text: str, item: Item, rng: random.Random) -> list[str]:
    if name == "one":
        return [text]
    if name in ("c1", "c3", "c7"):
        n = int(name[1:])
        return [text[i:i + n] for i in range(0, len(text), n)]
    if name == "tok":
        return _chunks(text, _forever(lambda: rng.randint(1, 8)))
    if name == "rand":
        return _chunks(text, _forever(lambda: rng.randint(1, 64)))
    if name == "values":
        cuts = {0, len(text)}
        for m in item.marks:
            cuts |= {m.start, m.end, rng.randint(m.start, m.end), rng.randint(m.start, m.end)}
        cuts |= {rng.randrange(len(text) + 1) for _ in range(len(text) // 20)}
        cs = sorted(cuts)
        return [text[a:b] for a, b in zip(cs, cs[1:]) if b > a]
    raise ValueError(name)


ROTATION = ("c1", "c3", "c7", "rand", "one")


def random_reads(wire: bytes, rng: random.Random) -> list[int]:
    out, p = [], 0
    while True:
        p += rng.randint(1, 300)
        if p >= len(wire):
            return out
        out.append(p)


# ---- Presidio ---------------------------------------------------------------------------------------------

class Presidio:
    def __init__(self) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
        from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer,
                                                              IbanRecognizer, IpRecognizer, PhoneRecognizer,
                                                              UsSsnRecognizer)

        class StubNlp(NlpEngine):
            """No model: empty tokens, no entities (spaCy models cannot be installed here)."""

            def load(self) -> None: ...

            def is_loaded(self) -> bool:
                return True

            def process_text(self, text: str, language: str) -> NlpArtifacts:
                return NlpArtifacts(entities=[], tokens=[], tokens_indices=[], lemmas=[], nlp_engine=self,
                                    language=language)

            def process_batch(self, texts, language, batch_size=1, n_process=1, **kwargs):
                for t in texts:
                    yield t, self.process_text(t, language)

            def is_stopword(self, word: str, language: str) -> bool:
                return False

            def is_punct(self, word: str, language: str) -> bool:
                return False

            def get_supported_entities(self) -> list[str]:
                return []

            def get_supported_languages(self) -> list[str]:
                return ["en"]

        import presidio_analyzer

        self.version = getattr(presidio_analyzer, "__version__", None) or _dist_version("presidio-analyzer")
        reg = RecognizerRegistry(supported_languages=["en"])
        self.regions = sorted(set(REGIONS.values()))
        for r in (EmailRecognizer(), PhoneRecognizer(supported_regions=self.regions), UsSsnRecognizer(),
                  CreditCardRecognizer(), IbanRecognizer(), IpRecognizer()):
            reg.add_recognizer(r)
        self.engine = AnalyzerEngine(registry=reg, nlp_engine=StubNlp(), supported_languages=["en"])

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        res = self.engine.analyze(text=text, language="en", entities=list(PRESIDIO_ENTITIES))
        return [(r.start, r.end, PRESIDIO_ENTITIES[r.entity_type]) for r in res]


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ---- evaluation -----------------------------------------------------------------------------------------

class Tally:
    """Counts per (system, key)."""

    def __init__(self) -> None:
        self.c: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, key: tuple, **kw: int) -> None:
        self.c[key].update(kw)


def judge(item: Item, masked: list[bool], tally: Tally, system: str, examples: dict) -> list[int]:
    """Count values removed/partly/kept and decoys altered; returns the characters masked outside every mark."""
    covered = [False] * len(item.text)
    for m in item.marks:
        for i in range(m.start, m.end):
            covered[i] = True
        if m.kind == "value":
            sig = [i for i in range(m.start, m.end) if _sig(item.text[i])]
            left = [i for i in sig if not masked[i]]
            state = "removed" if not left else ("kept" if len(left) == len(sig) else "partly")
            for key in ((system, "value", m.entity, item.locale), (system, "fmt", m.entity, m.fmt)):
                tally.add(key, n=1, **{state: 1})
            if state != "removed":
                ex = examples.setdefault((system, "miss", m.entity), [])
                if len(ex) < 12:
                    shown = "".join(MASK if masked[i] else item.text[i] for i in range(m.start, m.end))
                    ex.append({"locale": item.locale, "fmt": m.fmt, "value": m.text, "output": shown})
        else:
            alt = any(masked[m.start:m.end])
            tally.add((system, "decoy", m.entity, item.locale), n=1, altered=int(alt))
            tally.add((system, "decoyfmt", m.entity, m.fmt), n=1, altered=int(alt))
            if alt:
                ex = examples.setdefault((system, "decoy", m.entity), [])
                if len(ex) < 12:
                    ex.append({"locale": item.locale, "fmt": m.fmt, "decoy": m.text,
                               "output": "".join(MASK if masked[i] else item.text[i] for i in range(m.start, m.end))})
    return [i for i, (mk, cv) in enumerate(zip(masked, covered)) if mk and not cv]


def decoy_entities(item: Item, per_entity: dict[str, list[bool]], tally: Tally, system: str) -> None:
    """Decoys altered by each entity's detectors alone."""
    for m in item.marks:
        if m.kind != "decoy":
            continue
        for e, masked in per_entity.items():
            alt = any(masked[m.start:m.end])
            tally.add((system, "decoy-by", e, item.locale), n=1, altered=int(alt))


def run(items: list[Item], presidio: Presidio | None, seed: int = 1, progress: bool = True) -> dict:
    gw = Gateway()
    rng = random.Random(seed)
    tally = Tally()
    examples: dict = {}
    split_fail: list[dict] = []
    block_fail: list[dict] = []
    unaligned = 0
    stats = collections.Counter()
    held_prose: list[int] = []
    held_all: list[int] = []
    cpu = {"prose": [0.0, 0], "all": [0.0, 0]}
    clean_altered: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    t_start = time.monotonic()
    t_presidio = 0.0
    for k, item in enumerate(items):
        text = item.text
        # --- removal (mask), per entity (decoys)
        mout, mblocked = gw.whole(gw.mask, text)
        masked = masked_chars(text, mout)
        if masked is None:
            unaligned += 1
            continue
        stray = judge(item, masked, tally, "fastgw", examples)
        if stray:
            clean_altered["fastgw"]["items"] += 1
            ex = examples.setdefault(("fastgw", "clean", ""), [])
            if len(ex) < 12:
                a, b = stray[0], stray[-1] + 1
                ex.append({"locale": item.locale, "text": text[max(0, a - 20):b + 20]})
        per = {}
        for e, ch in gw.per_entity.items():
            o, _ = gw.whole(ch, text)
            pm = masked_chars(text, o)
            per[e] = pm if pm is not None else [False] * len(text)
        decoy_entities(item, per, tally, "fastgw")
        # --- split identity (default replacement)
        ref, _ = gw.whole(gw.redact, text)
        streams = []
        pieces = split("values", text, item, rng)
        wire = gw.wire(pieces)
        streams.append(("values/bytes", gw.stream(gw.redact, wire, random_reads(wire, rng))))
        hold: list[int] = []
        times: list[float] = []
        pieces = split("tok", text, item, rng)
        streams.append(("tok/event", gw.stream(gw.redact, gw.wire(pieces), None, hold, times)))
        kind = "prose" if item.kind == "plain" else "all"
        (held_prose if kind == "prose" else held_all).extend(hold)
        for key in {kind, "all"}:
            cpu[key][0] += times[0]
            cpu[key][1] += len(pieces) + 3
        name = ROTATION[k % len(ROTATION)]
        wire = gw.wire(split(name, text, item, rng))
        streams.append((f"{name}/" + ("event" if k % 2 else "bytes"),
                        gw.stream(gw.redact, wire, None if k % 2 else random_reads(wire, rng))))
        stats["streams"] += len(streams)
        for sname, (st, sblocked) in streams:
            if st != ref or sblocked:
                stats["split_mismatch"] += 1
                if len(split_fail) < 20:
                    split_fail.append({"item": item.id, "locale": item.locale, "split": sname, "whole": ref,
                                       "stream": st})
        for m in item.marks:
            if m.kind == "value":
                tally.add(("fastgw", "split", m.entity, item.locale), n=1,
                          bad=int(any(st != ref for _, (st, _) in streams)))
        # --- block
        first = next((i for i, x in enumerate(masked) if x), None)
        _, wblocked = gw.whole(gw.block, text)
        stats["block_whole"] += 1
        if wblocked != (first is not None):
            stats["block_whole_wrong"] += 1
            block_fail.append({"item": item.id, "path": "whole", "expected_block": first is not None})
        bt, bblocked = gw.stream(gw.block, gw.wire(split("tok", text, item, rng)), None)
        expected = text if first is None else text[:first]
        stats["block_stream"] += 1
        if bt != expected or bblocked != (first is not None):
            stats["block_stream_wrong"] += 1
            if len(block_fail) < 20:
                block_fail.append({"item": item.id, "path": "stream", "sent": bt, "expected": expected})
        for m in item.marks:
            if m.kind == "value" and any(masked[m.start:m.end]):
                sent = [i for i in range(m.start, min(m.end, len(bt))) if bt[i:i + 1] == text[i:i + 1]]
                tally.add(("fastgw", "block", m.entity, item.locale), n=1, sent=int(bool(sent)))
        # --- Presidio
        if presidio is not None:
            t0 = time.monotonic()
            spans = presidio.spans(text)
            t_presidio += time.monotonic() - t0
            pm = [False] * len(text)
            byent: dict[str, list[bool]] = {e: [False] * len(text) for e in PRESIDIO_ENTITIES.values()}
            for a, b, e in spans:
                for i in range(a, b):
                    pm[i] = True
                    byent[e][i] = True
            if judge(item, pm, tally, "presidio", examples):
                clean_altered["presidio"]["items"] += 1
            decoy_entities(item, byent, tally, "presidio")
        if progress and (k + 1) % 500 == 0:
            print(f"  {k + 1}/{len(items)} items, {time.monotonic() - t_start:.0f} s", file=sys.stderr, flush=True)

    def q(xs: list[int], p: float) -> float | None:
        if not xs:
            return None
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    return {"tally": {"|".join(k): dict(v) for k, v in tally.c.items()}, "examples": {"|".join(k): v for k, v in
                                                                                      examples.items()},
            "split_failures": split_fail, "block_failures": block_fail, "unaligned": unaligned, "stats": dict(stats),
            "clean_altered": {k: dict(v) for k, v in clean_altered.items()},
            "holdback": {"prose": {"events": len(held_prose), "median": q(held_prose, 0.5), "p90": q(held_prose, 0.9),
                                   "p99": q(held_prose, 0.99), "max": max(held_prose, default=None)},
                         "all": {"events": len(held_all), "median": q(held_all, 0.5), "p90": q(held_all, 0.9),
                                 "p99": q(held_all, 0.99), "max": max(held_all, default=None)}},
            "cpu_us_per_event": {k: (v[0] / v[1] * 1e6 if v[1] else None) for k, v in cpu.items()},
            "seconds": time.monotonic() - t_start, "presidio_seconds": t_presidio,
            "gateway_entities": list(gw.entities)}


# ---- report ----------------------------------------------------------------------------------------------

def _pct(num: int, den: int) -> str:
    return "-" if not den else f"{100 * num / den:.1f}"


def section(res: dict, items: list[Item], meta: dict, presidio: Presidio | None) -> list[str]:
    t = res["tally"]

    def get(*k: str) -> dict:
        return t.get("|".join(k), {})

    locales = [loc for loc in LOCALES if any(i.locale == loc for i in items)]
    nv = sum(1 for i in items for m in i.marks if m.kind == "value")
    nd = sum(1 for i in items for m in i.marks if m.kind == "decoy")
    L = [f"## {meta['date']} — PII detection on a multi-locale corpus"
         + (f": {meta['note']}" if meta.get("note") else ""), "",
         f"- command: `{meta['command']}`",
         f"- fastgw: {meta['fastgw']}; Python {meta['python']}; Faker {meta['faker']}; "
         f"presidio-analyzer {meta['presidio'] or 'not run'}; phonenumbers {meta['phonenumbers']}",
         f"- corpus: `bench/pii_corpus.py`, {len(items)} items (seed {meta['seed']}), {len(locales)} locales, "
         f"{nv} values, {nd} decoys, {sum(len(i.text) for i in items)} characters; harness `bench/pii_eval.py` "
         f"(method in its docstring); run took {res['seconds']:.0f} s"
         + (f" ({res['presidio_seconds']:.0f} s of it in Presidio)" if presidio else ""),
         "- removed = no letter or digit of the value left in the non-streamed output; decoys = share of all "
         "decoys in that locale altered by this entity type's detectors alone (per-entity chains); ✗ marks a cell "
         f"short of issue 14's targets (≥ {TARGET_REMOVED:.0%} removed, < {TARGET_DECOYS:.0%} decoys)", ""]

    def cell(sys_: str, e: str, loc: str | None) -> str:
        if loc is None:
            vs = [get(sys_, "value", e, x) for x in locales]
            ds = [get(sys_, "decoy-by", e, x) for x in locales]
            v = {"n": sum(x.get("n", 0) for x in vs), "removed": sum(x.get("removed", 0) for x in vs)}
            d = {"n": sum(x.get("n", 0) for x in ds), "altered": sum(x.get("altered", 0) for x in ds)}
        else:
            v, d = get(sys_, "value", e, loc), get(sys_, "decoy-by", e, loc)
        if not d and sys_ == "presidio" and e not in PRESIDIO_ENTITIES.values():
            return "n/a"
        r = f"{_pct(v.get('removed', 0), v.get('n', 0))}"
        dd = f"{_pct(d.get('altered', 0), d.get('n', 0))}"
        bad = (v.get("n") and v.get("removed", 0) / v["n"] < TARGET_REMOVED) or \
              (d.get("n") and d.get("altered", 0) / d["n"] >= TARGET_DECOYS)
        return f"{r} / {dd}" + (" ✗" if bad else "")

    systems = ["fastgw"] + (["presidio"] if presidio else [])
    L += ["### Values removed % / decoys altered % per entity type × locale", ""]
    for sys_ in systems:
        L += [f"**{'fastgw pii-detector' if sys_ == 'fastgw' else 'Presidio pattern recognizers'}**", "",
              "| entity | values | " + " | ".join(locales) + " | all |",
              "| --- | ---: | " + " | ".join("---:" for _ in locales) + " | ---: |"]
        for e in ENTITIES:
            n = sum(get(sys_, "value", e, x).get("n", 0) for x in locales)
            L.append(f"| {e} | {n} | " + " | ".join(cell(sys_, e, x) for x in locales) + f" | {cell(sys_, e, None)} |")
        # any detector, per locale
        row = []
        for x in locales + [None]:
            ds = [get(sys_, "decoy", c, y) for c in DECOYS for y in ([x] if x else locales)]
            row.append(_pct(sum(d.get("altered", 0) for d in ds), sum(d.get("n", 0) for d in ds)))
        L.append("| decoys altered by any detector | | " + " | ".join(row) + " |")
        L.append("")
    # side by side, whole corpus
    L += ["### Side by side, all locales", "",
          "| entity | values | fastgw removed % | fastgw partly % | Presidio removed % | Presidio partly % | "
          "fastgw decoys altered % | Presidio decoys altered % |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for e in ENTITIES:
        row = [e]
        vs = {s: [get(s, "value", e, x) for x in locales] for s in ("fastgw", "presidio")}
        ds = {s: [get(s, "decoy-by", e, x) for x in locales] for s in ("fastgw", "presidio")}
        n = sum(x.get("n", 0) for x in vs["fastgw"])
        row.append(str(n))
        for s in ("fastgw", "presidio"):
            if s == "presidio" and (not presidio or e not in PRESIDIO_ENTITIES.values()):
                row += ["n/a", "n/a"]
                continue
            row.append(_pct(sum(x.get("removed", 0) for x in vs[s]), n))
            row.append(_pct(sum(x.get("partly", 0) for x in vs[s]), n))
        for s in ("fastgw", "presidio"):
            if s == "presidio" and (not presidio or e not in PRESIDIO_ENTITIES.values()):
                row.append("n/a")
                continue
            row.append(_pct(sum(x.get("altered", 0) for x in ds[s]), sum(x.get("n", 0) for x in ds[s])))
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    # formats
    L += ["### Values removed % per format (fastgw" + (" vs Presidio" if presidio else "") + ")", "",
          "| entity | format | n | fastgw | " + ("Presidio |" if presidio else ""),
          "| --- | --- | ---: | ---: | " + ("---: |" if presidio else "")]
    fmts = sorted({tuple(k.split("|")[2:]) for k in t if k.startswith("fastgw|fmt|")},
                  key=lambda x: (ENTITIES.index(x[0]), x[1]))
    for e, f in fmts:
        a = get("fastgw", "fmt", e, f)
        p = get("presidio", "fmt", e, f)
        L.append(f"| {e} | {f} | {a.get('n', 0)} | {_pct(a.get('removed', 0), a.get('n', 0))} | "
                 + (f"{_pct(p.get('removed', 0), p.get('n', 0)) if e in PRESIDIO_ENTITIES.values() else 'n/a'} |"
                    if presidio else ""))
    L.append("")
    # decoys by class
    L += ["### Decoys altered % per class (any detector)", "",
          "| decoy | n | fastgw | " + ("Presidio |" if presidio else ""),
          "| --- | ---: | ---: | " + ("---: |" if presidio else "")]
    for c in DECOYS:
        a = [get("fastgw", "decoy", c, x) for x in locales]
        p = [get("presidio", "decoy", c, x) for x in locales]
        n = sum(x.get("n", 0) for x in a)
        L.append(f"| {c} | {n} | {_pct(sum(x.get('altered', 0) for x in a), n)} | "
                 + (f"{_pct(sum(x.get('altered', 0) for x in p), n)} |" if presidio else ""))
    L.append("")
    # decoy formats fastgw alters
    rows = sorted(k.split("|")[2:] for k, v in t.items() if k.startswith("fastgw|decoyfmt|") and v.get("altered"))
    if rows:
        L += ["Decoy formats fastgw alters (any detector):", "",
              "| decoy | format | n | fastgw altered % | " + ("Presidio altered % |" if presidio else ""),
              "| --- | --- | ---: | ---: | " + ("---: |" if presidio else "")]
        for c, f in rows:
            a, pr = get("fastgw", "decoyfmt", c, f), get("presidio", "decoyfmt", c, f)
            L.append(f"| {c} | {f} | {a['n']} | {_pct(a['altered'], a['n'])} | "
                     + (f"{_pct(pr.get('altered', 0), pr.get('n', 0))} |" if presidio else ""))
        L.append("")
    # streaming
    st = res["stats"]
    hb, cpu = res["holdback"], res["cpu_us_per_event"]
    sent = sum(v.get("sent", 0) for k, v in t.items() if k.startswith("fastgw|block|"))
    det = sum(v.get("n", 0) for k, v in t.items() if k.startswith("fastgw|block|"))
    L += ["### Streaming (fastgw)", "",
          f"- output identical whole vs streamed: {st.get('streams', 0) - st.get('split_mismatch', 0)} of "
          f"{st.get('streams', 0)} streamed answers ({len(items)} items × 3 splits: cuts inside every value and "
          f"decoy with random SSE reads; token-like 1–8 characters one event per read; rotating 1/3/7-character, "
          f"random 1–64, single event)",
          f"- block, non-streamed: {st.get('block_whole', 0) - st.get('block_whole_wrong', 0)} of "
          f"{st.get('block_whole', 0)} answers refused exactly when the redact run found something",
          f"- block, streamed: {st.get('block_stream', 0) - st.get('block_stream_wrong', 0)} of "
          f"{st.get('block_stream', 0)} clients got exactly the text before the first detected byte; detected "
          f"values with a byte sent before the block: {sent} of {det} (a value found only in part: the part before "
          f"the detected span goes out)",
          f"- holdback after each release, token-like chunks, one event per read: clean prose items median "
          f"{hb['prose']['median']}, p90 {hb['prose']['p90']}, p99 {hb['prose']['p99']}, max {hb['prose']['max']} "
          f"events ({hb['prose']['events']} events); all other items median {hb['all']['median']}, p90 "
          f"{hb['all']['p90']}, p99 {hb['all']['p99']}, max {hb['all']['max']}",
          f"- CPU in the stream policy (push + release + finish, in-process, one event per read, token-like "
          f"events): {cpu['prose']:.1f} µs/event on clean prose items, {cpu['all']:.1f} µs/event over all items "
          f"(the end-to-end gateway figure is `python -m bench.pii`)" if cpu.get("prose") and cpu.get("all") else
          "- CPU: -",
          f"- clean text altered (masked characters outside every value and decoy): fastgw in "
          f"{res['clean_altered'].get('fastgw', {}).get('items', 0)} items"
          + (f", Presidio in {res['clean_altered'].get('presidio', {}).get('items', 0)}" if presidio else "")
          + (f"; {res['unaligned']} items could not be judged (mask output not aligned)" if res["unaligned"] else ""),
          ""]
    return L


def _git(*a: str) -> str:
    try:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pii_eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=2700, help="corpus items (spread evenly over the locales)")
    p.add_argument("--seed", type=int, default=1, help="corpus seed (splits use it too)")
    p.add_argument("--presidio", action=argparse.BooleanOptionalAction, default=True,
                   help="also run Presidio's pattern recognizers (needs presidio-analyzer: pip install '.[bench]')")
    p.add_argument("--source", type=Path, help="import fastgw from this directory (a checkout or export)")
    p.add_argument("--rev", metavar="COMMIT", help="fastgw as of this commit (git archive into a temporary "
                                                   "directory; the repository is only read)")
    p.add_argument("--write", action="store_true", help="append the section to --results")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--note", default="", help="text added to the section heading")
    p.add_argument("--json", type=Path, help="write all counts, examples of misses and failures here")
    args = p.parse_args(argv)
    command = "python -m bench.pii_eval " + shlex.join(sys.argv[1:] if argv is None else argv)

    if args.rev:
        from bench.pii import export_rev

        args.source = export_rev(args.rev)
    if args.source:
        sys.path.insert(0, str(args.source.resolve()))
        for m in [m for m in sys.modules if m == "fastgw" or m.startswith("fastgw.")]:
            del sys.modules[m]
    import fastgw

    src = Path(fastgw.__file__).resolve().parent.parent
    if args.source:
        rev = (src / ".bench-commit").read_text().strip() if (src / ".bench-commit").exists() else str(src)
        where = f"from {src} (commit {rev})"
    else:
        dirty = _git("status", "--porcelain", "--", "fastgw")
        where = f"working tree at {_git('rev-parse', '--short=12', 'HEAD')}" + \
            (" with uncommitted changes under fastgw/" if dirty else " (fastgw/ clean)")
    presidio = None
    if args.presidio:
        try:
            presidio = Presidio()
        except ImportError as e:
            print(f"presidio-analyzer not importable ({e}); running without it", file=sys.stderr)
    import faker
    import phonenumbers

    meta = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command,
            "fastgw": where, "python": sys.version.split()[0], "faker": faker.VERSION,
            "phonenumbers": phonenumbers.__version__, "presidio": presidio.version if presidio else None,
            "seed": args.seed, "note": args.note}
    t0 = time.monotonic()
    items = make_corpus(args.n, args.seed)
    print(f"corpus: {len(items)} items in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    res = run(items, presidio, args.seed)
    lines = section(res, items, meta, presidio)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({**meta, **res}, indent=1, ensure_ascii=False))
    if args.write:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write("\n" + "\n".join(lines) + "\n")
        print(f"appended to {args.results}", file=sys.stderr)
    st = res["stats"]
    return 1 if st.get("split_mismatch") or st.get("block_stream_wrong") or st.get("block_whole_wrong") else 0


if __name__ == "__main__":
    raise SystemExit(main())
