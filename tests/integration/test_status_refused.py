"""A status the real API server refuses (too large for etcd or for its own request limit, or invalid) is said on the
rollout and in a Warning Event, not retried in silence.

The reconciler is driven directly, with the operator's own RolloutStore and Event poster, against kube-apiserver and
etcd started by the project's Stack (etcd's default --max-request-bytes, 1.5 MiB). The step decides a status holding
a gate verdict on a class with a very long name (a .npz dataset's names are unbounded), as the engine would store it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.devstack.scenario import Scenario
from controller.operator.event_poster import EventPoster
from controller.operator.kubeapi import GROUP, PLURAL, VERSION, ObjectRef, RolloutStore, load_client_config
from controller.operator.metrics import OperatorMetrics
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import ReconcileOutcome
from tests.conftest import run_kubectl
from tests.integration.test_rollout_kserve_lifecycle import Rig, rig, scenario_factory  # noqa: F401

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
MARK = "q7zx"  # spelt in the decided status only: it must never show in what the operator says


def stored_status() -> dict[str, Any]:
    """A rollout gating, as the operator stored it when the gate was handed out."""
    return {"observedGeneration": 1, "phase": "Gating", "message": "Running the golden gate on candidate 7",
            "candidate": {"version": "7"}, "stable": {"version": "6"},
            "gate": {"requestId": "1:gate-1", "startedAt": "2026-01-05T09:00:00Z"},
            "history": [{"time": "2026-01-05T09:00:00Z", "event": "GateStarted", "detail": "candidate 7", "seq": 1}],
            "eventsPostedThrough": 1,
            "conditions": [{"type": "Ready", "status": "False", "reason": "Gating", "message": "Gating",
                            "lastTransitionTime": "2026-01-05T09:00:00Z", "observedGeneration": 1}]}


def with_verdict(status: dict[str, Any], class_chars: int) -> dict[str, Any]:
    name = f"class {MARK}" + "n" * class_chars  # twice in status: the verdict's name and reason
    decided = copy.deepcopy(status)
    decided["gate"].update(completedAt="2026-01-05T09:05:00Z", outcome="pass", reason="2 checks passed",
                           verdicts=[{"name": f"{name} minRecall", "outcome": "pass", "reason": f"{name}: 0.99"}])
    decided["phase"] = "Progressing"
    return decided


@pytest.mark.parametrize(("case", "decide", "said"), [
    # etcd's limit (1.5 MiB): the API server answers 500 with etcd's words.
    ("etcd", lambda s: with_verdict(s, 800_000), "too large (HTTP 500: etcdserver: request is too large)"),
    ("etcd-grpc", lambda s: with_verdict(s, 1_250_000), "too large (HTTP 500: rpc error: code = ResourceExhausted"),
    # Past the API server's own 3 MiB it drops the connection (no answer at all): not sent.
    ("not-sent", lambda s: with_verdict(s, 5_500_000), "too large (not sent: the API server reads at most"),
    ("invalid", lambda s: {**s, "phase": f"Gating{MARK}"}, "invalid (HTTP 422: status.phase FieldValueNotSupported)"),
])
def test_a_refused_status_is_said_in_ready_and_one_warning_event(kubeconfig: Path, namespace: str, case: str,
                                                                   decide: Any, said: str) -> None:
    api = load_client_config(str(kubeconfig), bounded=True)
    store = RolloutStore(api)
    manifest = yaml.safe_load(SAMPLE.read_text())
    name = f"refused-{case}-{uuid.uuid4().hex[:6]}"
    manifest["metadata"] = {"name": name, "namespace": namespace}
    created = store.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    store.apply_status(created, stored_status())
    metrics = OperatorMetrics()

    async def step(obj: dict[str, Any]) -> ReconcileOutcome:
        return ReconcileOutcome(status=decide(obj["status"]))

    reconciler = Reconciler(store, step, metrics, events=EventPoster(store, metrics))
    ref = ObjectRef(namespace, name)
    with pytest.raises(ApiException) as raised:  # a reconcile error: the queue retries it on its backoff
        asyncio.run(reconciler.reconcile(ref))
    assert MARK not in str(raised.value)

    obj = store.get(ref)
    assert obj is not None
    status = obj["status"]
    kept = {k: v for k, v in stored_status().items() if k not in ("conditions", "history", "eventsPostedThrough")}
    assert {k: status[k] for k in kept} == kept  # the stored status, as it was
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready["reason"] == "StatusRejected" and ready["status"] == "False" and said in ready["message"]
    assert [e["event"] for e in status["history"]] == ["GateStarted", "StatusRejected"]
    assert status["eventsPostedThrough"] == 2

    def events() -> list[client.CoreV1Event]:
        listed = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        return [e for e in listed.items if e.reason == "StatusRejected"]

    (event,) = events()
    assert event.type == "Warning" and event.message == ready["message"]
    assert MARK not in json.dumps(status) + event.message

    # Decided and refused again: nothing written (nothing to wake it at once), no second Event.
    with pytest.raises(ApiException):
        asyncio.run(reconciler.reconcile(ref))
    again = store.get(ref)
    assert again is not None and again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert len(events()) == 1
    assert metrics.registry.get_sample_value("modelrollout_status_writes_refused_total") == 2


def refuse_progressing(kubeconfig: Path, name: str, present: bool) -> None:
    """A ValidatingAdmissionPolicy refusing this rollout's status in phase Progressing (the API server's 422)."""
    expression = (f"object.metadata.name != '{name}' || !has(object.status.phase) || "
                  "object.status.phase != 'Progressing'")
    admission_policy(kubeconfig, f"refuse-{name}", f"{PLURAL}/status", expression, "Progressing refused", present)


def admission_policy(kubeconfig: Path, name: str, resource: str, expression: str, message: str,
                     present: bool) -> None:
    """A ValidatingAdmissionPolicy `name` denying UPDATEs of ModelRollout `resource` where `expression` is false, with
    its binding; removed when not `present`."""
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": name},
              "spec": {"failurePolicy": "Fail",
                       "matchConstraints": {"resourceRules": [{"apiGroups": [GROUP], "apiVersions": ["*"],
                                                               "operations": ["UPDATE"], "resources": [resource]}]},
                       "validations": [{"expression": expression, "message": message, "reason": "Invalid"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": name}, "spec": {"policyName": name, "validationActions": ["Deny"]}}
    if present:
        for obj in (policy, binding):
            result = run_kubectl(kubeconfig, "apply", "-f", "-", input_text=json.dumps(obj))
            assert result.returncode == 0, result.stderr
    else:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            run_kubectl(kubeconfig, "delete", kind, name, "--ignore-not-found")


def said_rejected(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("reason") == "StatusRejected" for c in status.get("conditions") or ())


def test_operator_restarts_while_the_gates_decision_is_refused_neither_interrupt_the_gate_nor_say_it_again(
        rig: Rig, scenario_factory: Callable[..., Scenario]) -> None:  # noqa: F811 (the fixtures imported)
    """The gate passes and the status it leads to is refused; the operator is killed and started 3 times, each once
    the restarted one ran the gate again and was refused again. Before, each restart counted a gate interruption (the
    third ended it GateInconclusive "out of memory?" and, with onInconclusive: rollback, rolled the candidate back)
    and posted StatusRejected once more."""
    scenario = scenario_factory("clean")
    name = scenario.model_name
    refuse_progressing(rig.kubeconfig, name, True)
    try:
        time.sleep(2)  # the policy is read by the API server's informer
        operator = rig.start_operator()
        manifest = scenario.rollout()
        manifest["spec"]["analysis"] = {"onInconclusive": "rollback"}
        rig.apply(manifest)
        status = rig.wait(name, said_rejected, 180, "the gate's decision refused")
        for kill in range(3):
            asked_at = status["gate"]["requestedAt"]
            operator.kill()
            operator = rig.start_operator()
            # The restarted operator hands the gate out again (written ahead), it passes, and is refused again.
            status = rig.wait(name, lambda s, asked_at=asked_at: s.get("phase") != "Gating" or (
                said_rejected(s) and (s.get("gate") or {}).get("requestedAt") != asked_at), 120,
                f"restart {kill + 1} refused again")
            assert status["phase"] == "Gating", status.get("message")
            assert (status.get("gate") or {}).get("interrupted", 0) == 0, status.get("message")
        time.sleep(5)  # anything more it would say
        status = rig.status(name)
        assert status["phase"] == "Gating" and "outcome" not in status["gate"] and said_rejected(status)
        entries = [e for e in status["history"] if e["event"] == "StatusRejected"]
        assert len(entries) == 1, [e["detail"] for e in entries]
        assert sum(n for (reason, _), n in rig.posted_events(name).items() if reason == "StatusRejected") == 1
    finally:
        refuse_progressing(rig.kubeconfig, name, False)
