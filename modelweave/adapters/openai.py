"""Generator and judge nodes backed by an OpenAI-compatible HTTP server.

Works with anything that implements ``POST /v1/chat/completions`` or
``POST /v1/completions`` (vLLM, llama.cpp server, Ollama, LM Studio, the OpenAI
API). Requests of a batch run concurrently on a small thread pool; transient
failures (connection errors, timeouts, HTTP 429 and 5xx) are retried with
exponential backoff, other HTTP errors fail at once with the server's message.
Every request carries the W3C trace context (``traceparent``) of the graph request
it serves, when there is one.

The API key is read from the environment variable named by ``api_key_env`` at
``load()`` time, so secrets never appear in graph files.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import string
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelweave.adapters.base import ModelAdapter
from modelweave.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    GraphSpecError,
    InvalidArgument,
    ModelError,
    Unavailable,
)
from modelweave.trace import trace_headers
from modelweave.v1 import messages_pb2 as pb

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_KEYWORD = re.compile(r"\b(pass|passed|yes|fail|failed|no)\b", re.IGNORECASE)
logger = logging.getLogger("modelweave.adapters.openai")


class OpenAIParams(BaseModel):
    """Parameters shared by :class:`OpenAIGenerator` and :class:`OpenAIJudge`.

    Attributes:
        base_url: Server root including the version prefix, e.g. ``http://127.0.0.1:8000/v1``.
        model: Model name sent in the request body.
        endpoint: ``chat`` (``/chat/completions``) or ``completions`` (``/completions``).
        api_key_env: Environment variable holding the API key (no auth header when
            unset or empty).
        system_prompt: System message (prepended to the prompt for ``completions``).
        prompt_template: ``str.format`` template of the user prompt; the fields each
            adapter offers are listed in its docstring.
        template_metadata: Opt in to the ``metadata`` template field. Metadata can come
            from clients, so it is off by default; when on, every value is inserted as a
            JSON string literal (quoted and escaped), never as raw prompt text.
        max_tokens: Completion length limit.
        temperature: Sampling temperature.
        stop: Stop sequences.
        timeout_s: Per-request timeout in seconds.
        max_retries: Retries after the first try for transient failures.
        backoff_s: First retry delay; doubles on every retry (``Retry-After`` wins when larger).
        concurrency: Requests of one batch in flight at once.
        extra_body: Extra JSON fields merged into every request body.
        headers: Extra HTTP headers.
        health_path: Path probed by ``health()`` (GET, below ``base_url``); None skips it.
        idempotent: Whether modelweave may resend a call whose replica died mid-call. Off
            by default: the upstream may already have done (and billed) the work.
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str
    model: str
    endpoint: Literal["chat", "completions"] = "chat"
    api_key_env: str | None = "OPENAI_API_KEY"
    system_prompt: str | None = None
    prompt_template: str = "{text}"
    template_metadata: bool = False
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stop: list[str] | None = None
    timeout_s: float = Field(default=30.0, gt=0.0)
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0.0)
    concurrency: int = Field(default=4, ge=1, le=64)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    health_path: str | None = "/models"
    idempotent: bool = False


