"""The KServe router on a Standard candidate written into spec.predictor by hand (its canary entry left), and on
a version number shared by two registered models (the target last promoted by a rollout of another model):
review s28r2. Pure reads and bodies; the live runs: tests/integration/test_kserve_rollback_handedit_s28b_live.py."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from controller.traffic.base import CandidateModel
from controller.traffic.kserve import KServeRouter, knative_state, knative_view, standard_state, standard_view

PREFIX = "modelrollout.io/"
V6, V7, OTHER_7 = "s3://m/6", "s3://m/7", "s3://other/7"


def standard(predictor_uri: str, predictor_ann: dict[str, str], stable_version: str | None = "6",
             stable_uri: str = V6) -> dict[str, Any]:
    """Candidate 7 (s3://m/7) staged at 30% as a canary entry against the predictor `v6`."""
    canary_ann = {PREFIX + "model-version": "7", PREFIX + "model-storage-uri": V7,
                  PREFIX + "stable-storage-uri": stable_uri, PREFIX + "stable-predictor-name": "v6",
                  **({PREFIX + "stable-version": stable_version} if stable_version else {})}
    return {"metadata": {"name": "m", "namespace": "ns", "generation": 3, "resourceVersion": "1"},
            "spec": {"predictor": {"name": "v6", "annotations": predictor_ann,
                                   "model": {"modelFormat": {"name": "sklearn"}, "storageUri": predictor_uri}},
                     "canary": [{"trafficPercent": 30, "predictor": {
                         "name": "v7", "annotations": canary_ann,
                         "model": {"modelFormat": {"name": "sklearn"}, "name": "kserve-container",
                                   "storageUri": V7}}}]},
            "status": {"observedGeneration": 3, "deploymentMode": "Standard",
                       "canaryStatuses": [{"name": "v7", "ready": True, "trafficPercent": 30}],
                       "conditions": [{"type": "PredictorReady", "status": "True"}]}}


RECORDED_6 = {PREFIX + "model-version": "6", PREFIX + "model-storage-uri": V6}


def test_standard_candidate_written_into_the_predictor_reads_as_serving_as_stable() -> None:
    for predictor_ann, recorded in ((RECORDED_6, "6"), ({}, "6"), ({}, None)):  # promoted earlier; a first rollout
        state = standard_state("m", standard_view(standard(V7, predictor_ann, recorded), "m"))
        assert (state.stable_version, state.canary_version) == ("7", "7"), predictor_ann
        assert "promoted outside ModelRollout" in state.message
    state = standard_state("m", standard_view(standard(V6, RECORDED_6), "m"))  # as staged
    assert (state.stable_version, state.canary_version, state.message) == ("6", "7", "")


def test_standard_rollback_after_a_hand_promotion_puts_the_recorded_stable_back() -> None:
    router = KServeRouter(client.ApiClient(), "ns", "m")
    body = router._standard_rollback(standard_view(standard(V7, RECORDED_6), "m"))
    assert body is not None and body["spec"]["canary"] == []
    predictor = body["spec"]["predictor"]
    assert (predictor["model"]["storageUri"], predictor["name"]) == (V6, "v6")
    written = predictor["annotations"]
    assert (written[PREFIX + "model-version"], written[PREFIX + "model-storage-uri"]) == ("6", V6)
    # What the engine sends on seeing 7 as stable: the same, under the name recorded on the canary.
    body = router._standard_restore(standard_view(standard(V7, {}), "m"), CandidateModel("m", "6", V6))
    assert body is not None and body["spec"]["canary"] == []
    assert (body["spec"]["predictor"]["model"]["storageUri"], body["spec"]["predictor"]["name"]) == (V6, "v6")


OTHER_MODELS_7 = {PREFIX + "model-version": "7", PREFIX + "model-storage-uri": OTHER_7}


def test_standard_another_models_version_of_the_candidates_number_is_not_read_as_the_candidate() -> None:
    state = standard_state("m", standard_view(standard(OTHER_7, OTHER_MODELS_7, None, OTHER_7), "m"))
    assert (state.stable_version, state.canary_version) == (None, "7")
    # Staged before this fix (the clashing number recorded on the canary): not read either.
    state = standard_state("m", standard_view(standard(OTHER_7, {}, "7", OTHER_7), "m"))
    assert state.stable_version is None
    # Nor recorded by staging; the rollback drops it from spec.predictor, where it would read as the candidate.
    router = KServeRouter(client.ApiClient(), "ns", "m")
    unstaged = standard(OTHER_7, OTHER_MODELS_7, None, OTHER_7)
    unstaged["spec"].pop("canary")
    body = router._standard_stage(standard_view(unstaged, "m"), CandidateModel("m", "7", V7), "6")
    assert PREFIX + "stable-version" not in body["spec"]["canary"][0]["predictor"]["annotations"]
    body = router._standard_rollback(standard_view(standard(OTHER_7, OTHER_MODELS_7, None, OTHER_7), "m"))
    assert body is not None and body["spec"]["predictor"]["model"]["storageUri"] == OTHER_7
    assert PREFIX + "model-version" not in body["spec"]["predictor"].get("annotations", {})


def knative(annotations: dict[str, str], percent: int | None = 0) -> dict[str, Any]:
    return {"metadata": {"name": "m", "namespace": "ns", "generation": 4, "resourceVersion": "1",
                         "annotations": annotations},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": V7},
                                   **({"canaryTrafficPercent": percent} if percent is not None else {})}},
            "status": {"observedGeneration": 4, "deploymentMode": "Knative",
                       "components": {"predictor": {
                           "latestCreatedRevision": "m-2", "latestReadyRevision": "m-2",
                           "latestRolledoutRevision": "m-1",
                           "traffic": [{"revisionName": "m-1", "percent": 100},
                                       {"revisionName": "m-2", "percent": 0}]}},
                       "conditions": [{"type": "PredictorRouteReady", "status": "True"}]}}


def test_knative_staging_never_records_the_candidates_number_for_another_model() -> None:
    router = KServeRouter(client.ApiClient(), "ns", "m")
    served = knative(OTHER_MODELS_7, None)
    served["spec"]["predictor"]["model"]["storageUri"] = OTHER_7
    served["status"]["components"]["predictor"].update(latestCreatedRevision="m-1", latestReadyRevision="m-1",
                                                       traffic=[{"revisionName": "m-1", "percent": 100}])
    body = router._knative_stage(knative_view(served, "m"), CandidateModel("m", "7", V7), "6")
    assert PREFIX + "stable-version" not in body["metadata"]["annotations"]
    # Staged before this fix: the clashing record is not read as the candidate serving as stable.
    staged = knative({PREFIX + "model-version": "7", PREFIX + "model-storage-uri": V7, PREFIX + "stable-version": "7",
                      PREFIX + "stable-storage-uri": OTHER_7, PREFIX + "stable-revision": "m-1"})
    state = knative_state("m", knative_view(staged, "m"))
    assert (state.stable_version, state.canary_version, state.canary_weight) == (None, "7", 0)
