"""One reconcile: read the rollout fresh, decide, write status with server-side apply, post Events."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.operator.kubeapi import ObjectRef, RolloutStore

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    status: dict[str, Any]
    events: list[tuple[str, str, bool]] = field(default_factory=list)  # (reason, message, warning)
    requeue_after: float | None = None


StepFn = Callable[[dict[str, Any], dt.datetime], StepResult]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def skeleton_step(obj: dict[str, Any], now: dt.datetime) -> StepResult:
    """Record that the rollout was seen at this generation; the engine replaces this step."""
    status = dict(obj.get("status") or {})
    generation = obj["metadata"].get("generation", 0)
    if status.get("observedGeneration") == generation and status.get("phase"):
        return StepResult(status)
    model = obj["spec"]["model"]
    wanted = f"version {model['version']}" if "version" in model else f"alias @{model['alias']}"
    message = f"Waiting to resolve {model['name']} {wanted} in the registry."
    status.update(phase=status.get("phase") or "Pending", observedGeneration=generation, message=message)
    status["conditions"] = [{
        "type": "Ready", "status": "False", "reason": "Pending", "message": message,
        "lastTransitionTime": rfc3339(now), "observedGeneration": generation}]
    history = list(status.get("history") or [])
    history.append({"time": rfc3339(now), "event": "Observed", "detail": f"generation {generation}",
                    "actor": "modelrollout-controller"})
    status["history"] = history[-50:]
    return StepResult(status, events=[("Observed", message, False)])


class Reconciler:
    def __init__(self, store: RolloutStore, step: StepFn = skeleton_step,
                 clock: Callable[[], dt.datetime] = _now) -> None:
        self.store = store
        self.step = step
        self.clock = clock

    async def reconcile(self, ref: ObjectRef) -> float | None:
        obj = await asyncio.to_thread(self.store.get, ref)
        if obj is None:
            return None
        result = self.step(obj, self.clock())
        if result.status != (obj.get("status") or {}):
            try:
                await asyncio.to_thread(self.store.apply_status, obj, result.status)
            except ApiException as exc:
                if exc.status == 409:
                    log.info("status of %s changed underneath; deciding again on fresh state", ref)
                    return 0.0
                raise
        for reason, message, warning in result.events:
            await asyncio.to_thread(self.store.post_event, obj, reason, message, warning)
        return result.requeue_after
