"""What the KServe router refuses to stage, and the canary predictor's name in Standard mode."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from controller.traffic.base import CandidateModel, TargetStateError
from controller.traffic.kserve import KServeRouter, knative_view, standard_view

P = "modelrollout.io/"


def standard(name: str, predictor_name: str, model: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "generation": 3, "resourceVersion": "1"},
            "spec": {"predictor": {"name": predictor_name, "annotations": {P + "model-version": "12"},
                                   "model": {"modelFormat": {"name": "sklearn"}, "name": "kserve-container",
                                             **model}}},
            "status": {"observedGeneration": 3, "deploymentMode": "Standard"}}


def canary_name(isvc: str, stable_name: str, version: str) -> str:
    router = KServeRouter(client.ApiClient(), "ns", isvc)
    body = router._standard_stage(standard_view(standard(isvc, stable_name, {"storageUri": "s3://m/12"}), "t"),
                                  CandidateModel("m", version, f"s3://m/{version}"), None)
    return str(body["spec"]["canary"][0]["predictor"]["name"])


@pytest.mark.parametrize(("isvc", "stable_name", "version"), [
    ("nsfw", "v12", "13"),
    ("nsfw", "v13", "13"),  # the candidate's usual name is taken by stable
    ("fraud-detection-transactions-realtime-eu-west-xyz", "v12", "123"),  # cut to 3 characters: v12 again
    ("fraud-detection-transactions-realtime-eu-west-xyz", "v-c", "123"),
])
def test_the_canary_predictor_never_takes_the_stable_predictors_name(isvc: str, stable_name: str,
                                                                     version: str) -> None:
    name = canary_name(isvc, stable_name, version)
    assert name != stable_name
    assert len(f"{isvc}-{name}-predictor") <= 63


def test_an_inference_service_name_with_no_room_for_a_canary_is_refused() -> None:
    with pytest.raises(TargetStateError, match="too long a name"):
        canary_name("x" * 51, "v12", "13")


def test_a_stable_model_without_a_storage_uri_is_not_staged() -> None:
    router = KServeRouter(client.ApiClient(), "ns", "m")
    obj = standard("m", "v12", {"storage": {"key": "m", "path": "12"}})
    with pytest.raises(TargetStateError, match="has no storageUri"):
        router._standard_stage(standard_view(obj, "t"), CandidateModel("m", "13", "s3://m/13"), None)
    knative = {"metadata": {"name": "m", "namespace": "ns", "generation": 2, "resourceVersion": "1",
                            "annotations": {}},
               "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storage": {"key": "m"}}}},
               "status": {"observedGeneration": 2, "deploymentMode": "Serverless",
                          "components": {"predictor": {"latestRolledoutRevision": "m-predictor-00001",
                                                       "latestCreatedRevision": "m-predictor-00001",
                                                       "latestReadyRevision": "m-predictor-00001"}}}}
    with pytest.raises(TargetStateError, match="has no storageUri"):
        router._knative_stage(knative_view(knative, "t"), CandidateModel("m", "13", "s3://m/13"), None)
