"""Fixer s31knativefix, units beside tests/integration/test_kserve_restore_s31_live.py: the branches the live file
does not reach. The in-memory InferenceService of test_kserve_unpin (status by the repo's KServe stand-in)."""

from __future__ import annotations

import logging

import pytest
from test_kserve_unpin import V6, V7, Kserve
from test_traffic_kserve_status import knative_isvc

from controller.traffic.base import CandidateModel
from controller.traffic.kserve import KServeRouter, knative_state, knative_view

V8 = "s3://m/8"
STABLE_6 = CandidateModel("m", "6", V6)


def promoted_then(model_8_ready: bool) -> tuple[Kserve, KServeRouter]:
    """7 staged against 6 and promoted (rev 2); then a sync put model 8 in the spec (rev 3)."""
    kserve = Kserve()
    router = kserve.router()
    router.stage(CandidateModel("m", "7", V7), stable_version="6")
    router.promote()
    kserve.get()
    if not model_8_ready:
        kserve.slow.add("m-predictor-00003")
    kserve.obj["spec"]["predictor"]["model"]["storageUri"] = V8
    kserve.obj["metadata"]["generation"] += 1
    component = kserve.get()["status"]["components"]["predictor"]
    assert component["latestCreatedRevision"] == "m-predictor-00003"
    assert component["latestRolledoutRevision"] == ("m-predictor-00003" if model_8_ready else "m-predictor-00002")
    return kserve, router


@pytest.mark.parametrize("model_8_ready", [True, False], ids=["8-rolled-out", "8-starting"])
def test_restore_over_a_synced_in_model_writes_stable_at_once_without_a_pin(
        model_8_ready: bool, caplog: pytest.LogCaptureFixture) -> None:
    # Rolled out, 8 made the rejected 7 previousRolledoutRevision; starting, 7 is still latestRolledoutRevision:
    # either way canaryTrafficPercent 0 would send all traffic to 7.
    kserve, router = promoted_then(model_8_ready)
    written = len(kserve.applied)
    with caplog.at_level(logging.WARNING, logger="controller.traffic.kserve"):
        router.restore(STABLE_6)
    bodies = kserve.applied[written:]
    assert [b["spec"]["predictor"].get("canaryTrafficPercent") for b in bodies] == [None]
    assert bodies[0]["spec"]["predictor"]["model"]["storageUri"] == V6
    assert "restoring version 6 over a model put there outside ModelRollout" in caplog.text
    assert V8 in caplog.text
    state = router.observe()
    assert (state.stable_name, state.stable_version) == ("m-predictor-00004", "6")
    router.restore(STABLE_6)
    assert len(kserve.applied) == written + 1  # restored: nothing more


def test_restore_by_the_recorded_version_writes_the_recorded_uri_as_a_new_revision_when_no_pin_reaches_it() -> None:
    # The template's form of 6 differs from the one recorded (what served): a pin cannot reach rev 1 (8 rolled out
    # since), so stable goes back as a new revision, in the recorded form, stable-storage-uri with it.
    kserve, router = promoted_then(model_8_ready=True)
    router.restore(CandidateModel("m", "6", "s3://m/6/"))
    obj = kserve.get()
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V6
    annotations = obj["metadata"]["annotations"]
    assert (annotations["modelrollout.io/model-storage-uri"], annotations["modelrollout.io/stable-storage-uri"]) == \
        (V6, V6)
    written = len(kserve.applied)
    router.restore(CandidateModel("m", "6", "s3://m/6/"))
    assert len(kserve.applied) == written and router.observe().stable_version == "6"


def test_a_ready_candidate_with_tag_routing_on_but_no_url_yet_says_so() -> None:
    obj = knative_isvc(V7, 0, {
        "latestCreatedRevision": "m-predictor-00002", "latestReadyRevision": "m-predictor-00002",
        "latestRolledoutRevision": "m-predictor-00001",
        "traffic": [{"revisionName": "m-predictor-00001", "percent": 100},
                    {"revisionName": "m-predictor-00002", "percent": 0, "latestRevision": True}]})
    state = knative_state("t", knative_view(obj, "t"))
    assert state.canary_ready and state.canary_url is None
    assert state.message == "KServe reports no URL for candidate revision m-predictor-00002 yet"


def test_a_candidate_not_ready_yet_is_not_said_to_lack_a_url() -> None:
    obj = knative_isvc(V7, 0, {
        "latestCreatedRevision": "m-predictor-00002", "latestReadyRevision": "m-predictor-00001",
        "latestRolledoutRevision": "m-predictor-00001",
        "traffic": [{"revisionName": "m-predictor-00001", "percent": 100}]})
    obj["metadata"]["annotations"].pop("serving.kserve.io/enable-tag-routing")
    state = knative_state("t", knative_view(obj, "t"))
    assert not state.canary_ready and "URL" not in state.message

