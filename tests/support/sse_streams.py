"""Building OpenAI chat SSE streams for tests: prose with PII, cut into events and TCP pieces at random."""

from __future__ import annotations

import orjson
from hypothesis import strategies as st

from fastgw.api.sse import DONE
from fastgw.policy.pii import PiiDetector, PiiPolicy
from fastgw.proto.sse import encode_data

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then", "some", "more", "text",
         "caf\u00e9", "na\u00efve", "\u65e5\u672c", "\U0001f600", "write", "to", "call", "me", "at", "or", "via"]
PII = ["joe.bloggs@example.com", "123-45-6789", "4111 1111 1111 1111", "+44 20 7946 0958", "(212) 555-0147",
       "192.168.10.20", "GB82WEST12345698765432", "AKIAIOSFODNN7EXAMPLE",
       "sk-proj-abcdefghijklmnopqrstuvwxyz0123", "2001:db8::8a2e:370:7334",
       "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ", "-----BEGIN RSA PRIVATE KEY-----",
       "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345"]


def chunk(content: str | None = None, finish: str | None = None, role: bool = False, idx: int = 0) -> bytes:
    delta: dict = {"role": "assistant", "content": ""} if role else ({} if content is None else {"content": content})
    return encode_data(orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                     "model": "m", "choices": [{"index": idx, "delta": delta, "logprobs": None,
                                                                "finish_reason": finish}]}))


def build_stream(pieces: list[str]) -> bytes:
    return b"".join([chunk(role=True)] + [chunk(p) for p in pieces] + [chunk(finish="stop"), DONE])


def split_text(draw, text: str) -> list[str]:
    """Cut a text into event contents at random character positions (as a model's tokens would)."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=len(text) // 2 + 1)))
    out, prev = [], 0
    for c in cuts + [len(text)]:
        if c > prev:
            out.append(text[prev:c])
            prev = c
    return out


@st.composite
def streams(draw):
    parts = []
    for _ in range(draw(st.integers(1, 14))):
        if draw(st.integers(0, 4)) == 0:
            parts.append(draw(st.sampled_from(PII)))
        else:
            parts.append(draw(st.sampled_from(WORDS)))
        parts.append(draw(st.sampled_from([" ", " ", ", ", ". ", "\n", ""])))
    text = "".join(parts)
    pieces = split_text(draw, text)
    wire = build_stream(pieces)
    cuts = draw(st.lists(st.integers(0, len(wire)), max_size=30))
    if draw(st.booleans()):
        cuts = list(range(0, len(wire), draw(st.integers(1, 7))))  # down to 1-byte TCP segments
    return text, pieces, wire, cuts


_POLICIES: dict[str, PiiPolicy] = {}


def pii_policy(action: str = "redact") -> PiiPolicy:
    """A default pii-detector policy with this action, compiled once per test process."""
    if action not in _POLICIES:
        p = PiiPolicy(PiiDetector(action=action))
        p.allocate_scratch()
        _POLICIES[action] = p
    return _POLICIES[action]

