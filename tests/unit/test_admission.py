"""Admission control: bounded concurrency, a bounded deadline-aware queue, fast shedding."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelweave.admission import AdmissionController, answer_deadline, request_start_age
from modelweave.errors import Overloaded, Status

pytestmark = pytest.mark.timeout(10)


def far() -> float:
    return time.monotonic() + 60.0


async def test_admits_up_to_the_limit_then_queues_in_order():
    ctl = AdmissionController(2, 4)
    await ctl.acquire(far())
    await ctl.acquire(far())
    assert ctl.in_flight == 2
    order: list[int] = []

    async def queued(i: int) -> None:
        await ctl.acquire(far())
        order.append(i)

    tasks = [asyncio.create_task(queued(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert ctl.queued == 3 and order == []
    ctl.release(0.01)
    await asyncio.sleep(0.01)
    assert order == [0]
    ctl.release(0.01)
    ctl.release(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert ctl.in_flight == 2 and ctl.queued == 0


async def test_full_queue_is_shed_at_once_with_retry_after():
    shed: list[str] = []
    ctl = AdmissionController(1, 1, on_shed=shed.append)
    await ctl.acquire(far())
    waiting = asyncio.create_task(ctl.acquire(far()))
    await asyncio.sleep(0.01)
    start = time.monotonic()
    with pytest.raises(Overloaded) as info:
        await ctl.acquire(far())
    assert time.monotonic() - start < 0.5  # answered, not queued
    assert info.value.status is Status.UNAVAILABLE
    assert info.value.retry_after_s >= 1
    assert "at capacity" in info.value.message
    assert shed == ["queue_full"]
    ctl.release(0.01)
    await waiting
    assert ctl.in_flight == 1


async def test_request_that_cannot_start_before_its_deadline_is_refused_without_waiting():
    shed: list[str] = []
    ctl = AdmissionController(1, 100, on_shed=shed.append)
    # One run finished: about 1 run per 2 s window, each taking ~1.5 s.
    await ctl.acquire(far())
    ctl.release(1.5)
    await ctl.acquire(far())
    with pytest.raises(Overloaded, match="cannot start this request before its deadline"):
        await ctl.acquire(time.monotonic() + 1.0)
    assert shed == ["deadline"]
    assert ctl.queued == 0


async def test_queued_request_leaves_when_its_deadline_can_no_longer_be_met():
    ctl = AdmissionController(1, 10)
    await ctl.acquire(far())
    with pytest.raises(Overloaded, match="waited in the queue"):
        await ctl.acquire(time.monotonic() + 0.05)
    assert ctl.queued == 0 and ctl.in_flight == 1
    ctl.release(0.01)
    assert ctl.in_flight == 0


async def test_cancelled_waiter_gives_its_place_and_slot_back():
    ctl = AdmissionController(1, 10)
    await ctl.acquire(far())
    task = asyncio.create_task(ctl.acquire(far()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctl.queued == 0
    ctl.release(0.01)
    assert ctl.in_flight == 0
    await ctl.acquire(far())  # the slot is free again
    assert ctl.in_flight == 1


async def test_admit_context_releases_on_error():
    ctl = AdmissionController(1, 0)
    with pytest.raises(RuntimeError):
        async with ctl.admit(far()):
            raise RuntimeError("graph failed")
    assert ctl.in_flight == 0
    async with ctl.admit(far()):
        assert ctl.in_flight == 1


async def test_retry_after_grows_with_the_backlog():
    now = [100.0]
    ctl = AdmissionController(1, 50, clock=lambda: now[0])
    assert ctl.retry_after_s() == 1.0  # nothing measured yet
    for _ in range(4):  # 4 completions in the 2 s window: 2 runs/s
        ctl.in_flight += 1
        ctl.release(0.5)
    waits = [ctl._shed("queue_full", "test").retry_after_s for _ in range(20)]
    # A virtual queue: the n-th client shed is told n / (2 x 2 runs/s), in whole seconds.
    assert waits == [float(max(1, -(-n // 4))) for n in range(1, 21)]
    assert ctl.waiting_outside == 20 and ctl.retry_after_s() == 6.0  # 21st in line
    now[0] += 3.0  # the first twelve have come back (their waits ran out); no completions since
    assert ctl.waiting_outside == 8
    assert ctl.retry_after_s() == 1.0  # no measured rate: nothing to divide by


async def test_retry_after_is_capped_and_counts_the_queue():
    now = [0.0]
    ctl = AdmissionController(1, 50, clock=lambda: now[0])
    ctl.in_flight += 1
    ctl.release(1.0)  # 1 completion in the 2 s window: 0.5 runs/s
    assert ctl._shed("queue_full", "test").retry_after_s == 1.0  # itself: 1 / (2 x 0.5)
    for _ in range(40):
        ctl._shed("queue_full", "test")
    assert ctl.retry_after_s() == 30.0  # 41 outside at 2 x 0.5 runs/s would be 42 s: capped


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        AdmissionController(0, 1)


async def test_runs_that_waited_out_a_replica_restart_do_not_inflate_the_service_time():
    ctl = AdmissionController(8, 8)
    for _ in range(48):
        await ctl.acquire(far())
        ctl.release(0.4)
    assert ctl.service_s == pytest.approx(0.4)
    for _ in range(16):  # the runs stuck behind a restarting replica: 11 s each
        await ctl.acquire(far())
        ctl.release(11.0)
    assert ctl.service_s == pytest.approx(0.4)  # not 11 s: a 20 s request is not refused
    for _ in range(64):  # a graph that really became slower is seen as slower
        await ctl.acquire(far())
        ctl.release(1.5)
    assert ctl.service_s == pytest.approx(1.5)


def test_answer_deadline_keeps_a_reply_margin():
    assert answer_deadline(10.0, 2.0) == pytest.approx(11.9)  # 5 % of 2 s
    assert answer_deadline(0.0, 20.0) == pytest.approx(19.9)  # at most 100 ms
    assert answer_deadline(0.0, 0.2) == pytest.approx(0.19)


NOW = 1_796_000_000.0  # a Unix time in 2026: the unit of the header is told by its size


@pytest.mark.parametrize(
    ("header", "age"),
    [
        (f"t={NOW - 0.5:.3f}", 0.5),  # NGINX: seconds with a millisecond fraction
        (f"t={int((NOW - 0.5) * 1e3)}", 0.5),  # milliseconds (Heroku)
        (f"t={int((NOW - 0.5) * 1e6)}", 0.5),  # microseconds (Apache's %t)
        (f"{NOW - 0.25:.3f}", 0.25),  # no "t="
        (f"t={NOW + 0.5:.3f}", 0.0),  # a clock ahead of ours: no negative age
        (f"t={NOW - 10:.3f}", 2.0),  # older than the budget: clamped to it (the request has expired)
        ("t=soon", 0.0),
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_request_start_age_reads_the_proxy_header(header, age):
    assert request_start_age(header, now_wall=NOW, budget_s=2.0) == pytest.approx(age, abs=1e-3)
