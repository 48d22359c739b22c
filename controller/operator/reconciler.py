"""One reconcile: read the rollout fresh, step it, write status with server-side apply, post Events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.operator.kubeapi import ObjectRef, RolloutStore
from controller.operator.runtime import ReconcileOutcome

log = logging.getLogger(__name__)

StepFn = Callable[[dict[str, Any]], Awaitable[ReconcileOutcome]]


class Reconciler:
    def __init__(self, store: RolloutStore, step: StepFn) -> None:
        self.store = store
        self.step = step

    async def reconcile(self, ref: ObjectRef) -> float | None:
        obj = await asyncio.to_thread(self.store.get, ref)
        if obj is None:
            return None
        result = await self.step(obj)
        if result.status != (obj.get("status") or {}):
            try:
                await asyncio.to_thread(self.store.apply_status, obj, result.status)
            except ApiException as exc:
                if exc.status == 409:
                    # Someone wrote first (or an older decision of ours did): decide again on fresh state.
                    log.info("status of %s changed underneath; deciding again on fresh state", ref)
                    return 0.0
                raise
        for reason, message, warning in result.events:
            await asyncio.to_thread(self.store.post_event, obj, reason, message, warning)
        return result.requeue_after
