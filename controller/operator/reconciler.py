"""One reconcile: read the rollout fresh, step it, write status with server-side apply, post Events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.operator.kubeapi import ObjectRef, RolloutStore
from controller.operator.metrics import OperatorMetrics
from controller.operator.runtime import ReconcileOutcome

log = logging.getLogger(__name__)

StepFn = Callable[[dict[str, Any]], Awaitable[ReconcileOutcome]]


class Reconciler:
    def __init__(self, store: RolloutStore, step: StepFn, metrics: OperatorMetrics | None = None) -> None:
        self.store = store
        self.step = step
        self.metrics = metrics or OperatorMetrics()

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
        if result.status != (obj.get("status") or {}):
            try:
                await asyncio.to_thread(self.store.apply_status, obj, result.status)
            except ApiException as exc:
                if exc.status == 409:
                    # Someone wrote first (or an older decision of ours did): decide again on fresh state.
                    log.info("status of %s changed underneath; deciding again on fresh state", ref)
                    return 0.0
                raise
        # Counted once the status that records it is stored: a lost write is decided (and counted) again.
        self.metrics.observe(obj, result.status, result.events)
        for reason, message, warning in result.events:
            await asyncio.to_thread(self.store.post_event, obj, reason, message, warning)
        return result.requeue_after
