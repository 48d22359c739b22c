"""kopf registration: watch events only wake the queue; the queue runs the reconciler."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import kopf

from controller.operator.event_poster import EventPoster
from controller.operator.kubeapi import GROUP, PLURAL, VERSION, ObjectRef, RolloutStore, load_client_config
from controller.operator.metrics import OperatorMetrics, serve
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import OperatorConfig, RolloutStepper
from controller.operator.scheduler import WakeupQueue

log = logging.getLogger(__name__)


class EndlessBackoffs:
    """kopf's retry delays for an API request; it escalates when they run out, and a watch that escalates stops the
    whole operator: one namespace whose RoleBinding was revoked must go on retrying (and logging), not take every
    other namespace's rollouts down with it. kopf iterates this once per request: each gets the sequence afresh."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1, 1, 2, 3, 5, 8, 13, 21), itertools.repeat(60))


def build_registry(config: OperatorConfig, kubeconfig: str | None = None,
                   metrics: OperatorMetrics | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    metrics = metrics or OperatorMetrics()
    state: dict[str, Any] = {}

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # The same credentials as the operator's own client (load_client_config's order), so both
        # always talk to one cluster as one identity, whatever $KUBECONFIG said at import time.
        return connection_info(load_client_config(kubeconfig).configuration)

    @kopf.on.startup(registry=registry)
    async def start_queue(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Only event handlers are registered, so kopf adds no annotations, finalizers or status fields: the
        # controller writes a ModelRollout's status and, with revertOnDeletion, its own finalizer; Argo CD sees
        # no drift.
        settings.posting.level = logging.WARNING
        # kopf logs each probe it runs (every liveness request past its 10 s cache): its failures are enough.
        logging.getLogger("kopf.activities.probe").setLevel(logging.WARNING)
        settings.watching.server_timeout = 60
        settings.networking.error_backoffs = EndlessBackoffs()
        # The CRD is installed before the operator starts and discovered once; RBAC grants no CRD or
        # Namespace watch (deploy/base/rbac.yaml), so kopf must not try one.
        settings.scanning.disabled = True
        api_client = load_client_config(kubeconfig, bounded=True, observer=metrics)
        store = RolloutStore(api_client)
        events = EventPoster(store, metrics)
        stepper = RolloutStepper(api_client, config, events=events)
        reconciler = Reconciler(store, stepper.step, metrics, events=events, forget=stepper.forget)
        queue = WakeupQueue(reconciler.reconcile)
        state["queue"] = queue
        task = asyncio.create_task(queue.run())
        task.add_done_callback(_queue_ended)
        state["task"] = task

    # The liveness endpoint's JSON gains {"kubeApi": {...}}: what the operator's calls met at the API server. Never
    # a reason to fail liveness: a restarted pod finds the API server just as down.
    @kopf.on.probe(id="kubeApi", registry=registry)
    async def kube_api(**_: Any) -> dict[str, Any]:
        return metrics.kube_api_health()

    @kopf.on.cleanup(registry=registry)
    async def stop_queue(**_: Any) -> None:
        task = state.get("task")
        if task:
            task.cancel()

    # async: kopf runs a sync handler in a worker thread, and the queue belongs to the event loop (a wake-up from
    # another thread could lose a rollout's entry for good).
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def wake_on_change(event: dict[str, Any], namespace: str, name: str, **_: Any) -> None:
        queue: WakeupQueue | None = state.get("queue")
        if queue is None:
            return
        # A deletion is reconciled too, after any reconcile in flight: the store then finds nothing, and the
        # reconciler forgets the rollout's metrics (forgetting them here, a reconcile in flight put them back).
        ref = ObjectRef(namespace, name)
        # A reconcile waiting for a gate or an analysis stops for someone else's change (an abort): seen in the body.
        queue.seen(ref, event.get("object"), deleted=event.get("type") == "DELETED")
        queue.wake(ref)

    return registry


def _queue_ended(task: asyncio.Task[None]) -> None:
    """The queue runs until cleanup; anything else would leave every rollout unreconciled behind a live probe."""
    if task.cancelled():
        return
    log.critical("the reconcile queue stopped (%s): exiting so that the pod restarts",
                 type(task.exception()).__name__)
    raise SystemExit(1)


def connection_info(configuration: Any) -> kopf.ConnectionInfo:
    token = (configuration.api_key or {}).get("authorization") or (configuration.api_key or {}).get("BearerToken")
    if token and token.lower().startswith("bearer "):
        token = token[7:]
    return kopf.ConnectionInfo(
        server=configuration.host, ca_path=configuration.ssl_ca_cert, insecure=not configuration.verify_ssl,
        token=token or None, certificate_path=configuration.cert_file, private_key_path=configuration.key_file,
        username=configuration.username or None, password=configuration.password or None)


def run(config: OperatorConfig, kubeconfig: str | None = None, namespaces: list[str] | None = None,
        liveness_endpoint: str | None = None, metrics_address: str = "127.0.0.1",
        metrics_port: int | None = 9100) -> None:
    """Run until interrupted; kopf logs in with the operator's own client configuration (see login).

    /metrics is served on metrics_address:metrics_port (port 0: any free port, logged; None: not served).
    """
    metrics = OperatorMetrics()
    if metrics_port is not None:
        serve(metrics, metrics_address, metrics_port)
    registry = build_registry(config, kubeconfig, metrics)
    kopf.run(registry=registry, standalone=True, clusterwide=not namespaces, namespaces=namespaces or (),
             liveness_endpoint=liveness_endpoint)
