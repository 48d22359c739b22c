"""A reconcile that fails the same way every time (a policy refusing a write, a 422 on a status write) is retried
with a growing backoff, 5 s doubling up to 5 min, one traceback per run of failures; a success or a change of the
object starts again from the shortest, and a change is acted on at once."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from controller.operator.kubeapi import ObjectRef
from controller.operator.scheduler import WakeupQueue

REF = ObjectRef("ns", "r")


class Refused(Exception):
    pass


async def failing(_ref: ObjectRef) -> float | None:
    raise Refused("admission webhook denied the request")


async def attempt(queue: WakeupQueue, ref: ObjectRef = REF) -> float | None:
    """One reconcile as run() starts it; seconds until the queue runs the object again, or None."""
    workers = asyncio.Semaphore(1)
    await workers.acquire()
    queue._running.add(ref)
    await queue._run_one(ref, workers)
    due = queue._due.pop(ref, None)  # taken, as run() takes a due entry, so that a later one is recorded
    return None if due is None else round(due - time.monotonic(), 1)


def test_failures_in_a_row_double_the_retry_delay_up_to_five_minutes() -> None:
    async def main() -> list[float | None]:
        queue = WakeupQueue(failing)
        return [await attempt(queue) for _ in range(9)]

    assert asyncio.run(main()) == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]


def test_days_of_failures_stay_at_the_cap() -> None:
    async def main() -> float | None:
        queue = WakeupQueue(failing)
        queue._failures[REF] = 5000  # 2 ** 5000 would not fit in a float
        return await attempt(queue)

    assert asyncio.run(main()) == 300.0


def test_a_success_starts_the_backoff_again_from_the_shortest() -> None:
    outcomes = [Refused, Refused, Refused, None, Refused]

    async def reconcile(_ref: ObjectRef) -> float | None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome("refused")
        return None

    async def main() -> list[float | None]:
        queue = WakeupQueue(reconcile)
        return [await attempt(queue) for _ in range(5)]

    assert asyncio.run(main()) == [5.0, 10.0, 20.0, None, 5.0]


def test_a_change_is_reconciled_at_once_and_starts_the_backoff_again_from_the_shortest() -> None:
    async def main() -> list[float | None]:
        queue = WakeupQueue(failing)
        other = ObjectRef("ns", "other")
        delays = [await attempt(queue) for _ in range(4)]
        delays.append(await attempt(queue, other))
        queue.wake(REF, 0.0)  # a human edited it during the 40 s wait: not left waiting
        delays.append(round(queue._due[REF] - time.monotonic(), 1))
        queue._due.pop(REF)
        delays += [await attempt(queue), await attempt(queue, other)]
        return delays

    # The other rollout's backoff is its own: a failure count per object.
    assert asyncio.run(main()) == [5.0, 10.0, 20.0, 40.0, 5.0, 0.0, 5.0, 10.0]


def test_a_change_during_a_failing_reconcile_is_not_lost_and_the_next_one_starts_afresh() -> None:
    async def main() -> list[float | None]:
        queue = WakeupQueue(failing)
        delays = [await attempt(queue) for _ in range(3)]

        async def edited_meanwhile(ref: ObjectRef) -> float | None:
            queue.wake(ref)  # the watch event arrives while this reconcile, which read the old object, runs
            raise Refused("refused")

        queue._reconcile = edited_meanwhile
        delays.append(await attempt(queue))  # due now, not in 40 s: the change is reconciled promptly
        queue._reconcile = failing
        delays.append(await attempt(queue))  # the first failure on the changed object
        return delays

    assert asyncio.run(main()) == [5.0, 10.0, 20.0, 0.0, 5.0]


def test_the_traceback_is_logged_once_per_run_of_failures_then_one_line_with_type_and_next_delay(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        queue = WakeupQueue(failing)
        for _ in range(3):
            await attempt(queue)
        queue.wake(REF)
        queue._due.pop(REF)
        await attempt(queue)

    with caplog.at_level(logging.ERROR, logger="controller.operator.scheduler"):
        asyncio.run(main())
    records = [r for r in caplog.records if r.name == "controller.operator.scheduler"]
    assert [r.exc_info is not None for r in records] == [True, False, False, True]
    assert [r.getMessage() for r in records[1:3]] == [
        "reconcile of ns/r failed again (Refused, 2 in a row); retrying in 10s",
        "reconcile of ns/r failed again (Refused, 3 in a row); retrying in 20s",
    ]
    assert "\n" not in records[1].getMessage()
    assert "retrying in 5s" in records[0].getMessage() and "retrying in 5s" in records[3].getMessage()


def test_the_running_queue_backs_off_a_repeating_failure() -> None:
    calls: list[float] = []

    async def reconcile(_ref: ObjectRef) -> float | None:
        calls.append(time.monotonic())
        raise Refused("refused")

    async def main() -> None:
        queue = WakeupQueue(reconcile, error_backoff=0.1, max_error_backoff=0.4)
        task = asyncio.create_task(queue.run())
        queue.wake(REF)
        await asyncio.sleep(0.9)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    # At 0, 0.1, 0.3 and 0.7 s: a fixed 0.1 s would have run it nine times.
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert 3 <= len(calls) <= 5
    assert max(gaps) >= 0.3
