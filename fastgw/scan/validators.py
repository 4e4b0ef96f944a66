"""Checksum and range rules that turn a regex candidate into a detection: pure `bytes -> bool` functions.

Each validator sees exactly the bytes Hyperscan matched (canonical bytes, ASCII but
for e-mail) and answers whether they are a real value of the entity; the `*_context`
ones also see the canonical bytes before the match (`Pattern.context_validator`) and
look there for a label that confirms or vetoes it. They run on every candidate end
offset, so they are cheap and never raise.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import json
import re

__all__ = [
    "IBAN_LENGTHS",
    "card",
    "email",
    "iban",
    "ipv4",
    "ipv4_context",
    "ipv6",
    "jwt",
    "luhn",
    "openai_key",
    "ssn",
    "ssn_context",
    "iban_grouped_hold",
]

_DIGITS = frozenset(b"0123456789")
_DIGIT_BYTES = b"0123456789"
_HEX_COLON = b"0123456789abcdefABCDEF:"
_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _digits(data: bytes) -> bytes:
    """The ASCII digits of `data`, separators dropped."""
    return bytes(c for c in data if c in _DIGITS)


def luhn(digits: bytes) -> bool:
    """Luhn mod-10 checksum over ASCII digits (ISO/IEC 7812-1, annex B)."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = c - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card(data: bytes) -> bool:
    """Payment card: 13-19 digits, major-industry digit 2-6 (ISO/IEC 7812-1), Amex/2-series lengths, Luhn."""
    d = _digits(data)
    if not 13 <= len(d) <= 19 or d[0] not in b"23456":
        return False
    if d[:2] in (b"34", b"37") and len(d) != 15:  # American Express numbers are always 15 digits
        return False
    # The only issued 2-series is Mastercard's 2221-2720 (16 digits); this keeps "2024..." timestamps and ids out.
    if d[0] == 50 and (len(d) != 16 or not b"2221" <= d[:4] <= b"2720"):
        return False
    if d.count(d[:1]) == len(d):
        return False
    return luhn(d)


def ssn(data: bytes) -> bool:
    """US SSN: area not 000, 666 or 9xx, group not 00, serial not 0000 (SSA, "SSN Randomization", 2011)."""
    d = _digits(data)
    if len(d) != 9:
        return False
    area, group, serial = d[:3], d[3:5], d[5:]
    return area != b"000" and area != b"666" and area[0] != 57 and group != b"00" and serial != b"0000"


#: How far back (bytes, same line) a label is looked for: a label and its value sit within a few words of each
#: other (Presidio's context enhancer looks 5 words back).
LABEL_BYTES = 32

_SSN_WORD = re.compile(rb"(?<![A-Za-z])(?:ssn|ss#|ss no|social security|soc\.? ?sec|seguro social|ssa)(?![A-Za-z])",
                       re.IGNORECASE)
# The last word before the value, up to six separators away ('AssemblyVersion("1.2.3.4', 'build: ', 'v '):
# a version word further back labels something else ('Q V 日本, 10.0.0.1').
_VERSION_WORD = re.compile(rb"(?<![A-Za-z])(?:[a-z]*version|ver|v|build|release|rev|revision|oid)"
                           rb"[^A-Za-z0-9\x80-\xff]{0,6}\Z", re.IGNORECASE)


def _near(before: bytes) -> bytes:
    """The last LABEL_BYTES of `before`'s last line."""
    return before[before.rfind(b"\n") + 1:][-LABEL_BYTES:]


def ssn_context(data: bytes, before: bytes) -> bool:
    """A bare 9-digit SSN ('SSN 888742989'): only with an SSN word (SSN, social security, SSA ...) just before it.

    Nine digits alone are order numbers, ids and zip+4 codes as often as SSNs; Presidio scores them "weak"
    and needs the same context words to report them.
    """
    return _SSN_WORD.search(_near(before)) is not None


_IBAN_GROUPED_PREFIX = re.compile(rb"(?<![A-Za-z0-9])(?:[a-z]{2}\d{2}(?: [a-z0-9]{1,4})*|[a-z]{2}\d) ?\Z")
_LOWER = bytes(range(97, 123))


def iban_grouped_hold(run: bytes) -> int:
    """The holdback of a lower-case grouped IBAN in a run of lower-case letters, digits and spaces: from where a
    match could be in progress ('... pay to gb16 lkbb 86'), or the last word of at most two letters ('... gb')."""
    if run.translate(None, _LOWER + b" "):  # digits are left: an IBAN may have begun
        m = _IBAN_GROUPED_PREFIX.search(run)
        if m is not None:
            return len(run) - m.start()
    w = len(run) - len(run.rstrip(_LOWER))
    return w if w <= 2 and (w == len(run) or not run[-w - 1:-w].isalnum()) else 0


def ipv4_context(data: bytes, before: bytes) -> bool:
    """An address, not the tail of a dotted run ('4.20.18.6.20') nor a labelled version ('AssemblyVersion: 1.11.77.94')."""
    near = _near(before)
    if near[-1:] == b"." and near[-2:-1].isdigit() or near[-1:] == b"+":
        return False  # the tail of a dotted run, or the dotted groups of a phone number ('+41.78.123.45.67')
    # Only version words veto: the phone vetoes ('ip', 'id', 'model') would hide 'IP 10.0.0.1'.
    return _VERSION_WORD.search(near[-16:]) is None


