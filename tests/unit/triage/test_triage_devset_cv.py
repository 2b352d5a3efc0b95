"""The support development set's out-of-fold study: folds, the route's curve and the choice rules (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from modelweave.apps.triage import data
from modelweave.apps.triage.devset_cv import OutOfFold, cascade_points, fold_of, report


def _messages(n: int) -> list[data.SupportMessage]:
    return [data.SupportMessage(f"d{i:03d}", f"message number {i}", "neutral", "en") for i in range(n)]


def test_folds_are_balanced_deterministic_and_independent_of_file_order() -> None:
    messages = _messages(23)
    folds = fold_of(messages, 5)
    assert sorted(np.bincount(folds).tolist()) == [4, 4, 5, 5, 5]
    assert np.array_equal(folds, fold_of(messages, 5))
    shuffled = messages[::-1]
    by_id = dict(zip([m.message_id for m in shuffled], fold_of(shuffled, 5), strict=True))
    assert [by_id[m.message_id] for m in messages] == folds.tolist()


def test_the_real_development_set_splits_into_five_folds() -> None:
    folds = fold_of(data.support_dev(), 5)
    assert len(folds) == 435 and set(np.bincount(folds).tolist()) == {87}


@pytest.mark.parametrize("folds", [1, 24])
def test_impossible_fold_counts_are_refused(folds: int) -> None:
    with pytest.raises(ValueError, match="folds must be in"):
        fold_of(_messages(23), folds)


def _oof() -> OutOfFold:
    # Four messages: the cheap tier is confident and right (0), unsure and wrong (1), confident
    # and wrong (2); message 3 is not English, cheap confident and wrong.
    cheap = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.8, 0.1, 0.1], [0.9, 0.05, 0.05]])
    expensive = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9], [0.02, 0.03, 0.95]])
    return OutOfFold(cheap, expensive, y=np.array([0, 1, 2, 2]), english=np.array([True, True, True, False]))


def test_the_route_escalates_low_confidence_and_every_non_english_message() -> None:
    at = {t: (a, e) for t, a, e in cascade_points(_oof(), cheap_weight=0.0)}
    assert at[0.30] == (0.5, 0.25)  # only the non-English one: right by the expensive tier
    assert at[0.50] == (0.75, 0.5)  # + the unsure one
    assert at[0.85] == (1.0, 0.75)  # + the confident-wrong one
    # With all the weight on the cheap tier escalation changes nothing.
    assert {a for _, a, _ in cascade_points(_oof(), cheap_weight=1.0)} == {0.25}


def test_report_applies_prepares_rules() -> None:
    result = report(_oof(), current_weight=0.55, current_cap=0.72)
    assert result["messages"] == 4
    assert result["cheap_accuracy"] == 0.25 and result["expensive_accuracy"] == 1.0
    # fit_ensemble_weight: the best accuracy, ties to the weight nearest 0.5.
    best = max(result["ensemble_accuracy_by_weight"].values())
    assert result["ensemble_accuracy_by_weight"][result["chosen_weight"]] == best == 1.0
    assert result["chosen_weight"] == 0.5
    # threshold_within: the smallest threshold within 0.003 of the best accuracy.
    assert result["chosen"]["rule_cap"] == 0.81 and result["chosen"]["at_rule_cap"] == (1.0, 0.75)
    assert result["current"]["at_current_cap"][1] == 0.5


def test_scoring_is_part_of_what_the_fine_tuned_model_and_the_fold_cache_depend_on() -> None:
    import copy

    from modelweave.apps.triage import finetune
    from modelweave.apps.triage.devset_cv import cache_key
    from modelweave.apps.triage.prepare import RECIPE
    from modelweave.apps.triage.sentiment import TEXTS_PER_RUN

    # prepare scores, chooses the precision and calibrates with the runs the adapter serves, so
    # changing them must rebuild the fine-tuned tier and invalidate cached fold predictions.
    assert RECIPE["finetune"]["texts_per_run"] == TEXTS_PER_RUN
    other = copy.deepcopy(RECIPE)
    other["finetune"]["texts_per_run"] = {**TEXTS_PER_RUN, "int8": 16}
    assert finetune.cache_inputs(other["finetune"], None, 8000) != finetune.cache_inputs(RECIPE["finetune"], None, 8000)
    assert cache_key(other, 5, 8000) != cache_key(RECIPE, 5, 8000)
