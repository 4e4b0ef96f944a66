"""The `prompt-injection` policy: known injection and jailbreak phrasings, weighted, scored over a request's texts.

Each rule is a Hyperscan expression with a short name and a weight in (0, 1]. A
request's score is the sum of the weights of the *distinct* rules that matched in
any of its texts (a phrase repeated ten times counts once); the request is refused
when the score reaches `threshold` (1.0 by default: one strong phrasing, or a few
weak signals together).

Writing the rules:

- Case-insensitive (HS_FLAG_CASELESS), with three exceptions: the persona "DAN"
  must be upper case (`(?i:...)` keeps the rest of that rule caseless) so that "a
  friend named Dan" is not a jailbreak, and the Llama 2 markers `[INST]` and
  `<<SYS>>` are matched in the template's case (`x[inst]` is code).
- Whitespace-tolerant: a space in a rule below stands for `_SEP`, one or more of
  ASCII whitespace, the punctuation people (and obfuscators) put between words
  (`- _ * , ; : ~ | " ' ``), non-breaking and ideographic spaces and zero-width
  characters (UTF-8). So "IGNORE   all\\nprevious\\tinstructions",
  "**ignore** all previous instructions" and "ignore_all_previous_instructions" all
  match. Sentence ends (`. ! ?`) are not separators: a phrase must be one clause.
- Boundaries we keep (tests pin them):
  * overriding instructions needs an imperative verb *and* a determiner that
    points at someone else's instructions: "ignore all previous instructions",
    "disregard the above rules", "forget your instructions" match; "ignore my
    previous instructions" (a user revising their own request), "please ignore the
    typo in my previous message" and "what were the previous instructions for
    assembling this desk?" do not;
  * bypassing safety needs "your"/"all"/"any" before the filter ("bypass your
    safety filters", "ignore all content policies"), so "how do I bypass the content
    filter at school" is not flagged;
  * words that are jailbreak vocabulary but also everyday words ("developer mode",
    "jailbreak", "do anything now", "stay in character", "[INST]", "### System:")
    are weak (0.3-0.5): alone they never reach the default threshold, together they do.
- `max_width` is a realistic bound on the bytes a match spans in ordinary writing
  (it is what `ScanDB` groups patterns by). Scoring does not drop wider matches:
  input is scanned whole, with no holdback to bound, and dropping a match padded
  with whitespace would hand attackers an evasion.

Scanning: `find_spans` resolves overlaps leftmost-longest, which would hide one of
two rules matching the same words ("you are now in developer mode" is both
`you_are_now` and `developer_mode`). We only need *which* rules matched, so
`_Hits` opens one Hyperscan stream per text and records every rule that fired.
"""

from __future__ import annotations

import importlib
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import orjson

from fastgw.policy.settings import OnError, Problems, Settings
from fastgw.policy.textscan import SLICE_PIECE, Slicer
from fastgw.scan.database import Pattern, PatternError, ScanDB, compile_patterns
from fastgw.scan.patterns import DEFAULT_CUSTOM_WIDTH

__all__ = ["InjectionPolicy", "PromptInjection", "InjectionPattern", "Rule", "BUILTIN", "NAME", "PatternError",
           "ROLES", "Role", "problems", "request_texts", "iter_request_texts", "scan_view"]

#: Characters of a long text scanned between two looks at the clock (the built-in rules scan at ~100 MB/s;
#: folding a non-ASCII piece costs more).
_PIECE = 16384

NAME = "prompt-injection"

Role = Literal["user", "system", "developer", "assistant", "tool", "function"]
#: The message roles a request can carry, in the order the config reference lists them.
ROLES: tuple[Role, ...] = ("user", "system", "developer", "assistant", "tool", "function")


class InjectionPattern(Settings):
    regex: str
    weight: Annotated[float, msgspec.Meta(ge=0)] = 1.0


