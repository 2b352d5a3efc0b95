"""The reference triage app on the shared Ray cluster, through HTTP and gRPC, with real models."""

from __future__ import annotations

import pathlib

import httpx
import pytest
from google.protobuf import json_format

from modelweave.client import grpc_stub
from modelweave.v1 import messages_pb2 as pb
from modelweave.v1 import service_pb2 as svc

pytestmark = pytest.mark.integration

REPO_GRAPH = "examples/triage.yaml"


@pytest.fixture(scope="module")
def triage_app(serve_endpoints):
    pytest.importorskip("onnxruntime", reason="model extras not installed (scripts/install_models.sh)")
    from ray import serve

    from deployments.app import graph_app
    from modelweave.prepare import data_dir, run_prepare_hooks
    from modelweave.spec import load_graph, parse_graph

    spec = load_graph(pathlib.Path(__file__).resolve().parents[2] / REPO_GRAPH)
    run_prepare_hooks(spec, data_dir(), progress=False, log=lambda _m: None)
    serve.run(graph_app(spec), name="triage", route_prefix="/triage")
    # A strict answer validator: every candidate fails, so the loop retries, then escalates.
    strict = parse_graph({
        "name": "strict-answers",
        "flow": {"kind": "chain", "name": "main", "steps": [
            {"kind": "model", "name": "embed", "impl": "modelweave.apps.triage.models:MiniLMEmbedder"},
            {"kind": "validate", "name": "grounded", "max_attempts": 3,
             "target": {"kind": "model", "name": "retrieve", "impl": "modelweave.apps.triage.models:AnswerRetriever"},
             "validator": {"kind": "model", "name": "grounding",
                           "impl": "modelweave.apps.triage.models:GroundingValidator", "params": {"threshold": 0.99}},
             "escalate": {"kind": "model", "name": "handoff", "impl": "modelweave.apps.triage.models:Handoff",
                          "params": {"reason": "ungrounded"}}},
        ]},
    })
    serve.run(graph_app(strict), name="strict-answers", route_prefix="/strict-answers")
    yield serve_endpoints
    serve.delete("strict-answers")
    serve.delete("triage")


def _post(base: str, text: str, graph: str = "triage") -> svc.InferResponse:
    r = httpx.post(f"{base}/{graph}", json={"input": {"text": {"content": text}}}, timeout=120)
    assert r.status_code == 200, r.text
    return json_format.Parse(r.text, svc.InferResponse())


def _routes(resp: svc.InferResponse) -> dict[str, str]:
    return {s.node.rsplit("/", 1)[-1]: s.route for s in resp.trace.spans if s.kind == "route"}


def test_complaint_is_redacted_classified_and_handed_to_a_person(triage_app):
    resp = _post(triage_app.http, "My parcel arrived damaged and late. Call me at 212-555-0199, I want a refund!")
    out = resp.result
    assert "212-555-0199" not in out.text.content and "<PHONE_NUMBER>" in out.text.content
    assert out.text.redacted and out.text.language == "en"
    assert out.classification.label == "negative"
    assert _routes(resp)["answer-path"] == "complaint"
    assert out.generation.source == "human:complaint"


def test_non_english_takes_its_own_path(triage_app):
    resp = _post(triage_app.http, "Bonjour, mon colis est arrivé cassé et je voudrais un remboursement.")
    routes = _routes(resp)
    assert resp.result.text.language == "fr"
    assert routes["redaction"] == "other-language"
    assert routes["escalate"] == "expensive"  # non-English always gets the expensive tier
    assert routes["answer-path"] == "other-language"
    assert resp.result.generation.source == "human:non-english"
    assert "colis" in resp.result.text.content  # the pattern-only redactor keeps ordinary words


def test_question_gets_a_grounded_answer_and_repeat_hits_the_cache(triage_app):
    first = _post(triage_app.http, "what is your favorite color")
    assert _routes(first)["answer-path"] == "answer"
    assert first.result.generation.source.startswith("chatterbot:")
    assert first.result.verdict.passed
    second = _post(triage_app.http, "what is your favorite color")
    assert [s.cache_hit for s in second.trace.spans if s.kind == "cache"] == [True]
    assert not any(s.node.endswith("/tfidf") for s in second.trace.spans)
    assert second.result.classification.label == first.result.classification.label


def test_uncertain_message_escalates_and_recalibrates_the_threshold(triage_app):
    # TF-IDF confidence 0.42: below the threshold's lower bound (0.45), so it escalates in any state.
    resp = _post(triage_app.http, "long day today, but good")
    spans = resp.trace.spans
    assert _routes(resp)["escalate"] == "expensive"
    assert any(s.node.endswith("/minilm") and s.cpu_ms > 0 for s in spans)
    assert any(s.kind == "parallel" and "mean" in s.detail for s in spans)
    feedback = [s for s in spans if s.kind == "feedback"]
    assert len(feedback) == 1 and feedback[0].detail.startswith("escalation_threshold ")
    route = next(s for s in spans if s.kind == "route" and s.node.endswith("/escalate"))
    assert "escalation_threshold=" in route.detail


def test_validator_feedback_loop_retries_then_escalates(triage_app):
    resp = _post(triage_app.http, "where is my order", graph="strict-answers")
    attempts = [s.attempt for s in resp.trace.spans if s.node.endswith("/grounding")]
    candidates_tried = [s for s in resp.trace.spans if s.node.endswith("/retrieve")]
    assert attempts == [1, 2, 3] and len(candidates_tried) == 3
    validate = next(s for s in resp.trace.spans if s.kind == "validate")
    assert validate.verdict == "failed" and validate.route == "escalate"
    assert resp.result.generation.source == "human:ungrounded"


def test_triage_over_grpc_stream(triage_app):
    request = svc.InferRequest(input=pb.Message(text=pb.Text(content="Thanks, the support team was great!")))
    events = list(grpc_stub(triage_app.grpc).InferStream(request, metadata=(("application", "triage"),), timeout=120))
    result = events[-1].result.result
    assert result.classification.label == "positive"
    assert any(e.span.node.endswith("/guard") and e.span.verdict == "passed" for e in events if e.HasField("span"))
