"""Short form of `python -m bench.pii_eval`: the corpus marks what it says, the harness runs through the gateway's
own output paths, and each of its checks can fail. (The detection targets are the bench's job, not this test's.)"""

from __future__ import annotations

import pytest

from bench import pii_eval
from bench.pii_corpus import ENTITIES, LOCALES, Item, Mark, fullwidth, make_corpus

N = 36


@pytest.fixture(scope="module")
def items() -> list[Item]:
    return make_corpus(N, seed=3)


def _item(text: str, marks: list[tuple[str, str, str]]) -> Item:
    out = []
    for kind, entity, s in marks:
        i = text.index(s)
        out.append(Mark(kind, entity, "t", i, i + len(s), s))
    return Item(0, "en_US", "t", text, out)


def test_corpus_is_seeded_and_marks_sit_where_they_say(items):
    assert len(items) == N and {i.locale for i in items} == set(LOCALES)
    assert [i.text for i in make_corpus(N, seed=3)] == [i.text for i in items]
    assert [i.text for i in make_corpus(N, seed=4)] != [i.text for i in items]
    for it in items:
        for m in it.marks:
            assert it.text[m.start:m.end] == m.text and m.kind in ("value", "decoy")
    assert {m.entity for i in items for m in i.marks if m.kind == "value"} <= set(ENTITIES)
    assert fullwidth("+1 (2)") == "＋１\u3000（２）"


def test_masked_chars_is_exact_and_refuses_what_it_cannot_align():
    text = "tel ０９０ x"
    out = text.replace("０９０", "\x1a" * len("０９０".encode()))  # a byte mask: 9 marks for 3 characters
    assert pii_eval.masked_chars(text, out) == [False] * 4 + [True] * 3 + [False] * 2
    assert pii_eval.masked_chars(text, "tel [REDACTED:PHONE] x") is None
    assert pii_eval.masked_chars(text, "tel 090 x") is None  # changed, but not masked: not a redaction
    assert pii_eval.masked_chars(text, None) is None


def test_judge_counts_removed_partly_kept_and_altered_decoys():
    it = _item("a 555-12 b v1.2.3 c 777", [("value", "PHONE", "555-12"), ("decoy", "VERSION", "v1.2.3"),
                                          ("value", "EMAIL", "777")])
    t = pii_eval.Tally()
    masked = [False] * len(it.text)
    for i in range(2, 6):  # "555-" masked, "12" left
        masked[i] = True
    masked[11] = True  # one character of the decoy
    masked[0] = True  # clean text
    stray = pii_eval.judge(it, masked, t, "x", {})
    assert stray == [0]
    assert t.c[("x", "value", "PHONE", "en_US")] == {"n": 1, "partly": 1}
    assert t.c[("x", "value", "EMAIL", "en_US")] == {"n": 1, "kept": 1}
    assert t.c[("x", "decoy", "VERSION", "en_US")] == {"n": 1, "altered": 1}
    masked = [True] * len(it.text)
    t = pii_eval.Tally()
    pii_eval.judge(it, masked, t, "x", {})
    assert t.c[("x", "value", "PHONE", "en_US")] == {"n": 1, "removed": 1}


def test_runs_through_the_gateway_and_finds_a_plain_value():
    gw = pii_eval.Gateway()
    text = "Write to jane.doe@example.com today, or to jane dot doe at example dot com."
    out, blocked = gw.whole(gw.mask, text)
    assert not blocked
    masked = pii_eval.masked_chars(text, out)
    assert masked is not None and all(masked[9:29]) and not any(masked[:9]) and not any(masked[29:])
    ref, _ = gw.whole(gw.redact, text)
    assert "jane.doe@example.com" not in ref and "[REDACTED:" in ref
    wire = gw.wire([text[:15], text[15:22], text[22:39], text[39:]])  # cuts inside the address
    assert gw.stream(gw.redact, wire, None) == (ref, False)
    assert gw.stream(gw.redact, wire, [7, 100, 101]) == (ref, False)
    assert gw.stream(gw.block, wire, None) == ("Write to ", True)
    assert gw.whole(gw.block, text) == (None, True)


def test_harness_run_counts_and_its_checks_fail_when_the_gateway_misbehaves(items, monkeypatch):
    small = items[:9]
    res = pii_eval.run(small, None, progress=False)
    st = res["stats"]
    assert st["streams"] == 3 * len(small) and st["block_whole"] == st["block_stream"] == len(small)
    assert res["unaligned"] == 0
    n_values = sum(1 for i in small for m in i.marks if m.kind == "value")
    assert sum(v.get("n", 0) for k, v in res["tally"].items() if k.startswith("fastgw|value|")) == n_values
    assert res["holdback"]["all"]["events"] + res["holdback"]["prose"]["events"] > 0
    lines = pii_eval.section(res, small, {"date": "d", "command": "c", "fastgw": "f", "python": "p", "faker": "x",
                                          "phonenumbers": "y", "presidio": None, "seed": 1}, None)
    assert any(line.startswith("| EMAIL |") for line in lines)

    # A stream that loses a character, and a block that never fires: both must be counted.
    real_stream = pii_eval.Gateway.stream

    def lossy(self, chain, wire, reads, held=None, cpu=None):
        text, blocked = real_stream(self, chain, wire, reads, held, cpu)
        return text[:-1], blocked

    monkeypatch.setattr(pii_eval.Gateway, "stream", lossy)
    real_whole = pii_eval.Gateway.whole
    monkeypatch.setattr(pii_eval.Gateway, "whole",
                        lambda self, chain, text: (text, False) if chain is self.block else real_whole(self, chain, text))
    bad = pii_eval.run(small, None, progress=False)["stats"]
    assert bad["split_mismatch"] == 3 * len(small)
    assert bad["block_stream_wrong"] == len(small)
    detected = sum(1 for i in small if any(m.kind == "value" for m in i.marks))
    assert bad["block_whole_wrong"] >= detected - 1 > 0


@pytest.mark.slow  # Presidio (and spaCy under it) is in the bench extra, which `make test-slow` installs
def test_presidio_side_runs_without_a_spacy_model():
    p = pii_eval.Presidio()
    spans = p.spans("mail jane.doe@example.com or call +1 212-555-0123, IBAN GB82 WEST 1234 5698 7654 32")
    assert {e for _, _, e in spans} >= {"EMAIL", "IBAN"}
