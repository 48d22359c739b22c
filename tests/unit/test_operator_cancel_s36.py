"""A cancelled wait stays cancelled when what it waited for arrives in the same turn of the loop.

Python 3.11's asyncio.wait_for returns the inner result instead of raising when the outer task is cancelled just as the
inner one completes (fixed in 3.12). The wake-up queue waited so: an operator shutting down (or a test's teardown)
whose cancel met a watch event kept the queue running for ever (a fresh-clone CI run hung 600 s in
test_operator_interrupts). A reconcile cancelled as its registry share came free went on to call the registry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

from controller.operator.kubeapi import ObjectRef
from controller.operator.runtime import MAX_REGISTRY_CALLS_PER_NAMESPACE, OperatorConfig, RolloutStepper
from controller.operator.scheduler import WakeupQueue


def test_the_queue_stops_when_cancelled_in_the_turn_a_wake_up_arrives() -> None:
    async def main() -> None:
        reconciled: list[ObjectRef] = []

        async def reconcile(ref: ObjectRef) -> float | None:
            reconciled.append(ref)
            return None

        queue = WakeupQueue(reconcile)
        queue.wake(ObjectRef("ns", "later"), delay=60)  # the queue waits for it, with a timeout
        running = asyncio.create_task(queue.run())
        for _ in range(5):
            await asyncio.sleep(0)
        queue.wake(ObjectRef("ns", "now"), delay=30)  # a watch event ...
        running.cancel()  # ... in the turn the operator stops
        await asyncio.wait({running}, timeout=2)
        assert running.done(), "the queue went on after it was cancelled"
        assert running.cancelled()
        assert reconciled == []

    asyncio.run(main())


def test_a_reconcile_cancelled_as_its_registry_share_comes_free_does_not_call_the_registry() -> None:
    async def main() -> None:
        stepper = RolloutStepper(None, OperatorConfig(scrape_interval=dt.timedelta(0)))  # type: ignore[arg-type]
        share = stepper._registry_shares.join("tenant")
        for _ in range(MAX_REGISTRY_CALLS_PER_NAMESPACE):
            await share.acquire()  # the namespace's share is in use
        called = threading.Event()
        waiting = asyncio.create_task(stepper._registry_call("tenant", called.set, deadline=30))
        for _ in range(5):
            await asyncio.sleep(0)
        share.release()  # a call of the namespace ends ...
        waiting.cancel()  # ... in the turn this reconcile is cancelled
        await asyncio.wait({waiting}, timeout=2)
        assert waiting.done()
        assert waiting.cancelled(), "the reconcile went on after it was cancelled"
        await asyncio.sleep(0.2)
        assert not called.is_set()

    asyncio.run(main())
