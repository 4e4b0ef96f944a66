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

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from fastgw.policy.settings import OnError, Problems, Settings
from fastgw.scan.database import Pattern, PatternError, ScanDB, compile_patterns
from fastgw.scan.patterns import DEFAULT_CUSTOM_WIDTH

__all__ = ["InjectionPolicy", "PromptInjection", "InjectionPattern", "Rule", "BUILTIN", "NAME", "PatternError",
           "problems"]

NAME = "prompt-injection"


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
    return errs

#: Between two words of a phrase: whitespace, in-sentence punctuation, NBSP (C2 A0), zero-width space,
#: non-joiner, joiner (E2 80 8B-8D), narrow NBSP (E2 80 AF), word joiner (E2 81 A0), ideographic space (E3 80 80).
_SEP = r"(?:[\s\-_*,;:~|\"'`]|\xC2\xA0|\xE2\x80[\x8B-\x8D\xAF]|\xE2\x81\xA0|\xE3\x80\x80)+"


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
        stream = db.hs.stream(match_event_handler=self._on_match)
        stream.__enter__()
        try:
            stream.scan(data)
        finally:
            stream.close(match_event_handler=self._on_match)  # end-anchored matches fire here
        return self.found


class InjectionPolicy:
    """Compiled prompt-injection settings (built once in the master; `allocate_scratch` in each worker)."""

    __slots__ = ("db", "rules", "weights", "threshold", "action")

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
        self.db: ScanDB | None = ScanDB([r.pattern for r in rules]) if rules else None
        self.threshold = settings.threshold
        self.action = settings.action

    def allocate_scratch(self) -> None:
        if self.db is not None:
            self.db.allocate_scratch()

    def score(self, texts: Iterable[str]) -> tuple[float, list[str]]:
        """(sum of the weights of the distinct rules matched in any text, their names in rule order)."""
        db = self.db
        if db is None:
            return 0.0, []
        hits = _Hits()  # one collector for all texts: the set of ids is the union we want
        for text in texts:
            if text:
                # surrogatepass: JSON may carry lone surrogates; they must not make scanning fail.
                hits.scan(db, text.encode("utf-8", "surrogatepass"))
        if not hits.found:
            return 0.0, []
        ids = sorted(hits.found)
        # fsum + round: 0.7 + 0.3 must reach a threshold of 1.0, not stop at 0.9999999999999999.
        score = round(math.fsum(self.weights[i] for i in ids), 9)
        return score, [self.rules[i].name for i in ids]

    def check(self, texts: Iterable[str]) -> tuple[bool, float, list[str]]:
        """(blocked, score, names): blocked when action is "block" and a match brings the score to the threshold."""
        score, names = self.score(texts)
        # `names` guards a threshold <= 0: a request nothing matched is never refused.
        blocked = self.action == "block" and bool(names) and score >= self.threshold
        return blocked, score, names
