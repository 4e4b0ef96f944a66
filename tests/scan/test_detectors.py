"""Issue 14's detection misses and decoys, one test each: phones (libphonenumber-confirmed, per region, with
context and veto words), Unicode forms, SSN with and without separators, lower-case IBAN, UTF-8 e-mail,
dotted runs that are no IPv4, and whole PEM blocks; plus `regions` config validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.policy.pii import PiiDetector, PiiPolicy, problems
from fastgw.scan.database import Pattern, PatternError, ScanDB, Span
from fastgw.scan.patterns import BUILTIN, patterns_for
from fastgw.scan.phones import DEFAULT_REGIONS, NONE, PHONE_WORD, VETO, PhoneValidator, phone_label, unknown_regions
from fastgw.scan.scanner import StreamScanner, find_spans


@pytest.fixture(scope="module")
def db() -> ScanDB:
    d = ScanDB(list(BUILTIN))
    d.allocate_scratch()
    return d


def found(db: ScanDB, text: str) -> list[tuple[str, str]]:
    data = text.encode()
    return [(data[s.start:s.end].decode(), s.entity) for s in find_spans(db, data)]


# --- phones --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "0151 98109301", "050 9453649", "+44(0)20 7496 0274", "+55 (41) 96492-8206", "(829)786-0297x590",
    "+1-633-212-2207x547", "04.81.36.62.96",
])
def test_issue_phone_misses_are_found(db: ScanDB, value: str) -> None:
    for text in (f"Reach Anna at {value} today.", f"| Anna | {value} |", f"Telefon: {value}"):
        assert found(db, text) == [(value, "PHONE")], text


def test_french_dotted_phone_is_a_phone_not_half_an_ip(db: ScanDB) -> None:
    assert found(db, "Appelez le 04.81.36.62.96 demain") == [("04.81.36.62.96", "PHONE")]


def test_full_width_phone(db: ScanDB) -> None:
    assert found(db, "電話：０９０－３２０５－７９９７です") == [("０９０－３２０５－７９９７", "PHONE")]


def test_phone_word_confirms_a_short_national_number(db: ScanDB) -> None:
    # Doubtful but per issue 14: a national number valid in a configured region, with a phone word nearby.
    assert found(db, "call 555-1234") == [("555-1234", "PHONE")]
    assert found(db, "x 555-1234 y") == []


@pytest.mark.parametrize("decoy", [
    "Order 0151 98109301", "SKU: 050 9453649", "Tracking 1Z99999999", "Invoice 04.81.36.62.96", "ISBN 978-3-16-148410-0",
    "epoch 1712345678", "2024-01-15", "15.01.2024", "1,299.99", "245 577 365", "666-12-3456",
])
def test_phone_decoys_are_not_found(db: ScanDB, decoy: str) -> None:
    assert [e for _, e in found(db, f"See {decoy} here")] == []


@pytest.mark.parametrize(("region", "number"), [
    ("DE", "030 1234567"), ("GB", "020 7946 0958"), ("FR", "01 23 45 67 89"), ("NL", "020 123 4567"),
    ("JP", "03-1234-5678"), ("BR", "(11) 91234-5678"), ("ES", "912 34 56 78"), ("IT", "06 1234 5678"),
])
def test_validator_per_region(region: str, number: str) -> None:
    only = PhoneValidator([region])
    assert only(number.encode(), b"Tel. ")
    # Not a North American number, even with a phone word: only the configured regions count.
    assert not PhoneValidator(["US"])(number.encode(), b"Tel. ")


def test_validator_international_ignores_regions() -> None:
    # '+CC' numbers are judged for their own country, whatever the configured regions.
    only_us = PhoneValidator(["US"])
    assert only_us(b"+49 30 1234567")
    assert only_us(b"+81 3-1234-5678")
    assert not only_us(b"+4420794609580")  # 13 digits: invalid for GB


def test_validator_context_and_veto() -> None:
    pv = PhoneValidator()
    assert phone_label(b"Call me at ") == PHONE_WORD
    assert phone_label("電話番号：".encode()) == PHONE_WORD
    assert phone_label(b"Order no. ") == VETO
    assert phone_label(b"The value was ") == NONE
    # The nearest label wins.
    assert phone_label(b"order 123, call ") == PHONE_WORD
    assert phone_label(b"call about order ") == VETO
    # A bare run needs a phone word; a veto beats a valid international number.
    assert not pv(b"15198109301", b"The value was ")
    assert pv(b"015198109301", b"Telefon: ")
    assert not pv(b"+49 151 98109301", b"Order ")
    assert pv(b"+49 151 98109301", b"")


def test_regions_patterns_for_and_config() -> None:
    assert unknown_regions(["DE", "XX", "de"]) == ["XX", "de"]
    with pytest.raises(ValueError, match="XX"):
        PhoneValidator(["XX"])
    only_jp = {p.name: p for p in patterns_for(["PHONE"], regions=["JP"])}
    assert only_jp["PHONE"].context_validator.regions == ("JP",)  # type: ignore[union-attr]
    assert only_jp["PHONE_GLUED"].context_validator is only_jp["PHONE"].context_validator
    assert patterns_for(["PHONE"], regions=list(DEFAULT_REGIONS)) == patterns_for(["PHONE"])
    assert problems(PiiDetector(regions=["DE", "XX"])) == [("regions[1]", "unknown phone region 'XX' "
                                                                           "(ISO 3166 alpha-2, upper case)")]
    assert problems(PiiDetector(regions=[])) != []
    assert problems(PiiDetector(regions=["DE", "JP"])) == []
    # The policy uses the configured regions: a German national number without a phone word is a German layout.
    de = PiiPolicy(PiiDetector(regions=["DE"]))
    jp = PiiPolicy(PiiDetector(regions=["JP"]))
    assert [s.entity for s in de.scan_text("Anna: 0151 98109301")[1]] == ["PHONE"]
    assert [s.entity for s in jp.scan_text("Anna: 0151 98109301")[1]] == []


# --- SSN ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sep", ["\u2013", "\u2011", "\u2212", "."])
def test_ssn_unicode_dashes_and_dots(db: ScanDB, sep: str) -> None:
    value = f"379{sep}57{sep}2229"
    assert found(db, f"SSN: {value}.") == [(value, "US_SSN")]


def test_ssn_bare_needs_a_context_word(db: ScanDB) -> None:
    assert found(db, "SSN 888742989") == [("888742989", "US_SSN")]
    assert found(db, "Social security number: 888742989") == [("888742989", "US_SSN")]
    assert found(db, "Order 888742989 shipped") == []
    assert found(db, "the number 888742989 here") == []


# --- IBAN, e-mail ---------------------------------------------------------------------------------------

def test_lower_case_iban(db: ScanDB) -> None:
    assert found(db, "iban de89370400440532013000 ok") == [("de89370400440532013000", "IBAN")]


def test_utf8_email(db: ScanDB) -> None:
    assert found(db, "mail josé@example.com now") == [("josé@example.com", "EMAIL")]
    assert found(db, "mail info@bücher.de now") == [("info@bücher.de", "EMAIL")]
    assert found(db, "mail jo@例え.テスト now") == [("jo@例え.テスト", "EMAIL")]


# --- IPv4 and dotted runs ------------------------------------------------------------------------------

def test_versions_are_not_addresses(db: ScanDB) -> None:
    assert found(db, "AssemblyVersion: 1.11.77.94") == []
    assert found(db, "build 4.20.18.6.20") == []
    assert found(db, "ping 10.0.0.1 now") == [("10.0.0.1", "IP_ADDRESS")]
    assert found(db, "IP 10.0.0.1") == [("10.0.0.1", "IP_ADDRESS")]


# --- private keys ---------------------------------------------------------------------------------------

_PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgwMbRvI0MBZhpI\n"
        "K3Nmbl9kYXRhX2hlcmU=\n-----END RSA PRIVATE KEY-----")


def test_pem_block_redacted_header_to_footer() -> None:
    pol = PiiPolicy(PiiDetector(action="redact"))
    data, spans = pol.scan_text(f"Here is the key:\n{_PEM}\nKeep it safe.")
    out = pol.redact(data, spans).decode()
    assert out == "Here is the key:\n[REDACTED:PRIVATE_KEY]\nKeep it safe.", out


def test_unclosed_pem_block_holds_the_rest(db: ScanDB) -> None:
    text = "key:\n" + _PEM.split("-----END")[0] + "and more text"
    assert found(db, text) == [(text[5:], "PRIVATE_KEY")]


@pytest.mark.parametrize("text", ["card 4111 1111\n1111 1111 here", "card 4111 1111 1111\r\n1111 here",
                                  "card 4111\n1111\n1111\n1111 here", "card 4111.1111.1111.1111 here"])
def test_a_card_wrapped_across_lines_or_dotted_is_found(db: ScanDB, text: str) -> None:
    assert [e for _, e in found(db, text)] == ["CREDIT_CARD"]


def test_mixed_dashes_and_spaces_are_no_card_layout(db: ScanDB) -> None:
    assert "CREDIT_CARD" not in [e for _, e in found(db, "ref 4111-1111 1111-1111 here")]


# --- values glued to the next word: the not_followed_by lookahead -----------------------------------------------

@pytest.mark.parametrize(("text", "value", "entity"), [
    ("379-57-2229Ground floor", "379-57-2229", "US_SSN"),
    ("(652) 402-6603Purpose of the call", "(652) 402-6603", "PHONE"),
    ("card 4111 1111 1111 1111Exp 12/29", "4111 1111 1111 1111", "CREDIT_CARD"),
    ("card 4111111111111111exp", "4111111111111111", "CREDIT_CARD"),
    ("SSN 078-05-1120and more", "078-05-1120", "US_SSN"),
    ("host 10.0.0.1abc", "10.0.0.1", "IP_ADDRESS"),
    ("IBAN DE89370400440532013000Ground", "DE89370400440532013000", "IBAN"),
    # National and international numbers (PHONE_GLUED: the letter is matched, then cut off).
    ("0151 98109301Ground", "0151 98109301", "PHONE"),
    ("Telefon 030 1234567Zentrale", "030 1234567", "PHONE"),
    ("+44 20 7946 0958Office", "+44 20 7946 0958", "PHONE"),
    ("+1-633-212-2207x547Desk", "+1-633-212-2207x547", "PHONE"),
])
def test_a_value_is_found_whatever_letter_follows_it(db: ScanDB, text: str, value: str, entity: str) -> None:
    assert found(db, text) == [(value, entity)]


@pytest.mark.parametrize("text", [
    "379-57-22290", "id 379-57-22290 here", "card 4111 1111 1111 11112 x", "4111111111111111123456",
    "(652) 402-66031", "run 1.2.3.4.5", "run 1.2.3.4.5 now", "v 10.0.0.1.2", "IP 1.2.3.4567",
    "DE893704004405320130001",
])
def test_a_prefix_of_a_longer_digit_or_dotted_run_is_not_reported(db: ScanDB, text: str) -> None:
    assert found(db, text) == [], text


def test_an_address_ending_a_sentence_is_still_found(db: ScanDB) -> None:
    assert found(db, "The gateway is 10.0.0.1.") == [("10.0.0.1", "IP_ADDRESS")]
    assert found(db, "10.0.0.1.") == [("10.0.0.1", "IP_ADDRESS")]
    assert found(db, "10.0.0.1") == [("10.0.0.1", "IP_ADDRESS")]
    assert found(db, "at 10.0.0.1. Next") == [("10.0.0.1", "IP_ADDRESS")]


def _streamed(db: ScanDB, data: bytes, pieces: list[bytes]) -> list[Span]:
    sc = StreamScanner(db)
    spans: list[Span] = []
    done = fed = 0
    try:
        for final, piece in [(False, p) for p in pieces] + [(True, b"")]:
            sc.feed(piece)
            fed += len(piece)
            safe, new = sc.settle(final=final)
            assert done <= safe <= fed
            # A settled span is final: it lies before the safe offset, and nothing is released past a
            # candidate whose lookahead bytes have not arrived.
            assert all(done <= s.start and s.end <= safe for s in new), (done, safe, new)
            spans += new
            done = safe
    finally:
        sc.close()
    assert done == len(data)
    return spans


_GLUE = ["379-57-2229", "(652) 402-6603", "4111 1111 1111 1111", "4111111111111111", "10.0.0.1", "1.2.3.4",
         "DE89370400440532013000", "078-05-1120", "212-555-0134"]
_AFTER = ["", "0", "1", ".", ".5", "..", ". ", "Ground", "x", " ", "\n", "12", ".2.3", "-"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", " ", "run ", "IP ", "x", "\n"]), st.sampled_from(_GLUE),
                          st.sampled_from(_AFTER)), min_size=1, max_size=4), st.data())
def test_lookahead_whole_equals_any_split(db: ScanDB, parts: list[tuple[str, str, str]], data: st.DataObject) -> None:
    raw = "".join(a + b + c for a, b, c in parts).encode()
    whole = find_spans(db, raw)
    assert _streamed(db, raw, [raw]) == whole
    assert _streamed(db, raw, [raw[i:i + 1] for i in range(len(raw))]) == whole
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    bounds = [0, *sorted(set(cuts) - {0, len(raw)}), len(raw)]
    assert _streamed(db, raw, [raw[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]) == whole


def test_pending_candidate_holds_the_text(db: ScanDB) -> None:
    sc = StreamScanner(db)
    sc.feed(b"ping 10.0.0.1")
    safe, spans = sc.settle()
    assert safe <= 5 and spans == []
    sc.feed(b".")
    safe, spans = sc.settle()
    assert safe <= 5 and spans == []  # '.5' would make it the front of a dotted run
    sc.feed(b" ok")
    safe, spans = sc.settle()
    assert [(s.start, s.end, s.entity) for s in spans] == [(5, 13, "IP_ADDRESS")] and safe > 13
    sc.settle(final=True)


def test_not_followed_by_is_checked() -> None:
    with pytest.raises(PatternError):
        ScanDB([Pattern("X", "X", rb"\d+", 8, not_followed_by=((),))])
    with pytest.raises(PatternError):
        ScanDB([Pattern("X", "X", rb"\d+", 8, not_followed_by=((b"",),))])


# --- context: tables, sentences, abbreviations (issue 14, second round) ----------------------------------

_TABLE = ("| Name | Phone | E-mail | Order | Date |\n| --- | --- | --- | --- | --- |\n"
          "| Jo Smith | {phone} | jo.smith@example.com | {order} | 2024-06-29 |\n")


def test_a_table_column_names_its_values(db: ScanDB) -> None:
    # A bare national number in a Phone column is one; a NANP-shaped number in an Order column is not.
    text = _TABLE.format(phone="01314960181", order="736-860-5303")
    assert found(db, text) == [("01314960181", "PHONE"), ("jo.smith@example.com", "EMAIL")]
    # The same values outside a table: the order number (NANP layout, no label) is a phone, the bare run is
    # found for its trunk '0' alone.
    assert found(db, "Jo Smith 736-860-5303 and 01314960181") == [("736-860-5303", "PHONE"), ("01314960181", "PHONE")]


def test_a_blank_line_ends_a_table(db: ScanDB) -> None:
    text = _TABLE.format(phone="+44 20 7946 0958", order="12") + "\n| 736-860-5303 |\n"
    assert ("736-860-5303", "PHONE") in found(db, text)


def test_a_table_header_is_the_same_under_every_split(db: ScanDB) -> None:
    text = (_TABLE.format(phone="0684133243", order="325-653-3939") * 2).encode()
    whole = find_spans(db, text)
    assert [text[s.start:s.end] for s in whole if s.entity == "PHONE"] == [b"0684133243"] * 2
    for size in (1, 3, 7, 64):
        sc = StreamScanner(db)
        spans: list[Span] = []
        for i in range(0, len(text), size):
            sc.feed(text[i:i + size])
            spans += sc.settle()[1]
        spans += sc.settle(final=True)[1]
        assert spans == whole, size


@pytest.mark.parametrize("before", ["", "\n", "\r\n", "\n\n", " "])
def test_a_delimiter_row_at_the_very_start(db: ScanDB, before: str) -> None:
    """A delimiter row with no header line before it (the text starts with it, or with one line end): no header,
    and no failure (compiled with mypyc, `buf[-1:0]` raised SystemError where Python gives b"")."""
    text = before + "| --- | --- |\n| a | 736-860-5303 |\n"
    assert found(db, text) == [("736-860-5303", "PHONE")]
    data = text.encode()
    sc = StreamScanner(db)
    spans: list[Span] = []
    for i in range(len(data)):
        sc.feed(data[i:i + 1])
        spans += sc.settle()[1]
    assert spans + sc.settle(final=True)[1] == find_spans(db, data)


def test_phone_label_in_a_table_row() -> None:
    head = b"| Name | Phone | Bestellnummer |"
    assert phone_label(b"| Jo | ", head) == PHONE_WORD
    assert phone_label(b"| Jo | 0151 98109301 | ", head) == VETO
    assert phone_label(b"| Jo | call ", head) == PHONE_WORD  # the cell's own label first
    assert phone_label(b"| Jo | 1 | 2 | ", head) == NONE  # past the last column
    assert phone_label(b"no row: ", head) == NONE


def test_a_label_belongs_to_its_sentence(db: ScanDB) -> None:
    # A veto word ('id') in the sentence before does not reach an international number...
    assert found(db, "Earum id aliquid. +448081570912 Hic") == [("+448081570912", "PHONE")]
    # ...nor a phone word the date after the number.
    assert found(db, "U kunt Merel bellen op +31557303448. Datum: 2001-05-19") == [("+31557303448", "PHONE")]
    # Abbreviations inside a label are no sentence end.
    assert found(db, "Part No. 572-703-7494, Order no. 788-585-0309, Ref. 0084975770") == []
    # A full vetoing word ending its sentence labels nothing after it.
    assert found(db, "Manage play article. (267) 537-2855") == [("(267) 537-2855", "PHONE")]


def test_nanp_layout_yields_to_a_veto(db: ScanDB) -> None:
    assert found(db, "Order #: 455 355 0519, call 455 355 0519") == [("455 355 0519", "PHONE")]
    assert found(db, '{"part": "742-145-1685", "phone": "742-145-1685"}') == [("742-145-1685", "PHONE")]


def test_a_region_that_cannot_parse_the_number_does_not_hide_the_others(db: ScanDB) -> None:
    # 'US' refuses '09832 921527' (too long) before 'DE' is tried.
    assert found(db, "Telefon: ０９８３２\u3000９２１５２７") == [("０９８３２\u3000９２１５２７", "PHONE")]


def test_dotted_quads_over_255_are_phones_when_labelled(db: ScanDB) -> None:
    assert found(db, "Teléfono: 887.56.69.77") == [("887.56.69.77", "PHONE")]
    assert found(db, "AssemblyVersion: 16.3.161.95") == []


def test_bare_runs_need_the_trunk_zero_or_a_phone_word(db: ScanDB) -> None:
    assert found(db, "Sie erreichen Roy unter 06082896820.") == [("06082896820", "PHONE")]
    assert found(db, "x 3248094243 y") == []  # an Italian mobile, bare: no layout, no word
    assert found(db, "chiamare 3248094243") == [("3248094243", "PHONE")]
    assert found(db, "x 0012345678 y") == []  # '00' is the international prefix, not a trunk


def test_two_cards_side_by_side_are_both_found(db: ScanDB) -> None:
    # A card next to another grouped number is reported (a tracking number's Luhn-valid inner groups are the
    # price): refusing cards beside a four-digit group would leak two cards written one after the other.
    assert found(db, "4111 1111 1111 1111, 4000 0000 0000 6") == [("4111 1111 1111 1111", "CREDIT_CARD"),
                                                                  ("4000 0000 0000 6", "CREDIT_CARD")]


def test_a_card_is_still_found_beside_other_numbers(db: ScanDB) -> None:
    assert found(db, "card 4111 1111 1111 1111, exp 12/29") == [("4111 1111 1111 1111", "CREDIT_CARD")]
    assert found(db, "order 5100000000004 then 4111 1111 1111 1111") == [("4111 1111 1111 1111", "CREDIT_CARD")]
    assert found(db, "1. 4111 1111 1111 1111\n2. 5555555555554444") == [
        ("4111 1111 1111 1111", "CREDIT_CARD"), ("5555555555554444", "CREDIT_CARD")]


def test_lower_case_grouped_iban_is_found_and_prose_is_not_held(db: ScanDB) -> None:
    assert found(db, "pay to gb82 west 1234 5698 7654 32 today") == [("gb82 west 1234 5698 7654 32", "IBAN")]
    sc = StreamScanner(db)
    sc.feed(b"we will send it on the day after the first of the month ")
    assert sc.holdback() == 0
    sc.feed(b"to gb82 west 12")
    assert sc.holdback() == len(b"gb82 west 12")


def test_libphonenumber_loads_only_for_the_phone_entity() -> None:
    """A worker imports the patterns whatever its config; libphonenumber (~1.5 MB of its RSS with the default
    regions' metadata) comes only with a PHONE pattern, loaded and warmed when patterns_for hands it out (issue 18)."""
    import subprocess
    import sys

    code = ("import sys; import fastgw.master, fastgw.cli\n"
            "from fastgw.scan import patterns\n"
            "assert 'phonenumbers' not in sys.modules, 'imported without a PHONE pattern'\n"
            "patterns.patterns_for(['EMAIL', 'IP_ADDRESS'])\n"
            "assert 'phonenumbers' not in sys.modules, 'imported for other entities'\n"
            "patterns.patterns_for(['PHONE'])\n"
            "assert 'phonenumbers' in sys.modules and patterns._PHONE._loaded\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
