"""split and semantic cache on a real Serve app: shares, stickiness, weight changes by redeploy, guard."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from modelweave.spec import parse_graph

pytestmark = pytest.mark.integration


def _constant(name: str, label: str, **deployment: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"kind": "model", "name": name, "impl": "modelweave.examples.rules:ConstantLabel",
                            "params": {"label": label, "confidence": 0.9}}
    if deployment:
        node["deployment"] = deployment
    return node


def _split_graph(current: float, candidate: float) -> dict[str, Any]:
    return {"name": "abtest", "flow": {
        "kind": "split", "name": "ab", "sticky": "metadata.user",
        "weights": {"current": current, "candidate": candidate},
        "branches": {"current": _constant("current", "old"),
                     # Its own deployment: a candidate is a real model deployment, not a rule in the ingress.
                     "candidate": _constant("candidate", "new", inline=False)}}}


def _deploy(data: dict[str, Any]) -> None:
    from ray import serve

    from deployments.app import graph_app

    spec = parse_graph(data)
    serve.run(graph_app(spec), name=spec.name, route_prefix=f"/{spec.name}")


def _ask(client: httpx.Client, base: str, graph: str, content: str, **metadata: str) -> httpx.Response:
    body = {"input": {"text": {"content": content}, "metadata": metadata}}
    return client.post(f"{base}/{graph}", json=body, timeout=30)


def test_split_shares_stickiness_and_weight_change_without_dropping_requests(serve_endpoints):
    _deploy(_split_graph(80, 20))
    with httpx.Client() as client:
        first: dict[str, str] = {}
        for u in range(150):
            r = _ask(client, serve_endpoints.http, "abtest", "hello", user=f"u{u}")
            assert r.status_code == 200, r.text
            first[f"u{u}"] = r.json()["result"]["classification"]["label"]
        counts = Counter(first.values())
        assert 10 <= counts["new"] <= 55, counts  # 20 % of 150 = 30, sd 4.9
        for u in range(0, 150, 10):  # the same user stays on the same branch
            r = _ask(client, serve_endpoints.http, "abtest", "again", user=f"u{u}")
            assert r.json()["result"]["classification"]["label"] == first[f"u{u}"]
        span = [s for s in r.json()["trace"]["spans"] if s["kind"] == "split"][0]
        assert span["route"] in ("current", "candidate") and "sticky by metadata.user" in span["detail"]

        # Shift all traffic to the candidate by redeploying the graph while clients keep sending.
        statuses: list[int] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client() as c:
                i = 0
                while not stop.is_set():
                    statuses.append(_ask(c, serve_endpoints.http, "abtest", "during", user=f"w{i}").status_code)
                    i += 1

        workers = [threading.Thread(target=traffic) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            _deploy(_split_graph(0, 100))
            time.sleep(1.0)
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert statuses and set(statuses) == {200}, Counter(statuses)
        labels = {_ask(client, serve_endpoints.http, "abtest", "after", user=f"u{u}").json()["result"]
                  ["classification"]["label"] for u in range(30)}
        assert labels == {"new"}
    from ray import serve

    serve.delete("abtest")


def test_semantic_cache_hits_paraphrases_and_guard_refuses_negation(serve_endpoints):
    import ray

    from actors.shared_state import get_state_actor

    data = {"name": "semcache", "flow": {
        "kind": "cache", "name": "answers", "key": "semantic", "threshold": 0.8,
        "embed": {"kind": "model", "name": "embed", "impl": "evolution_models:BagEmbed"},
        "body": {"kind": "model", "name": "expensive", "impl": "modelweave.examples.rules:LexiconSentiment"}}}
    _deploy(data)
    actor = get_state_actor(parse_graph(data))

    def entries() -> int:
        index = ray.get(actor.stats.remote(), timeout=30)["semantic"].get("semcache/answers")
        return int(index["size"]) if index else 0

    entries()  # the state actor is up before the first lookup (a cold start exceeds the link's timeout)
    with httpx.Client() as client:
        def cache_span(content: str) -> dict[str, Any]:
            r = _ask(client, serve_endpoints.http, "semcache", content)
            assert r.status_code == 200, r.text
            return [s for s in r.json()["trace"]["spans"] if s["kind"] == "cache"][0]

        assert not cache_span("please cancel my order now").get("cacheHit")
        # Stores reach the shared index in the background (fire-and-forget).
        deadline = time.monotonic() + 10
        while entries() < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        hit = cache_span("Please cancel my order now!")  # another text: only the shared index can answer
        assert hit.get("cacheHit") and hit["detail"].startswith("semantic hit"), hit
        refused = cache_span("please don't cancel my order now")
        assert not refused.get("cacheHit") and refused.get("detail", "").startswith(
            "near-hit rejected by guard (negation"), refused
    from ray import serve

    serve.delete("semcache")
