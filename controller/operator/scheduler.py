"""Per-rollout wake-ups: one reconcile at a time per object, soonest due first.

kopf's timers and daemons would add a finalizer to every ModelRollout; a plain queue fed by watch events
keeps the resource free of kopf's metadata (the controller's own finalizer is opt-in: revertOnDeletion), and
status stays the only state.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from controller.operator.kubeapi import ObjectRef

log = logging.getLogger(__name__)

ReconcileFn = Callable[[ObjectRef], Awaitable[float | None]]
# Whether a watch event's body (None: the object is gone) shows a change the reconcile must not wait past.
ChangedFn = Callable[[Mapping[str, Any] | None], bool]


class _Slot:
    """One reconcile's claim on the queue's workers, which it may lend out while it only waits."""

    def __init__(self, workers: asyncio.Semaphore) -> None:
        self.workers = workers
        self.held = True
        self.latest: tuple[Mapping[str, Any] | None, ...] = ()  # the last watch event's body since it began
        self.watch: tuple[ChangedFn, asyncio.Event] | None = None

    def release(self) -> None:
        if self.held:
            self.held = False
            self.workers.release()

    def notice(self, body: Mapping[str, Any] | None) -> None:
        self.latest = (body,)
        if self.watch is not None and self.watch[0](body):
            self.watch[1].set()


_current_slot: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar("reconcile_slot", default=None)


@contextlib.asynccontextmanager
async def reconcile_slot_lent() -> AsyncIterator[None]:
    """Wait (a gate runs for minutes) without holding one of the queue's workers, so that other rollouts,
    a rollback among them, are reconciled meanwhile. The object itself stays marked running: no second
    reconcile of it starts. Outside the queue (tests, one-off calls) this does nothing."""
    slot = _current_slot.get()
    if slot is None or not slot.held:
        yield
        return
    slot.release()
    try:
        yield
    finally:
        await slot.workers.acquire()  # if cancelled here the slot stays released: nothing to give back
        slot.held = True


@contextlib.contextmanager
def changes_watched(changed: ChangedFn) -> Iterator[asyncio.Event]:
    """An event set once a watch event for the object this reconcile is about shows a change, as `changed` judges
    its body: a wait in the block ends on it. The latest event since the reconcile began counts too (it may have
    come before the block). Events are judged by their body, not by their arrival: the operator's own status writes
    are watch events too. Outside the queue (tests, one-off calls) it is never set."""
    slot = _current_slot.get()
    event = asyncio.Event()
    if slot is None:
        yield event
        return
    slot.watch = (changed, event)
    if slot.latest and changed(slot.latest[0]):
        event.set()
    try:
        yield event
    finally:
        slot.watch = None


class WakeupQueue:
    """reconcile(ref) returns seconds until it wants to run again, or None for "only on the next change".

    A failed reconcile is retried after error_backoff seconds, doubled with each failure in a row of that object
    up to max_error_backoff (an error that repeats, such as a policy refusing a write, answers the same next time),
    until a reconcile succeeds or the object changes."""

    def __init__(self, reconcile: ReconcileFn, error_backoff: float = 5.0, max_error_backoff: float = 300.0) -> None:
        self._reconcile = reconcile
        self._error_backoff = error_backoff
        self._max_error_backoff = max_error_backoff
        self._due: dict[ObjectRef, float] = {}
        self._heap: list[tuple[float, int, ObjectRef]] = []
        self._counter = itertools.count()
        self._changed = asyncio.Event()
        self._running: set[ObjectRef] = set()
        self._failures: dict[ObjectRef, int] = {}  # failed reconciles in a row
        self._woken_while_running: set[ObjectRef] = set()
        self._slots: dict[ObjectRef, _Slot] = {}  # of the reconciles running

    def seen(self, ref: ObjectRef, body: Mapping[str, Any] | None, deleted: bool = False) -> None:
        """A watch event showed the object as `body` (`deleted`: gone): a reconcile of it in flight may be watching
        for a change (changes_watched). Its wake-up is wake's."""
        slot = self._slots.get(ref)
        if slot is not None and (body is not None or deleted):
            slot.notice(None if deleted else body)

    def wake(self, ref: ObjectRef, delay: float = 0.0) -> None:
        """The object changed (a watch event): reconcile it then, and a failing one from the shortest backoff on,
        so that a human's edit is acted on promptly."""
        if ref in self._running:
            self._woken_while_running.add(ref)  # the reconcile in flight may have read it before the change
        else:
            self._failures.pop(ref, None)
        self._schedule(ref, delay)

    def _schedule(self, ref: ObjectRef, delay: float) -> None:
        due = time.monotonic() + max(delay, 0.0)
        if ref in self._due and self._due[ref] <= due:
            return
        self._due[ref] = due
        heapq.heappush(self._heap, (due, next(self._counter), ref))
        self._changed.set()

    async def run(self, concurrency: int = 4) -> None:
        workers = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                ref = await self._next_due()
                if ref in self._running:
                    # Never two reconciles of one object at once; look again shortly.
                    self._schedule(ref, 0.2)
                    continue
                await workers.acquire()
                self._running.add(ref)
                task = asyncio.create_task(self._run_one(ref, workers))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _next_due(self) -> ObjectRef:
        while True:
            while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                heapq.heappop(self._heap)  # superseded by an earlier wake-up or forgotten
            if self._heap:
                due, _, ref = self._heap[0]
                wait = due - time.monotonic()
                if wait <= 0:
                    heapq.heappop(self._heap)
                    self._due.pop(ref, None)
                    return ref
            else:
                wait = None
            self._changed.clear()
            # Not asyncio.wait_for: on 3.11 a cancel arriving as the event is set is swallowed (the queue never stops).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()

    async def _run_one(self, ref: ObjectRef, workers: asyncio.Semaphore) -> None:
        slot = _Slot(workers)
        _current_slot.set(slot)  # this task's own context
        self._slots[ref] = slot
        try:
            again = await self._reconcile(ref)
        except Exception as exc:
            failures = self._failures.get(ref, 0) + 1
            self._failures[ref] = failures
            # The exponent is bounded: days of failures would overflow a float.
            again = min(self._error_backoff * 2.0 ** min(failures - 1, 32), self._max_error_backoff)
            if failures == 1:
                log.exception("reconcile of %s failed; retrying in %.0fs", ref, again)
            else:
                # The traceback was logged with the first failure; the body of an ApiException may quote the object.
                log.error("reconcile of %s failed again (%s, %d in a row); retrying in %.0fs", ref,
                          type(exc).__name__, failures, again)
        else:
            self._failures.pop(ref, None)
        finally:
            self._running.discard(ref)
            self._slots.pop(ref, None)
            if ref in self._woken_while_running:
                # Changed meanwhile: the next reconcile reads the change, and starts from the shortest backoff.
                self._woken_while_running.discard(ref)
                self._failures.pop(ref, None)
            slot.release()
        if again is not None:
            self._schedule(ref, again)
