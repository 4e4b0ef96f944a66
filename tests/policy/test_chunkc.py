"""The common chat chunk's C reader (fastgw/policy/stream/_chunkc.c) reads what the typed view reads: where it
returns a tuple, `plain_choice_py` (the typed view, msgspec's decode) returns the same one; where it returns None,
the chunk takes the typed view. It must read the chunks models stream (else it saves nothing) and never read a chunk
differently: on generated chunks, on every mutation of them, and on the shapes it declines by design."""

from __future__ import annotations

import json
import random

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.policy.stream._chunkc import PlainReader, plain_choice
from fastgw.policy.stream.chat_view import PlainChoice, decode_chunk


def plain_choice_py(data: str) -> PlainChoice | None:
    """What `plain_choice` must return where it returns a tuple, read through the typed view the policy falls back
    on: the chunk's one choice when it is plain text (no tool calls, no logprobs) and its usage null; None
    otherwise. The C reader may return None where this does not (it declines every shape it does not read itself),
    never another tuple."""
    try:
        chunk = decode_chunk(data)
    except msgspec.DecodeError:  # (ValidationError is one)
        return None
    if chunk.usage is not None or chunk.choices is None or len(chunk.choices) != 1:
        return None
    ch = chunk.choices[0]
    d = ch.delta
    if ch.logprobs is not None or (d is not None and d.tool_calls is not None):
        return None
    if d is None:
        return ch.index, ch.text, None, None, None, ch.finish_reason
    return ch.index, ch.text, d.content, d.refusal, d.reasoning_content, ch.finish_reason


_BASE = {"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion.chunk", "created": 1741569952,
         "model": "gpt-4o-2024-08-06", "service_tier": "default", "system_fingerprint": "fp_f9f4fb6dbf"}

#: Any text a model may stream: every code point but lone surrogates (a str with one is not valid UTF-8).
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_maybe = st.none() | _text
#: Skipped members' values: what the reader skips itself (strings that no serializer escapes, numbers, literals).
_scalar = (st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e, blacklist_characters='"\\'), max_size=12)
           | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans()
           | st.none())


@st.composite
def plain_chunk_dicts(draw: st.DrawFn) -> tuple[dict, str]:
    """A chunk of the one shape the reader reads, its members in any order, and how to serialize it."""
    delta = {k: draw(_maybe) for k in ("role", "content", "refusal", "reasoning_content") if draw(st.booleans())}
    if draw(st.booleans()):
        delta["tool_calls"] = None
    choice: dict[str, object] = {}
    for k, v in (("index", draw(st.integers(0, 10**9 - 1))), ("delta", delta if draw(st.booleans()) else None),
                 ("text", draw(_maybe)), ("finish_reason", draw(st.none() | st.sampled_from(["stop", "length"]))),
                 ("logprobs", None)):
        if draw(st.booleans()):
            choice[k] = v
    top: dict[str, object] = {k: v for k, v in _BASE.items() if draw(st.booleans())}
    top.update(draw(st.dictionaries(st.sampled_from(["x", "obfuscation", "created_at", "n"]), _scalar, max_size=2)))
    top["choices"] = [choice]
    if draw(st.booleans()):
        top["usage"] = None
    items = list(top.items())
    random.Random(draw(st.integers(0, 2**32))).shuffle(items)
    return dict(items), draw(st.sampled_from(["orjson", "ascii", "utf8", "spaced", "indented"]))


def _dump(top: dict, how: str) -> str:
    """A chunk serialized as providers do."""
    if how == "orjson":
        return orjson.dumps(top).decode()
    return json.dumps(top, ensure_ascii=how == "ascii", indent=1 if how == "indented" else None,
                      separators=(", ", ": ") if how == "spaced" else (",", ":"))


@st.composite
def plain_chunks(draw: st.DrawFn) -> str:
    return _dump(*draw(plain_chunk_dicts()))


@settings(max_examples=600, deadline=None)
@given(plain_chunks())
def test_the_plain_shape_is_read_as_the_typed_view_reads_it(data: str) -> None:
    got = plain_choice(data)
    assert got is not None, data
    assert got == plain_choice_py(data), data
    assert type(got[0]) is int and all(v is None or type(v) is str for v in got[1:])


