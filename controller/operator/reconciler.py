"""One reconcile: read the rollout fresh, step it, write status with server-side apply, post its new Events."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.operator.events import EVENT_TTL, POSTED_THROUGH, PostResult, entry_time, event_reason, unposted
from controller.operator.kubeapi import ObjectRef, RolloutStore
from controller.operator.metrics import OperatorMetrics
from controller.operator.runtime import ReconcileOutcome

log = logging.getLogger(__name__)

# How soon Events that the API server could not take are tried again, at first and at the longest.
EVENT_RETRY_SECONDS = 5.0
EVENT_RETRY_MAX_SECONDS = 300.0

StepFn = Callable[[dict[str, Any]], Awaitable[ReconcileOutcome]]


class Reconciler:
    def __init__(self, store: RolloutStore, step: StepFn, metrics: OperatorMetrics | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.store = store
        self.step = step
        self.metrics = metrics or OperatorMetrics()
        self.clock = clock

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
            return None
        result = await self.step(obj)
        self.metrics.count_actions(result.actions_taken)  # taken whether or not the status write below wins
        stored = obj
        if result.status != (obj.get("status") or {}):
            try:
                stored = await asyncio.to_thread(self.store.apply_status, obj, result.status)
            except ApiException as exc:
                if exc.status == 409:
                    # Someone wrote first (or an older decision of ours did): decide again on fresh state.
                    log.info("status of %s changed underneath; deciding again on fresh state", ref)
                    return 0.0
                raise
        # Counted once the status that records it is stored: a lost write is decided (and counted) again.
        self.metrics.observe(obj, result.status)
        retry_events = await self._post_events(stored, result.status)
        return min((t for t in (result.requeue_after, retry_events) if t is not None), default=None)

    async def _post_events(self, stored: dict[str, Any], status: dict[str, Any]) -> float | None:
        """Post the stored history entries not posted yet, then record how far it got.

        Entries stored by a reconcile that was killed or lost its last write are posted by the next one, and
        those already posted are not posted again. Returns when to try again if the API server could not
        take some: soon at first, less often as they age; past the Events' lifetime they are given up.
        """
        meta = stored["metadata"]
        mark = status.get(POSTED_THROUGH) or 0
        retry_after = None
        pending = unposted(status)
        if pending and pending[0]["seq"] > mark + 1:
            log.warning("%s/%s: history entries %d to %d left the bounded history before they were posted as Events",
                        meta["namespace"], meta["name"], mark + 1, pending[0]["seq"] - 1)
        now = self.clock()
        for entry in pending:
            age = now - (entry_time(entry) or now)
            if age > EVENT_TTL:
                log.warning("not posting Event %s for %s/%s: recorded %.0f s ago, past the Events' lifetime",
                            event_reason(entry), meta["namespace"], meta["name"], age.total_seconds())
            else:
                posted = await asyncio.to_thread(self.store.post_event, stored, entry)
                if posted is PostResult.DEFERRED:
                    retry_after = min(max(age.total_seconds() / 2, EVENT_RETRY_SECONDS), EVENT_RETRY_MAX_SECONDS)
                    break
                if posted is PostResult.POSTED:
                    self.metrics.count_event(event_reason(entry))
            mark = entry["seq"]
        if mark != (status.get(POSTED_THROUGH) or 0):
            try:
                await asyncio.to_thread(self.store.apply_status, stored, {**status, POSTED_THROUGH: mark})
            except ApiException as exc:
                if exc.status != 409:
                    raise
                # Changed underneath: the next reconcile finds these entries AlreadyPosted and records the mark.
                log.info("status of %s/%s changed underneath; Events recorded next time", meta["namespace"],
                         meta["name"])
        return retry_after
