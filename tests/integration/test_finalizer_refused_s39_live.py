"""The revertOnDeletion finalizer refused by the real API server (a ValidatingAdmissionPolicy on the rollout, as a
cluster's policy might): the rollout says so in Ready and one Warning Event, without the policy's words, and starts
once the policy is gone (review s39runtime). The reconciler is driven directly with the operator's own store and
stepper, against kube-apiserver and etcd started by the project's Stack."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.api.status import FINALIZER_REFUSED
from controller.operator.event_poster import EventPoster
from controller.operator.kubeapi import FINALIZER, GROUP, PLURAL, VERSION, ObjectRef, RolloutStore, load_client_config
from controller.operator.metrics import OperatorMetrics
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import FinalizerRefused, OperatorConfig, RolloutStepper
from tests.integration.test_status_refused import admission_policy
from tests.unit.test_operator_finalizer import RAW

pytestmark = pytest.mark.integration
POLICY_WORDS = "finalizers-need-a-ticket-q7zx"  # the policy's message: never repeated by the operator


def refuse_finalizer(kubeconfig: Path, name: str, present: bool) -> None:
    """A ValidatingAdmissionPolicy refusing the controller's finalizer on this rollout (the API server's 422)."""
    expression = (f"object.metadata.name != '{name}' || !has(object.metadata.finalizers) || "
                  f"!('{FINALIZER}' in object.metadata.finalizers)")
    admission_policy(kubeconfig, f"no-finalizer-{name}", PLURAL, expression, POLICY_WORDS, present)


def test_a_refused_finalizer_is_said_in_ready_and_one_warning_event_then_the_rollout_starts(
        kubeconfig: Path, namespace: str) -> None:
    api = load_client_config(str(kubeconfig), bounded=True)
    store = RolloutStore(api)
    name = f"held-{uuid.uuid4().hex[:6]}"
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelRollout",
                "metadata": {"name": name, "namespace": namespace}, "spec": copy.deepcopy(RAW)}
    store.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    refuse_finalizer(kubeconfig, name, True)
    try:
        time.sleep(2)  # the policy is read by the API server's informer
        metrics = OperatorMetrics()
        events = EventPoster(store, metrics)
        stepper = RolloutStepper(api, OperatorConfig(), events=events)
        reconciler = Reconciler(store, stepper.step, metrics, events=events)
        ref = ObjectRef(namespace, name)
        with pytest.raises(FinalizerRefused) as raised:  # a reconcile error: the queue retries it on its backoff
            asyncio.run(reconciler.reconcile(ref))
        assert raised.value.status == 422 and POLICY_WORDS not in str(raised.value)
        obj = store.get(ref)
        assert obj is not None and FINALIZER not in (obj["metadata"].get("finalizers") or [])
        status: dict[str, Any] = obj["status"]
        (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert (ready["status"], ready["reason"]) == ("False", FINALIZER_REFUSED)
        assert ready["message"].startswith(f"The API server refused to add the controller's finalizer {FINALIZER} "
                                           "(HTTP 422 Unprocessable Entity): spec.rollback.revertOnDeletion")
        assert "phase" not in status and POLICY_WORDS not in json.dumps(status)

        def warnings() -> list[client.CoreV1Event]:
            listed = client.CoreV1Api(api).list_namespaced_event(namespace,
                                                                 field_selector=f"involvedObject.name={name}")
            return [e for e in listed.items if e.reason == FINALIZER_REFUSED]

        (event,) = warnings()
        assert event.type == "Warning" and event.message == ready["message"]
        with pytest.raises(FinalizerRefused):  # refused again: nothing more said
            asyncio.run(reconciler.reconcile(ref))
        again = store.get(ref)
        assert again is not None and again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
        assert len(warnings()) == 1
    finally:
        refuse_finalizer(kubeconfig, name, False)
    for _ in range(20):  # until the API server's informer has dropped the policy
        try:
            asyncio.run(reconciler.reconcile(ref))
            break
        except FinalizerRefused:
            time.sleep(0.5)
    held = store.get(ref)
    assert held is not None and FINALIZER in (held["metadata"].get("finalizers") or [])