#: What a mutation inserts: JSON's structure, escapes, whitespace, digits, quotes, non-ASCII and control bytes.
_BITS = ['"', "\\", "\\u", "\\ud83d", "\\ude00", "\\u00e9", "{", "}", "[", "]", ",", ":", " ", "\n", "\t", "\x00",
         "\x1f", "0", "-", "1e5", ".5", "null", "true", "é", "😀", '"content":', '"tool_calls":[]', '"x":{}',
         '"usage":{}', '"logprobs":{}', '{"index":1}', '"index":0', '"delta":{"reasoning":"r"}']


def _mutated(data: str, edits: list) -> str:
    for how, where, bit, span in edits:
        at = int(where * len(data))
        if how == "insert":
            data = data[:at] + bit + data[at:]
        elif how == "delete":
            data = data[:at] + data[at + span:]
        elif how == "replace":
            data = data[:at] + bit + data[at + len(bit):]
        else:
            data = data[:at + span] + data[at:]
    return data


@settings(max_examples=1500, deadline=None)
@given(plain_chunks(), st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace", "repeat"]),
                                          st.floats(0, 1), st.sampled_from(_BITS), st.integers(1, 8)),
                                min_size=1, max_size=3))
def test_a_mutated_chunk_is_read_as_the_typed_view_reads_it_or_left_to_it(data: str, edits: list) -> None:
    data = _mutated(data, edits)
    got = plain_choice(data)
    assert got is None or got == plain_choice_py(data), data


_edits = st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace", "repeat"]), st.floats(0, 1),
                            st.sampled_from(_BITS), st.integers(1, 8)), max_size=2)
#: What changes from one chunk of a stream to the next: the text (nearly always), the bytes after it
#: (`obfuscation`'s padding), the bytes before it, the fields present, the chunk's bytes anywhere.
_step = st.tuples(st.sampled_from(["text", "text", "text", "after", "before", "field", "same"]), _maybe,
                  _scalar, st.booleans() | st.just(False), _edits)


def _read(reader: PlainReader, data: str) -> tuple | None:
    """A reader's answer as plain_choice gives it: a str is choice 0's content alone."""
    got = reader.read(data)
    return (0, None, got, None, None, None) if isinstance(got, str) else got


def _texts_at(top: dict) -> list[tuple[dict, str]]:
    choice = top["choices"][0]
    where = [(choice, "text")] if "text" in choice else []
    delta = choice.get("delta")
    if isinstance(delta, dict):
        where += [(delta, k) for k in ("content", "refusal", "reasoning_content") if k in delta]
    return where


@settings(max_examples=400, deadline=None)
@given(plain_chunk_dicts(), st.lists(_step, min_size=1, max_size=12))
def test_a_stream_s_reader_reads_each_chunk_as_read_alone(first: tuple[dict, str], steps: list) -> None:
    """A stream's PlainReader reads from the state its last whole read kept wherever the bytes before the text
    value are the same, and takes that read's answer wherever the bytes after it are the same too: every chunk's
    answer must be plain_choice's (and so the typed view's), whatever changed and wherever a byte went wrong."""
    top, how = first
    reader = PlainReader()
    chunks = [_dump(top, how)]
    for kind, text, scalar, flag, edits in steps:
        top = json.loads(json.dumps(top))
        where = _texts_at(top)
        if kind == "text" and where:
            obj, key = where[len(chunks) % len(where)]
            obj[key] = text
        elif kind == "after":
            top["obfuscation"] = scalar  # (a new member goes last)
        elif kind == "before":
            top = {"id": scalar, **{k: v for k, v in top.items() if k != "id"}}
        elif kind == "field":
            choice = top["choices"][0]
            if flag:
                choice["finish_reason"] = "stop" if choice.get("finish_reason") is None else None
            elif isinstance(choice.get("delta"), dict):
                choice["delta"] = {"role": "assistant", **choice["delta"]} if "role" not in choice["delta"] else {
                    k: v for k, v in choice["delta"].items() if k != "role"}
        chunks.append(_mutated(_dump(top, how), edits))
    for data in chunks:
        got = _read(reader, data)
        assert got == plain_choice(data), (chunks, data)
        assert got is None or got == plain_choice_py(data), data


