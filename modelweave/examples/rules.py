"""Small rule-based models for the example graph (real logic, no ML weights).

They let the example graph exercise every node kind on any machine in
milliseconds; the reference triage app replaces them with real models.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from modelweave.adapters.base import ModelAdapter
from modelweave.v1 import messages_pb2 as pb

_WORD = re.compile(r"[\w']+", re.UNICODE)

_STOPWORDS = {
    "en": {"the", "and", "is", "it", "to", "my", "i", "you", "of", "a", "not", "this", "was", "for", "with"},
    "fr": {"le", "la", "les", "et", "est", "je", "pas", "un", "une", "de", "mon", "ma", "vous", "ce", "avec"},
    "es": {"el", "la", "los", "las", "y", "es", "no", "un", "una", "de", "mi", "que", "por", "con", "muy"},
    "de": {"der", "die", "das", "und", "ist", "ich", "nicht", "ein", "eine", "mein", "zu", "mit", "sehr", "es"},
}

_LEXICON = {
    "en": ({"good", "great", "love", "excellent", "happy", "thanks", "thank", "awesome", "perfect", "nice",
            "fast", "helpful", "amazing", "works", "like"},
           {"bad", "terrible", "hate", "broken", "awful", "angry", "slow", "refund", "worst", "late", "never",
            "damaged", "problem", "wrong", "disappointed", "useless", "poor"}),
    "fr": ({"bon", "bien", "merci", "excellent", "parfait", "super", "content"},
           {"mauvais", "cassé", "nul", "lent", "remboursement", "retard", "problème", "déçu"}),
    "es": ({"bueno", "bien", "gracias", "excelente", "perfecto", "genial", "contento"},
           {"malo", "roto", "lento", "reembolso", "tarde", "problema", "decepcionado", "terrible"}),
    "de": ({"gut", "danke", "super", "perfekt", "toll", "zufrieden"},
           {"schlecht", "kaputt", "langsam", "erstattung", "spät", "problem", "enttäuscht"}),
}
_NEGATIONS = {"not", "no", "never", "n't", "dont", "don't", "isn't", "wasn't", "didn't", "cannot", "can't"}
_INTENSIFIERS = {"very": 1.5, "really": 1.5, "extremely": 2.0, "so": 1.3, "totally": 1.5}


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _distribution(pos: float, neg: float, label_model: str) -> pb.Classification:
    """Turns positive/negative evidence into a 3-way distribution."""
    evidence = pos + neg
    # One clear lexicon hit should beat "neutral", so the neutral prior is 0.5 evidence units.
    neutral = 0.5 / (0.5 + evidence)
    rest = 1.0 - neutral
    p_pos = rest * (pos / evidence) if evidence else 0.0
    p_neg = rest * (neg / evidence) if evidence else 0.0
    scores = {"negative": p_neg, "neutral": neutral, "positive": p_pos}
    label = max(scores, key=lambda k: scores[k])
    return pb.Classification(label=label, confidence=scores[label], model=label_model,
                             scores=[pb.LabelScore(label=k, score=v) for k, v in scores.items()])


class Normaliser(ModelAdapter):
    """Unicode NFKC, control characters removed, whitespace collapsed."""

    consumes = ("Text",)
    produces = "Text"
    blocking: ClassVar[bool] = False

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Text]:
        out = []
        for m in batch:
            text = unicodedata.normalize("NFKC", m.text.content)
            text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch in "\n\t")
            text = " ".join(text.split())
            t = pb.Text()
            t.CopyFrom(m.text)
            t.content = text
            out.append(t)
        return out


class StopwordLanguage(ModelAdapter):
    """Guesses en/fr/es/de from stopword overlap; sets ``text.language``."""

    consumes = ("Text",)
    produces = "Text"
    blocking: ClassVar[bool] = False

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Text]:
        out = []
        for m in batch:
            words = _words(m.text.content)
            hits = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
            total = sum(hits.values())
            lang = max(hits, key=lambda k: (hits[k], k == "en"))
            t = pb.Text()
            t.CopyFrom(m.text)
            t.language = lang if total else "en"
            t.language_score = hits[lang] / total if total else 0.0
            out.append(t)
        return out


class LexiconSentimentParams(BaseModel):
    """Parameters of :class:`LexiconSentiment`."""

    model_config = ConfigDict(extra="forbid")
    negation: bool = False
    language: str | None = None


class LexiconSentiment(ModelAdapter):
    """Counts lexicon words; with ``negation: true`` also handles negation and intensifiers."""

    consumes = ("Text",)
    produces = "Classification"
    blocking: ClassVar[bool] = False
    Params = LexiconSentimentParams

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        name = "lexicon+negation" if self.params.negation else "lexicon"
        out = []
        for m in batch:
            lang = self.params.language or m.text.language or "en"
            positive, negative = _LEXICON.get(lang, _LEXICON["en"])
            pos = neg = 0.0
            words = _words(m.text.content)
            for i, w in enumerate(words):
                polarity = 1 if w in positive else -1 if w in negative else 0
                if not polarity:
                    continue
                weight = 1.0
                if self.params.negation:
                    window = words[max(0, i - 3):i]
                    weight *= max((_INTENSIFIERS.get(x, 1.0) for x in window), default=1.0)
                    if any(x in _NEGATIONS or x.endswith("n't") for x in window):
                        polarity = -polarity
                if polarity > 0:
                    pos += weight
                else:
                    neg += weight
            out.append(_distribution(pos, neg, f"{name}:{lang}"))
        return out


class ConstantParams(BaseModel):
    """Parameters of :class:`ConstantLabel`."""

    model_config = ConfigDict(extra="forbid")
    label: str
    confidence: float = 0.0


class ConstantLabel(ModelAdapter):
    """Always answers one label: a safe fallback when a better model fails."""

    consumes = ("Text",)
    produces = "Classification"
    blocking: ClassVar[bool] = False
    Params = ConstantParams

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Classification]:
        return [pb.Classification(label=self.params.label, confidence=self.params.confidence, model="constant")
                for _ in batch]


_REPLIES = {
    "negative": ["Thanks for reaching out. We have noted your message.",
                 "We are sorry about this experience. A refund or replacement is on its way."],
    "neutral": ["Thanks for your message. We will get back to you shortly.",
                "Thanks for your message. Our team is looking into it."],
    "positive": ["Thank you so much for the kind words!",
                 "We are glad you are happy with us. Thank you!"],
}


class TemplateResponder(ModelAdapter):
    """Picks a reply template for the sentiment label; attempt N uses candidate N."""

    consumes = ("Text", "Classification")
    produces = "Generation"
    blocking: ClassVar[bool] = False

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Generation]:
        out = []
        for m in batch:
            candidates = _REPLIES.get(m.classification.label, _REPLIES["neutral"])
            index = min(int(m.metadata.get("attempt", "1")) - 1, len(candidates) - 1)
            out.append(pb.Generation(text=candidates[index], source=f"template:{m.classification.label}:{index}",
                                     candidate=index, score=m.classification.confidence))
        return out


class ReplyRules(ModelAdapter):
    """Validates a reply: negative messages need an apology; replies must be short and non-empty."""

    consumes = ("Text", "Classification", "Generation")
    produces = "Verdict"
    blocking: ClassVar[bool] = False

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Verdict]:
        out = []
        for m in batch:
            reply = m.generation.text.lower()
            if not reply:
                verdict = pb.Verdict(passed=False, reason="empty reply")
            elif len(reply) > 280:
                verdict = pb.Verdict(passed=False, reason="reply longer than 280 characters")
            elif m.classification.label == "negative" and "sorry" not in reply:
                verdict = pb.Verdict(passed=False, reason="a complaint needs an apology")
            else:
                verdict = pb.Verdict(passed=True, score=1.0)
            verdict.validator = "reply-rules"
            out.append(verdict)
        return out


class HumanHandoff(ModelAdapter):
    """Escalation target: hands the conversation to a person."""

    consumes = ("Text",)
    produces = "Generation"
    blocking: ClassVar[bool] = False

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Generation]:
        return [pb.Generation(text="A member of our team will contact you personally.", source="human-handoff")
                for _ in batch]
