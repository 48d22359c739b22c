"""The KServe stand-in plays KServe's part exactly as KServe documents it, on the real API server with the
real upstream InferenceService CRD. The scenarios follow KServe's canary rollout example step by step,
driven with ordinary merge patches as a user following the docs would."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.devstack.kserve_standin import REVISIONS_KEY, KServeStandIn, UrlRequest
from controller.operator.kubeapi import load_client_config

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
V1, V2 = "gs://kfserving-examples/models/sklearn/1.0/model", "gs://kfserving-examples/models/sklearn/1.0/model-2"

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


@pytest.fixture
def standin(kubeconfig: Path, namespace: str) -> Iterator[KServeStandIn]:
    # Scoped to the test's namespace: each test may run its own stand-in configuration.
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace) as running:
        yield running


def create_isvc(api: client.ApiClient, namespace: str, name: str = "sklearn-iris", uri: str = V1,
                annotations: dict[str, str] | None = None, mode: str = "Serverless") -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"serving.kserve.io/deploymentMode": mode, **(annotations or {})}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}}}
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def patch(api: client.ApiClient, namespace: str, body: Obj, name: str = "sklearn-iris") -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, body, _content_type="application/merge-patch+json")


def get(api: client.ApiClient, namespace: str, name: str = "sklearn-iris") -> Obj:
    obj: Obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj


def settled(api: client.ApiClient, namespace: str, check: Callable[[Obj], bool] = lambda _: True,
            name: str = "sklearn-iris", timeout: float = 10.0) -> Obj:
    """The object once the stand-in has processed its latest generation and `check` holds."""
    deadline = time.monotonic() + timeout
    while True:
        obj = get(api, namespace, name)
        status = obj.get("status") or {}
        if status.get("observedGeneration") == obj["metadata"]["generation"] and check(obj):
            return obj
        assert time.monotonic() < deadline, f"stand-in did not settle: {status}"
        time.sleep(0.05)


def predictor(obj: Obj) -> Obj:
    return obj["status"]["components"]["predictor"]


def split(obj: Obj) -> dict[str, int]:
    """Percent per revision (two targets may resolve to the same revision)."""
    shares: dict[str, int] = {}
    for target in predictor(obj)["traffic"]:
        shares[target["revisionName"]] = shares.get(target["revisionName"], 0) + target["percent"]
    return {revision: percent for revision, percent in shares.items() if percent}


def conditions(obj: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in obj["status"]["conditions"]}


@pytest.mark.integration
def test_canary_promote_and_rollback_follow_the_kserve_example(api: client.ApiClient, namespace: str,
                                                               standin: KServeStandIn) -> None:
    create_isvc(api, namespace)
    obj = settled(api, namespace)
    rev1 = "sklearn-iris-predictor-00001"
    assert predictor(obj)["latestRolledoutRevision"] == rev1
    assert split(obj) == {rev1: 100}
    assert obj["status"]["deploymentMode"] == "Knative"
    assert obj["status"]["url"] == f"http://sklearn-iris.{namespace}.example.com"
    assert all(c["status"] == "True" for c in obj["status"]["conditions"])

    # "Update the InferenceService with the canary rollout strategy": new storageUri, canaryTrafficPercent 10.
    patch(api, namespace, {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": V2}}}})
    obj = settled(api, namespace)
    rev2 = "sklearn-iris-predictor-00002"
    assert predictor(obj)["latestCreatedRevision"] == predictor(obj)["latestReadyRevision"] == rev2
    assert predictor(obj)["latestRolledoutRevision"] == rev1
    assert split(obj) == {rev2: 10, rev1: 90}
    prev = next(t for t in predictor(obj)["traffic"] if t["revisionName"] == rev1)
    assert prev["tag"] == "prev" and prev["latestRevision"] is False

    # A weight change is not a template change: no new revision.
    patch(api, namespace, {"spec": {"predictor": {"canaryTrafficPercent": 30}}})
    obj = settled(api, namespace)
    assert predictor(obj)["latestCreatedRevision"] == rev2 and split(obj) == {rev2: 30, rev1: 70}

    # "Promote the canary model" by removing canaryTrafficPercent.
    patch(api, namespace, {"spec": {"predictor": {"canaryTrafficPercent": None}}})
    obj = settled(api, namespace)
    assert split(obj) == {rev2: 100}
    assert predictor(obj)["latestRolledoutRevision"] == rev2
    assert predictor(obj)["previousRolledoutRevision"] == rev1

    # "Rollback and pin the previous model": canaryTrafficPercent 0 sends 100% to the previous revision.
    patch(api, namespace, {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
    obj = settled(api, namespace)
    assert split(obj) == {rev1: 100}
    assert {t["revisionName"]: t["percent"] for t in predictor(obj)["traffic"]} == {rev2: 0, rev1: 100}
    assert predictor(obj)["latestRolledoutRevision"] == rev1


@pytest.mark.integration
def test_tag_routing_annotation_makes_a_revision_and_latest_prev_urls(api: client.ApiClient, namespace: str,
                                                                     standin: KServeStandIn) -> None:
    create_isvc(api, namespace)
    settled(api, namespace)
    patch(api, namespace, {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": V2}}}})
    settled(api, namespace)
    # As the KServe example says: the annotation changes the template, so model v2 is now revision 3.
    patch(api, namespace, {"metadata": {"annotations": {"serving.kserve.io/enable-tag-routing": "true"}}})
    # An annotation is not spec: the generation does not move, so wait for the effect itself.
    obj = settled(api, namespace, lambda o: predictor(o)["latestCreatedRevision"].endswith("00003"))
    rev1, rev3 = "sklearn-iris-predictor-00001", "sklearn-iris-predictor-00003"
    tagged = {t["tag"]: t for t in predictor(obj)["traffic"]}
    assert tagged["latest"]["revisionName"] == rev3 and tagged["latest"]["percent"] == 10
    assert tagged["latest"]["url"] == f"http://latest-sklearn-iris-predictor.{namespace}.example.com"
    assert tagged["prev"]["revisionName"] == rev1 and tagged["prev"]["percent"] == 90
    assert tagged["prev"]["url"] == f"http://prev-sklearn-iris-predictor.{namespace}.example.com"


@pytest.mark.integration
def test_a_revision_that_never_becomes_ready_gets_no_traffic(api: client.ApiClient, namespace: str,
                                                            standin: KServeStandIn) -> None:
    create_isvc(api, namespace)
    settled(api, namespace)
    patch(api, namespace, {"spec": {"predictor": {"canaryTrafficPercent": 10,
                                                  "model": {"storageUri": "s3://models/never-ready/v2"}}}})
    obj = settled(api, namespace)
    rev1 = "sklearn-iris-predictor-00001"
    assert predictor(obj)["latestCreatedRevision"] == "sklearn-iris-predictor-00002"
    assert predictor(obj)["latestReadyRevision"] == rev1
    assert split(obj) == {rev1: 100}  # the latest-revision target resolves to the latest *ready* revision
    found = conditions(obj)
    assert found["PredictorConfigurationReady"]["status"] == "Unknown"
    assert "never became ready" in found["PredictorReady"]["message"]
    assert found["Ready"]["status"] != "True"
    assert found["PredictorRouteReady"]["status"] == "True"  # stable still serves
    time.sleep(0.5)
    assert get(api, namespace)["status"]["components"]["predictor"]["latestReadyRevision"] == rev1


@pytest.mark.integration
def test_ready_delay_and_url_callback(api: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    servers = {V1: "http://127.0.0.1:18001", V2: "http://127.0.0.1:18002"}

    def local_servers(request: UrlRequest) -> str:
        if request.kind == "tag":
            return f"{servers[request.storage_uri or '']}/v1/models/{request.inference_service}"
        return f"http://127.0.0.1:18000/{request.kind}/{request.inference_service}"

    create_isvc(api, namespace, annotations={"serving.kserve.io/enable-tag-routing": "true"})
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace, url_for=local_servers,
                       ready_delay=0.6):
        obj = settled(api, namespace, lambda o: bool(predictor(o).get("latestRolledoutRevision")))
        assert obj["status"]["url"] == "http://127.0.0.1:18000/isvc/sklearn-iris"
        patch(api, namespace, {"spec": {"predictor": {"canaryTrafficPercent": 20, "model": {"storageUri": V2}}}})
        started = time.monotonic()
        obj = settled(api, namespace)
        assert predictor(obj)["latestReadyRevision"] == "sklearn-iris-predictor-00001"  # still starting
        assert conditions(obj)["PredictorConfigurationReady"]["status"] == "Unknown"
        obj = settled(api, namespace, lambda o: predictor(o).get("latestReadyRevision", "").endswith("00002"))
        assert time.monotonic() - started >= 0.4
        urls = {t["tag"]: t["url"] for t in predictor(obj)["traffic"]}
        assert urls == {"latest": "http://127.0.0.1:18002/v1/models/sklearn-iris",
                        "prev": "http://127.0.0.1:18001/v1/models/sklearn-iris"}


@pytest.mark.integration
def test_restarted_standin_keeps_its_revisions(api: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    create_isvc(api, namespace)
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace):
        settled(api, namespace)
        patch(api, namespace, {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": V2}}}})
        before = settled(api, namespace)
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace) as again:
        after = again.reconcile(namespace, "sklearn-iris")
    assert after is not None
    assert after["annotations"][REVISIONS_KEY] == before["status"]["annotations"][REVISIONS_KEY]
    assert after["components"] == before["status"]["components"]
    assert get(api, namespace)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


@pytest.mark.integration
def test_standard_mode_reports_canary_statuses(api: client.ApiClient, namespace: str, standin: KServeStandIn) -> None:
    create_isvc(api, namespace, mode="RawDeployment")
    model = {"modelFormat": {"name": "sklearn"}, "name": "kserve-container"}
    canaries = [{"trafficPercent": 20, "predictor": {"name": "v2", "model": {**model, "storageUri": V2}}},
                {"trafficPercent": 10, "predictor": {"name": "v3", "model": {**model, "storageUri": "s3://never-ready"}}}]
    patch(api, namespace, {"spec": {"canary": canaries}})
    obj = settled(api, namespace)
    assert obj["status"]["deploymentMode"] == "Standard"
    assert [(c["name"], c["ready"], c["trafficPercent"]) for c in obj["status"]["canaryStatuses"]] == \
        [("v2", True, 20), ("v3", False, 0)]
    found = conditions(obj)
    assert found["CanaryPredictorReady"]["status"] == "False" and "v3" in found["CanaryPredictorReady"]["message"]
    assert found["Ready"]["status"] == "True"
    patch(api, namespace, {"spec": {"canary": canaries[:1]}})
    found = conditions(settled(api, namespace))
    assert (found["CanaryPredictorReady"]["status"], found["CanaryPredictorReady"]["reason"]) == \
        ("True", "AllCanariesReady")
    patch(api, namespace, {"spec": {"canary": None}})
    obj = settled(api, namespace)
    assert "canaryStatuses" not in obj["status"] and "CanaryPredictorReady" not in conditions(obj)
