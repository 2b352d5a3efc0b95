"""Reliability of a served graph under overload and faults (issue 8, item 7), in one run.

Phases, all over HTTP (``POST /<graph>``) against the same deployment, with unique texts
(held-out tweets, suffixed once they run out) so the cache never helps:

* **capacity**: 16 closed-loop clients, no request deadline: goodput, p50/p99;
* **overload**: 2x, 5x, 10x that many clients and a flood of 200, every request with
  ``"timeout_ms": 2000``: goodput (also as % of capacity), p99 of successes and of
  rejections, counts by status, share of rejections answered within deadline + 100 ms,
  and whether the next request after the flood succeeds;
* **faults** under 16-client load: SIGKILL of a model replica (``redact``, ``minilm``), of
  the graph's state actor and of the ingress replica: requests lost, p99, time until the
  first success after the kill; for the state actor also whether cache hits come back and
  whether the feedback value survives.

Load generation: closed-loop clients (asyncio + ``lean_http.LeanClient``, a minimal keep-alive
HTTP/1.1 client: httpx cost ~20 ms CPU per request at 200 connections, most of a core). A client sends its
next request when the previous one is answered; after a 503 (or 429) it first waits for the
``Retry-After`` header (1 s if absent, capped at ``--retry-after-cap``, default 30 s: the most
the server suggests) times a 0.5-1.5 jitter: well-behaved
clients, so a server that sheds load fast is not punished by a retry storm. 2x load means
2 x 16 clients, not twice the request rate: offered load adapts to the server, as real
clients with one request in flight each do.

Ratios are against the capacity measured in the same run; the "met?" column compares with
the issue's targets and never changes the exit status. Run from the repository root::

    python benchmarks/reliability.py                   # full run, --duration 30 s per phase
    python benchmarks/reliability.py --quick           # smoke run: short phases, fewer levels
    python benchmarks/reliability.py --address auto --url http://127.0.0.1:8000   # a running `modelweave run`

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import pathlib
import random
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lean_http import LeanClient  # benchmarks/ is sys.path[0] when run as a file
from overhead import Sample

from modelweave.ports import free_port

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
BASE_CLIENTS = 16
LEVELS = (("2x", 2), ("5x", 5), ("10x", 10))
QUICK_LEVELS = (("2x", 2),)
FLOOD_CLIENTS = 200
DEADLINE_MS = 2000
#: A rejection counts as "fast" when answered within the deadline plus this slack.
SLACK_MS = 100
RETRY_AFTER_CAP_S = 30.0  # the server's MAX_RETRY_AFTER_S; --retry-after-cap changes it
#: Transport timeout of requests without a deadline (the graph's own timeout is shorter).
NO_DEADLINE_TIMEOUT_S = 120.0
#: Transport timeout of deadline requests: long enough to see how late a late answer is.
LATE_TIMEOUT_S = 30.0
NAMESPACE = "modelweave"
_FEEDBACK = re.compile(r"^(?P<state>\S+) (?P<delta>[+-]\d+\.\d+) -> (?P<value>-?\d+\.\d+)")


# -- requests ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One answered (or failed) request; times are ``time.monotonic()`` seconds."""

    start: float
    end: float
    status: int  # HTTP status; 0 when the transport failed (connection error, client timeout)
    body: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Whether the graph answered successfully."""
        return self.status == 200

    @property
    def latency_ms(self) -> float:
        """Client-side latency in milliseconds."""
        return (self.end - self.start) * 1000.0

    def spans(self) -> list[dict[str, Any]]:
        """The trace spans of a successful response (empty otherwise)."""
        return list(((self.body or {}).get("trace") or {}).get("spans") or [])

    def cache_hit(self) -> bool:
        """Whether any cache node of the trace was a hit."""
        return any(s.get("cacheHit") for s in self.spans())


class Texts:
    """An endless supply of unique input texts: held-out tweets, then the same with a round suffix."""

    def __init__(self, pool: Sequence[str]) -> None:
        self.pool = list(pool) or ["hello"]
        self.i = 0

    def __next__(self) -> str:
        text = self.pool[self.i % len(self.pool)]
        lap = self.i // len(self.pool)
        self.i += 1
        # A suffix keeps repeats unique for the cache key while staying an ordinary sentence.
        return text if lap == 0 else f"{text} (again, {lap})"

    def __iter__(self) -> Iterator[str]:
        return self


def held_out_texts() -> list[str]:
    """Test and validation tweets of the triage data (never seen by the models' training), labels mixed."""
    from modelweave.apps.triage import data

    return data.held_out_mix(("test", "validation"))


class Target:
    """The graph's HTTP endpoint, shared by every client through one connection pool."""

    def __init__(self, client: LeanClient, url: str) -> None:
        self.client, self.url = client, url

    async def post(self, text: str, deadline_ms: int | None) -> Outcome:
        """Sends one request; never raises (transport failures become status 0)."""
        body: dict[str, Any] = {"input": {"text": {"content": text}}}
        if deadline_ms is not None:
            body["timeout_ms"] = deadline_ms
        timeout = LATE_TIMEOUT_S if deadline_ms is not None else NO_DEADLINE_TIMEOUT_S
        start = time.monotonic()
        # Stamped as a load balancer in front of Serve would (NGINX's t=<seconds>.<ms>): a graph with
        # admission.trust_request_start counts the time queued in Serve's proxy against the deadline.
        stamp = {"X-Request-Start": f"t={time.time():.3f}"}
        try:
            r = await self.client.post_json(body, timeout, stamp)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            return Outcome(start, time.monotonic(), 0)
        end = time.monotonic()
        try:
            parsed = r.json()
        except ValueError:
            parsed = None
        data: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        if r.status == 200:
            return Outcome(start, end, 200, data)
        # Errors keep only what the report uses (memory stays flat over thousands of requests).
        error: dict[str, Any] = data["error"] if isinstance(data.get("error"), dict) else {}
        return Outcome(start, end, r.status,
                       {"code": error.get("code"), "retry_after": r.headers.get("retry-after")})

    async def wait_healthy(self, texts: Texts, limit_s: float) -> float:
        """Seconds until a request without deadline succeeds (``inf`` if none within ``limit_s``)."""
        start = time.monotonic()
        while time.monotonic() - start < limit_s:
            if (await self.post(next(texts), None)).ok:
                return time.monotonic() - start
            await asyncio.sleep(0.5)
        return float("inf")


def backoff_s(outcome: Outcome) -> float:
    """How long a well-behaved client waits after ``outcome`` before its next request."""
    if outcome.status not in (429, 503):
        return 0.0
    header = (outcome.body or {}).get("retry_after")
    try:
        wait = float(header) if header is not None else 1.0
    except ValueError:  # an HTTP-date: not sent by Serve; treat as "a second"
        wait = 1.0
    return min(max(wait, 0.0), RETRY_AFTER_CAP_S) * random.uniform(0.5, 1.5)


async def closed_loop(target: Target, texts: Texts, clients: int, until: float,
                      deadline_ms: int | None) -> list[Outcome]:
    """``clients`` closed-loop clients sending until ``until`` (monotonic); waits for the last answers."""
    outcomes: list[Outcome] = []

    async def client() -> None:
        while time.monotonic() < until:
            out = await target.post(next(texts), deadline_ms)
            outcomes.append(out)
            wait = min(backoff_s(out), until - time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)

    await asyncio.gather(*(client() for _ in range(clients)))
    return outcomes


# -- accounting ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table (and of the JSON report)."""

    phase: str
    clients: int
    deadline_ms: int | None
    sent: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    goodput: float = 0.0
    pct_capacity: float | None = None
    p50_ok_ms: float | None = None
    p99_ok_ms: float | None = None
    p99_rejected_ms: float | None = None
    fast_rejections: float | None = None  # share answered within deadline + SLACK_MS
    loadgen_cpu: float = 0.0  # CPU seconds of this process per wall second (1.0 = one core)
    notes: list[str] = field(default_factory=list)
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def status_key(status: int) -> str:
    """Column of a status: 200, 503, 504 or other."""
    return str(status) if status in (200, 503, 504) else "other"


def error_label(outcome: Outcome) -> str:
    """``<status> <error code>`` of a failed request, marking whether a 503/429 carried Retry-After."""
    if outcome.status == 0:
        return "transport error or client timeout"
    body = outcome.body or {}
    label = f"{outcome.status} {body.get('code') or 'no JSON error body'}"
    if outcome.status in (429, 503):
        label += " with Retry-After" if body.get("retry_after") is not None else " without Retry-After"
    return label


def account(row: Row, outcomes: list[Outcome], window: tuple[float, float]) -> None:
    """Fills ``row`` from the requests started in ``window`` (goodput: successes completed in it)."""
    lo, hi = window
    started = [o for o in outcomes if lo <= o.start < hi]
    row.sent = len(started)
    row.by_status = {k: 0 for k in ("200", "503", "504", "other")}
    codes: dict[str, int] = {}
    for o in started:
        row.by_status[status_key(o.status)] += 1
        if not o.ok:
            codes[error_label(o)] = codes.get(error_label(o), 0) + 1
    row.extra["errors"] = codes
    ok = Sample(latencies=[o.end - o.start for o in started if o.ok])
    row.goodput = sum(1 for o in outcomes if o.ok and lo <= o.end < hi) / (hi - lo)
    if ok.latencies:
        row.p50_ok_ms, row.p99_ok_ms = ok.pct_ms(0.50), ok.pct_ms(0.99)
    rejected = Sample(latencies=[o.end - o.start for o in started if not o.ok])
    if rejected.latencies:
        row.p99_rejected_ms = rejected.pct_ms(0.99)
        if row.deadline_ms is not None:
            limit_s = (row.deadline_ms + SLACK_MS) / 1000.0
            row.fast_rejections = sum(1 for s in rejected.latencies if s <= limit_s) / len(rejected.latencies)


@dataclass
class Options:
    """Sizes of one run."""

    duration_s: float
    warmup_s: float
    levels: tuple[tuple[str, int], ...]
    kill_models: list[str]
    recover_s: float


Fault = Callable[[], Awaitable[list[str]]]


class Bench:
    """Runs the phases against one deployed graph."""

    def __init__(self, target: Target, texts: Texts, app: str, opts: Options) -> None:
        self.target, self.texts, self.app, self.opts = target, texts, app, opts
        self.capacity = 0.0

    async def load(self, row: Row, fault: Fault | None = None, fault_at: float = 0.25) -> list[Outcome]:
        """Warm-up, then ``duration_s`` of measured closed-loop load; ``fault`` runs ``fault_at`` into it."""
        t0 = time.monotonic()
        lo = t0 + self.opts.warmup_s
        hi = lo + self.opts.duration_s
        cpu0 = time.process_time()
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(
            closed_loop(self.target, self.texts, row.clients, hi, row.deadline_ms))]
        if fault is not None:
            async def later() -> list[str]:
                await asyncio.sleep(lo + fault_at * self.opts.duration_s - time.monotonic())
                return await fault()
            tasks.append(asyncio.create_task(later()))
        results = await asyncio.gather(*tasks)
        row.loadgen_cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
        outcomes: list[Outcome] = results[0]
        account(row, outcomes, (lo, hi))
        if self.capacity:
            row.pct_capacity = 100.0 * row.goodput / self.capacity
        if fault is not None:
            row.notes.extend(results[1])
        return outcomes

    async def recover(self, row: Row) -> None:
        """Waits until the service answers again (so phases do not bleed into each other)."""
        took = await self.target.wait_healthy(self.texts, self.opts.recover_s)
        if took > 1.0:
            row.notes.append(f"healthy again {took:.1f} s after the phase" if took != float("inf")
                             else f"NOT healthy {self.opts.recover_s:.0f} s after the phase")
        await asyncio.sleep(1.0)

    async def capacity_row(self) -> Row:
        """16 clients, no deadline: the reference every other row is compared with."""
        row = Row("capacity", BASE_CLIENTS, None)
        await self.load(row)
        self.capacity = row.goodput
        row.pct_capacity = 100.0
        return row

    async def overload_row(self, name: str, clients: int, flood: bool) -> Row:
        """Many clients with short deadlines; the flood row also checks the next request."""
        row = Row(name, clients, DEADLINE_MS)
        await self.load(row)
        if flood:
            nxt = await self.target.post(next(self.texts), DEADLINE_MS)
            row.extra["next_request"] = {"status": nxt.status, "latency_ms": round(nxt.latency_ms, 1)}
            row.notes.append(f"next request: {nxt.status} in {nxt.latency_ms:.0f} ms")
            fast = row.fast_rejections if row.fast_rejections is not None else 1.0
            row.target = f">= 80 % of capacity, >= 99 % rejections <= {DEADLINE_MS + SLACK_MS} ms, next ok"
            row.met = (row.pct_capacity or 0.0) >= 80.0 and fast >= 0.99 and nxt.ok
        await self.recover(row)
        return row

    async def fault_row(self, name: str, kill: Callable[[], tuple[str, int]],
                        extra_probe: Callable[[float], Awaitable[list[str]]] | None = None,
                        ) -> tuple[Row, list[Outcome], float | None]:
        """16 clients, no deadline; ``kill`` finds and SIGKILLs one process a quarter into the phase.

        Returns the row, every outcome and the kill time (None when nothing was killed).
        """
        row = Row(name, BASE_CLIENTS, None)
        killed: dict[str, Any] = {}

        async def fault() -> list[str]:
            try:
                actor, pid = await asyncio.to_thread(kill)
            except Exception as exc:  # nothing to kill: report it in the row, keep the run going
                return [f"no kill: {type(exc).__name__}: {exc}"[:160]]
            killed.update(at=time.monotonic(), actor=actor, pid=pid)
            notes = [f"killed pid {pid} ({actor})"]
            if extra_probe is not None:
                notes += await extra_probe(killed["at"])
            return notes

        outcomes = await self.load(row, fault)
        at = killed.get("at")
        if at is not None:
            after = [o.end - at for o in outcomes if o.ok and o.start >= at]
            failed = [o.end - at for o in outcomes if not o.ok and o.end >= at]
            first_ok = min(after) if after else None
            row.extra.update(pid=killed["pid"], actor=killed["actor"], first_ok_after_kill_s=first_ok,
                             last_failure_after_kill_s=max(failed) if failed else None)
            row.notes.append(f"first ok {first_ok:.2f} s after kill" if first_ok is not None
                             else "no success after kill")
            if failed:
                row.notes.append(f"last failure {max(failed):.2f} s after kill")
        row.target = "0 lost"
        row.met = at is not None and row.sent == row.by_status["200"]
        await self.recover(row)
        return row, outcomes, at

    # -- the state actor ------------------------------------------------------------------

    async def state_actor_row(self, spec: Any) -> Row:
        """Kills the graph's state actor; checks cache hits and the feedback value afterwards."""
        prefix = f"graph-state:{spec.name}:"
        var = feedback_var(spec)
        probe = f"reliability cache probe {time.time_ns()}: my order arrived late and broken"
        before_hit = await self.cache_pair(probe)
        v0: float | None = None
        probes: dict[str, Any] = {}

        async def probe_after(at: float) -> list[str]:
            # Cache: a fresh text twice, every 0.5 s, until the second one hits (bounded).
            limit = at + max(self.opts.duration_s, 10.0)
            hit_after = None
            while time.monotonic() < limit:
                if await self.cache_pair(f"reliability cache probe {time.time_ns()}: where is my refund"):
                    hit_after = time.monotonic() - at
                    break
                await asyncio.sleep(0.5)
            old = (await self.target.post(probe, None)).cache_hit()
            probes.update(cache_hit_again_after_s=hit_after, pre_kill_entry_hit=old)
            return [f"cache hits again {hit_after:.1f} s after kill" if hit_after is not None
                    else f"cache NEVER hits again (waited {limit - at:.0f} s)",
                    f"pre-kill entry {'hit' if old else 'lost'}"]

        def read_then_kill() -> tuple[str, int]:
            # Nudged and read the moment before the kill: load moves the value ~10 times a second,
            # so a value read (or nudged) before the phase is stale, and may have drifted back to
            # within a few thousandths of its initial value, where a reset would not show.
            # The checkpoint is written at most every 0.5 s, so the kill waits 0.6 s after the nudge
            # (what the last half second changed may legitimately be lost) and reads it again.
            nonlocal v0
            try:
                nudged_feedback(prefix, var)
                time.sleep(0.6)
                v0 = nudged_feedback(prefix, var, nudge=False)
            except Exception as exc:  # the actor's interface changed: the cache checks still run
                print(f"reliability: could not read/nudge the feedback value: {exc!r}", file=sys.stderr)
            return kill_one(name_prefix=prefix)

        row, outcomes, at = await self.fault_row("kill state actor", read_then_kill, probe_after)
        row.extra.update(probes, cache_hit_before=before_hit, feedback_before=v0)
        restored = True
        if var is not None:
            # What the (restarted) actor held: the first feedback adjustment of a request sent
            # after the kill, minus its delta. Exact, unlike reading stats() while load moves it.
            v1 = first_feedback_value(outcomes, at, var["state"]) if at is not None else None
            initial = float(var["initial"])
            restored = v0 is not None and v1 is not None and abs(v1 - v0) < abs(v1 - initial)
            row.extra.update(feedback_after=v1, feedback_initial=initial, feedback_restored=restored)
            row.notes.append(f"{var['state']}: {fmt(v0)} before kill, {fmt(v1)} after (initial {initial:.3f})")
        hit_after = probes.get("cache_hit_again_after_s")
        row.target = "0 lost, cache hits within 10 s, feedback restored"
        row.met = bool(row.met and hit_after is not None and hit_after < 10.0 and restored)
        return row

    async def cache_pair(self, text: str) -> bool:
        """Sends ``text`` twice; whether the second answer was a cache hit."""
        await self.target.post(text, None)
        return (await self.target.post(text, None)).cache_hit()