class PromptInjection(Settings):
    action: Literal["block", "observe"] = "block"
    #: Block when the summed weight of distinct matched patterns reaches this.
    threshold: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    #: Use the curated built-in phrasings.
    builtin: bool = True
    patterns: list[InjectionPattern] = msgspec.field(default_factory=list)
    #: Which roles' texts are judged (default: all six). The client chooses every role of a request, and a
    #: gateway cannot tell the operator's system prompt from one a caller wrote, so all count unless the
    #: operator narrows this. Where each endpoint's fields belong:
    #:
    #: - chat/completions: each message by its `role` (content strings and parts, `name`, `refusal`, tool-call
    #:   arguments, ...); a missing or unknown role counts as `user`;
    #: - completions: `prompt` is `user`;
    #: - responses: `instructions` is `system`; `input` as a string is `user`; input items by their `role`,
    #:   tool outputs (`function_call_output` and every other `*_output` item, an item's `output` field) are
    #:   `tool`, the model's own earlier items (`function_call`, `reasoning`, other `*_call`) `assistant`;
    #: - messages: `system` is `system`; each message by its `role`, `tool_result` blocks are `tool`;
    #: - every endpoint: tool definitions (`tools`, `functions`: names, descriptions, schemas) are `tool`;
    #: - embeddings: `input` is not judged (it is embedded, not followed).
    roles: list[Role] = msgspec.field(default_factory=lambda: list(ROLES))
    on_error: OnError = "block"


def _custom_rule(i: int, c: InjectionPattern) -> Rule:
    # Custom rules are caseless like the built-ins: injection phrasings carry no meaning in case.
    return Rule(c.weight, Pattern(f"custom[{i}]", "PROMPT_INJECTION", c.regex.encode(), DEFAULT_CUSTOM_WIDTH,
                                  caseless=True))


def problems(pi: PromptInjection) -> Problems:
    """Custom regexes Hyperscan refuses (weights and threshold are bounded by their types)."""
    errs: Problems = []
    for i, c in enumerate(pi.patterns):
        try:
            compile_patterns([_custom_rule(i, c).pattern])
        except PatternError as e:
            errs.append((f"patterns[{i}].regex", str(e)))
    if not pi.roles:
        errs.append(("roles", "empty: no text would be judged (list the roles to judge, or drop the policy)"))
    return errs

#: Between two words of a phrase: whitespace, in-sentence punctuation, NBSP (C2 A0), zero-width space,
#: non-joiner, joiner (E2 80 8B-8D), narrow NBSP (E2 80 AF), word joiner (E2 81 A0), ideographic space (E3 80 80).
_SEP = r"(?:[\s\-_*,;:~|\"'`]|\xC2\xA0|\xE2\x80[\x8B-\x8D\xAF]|\xE2\x81\xA0|\xE3\x80\x80)+"
#: `_SEP` made optional, for the glued database (see `scan_view`): "ig<ZWSP>nore<ZWSP>all<ZWSP>previous..." uses
#: one invisible character both inside and between words, and no single view can tell which is which.
_SEP_GLUED = _SEP[:-1] + "*"


@dataclass(frozen=True, slots=True)
class Rule:
    """One weighted detector; `pattern.name` is the rule's name."""

    weight: float
    pattern: Pattern

    @property
    def name(self) -> str:
        return self.pattern.name


def _rule(name: str, weight: float, phrase: str, max_width: int, caseless: bool = True) -> Rule:
    """A built-in rule; every literal space in `phrase` becomes `_SEP` (rules never need a literal space)."""
    return Rule(weight, Pattern(name, "PROMPT_INJECTION", phrase.replace(" ", _SEP).encode("ascii"), max_width,
                                caseless=caseless))


# Vocabulary shared by several rules.
#: Not "skip", "drop", "override": "skip the previous instructions if Python is installed", "this overrides the
#: previous rules" (CSS) are ordinary prose.
_OVERRIDE = r"(?:ignore|disregard|forget|abandon|discard)"
_EARLIER = r"(?:previous|prior|above|earlier|preceding|foregoing|initial|original|old)"
_ORDERS = r"(?:instructions?|prompts?|rules|directions|directives|guidelines|commands|orders)"
_LIMITS = (r"(?:rules|restrictions|guidelines|filters|limits|limitations|boundaries|censorship|morals|ethics"
           r"|content polic(?:y|ies)|ethical (?:guidelines|constraints|principles)|openai(?: s)? polic(?:y|ies))")
_UNBOUND = r"(?:unfiltered|unrestricted|uncensored|unlimited|unbound|jailbroken|amoral)"
#: "debug mode", "admin mode" are everyday software words: left out.
_MODES = r"(?:developer|dev|god|sudo)"
_BAD_MODES = r"(?:jailbreak|jailbroken|unrestricted|unfiltered|uncensored|DAN|evil)"
_ROLE = r"(?:system|admin|administrator|developer|root)"

