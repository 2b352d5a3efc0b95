"""The graph state actor on a real local Ray: SIGKILL and SIGSTOP it under traffic.

Behaviour, not timing: every request succeeds throughout; after a restart the cache hits
again and the feedback variable has its value from before the kill (checkpoint in the GCS);
while the actor hangs the graph answers with misses and the last known threshold, and
``state_errors_total`` says so.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format

from modelweave.v1 import service_pb2 as svc

pytestmark = pytest.mark.integration

GRAPH = "recovery"
CACHE_PATH = f"{GRAPH}/main/memo"
STATE = "gate"
# "good bad" scores 0.4 for negative: below the gate threshold, so the "check" branch runs and
# moves the threshold by +0.01 per request. STAYS scores 0.89, above the threshold's max of 0.8,
# so those requests never move it.
MOVES, STAYS = "good bad", "great excellent thanks love"
_ids = itertools.count()


@pytest.fixture(scope="module")
def recovery_app(serve_endpoints: Any) -> Iterator[tuple[str, Any, str]]:
    """A small graph with a cache node (TTL 5 s, near cache 0.5 s) and an adaptive route threshold."""
    from ray import serve

    from actors.shared_state import actor_name, checkpoint_key
    from deployments.app import graph_app
    from modelweave.spec import parse_graph

    rules = "modelweave.examples.rules"
    spec = parse_graph({
        "name": GRAPH,
        "flow": {"kind": "chain", "name": "main", "steps": [
            {"kind": "cache", "name": "memo", "ttl_s": 5,
             "body": {"kind": "model", "name": "classify", "impl": f"{rules}:LexiconSentiment"}},
            {"kind": "route", "name": "gate", "default": "keep",
             "branches": {"keep": None, "check": {"kind": "model", "name": "relabel",
                                                  "impl": f"{rules}:ConstantLabel", "params": {"label": "neutral"}}},
             "rules": [{"branch": "check", "when": [{"field": "classification.confidence", "op": "lt",
                                                     "value_from": {"state": STATE, "initial": 0.5, "min": 0.0,
                                                                    "max": 0.8}}]}],
             "feedback": [{"state": STATE, "on_changed": 0.01, "on_unchanged": 0.01}]},
        ]},
    })
    serve.run(graph_app(spec), name=GRAPH, route_prefix=f"/{GRAPH}")
    yield serve_endpoints.http, actor_name(spec), checkpoint_key(spec)
    serve.delete(GRAPH)


def _infer(base: str, words: str) -> svc.InferResponse:
    """One request with a fresh text (its own cache key); it must succeed."""
    r = httpx.post(f"{base}/{GRAPH}", json={"input": {"text": {"content": f"{words} {next(_ids)}"}}}, timeout=30)
    assert r.status_code == 200, r.text
    return json_format.Parse(r.text, svc.InferResponse(), ignore_unknown_fields=True)


def _infer_text(base: str, content: str) -> svc.InferResponse:
    r = httpx.post(f"{base}/{GRAPH}", json={"input": {"text": {"content": content}}}, timeout=30)
    assert r.status_code == 200, r.text
    return json_format.Parse(r.text, svc.InferResponse(), ignore_unknown_fields=True)


def _cache_hit(resp: svc.InferResponse) -> bool:
    return [s.cache_hit for s in resp.trace.spans if s.kind == "cache"] == [True]


def _actor(name: str) -> Any:
    import ray

    return ray.get_actor(name, namespace="modelweave")


def _ask(call: Any) -> Any:
    """``ray.get(call())``, asked again while the actor is restarting (Ray 2.60 fails such a call
    at once with ``ActorUnavailableError`` instead of queueing it), for up to 30 s."""
    import ray
    from ray.exceptions import ActorUnavailableError

    deadline = time.monotonic() + 30
    while True:
        try:
            return ray.get(call(), timeout=30)
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _pid(actor: Any) -> int:
    return int(_ask(lambda: actor.__ray_call__.remote(lambda _self: os.getpid())))


def _stats(actor: Any) -> dict[str, Any]:
    stats: dict[str, Any] = _ask(actor.stats.remote)
    return stats


def _actor_cache_hit(base: str, actor: Any) -> bool:
    """A repeat served by the state actor itself (the first copy has left the near cache)."""
    content = f"{STAYS} repeat {next(_ids)}"
    before = _stats(actor)["caches"].get(CACHE_PATH, {}).get("hits", 0)
    _infer_text(base, content)
    time.sleep(0.7)  # past the 0.5 s near-cache TTL, so the repeat asks the actor
    return _cache_hit(_infer_text(base, content)) and _stats(actor)["caches"][CACHE_PATH]["hits"] > before


def _checkpointed(key: str) -> dict[str, float]:
    import json

    from actors.checkpoint import GcsKV

    raw = GcsKV().get(key)
    return json.loads(raw)["values"] if raw else {}


def test_sigkill_of_state_actor_keeps_serving_and_restores_cache_and_feedback(recovery_app):
    base, name, key = recovery_app
    actor = _actor(name)
    for _ in range(10):
        _infer(base, MOVES)
    # On a loaded machine the freshly created actor can miss the first calls' 0.5 s timeout
    # (the breaker then skips it for 1 s and those adjustments are dropped, by design): keep
    # moving the variable until the actor holds it.
    deadline = time.monotonic() + 60
    while STATE not in _stats(actor)["state"] and time.monotonic() < deadline:
        _infer(base, MOVES)
    assert _actor_cache_hit(base, actor)
    before = _stats(actor)["state"][STATE]
    assert before > 0.5  # moved away from its initial value
    deadline = time.monotonic() + 30
    while _checkpointed(key).get(STATE) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _checkpointed(key).get(STATE) == before

    old_pid = _pid(actor)
    os.kill(old_pid, signal.SIGKILL)
    for _ in range(20):  # during the restart: answers (misses), never errors
        _infer(base, STAYS)
    assert _pid(actor) != old_pid  # restarted by Ray
    assert _stats(actor)["state"][STATE] == pytest.approx(before)  # restored, not back to 0.5

    deadline = time.monotonic() + 60
    while not _actor_cache_hit(base, actor):  # caches re-created on demand: hits again
        assert time.monotonic() < deadline, "the cache never hit again after the restart"
    threshold = [s.detail for s in _infer(base, MOVES).trace.spans if s.kind == "route"][0]
    assert f"{STATE}=" in threshold and f"{STATE}=0.500" not in threshold


def test_hung_state_actor_gives_misses_last_value_and_a_metric(recovery_app, metrics_port):
    base, name, _ = recovery_app
    actor = _actor(name)
    _infer(base, MOVES)
    time.sleep(0.5)  # the ingress sends feedback adjustments in the background (actors.backends.ActorState)
    value = _stats(actor)["state"][STATE]
    pid = _pid(actor)
    os.kill(pid, signal.SIGSTOP)  # alive but unresponsive: every call would hang without timeouts
    try:
        # The first requests' lookups no longer wait on the actor (the key mirror answers them,
        # actors/key_index.py), so they may still move the replica's copy of the variable. Once
        # the replica's calls time out the breaker opens, their unsent deltas are dropped and the
        # copy goes back to the last value the actor confirmed.
        settle = time.monotonic() + 3.0
        while time.monotonic() < settle:
            assert not _cache_hit(_infer(base, MOVES))
        for _ in range(5):
            resp = _infer(base, MOVES)
            assert not _cache_hit(resp)
            route = [s.detail for s in resp.trace.spans if s.kind == "route"][0]
            assert route == f"rules[0] ({STATE}={value:.3f})"  # last known value; its deltas are dropped
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while not lines and time.monotonic() < deadline:
            body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            lines = [line for line in body.splitlines()
                     if line.startswith("ray_modelweave_state_errors_total{") and f'graph="{GRAPH}"' in line]
            time.sleep(1)
        assert lines, "state_errors_total never appeared"
        # The lookups of new keys no longer reach the actor (the replica's key mirror answers
        # them, actors/key_index.py); its pulls of the mirror and the feedback reads do.
        assert any('op="cache_get"' in line or 'op="cache_sync"' in line for line in lines), lines
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while not _actor_cache_hit(base, actor):  # back to normal once the actor answers
        assert time.monotonic() < deadline, "the cache never hit again after the actor resumed"
