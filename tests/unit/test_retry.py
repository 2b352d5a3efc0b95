"""Retry budget and backoff of model calls whose replica was lost."""

from __future__ import annotations

from modelweave.retry import RetryBudget, backoff_s


def test_budget_allows_a_floor_then_a_share_of_requests():
    now = [0.0]
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=2.0, clock=lambda: now[0])
    assert budget.try_spend() and budget.try_spend()  # the floor: 1/s over 2 s
    assert not budget.try_spend()
    for _ in range(10):
        budget.deposit()  # 10 requests earn 2 retries
    assert budget.try_spend() and budget.try_spend()
    assert not budget.try_spend()
    assert budget.spent == 4 and budget.refused == 2
    now[0] += 1.0  # time refills the floor
    assert budget.try_spend()


def test_budget_is_capped():
    now = [0.0]
    budget = RetryBudget(ratio=0.0, min_per_s=1.0, window_s=2.0, clock=lambda: now[0])
    now[0] += 1000.0
    spent = 0
    while budget.try_spend():
        spent += 1
    assert spent == 2  # never more than the floor's window, however long it was idle


def test_backoff_is_jittered_exponential_and_capped():
    assert backoff_s(1, rng=lambda: 1.0) == 0.05
    assert backoff_s(3, rng=lambda: 1.0) == 0.2
    assert backoff_s(10, rng=lambda: 1.0) == 1.0
    assert backoff_s(3, rng=lambda: 0.5) == 0.1
    assert backoff_s(2, rng=lambda: 0.0) == 0.0