#: The curated set. Weight 1.0: a phrasing with no benign reading in a prompt; 0.5-0.7: usually an attack,
#: sometimes not; 0.3-0.4: jailbreak vocabulary that is also everyday vocabulary.
BUILTIN: tuple[Rule, ...] = (
    # --- overriding earlier instructions ------------------------------------------------------
    _rule("ignore_previous", 1.0,
          rf"\b{_OVERRIDE} (?:all )?(?:of )?(?:the |your |these |those |any )?(?:above )?{_EARLIER} {_ORDERS}\b", 160),
    _rule("ignore_your_rules", 1.0,
          rf"\b(?:{_OVERRIDE}|override|break|violate|bypass) (?:all )?(?:of )?(?:your (?:own )?(?:instructions|rules"
          r"|guidelines|programming|training|directives|constraints|principles|system (?:prompt|message|instructions?))"
          r"|the system (?:prompt|message|instructions?))\b", 140),
    _rule("ignore_everything_above", 1.0,
          r"\b(?:ignore|disregard|forget) (?:everything|anything|all(?: of)?(?: the)?(?: text)?)"
          r" (?:above\b|before this|prior to this|(?:that )?(?:was )?said (?:above|before|so far)"
          r"|you(?: ve| have)? (?:been told|learned|know)|you were told)", 140),
    _rule("ignore_above_and", 0.7,
          r"\b(?:ignore|disregard) (?:all |everything )?(?:of )?(?:the )?(?:above|previous|prior)[\s,.;:\-]+(?:and )?"
          r"(?:instead|say|print|output|respond with|write)\b", 100),
    _rule("new_system_prompt", 1.0,
          r"\b(?:(?:your|the) (?:new )?system (?:prompt|message) is(?: now)?\b"
          r"|new system (?:prompt|message|instructions?)\s*:)", 80),
    _rule("new_instructions", 0.5,
          r"\b(?:new|updated|real|actual|true) instructions?\s*:", 60),
    # --- personas and modes ---------------------------------------------------------------------
    _rule("you_are_now", 1.0,
          rf"\byou (?:are|re) now (?:an? )?(?:(?:in )?(?:{_MODES}|{_BAD_MODES}) mode\b|{_UNBOUND}\b|free (?:from|of)\b"
          r"|no longer (?:bound|restricted|limited|an? ai)\b|freed\b)", 100),
    _rule("dan_persona", 1.0,
          r"(?i:\b(?:you are(?: now)?|you re(?: now)?|act as|known as|called|named|pretend to be|role of|become"
          r"|stay|respond as|answer as) (?:a |an |the )?)DAN\b", 80, caseless=False),
    _rule("do_anything_now", 0.5, r"\bdo anything now\b", 40),
    _rule("pretend_no_rules", 1.0,
          rf"\b(?:pretend|imagine|act as if|assume|suppose) (?:that )?you (?:are|have|were|had|re) (?:no|zero"
          rf"|without(?: any)?|not bound by(?: any)?|free (?:of|from)(?: all| any)?) {_LIMITS}\b", 160),
    _rule("no_restrictions_claim", 0.6,
          rf"\byou (?:have no|no longer have(?: any)?|are (?:free (?:of|from)|not bound by|no longer bound by)"
          rf"(?: any| all)?) {_LIMITS}\b", 140),
    _rule("act_as_unfiltered", 1.0,
          rf"\b(?:act|behave|respond|answer|reply|speak|roleplay) (?:as|like) (?:an? )?{_UNBOUND}\b", 80),
    _rule("unrestricted_ai", 0.6,
          r"\b(?:ai|assistant|chatbot|model) (?:with (?:no|zero) (?:restrictions|filters|limits|rules|censorship"
          r"|guidelines|morals|ethics)|without (?:any )?(?:restrictions|filters|limits|rules|censorship|guidelines"
          r"|morals|ethics)|that (?:has no (?:restrictions|filters|rules|limits)|can do anything|never refuses))\b",
          100),
    _rule("freed_from_confines", 0.6,
          r"\b(?:been )?(?:freed|liberated|released|broken free) from (?:the |all |its |their )?(?:typical )?"
          r"(?:confines|restrictions|limits|limitations|chains|shackles|rules)\b", 100),
    _rule("developer_mode", 0.4, rf"\b{_MODES} mode\b", 40),
    _rule("enable_mode", 0.5,
          rf"\b(?:enable|activate|enter|switch to|turn on|unlock|simulate|emulate) (?:the )?"
          rf"(?:{_MODES}|{_BAD_MODES}) mode\b", 60),
    _rule("jailbreak_mode", 1.0, rf"\b{_BAD_MODES} mode\b", 40),
    _rule("jailbreak", 0.4, r"\bjailbr(?:eak(?:s|ing|ed)?|oken)\b", 20),
    _rule("stay_in_character", 0.3, r"\b(?:stay|remain|keep) in character\b", 40),
    _rule("from_now_on", 0.3,
          r"\bfrom now on you (?:are|will (?:be|act|respond|answer|behave|only)|must|shall|have to|re)\b", 70),
    _rule("never_refuse", 0.4,
          r"\b(?:never|do not|don t|must not|cannot|can not|can t|will not|won t) (?:ever )?refuse\b", 40),
    # --- safety bypass --------------------------------------------------------------------------
    _rule("bypass_safety", 1.0,
          r"\b(?:bypass|override|disable|circumvent|ignore|disregard|turn off|deactivate|evade|get around|remove)"
          r" (?:your (?:own )?|(?:all|any)(?: of)?(?: your| the| its)? )(?:safety|content|ethical|moral)"
          r" (?:filters?|guidelines|polic(?:y|ies)|restrictions|guardrails|constraints|protocols|rules)\b", 120),
    _rule("answer_without_restrictions", 0.5,
          r"\b(?:answer|respond|reply|write|speak|talk|comply)(?: \w+){0,3} without (?:any )?(?:restrictions|filters"
          r"|censorship|limitations|limits|warnings|disclaimers|moral(?:s|izing)?|ethic(?:s|al (?:constraints"
          r"|guidelines)))\b", 100),
    # --- system prompt extraction ---------------------------------------------------------------
    _rule("reveal_system_prompt", 1.0,
          r"\b(?:reveal|print|show|repeat|output|display|tell me|give me|leak|dump|disclose|recite|write out|spell out)"
          r" (?:me )?(?:your|the) (?:(?:full|entire|exact|original|complete|initial|hidden|secret|verbatim) )*"
          r"(?:system (?:prompt|message|instructions?)|(?:hidden|initial|original|secret) (?:instructions|prompt)"
          r"|pre-?prompt)\b", 140),
    _rule("ask_system_prompt", 0.5,
          r"\bwhat (?:is|are|was|were|s) your (?:system (?:prompt|message|instructions?)|(?:initial|original|hidden"
          r"|secret) (?:instructions|prompt))\b", 80),
    _rule("repeat_text_above", 0.5,
          r"\b(?:repeat|print|output|reproduce|copy) (?:all |everything )?(?:of )?(?:the )?(?:words|text|content"
          r"|everything|instructions|lines) (?:above|before this)\b", 80),
    _rule("leak_prompt_prefix", 1.0,
          r"\b(?:repeat|print|output|reproduce|copy|write|recite)(?: \w+){0,4} (?:starting|beginning) (?:with|from|at)"
          r" (?:the (?:phrase|words?|sentence|text) )?you are\b", 120),
    # --- fake role markers and delimiters -------------------------------------------------------
    _rule("chatml_role", 1.0, r"<\|im_start\|>\s*(?:system|assistant|developer|tool)\b", 40),
    _rule("special_token", 0.5,
          r"<\|(?:im_start|im_end|im_sep|endoftext|eot_id|start_header_id|end_header_id|begin_of_text|system"
          r"|assistant|user|end)\|>", 20),
    _rule("llama3_system_header", 1.0, r"<\|start_header_id\|>\s*system\s*<\|end_header_id\|>", 60),
    # Llama 2 chat markers are matched in the template's exact case ("Iterable[inst]" is code, not a marker).
    _rule("llama_sys", 1.0, r"<</?SYS>>", 8, caseless=False),
    _rule("llama_inst", 0.5, r"\[/?INST\]", 7, caseless=False),
    _rule("md_system_header", 0.5,
          r"#{1,6}[\x20\t]*(?:system|admin|developer)(?:[\x20\t]+(?:prompt|message|override|instructions?))?"
          r"[\x20\t]*:", 40),
    _rule("md_system_link", 1.0, rf"\[{_ROLE}\]\s*\(#", 24),
    _rule("system_tag", 0.5, r"</?(?:system|system[_\-]?(?:prompt|message|instructions?))>", 24),
    _rule("system_note", 0.5,
          rf"\[{_ROLE}[\x20\t]*(?:message|note|prompt|override|instructions?|alert|notice)\]", 40),
    _rule("begin_end_override", 1.0,
          rf"\b(?:BEGIN|END)[\s_\-]*{_ROLE}[\s_\-]+(?:PROMPT|OVERRIDE|INSTRUCTIONS?|MESSAGE|COMMANDS?)\b", 60),
    _rule("admin_override", 0.5, rf"\b{_ROLE} (?:override|access granted|privileges granted)\b", 50),
)