def nudged_feedback(prefix: str, var: dict[str, Any] | None, *, nudge: bool = True) -> float | None:
    """The state actor's feedback value, first moved away from its initial value so a reset shows.

    Uses the actor's own ``stats``/``adjust_state`` methods; the nudge (unless ``nudge`` is
    False) is a third of the way toward the farther bound, within the variable's limits.
    """
    import ray

    if var is None:
        return None
    name, _ = kill_target(name_prefix=prefix)
    actor = ray.get_actor(name, namespace=NAMESPACE)
    initial = float(var["initial"])
    stats: Any = ray.get(actor.stats.remote(), timeout=30)
    value = float(stats["state"].get(var["state"], initial))
    if nudge and abs(value - initial) < 0.03:
        far = float(var["max"]) if var["max"] - initial > initial - var["min"] else float(var["min"])
        value = float(ray.get(actor.adjust_state.remote(var, (far - initial) / 3.0), timeout=30))
    return value


def first_feedback_value(outcomes: list[Outcome], after: float, state: str) -> float | None:
    """The value ``state`` had before the first feedback adjustment of a request started after ``after``."""
    for o in sorted((o for o in outcomes if o.ok and o.start >= after), key=lambda o: o.end):
        for span in o.spans():
            m = _FEEDBACK.match(span.get("detail") or "") if span.get("kind") == "feedback" else None
            if m and m["state"] == state:
                return float(m["value"]) - float(m["delta"])
    return None


