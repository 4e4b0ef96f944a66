"""A multi-locale corpus of LLM-style answers with PII values and decoys at known positions (for `bench.pii_eval`).

    from bench.pii_corpus import make_corpus
    items = make_corpus(n=2700, seed=1)      # n items spread evenly over LOCALES

Each `Item` is one answer text as a model might write it (markdown contact cards and
tables, prose, code blocks with config and secrets, JSON, support replies) in one
Faker locale, and the `Mark`s of every value and decoy in it: entity (the gateway's
entity name for values, a decoy class for decoys), a format label, and the exact
character offsets, so that `text[m.start:m.end] == m.text`.

Values (kind "value"), per entity, in several formats each (the `fmt` label):

- EMAIL: Faker's address per locale; upper case; full-width `＠`/`．`; a zero-width
  space inside; a non-ASCII local part (`josé@`); an IDN domain; in a `mailto:` link.
- PHONE: Faker's own number for the locale (national and international layouts,
  `(0)` trunk prefixes, `x123` extensions as Faker writes them), kept only when
  libphonenumber (`phonenumbers`) says it is a valid number of the locale's region
  (Faker also writes strings such as `00008063608`, which no one can dial); then
  rewritten as E.164, libphonenumber's INTERNATIONAL and NATIONAL layouts, `+CC (0)…`,
  with an extension, dotted (French style), full-width, with NBSP / thin-space
  separators, with Unicode dashes, in a `tel:` link.
- US_SSN: dashes, spaces, no separators (always after a label such as "SSN"), en dash,
  U+2011, U+2212, dots, full-width.
- CREDIT_CARD: Faker's Luhn-valid numbers (Visa, Mastercard, Amex, Discover, JCB,
  Diners) contiguous, grouped with spaces, dashes, NBSP, thin spaces, dots, a
  zero-width joiner, a line break, full-width digits.
- IBAN: Faker's IBAN of the locale (en_US, ja_JP: GB), compact and grouped, upper and
  lower case, NBSP-grouped.
- IP_ADDRESS: public and private IPv4, IPv4 with a port (the value is the address),
  IPv6 full and compressed.
- AWS_ACCESS_KEY, API_KEY (`sk-…`, `sk-proj-…`, `sk-ant-api03-…`), JWT (a real
  base64url header and payload), each also with a zero-width space inside (keys).
- PRIVATE_KEY: a whole PEM block, header to footer (RSA, EC, PKCS#8, OpenSSH; random
  base64 body of the usual length); the value is the block.

Decoys (kind "decoy"): VERSION (semver, 4-part assembly versions, 5-part build numbers),
ORDER / PART / TRACKING / INVOICE numbers with their labels (digit groups in phone-like
layouts among them), UUID, HASH (md5, sha1, sha256, short git ids), ISBN (10 and 13),
PRICE (locale currency formats), DATE (locale and ISO formats, ISO timestamps), EPOCH
(seconds and milliseconds), TIME. A decoy is text no PII detector should change.

Some items (kind "prose") are clean prose with neither: holdback and false positives
on plain text. Everything is seeded: the same (n, seed) gives the same corpus.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LOCALES", "REGIONS", "ENTITIES", "DECOYS", "Mark", "Item", "make_corpus", "fullwidth"]

LOCALES: tuple[str, ...] = ("en_US", "en_GB", "de_DE", "fr_FR", "nl_NL", "ja_JP", "pt_BR", "es_ES", "it_IT")
REGIONS: dict[str, str] = {"en_US": "US", "en_GB": "GB", "de_DE": "DE", "fr_FR": "FR", "nl_NL": "NL", "ja_JP": "JP",
                           "pt_BR": "BR", "es_ES": "ES", "it_IT": "IT"}
ENTITIES: tuple[str, ...] = ("EMAIL", "PHONE", "US_SSN", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "AWS_ACCESS_KEY",
                             "API_KEY", "JWT", "PRIVATE_KEY")
DECOYS: tuple[str, ...] = ("VERSION", "ORDER", "PART", "TRACKING", "INVOICE", "UUID", "HASH", "ISBN", "PRICE",
                           "DATE", "EPOCH", "TIME")

NBSP, NNBSP, THIN, ZWSP, ZWJ = "\u00a0", "\u202f", "\u2009", "\u200b", "\u200d"
EN_DASH, NB_HYPHEN, MINUS = "\u2013", "\u2011", "\u2212"


def fullwidth(s: str) -> str:
    """ASCII printable characters as their full-width forms (U+FF01..U+FF5E); a space as U+3000."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in s)


