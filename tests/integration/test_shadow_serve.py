"""A shadow node on a real Serve app: mirrored traffic reaches the candidate's deployment; agreement is recorded."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ServeEndpoints
from google.protobuf import json_format

from modelweave import shadow_report
from modelweave.v1 import service_pb2 as svc

pytestmark = pytest.mark.integration

GRAPH = "shadowed"


@pytest.fixture(scope="module")
def shadow_app(serve_endpoints: ServeEndpoints, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[ServeEndpoints, pathlib.Path]]:
    from ray import serve

    from deployments.app import graph_app
    from modelweave.spec import parse_graph

    # The ingress replica runs on this machine, so it appends to a file the test can read.
    sink = tmp_path_factory.mktemp("shadow") / "mirrors.jsonl"
    spec: dict[str, Any] = {
        "name": GRAPH,
        "flow": {"kind": "shadow", "name": "s", "sink": str(sink), "max_pending": 16,
                 "primary": {"kind": "model", "name": "current", "impl": "slow_models:SlowLabel",
                             "params": {"seconds": 0.01}},
                 "candidates": [{"kind": "model", "name": "candidate", "impl": "slow_models:Counting",
                                 "params": {"seconds": 0.01}}]},
    }
    serve.run(graph_app(parse_graph(spec)), name=GRAPH, route_prefix=f"/{GRAPH}")
    yield serve_endpoints, sink
    serve.delete(GRAPH)


def _records(sink: pathlib.Path, want: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = sink.read_text().splitlines() if sink.exists() else []
        if len(lines) >= want:
            break
        time.sleep(0.5)
    return [json.loads(line) for line in lines]


def test_mirrored_traffic_reaches_the_candidate_and_agreement_is_recorded(shadow_app, metrics_port):
    from ray.serve.context import _get_global_client

    endpoints, sink = shadow_app
    deployments = _get_global_client().get_serve_details()["applications"][GRAPH]["deployments"]
    assert {"current", "candidate", "Ingress"} <= set(deployments)  # the candidate is a real deployment
    for i in range(8):
        r = httpx.post(f"{endpoints.http}/{GRAPH}", json={"input": {"text": {"content": f"message {i}"}}},
                       timeout=60)
        assert r.status_code == 200, r.text
        resp = json_format.Parse(r.text, svc.InferResponse())
        assert resp.result.classification.label == "slow"  # the primary's answer
        kinds = [(s.node, s.kind, s.route) for s in resp.trace.spans]
        assert ("shadowed/s", "shadow", "mirrored") in kinds
        assert not any(node.endswith("/candidate") for node, _, _ in kinds)
    assert len(_records(sink, 8)) == 8
    # The candidate ran all 8 mirrored requests: its own count, read through one more mirror, says so.
    probe = httpx.post(f"{endpoints.http}/{GRAPH}", json={"input": {"text": {"content": "count?"}}}, timeout=60)
    assert probe.status_code == 200
    records = _records(sink, 9)
    assert len(records) == 9
    assert len({r["request_id"] for r in records}) == 9
    normal = [r for r in records if r["fields"]["classification.label"]["candidate"] == "done"]
    assert len(normal) == 8
    (count,) = [r for r in records if r["fields"]["classification.label"]["candidate"] != "done"]
    assert count["fields"]["classification.label"]["candidate"] == "8"
    assert all(r["result"] == "compared" and r["candidate"] == "candidate" and r["node"] == "shadowed/s"
               for r in records)
    assert all(r["fields"]["classification.label"]["primary"] == "slow" for r in records)
    report = shadow_report.load(sink)
    assert report.candidates[0].fields["classification.label"].agreement == 0.0
    assert report.candidates[0].fields["classification.confidence"].agreement == 1.0

    deadline = time.monotonic() + 60
    lines: list[str] = []
    while time.monotonic() < deadline:
        body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        lines = [line for line in body.splitlines() if line.startswith("ray_modelweave_shadow_comparisons_total{")
                 and f'graph="{GRAPH}"' in line]
        if any('result="differ"' in line for line in lines) and any('result="equal"' in line for line in lines):
            break
        time.sleep(2)
    differ = [line for line in lines if 'result="differ"' in line and 'field="classification.label"' in line]
    assert differ and 'candidate="candidate"' in differ[0] and float(differ[0].rsplit(" ", 1)[1]) >= 9
    assert any('result="equal"' in line and 'field="classification.confidence"' in line for line in lines)