def fmt(value: float | None) -> str:
    """A feedback value for the notes."""
    return "?" if value is None else f"{value:.3f}"


def feedback_var(spec: Any) -> dict[str, Any] | None:
    """The first adaptive threshold (``value_from``) of the graph, as the state actor takes it."""

    def walk(node: Any) -> dict[str, Any] | None:
        if isinstance(node, dict):
            if isinstance(node.get("value_from"), dict) and "state" in node["value_from"]:
                return dict(node["value_from"])
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            return None
        for child in children:
            found = walk(child)
            if found is not None:
                return found
        return None

    return walk(spec.model_dump(mode="json"))


# -- finding and killing processes ----------------------------------------------------------------


def kill_target(*, class_name: str | None = None, name_prefix: str | None = None) -> tuple[str, int]:
    """Name and pid of one ALIVE actor by class name (Serve replicas) or name prefix (state actor)."""
    from ray.util.state import list_actors

    filters: list[tuple[str, str, str]] = [("state", "=", "ALIVE")]
    if class_name is not None:
        filters.append(("class_name", "=", class_name))
    found = [a for a in list_actors(filters=filters, detail=True, limit=10_000)  # type: ignore[arg-type]
             if a.pid and (name_prefix is None or (a.name or "").startswith(name_prefix))]
    if not found:
        raise LookupError(f"no ALIVE actor with class {class_name!r} / name prefix {name_prefix!r}")
    actor = sorted(found, key=lambda a: a.name or "")[0]
    return str(actor.name or actor.class_name), int(actor.pid or 0)


