"""One reconcile: read the rollout fresh, step it, write status with server-side apply, post its new Events."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.api.status import same_owned_status
from controller.operator.event_poster import EventPoster
from controller.operator.events import POSTED_THROUGH
from controller.operator.kubeapi import ObjectRef, RolloutStore, StatusWriteRefused, apply_decided_status
from controller.operator.metrics import OperatorMetrics
from controller.operator.runtime import FinalizerRefused, ReconcileOutcome, finalizer_refused_status, refused_status

log = logging.getLogger(__name__)

StepFn = Callable[[dict[str, Any]], Awaitable[ReconcileOutcome]]
ForgetFn = Callable[[str, str], None]


class Reconciler:
    def __init__(self, store: RolloutStore, step: StepFn, metrics: OperatorMetrics | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 events: EventPoster | None = None, forget: ForgetFn | None = None) -> None:
        self.store = store
        self.step = step
        self.clock = clock
        self.forget = forget  # the stepper's own memory of the rollout, dropped with its metrics
        self.metrics = metrics or OperatorMetrics()
        # Shared with the stepper, which posts the entries of each write-ahead as soon as it is stored.
        self.events = events or EventPoster(store, self.metrics, clock)

    async def reconcile(self, ref: ObjectRef) -> float | None:
        started = time.monotonic()
        try:
            return await self._reconcile(ref)
        except Exception:
            self.metrics.reconcile_errors.inc()
            raise
        finally:
            self.metrics.reconcile_duration.observe(time.monotonic() - started)

    async def _reconcile(self, ref: ObjectRef) -> float | None:
        obj = await asyncio.to_thread(self.store.get, ref)
        if obj is None:
            self.metrics.forget(ref.namespace, ref.name)
            if self.forget is not None:
                self.forget(ref.namespace, ref.name)
            return None
        # Before anything is stored: a rollback written ahead and then a failed write is counted next time.
        self._metrics(self.metrics.baseline, obj)
        result = await self.step(obj)
        self.metrics.count_actions(result.actions_taken)  # taken whether or not the status write below wins
        stored, status, refused = obj, result.status, result.refused  # refused: a write of the stepper's on the way
        decided_on = result.stored_status if result.stored_status is not None else obj.get("status") or {}
        if refused is None and not same_owned_status(status, obj.get("status") or {}):
            try:
                stored = await asyncio.to_thread(apply_decided_status, self.store, obj, status, decided_on)
            except StatusWriteRefused as exc:
                refused = exc
            except ApiException as exc:
                if exc.status == 409:
                    log.info("status of %s changed underneath; deciding again on fresh state", ref)
                    if result.put_back is not None:
                        result.put_back()  # the answers that decision read: the next decision reads them
                    return self._decide_again(obj, result)
                raise
        if refused is not None:
            if result.refused is None and result.put_back is not None:
                result.put_back()  # not stored either (the stepper puts back what its own refused write read)
            said = await self._say_refused(obj, decided_on, refused)
            if said is None:
                return self._decide_again(obj, result)
            stored, status = said
        # Counted once the status that records it is stored: a lost write is decided (and counted) again.
        self._metrics(self.metrics.observe, obj, status)
        retry_events = await self._post_events(stored, status)
        if refused is not None:
            # A reconcile error (the queue's backoff, the reconcile-errors alert): sent again at once, the decision
            # would be refused again. The status says why meanwhile, and its Event is out.
            raise refused
        return min((t for t in (result.requeue_after, retry_events) if t is not None), default=None)

    def _decide_again(self, obj: dict[str, Any], result: ReconcileOutcome) -> float:
        """Someone wrote first (or an older decision of ours did): decide again on fresh state, at once."""
        if result.stored_status is not None:
            # What the stepper stored on the way is counted now: read back first thing after a restart, it would be
            # the baseline, and a rollback in it never counted.
            self._metrics(self.metrics.observe, obj, result.stored_status)
        return 0.0

    async def _say_refused(self, obj: dict[str, Any], stored_status: dict[str, Any],
                           refused: StatusWriteRefused | FinalizerRefused,
                           ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Store `stored_status` (what the API server holds) saying why the status decided on it, or the finalizer,
        was refused; the object and status stored then, or None when the rollout changed underneath."""
        meta = obj["metadata"]
        generation = int(meta.get("generation") or 0)
        if isinstance(refused, FinalizerRefused):  # logged where it was refused
            status = finalizer_refused_status(stored_status, refused, generation, self.clock())
        else:
            self.metrics.status_writes_refused.inc()
            log.warning("%s/%s: the API server refused the decided status (%s); the stored status is kept and says "
                        "so", meta["namespace"], meta["name"], refused.problem)
            status = refused_status(stored_status, refused.problem, generation, self.clock())
        if status == stored_status:
            return obj, status  # it says so already: nothing to write, nothing to wake
        try:
            return await asyncio.to_thread(self.store.apply_status, obj, status), status
        except StatusWriteRefused:
            self.metrics.status_writes_refused.inc()
            raise  # refused too (the stored status at the very edge of the limit): a reconcile error all the same
        except ApiException as exc:
            if exc.status != 409:
                raise
            log.info("status of %s/%s changed underneath; deciding again on fresh state", meta["namespace"],
                     meta["name"])
            return None

    @staticmethod
    def _metrics(count: Callable[..., None], obj: dict[str, Any], *args: Any) -> None:
        """Metrics are a view of what was stored: one that fails (a status it cannot make sense of) is logged,
        never a failed reconcile, which would retry for ever and post no Events."""
        try:
            count(obj, *args)
        except Exception:
            meta = obj["metadata"]
            log.exception("%s/%s: metrics not updated", meta.get("namespace"), meta.get("name"))

    async def _post_events(self, stored: dict[str, Any], status: dict[str, Any]) -> float | None:
        """Post the stored entries not posted yet, then record how far it got; when to try again, if ever."""
        posted = await self.events.post(stored, status)
        if posted.mark != (status.get(POSTED_THROUGH) or 0):
            try:
                await asyncio.to_thread(self.store.apply_status, stored, {**status, POSTED_THROUGH: posted.mark})
            except StatusWriteRefused as exc:
                # The status itself is stored (a number more is refused, at the very edge of the size limit, or by a
                # policy): the Events went out, and are refused by name when posted again. A reconcile error, not a
                # condition: a status saying so would be larger still.
                self.metrics.status_writes_refused.inc()
                meta = stored["metadata"]
                log.warning("%s/%s: the API server refused the Events mark (%s)", meta["namespace"], meta["name"],
                            exc.problem)
                raise
            except ApiException as exc:
                if exc.status != 409:
                    raise
                # Changed underneath: the next reconcile finds these entries AlreadyPosted and records the mark.
                meta = stored["metadata"]
                log.info("status of %s/%s changed underneath; Events recorded next time", meta["namespace"],
                         meta["name"])
        return posted.retry_after