# ---- the view the rules judge: canonical fold plus homoglyphs ----------------------------------------
#
# Every text is scanned as written (so `_SEP` still sees a zero-width space *between* words) and, when it
# has any non-ASCII character, a second time as `scan_view(text)`, where nothing hides a word:
#   1. the shared canonical fold, `fastgw.scan.fold.fold_text`, when that module exists (until then the
#      identity: step 2 covers what it does: full-width forms, Unicode dashes and spaces to ASCII, zero-width
#      characters and soft hyphens dropped);
#   2. one str.translate through `_VIEW`, which maps each character, once per process and character, to:
#      the curated homoglyphs below, then NFKD (compatibility forms: full-width, mathematical and enclosed
#      letters, ligatures, small and superscript forms, compatibility spaces; accents split off), then the
#      homoglyphs again (NFKD makes some look-alikes into letters that are not: "Ϲ" into "Σ"), with combining
#      marks and invisible characters (categories Mn, Me, Cf: zero-width and bidi controls, soft hyphen,
#      variation selectors; Hangul fillers) dropped, Unicode dashes to "-", and the Unicode tag characters of
#      "ASCII smuggling" (U+E0020-E007E) to the ASCII they stand for. NFKD decomposes each character on its
#      own, so mapping character by character is NFKD of the text (up to the order of dropped marks).
# A phrase matches if it matches in either view; scores count distinct rules, so two views never add twice.
#
# When the text has an invisible character (`_HIDDEN`), the view has lost where words ended (an invisible
# character can stand between words as well as inside one, and attackers mix both), so the view is scanned
# once more with the built-in rules whose separators are optional (`_SEP_GLUED`): "ignoreallprevious
# instructions" matches there. Only such texts get that third scan, so glued words ("godmode") cannot add
# false positives to ordinary text.

