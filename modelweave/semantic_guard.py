"""A cheap, explainable guard for semantic-cache hits: do two texts *agree*?

Sentence embeddings place "cancel my order" and "don't cancel my order" closer together
(cosine 0.95 with the triage MiniLM) than many true paraphrases (0.88-0.92), so no
similarity threshold separates them. This guard runs only on a near-hit (one pair of short
texts, tens of microseconds) and rejects it when the texts differ in something that changes
the answer while barely moving the vector:

* **negation**: one text is negated (not, no, never, n't, without, ... and fr/de/es negators),
  the other is not;
* **numbers**: digits, amounts, number words (en/fr/de/es), ordinals, order ids like ``A-1234``;
* **entities**: proper nouns (capitalised mid-sentence or mixed case such as ``iPhone``),
  weekdays, months, relative days (today / tomorrow), currencies;
* **opposites** (optional): antonym pairs such as cancel/keep, enable/disable, refund/charge.

Every rejection carries a reason naming the rule and the words, so a cache dashboard can
say *why* a near-hit was refused. It is deliberately conservative: a wrong rejection costs one
model call, a wrong hit serves a wrong answer. Known blind spot: lower-case names that are
not in the lists (``my samsung`` vs ``my pixel``) are left to the similarity threshold.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["GuardConfig", "GuardVerdict", "SemanticGuard", "check"]

_TOKEN = re.compile(r"[#$€£]?[\w][\w'’\-.,/]*[\w%]|[#$€£]?\w", re.UNICODE)
_APOS = str.maketrans({"’": "'", "`": "'"})

#: Negators per language. ``n't`` contractions are caught by suffix (see ``_negated``).
NEGATORS: dict[str, frozenset[str]] = {
    "en": frozenset("not no never nothing nobody none neither nor nowhere without cannot cant dont "
                    "doesnt didnt wont isnt arent wasnt werent havent hasnt hadnt shouldnt wouldnt "
                    "couldnt mustnt aint noone".split()),
    "fr": frozenset("ne n pas jamais rien aucun aucune personne sans ni plus".split()) - {"plus", "personne"},
    "de": frozenset("nicht kein keine keinen keinem keiner keines nie niemals nichts ohne weder".split()),
    "es": frozenset("no nunca jamás nada ningún ninguno ninguna nadie sin tampoco".split()),
}
_NEGATORS = frozenset().union(*NEGATORS.values())
#: Explicit negators at most this many tokens apart count as one negation.
_NEGATION_WINDOW = 3
#: Words that *mean* "not X" (unable = not able, forgot = did not remember, missing = not there).
#: They count towards polarity like a negator, so "I forgot my password" agrees with "I don't
#: remember my password" and "I can log in" disagrees with "I am unable to log in".
IMPLICIT_NEGATIVES = frozenset("unable forgot forgotten missing failed fails fail lost lacks lacking lack absent "
                               "stop stopped stops quit refuse refused refuses".split())

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS: dict[str, int] = {w: i for i, w in enumerate(_UNITS)}
NUMBER_WORDS.update({w: 20 + 10 * i for i, w in enumerate(_TENS)})
NUMBER_WORDS.update({"hundred": 100, "thousand": 1000, "million": 1_000_000, "twice": 2, "thrice": 3,
                     "double": 2, "triple": 3, "dozen": 12, "first": 1, "third": 3,
                     "fourth": 4, "fifth": 5,
                     # fr / de / es, the small ones people type in support queries
                     "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "dix": 10, "zwei": 2, "drei": 3, "vier": 4,
                     "fünf": 5, "zehn": 10, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "diez": 10})

_UNITS_OF: dict[str, str] = {}
for _unit in "second minute hour day week month year gb mb tb kg lb inch cm km mile".split():
    _UNITS_OF.update({_unit: _unit, _unit + "s": _unit, _unit + "es": _unit})
_UNITS_OF.update({"min": "minute", "mins": "minute", "hr": "hour", "hrs": "hour", "lbs": "lb", "g": "g",
                  "am": "am", "pm": "pm"})

_WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
_MONTHS = ("january february march april may june july august september october november december").split()
_DAYS = "today tomorrow yesterday tonight weekend".split()
#: Words that are capitalised for reasons other than being names.
_NOT_NAMES = frozenset("i i'm i've i'd i'll hi hello hey dear please thanks thank ok okay yes no sir madam "
                       "hallo bonjour hola gracias merci danke bitte sie ihr ihre ihnen".split())
_CURRENCIES: dict[str, str] = {"$": "USD", "usd": "USD", "dollar": "USD", "dollars": "USD", "€": "EUR",
                               "eur": "EUR", "euro": "EUR", "euros": "EUR", "£": "GBP", "gbp": "GBP",
                               "pound": "GBP", "pounds": "GBP", "quid": "GBP"}


def _forms(*words: str) -> frozenset[str]:
    out: set[str] = set()
    for w in words:
        out.update({w, w + "s", w + "es"})
    return frozenset(out)


#: Opposite intents: one side mentions the first group (and not the second), the other the second.
ANTONYMS: list[tuple[frozenset[str], frozenset[str]]] = [
    (_forms("cancel", "canceled", "cancelled", "canceling", "cancelling", "cancellation", "terminate",
            "terminated", "end"), _forms("keep", "kept", "keeping", "continue", "continued", "renew", "renewed",
                                         "extend", "extended", "reactivate")),
    (_forms("subscribe", "subscribed", "signup"), _forms("unsubscribe", "unsubscribed", "optout")),
    (_forms("enable", "enabled", "activate", "activated", "turn_on", "on"),
     _forms("disable", "disabled", "deactivate", "deactivated", "turn_off", "off")),
    (_forms("add", "added", "adding", "include", "included"), _forms("remove", "removed", "removing",
                                                                       "delete", "deleted", "exclude")),
    (_forms("increase", "increased", "raise", "raised", "higher", "more", "upgrade", "upgraded"),
     _forms("decrease", "decreased", "lower", "lowered", "reduce", "reduced", "less", "fewer", "downgrade",
            "downgraded")),
    (_forms("open", "opened", "unlock", "unlocked", "unblock", "unblocked"),
     _forms("close", "closed", "lock", "locked", "block", "blocked", "freeze", "frozen")),
    (_forms("accept", "accepted", "approve", "approved", "allow", "allowed"),
     _forms("reject", "rejected", "decline", "declined", "deny", "denied", "refuse", "refused")),
    (_forms("refund", "refunded", "credit", "credited", "reimburse", "reimbursed"),
     _forms("charge", "charged", "debit", "debited", "bill", "billed")),
    (_forms("login", "log_in", "sign_in", "signin"), _forms("logout", "log_out", "sign_out", "signout")),
    (_forms("start", "started", "resume", "resumed"), _forms("stop", "stopped", "pause", "paused")),
    (_forms("before", "earlier", "early"), _forms("after", "later", "late")),
    (_forms("upload", "uploaded", "import"), _forms("download", "downloaded", "export")),
    (_forms("deposit", "deposited"), _forms("withdraw", "withdrew", "withdrawal", "withdrawn")),
    (_forms("buy", "bought", "purchase", "purchased"), _forms("sell", "sold")),
    (_forms("send", "sent", "sending"), _forms("receive", "received", "receiving")),
    (_forms("like", "love", "loved", "happy", "satisfied"), _forms("dislike", "hate", "hated", "unhappy",
                                                                    "dissatisfied")),
    (_forms("show", "showing", "unhide"), _forms("hide", "hidden", "hiding")),
    (_forms("maximum", "max", "most"), _forms("minimum", "min", "least")),
    (_forms("personal", "private"), _forms("business", "company", "public")),
]
_PHRASES = {"turn on": "turn_on", "turn off": "turn_off", "log in": "log_in", "log out": "log_out",
            "sign in": "sign_in", "sign out": "sign_out", "sign up": "signup", "opt out": "optout",
            "switch on": "turn_on", "switch off": "turn_off"}
_PHRASE_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in _PHRASES) + r")\b")


@dataclass(frozen=True)
class GuardConfig:
    """Which rules the guard applies (all on by default)."""

    negation: bool = True
    numbers: bool = True
    entities: bool = True
    antonyms: bool = True


class GuardVerdict(NamedTuple):
    """Whether two texts agree; ``reason`` names the rule and the differing words when not."""

    ok: bool
    reason: str = ""


@dataclass
class _Facts:
    negated: list[str] = field(default_factory=list)
    numbers: set[str] = field(default_factory=set)
    one: bool = False  # the word "one": a number only when the other side has a 1
    entities: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.translate(_APOS))


def _number(tok: str) -> str | None:
    """Canonical number of a token (``$1,000.00`` -> ``1000``), an id as itself, else None."""
    core = tok.lstrip("#$€£").rstrip("%").lower()
    if not any(c.isdigit() for c in core):
        return None
    plain = core.replace(",", "")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(st|nd|rd|th|[a-z]+)?", plain)
    if m is None:
        return core.upper().replace("-", "")  # an id or code: exact, case and dash insensitive
    value, suffix = f"{float(m.group(1)):g}", m.group(2) or ""
    if suffix in ("", "st", "nd", "rd", "th"):  # 3rd == 3
        return value
    return f"{value} {_UNITS_OF.get(suffix, suffix)}"  # 64GB == 64 GB, 3pm


#: Texts up to this long have their facts memoised (a cached input is checked again and again).
_MEMO_MAX_CHARS = 1024


def _facts(text: str) -> _Facts:
    return _facts_memo(text) if len(text) <= _MEMO_MAX_CHARS else _extract(text)


@functools.lru_cache(maxsize=4096)  # at most ~4 MB of text; _Facts values are never mutated
def _facts_memo(text: str) -> _Facts:
    return _extract(text)


def _extract(text: str) -> _Facts:
    facts = _Facts()
    toks = _tokens(text)
    lowered = [t.lower() for t in toks]
    sentence_start = True
    last_negator = -10
    last_num: str | None = None
    for i, (tok, low) in enumerate(zip(toks, lowered, strict=True)):
        bare = low.replace("'", "")
        if bare in _NEGATORS or low.endswith("n't") or (low.startswith("n'") and len(low) > 2):
            # Explicit negators close together are one negation: "ne ... pas", "no quiero nada",
            # "No, I don't want it".
            if i - last_negator > _NEGATION_WINDOW:
                facts.negated.append(low)
            last_negator = i
        elif bare in IMPLICIT_NEGATIVES:
            facts.negated.append(low)
        num = _number(tok)
        if low in _UNITS_OF and last_num is not None:
            # "2 days" vs "2 weeks": the unit belongs to the number.
            facts.numbers.discard(last_num)
            facts.numbers.add(f"{last_num} {_UNITS_OF[low]}")
        last_num = None
        if num is not None:
            facts.numbers.add(num)
            last_num = num
        elif low == "one":
            facts.one = True  # "one" is often "a" ("after one week"): never a mismatch on its own
        elif low in NUMBER_WORDS:
            last_num = f"{NUMBER_WORDS[low]:g}"
            facts.numbers.add(last_num)
        if low in _WEEKDAYS or low in _MONTHS and (low != "may" or tok == "May") or low in _DAYS:
            facts.entities.add(low)
        if low in _CURRENCIES or tok[:1] in "$€£" and tok[:1] in _CURRENCIES:
            facts.entities.add(_CURRENCIES[low if low in _CURRENCIES else tok[:1]])
        alpha = tok.replace("'", "").replace("-", "")
        if alpha.isalpha() and low not in _NOT_NAMES and low not in _UNITS_OF and (
                (tok[0].isupper() and not sentence_start)
                or (any(c.isupper() for c in tok[1:]) and not tok.isupper())  # iPhone, PayPal
                or (tok.isupper() and len(tok) >= 2)):  # VPN, UPS
            facts.entities.add(low)
        sentence_start = tok[-1] in ".!?:" or tok in ("-",)
    joined = _PHRASE_RE.sub(lambda m: _PHRASES[m.group(1)], " ".join(lowered))
    facts.words = set(re.findall(r"[\w_]+", joined))
    return facts


def _show(values: Iterable[str]) -> str:
    return "{" + ", ".join(sorted(values)) + "}" if values else "{}"


class SemanticGuard:
    """Checks that a query and a cached input agree (see the module docstring).

    Args:
        config: Which rules to apply.
    """

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()

    def __call__(self, query: str, cached: str) -> GuardVerdict:
        """``GuardVerdict(ok, reason)`` for a query and the cached input it nearly matched."""
        cfg = self.config
        a, b = _facts(query), _facts(cached)
        # Polarity, not presence: "is not broken" (two) agrees with "works" (none), and
        # "doesn't work" (one) with "stopped working" (one).
        if cfg.negation and len(a.negated) % 2 != len(b.negated) % 2:
            return GuardVerdict(False, f"negation: {_show(a.negated)} vs {_show(b.negated)}")
        a_num = a.numbers | ({"1"} if a.one and "1" in b.numbers else set())
        b_num = b.numbers | ({"1"} if b.one and "1" in a.numbers else set())
        if cfg.numbers and a_num != b_num:
            return GuardVerdict(False, f"numbers: {_show(a_num)} vs {_show(b_num)}")
        if cfg.entities:
            # A name on one side only counts when the other side lacks the word in any case, so
            # "cancel my Order" still agrees with "cancel my order".
            only_a = {e for e in a.entities - b.entities if e not in b.words}
            only_b = {e for e in b.entities - a.entities if e not in a.words}
            if only_a or only_b:
                return GuardVerdict(False, f"entities: {_show(only_a)} vs {_show(only_b)}")
        if cfg.antonyms:
            for left, right in ANTONYMS:
                a_l, a_r, b_l, b_r = a.words & left, a.words & right, b.words & left, b.words & right
                if (a_l and not a_r and b_r and not b_l) or (a_r and not a_l and b_l and not b_r):
                    return GuardVerdict(False, f"opposites: {_show(a_l | a_r)} vs {_show(b_l | b_r)}")
        return GuardVerdict(True)


_DEFAULT = SemanticGuard()


def check(query: str, cached: str) -> GuardVerdict:
    """The default guard (every rule on): ``ok, reason = check(query, cached)``."""
    return _DEFAULT(query, cached)
