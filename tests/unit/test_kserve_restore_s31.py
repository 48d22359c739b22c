"""Fixer s31knativefix, units beside tests/integration/test_kserve_restore_s31_live.py: the branches the live file
does not reach. The in-memory InferenceService of test_kserve_unpin (status by the repo's KServe stand-in)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from test_kserve_unpin import V6, V7, Kserve
from test_traffic_kserve_status import knative_isvc

from controller.traffic.base import CandidateModel
from controller.traffic.kserve import KServeRouter, knative_state, knative_view
from controller.traffic.kube import ConflictError

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


def test_restore_writes_the_templates_uri_as_a_new_revision_when_no_pin_reaches_stable() -> None:
    # Review s31r3kserve LOW 2: the template's form of 6 differs from the one recorded at staging (which may be why
    # the template changed: the old URI no longer loads). No pin reaches rev 1 (8 rolled out since), so stable goes
    # back as a new revision, which gains nothing from the recorded form: the template's, recorded with it.
    kserve, router = promoted_then(model_8_ready=True)
    router.restore(CandidateModel("m", "6", "s3://m/6/"))
    obj = kserve.get()
    assert obj["spec"]["predictor"]["model"]["storageUri"] == "s3://m/6/"
    annotations = obj["metadata"]["annotations"]
    assert (annotations["modelrollout.io/model-storage-uri"], annotations["modelrollout.io/stable-storage-uri"]) == \
        ("s3://m/6/", "s3://m/6/")
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



# --- review s31r3kserve ---------------------------------------------------------------------------------------------


def percents(bodies: list[dict[str, Any]]) -> list[int | None]:
    return [b["spec"]["predictor"].get("canaryTrafficPercent") for b in bodies]


def promoted_7(kserve: Kserve) -> KServeRouter:
    router = kserve.router()
    router.stage(CandidateModel("m", "7", V7), stable_version="6")
    router.promote()
    component = kserve.get()["status"]["components"]["predictor"]
    assert (component["latestRolledoutRevision"], component["previousRolledoutRevision"]) == \
        ("m-predictor-00002", "m-predictor-00001")
    return router


def test_a_sync_landing_just_before_the_pin_gets_no_pin_and_stable_goes_back_as_a_new_revision() -> None:
    # LOW-MEDIUM 1: restore() decided to pin on the status it read; an Argo CD sync of 8 lands before the pin's apply
    # (which gets a 409) and KServe rolls 8 out, making the rejected 7 previousRolledoutRevision. Re-checked on the
    # object it applies to, the pin is not written (it would send all traffic to 7).
    kserve = Kserve()
    router = promoted_7(kserve)
    apply = kserve.apply
    written = len(kserve.applied)

    def sync_lands_first(body: dict[str, Any], force: bool = True) -> dict[str, Any]:
        if len(kserve.applied) == written and not getattr(sync_lands_first, "done", False):
            sync_lands_first.done = True  # type: ignore[attr-defined]
            kserve.obj["spec"]["predictor"]["model"]["storageUri"] = V8
            kserve.obj["metadata"]["generation"] += 1
            kserve.obj["metadata"]["resourceVersion"] = str(int(kserve.obj["metadata"]["resourceVersion"]) + 1)
            assert kserve.get()["status"]["components"]["predictor"]["previousRolledoutRevision"] == "m-predictor-00002"
            raise ConflictError("the object has been modified")
        return apply(body, force)
    router.client.apply = sync_lands_first  # type: ignore[method-assign]
    router.restore(STABLE_6)
    bodies = kserve.applied[written:]
    assert 0 not in percents(bodies), percents(bodies)
    assert [b["spec"]["predictor"]["model"]["storageUri"] for b in bodies] == [V6]
    assert router.observe().stable_version == "6"


def test_no_pin_while_knative_has_not_made_the_revision_of_the_latest_spec() -> None:
    # The unproven item: a status that only looks caught up (rolled out == latest created, previous == stable) while
    # PredictorConfigurationReady is Unknown: a newer spec's revision may still come, and then the pin would hold the
    # rejected 7 rolled out. As unpin_ready does, the pin needs the configuration ready.
    kserve = Kserve()
    router = promoted_7(kserve)
    get = kserve.get

    def configuring() -> dict[str, Any]:
        obj = get()
        for c in obj["status"]["conditions"]:
            if c["type"] == "PredictorConfigurationReady":
                c.update(status="Unknown", reason="Deploying")
        return obj
    router.client.get = router.client.get_or_none = configuring  # type: ignore[method-assign]
    written = len(kserve.applied)
    router.restore(STABLE_6)
    assert percents(kserve.applied[written:]) == [None]
    router.client.get = router.client.get_or_none = get  # type: ignore[method-assign]
    assert kserve.get()["spec"]["predictor"]["model"]["storageUri"] == V6


def test_a_version_from_the_engines_hint_alone_never_restores_another_models_uri() -> None:
    # LOW 3: the InferenceService served another registered model's 6; staging took "6" from the engine's hint, never
    # checked against that URI. restore(m 6) must not pin back to it (nor confirm it as m's 6): m's own 6 is written.
    kserve = Kserve()
    kserve.obj["spec"]["predictor"]["model"]["storageUri"] = "s3://other/6"
    router = promoted_7(kserve)
    written = len(kserve.applied)
    router.restore(STABLE_6)
    bodies = kserve.applied[written:]
    assert 0 not in percents(bodies)
    assert kserve.get()["spec"]["predictor"]["model"]["storageUri"] == V6


def test_a_version_the_object_recorded_for_its_uri_still_gets_the_instant_way_back() -> None:
    # The object's own record (written by an earlier rollout, when the operator's template gave "s3://m/6/"): the
    # version matches though the template's form changed since, so the pin is taken and the recorded form goes back.
    kserve = Kserve()
    kserve.obj["spec"]["predictor"]["model"]["storageUri"] = "s3://m/6/"
    kserve.obj["metadata"]["annotations"].update({"modelrollout.io/model-version": "6",
                                                  "modelrollout.io/model-storage-uri": "s3://m/6/"})
    router = promoted_7(kserve)
    written = len(kserve.applied)
    router.restore(STABLE_6)
    bodies = kserve.applied[written:]
    assert percents(bodies) == [0, 0]
    assert bodies[-1]["spec"]["predictor"]["model"]["storageUri"] == "s3://m/6/"
    state = router.observe()
    assert (state.stable_name, state.stable_version, state.pinned) == ("m-predictor-00001", "6", True)


def test_restaging_keeps_whether_the_stable_version_was_the_objects_own() -> None:
    # A restage (stable still rolled out, the candidate replaced) reads stable from the staging record: a hint stays
    # a hint, the object's own record stays checked.
    for found, checked in (({}, None), ({"modelrollout.io/model-version": "6",
                                               "modelrollout.io/model-storage-uri": V6}, "true")):
        kserve = Kserve()
        kserve.obj["metadata"]["annotations"].update(found)
        router = kserve.router()
        router.stage(CandidateModel("m", "7", V7), stable_version="6")
        kserve.get()
        router.stage(CandidateModel("m", "8", V8), stable_version="6")
        recorded = kserve.get()["metadata"]["annotations"]
        assert (recorded["modelrollout.io/stable-version"], recorded.get("modelrollout.io/stable-version-checked")) \
            == ("6", checked)


def test_no_outside_model_warning_when_the_spec_names_stables_recorded_uri(caplog: pytest.LogCaptureFixture) -> None:
    # LOW 4: an Argo CD self-heal put stable's manifest form back after the promotion; restore() with the template's
    # form is not "over a model put there outside ModelRollout".
    kserve = Kserve()
    router = promoted_7(kserve)
    kserve.obj["spec"]["predictor"]["model"]["storageUri"] = V6
    kserve.obj["metadata"]["generation"] += 1
    kserve.get()
    with caplog.at_level(logging.WARNING, logger="controller.traffic.kserve"):
        router.restore(CandidateModel("m", "6", "s3://m/6/"))
    assert "outside ModelRollout" not in caplog.text


def test_a_hinted_stable_version_written_back_by_a_rollback_stays_unchecked_for_the_next_rollout() -> None:
    # A rollback before promotion writes the recorded stable version back as the object's version record; the next
    # staging must not take that for the object's own record of the other model's URI.
    kserve = Kserve()
    kserve.obj["spec"]["predictor"]["model"]["storageUri"] = "s3://other/6"
    router = kserve.router()
    router.stage(CandidateModel("m", "7", V7), stable_version="6")
    router.rollback()
    router.rollback()  # the copy of stable ready: unpinned
    component = kserve.get()["status"]["components"]["predictor"]
    assert component["latestRolledoutRevision"] == component["latestCreatedRevision"] == "m-predictor-00003"
    router.stage(CandidateModel("m", "8", V8), stable_version="6")
    assert "modelrollout.io/stable-version-checked" not in kserve.get()["metadata"]["annotations"]
    router.promote()
    written = len(kserve.applied)
    router.restore(STABLE_6)
    assert 0 not in percents(kserve.applied[written:])
    assert kserve.get()["spec"]["predictor"]["model"]["storageUri"] == V6


def test_a_restored_stable_is_checked_for_the_next_rollout() -> None:
    # restore() wrote stable's version for the engine's own URI: a later rollout may match it by version alone.
    kserve, router = promoted_then(model_8_ready=True)
    router.restore(CandidateModel("m", "6", "s3://m/6/"))
    router.stage(CandidateModel("m", "9", "s3://m/9"), stable_version="6")
    assert kserve.get()["metadata"]["annotations"]["modelrollout.io/stable-version-checked"] == "true"