#: Look-alikes of Latin letters in the scripts attackers use for them: Unicode's confusables.txt (the
#: entries whose prototype is one ASCII letter) for Cyrillic, Greek, Armenian and Latin small capitals
#: and IPA, plus the few small capitals of "fancy text" generators confusables.txt maps elsewhere. Folding a
#: whole Russian or Greek text this way gives a mix of letters, never an English phrase: the rules need
#: letters these scripts cannot imitate (g, n, r... in "ignore"), and the benign tests pin that.
_HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "г": "r", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ь": "b", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ѡ": "w", "ѵ": "v", "ү": "y",
    "һ": "h", "ҽ": "e", "ӏ": "l", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ꙇ": "i", "ԍ": "g",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ѵ": "V", "Ү": "Y", "Һ": "H", "Ӏ": "I", "Ԁ": "D", "Ԍ": "G",
    "Ԛ": "Q", "Ԝ": "W",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "σ": "o",
    "τ": "t", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j", "ϱ": "p", "ͺ": "i",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C", "Ϳ": "J", "Ϝ": "F", "Ϻ": "M",
    # Armenian
    "ա": "w", "գ": "q", "զ": "q", "հ": "h", "ո": "n", "ռ": "n", "ս": "u", "ց": "g", "ք": "f", "օ": "o",
    "Ս": "U", "Տ": "S", "Օ": "O",
    # Latin look-alikes: dotless i and j, IPA, small capitals
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɣ": "y", "ɩ": "i", "ɪ": "i", "ɯ": "w", "ʋ": "u", "ʏ": "y", "ƽ": "s",
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ғ": "f", "ɢ": "g", "ʜ": "h", "ᴊ": "j", "ᴋ": "k", "ʟ": "l",
    "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ǫ": "q", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w",
    "ᴢ": "z",
}

