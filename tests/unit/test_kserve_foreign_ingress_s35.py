"""Review s35kserve: Standard mode's weight and promotion refuse to delete spec.canary entries another manager added
(a rollback removes them, and says so), Standard reads KServe's IngressReady (a split not yet programmed is not "back on
stable"), Knative quotes a route condition that is False, and a Knative restore's new revision of stable that is not
ready is quoted while the rejected model keeps the traffic."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from kubernetes import client

from controller.traffic.base import TargetStateError
from controller.traffic.kserve import (
    ANN_STABLE_URI,
    ANN_STABLE_VERSION,
    ANN_STABLE_VERSION_CHECKED,
    ANN_VERSION,
    ANN_VERSION_URI,
    KServeRouter,
    knative_state,
    knative_view,
    standard_state,
    standard_view,
)
from tests.unit.test_adapter_mutation_guards import staged_standard

Obj = dict[str, Any]
SHADOW = {"trafficPercent": 5, "predictor": {
    "name": "shadow", "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://other/1"}}}


def with_shadow() -> Obj:
    """Candidate 7 at 10% beside stable 6, and an entry an on-call added after staging, taking 5%."""
    obj = staged_standard()
    obj["spec"]["canary"].append(copy.deepcopy(SHADOW))
    obj["status"]["canaryStatuses"].append({"name": "shadow", "ready": True, "trafficPercent": 5})
    return obj


def router_on(obj: Obj) -> tuple[KServeRouter, list[Obj]]:
    """A router reading `obj` and recording what it applies (nothing reaches an API server)."""
    router = KServeRouter(client.ApiClient(), "ns", "m")
    applied: list[Obj] = []
    router.client.get = lambda: copy.deepcopy(obj)  # type: ignore[method-assign]
    router.client.apply = lambda body, force=True: applied.append(body) or body  # type: ignore[method-assign]
    return router, applied


@pytest.mark.parametrize("operation", ["set_weight", "promote"])
def test_standard_weight_and_promotion_refuse_to_delete_a_canary_entry_someone_else_added(operation: str) -> None:
    """spec.canary is one atomic list: writing ours alone (or []) would delete the on-call's entry and Deployment."""
    router, applied = router_on(with_shadow())
    with pytest.raises(TargetStateError, match=r"did not create \(shadow\)"):
        router.set_weight(20, candidate_version="7") if operation == "set_weight" else router.promote()
    assert applied == []


@pytest.mark.parametrize("where", ["appended", "in-front"])
@pytest.mark.parametrize("operation", ["set_weight", "promote"])
def test_a_copy_of_our_entry_loading_another_model_is_no_entry_of_ours(where: str, operation: str) -> None:
    """Review s35r3: an on-call's shadow canary made by copying ours (our annotations kept, renamed, another
    storageUri) was taken for ours: deleted by a step, or promoted in the candidate's place when put first."""
    obj = staged_standard()
    shadow = copy.deepcopy(obj["spec"]["canary"][0])
    shadow["predictor"]["name"], shadow["trafficPercent"] = "shadow", 5
    shadow["predictor"]["model"]["storageUri"] = "s3://other/1"
    obj["spec"]["canary"].insert(0 if where == "in-front" else 1, shadow)
    view = standard_view(obj, "m")
    assert view.ours is not None and view.ours["predictor"]["name"] != "shadow"
    assert [e["predictor"]["name"] for e in view.foreign] == ["shadow"]
    router, applied = router_on(obj)
    with pytest.raises(TargetStateError, match=r"did not create \(shadow\)"):
        router.set_weight(20, candidate_version="7") if operation == "set_weight" else router.promote()
    assert applied == []


def test_standard_weight_without_foreign_entries_is_still_written() -> None:
    router, applied = router_on(staged_standard())
    router.set_weight(20, candidate_version="7")
    assert [e["trafficPercent"] for e in applied[0]["spec"]["canary"]] == [20]


def test_standard_rollback_takes_foreign_entries_off_with_the_candidate_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    """A rollback must always be able to withdraw: all traffic back to stable, as the engine confirms it."""
    router, applied = router_on(with_shadow())
    with caplog.at_level(logging.WARNING, logger="controller.traffic.kserve"):
        router.rollback()
    assert applied[0]["spec"]["canary"] == []
    assert "did not create" in caplog.text and "shadow" in caplog.text


def rolled_back_standard(conditions: list[Obj]) -> Obj:
    """A rollback's `canary: []` processed (generation caught up, no canaryStatuses), stable's predictor ready."""
    obj = staged_standard()
    obj["spec"]["canary"] = []
    obj["status"]["canaryStatuses"] = []
    obj["status"]["conditions"] = [{"type": "PredictorReady", "status": "True"}, *conditions]
    return obj


