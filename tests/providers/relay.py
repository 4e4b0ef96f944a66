"""What the relay makes of a translator's structured chunks, for the provider tests: each `feed`'s chunk dicts
encoded once (`encode_chunks`), and `data: [DONE]` written by the relay after a clean `finish`.

Every call checks the interface: translators return lists of chunk dicts and never the [DONE] sentinel;
after `finish` the usage chunk (`choices: []`), when there is one, is the last.
"""

from __future__ import annotations

from fastgw.api.sse import DONE
from fastgw.providers.base import Translator
from fastgw.providers.chunks import encode_chunks


def _checked(chunks: object) -> list[dict]:
    assert isinstance(chunks, list), f"a translator returns a list of chunk dicts, not {type(chunks).__name__}"
    for c in chunks:
        assert isinstance(c, dict) and c.get("object") == "chat.completion.chunk", c
    return chunks


def fed(t: Translator, data: bytes) -> bytes:
    """The bytes the relay writes for `t.feed(data)`."""
    return encode_chunks(_checked(t.feed(data)))


def finished(t: Translator) -> bytes:
    """The bytes the relay writes for `t.finish()` and the clean end of the stream."""
    chunks = _checked(t.finish())
    usage = [i for i, c in enumerate(chunks) if c["choices"] == []]
    assert usage in ([], [len(chunks) - 1]), "the usage chunk is the last"
    return encode_chunks(chunks) + DONE
