"""Inference URLs built from serving objects: names from a spec are one path segment, never more."""

from __future__ import annotations

from controller.traffic.seldon import SeldonDeploymentRouter, predictor_service


def test_seldon_graph_name_is_escaped_into_one_path_segment() -> None:
    predictor = {"name": "canary", "graph": {"name": "m/../../admin?x=1#"}}
    obj = {"metadata": {"name": "nsfw"}, "spec": {"protocol": "v2"},
           "status": {"serviceStatus": {predictor_service("nsfw", predictor): {"httpEndpoint": "svc:8000"}}}}
    url = SeldonDeploymentRouter._url(obj, predictor)
    assert url == "http://svc:8000/v2/models/m%2F..%2F..%2Fadmin%3Fx%3D1%23/infer"