_CHOICE = {"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None}


def _chunk(**top: object) -> str:
    return orjson.dumps({**_BASE, "choices": [_CHOICE], **top}).decode()


def _with(**choice: object) -> str:
    return orjson.dumps({**_BASE, "choices": [{**_CHOICE, **choice}]}).decode()


def _stream(*texts: str, after: str = "") -> list[str]:
    return [_chunk(choices=[{**_CHOICE, "delta": {"content": t}}], **({"obfuscation": after * i} if after else {}))
            for i, t in enumerate(texts)]


@pytest.mark.parametrize("chunks", [
    _stream("a", "b", "é", "😀", "", "\n", '"', "x" * 3000),
    _stream("a", "b", "c", after="z"),  # the bytes after the text differ: read from the mark
    [*_stream("a", "b"), _chunk(choices=[{**_CHOICE, "delta": {"content": "c", "tool_calls": []}}]),
     *_stream("d")],  # declined after the mark: the same answer as read whole (None), the mark kept
    [*_stream("a"), _chunk(choices=[{**_CHOICE, "delta": {"content": None}}]), *_stream("b")],
    [*_stream("a"), _chunk(choices=[{**_CHOICE, "delta": {"content": 5}}]), *_stream("b")],
    [*_stream("a"), _stream("b")[0][:-3], _stream("b")[0] + " x", *_stream("c")],  # cut short, trailing bytes
    [*_stream("a"), '{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"', *_stream("b")],  # shorter than the mark
    [*_stream("a"), _stream("X")[0].replace('"X"', '"\\ud83d"'), *_stream("b")],  # a lone surrogate escaped
    [_chunk(choices=[{**_CHOICE, "delta": {"role": "assistant", "content": ""}}]), *_stream("a", "b")],
    [_chunk(choices=[{"index": 0, "text": "a", "finish_reason": None}]),
     _chunk(choices=[{"index": 0, "text": "b", "finish_reason": None}]),
     _chunk(choices=[{"index": 0, "text": "c", "finish_reason": "stop"}])],  # completions' text, at the choice
    [_chunk(choices=[{**_CHOICE, "delta": {"content": "a", "refusal": "r"}}]),
     _chunk(choices=[{**_CHOICE, "delta": {"content": "b", "refusal": "s"}}]),
     _chunk(choices=[{**_CHOICE, "delta": {"content": "b", "refusal": "s", "content": "c"}}]).replace(
         '"refusal":"s"}', '"refusal":"s","content":"c"}')],  # a member twice after the mark
])
def test_a_stream_s_reader_by_example(chunks: list[str]) -> None:
    reader = PlainReader()
    for data in chunks:
        assert _read(reader, data) == plain_choice(data), data


@pytest.mark.parametrize("after", ["", "q"])
def test_a_stream_s_reader_reads_its_stream_s_text(after: str) -> None:
    """Choice 0's content alone comes as the str, read whole, from the mark with the same bytes after the text
    and without; any other answer as plain_choice's tuple."""
    reader = PlainReader()
    assert [reader.read(d) for d in _stream("Hel", "lo", " wor", "ld", after=after)] == ["Hel", "lo", " wor", "ld"]
    for data in (_chunk(choices=[{**_CHOICE, "delta": {"content": None}}]),
                 _chunk(choices=[{**_CHOICE, "delta": {"content": "a"}, "finish_reason": "stop"}]),
                 _chunk(choices=[{**_CHOICE, "index": 1}]), _chunk(choices=[{**_CHOICE, "delta": {"refusal": "r"}}]),
                 _chunk(choices=[{**_CHOICE, "delta": {"content": "a", "reasoning_content": "b"}}]), *_stream("x")):
        got = reader.read(data)
        assert got == (plain_choice(data)[2] if data in _stream("x") else plain_choice(data)), data
    reader = PlainReader()  # a mark taken on a null content: the strings after it come alone as well
    first = _chunk(choices=[{**_CHOICE, "delta": {"content": None}}])
    assert [reader.read(d) for d in (first, *_stream("a", "b"))] == [plain_choice(first), "a", "b"]


@pytest.mark.parametrize("data", [
    _with(delta={"content": None, "tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
    _with(delta={"tool_calls": []}),  # the typed view reads an empty list: left to it
    _with(delta={"content": "a", "reasoning": "b"}),  # a field the typed view does not know: the loose view's
    _with(delta={"function_call": {"name": "f"}}),
    _with(logprobs={"content": [{"token": "hi", "logprob": -0.1, "top_logprobs": []}]}),
    _with(native_finish_reason="stop"),  # another member of the choice
    _with(index=-1), _with(index=1.0), _with(index=1234567890), _with(index="0"), _with(index=True),
    _with(finish_reason=1), _with(text=["a"]), _with(delta=[]), _with(delta="x"),
    _chunk(usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}),
    _chunk(usage=0),
    orjson.dumps({**_BASE, "choices": []}).decode(),
    orjson.dumps({**_BASE, "choices": [_CHOICE, {**_CHOICE, "index": 1}]}).decode(),
    orjson.dumps({**_BASE, "choices": None}).decode(),
    orjson.dumps(_BASE).decode(),  # no choices
    _chunk(extra={"nested": True}), _chunk(extra=[1]), _chunk(extra="esc\"aped"),
    '{"choices":[{"delta":{"content":"a","content":"b"}}]}',  # a member twice
    '{"choices":[{"index":0,"index":1}]}',
    '{"choices":[{}],"choices":[{}]}',
    '{"choi\\u0063es":[{"delta":{"content":"a"}}]}',  # an escape in a name
    '{"choices":[{"delta":{"content":"\\ud83d"}}]}',  # a lone surrogate
    '{"choices":[{"delta":{"content":"\\ude00\\ud83d"}}]}',
    '{"choices":[{"delta":{"content":"\\x"}}]}',
    '{"choices":[{"delta":{"content":"\\u12"}}]}',
    '{"choices":[{"delta":{"content":"a\x01b"}}]}',  # a raw control character
    '{"choices":[{"delta":{"content":"a"}}]} x', '{"choices":[{"delta":{"content":"a"}}]}}',
    '{"choices":[{"delta":{"content":"a"}}],}', '{"choices":[{"delta":{"content":"a"},}]}',
    '{"choices":[{"delta":{"content":"a"}}]', '{"choices":[{"delta":{"content":"a', '{"n":01,"choices":[{}]}',
    '{"n":1.,"choices":[{}]}', '{"n":-,"choices":[{}]}', '{"n":nul,"choices":[{}]}', '{"n":.5,"choices":[{}]}',
    '\u00a0{"choices":[{}]}', '{"choices":[{}]}\u00a0', "", "{", "[]", "null",
])
def test_shapes_left_to_the_typed_view(data: str) -> None:
    assert plain_choice(data) is None, data


@pytest.mark.parametrize("data, expected", [
    ('{"choices":[{}]}', (0, None, None, None, None, None)),
    ('{"choices":[{"delta":null,"text":"t","finish_reason":"stop","logprobs":null}],"usage":null}',
     (0, "t", None, None, None, "stop")),
    (' {\n"choices" :\t[ { "index" : 7 , "delta" : { "role" : "assistant" , "content" : "" , "tool_calls" : null'
     ' } } ] }\r\n', (7, None, "", None, None, None)),
    ('{"choices":[{"delta":{"content":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u20ac\\ud83d\\ude00\\u0000"}}]}',
     (0, None, '"\\/\b\f\n\r\té€😀\x00', None, None, None)),
    ('{"choices":[{"delta":{"refusal":"no","reasoning_content":"hm"}}],"n":-0.5e-3,"t":true,"f":false}',
     (0, None, None, "no", "hm", None)),
    ('{"choices":[{"index":999999999,"delta":{"content":"ünï😀"}}]}', (999999999, None, "ünï😀", None, None, None)),
])
def test_by_example(data: str, expected: tuple) -> None:
    assert plain_choice(data) == expected == plain_choice_py(data)


def test_a_long_escaped_string() -> None:
    """Decoded in a buffer of its own past the reader's 256 bytes on the stack."""
    text = "é\n\"" * 400 + "😀" * 100
    for data in (json.dumps({"choices": [{"delta": {"content": text}}]}),
                 json.dumps({"choices": [{"delta": {"content": text}}]}, ensure_ascii=False)):
        assert plain_choice(data) == (0, None, text, None, None, None) == plain_choice_py(data)


def test_wrong_calls() -> None:
    with pytest.raises(TypeError):
        plain_choice(b'{"choices":[{}]}')  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PlainReader().read(b'{"choices":[{}]}')  # type: ignore[arg-type]
    assert PlainReader().read('{"choices":[{"delta":{"content":"\ud800"}}]}') is None
    with pytest.raises(TypeError):
        plain_choice()  # type: ignore[call-arg]
    assert plain_choice('{"choices":[{"delta":{"content":"\ud800"}}]}') is None  # a str no UTF-8 can carry
