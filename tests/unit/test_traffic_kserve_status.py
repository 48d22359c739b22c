"""What the KServe router reads from an InferenceService's status, on statuses real KServe writes and the
stand-in does not (the integration tests run the router against the stand-in and the real API server)."""

from __future__ import annotations

from typing import Any

from controller.traffic.kserve import knative_state, knative_view

PREFIX = "modelrollout.io/"


def staged_after_a_rollback(configuration: str) -> dict[str, Any]:
    """Candidate 8 staged (generation 4) after a rollback left rev 3, a copy of stable (rev 1), latest."""
    return {
        "metadata": {"name": "m", "namespace": "ns", "generation": 4,
                     "annotations": {PREFIX + "model-version": "8", PREFIX + "stable-version": "6",
                                     PREFIX + "stable-storage-uri": "s3://b/v6",
                                     PREFIX + "stable-revision": "m-predictor-00001"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/v8"},
                               "canaryTrafficPercent": 0}},
        "status": {"observedGeneration": 4, "deploymentMode": "Knative",
                   "components": {"predictor": {
                       "latestCreatedRevision": "m-predictor-00003", "latestReadyRevision": "m-predictor-00003",
                       "latestRolledoutRevision": "m-predictor-00001",
                       "traffic": [{"revisionName": "m-predictor-00001", "percent": 100, "tag": "prev",
                                    "url": "http://prev-m"},
                                   {"revisionName": "m-predictor-00003", "percent": 0, "tag": "latest",
                                    "url": "http://latest-m"}]}},
                   "conditions": [{"type": "PredictorRouteReady", "status": "True"},
                                  {"type": "IngressReady", "status": "True"},
                                  {"type": "PredictorConfigurationReady", "status": configuration}]}}


def test_the_previous_latest_revision_is_not_a_ready_candidate_before_knative_configures_the_new_one() -> None:
    """Knative's Service moves observedGeneration before its Configuration has made the candidate's revision."""
    state = knative_state("m", knative_view(staged_after_a_rollback("Unknown"), "m"))
    assert state.synced and not state.canary_ready  # the gate must not measure the copy of stable


def test_a_configured_latest_revision_is_the_ready_candidate() -> None:
    state = knative_state("m", knative_view(staged_after_a_rollback("True"), "m"))
    assert state.canary_ready and state.canary_name == "m-predictor-00003" and state.canary_url == "http://latest-m"