#: Unicode dashes and minus to "-", line and paragraph separators to a newline (NFKD keeps them).
_PUNCT = {**{chr(c): "-" for c in (*range(0x2010, 0x2016), 0x2043, 0x2212, 0xFE58, 0xFE63)},
          "\u2028": "\n", "\u2029": "\n"}

#: Invisible characters that are not format characters by category: Hangul fillers, Khmer inherent vowels.
_INVISIBLE = "\u115f\u1160\u17b4\u17b5\u3164\uffa0"

_FIXED = {**_HOMOGLYPHS, **_PUNCT, **{c: "" for c in _INVISIBLE}}
_DROPPED = frozenset(("Mn", "Me", "Cf"))


def _view_char(c: str) -> str:
    """What one character becomes in the view (see above)."""
    cp = ord(c)
    if 0xE0020 <= cp <= 0xE007E:
        return chr(cp - 0xE0000)  # a tag character: the ASCII it encodes
    out = []
    for d in unicodedata.normalize("NFKD", _FIXED.get(c, c)):
        d = _FIXED.get(d, d)
        if d and unicodedata.category(d) not in _DROPPED:
            out.append(d)
    return "".join(out)


class _ViewTable(dict[int, "int | str | None"]):
    """The str.translate table of the view: each character computed by `_view_char` on first sight and kept
    (up to `_CAP` characters, so text with all of Unicode cannot grow it without bound)."""

    _CAP = 65536

    def __missing__(self, cp: int) -> int | str | None:
        v = _view_char(chr(cp))
        out: int | str | None = cp if v == chr(cp) else (v or None)
        if len(self) < self._CAP:
            self[cp] = out
        return out


_VIEW = _ViewTable()


def _fold_basic(text: str) -> str:
    """Stand-in for `fastgw.scan.fold.fold_text` until it exists: `_VIEW` already does what it does."""
    return text


def _load_fold() -> Callable[[str], str]:
    """The shared canonical fold, or `_fold_basic` where `fastgw.scan.fold` is absent (or not importable)."""
    try:
        fold = getattr(importlib.import_module("fastgw.scan.fold"), "fold_text")
    except (ImportError, AttributeError, SyntaxError):
        return _fold_basic
    return fold if callable(fold) else _fold_basic


_fold: Callable[[str], str] = _load_fold()

#: Invisible characters that can separate words unseen: soft hyphen, zero-width and joiner characters, bidi
#: controls, word joiner and invisible operators, variation selectors, BOM, Hangul fillers, tag characters.
_HIDDEN = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
                     "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e0fff]")


def scan_view(text: str) -> str:
    """`text` as the second scan sees it (see above); ASCII text is its own view."""
    if text.isascii():
        return text
    return _fold(text).translate(_VIEW)


# ---- which texts, under which role ------------------------------------------------------------------------

#: Keys whose values are identifiers, enums or binary payloads, never text the model reads as instructions.
_SKIP = frozenset({"type", "role", "id", "call_id", "tool_call_id", "tool_use_id", "status", "signature",
                   "encrypted_content", "cache_control", "image_url", "file_data", "file_id", "input_audio",
                   "audio", "media_type", "mime_type", "detail", "index"})
_KNOWN_ROLES = frozenset(ROLES)


def _role(value: object) -> str:
    """A message's role; a missing or unknown one counts as `user` (the caller wrote it)."""
    return value if isinstance(value, str) and value in _KNOWN_ROLES else "user"


def _item_role(item: dict) -> str:
    """The role of one Responses `input` item."""
    if "role" in item:
        return _role(item["role"])
    t = item.get("type")
    if isinstance(t, str):
        if t.endswith("_output"):  # function_call_output, computer_call_output, custom_tool_call_output, ...
            return "tool"
        if t.endswith("_call") or t == "reasoning":  # the model's own earlier turns
            return "assistant"
    return "user"


