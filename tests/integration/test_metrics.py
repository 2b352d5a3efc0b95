"""Graph metrics reach Ray's real Prometheus endpoint after traffic."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.integration

EXPECTED = [
    'ray_modelweave_requests_total{',
    'ray_modelweave_request_latency_ms_bucket{',
    'ray_modelweave_node_calls_total{',
    'ray_modelweave_node_latency_ms_bucket{',
    'ray_modelweave_route_decisions_total{',
    'ray_modelweave_validation_verdicts_total{',
    'ray_modelweave_cache_lookups_total{',
    'ray_modelweave_modelled_cost_total{',
    'ray_modelweave_feedback_value{',
]


def test_metrics_endpoint_has_graph_series_after_traffic(demo_app, metrics_port):
    for text in ["terrible and broken", "great, thanks", "Le produit est cassé", "great, thanks"]:
        assert httpx.post(f"{demo_app.http}/demo", json={"input": {"text": {"content": text}}},
                          timeout=60).status_code == 200
    httpx.post(f"{demo_app.http}/demo", json={"input": {"text": {"content": ""}}}, timeout=60)
    deadline = time.monotonic() + 60
    body = ""
    while time.monotonic() < deadline:
        body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        if all(series in body for series in EXPECTED) and 'status="INVALID_ARGUMENT"' in body:
            break
        time.sleep(2)
    missing = [s for s in EXPECTED if s not in body]
    assert not missing, missing
    lines = [line for line in body.splitlines() if line.startswith("ray_modelweave_route_decisions_total{")]
    assert any('branch="other"' in line and 'node="demo/main/sentiment-cache/by-language"' in line for line in lines)
    assert any('result="hit"' in line for line in body.splitlines()
               if line.startswith("ray_modelweave_cache_lookups_total{"))
    assert 'status="INVALID_ARGUMENT"' in body
    assert 'state="escalation_threshold"' in body
