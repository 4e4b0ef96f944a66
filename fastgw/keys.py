"""Gateway API keys: make a new one, or hash one for the config (`fastgw keys new`, `fastgw keys hash`).

The config stores only each key's SHA-256, never the key. A config file is copied,
committed, pasted into tickets and printed by `fastgw config`; a digest found there
does not let anyone call the gateway, while a key would. Keys are 256 random bits, so
a plain (unsalted, fast) SHA-256 is enough: there is no dictionary to attack, and the
gateway can check a key with one hash and one dict lookup per request. The key itself
is shown once, by `fastgw keys new`, and is the caller's to keep.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from typing import TextIO

__all__ = ["DEFAULT_PREFIX", "new_key", "hash_key", "main_new", "main_hash"]

#: Marks a string as a fastgw key (secret scanners and humans can tell it from an upstream key).
DEFAULT_PREFIX = "fgw-"


def new_key(prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """A fresh random key (`prefix` + 32 random bytes, URL-safe base64) and its SHA-256 hex digest."""
    key = prefix + secrets.token_urlsafe(32)
    return key, hash_key(key)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of `key` (UTF-8) with surrounding whitespace and newlines stripped."""
    key = key.strip()
    if not key:
        raise ValueError("empty key: nothing to hash")
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def main_new(out: TextIO) -> int:
    """`fastgw keys new`: print a new key and its digest (put only the sha256 line in the config)."""
    key, digest = new_key()
    out.write(f"key: {key}\nsha256: {digest}\n")
    return 0


def main_hash(stdin: TextIO, out: TextIO, err: TextIO | None = None) -> int:
    """`fastgw keys hash`: read one key from stdin (e.g. `echo $KEY | fastgw keys hash`), print its digest."""
    err = err if err is not None else sys.stderr
    text = stdin.read().strip()
    if not text:
        err.write("fastgw keys hash: no key on stdin\n")
        return 2
    if "\n" in text:
        err.write("fastgw keys hash: expected one key on stdin, got several lines\n")
        return 2
    out.write(hash_key(text) + "\n")
    return 0