def _walk(node: object, role: str) -> Iterator[tuple[str, str]]:
    """Every string under `node` with the role it counts as (iterative: JSON nesting is not bounded here).

    Under a dict: `_SKIP` keys are left out; `data` is text only in a `{"type": "text"}` document source
    (elsewhere it is base64); a `*tool_result` block and any `output` field count as `tool`; JSON `arguments`
    are judged as written and, if they carry escapes, decoded; a tool_use `input` object is judged as its JSON,
    the way chat tool-call arguments are.
    """
    stack: list[tuple[object, str]] = [(node, role)]
    while stack:
        node, role = stack.pop()
        if isinstance(node, str):
            if node:
                yield role, node
        elif isinstance(node, list):
            stack.extend((x, role) for x in node)
        elif isinstance(node, dict):
            t = node.get("type")
            if isinstance(t, str) and t.endswith("tool_result"):
                role = "tool"
            for k, v in node.items():
                if k in _SKIP or (k == "data" and t != "text"):
                    continue
                if k == "output":
                    stack.append((v, "tool"))
                elif k == "arguments" and isinstance(v, str):
                    yield role, v
                    if "\\" in v:  # \\u0069gnore: judge the decoded values too
                        try:
                            stack.append((orjson.loads(v), role))
                        except orjson.JSONDecodeError:
                            pass
                elif k == "input" and isinstance(v, dict) and t in ("tool_use", "server_tool_use"):
                    yield role, orjson.dumps(v).decode()
                else:
                    stack.append((v, role))


def request_texts(body: dict, endpoint: str = "") -> list[tuple[str, str]]:
    """(role, text) for every text of a request the model will read, on every endpoint (see
    `PromptInjection.roles` for which role each field counts as). `endpoint` is the path after /v1/
    ("" when unknown: `input` is then read as Responses input)."""
    return list(iter_request_texts(body, endpoint))


def iter_request_texts(body: dict, endpoint: str = "") -> Iterator[tuple[str, str]]:
    """`request_texts`, one at a time (a sliced check looks at the clock between them)."""
    msgs = body.get("messages")
    if isinstance(msgs, list):
        for m in msgs:
            yield from _walk(m, _role(m.get("role")) if isinstance(m, dict) else "user")
    yield from _walk(body.get("prompt"), "user")  # completions: a string, strings, or token ids (not text)
    if endpoint != "embeddings":
        inp = body.get("input")
        if isinstance(inp, list):
            for item in inp:
                yield from _walk(item, _item_role(item) if isinstance(item, dict) else "user")
        else:
            yield from _walk(inp, "user")
    yield from _walk(body.get("instructions"), "system")  # responses
    yield from _walk(body.get("system"), "system")  # messages: a string or text blocks
    yield from _walk(body.get("tools"), "tool")
    yield from _walk(body.get("functions"), "tool")


class _Hits:
    """Which patterns fire anywhere in one text (every candidate, no overlap resolution).

    hyperscan 0.9.1 keeps no reference to a stream's match handler: the bound method is stored on this
    object, which lives until the stream is closed, or the next match would call freed memory.
    """

    __slots__ = ("found", "_on_match")

    def __init__(self) -> None:
        self.found: set[int] = set()
        self._on_match = self._match

    def _match(self, pid: int, start: int, end: int, flags: int, ctx: object) -> None:
        self.found.add(pid)

    def scan(self, db: ScanDB, data: bytes) -> set[int]:
        stream = self.open(db)
        try:
            stream.scan(data)
        finally:
            self.close(stream)
        return self.found

    def open(self, db: ScanDB) -> Any:
        """A stream to scan one text in pieces (`scan` each, then `close`)."""
        stream = db.hs.stream(self._on_match)  # positional: no keyword parsing (~0.1 us a call)
        stream.__enter__()
        return stream

    def close(self, stream: Any) -> None:
        stream.close()  # end-anchored matches fire here, to the handler it was opened with