class _OpenAIBase(ModelAdapter):
    """HTTP plumbing: client, retries, prompt rendering, concurrency."""

    @classmethod
    def is_idempotent(cls, params: Mapping[str, Any]) -> bool:
        return bool(cls.validate_params(params).idempotent)

    #: Template fields each subclass offers (checked when the node is configured).
    fields: ClassVar[frozenset[str]] = frozenset()
    blocking = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        unknown = {
            name.split(".")[0].split("[")[0]
            for _, name, _, _ in string.Formatter().parse(self.params.prompt_template)
            if name is not None
        } - (self.fields if self.params.template_metadata else self.fields - {"metadata"})
        if unknown:
            raise GraphSpecError(
                f"{type(self).__name__}: params.prompt_template uses unknown fields {sorted(unknown)}; "
                f"available: {sorted(self.fields)} ('metadata' needs params.template_metadata: true)"
            )
        self._client: Any = None
        self._pool: Any = None

    def load(self) -> None:
        """Creates the HTTP client and the request thread pool."""
        from concurrent.futures import ThreadPoolExecutor

        import httpx

        headers = {"Content-Type": "application/json", **self.params.headers}
        key = os.environ.get(self.params.api_key_env or "", "") if self.params.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=self.params.base_url.rstrip("/"), headers=headers, timeout=self.params.timeout_s
        )
        self._pool = ThreadPoolExecutor(self.params.concurrency, thread_name_prefix=type(self).__name__)

    def close(self) -> None:
        """Releases the client and the thread pool."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if self._client is not None:
            self._client.close()
        self._client = self._pool = None

    def health(self) -> None:
        """Raises ``Unavailable`` unless ``GET base_url + health_path`` answers 2xx."""
        if self._client is None:
            raise FailedPrecondition(f"{type(self).__name__} is not loaded")
        if self.params.health_path is None:
            return
        import httpx

        try:
            response = self._client.get(self.params.health_path)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{type(self).__name__}: {self.params.base_url} unreachable: {exc}") from None
        if response.status_code >= 300:
            raise Unavailable(f"{type(self).__name__}: health probe answered HTTP {response.status_code}")

    def complete(self, prompt: str, headers: Mapping[str, str] | None = None) -> tuple[str, dict[str, Any]]:
        """Sends one prompt and returns ``(text, full response JSON)``.

        Args:
            prompt: The user prompt.
            headers: Extra headers of this request (the W3C trace context of the request it
                serves, :func:`modelweave.trace.trace_headers`).
        """
        p = self.params
        body: dict[str, Any] = {"model": p.model, "max_tokens": p.max_tokens, "temperature": p.temperature}
        if p.stop:
            body["stop"] = p.stop
        if p.endpoint == "chat":
            messages = [{"role": "system", "content": p.system_prompt}] if p.system_prompt else []
            messages.append({"role": "user", "content": prompt})
            body["messages"] = messages
            path = "/chat/completions"
        else:
            body["prompt"] = f"{p.system_prompt}\n\n{prompt}" if p.system_prompt else prompt
            path = "/completions"
        body.update(p.extra_body)
        reply = self._post(path, body, headers)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] if p.endpoint == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise Unavailable(f"{type(self).__name__}: malformed reply {json.dumps(reply)[:200]}") from None
        return str(text or ""), reply

    def _post(self, path: str, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        import httpx

        if self._client is None:
            raise FailedPrecondition(f"{type(self).__name__} is not loaded")
        p = self.params
        last = ""
        timed_out = False
        for attempt in range(p.max_retries + 1):
            delay = p.backoff_s * (2**attempt)
            try:
                response = self._client.post(path, json=body, headers=headers or None)
            except httpx.TimeoutException as exc:
                last, timed_out = f"timeout after {p.timeout_s}s ({type(exc).__name__})", True
            except httpx.TransportError as exc:
                last, timed_out = f"{type(exc).__name__}: {exc}", False
            else:
                status = response.status_code
                if status < 300:
                    try:
                        return dict(response.json())
                    except ValueError:
                        raise Unavailable(f"{type(self).__name__}: reply is not JSON") from None
                detail = response.text[:300]
                if status in (401, 403):
                    # Our credentials, not the client's request: a server-side failure. The
                    # upstream body stays in this replica's log.
                    logger.error("%s: HTTP %s from %s%s (is $%s set?): %s", type(self).__name__, status,
                                 p.base_url, path, p.api_key_env, detail)
                    raise ModelError(f"{type(self).__name__}: the model server refused our credentials "
                                     f"(HTTP {status}); see the replica log")
                if status != 429 and status < 500:
                    logger.warning("%s: HTTP %s from %s%s: %s", type(self).__name__, status, p.base_url, path, detail)
                    raise InvalidArgument(f"the model server refused the request (HTTP {status})")
                last, timed_out = f"HTTP {status}: {detail}", False
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, min(float(retry_after), 30.0))
            if attempt < p.max_retries:
                time.sleep(delay)
        error = DeadlineExceeded if timed_out else Unavailable
        raise error(f"{type(self).__name__}: {p.base_url}{path} failed {p.max_retries + 1} times; last: {last}")

    def _map(self, fn: Any, batch: Sequence[pb.Message]) -> list[Any]:
        if self._pool is None:
            raise FailedPrecondition(f"{type(self).__name__} is not loaded")
        if len(batch) == 1:
            return [fn(batch[0])]
        # Pool threads do not inherit context variables (the rows' trace context): each
        # task runs in a copy of the caller's context.
        contexts = [contextvars.copy_context() for _ in batch]
        return list(self._pool.map(lambda context, m: context.run(fn, m), contexts, batch))


def quoted_metadata(envelope: pb.Message) -> dict[str, str]:
    """Metadata for prompt templates: each value a JSON string literal (quotes and escapes kept).

    Only reachable when a node sets ``template_metadata: true`` (checked at configuration).
    """
    return {key: json.dumps(value, ensure_ascii=False) for key, value in envelope.metadata.items()}


def _attempt(envelope: pb.Message) -> int:
    raw = envelope.metadata.get("attempt", "1")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


class GeneratorParams(OpenAIParams):
    """Parameters of :class:`OpenAIGenerator`.

    Attributes:
        feedback_template: Appended to the prompt when the envelope carries a failed
            ``Verdict`` (a ``refine`` loop); fields ``reason`` and ``previous``.
    """

    feedback_template: str = (
        "\n\nA previous answer was rejected.\nPrevious answer: {previous}\nReason: {reason}\n"
        "Write an improved answer."
    )


class OpenAIGenerator(_OpenAIBase):
    """Text -> Generation through an OpenAI-compatible completion endpoint.

    Template fields: ``text``, ``language``, ``attempt`` and ``metadata`` (a dict,
    e.g. ``{metadata[customer]}``). ``Generation.candidate`` is ``attempt - 1``.
    """

    consumes = ("Text",)
    produces = "Generation"
    Params = GeneratorParams
    fields = frozenset({"text", "language", "attempt", "metadata"})

    def _one(self, m: pb.Message) -> pb.Generation:
        attempt = _attempt(m)
        prompt = self.params.prompt_template.format(
            text=m.text.content, language=m.text.language, attempt=attempt, metadata=quoted_metadata(m)
        )
        if m.HasField("verdict") and not m.verdict.passed:
            prompt += self.params.feedback_template.format(reason=m.verdict.reason, previous=m.generation.text)
        text, reply = self.complete(prompt, trace_headers(m))
        usage = reply.get("usage") or {}
        return pb.Generation(
            text=text.strip(),
            source=str(reply.get("model") or self.params.model),
            candidate=attempt - 1,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Generation]:
        """Generates one completion per envelope (concurrently)."""
        return self._map(self._one, batch)


_JUDGE_SYSTEM = (
    "You are a strict grader. Reply with only a JSON object "
    '{"passed": true or false, "score": a number from 0 to 1, "reason": "one short sentence"}.'
)


class JudgeParams(OpenAIParams):
    """Parameters of :class:`OpenAIJudge`.

    Attributes:
        pass_threshold: Used when the reply gives a ``score`` but no ``passed``.
    """

    system_prompt: str | None = _JUDGE_SYSTEM
    prompt_template: str = (
        "Question:\n{question}\n\nAnswer:\n{answer}\n\n"
        "Does the answer address the question correctly, politely and without personal data?"
    )
    max_tokens: int = Field(default=128, ge=1)
    pass_threshold: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _judge_needs_answer(self) -> JudgeParams:
        if "{answer" not in self.prompt_template:
            raise ValueError("prompt_template must contain {answer}: a judge grades the generation")
        return self


def parse_verdict(reply: str, pass_threshold: float = 0.5) -> tuple[bool, float, str]:
    """Reads ``(passed, score, reason)`` from a judge reply.

    Accepts a JSON object (possibly wrapped in prose or a code fence) with
    ``passed``/``score``/``reason``, else falls back to the first PASS/FAIL/YES/NO
    keyword. An unreadable reply fails, with the reply quoted in the reason.
    """
    match = _JSON_OBJECT.search(reply)
    if match:
        try:
            data = json.loads(match.group(0))
        except ValueError:
            data = None
        if isinstance(data, dict):
            score_raw = data.get("score")
            score = float(score_raw) if isinstance(score_raw, int | float) else None
            passed_raw = data.get("passed", data.get("pass"))
            if isinstance(passed_raw, str):
                passed_raw = passed_raw.strip().lower() in {"true", "yes", "pass", "passed"}
            if isinstance(passed_raw, bool):
                passed = passed_raw
            elif score is not None:
                passed = score >= pass_threshold
            else:
                return False, 0.0, f"judge reply has neither passed nor score: {reply[:200]}"
            if score is None:
                score = 1.0 if passed else 0.0
            return passed, min(max(score, 0.0), 1.0), str(data.get("reason", ""))
    keyword = _KEYWORD.search(reply)
    if keyword:
        passed = keyword.group(1).lower() in {"pass", "passed", "yes"}
        return passed, 1.0 if passed else 0.0, reply.strip()[:300]
    return False, 0.0, f"unreadable judge reply: {reply[:200]}"


class OpenAIJudge(_OpenAIBase):
    """Text + Generation -> Verdict: an LLM grades the current answer.

    Template fields: ``question`` (= ``text``), ``answer``, ``language``, ``attempt``
    and ``metadata``. Failing verdicts carry the judge's reason, which a ``refine``
    loop feeds back to the generator.
    """

    consumes = ("Text", "Generation")
    produces = "Verdict"
    Params = JudgeParams
    fields = frozenset({"question", "text", "answer", "language", "attempt", "metadata"})

    def _one(self, m: pb.Message) -> pb.Verdict:
        prompt = self.params.prompt_template.format(
            question=m.text.content,
            text=m.text.content,
            answer=m.generation.text,
            language=m.text.language,
            attempt=_attempt(m),
            metadata=quoted_metadata(m),
        )
        reply, _ = self.complete(prompt, trace_headers(m))
        passed, score, reason = parse_verdict(reply, self.params.pass_threshold)
        return pb.Verdict(passed=passed, score=score, reason=reason, validator=f"llm-judge:{self.params.model}")

    def predict(self, batch: Sequence[pb.Message]) -> list[pb.Verdict]:
        """Judges each envelope's ``Generation`` against its ``Text`` (concurrently)."""
        return self._map(self._one, batch)
