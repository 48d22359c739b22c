"""The wake-up queue belongs to the event loop: kopf must call the watch handler there (a sync handler runs in
a worker thread, whose wake-ups raced the queue and could lose a rollout's entry for good), and a deletion is
reconciled like any change, after the reconcile in flight, so that nothing it records outlives the rollout."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from kopf._core.actions import invocation

from controller.operator import handlers
from controller.operator.kubeapi import ObjectRef
from controller.operator.runtime import OperatorConfig, _changed_by_others
from controller.operator.scheduler import WakeupQueue, changes_watched, reconcile_slot_lent


def wake_handler() -> Any:
    registry = handlers.build_registry(OperatorConfig())
    return next(h.fn for h in registry._watching.get_all_handlers() if h.fn.__name__ == "wake_on_change")


def test_the_watch_handler_wakes_the_queue_on_the_loop_thread_for_every_event_type() -> None:
    handler = wake_handler()
    assert invocation.is_async_fn(handler)
    state = next(c.cell_contents for c in handler.__closure__ if isinstance(c.cell_contents, dict))
    woken: list[tuple[ObjectRef, str]] = []

    class Spy(WakeupQueue):
        def wake(self, ref: ObjectRef, delay: float = 0.0) -> None:
            woken.append((ref, threading.current_thread().name))

    async def main() -> None:
        state["queue"] = Spy(lambda _ref: asyncio.sleep(0))
        for kind in ("ADDED", "MODIFIED", "DELETED"):
            await invocation.invoke(handler, kwargs={"event": {"type": kind}, "namespace": "ns", "name": "r"})

    asyncio.run(main())
    assert woken == [(ObjectRef("ns", "r"), threading.current_thread().name)] * 3


def test_a_due_rollout_is_run_once_and_the_queue_goes_on() -> None:
    ran: list[ObjectRef] = []

    async def reconcile(ref: ObjectRef) -> float | None:
        ran.append(ref)
        return None

    async def main() -> None:
        queue = WakeupQueue(reconcile)
        task = asyncio.create_task(queue.run())
        for name in ("a", "b", "a"):
            queue.wake(ObjectRef("ns", name))
        await asyncio.sleep(0.2)
        queue.wake(ObjectRef("ns", "c"))
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(main())
    assert sorted(ref.name for ref in ran) == ["a", "b", "c"]


def test_a_long_gate_lends_its_worker_so_other_rollouts_are_reconciled_meanwhile() -> None:
    # One worker: without lending, a rollback of "b" would wait for "a"'s gate to end.
    ran: list[str] = []

    async def main() -> None:
        gate_may_end = asyncio.Event()

        async def reconcile(ref: ObjectRef) -> float | None:
            if ref.name == "a":
                async with reconcile_slot_lent():
                    ran.append("a gate started")
                    await gate_may_end.wait()
                ran.append("a after its gate")
            else:
                ran.append(ref.name)
                gate_may_end.set()
            return None

        queue = WakeupQueue(reconcile)
        task = asyncio.create_task(queue.run(concurrency=1))
        queue.wake(ObjectRef("ns", "a"))
        await asyncio.sleep(0.05)
        queue.wake(ObjectRef("ns", "b"))
        queue.wake(ObjectRef("ns", "a"))  # "a" is still running: not started a second time meanwhile
        await asyncio.sleep(0.15)
        task.cancel()

    asyncio.run(main())
    assert ran[:3] == ["a gate started", "b", "a after its gate"]


def test_a_lent_worker_is_given_back_once_even_when_cancelled_while_waiting_for_it() -> None:
    async def main() -> int:
        workers = asyncio.Semaphore(1)
        await workers.acquire()  # as the queue does before it starts a reconcile
        lent = asyncio.Event()

        async def reconcile(_ref: ObjectRef) -> float | None:
            async with reconcile_slot_lent():
                lent.set()
                await asyncio.sleep(0.02)  # meanwhile another reconcile takes the worker and keeps it
            return None

        queue = WakeupQueue(reconcile)
        task = asyncio.create_task(queue._run_one(ObjectRef("ns", "a"), workers))
        await lent.wait()
        await workers.acquire()
        await asyncio.sleep(0.05)  # the gate is over: waiting for the worker back
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return workers._value

    # Only the other reconcile holds the worker; the cancelled one gave back nothing it did not hold.
    assert asyncio.run(main()) == 0


def test_a_deletion_seen_by_the_watch_handler_ends_a_reconciles_wait_for_its_measurement() -> None:
    """A rollout without a finalizer is gone in one event, whose body still carries its last metadata: only the
    event's type tells the wait for a gate or an analysis (changes_watched) that nobody will ask for its answer."""
    handler = wake_handler()
    state = next(c.cell_contents for c in handler.__closure__ if isinstance(c.cell_contents, dict))
    obj = {"metadata": {"namespace": "ns", "name": "r", "uid": "u1", "generation": 3, "resourceVersion": "7"}}
    ended: list[bool] = []

    async def main() -> None:
        waiting = asyncio.Event()

        async def reconcile(_ref: ObjectRef) -> float | None:
            if not ended:
                with changes_watched(_changed_by_others(obj)) as changed:
                    waiting.set()
                    try:
                        await asyncio.wait_for(changed.wait(), 2)
                        ended.append(True)
                    except TimeoutError:
                        ended.append(False)
            return None

        queue = WakeupQueue(reconcile)
        state["queue"] = queue
        task = asyncio.create_task(queue.run())
        queue.wake(ObjectRef("ns", "r"))
        await asyncio.wait_for(waiting.wait(), 2)
        await invocation.invoke(handler, kwargs={"event": {"type": "DELETED", "object": obj}, "namespace": "ns",
                                                 "name": "r"})
        for _ in range(40):
            if ended:
                break
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    assert ended == [True]
