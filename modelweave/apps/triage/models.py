"""Adapter classes of every triage stage, importable from one place for graph files.

Import paths (``impl:`` in the graph YAML)::

    modelweave.apps.triage.models:Normalizer         Text -> Text
    modelweave.apps.triage.models:LanguageId         Text -> Text (language, language_score)
    modelweave.apps.triage.models:PiiRedactor        Text -> Text (redacted=true)
    modelweave.apps.triage.models:InputGuard         Text -> Verdict
    modelweave.apps.triage.models:VaderSentiment     Text -> Classification (tier 0)
    modelweave.apps.triage.models:TfidfSentiment     Text -> Classification (tier 1, routing signal)
    modelweave.apps.triage.models:MiniLMSentiment    Text -> Classification (tier 2)
    modelweave.apps.triage.models:FineTunedSentiment Text -> Classification (tier 2, fine-tuned)
    modelweave.apps.triage.models:MiniLMEmbedder     Text -> Embedding
    modelweave.apps.triage.models:AnswerRetriever    Embedding (or Text) -> Generation
    modelweave.apps.triage.models:GroundingValidator Embedding (or Text) + Generation -> Verdict
    modelweave.apps.triage.models:Handoff            Text -> Generation (reply by a person)
    modelweave.apps.triage.models:LearnedRouter      Text + Classification -> Classification
                                                     (confidence = P(cheap label right))

Importing this module is cheap: every model library is imported in ``load()``.
Stages that read trained artifacts take ``data_dir`` (see
:mod:`modelweave.apps.triage.artifacts`) and need ``prepare()`` to have run.
"""

from __future__ import annotations

from modelweave.apps.triage.handoff import Handoff
from modelweave.apps.triage.preprocess import InputGuard, LanguageId, Normalizer, PiiRedactor
from modelweave.apps.triage.retrieval import AnswerRetriever, GroundingValidator, MiniLMEmbedder
from modelweave.apps.triage.router import LearnedRouter
from modelweave.apps.triage.sentiment import FineTunedSentiment, MiniLMSentiment, TfidfSentiment, VaderSentiment

__all__ = [
    "AnswerRetriever",
    "FineTunedSentiment",
    "GroundingValidator",
    "Handoff",
    "InputGuard",
    "LanguageId",
    "LearnedRouter",
    "MiniLMEmbedder",
    "MiniLMSentiment",
    "Normalizer",
    "PiiRedactor",
    "TfidfSentiment",
    "VaderSentiment",
]
