"""Co-location on a real Ray Serve: a grouped graph answers like the one-deployment-per-model one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from conftest import REPO, ServeEndpoints
from google.protobuf import json_format

from modelweave.layout import model_node_dicts
from modelweave.v1 import service_pb2 as svc

pytestmark = pytest.mark.integration

TEXTS = ["My parcel arrived damaged and late, I want a refund", "Le produit est cassé et je suis déçu",
         "Great service, thanks", "not bad at all", "Great service, thanks"]


def _variant(name: str, groups: dict[str, str] | None) -> dict[str, Any]:
    """The demo graph with every model in its own deployment (``groups`` None) or with ``groups``."""
    data = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    data["name"] = name
    for node in model_node_dicts(data["flow"]):
        deployment = node.setdefault("deployment", {})
        if groups is None:
            deployment["inline"] = False  # the layout before co-location: one deployment per model
        elif node["name"] in groups:
            deployment["group"] = groups[node["name"]]
    return data


@pytest.fixture(scope="module")
def layouts(serve_endpoints: ServeEndpoints) -> Iterator[ServeEndpoints]:
    from ray import serve

    from deployments.app import graph_app
    from modelweave.spec import parse_graph

    per_model = parse_graph(_variant("per-model", None))
    # normalise + language are consecutive chain steps (one call); responder + reply-check are a
    # validate's target and validator (single calls into one replica); the other rule nodes
    # without settings of their own run inside the ingress.
    grouped = parse_graph(_variant("grouped", {"normalise": "prep", "language": "prep",
                                               "responder": "reply", "reply-check": "reply"}))
    for spec in (per_model, grouped):
        serve.run(graph_app(spec), name=spec.name, route_prefix=f"/{spec.name}")
    yield serve_endpoints
    for spec in (per_model, grouped):
        serve.delete(spec.name)


def _ask(base: str, graph: str, text: str) -> svc.InferResponse:
    r = httpx.post(f"{base}/{graph}", json={"input": {"text": {"content": text}}}, timeout=60)
    assert r.status_code == 200, r.text
    return json_format.Parse(r.text, svc.InferResponse())


def test_a_grouped_graph_answers_like_one_deployment_per_model_with_fewer_deployments(layouts):
    from ray.serve.context import _get_global_client

    apps = _get_global_client().get_serve_details()["applications"]
    assert len(apps["per-model"]["deployments"]) == 11  # 10 models + the ingress
    assert set(apps["grouped"]["deployments"]) == {"prep", "reply", "cheap", "negation-aware", "Ingress"}
    for text in TEXTS:  # same order on both: the cache and the feedback variable evolve alike
        ref, got = _ask(layouts.http, "per-model", text), _ask(layouts.http, "grouped", text)
        assert got.result == ref.result, text
        # Every node keeps its own span (and CPU time) wherever it ran.
        ref_spans = [(s.node.split("/", 1)[1], s.kind, s.attempt, s.route, s.verdict, s.cache_hit)
                     for s in ref.trace.spans]
        got_spans = [(s.node.split("/", 1)[1], s.kind, s.attempt, s.route, s.verdict, s.cache_hit)
                     for s in got.trace.spans]
        assert sorted(got_spans) == sorted(ref_spans), text  # parallel branches finish in any order
        models = [s for s in got.trace.spans if s.kind == "model"]
        assert models and not any(s.error for s in models)
        if not any(s.cache_hit for s in got.trace.spans):
            assert {"main/normalise", "main/language"} <= {s.node.split("/", 1)[1] for s in models}
