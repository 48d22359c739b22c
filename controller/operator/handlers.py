"""kopf registration: watch events only wake the queue; the queue runs the reconciler."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from controller.operator.kubeapi import GROUP, PLURAL, VERSION, ObjectRef, RolloutStore, load_client_config
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import OperatorConfig, RolloutStepper
from controller.operator.scheduler import WakeupQueue

log = logging.getLogger(__name__)


def build_registry(config: OperatorConfig, kubeconfig: str | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    state: dict[str, Any] = {}

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In-cluster service account, else $KUBECONFIG, through the official client's own loader.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start_queue(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Only event handlers are registered, so kopf adds no annotations, finalizers or status fields:
        # the controller's one write to a ModelRollout is its status, and Argo CD sees no drift.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 60
        api_client = load_client_config(kubeconfig)
        reconciler = Reconciler(RolloutStore(api_client), RolloutStepper(api_client, config).step)
        queue = WakeupQueue(reconciler.reconcile)
        state["queue"] = queue
        state["task"] = asyncio.create_task(queue.run())

    @kopf.on.cleanup(registry=registry)
    async def stop_queue(**_: Any) -> None:
        task = state.get("task")
        if task:
            task.cancel()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def wake_on_change(event: dict[str, Any], namespace: str, name: str, **_: Any) -> None:
        queue: WakeupQueue | None = state.get("queue")
        if queue is None:
            return
        ref = ObjectRef(namespace, name)
        if event.get("type") == "DELETED":
            queue.forget(ref)
        else:
            queue.wake(ref)

    return registry


def run(config: OperatorConfig, kubeconfig: str | None = None, namespaces: list[str] | None = None,
        liveness_endpoint: str | None = None) -> None:
    """Run until interrupted. kopf logs in from $KUBECONFIG; the CLI exports --kubeconfig there first."""
    registry = build_registry(config, kubeconfig)
    kopf.run(registry=registry, standalone=True, clusterwide=not namespaces, namespaces=namespaces or (),
             liveness_endpoint=liveness_endpoint)
