"""The benchmarks' per-process CPU accounting: roles from Ray's process titles, deltas per role."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

from process_cpu import OTHER, Snapshot, cpu_by_role, per_request_ms, process_role  # noqa: E402


def test_roles_from_ray_titles() -> None:
    assert process_role("ray::ServeReplica:triage-default:Ingress") == "ingress"
    # Ray appends the running method to a replica's title while it runs it.
    assert process_role("ray::ServeReplica:triage-default:redact.handle_request_with_rejection") == "replica redact"
    assert process_role("ray::ServeReplica:app:tfidf-fallback") == "replica tfidf-fallback"
    assert process_role("ray::ProxyActor") == "HTTP proxy"
    assert process_role("/venv/bin/python -m modelweave.process_isolation 17 4242 redact") == "ingress child redact"
    assert process_role("ray::GraphState.cache_get") == "state actor"
    assert process_role("ray::ServeController.listen_for_change") == "Serve controller"
    assert process_role("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x") == OTHER
    assert process_role("") == OTHER


def test_cpu_by_role_counts_new_processes_from_zero_and_drops_exited_ones() -> None:
    before = Snapshot({1: 10.0, 2: 5.0, 3: 7.0}, {1: "ingress", 2: OTHER, 3: "replica redact"})
    # pid 3 exited; pid 4 started (an idle worker that became the state actor: role from `after`).
    after = Snapshot({1: 12.5, 2: 5.5, 4: 0.25}, {1: "ingress", 2: OTHER, 4: "state actor"})
    spent = cpu_by_role(before, after)
    assert spent == {"ingress": 2.5, OTHER: 0.5, "state actor": 0.25}
    assert list(spent) == ["ingress", OTHER, "state actor"]  # largest first
    assert per_request_ms(spent, 100) == {"ingress": 25.0, OTHER: 5.0, "state actor": 2.5}
    assert per_request_ms(spent, 0) == {}