@dataclass(frozen=True)
class Mark:
    kind: str  # "value" or "decoy"
    entity: str  # gateway entity name (value) or decoy class
    fmt: str
    start: int  # character offsets in Item.text
    end: int
    text: str


@dataclass
class Item:
    id: int
    locale: str
    kind: str  # template name
    text: str
    marks: list[Mark] = field(default_factory=list)


class _Doc:
    """Text being written, and the marks in it."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n = 0
        self.marks: list[Mark] = []

    def add(self, s: str) -> None:
        self.parts.append(s)
        self.n += len(s)

    def mark(self, kind: str, entity: str, fmt: str, s: str) -> None:
        self.marks.append(Mark(kind, entity, fmt, self.n, self.n + len(s), s))
        self.add(s)

    def put(self, piece: "Piece") -> None:
        """A value or decoy with its text around it: (before, kind, entity, fmt, text, after)."""
        before, kind, entity, fmt, s, after = piece
        self.add(before)
        self.mark(kind, entity, fmt, s)
        self.add(after)


Piece = tuple[str, str, str, str, str, str]

# ---- locale words ----------------------------------------------------------------------------------

_L: dict[str, dict[str, str]] = {
    "en_US": dict(phone="Phone", email="Email", call="You can reach {n} at", order="Order #", part="Part No.",
                  tracking="Tracking number", invoice="Invoice", date="Date", price="Total", contact="Contact",
                  name="Name", note="Here is the information you asked for:", bye="Let me know if you need anything else."),
    "en_GB": dict(phone="Tel", email="E-mail", call="Ring {n} on", order="Order no.", part="Part number",
                  tracking="Tracking ref", invoice="Invoice", date="Date", price="Total", contact="Contact",
                  name="Name", note="Below are the details you requested:", bye="Do get in touch if anything is unclear."),
    "de_DE": dict(phone="Telefon", email="E-Mail", call="Sie erreichen {n} unter", order="Bestellnummer",
                  part="Artikelnummer", tracking="Sendungsnummer", invoice="Rechnungsnummer", date="Datum",
                  price="Gesamtbetrag", contact="Kontakt", name="Name",
                  note="Hier sind die gewünschten Angaben:", bye="Melden Sie sich gern, wenn Sie noch Fragen haben."),
    "fr_FR": dict(phone="Téléphone", email="Courriel", call="Vous pouvez joindre {n} au", order="N° de commande",
                  part="Référence article", tracking="Numéro de suivi", invoice="Facture n°", date="Date",
                  price="Montant total", contact="Contact", name="Nom",
                  note="Voici les informations demandées :", bye="N'hésitez pas si vous avez d'autres questions."),
    "nl_NL": dict(phone="Telefoon", email="E-mail", call="U kunt {n} bellen op", order="Bestelnummer",
                  part="Onderdeelnummer", tracking="Trackingcode", invoice="Factuurnummer", date="Datum",
                  price="Totaal", contact="Contact", name="Naam",
                  note="Hieronder vindt u de gevraagde gegevens:", bye="Laat het weten als u nog vragen heeft."),
    "ja_JP": dict(phone="電話番号", email="メール", call="{n}さんの連絡先は", order="注文番号", part="部品番号",
                  tracking="追跡番号", invoice="請求書番号", date="日付", price="合計", contact="連絡先", name="氏名",
                  note="ご依頼の情報は以下のとおりです。", bye="ほかにご不明な点があればお知らせください。"),
    "pt_BR": dict(phone="Telefone", email="E-mail", call="Você pode ligar para {n} no", order="Pedido nº",
                  part="Código da peça", tracking="Código de rastreio", invoice="Nota fiscal", date="Data",
                  price="Total", contact="Contato", name="Nome",
                  note="Seguem as informações solicitadas:", bye="Qualquer dúvida, estou à disposição."),
    "es_ES": dict(phone="Teléfono", email="Correo", call="Puede llamar a {n} al", order="N.º de pedido",
                  part="Referencia de pieza", tracking="Número de seguimiento", invoice="Factura n.º", date="Fecha",
                  price="Importe total", contact="Contacto", name="Nombre",
                  note="Aquí tiene los datos solicitados:", bye="Avíseme si necesita algo más."),
    "it_IT": dict(phone="Telefono", email="Email", call="Può contattare {n} al numero", order="Ordine n.",
                  part="Codice articolo", tracking="Numero di spedizione", invoice="Fattura n.", date="Data",
                  price="Totale", contact="Contatto", name="Nome",
                  note="Ecco le informazioni richieste:", bye="Mi faccia sapere se serve altro."),
}

_CURRENCY = {"en_US": ("${:,.2f}", "US"), "en_GB": ("£{:,.2f}", "US"), "de_DE": ("{} €", "EU"),
             "fr_FR": ("{} €", "FR"), "nl_NL": ("€ {}", "EU"), "ja_JP": ("¥{:,.0f}", "US"),
             "pt_BR": ("R$ {}", "EU"), "es_ES": ("{} €", "EU"), "it_IT": ("€ {}", "EU")}
_DATEFMT = {"en_US": "%m/%d/%Y", "en_GB": "%d/%m/%Y", "de_DE": "%d.%m.%Y", "fr_FR": "%d/%m/%Y",
            "nl_NL": "%d-%m-%Y", "ja_JP": "%Y年%m月%d日", "pt_BR": "%d/%m/%Y", "es_ES": "%d/%m/%Y",
            "it_IT": "%d/%m/%Y"}
#: Regions whose national numbers start with a trunk 0 that international writers put as "(0)".
_TRUNK0 = {"GB", "DE", "FR", "NL", "JP"}

# ---- values ----------------------------------------------------------------------------------------


class _Gen:
    """Value and decoy generators for one locale."""

    def __init__(self, locale: str, rng: random.Random) -> None:
        from faker import Faker

        self.locale = locale
        self.region = REGIONS[locale]
        self.rng = rng
        self.f = Faker(locale)
        self.f.seed_instance(rng.randrange(1 << 30))
        self.us = Faker("en_US")
        self.us.seed_instance(rng.randrange(1 << 30))
        self.w = _L[locale]

    def pick(self, *opts):
        return self.rng.choice(opts)

    # -- EMAIL
    def email(self) -> tuple[str, str]:
        r = self.rng.random()
        e = self.f.email()
        local, dom = e.split("@")
        if r < 0.55:
            return "plain", e
        if r < 0.62:
            return "upper", e.upper() if self.rng.random() < 0.5 else local.capitalize() + "@" + dom.upper()
        if r < 0.70:
            return "fullwidth-at", local + "＠" + dom.replace(".", "．")
        if r < 0.78:
            k = self.rng.randint(1, max(1, len(local) - 1))
            return "zwsp-inside", local[:k] + ZWSP + local[k:] + "@" + dom
        if r < 0.88:
            nl = self.pick("josé", "müller", "françois", "søren", "zoë", "łukasz", "ñandú", "jürgen.weiß")
            return "unicode-local", nl + "." + local + "@" + dom
        idn = self.pick("bücher.de", "münchen.de", "例え.jp", "société.fr", "españa.es", "café.it", "straße.de")
        return "idn-domain", local + "@" + idn

    # -- PHONE
    def _valid_phone(self):
        import phonenumbers as pn

        for _ in range(50):
            raw = self.f.phone_number()
            try:
                num = pn.parse(raw, self.region)
            except pn.NumberParseException:
                continue
            if pn.is_valid_number(num) and pn.region_code_for_number(num) == self.region:
                return raw, num
        raise RuntimeError(f"no valid phone number from Faker {self.locale}")

    def phone(self) -> tuple[str, str]:
        import phonenumbers as pn

        raw, num = self._valid_phone()
        num.extension = None  # (Faker's en_US numbers carry one: only the "faker" and "extension" formats keep it)
        intl = pn.format_number(num, pn.PhoneNumberFormat.INTERNATIONAL)
        nat = pn.format_number(num, pn.PhoneNumberFormat.NATIONAL)
        r = self.rng.random()
        if r < 0.30:
            return "faker", raw
        if r < 0.38:
            return "e164", pn.format_number(num, pn.PhoneNumberFormat.E164)
        if r < 0.48:
            return "international", intl
        if r < 0.60:
            return "national", nat
        if r < 0.66 and self.region in _TRUNK0:
            cc, rest = intl.split(" ", 1)
            return "trunk-(0)", cc + self.pick(" (0)", "(0)", " (0) ") + rest
        if r < 0.72:
            ext = self.rng.randint(1, 9999)
            base = self.pick(nat, intl)
            return "extension", base + self.pick(f" x{ext}", f" ext. {ext}", f"x{ext}", f" ext {ext}", f" #{ext}")
        if r < 0.76:
            digits = "".join(c for c in nat if c.isdigit())
            if len(digits) % 2 == 0:
                return "dotted", ".".join(digits[i:i + 2] for i in range(0, len(digits), 2))
            return "dotted", nat.replace(" ", ".").replace("-", ".")
        if r < 0.83:
            return "fullwidth", fullwidth(self.pick(nat, intl))
        if r < 0.90:
            sep = self.pick(NBSP, NNBSP, THIN)
            return "unicode-space", self.pick(nat, intl).replace(" ", sep)
        if r < 0.96:
            d = self.pick(EN_DASH, NB_HYPHEN, MINUS)
            s = self.pick(nat, intl)
            return "unicode-dash", s.replace("-", d) if "-" in s else s.replace(" ", d)
        return "tel-link", pn.format_number(num, pn.PhoneNumberFormat.E164)

    # -- US_SSN
    def ssn(self) -> tuple[str, str]:
        s = self.us.ssn()
        a, b, c = s.split("-")
        fmt, sep = self.pick(("dashes", "-"), ("dashes", "-"), ("spaces", " "), ("bare", ""), ("en-dash", EN_DASH),
                             ("nb-hyphen", NB_HYPHEN), ("minus", MINUS), ("dots", "."), ("fullwidth", "-"))
        v = a + sep + b + sep + c
        return fmt, fullwidth(v) if fmt == "fullwidth" else v

    # -- CREDIT_CARD
    def card(self) -> tuple[str, str]:
        kind = self.pick("visa16", "mastercard", "amex", "discover", "jcb16", "visa16", "mastercard", "diners")
        d = self.us.credit_card_number(card_type=kind)
        if len(d) == 15:
            groups = [d[:4], d[4:10], d[10:]]
        elif len(d) == 14:
            groups = [d[:4], d[4:10], d[10:]]
        else:
            groups = [d[i:i + 4] for i in range(0, len(d), 4)]
        fmt, sep = self.pick(("compact", ""), ("spaces", " "), ("spaces", " "), ("dashes", "-"), ("nbsp", NBSP),
                             ("thin-space", THIN), ("dots", "."), ("zwj", ZWJ), ("linebreak", None),
                             ("fullwidth", " "))
        if sep is None:
            half = len(groups) // 2
            return fmt, " ".join(groups[:half]) + "\n" + " ".join(groups[half:])
        v = sep.join(groups)
        return fmt, fullwidth(v) if fmt == "fullwidth" else v

    # -- IBAN
    def iban(self) -> tuple[str, str]:
        i = self.f.iban()
        grouped = " ".join(i[k:k + 4] for k in range(0, len(i), 4))
        fmt, v = self.pick(("compact", i), ("grouped", grouped), ("grouped", grouped), ("lower", i.lower()),
                           ("lower-grouped", grouped.lower()), ("nbsp-grouped", grouped.replace(" ", NBSP)))
        return fmt, v

    # -- IP_ADDRESS
    def ip(self) -> tuple[str, str]:
        r = self.rng.random()
        if r < 0.35:
            return "ipv4-public", self.f.ipv4_public()
        if r < 0.65:
            return "ipv4-private", self.f.ipv4_private()
        if r < 0.85:
            return "ipv6", self.f.ipv6()
        h = [format(self.rng.randrange(1, 65536), "x") for _ in range(4)]
        return "ipv6-compressed", f"2001:db8:{h[0]}::{h[1]}:{h[2]}"

    def _rand(self, alphabet: str, n: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def _zwsp(self, v: str, lo: int) -> str:
        k = self.rng.randint(lo, len(v) - 2)
        return v[:k] + ZWSP + v[k:]

    def aws(self) -> tuple[str, str]:
        v = self.pick("AKIA", "AKIA", "ASIA") + self._rand(string.ascii_uppercase + "234567", 16)
        return ("zwsp-inside", self._zwsp(v, 4)) if self.rng.random() < 0.15 else ("plain", v)

    def api_key(self) -> tuple[str, str]:
        an = string.ascii_letters + string.digits
        fmt, v = self.pick(("openai", "sk-" + self._rand(an, 48)),
                           ("openai-proj", "sk-proj-" + self._rand(an + "_-", 60)),
                           ("anthropic", "sk-ant-api03-" + self._rand(an + "_-", 93) + "AA"))
        while not (any(c.isdigit() for c in v[3:]) and any(c.isalpha() for c in v[3:])):
            v = v[:-1] + "7"
        return ("zwsp-inside", self._zwsp(v, 5)) if self.rng.random() < 0.15 else (fmt, v)

    def jwt(self) -> tuple[str, str]:
        def b64(o: object) -> str:
            return base64.urlsafe_b64encode(json.dumps(o, separators=(",", ":")).encode()).rstrip(b"=").decode()

        head = b64({"alg": self.pick("HS256", "RS256", "ES256"), "typ": "JWT"})
        body = b64({"sub": str(self.rng.randrange(10**9)), "name": self.f.name(), "iat": 1700000000 +
                    self.rng.randrange(10**7)})
        sig = base64.urlsafe_b64encode(self.rng.randbytes(32)).rstrip(b"=").decode()
        return "jws", f"{head}.{body}.{sig}"

    def private_key(self) -> tuple[str, str]:
        label, nbytes = self.pick(("RSA PRIVATE KEY", 1190), ("EC PRIVATE KEY", 121), ("PRIVATE KEY", 1218),
                                  ("OPENSSH PRIVATE KEY", 400), ("EC PRIVATE KEY", 121))
        body = base64.b64encode(self.rng.randbytes(nbytes)).decode()
        lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64 if "OPENSSH" not in label else 70))
        return label.split()[0].lower() if label != "PRIVATE KEY" else "pkcs8", \
            f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"

    # -- decoys
    def decoy(self, cls: str | None = None) -> Piece:
        """(before, "decoy", class, fmt, text, after): a decoy with its label."""
        rng = self.rng
        w = self.w
        cls = cls or rng.choice(DECOYS)
        if cls == "VERSION":
            fmt, v, lab = self.pick(
                ("semver", f"{rng.randint(0, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}", "version "),
                ("v-semver", f"v{rng.randint(0, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}", "release "),
                ("assembly-4", f"{rng.randint(1, 20)}.{rng.randint(0, 40)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
                 self.pick("AssemblyVersion: ", "FileVersion ", "[assembly: AssemblyVersion(\"")),
                ("build-4", f"{rng.randint(1, 20)}.{rng.randint(0, 20)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
                 "build "),
                ("build-5", ".".join(str(rng.randint(0, 99)) for _ in range(5)), "build "),
                ("windows", f"10.0.{rng.randint(10000, 22631)}.{rng.randint(1, 4000)}", "OS build "))
            return lab, "decoy", cls, fmt, v, ""
        if cls in ("ORDER", "PART", "INVOICE"):
            groups = self.pick((3, 4, 3), (5, 5), (4, 4, 4), (2, 4, 4), (10,), (11,), (3, 3, 4), (4, 7), (4, 8),
                               (8,), (9,), (12,), (4, 3, 4))
            sep = self.pick(" ", "-", "-", "")
            v = sep.join("".join(str(rng.randint(0, 9)) for _ in range(g)) for g in groups)
            lab = {"ORDER": w["order"], "PART": w["part"], "INVOICE": w["invoice"]}[cls]
            if rng.random() < 0.2:
                lab = self.pick("Order #", "SKU ", "Ref. ", "Case ", "Ticket ", "RMA ")
            return lab + self.pick(" ", ": ", " ") if not lab.endswith(" ") else lab, "decoy", cls, \
                f"{'-'.join(map(str, groups))}/{'sp' if sep == ' ' else sep or 'none'}", v, ""
        if cls == "TRACKING":
            fmt, v = self.pick(
                ("ups", "1Z" + self._rand(string.ascii_uppercase + string.digits, 6) + self._rand(string.digits, 10)),
                ("usps-22", " ".join(("94" + self._rand(string.digits, 20))[i:i + 4] for i in range(0, 22, 4))),
                ("fedex-12", self._rand(string.digits, 12)),
                ("fedex-12-sp", " ".join(self._rand(string.digits, 12)[i:i + 4] for i in range(0, 12, 4))),
                ("dhl-10", self._rand(string.digits, 10)),
                ("postnl", "3S" + self._rand(string.ascii_uppercase, 4) + self._rand(string.digits, 9)))
            return w["tracking"] + ": ", "decoy", cls, fmt, v, ""
        if cls == "UUID":
            u = uuid.UUID(int=rng.getrandbits(128), version=4)
            return self.pick("id ", "request_id=", "UUID: ", "trace "), "decoy", cls, "uuid4", \
                str(u) if rng.random() < 0.8 else str(u).upper(), ""
        if cls == "HASH":
            data = rng.randbytes(16)
            fmt, v = self.pick(("md5", hashlib.md5(data).hexdigest()), ("sha1", hashlib.sha1(data).hexdigest()),
                               ("sha256", hashlib.sha256(data).hexdigest()),
                               ("git-short", hashlib.sha1(data).hexdigest()[:7]))
            return self.pick("sha: ", "commit ", "checksum ", "digest "), "decoy", cls, fmt, v, ""
        if cls == "ISBN":
            if rng.random() < 0.6:
                d = "978" + self._rand(string.digits, 9)
                s = sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(d))
                d += str((10 - s % 10) % 10)
                v = f"{d[:3]}-{d[3]}-{d[4:8]}-{d[8:12]}-{d[12]}" if rng.random() < 0.7 else d
                return "ISBN ", "decoy", cls, "isbn13", v, ""
            d = self._rand(string.digits, 9)
            c = sum((10 - i) * int(x) for i, x in enumerate(d)) % 11
            ck = (11 - c) % 11
            d += "X" if ck == 10 else str(ck)
            return "ISBN-10: ", "decoy", cls, "isbn10", f"{d[0]}-{d[1:4]}-{d[4:9]}-{d[9]}", ""
        if cls == "PRICE":
            amount = rng.choice((rng.uniform(1, 200), rng.uniform(200, 99999)))
            tpl, style = _CURRENCY[self.locale]
            if style == "US":
                v = tpl.format(amount)
            else:
                us = f"{amount:,.2f}"
                num = us.replace(",", "X").replace(".", ",").replace("X", "." if style == "EU" else NNBSP)
                v = tpl.format(num)
            return w["price"] + ": ", "decoy", cls, style, v, ""
        if cls == "DATE":
            d = self.f.date_time_between(start_date=_dt.datetime(1995, 1, 1), end_date=_dt.datetime(2027, 12, 31))
            fmt, v = self.pick(("locale", d.strftime(_DATEFMT[self.locale])), ("iso", d.strftime("%Y-%m-%d")),
                               ("iso-datetime", d.strftime("%Y-%m-%dT%H:%M:%SZ")),
                               ("dotted", d.strftime("%Y.%m.%d")), ("long", d.strftime("%d %B %Y")))
            return w["date"] + ": ", "decoy", cls, fmt, v, ""
        if cls == "EPOCH":
            s = rng.randint(1_400_000_000, 1_900_000_000)
            fmt, v = self.pick(("seconds", str(s)), ("millis", str(s * 1000 + rng.randint(0, 999))))
            return self.pick("timestamp ", "created_at=", "ts: ", "epoch "), "decoy", cls, fmt, v, ""
        if cls == "TIME":
            return self.pick("at ", "um ", "à ", ""), "decoy", cls, "hms", \
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}", ""
        raise ValueError(cls)

    def value(self, entity: str) -> tuple[str, str]:
        return {"EMAIL": self.email, "PHONE": self.phone, "US_SSN": self.ssn, "CREDIT_CARD": self.card,
                "IBAN": self.iban, "IP_ADDRESS": self.ip, "AWS_ACCESS_KEY": self.aws, "API_KEY": self.api_key,
                "JWT": self.jwt, "PRIVATE_KEY": self.private_key}[entity]()

    def sentence(self) -> str:
        return self.f.sentence(nb_words=self.rng.randint(6, 14))


# ---- templates -------------------------------------------------------------------------------------

_LABEL = {"EMAIL": "email", "PHONE": "phone"}
_EN_LABEL = {"US_SSN": ("SSN", "Social Security Number", "SSN (US)"), "CREDIT_CARD": ("Card", "Credit card", "Karte"),
             "IBAN": ("IBAN", "Bank account (IBAN)"), "IP_ADDRESS": ("IP", "Server", "Host address"),
             "AWS_ACCESS_KEY": ("AWS key",), "API_KEY": ("API key",), "JWT": ("Token",),
             "PRIVATE_KEY": ("Key",)}


def _label(g: _Gen, entity: str) -> str:
    if entity in _LABEL:
        return g.w[_LABEL[entity]]
    return g.pick(*_EN_LABEL[entity])


def _put_value(d: _Doc, g: _Gen, entity: str, before: str = "", after: str = "") -> None:
    fmt, v = g.value(entity)
    d.add(before)
    if entity == "PHONE" and fmt == "tel-link":
        d.add("[")
        d.mark("value", entity, "tel-link-text", v)
        d.add("](tel:")
        d.mark("value", entity, fmt, v)
        d.add(")")
    elif entity == "EMAIL" and fmt == "plain" and g.rng.random() < 0.15:
        d.add("[")
        d.mark("value", entity, "mailto-text", v)
        d.add("](mailto:")
        d.mark("value", entity, "mailto-link", v)
        d.add(")")
    else:
        d.mark("value", entity, fmt, v)
    d.add(after)


_CARD_ENTITIES = ("PHONE", "EMAIL", "PHONE", "IBAN", "US_SSN", "CREDIT_CARD", "PHONE", "EMAIL", "IP_ADDRESS")
_SECRET_ENTITIES = ("AWS_ACCESS_KEY", "API_KEY", "JWT", "IP_ADDRESS", "PRIVATE_KEY")


def _t_card(d: _Doc, g: _Gen) -> None:
    """A markdown contact card: bold labels, one value or decoy per bullet."""
    d.add(g.w["note"] + "\n\n" + f"### {g.w['contact']}: {g.f.name()}\n\n")
    fields = [("v", e) for e in g.rng.sample(_CARD_ENTITIES, g.rng.randint(3, 6))]
    fields += [("d", None) for _ in range(g.rng.randint(2, 4))]
    g.rng.shuffle(fields)
    for kind, e in fields:
        if kind == "v":
            _put_value(d, g, e, f"- **{_label(g, e)}:** ", "\n")
        else:
            d.put(g.decoy())
            d.add("\n")
    d.add(f"- **Adresse / Address:** {g.f.address().replace(chr(10), ', ')}\n\n{g.w['bye']}")


def _t_table(d: _Doc, g: _Gen) -> None:
    """A markdown table: name, phone, e-mail, order number, date."""
    w = g.w
    d.add(g.w["note"] + "\n\n" + f"| {w['name']} | {w['phone']} | {w['email']} | {w['order']} | {w['date']} |\n"
          "| --- | --- | --- | --- | --- |\n")
    for _ in range(g.rng.randint(2, 5)):
        d.add(f"| {g.f.name()} | ")
        _put_value(d, g, "PHONE", "", " | ")
        _put_value(d, g, "EMAIL", "", " | ")
        _, _, cls, fmt, v, _ = g.decoy("ORDER")
        d.mark("decoy", cls, fmt, v)
        d.add(" | ")
        _, _, cls, fmt, v, _ = g.decoy("DATE")
        d.mark("decoy", cls, fmt, v)
        d.add(" |\n")
    d.add("\n" + g.sentence())


def _t_prose(d: _Doc, g: _Gen) -> None:
    """Paragraphs with values and decoys inline."""
    for _ in range(g.rng.randint(2, 4)):
        d.add(g.sentence() + " ")
        r = g.rng.random()
        if r < 0.45:
            _put_value(d, g, "PHONE", g.w["call"].format(n=g.f.first_name()) + " ", ". ")
        elif r < 0.65:
            _put_value(d, g, "EMAIL", g.f.first_name() + ": ", ". ")
        elif r < 0.80:
            e = g.pick("US_SSN", "CREDIT_CARD", "IBAN")
            _put_value(d, g, e, f"{_label(g, e)} ", ". ")
        else:
            _put_value(d, g, "PHONE", "", " ")  # bare, no label word right before it
            d.add(g.sentence() + " ")
        d.put(g.decoy())
        d.add(". " + g.sentence() + "\n\n")


def _t_code(d: _Doc, g: _Gen) -> None:
    """A config file in a code block: secrets, hosts, versions, hashes."""
    d.add(g.sentence() + "\n\n```" + g.pick("ini", "bash", "yaml", "python") + "\n")
    for _ in range(g.rng.randint(3, 6)):
        r = g.rng.random()
        if r < 0.55:
            e = g.pick(*_SECRET_ENTITIES)
            key = {"AWS_ACCESS_KEY": "AWS_ACCESS_KEY_ID=", "API_KEY": "OPENAI_API_KEY=",
                   "JWT": "Authorization: Bearer ", "IP_ADDRESS": "DB_HOST=", "PRIVATE_KEY": "SSH_KEY: |\n"}[e]
            if e == "IP_ADDRESS" and g.rng.random() < 0.4:
                _put_value(d, g, e, "upstream = ", f":{g.rng.randint(1024, 65535)}\n")
            else:
                _put_value(d, g, e, key, "\n")
        else:
            before, kind, cls, fmt, v, after = g.decoy(g.pick("VERSION", "HASH", "UUID", "EPOCH", "VERSION"))
            d.add(f"{cls.lower()}_value = ")
            d.put((before, kind, cls, fmt, v, after))
            d.add("\n")
    d.add("```\n\n" + g.sentence())


def _t_json(d: _Doc, g: _Gen) -> None:
    """A JSON object in a code block."""
    d.add(g.w["note"] + "\n\n```json\n{\n")
    rows = [("name", None)] + [(k, e) for k, e in (("phone", "PHONE"), ("email", "EMAIL"), ("iban", "IBAN"),
                                                   ("ip", "IP_ADDRESS"), ("ssn", "US_SSN"), ("card", "CREDIT_CARD"))
                               if g.rng.random() < 0.6]
    rows += [(c.lower(), c) for c in g.rng.sample(DECOYS, 3)]
    for i, (k, e) in enumerate(rows):
        end = ",\n" if i < len(rows) - 1 else "\n"
        if e is None:
            d.add(f'  "name": "{g.f.name()}"{end}')
        elif e in DECOYS:
            _, kind, cls, fmt, v, _ = g.decoy(e)
            d.add(f'  "{k}": "')
            d.mark(kind, cls, fmt, v)
            d.add('"' + end)
        else:
            fmt, v = g.value(e)
            if "\n" in v:  # (a line break inside a JSON string is written escaped: not this corpus' concern)
                v = v.replace("\n", " ")
                fmt += "-joined"
            d.add(f'  "{k}": "')
            d.mark("value", e, fmt, v)
            d.add('"' + end)
    d.add("}\n```\n\n" + g.w["bye"])


def _t_ticket(d: _Doc, g: _Gen) -> None:
    """A support reply: order, tracking, price, then contact data and one payment value."""
    w = g.w
    d.add(f"{g.sentence()}\n\n")
    for cls in ("ORDER", "TRACKING", "PRICE", "PART", "DATE"):
        if g.rng.random() < 0.8:
            d.add("* ")
            d.put(g.decoy(cls))
            d.add("\n")
    d.add("\n" + g.sentence() + " ")
    e = g.pick("PHONE", "EMAIL", "CREDIT_CARD", "IBAN", "US_SSN")
    # (an SSN is written after its own label: the bare nine-digit form is one only there)
    _put_value(d, g, e, f"{_label(g, e) if e == 'US_SSN' else w['contact']}: ", ".\n\n")
    d.put(g.decoy(g.pick("ISBN", "INVOICE", "EPOCH", "TIME", "VERSION")))
    d.add("\n" + w["bye"])


def _t_plain(d: _Doc, g: _Gen) -> None:
    """Clean prose, no values and no decoys."""
    for _ in range(g.rng.randint(2, 4)):
        d.add(" ".join(g.sentence() for _ in range(g.rng.randint(3, 6))) + "\n\n")
    d.add(g.w["bye"])


TEMPLATES: dict[str, tuple[Callable[[_Doc, _Gen], None], float]] = {
    "card": (_t_card, 0.20), "table": (_t_table, 0.15), "prose": (_t_prose, 0.20), "code": (_t_code, 0.15),
    "json": (_t_json, 0.12), "ticket": (_t_ticket, 0.10), "plain": (_t_plain, 0.08),
}


def make_corpus(n: int = 2700, seed: int = 1, locales: tuple[str, ...] = LOCALES) -> list[Item]:
    """`n` items (n // len(locales) per locale, at least one each), seeded; templates drawn by TEMPLATES' weights."""
    rng = random.Random(seed)
    names = list(TEMPLATES)
    weights = [TEMPLATES[k][1] for k in names]
    items: list[Item] = []
    per = max(1, n // len(locales))
    for locale in locales:
        g = _Gen(locale, random.Random(rng.randrange(1 << 30)))
        for _ in range(per):
            kind = g.rng.choices(names, weights)[0]
            d = _Doc()
            TEMPLATES[kind][0](d, g)
            text = "".join(d.parts)
            item = Item(len(items), locale, kind, text, d.marks)
            for m in item.marks:
                assert text[m.start:m.end] == m.text, (m, text)
            items.append(item)
    return items
