"""KServe Knative router: what rollback() and restore() write while KServe is slow, what staging refuses, and a
GitOps revert after promotion. Each case pins behaviour a mutation review (s27mut) found no test held.

The InferenceService is the in-memory one of test_kserve_unpin (status written by the repo's KServe stand-in).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client
from test_kserve_unpin import V6, V7, Kserve

from controller.traffic.base import CandidateModel, TargetStateError
from controller.traffic.kserve import (
    ANN_STABLE_VERSION,
    ANN_VERSION,
    ANN_VERSION_URI,
    TAG_ROUTING,
    DeploymentMode,
    KServeRouter,
    deployment_mode,
    knative_view,
    standard_view,
)

Obj = dict[str, Any]
V8 = "s3://m/8"


class SlowKserve(Kserve):
    """Once `stale` is set, get() returns that old status with observedGeneration looking caught up
    (kserve#6081): KServe has not acted on the latest write although the status says it has."""

    def __init__(self) -> None:
        super().__init__()
        self.stale: Obj | None = None

    def get(self) -> Obj:
        if self.stale is None:
            return super().get()
        obj = copy.deepcopy(self.obj)
        obj["status"] = copy.deepcopy(self.stale)
        obj["status"]["observedGeneration"] = obj["metadata"]["generation"]
        return obj


def serving_traffic(kserve: Kserve) -> list[tuple[str, int]]:
    traffic = kserve.get()["status"]["components"]["predictor"]["traffic"]
    return [(t["revisionName"], t["percent"]) for t in traffic if t["percent"]]


def candidate_at_100_with_kserve_slow(promoted: bool) -> tuple[SlowKserve, KServeRouter]:
    """7 staged against 6 and rolled out (weight 100, promoted or not); from now on KServe is slow to act."""
    kserve = SlowKserve()
    router = kserve.router()
    router.stage(CandidateModel("m", "7", V7), stable_version="6")
    router.set_weight(100)
    if promoted:
        router.promote()
    kserve.stale = kserve.get()["status"]
    kserve.slow.add("m-predictor-00003")  # the copy of stable a storageUri write would make starts slowly
    return kserve, router


@pytest.mark.parametrize("promoted", [False, True], ids=["rollback-at-100", "restore-after-promotion"])
def test_a_withdrawal_kserve_has_not_acted_on_keeps_the_candidates_uri_pinned_at_0(promoted: bool) -> None:
    # K55 (restore: _pin_previous must wait for the rolled-out revision to move off the latest one); K50+K59
    # (rollback: neither skip the storageUri write nor write it while the candidate is still rolled out).
    kserve, router = candidate_at_100_with_kserve_slow(promoted)
    written = len(kserve.applied)
    if promoted:
        router.restore(CandidateModel("m", "6", V6))
    else:
        router.rollback()
    predictor = kserve.obj["spec"]["predictor"]
    # Changing the model now would leave the rejected revision rolled out at 100%.
    assert (predictor["model"]["storageUri"], predictor.get("canaryTrafficPercent")) == (V7, 0)
    assert len(kserve.applied) == written + 1  # the pin, and nothing more until KServe acts
    kserve.stale = None
    assert serving_traffic(kserve) == [("m-predictor-00001", 100)]  # the pin sends everything back to 6


def test_restore_on_a_view_whose_candidate_is_still_rolled_out_only_pins() -> None:
    # K59: _knative_restore itself refuses to write stable's storageUri while the latest revision is rolled out.
    kserve, router = candidate_at_100_with_kserve_slow(promoted=False)
    view = knative_view(kserve.get(), "m")
    assert view.synced and view.rolled_out == view.latest_created
    body = router._knative_restore(view, None)
    assert body["spec"]["predictor"]["model"]["storageUri"] == V7
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_staging_on_an_inference_service_with_no_rolled_out_revision_is_refused() -> None:
    # K57: canaryTrafficPercent applies only once a revision is rolled out; otherwise the candidate gets 100%.
    obj = {"metadata": {"name": "m", "namespace": "ns", "generation": 1, "resourceVersion": "5", "annotations": {}},
           "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": V6}}},
           "status": {"observedGeneration": 1, "deploymentMode": "Serverless",
                      "conditions": [{"type": "PredictorConfigurationReady", "status": "False",
                                      "reason": "RevisionFailed"}],
                      "components": {"predictor": {}}}}
    router = KServeRouter(client.ApiClient(), "ns", "m")
    with pytest.raises(TargetStateError, match="no rolled-out revision") as caught:
        router._knative_stage(knative_view(obj, "m"), CandidateModel("m", "7", V7), "6")
    assert caught.value.reason == "Unavailable"


