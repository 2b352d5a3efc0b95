"""Fit check before deploy and the laptop profile (pure, no Ray)."""

from __future__ import annotations

from pathlib import Path

from modelweave.fit import Ask, NodeCapacity, check_fit, graph_asks, laptop_factor, nodes_from_ray, scale_cpus
from modelweave.spec import load_graph

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_triage_asks_count_every_replica_and_the_ingress() -> None:
    asks = {a.name: a for a in graph_asks([load_graph(EXAMPLES / "triage.yaml")])}
    # 16 model nodes: the 4 handoffs (non-blocking rules) and the models cheaper than a Serve hop
    # placed with `inline: true` run inside the ingress and ask for nothing; 2 model deployments
    # (spaCy redaction, the fine-tuned MiniLM) + the ingress.
    assert len(asks) == 3 and asks["triage/Ingress"].num_cpus == 0.1
    assert not any(part in name for name in asks
                   for part in ("handoff", "tfidf", "normalise", "retrieve", "embed", "grounding", "patterns"))
    assert (asks["triage/minilm"].min_replicas, asks["triage/minilm"].max_replicas) == (1, 2)


def test_minimum_needs_that_do_not_fit_are_an_error_saying_what_to_change() -> None:
    specs = [load_graph(EXAMPLES / "triage.yaml"), load_graph(EXAMPLES / "triage-baseline.yaml")]
    report = check_fit(graph_asks(specs), [NodeCapacity(cpus=1)], "a 1-CPU machine")
    assert not report.fits
    # 1.05 (2.85 with a deployment per model node, 2.45 with the handoffs in the ingress).
    assert "need 1.05 CPUs at start but a 1-CPU machine has 1" in report.errors[0]
    assert "triage/minilm 1 x 0.5" in report.errors[0] and "--profile laptop" in report.errors[0]
    assert check_fit(graph_asks(specs), [NodeCapacity(cpus=4)]).fits


def test_autoscaling_maxima_beyond_the_target_are_a_warning() -> None:
    asks = [Ask("g/m", num_cpus=1, min_replicas=1, max_replicas=4)]
    report = check_fit(asks, [NodeCapacity(cpus=2)])
    assert report.fits and "at autoscaling maxima the graphs ask 4 CPUs" in report.warnings[0]


def test_per_replica_gpu_custom_resource_and_per_node_limits_are_checked() -> None:
    asks = [Ask("g/big", num_cpus=3), Ask("g/gpu", num_cpus=0.1, num_gpus=1),
            Ask("g/tpu", num_cpus=0.1, resources={"tpu": 1}),
            Ask("g/spread", num_cpus=0.1, min_replicas=3, max_replicas=3, max_per_node=1)]
    errors = check_fit(asks, [NodeCapacity(cpus=2), NodeCapacity(cpus=2)], "cluster").errors
    assert any("g/big asks 3 CPUs per replica but the largest node of cluster has 2" in e for e in errors)
    assert any("g/gpu asks 1 GPUs" in e for e in errors)
    assert any("custom resource tpu=1 that no node" in e for e in errors)
    assert any("g/spread needs 3 replicas at most 1 per node, so 3 nodes" in e for e in errors)


def test_fragmented_nodes_are_a_warning_when_totals_fit() -> None:
    asks = [Ask("g/m", num_cpus=1.2, min_replicas=3, max_replicas=3)]
    report = check_fit(asks, [NodeCapacity(cpus=2), NodeCapacity(cpus=2)])
    assert report.fits and "too fragmented" in report.warnings[0]


def test_laptop_profile_scales_cpu_asks_to_fit_the_maxima() -> None:
    # The reference layout fits 2 CPUs as it is (factor 1); the co-located one needs scaling.
    assert laptop_factor(graph_asks([load_graph(EXAMPLES / "triage.yaml")]), 2.0) == 1.0
    specs = [load_graph(EXAMPLES / "triage-colocated.yaml"), load_graph(EXAMPLES / "triage-baseline.yaml")]
    factor = laptop_factor(graph_asks(specs), 2.0)
    assert 0.75 < factor < 0.8  # maxima 2.55 CPUs (minilm may scale to 2 replicas) onto 2
    scaled = scale_cpus(specs, factor)
    report = check_fit(graph_asks(scaled), [NodeCapacity(cpus=2)])
    assert report.fits and not report.warnings
    assert {a.name: a.num_cpus for a in graph_asks(scaled)}["triage/minilm"] == 0.39  # 0.5 x 0.784
    assert laptop_factor(graph_asks(scaled), 2.0) == 1.0


def test_nodes_from_ray_keeps_alive_nodes_and_custom_resources() -> None:
    raw = [{"Alive": True, "Resources": {"CPU": 3.0, "memory": 1e9, "node:127.0.0.1": 1.0, "slot": 2.0}},
           {"Alive": False, "Resources": {"CPU": 8.0}},
           {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0, "accelerator_type:T4": 1.0}}]
    assert nodes_from_ray(raw) == [NodeCapacity(cpus=3.0, resources={"slot": 2.0}), NodeCapacity(cpus=1.0, gpus=1.0)]


def test_replicated_profile_puts_every_model_in_the_ingress_with_a_replica_per_core(monkeypatch) -> None:
    import os

    from modelweave.checker import check_graph
    from modelweave.cli_cluster import apply_profile
    from modelweave.layout import hop_paths

    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    triage = load_graph(EXAMPLES / "triage.yaml")
    assert max(p.serve_hops for p in hop_paths(check_graph(triage))) > 0
    (spec,), note = apply_profile([triage], "replicated", None)
    assert "3 ingress replica(s)" in note
    assert spec.ingress.num_replicas == 3 and spec.ingress.autoscaling_config is None
    checked = check_graph(spec)
    assert not checked.layout.deployments and max(p.serve_hops for p in hop_paths(checked)) == 0
    # Everything else stays: the same nodes, and each model's in-process batching.
    assert spec.name == triage.name and spec.ingress.admission == triage.ingress.admission
    before = {name: n.deployment.batching for name, n in check_graph(triage).models.items()}
    assert {name: n.deployment.batching for name, n in checked.models.items()} == before
    assert all(n.deployment.inline is True for n in checked.models.values())


def test_isolated_profile_runs_the_deployed_heavy_models_in_child_processes_of_one_ingress() -> None:
    from modelweave.checker import check_graph
    from modelweave.cli_cluster import apply_profile

    triage = load_graph(EXAMPLES / "triage.yaml")
    before = check_graph(triage)
    (spec,), note = apply_profile([triage], "isolated", None)
    assert note.startswith("profile isolated")
    checked = check_graph(spec)
    assert not checked.layout.deployments
    assert checked.layout.child_process == {"redact", "minilm"} == set(before.layout.deployments)
    assert spec.ingress == triage.ingress  # one ingress, scaled as the file says
    assert {name: n.deployment.batching for name, n in checked.models.items()} == {
        name: n.deployment.batching for name, n in before.models.items()}