def ipv4(data: bytes) -> bool:
    """Dotted-quad IPv4: four octets 0-255, no leading zeros (RFC 791; `ipaddress` refuses them: octal to inet_aton)."""
    parts = data.split(b".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or len(p) > 3 or not p.isdigit() or (len(p) > 1 and p[0] == 48) or int(p) > 255:
            return False
    return True


def ipv6(data: bytes) -> bool:
    """IPv6 text (RFC 4291 2.2, via `ipaddress`) with 2+ non-empty groups and a decimal digit (not `d::`, `dead::beef`)."""
    # The cheap conditions first: a run such as '::1 ::1 ...' or 'a:a:a:...' offers a candidate every few bytes.
    if len(data.translate(None, _DIGIT_BYTES)) == len(data) or not data.isascii():
        return False
    groups = data.split(b":")
    if len(groups) - groups.count(b"") < 2:
        return False
    if len(groups) == 8 and b"" not in groups and max(map(len, groups)) <= 4 and not data.translate(None, _HEX_COLON):
        return True  # eight groups of 1-4 hex digits: always an address
    return _ipv6_text(data)


@functools.lru_cache(maxsize=1024)
def _ipv6_text(data: bytes) -> bool:
    try:
        ipaddress.IPv6Address(data.decode("ascii"))
    except ValueError:
        return False
    return True


#: IBAN length per country (SWIFT IBAN Registry, release 98, 2024); an unlisted country is not an IBAN.
IBAN_LENGTHS: dict[bytes, int] = {
    b"AD": 24, b"AE": 23, b"AL": 28, b"AT": 20, b"AZ": 28, b"BA": 20, b"BE": 16, b"BG": 22, b"BH": 22,
    b"BR": 29, b"BY": 28, b"CH": 21, b"CR": 22, b"CY": 28, b"CZ": 24, b"DE": 22, b"DK": 18, b"DO": 28,
    b"EE": 20, b"EG": 29, b"ES": 24, b"FI": 18, b"FO": 18, b"FR": 27, b"GB": 22, b"GE": 22, b"GI": 23,
    b"GL": 18, b"GR": 27, b"GT": 28, b"HR": 21, b"HU": 28, b"IE": 22, b"IL": 23, b"IQ": 23, b"IS": 26,
    b"IT": 27, b"JO": 30, b"KW": 30, b"KZ": 20, b"LB": 28, b"LC": 32, b"LI": 21, b"LT": 20, b"LU": 20,
    b"LV": 21, b"LY": 25, b"MC": 27, b"MD": 24, b"ME": 22, b"MK": 19, b"MR": 27, b"MT": 31, b"MU": 30,
    b"NL": 18, b"NO": 15, b"PK": 24, b"PL": 28, b"PS": 29, b"PT": 25, b"QA": 29, b"RO": 24, b"RS": 22,
    b"RU": 33, b"SA": 24, b"SC": 31, b"SD": 18, b"SE": 24, b"SI": 19, b"SK": 24, b"SM": 27, b"ST": 25,
    b"SV": 28, b"TL": 23, b"TN": 24, b"TR": 26, b"UA": 29, b"VA": 22, b"VG": 24, b"XK": 20,
}


def iban(data: bytes) -> bool:
    """IBAN: listed country and its length, check digits 02-98, mod-97 == 1 (ISO 13616-1, ISO 7064 MOD 97-10)."""
    s = data.replace(b" ", b"").upper()  # ISO 13616-1 prints capitals, but people and models write 'de89...'
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not (s.isascii() and s.isalnum()):
        return False
    if not (b"02" <= s[2:4] <= b"98"):
        return False
    # Letters become two digits (A=10 ... Z=35); int(base 36) of one character gives exactly that.
    n = "".join(str(int(chr(c), 36)) for c in s[4:] + s[:4])
    return int(n) % 97 == 1


def email(data: bytes) -> bool:
    """Address shape (RFC 5321 4.5.3.1, RFC 6531 for UTF-8): local part <= 64, no empty dot-atom, labels <= 63
    bytes not edged by '-', UTF-8 well formed."""
    local, _, domain = data.rpartition(b"@")
    if not local or len(local) > 64 or len(data) > 254:
        return False
    if local.startswith(b".") or local.endswith(b".") or b".." in local:
        return False
    labels = domain.split(b".")
    if len(labels) < 2 or not data.isascii() and not _utf8(data):
        return False
    for label in labels:
        if not label or len(label) > 63 or label.startswith(b"-") or label.endswith(b"-"):
            return False
    return True


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def openai_key(data: bytes) -> bool:
    """OpenAI `sk-[proj-|svcacct-|admin-]` key: not `sk-ant-`, 20+ body characters with letters and digits."""
    if data.startswith(b"sk-ant-"):
        return False
    body = data[3:]
    for prefix in (b"proj-", b"svcacct-", b"admin-"):
        if body.startswith(prefix):
            body = body[len(prefix):]
            break
    return len(body) >= 20 and any(c in _DIGITS for c in body) and any(c in _LETTERS for c in body)


def jwt(data: bytes) -> bool:
    """JWS compact serialisation (RFC 7515 section 7.1): the first segment is base64url JSON with an `alg` member."""
    return _jwt_header(data.split(b".", 1)[0])


# The engine validates every end offset of a candidate, i.e. once per signature byte with the same header:
# caching the header's verdict makes a token cost one decode instead of one per byte.
@functools.lru_cache(maxsize=256)
def _jwt_header(head: bytes) -> bool:
    try:
        raw = base64.urlsafe_b64decode(head + b"=" * (-len(head) % 4))
        obj = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: '[[[[...' nested past the limit
        return False
    return isinstance(obj, dict) and "alg" in obj
