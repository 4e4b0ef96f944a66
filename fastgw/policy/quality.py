"""The `quality-scorer` policy: cheap heuristics that score a buffered answer in [0, 1] and refuse the unusable ones.

Each component is a number in [0, 1] (1 is good):

- `non_empty`: 0 when the answer is empty or only whitespace, else 1. A choice
  that ended in a tool call answers with the call, so empty content is fine there.
- `complete`: from the finish reason: 1 for `stop`, `tool_calls`, `function_call`
  (legacy) and none (a provider that does not say); 0.5 for `length` (cut off at
  max_tokens); 0.2 for `content_filter` (the provider removed content). A reason we
  do not know scores 1: we do not refuse answers for what we cannot interpret.
- `not_refusal`: 0.3 when a refusal phrasing ("I'm sorry, but I can't", "I cannot
  help with", "As an AI language model, I", ...) starts within the first 200
  characters *and* the answer is short (< 400 characters after stripping); else 1.
  A long answer that opens with a caveat and then helps is not a refusal.
- `repetition`: 1 - the share of repeated word 4-grams, i.e. distinct 4-grams /
  all 4-grams over the lower-cased words (`\\w+`, so punctuation and markdown do
  not count). This is the "rep-4" degeneration measure of Welleck et al. 2019
  (unlikelihood training), which catches a model stuck in a loop. 1.0 for answers
  under 8 words, where a single repeat would dominate the share.
- `valid_json` (only when the request asked for JSON): 1 when `json.loads` accepts
  the stripped text, or the body of a single fenced block (```json ... ``` or
  ``` ... ```) that is the whole answer; else 0.

The aggregate is the minimum of the components: the worst aspect decides.
Each component measures a defect that makes the answer unusable on its own (empty,
cut off, a refusal, a loop, JSON that does not parse); an average would let four
perfect scores hide a zero (an empty answer would average 0.8 and pass the default
0.7). Over several choices, the aggregate is again the minimum: any bad choice is
a bad response.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from fastgw.policy.settings import OnError, Settings

__all__ = ["QualityPolicy", "QualityScorer", "QualityThresholds", "score_answer", "wants_json", "NAME"]

NAME = "quality-scorer"


class QualityThresholds(Settings):
    min_aggregate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.7


class QualityScorer(Settings):
    action: Literal["block", "observe"] = "block"
    #: Always buffered: it judges the whole answer.
    streaming_mode: Literal["buffered"] = "buffered"
    thresholds: QualityThresholds = msgspec.field(default_factory=QualityThresholds)
    on_error: OnError = "block"

#: Finish reasons and what they say about completeness (others score 1, see above).
_COMPLETE: dict[str | None, float] = {
    None: 1.0, "stop": 1.0, "tool_calls": 1.0, "function_call": 1.0, "length": 0.5, "content_filter": 0.2,
}
#: Finish reasons whose answer is a call, not text.
_CALLS = ("tool_calls", "function_call")

#: A refusal must start within this many characters...
REFUSAL_WINDOW = 200
#: ...of an answer shorter than this (stripped): longer answers go on to help.
REFUSAL_MAX_LEN = 400
_REFUSAL_SCORE = 0.3
#: Word n-gram size and the length under which repetition is not judged.
_NGRAM = 4
_MIN_WORDS = 8

_APOS = r"['\u2019]"  # models write both ' and the typographic ’
_CANT = rf"(?:can(?:not|{_APOS}t|\s+not)|won{_APOS}t|will\s+not)"
_UNABLE = rf"(?:i{_APOS}m|i\s+am|we{_APOS}re|we\s+are)\s+(?:not\s+able|unable)"
_DO = r"(?:help|assist|comply|provide|fulfil|fulfill|support|do\s+that|create|generate|write|engage)"
_REFUSAL = re.compile(
    r"\b(?:"
    rf"(?:i{_APOS}m|i\s+am)\s+(?:so\s+|really\s+|very\s+|truly\s+)?sorry,?\s+(?:but\s+)?"
    rf"(?:(?:i|we)\s+{_CANT}|{_UNABLE})"
    rf"|i\s+{_CANT}\s+{_DO}"
    rf"|{_UNABLE}\s+to\s+{_DO}"
    r"|i\s+must\s+(?:decline|refuse)"
    r"|as\s+an\s+ai(?:\s+language\s+model|\s+assistant|\s+model)?,?\s+i\b"
    r")",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")
#: A whole answer that is one fenced block: ``` or ```json, body, closing ```.
_FENCE = re.compile(r"\A```[ \t]*(?:json)?[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\Z", re.DOTALL | re.IGNORECASE)


def _not_refusal(text: str) -> float:
    stripped = text.strip()
    if len(stripped) >= REFUSAL_MAX_LEN:
        return 1.0
    m = _REFUSAL.search(stripped, 0, REFUSAL_WINDOW + 60)  # +60: a phrase that starts inside the window ends later
    return _REFUSAL_SCORE if m is not None and m.start() < REFUSAL_WINDOW else 1.0


def _repetition(text: str) -> float:
    words = _WORD.findall(text.lower())
    if len(words) < _MIN_WORDS:
        return 1.0
    grams = list(zip(*(words[i:] for i in range(_NGRAM))))
    return len(set(grams)) / len(grams)


def _valid_json(text: str) -> float:
    stripped = text.strip()
    if _loads(stripped):
        return 1.0
    m = _FENCE.match(stripped)
    # A body that holds another fence is more than one block: not "a single fenced block".
    return 1.0 if m is not None and "```" not in m.group(1) and _loads(m.group(1)) else 0.0


def _loads(s: str) -> bool:
    try:
        json.loads(s)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting recurses
        return False
    return True


def score_answer(text: str, finish_reason: str | None, wants_json: bool) -> tuple[float, dict[str, float]]:
    """(aggregate, components) for one answer: each component in [0, 1], the aggregate their minimum."""
    call = finish_reason in _CALLS and not text.strip()
    parts: dict[str, float] = {
        "non_empty": 1.0 if call or text.strip() else 0.0,
        "complete": _COMPLETE.get(finish_reason, 1.0),
        "not_refusal": _not_refusal(text),
        "repetition": _repetition(text),
    }
    # An answer that is a tool call has no text to parse: the call's arguments are not judged here.
    if wants_json and not call:
        parts["valid_json"] = _valid_json(text)
    return min(parts.values()), parts


def wants_json(body: Mapping[str, object] | None) -> bool:
    """True when the request asks for JSON output (`response_format.type` is json_object or json_schema)."""
    rf = body.get("response_format") if isinstance(body, Mapping) else None
    return isinstance(rf, Mapping) and rf.get("type") in ("json_object", "json_schema")


class QualityPolicy:
    """Compiled quality-scorer settings: judges every choice of a buffered answer."""

    __slots__ = ("action", "min_aggregate")

    name = NAME

    def __init__(self, settings: QualityScorer) -> None:
        self.action = settings.action
        self.min_aggregate = settings.thresholds.min_aggregate

    def evaluate(self, texts: Mapping[int, str], finish: Mapping[int, str | None],
                 wants_json: bool) -> tuple[bool, float, dict[int, dict[str, float]]]:
        """(blocked, aggregate, details by choice index): the aggregate is the worst choice's.

        A choice is any index in `texts` or `finish` (a tool-call-only choice may have no text).
        No choice at all is no answer: aggregate 0.
        """
        details: dict[int, dict[str, float]] = {}
        for i in sorted(set(texts) | set(finish)):
            agg, parts = score_answer(texts.get(i, ""), finish.get(i), wants_json)
            details[i] = {"aggregate": agg, **parts}
        aggregate = min((d["aggregate"] for d in details.values()), default=0.0)
        blocked = self.action == "block" and aggregate < self.min_aggregate
        return blocked, aggregate, details
