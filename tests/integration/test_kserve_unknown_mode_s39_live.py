"""KServe: a status.deploymentMode value the router does not know (a newer KServe's) was passed over for the
annotation or the operator's default, so the router could write the other mode's canary shape into an
InferenceService KServe runs otherwise. It is now refused by name, and nothing is written. Real kube-apiserver with
the upstream InferenceService CRD (its schema takes any string there); the status is written as KServe would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.operator.kubeapi import load_client_config
from controller.traffic import DeploymentMode, KServeRouter, TargetStateError
from controller.traffic.kserve import deployment_mode
from tests.integration.test_traffic_kserve import CANDIDATE_7, GROUP, NAME, PLURAL, STABLE_6, VERSION, apply_isvc, get

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


def _reported(api: client.ApiClient, ns: str, mode: str) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, NAME, {"status": {"deploymentMode": mode}},
        _content_type="application/merge-patch+json")


@pytest.mark.parametrize("annotation", ["Serverless", "RawDeployment"])
def test_an_unknown_reported_mode_is_refused_by_name_and_nothing_is_written(
        api: client.ApiClient, namespace: str, annotation: str) -> None:
    apply_isvc(api, namespace, mode=annotation)
    _reported(api, namespace, "Serverful")
    router = KServeRouter(api, namespace, NAME, default_mode=DeploymentMode.KNATIVE)
    before = get(api, namespace)
    assert before["status"]["deploymentMode"] == "Serverful"  # the upstream schema stores it
    with pytest.raises(TargetStateError, match=r"status\.deploymentMode 'Serverful', which ModelRollout cannot "
                                               r"drive") as raised:
        router.observe()
    assert raised.value.reason == "Invalid"  # no catch-up will change it: not waited on as Unavailable
    for act in (lambda: router.stage(CANDIDATE_7, stable_version="6"), lambda: router.restore(STABLE_6)):
        with pytest.raises(TargetStateError, match="Serverful"):
            act()
    after = get(api, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # no write at all
    assert "canaryTrafficPercent" not in after["spec"]["predictor"] and "canary" not in after["spec"]


def test_known_reported_modes_win_and_an_unknown_annotation_is_ignored_as_kserve_does() -> None:
    def isvc(annotation: str | None = None, status: str | None = None) -> dict[str, Any]:
        annotations = {"serving.kserve.io/deploymentMode": annotation} if annotation else {}
        return {"metadata": {"name": "m", "annotations": annotations},
                "status": {"deploymentMode": status} if status else {}}

    assert deployment_mode(isvc("Serverless", status="RawDeployment")) is DeploymentMode.STANDARD
    assert deployment_mode(isvc("RawDeployment", status="Knative")) is DeploymentMode.KNATIVE
    with pytest.raises(TargetStateError, match="'Hybrid'"):
        deployment_mode(isvc("RawDeployment", status="Hybrid"), DeploymentMode.STANDARD)
    # KServe resolves an annotation value it does not know to its configured default: so does the router.
    assert deployment_mode(isvc("Raw"), DeploymentMode.STANDARD) is DeploymentMode.STANDARD
