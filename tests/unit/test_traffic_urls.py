"""Inference URLs built from serving objects: names from a spec are one path segment, never more."""

from __future__ import annotations

import pytest
from kubernetes import client

from controller.traffic.seldon import (
    ANN_CANDIDATE_MODEL,
    SeldonDeploymentRouter,
    SeldonExperimentRouter,
    predictor_service,
)


def test_seldon_graph_name_is_escaped_into_one_path_segment() -> None:
    predictor = {"name": "canary", "graph": {"name": "m/../../admin?x=1#"}}
    obj = {"metadata": {"name": "nsfw"}, "spec": {"protocol": "v2"},
           "status": {"serviceStatus": {predictor_service("nsfw", predictor): {"httpEndpoint": "svc:8000"}}}}
    url = SeldonDeploymentRouter._url(obj, predictor)
    assert url == "http://svc:8000/v2/models/m%2F..%2F..%2Fadmin%3Fx%3D1%23/infer"


def test_seldon_experiment_model_names_are_escaped_into_one_path_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Experiment CRD puts no pattern on candidates[].name: a name must not reach another model's path.
    router = SeldonExperimentRouter(client.ApiClient(), "ns", "nsfw")
    obj = {"metadata": {"name": "nsfw", "namespace": "ns", "annotations": {ANN_CANDIDATE_MODEL: "v7/../admin#"}},
           "spec": {"default": "fraud/infer?x=", "candidates": [{"name": "fraud/infer?x=", "weight": 100},
                                                               {"name": "v7/../admin#", "weight": 0}]}}
    monkeypatch.setattr(router.client, "get_or_none", lambda: obj)
    monkeypatch.setattr(router, "_mesh_url", lambda: "http://mesh")
    state = router.observe()
    assert (state.stable_name, state.canary_name) == ("fraud/infer?x=", "v7/../admin#")
    assert state.stable_url == "http://mesh/v2/models/fraud%2Finfer%3Fx%3D/infer"
    assert state.canary_url == "http://mesh/v2/models/v7%2F..%2Fadmin%23/infer"