def kill_one(*, class_name: str | None = None, name_prefix: str | None = None) -> tuple[str, int]:
    """SIGKILLs one actor's worker process (this machine only); returns its name and pid."""
    name, pid = kill_target(class_name=class_name, name_prefix=name_prefix)
    os.kill(pid, signal.SIGKILL)
    return name, pid


def kill_child(node: str) -> tuple[str, int]:
    """SIGKILLs the child process running model ``node`` inside an ingress replica
    (``deployment.inline: process``; this machine only); returns its name and pid."""
    import psutil

    from modelweave.process_isolation import child_node

    for proc in psutil.process_iter(["cmdline"]):
        if child_node(proc.info["cmdline"] or []) == node:
            os.kill(proc.pid, signal.SIGKILL)
            return f"child process {node}", proc.pid
    raise LookupError(f"no child process runs model {node!r}")


def replica_class(app: str, deployment: str) -> str:
    """Actor class name Ray 2.60 reports for a Serve replica of ``app``'s ``deployment``."""
    return f"ServeReplica:{app}:{deployment}"


# -- report ----------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    """Milliseconds for the table."""
    return "-" if value is None else f"{value:.0f}"


def markdown(rows: list[Row]) -> str:
    """The one table of the run."""
    head = ["phase", "clients", "deadline", "sent", "200", "503", "504", "other", "goodput req/s",
            "% of capacity", "p50 ok ms", "p99 ok ms", "p99 rejected ms", f"rejected <= deadline+{SLACK_MS} ms",
            "loadgen CPU", "notes", "target", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.phase, str(r.clients), f"{r.deadline_ms} ms" if r.deadline_ms else "-", str(r.sent),
                 *(str(r.by_status.get(k, 0)) for k in ("200", "503", "504", "other")),
                 f"{r.goodput:.1f}", "-" if r.pct_capacity is None else f"{r.pct_capacity:.0f} %",
                 ms(r.p50_ok_ms), ms(r.p99_ok_ms), ms(r.p99_rejected_ms),
                 "-" if r.fast_rejections is None else f"{100 * r.fast_rejections:.0f} %",
                 f"{100 * r.loadgen_cpu:.0f} % core", "; ".join(r.notes) or "-", r.target or "-",
                 "-" if r.met is None else ("yes" if r.met else "no")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------


async def run_phases(spec: Any, url: str, texts: Texts, opts: Options, log: Callable[[str], None]) -> list[Row]:
    """Every phase in order: capacity, overload levels, flood, faults."""
    from deployments.app import ingress_name
    from modelweave.checker import check_graph

    client = LeanClient(url)
    try:
        target = Target(client, url)
        took = await target.wait_healthy(texts, 600.0)
        if took == float("inf"):
            raise RuntimeError(f"{url} did not answer successfully within 600 s")
        bench = Bench(target, texts, spec.name, opts)
        # Warm-up at the capacity load: model code paths, connection pool, replicas' caches.
        await closed_loop(target, texts, BASE_CLIENTS, time.monotonic() + opts.warmup_s, None)
        rows = [await bench.capacity_row()]
        log(f"capacity: {rows[0].goodput:.1f} req/s")
        for name, factor in opts.levels:
            rows.append(await bench.overload_row(f"overload {name}", BASE_CLIENTS * factor, flood=False))
            log(f"{rows[-1].phase}: {rows[-1].goodput:.1f} req/s")
        rows.append(await bench.overload_row("flood", FLOOD_CLIENTS, flood=True))
        log(f"flood: {rows[-1].goodput:.1f} req/s")
        children = check_graph(spec).layout.child_process
        for model in opts.kill_models:
            kill: Callable[[], tuple[str, int]] = functools.partial(
                kill_one, class_name=replica_class(spec.name, model))
            what = "replica"
            if model in children:  # `inline: process`: the model's process is a child of the ingress
                kill, what = functools.partial(kill_child, model), "child process"
            row, _, _ = await bench.fault_row(f"kill {model} {what}", kill)
            rows.append(row)
            log(f"{rows[-1].phase}: {rows[-1].sent - rows[-1].by_status['200']} lost")
        rows.append(await bench.state_actor_row(spec))
        log(f"{rows[-1].phase}: {rows[-1].sent - rows[-1].by_status['200']} lost")
        ingress = ingress_name(spec)
        row, _, _ = await bench.fault_row(
            "kill ingress replica", lambda: kill_one(class_name=replica_class(spec.name, ingress)))
        rows.append(row)
        log(f"{rows[-1].phase}: {rows[-1].sent - rows[-1].by_status['200']} lost")
        return rows
    finally:
        await client.aclose()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--graph", default=str(REPO / "examples" / "triage.yaml"), help="graph file")
    p.add_argument("--duration", type=float, default=None,
                   help="measured seconds per phase (default 30; 8 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: short phases, levels 2x + flood, only the redact replica killed")
    p.add_argument("--kill-models", default=None,
                   help="model deployments whose replica is SIGKILLed, comma-separated (default redact,minilm)")
    p.add_argument("--address", default=None,
                   help="use this running Ray cluster (graph already served, e.g. by `modelweave run`); "
                        "processes are killed by pid, so it must run on this machine")
    p.add_argument("--url", default=None,
                   help="HTTP base URL of Serve with --address (default http://127.0.0.1:8000)")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the embedded cluster "
                   "(default like `modelweave run`: max(4, cores))")
    p.add_argument("--retry-after-cap", type=float, default=None,
                   help=f"longest Retry-After a client honours, seconds (default {RETRY_AFTER_CAP_S:.0f}: all the "
                        "server suggests; a lower cap makes clients come back sooner than asked)")
    p.add_argument("--direct-ingress", action="store_true",
                   help="serve as `modelweave run --direct-ingress` (clients reach the ingress replica itself)")
    p.add_argument("--profile", choices=("default", "replicated", "isolated"), default="default",
                   help="serve the graph under this layout profile, as `modelweave run --profile` does "
                        "(isolated: the killed models are child processes of the ingress)")
    p.add_argument("--out", default=str(HERE / "results" / "reliability.json"), help="JSON report")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serves the graph (or joins ``--address``), runs every phase, prints the table, writes JSON."""
    import ray

    from modelweave.cli_cluster import apply_profile
    from modelweave.prepare import DATA_DIR_ENV, data_dir, run_prepare_hooks
    from modelweave.serving import ServingSession, start_serving, stop_serving
    from modelweave.spec import load_graph

    args = parse_args(argv)
    global RETRY_AFTER_CAP_S
    if args.retry_after_cap is not None:
        RETRY_AFTER_CAP_S = args.retry_after_cap
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    def log(message: str) -> None:
        print(f"reliability: {message}", file=sys.stderr, flush=True)

    duration = args.duration or (8.0 if args.quick else 30.0)
    kill_models = args.kill_models or ("redact" if args.quick else "redact,minilm")
    opts = Options(duration_s=duration, warmup_s=min(5.0, max(2.0, duration / 4)),
                   levels=QUICK_LEVELS if args.quick else LEVELS,
                   kill_models=[m for m in kill_models.split(",") if m], recover_s=120.0)
    (spec,), _ = apply_profile([load_graph(args.graph)], args.profile, args.num_cpus, echo=True)
    texts = Texts(held_out_texts())
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    session: ServingSession | None = None
    if args.address:
        ray.init(address=args.address, namespace=NAMESPACE, log_to_driver=False)
        base = (args.url or "http://127.0.0.1:8000").rstrip("/")
    else:
        directory = data_dir()
        os.environ[DATA_DIR_ENV] = str(directory)  # replicas inherit it, as under `modelweave run`
        run_prepare_hooks(spec, directory, log=log)
        port = free_port()
        # The same embedded cluster as `modelweave run` (dashboard included: the state API that
        # finds actor pids needs it), on free loopback ports so it never meets another cluster.
        session = start_serving([spec], host="127.0.0.1", http_port=port, grpc_port=free_port(),
                                dashboard_port=free_port(), num_cpus=args.num_cpus, log=log,
                                direct_ingress=args.direct_ingress)
        base = f"http://127.0.0.1:{port}"
    try:
        rows = asyncio.run(run_phases(spec, f"{base}/{spec.name}", texts, opts, log))
    finally:
        if session is not None:
            stop_serving(session, log=log)  # embedded: Serve and the Ray processes this run started
        else:
            ray.shutdown()  # --address: only disconnects; the cluster and its apps stay
    meta = {"graph": spec.name, "duration_s": duration, "warmup_s": opts.warmup_s, "quick": args.quick,
            "cores": os.cpu_count(), "load_average_start": load0, "load_average_end": os.getloadavg()[0],
            "total_s": round(time.monotonic() - t0, 1), "deadline_ms": DEADLINE_MS,
            "retry_after_cap_s": RETRY_AFTER_CAP_S, "cluster": args.address or "embedded",
            "direct_ingress": args.direct_ingress, "profile": args.profile}
    table = markdown(rows)
    print(table)
    print(f"\n{meta['cores']} cores, load average {load0:.1f} -> {meta['load_average_end']:.1f}; "
          f"{duration:.0f} s measured per phase after {opts.warmup_s:.0f} s warm-up; closed-loop clients, "
          f"503 -> wait Retry-After (<= {RETRY_AFTER_CAP_S:.0f} s, x0.5-1.5 jitter); loadgen CPU = this "
          f"process (load generator + Ray driver) per wall second. Ratios are against this run's capacity.")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n",
                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