def test_standard_ingress_not_ready_is_not_back_on_stable_and_quotes_kserve() -> None:
    """KServe's raw-deployment controller: the HTTPRoute carrying the split not programmed, the old split may serve."""
    obj = rolled_back_standard([
        {"type": "IngressReady", "status": "False", "reason": "ParentStatusNotAvailable",
         "message": "Predictor HttpRouteNotReady"},
        {"type": "Ready", "status": "False", "reason": "ParentStatusNotAvailable"}])
    state = standard_state("t", standard_view(obj, "t"))
    assert state.synced and not state.ready, state
    assert "IngressReady False (ParentStatusNotAvailable): Predictor HttpRouteNotReady" in state.message


@pytest.mark.parametrize("conditions", [[{"type": "IngressReady", "status": "True"}], []])
def test_standard_ingress_ready_or_not_reported_reads_on_predictor_ready(conditions: list[Obj]) -> None:
    """True: back on stable. Absent (a status KServe's ingress reconciler has not written, or written by hand): read on
    PredictorReady alone, as before IngressReady was read."""
    state = standard_state("t", standard_view(rolled_back_standard(conditions), "t"))
    assert state.ready and state.message == "", state


V6, V7 = "s3://m/6", "s3://m/7"
R1, R2, R3 = "m-predictor-00001", "m-predictor-00002", "m-predictor-00003"
ROUTE = [{"type": "PredictorRouteReady", "status": "True"}, {"type": "IngressReady", "status": "True"}]


def knative(uri: str, annotations: dict[str, str], component: Obj, conditions: list[Obj]) -> Obj:
    return {"metadata": {"name": "m", "namespace": "ns", "generation": 5, "resourceVersion": "1",
                         "annotations": annotations},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}},
            "status": {"observedGeneration": 5, "conditions": conditions,
                       "components": {"predictor": component}}}


def test_knative_route_condition_false_is_quoted() -> None:
    obj = knative(V6, {}, {"latestRolledoutRevision": R1, "latestCreatedRevision": R1, "latestReadyRevision": R1,
                           "traffic": [{"revisionName": R1, "percent": 100}]},
                  [{"type": "PredictorRouteReady", "status": "True"},
                   {"type": "IngressReady", "status": "False", "reason": "IngressNotConfigured",
                    "message": "Ingress has not yet been reconciled."},
                   {"type": "PredictorConfigurationReady", "status": "True"}])
    state = knative_state("t", knative_view(obj, "t"))
    assert not state.ready
    assert "IngressReady False (IngressNotConfigured): Ingress has not yet been reconciled." in state.message


# restore()'s new revision of stable (no pin reaches stable's old revision): stable recorded at the spec's URI, no
# stable revision recorded; R2, the rejected 7 promoted, rolled out with all traffic; R3 (stable 6) never ready.
RESTORED = {ANN_VERSION: "6", ANN_VERSION_URI: V6, ANN_STABLE_VERSION: "6", ANN_STABLE_URI: V6,
            ANN_STABLE_VERSION_CHECKED: "true"}
NOT_READY = {"type": "PredictorConfigurationReady", "status": "Unknown", "reason": "Deploying",
             "message": f'Revision "{R3}" is not ready: the model server never became ready'}


def test_knative_restore_whose_new_revision_of_stable_is_not_ready_says_so() -> None:
    obj = knative(V6, RESTORED, {"latestRolledoutRevision": R2, "latestCreatedRevision": R3,
                                 "latestReadyRevision": R2, "traffic": [{"revisionName": R2, "percent": 100}]},
                  [*ROUTE, NOT_READY])
    state = knative_state("t", knative_view(obj, "t"))
    assert R3 in state.message and "the model server never became ready" in state.message, state
    assert f"{R2} keeps 100%" in state.message
    # Never confirmed meanwhile: the engine confirms a restore only once stable reports the restored version.
    assert state.stable_version is None and state.canary_name is None


def test_knative_restore_confirmed_once_the_new_revision_serves() -> None:
    obj = knative(V6, RESTORED, {"latestRolledoutRevision": R3, "latestCreatedRevision": R3,
                                 "latestReadyRevision": R3, "previousRolledoutRevision": R2,
                                 "traffic": [{"revisionName": R3, "percent": 100}]},
                  [*ROUTE, {"type": "PredictorConfigurationReady", "status": "True"}])
    state = knative_state("t", knative_view(obj, "t"))
    assert state.ready and state.stable_version == "6" and state.message == "", state