class InjectionPolicy:
    """Compiled prompt-injection settings (built once in the master; `allocate_scratch` in each worker)."""

    __slots__ = ("db", "glued", "rules", "weights", "threshold", "action", "roles")

    name = NAME

    def __init__(self, settings: PromptInjection) -> None:
        rules = list(BUILTIN) if settings.builtin else []
        for i, c in enumerate(settings.patterns):
            name = f"custom[{i}]"
            if not c.regex:
                raise PatternError(name, "empty regex")
            if not math.isfinite(c.weight) or c.weight < 0:
                raise PatternError(name, f"weight must be a finite number >= 0, got {c.weight!r}")
            rules.append(_custom_rule(i, c))
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.weights = [r.weight for r in rules]
        # No rules (builtin off, no patterns): nothing to compile, every request scores 0.
        self.db: ScanDB | None = ScanDB([r.pattern for r in rules], prefilter=False) if rules else None
        # The built-ins again with optional separators, for the views of texts with invisible characters; its
        # ids are the built-ins' ids (they come first in `rules`). Custom regexes have no `_SEP` to relax.
        self.glued: ScanDB | None = ScanDB([
            Pattern(r.name, r.pattern.entity, r.pattern.expression.replace(_SEP.encode(), _SEP_GLUED.encode()),
                    r.pattern.max_width, caseless=r.pattern.caseless) for r in BUILTIN], prefilter=False) \
            if settings.builtin else None
        self.threshold = settings.threshold
        self.action = settings.action
        #: The roles whose texts are judged (`request_texts` says which role each field counts as).
        self.roles: frozenset[str] = frozenset(settings.roles)

    def allocate_scratch(self) -> None:
        if self.db is not None:
            self.db.allocate_scratch()
        if self.glued is not None:
            self.glued.allocate_scratch()

    def score(self, texts: Iterable[str]) -> tuple[float, list[str]]:
        """(sum of the weights of the distinct rules matched in any text, their names in rule order)."""
        db = self.db
        if db is None:
            return 0.0, []
        hits = _Hits()  # one collector for all texts: the set of ids is the union we want
        for text in texts:
            if text:
                self._scan(db, hits, text)
        return self._score(hits)

    def _scan(self, db: ScanDB, hits: _Hits, text: str) -> None:
        # surrogatepass: JSON may carry lone surrogates; they must not make scanning fail.
        hits.scan(db, text.encode("utf-8", "surrogatepass"))
        view = scan_view(text)
        if view != text:  # zero-width characters, homoglyphs, full-width letters inside words
            data = view.encode("utf-8", "surrogatepass")
            hits.scan(db, data)
            if self.glued is not None and _HIDDEN.search(text):
                hits.scan(self.glued, data)

    async def score_sliced(self, texts: Iterable[str], slicer: Slicer) -> tuple[float, list[str]]:
        """`score` in slices of the event loop (`Slicer`): a long text is scanned in pieces. The view is made
        character by character, so the views of the pieces make the view of the text."""
        db = self.db
        if db is None:
            return 0.0, []
        hits = _Hits()
        for text in texts:
            if slicer.due():
                await slicer.pause()
            if len(text) <= SLICE_PIECE:
                if text:
                    self._scan(db, hits, text)
                continue
            views: list[bytes] = []
            differs = hidden = False
            raw = hits.open(db)
            try:
                for i in range(0, len(text), _PIECE):
                    piece = text[i:i + _PIECE]
                    raw.scan(piece.encode("utf-8", "surrogatepass"))
                    view = scan_view(piece)
                    views.append(view.encode("utf-8", "surrogatepass"))
                    differs = differs or view != piece
                    hidden = hidden or _HIDDEN.search(piece) is not None
                    if slicer.due():
                        await slicer.pause()
            finally:
                hits.close(raw)
            for on, vdb in ((differs, db), (differs and hidden, self.glued)):
                if not on or vdb is None:
                    continue
                stream = hits.open(vdb)
                try:
                    for data in views:
                        stream.scan(data)
                        if slicer.due():
                            await slicer.pause()
                finally:
                    hits.close(stream)
        return self._score(hits)

    def _score(self, hits: _Hits) -> tuple[float, list[str]]:
        if not hits.found:
            return 0.0, []
        ids = sorted(hits.found)
        # fsum + round: 0.7 + 0.3 must reach a threshold of 1.0, not stop at 0.9999999999999999.
        score = round(math.fsum(self.weights[i] for i in ids), 9)
        return score, [self.rules[i].name for i in ids]

    def check(self, texts: Iterable[str]) -> tuple[bool, float, list[str]]:
        """(blocked, score, names): blocked when action is "block" and a match brings the score to the threshold."""
        return self._verdict(*self.score(texts))

    async def check_sliced(self, texts: Iterable[str], slicer: Slicer) -> tuple[bool, float, list[str]]:
        """`check` in slices of the event loop."""
        return self._verdict(*await self.score_sliced(texts, slicer))

    def _verdict(self, score: float, names: list[str]) -> tuple[bool, float, list[str]]:
        # `names` guards a threshold <= 0: a request nothing matched is never refused.
        blocked = self.action == "block" and bool(names) and score >= self.threshold
        return blocked, score, names