def test_a_canary_percent_set_outside_modelrollout_on_a_never_staged_service_is_left_alone() -> None:
    # K15 (candidate_in_spec needs a recorded stable), K43 (set_weight's own check): nothing staged here.
    kserve = Kserve()
    kserve.get()
    kserve.obj["spec"]["predictor"]["model"]["storageUri"] = V8  # the owner's own KServe canary
    kserve.obj["spec"]["predictor"]["canaryTrafficPercent"] = 20
    kserve.obj["metadata"]["generation"] += 1
    kserve.get()
    router = kserve.router()
    before = copy.deepcopy(kserve.obj["spec"])
    with pytest.raises(TargetStateError, match="no candidate is staged"):
        router.set_weight(50)
    router.rollback()
    assert kserve.applied == [] and kserve.obj["spec"] == before


def test_restore_after_a_gitops_revert_to_stables_uri_records_stable_and_gives_tag_routing_back() -> None:
    # K53 (restore's "rolled out already" check needs stable's version recorded), K52 (its "restored already"
    # check needs an older revision serving): a self-heal wrote 6's storageUri back over the promoted 7.
    kserve = Kserve()
    router = kserve.router()
    router.stage(CandidateModel("m", "7", V7), stable_version="6")
    router.set_weight(100)
    router.promote()
    kserve.obj["spec"]["predictor"]["model"]["storageUri"] = V6
    kserve.obj["metadata"]["generation"] += 1
    assert "changed outside ModelRollout" in (router.observe().message or "")
    for _ in range(3):  # settles, and stays settled
        router.restore(CandidateModel("m", "6", V6))
    state = router.observe()
    assert state.stable_version == "6" and not state.message
    annotations = kserve.obj["metadata"]["annotations"]
    assert annotations[ANN_VERSION] == "6"
    assert TAG_ROUTING not in annotations


def standard(annotations: dict[str, str]) -> Obj:
    return {"metadata": {"name": "m", "namespace": "ns", "generation": 2, "resourceVersion": "5"},
            "spec": {"predictor": {"name": "v6", "annotations": annotations,
                                   "model": {"modelFormat": {"name": "sklearn"}, "storageUri": V6}}},
            "status": {"observedGeneration": 2, "deploymentMode": "Standard"}}


def test_standard_promote_with_nothing_staged_on_a_predictor_modelrollout_never_wrote_is_refused() -> None:
    # K66: "promoted already" only when stable carries the version annotation a promotion writes.
    router = KServeRouter(client.ApiClient(), "ns", "m")
    with pytest.raises(TargetStateError, match="no candidate is staged"):
        router._standard_promote(standard_view(standard({}), "m"))
    assert router._standard_promote(standard_view(standard({ANN_VERSION: "6", ANN_VERSION_URI: V6}), "m")) is None


def test_standard_staging_records_the_stable_version_annotated_for_its_uri_over_the_engines_hint() -> None:
    # K63: the annotation names the version of this very storageUri; the hint is only a fallback.
    router = KServeRouter(client.ApiClient(), "ns", "m")
    candidate = CandidateModel("m", "7", V7)
    body = router._standard_stage(standard_view(standard({ANN_VERSION: "6", ANN_VERSION_URI: V6}), "m"), candidate,
                                  "5")
    assert body["spec"]["canary"][0]["predictor"]["annotations"][ANN_STABLE_VERSION] == "6"
    body = router._standard_stage(standard_view(standard({}), "m"), candidate, "5")
    assert body["spec"]["canary"][0]["predictor"]["annotations"][ANN_STABLE_VERSION] == "5"


def test_an_inference_service_reporting_revisions_but_no_mode_is_read_as_knative() -> None:
    # K03: older KServe reports no status.deploymentMode; only Knative mode has revisions.
    obj = {"metadata": {"name": "m", "namespace": "ns", "annotations": {}},
           "spec": {"predictor": {"model": {"storageUri": V6}}},
           "status": {"components": {"predictor": {"latestCreatedRevision": "m-predictor-00001"}}}}
    assert deployment_mode(obj) is DeploymentMode.KNATIVE
    obj["status"]["components"]["predictor"] = {}
    with pytest.raises(TargetStateError, match="cannot tell the deployment mode") as caught:
        deployment_mode(obj)
    assert caught.value.reason == "Unavailable"
