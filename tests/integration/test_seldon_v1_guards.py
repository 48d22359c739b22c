"""The Seldon Core v1 router's guards on the real API server with the real Seldon Core v1.17.1 CRD: a canary
is ready only on its own candidate's Deployments, a version annotation holds only for the modelUri it was
written for, another predictor's Deployments are not the canary's, an object without a spec is a clear
error. Seldon's controller cannot run here: each test writes status as it does, its Deployments named by
the stand-in's model of Seldon's GetDeploymentName (controller/devstack/seldon_standin.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.devstack.seldon_standin import planned_deployments
from controller.operator.kubeapi import APPLY_PATCH, load_client_config
from controller.traffic import CandidateModel, SeldonDeploymentRouter, TargetStateError
from controller.traffic.kube import SELDON_DEPLOYMENT
from tests.integration.test_traffic_seldon import (
    CANDIDATE_7,
    CANDIDATE_8,
    NAME,
    PREDICTOR,
    STABLE_6,
    V6,
    V7,
    V8,
    create,
    custom,
    get,
    seldon_v1_reports,
)

Obj = dict[str, Any]

# A prepackaged server with no component spec: Seldon adds one, and names its Deployment after the unit.
SERVER_PREDICTOR = {"name": "main", "replicas": 1,
                    "graph": {"name": "classifier", "implementation": "MLFLOW_SERVER", "modelUri": V6}}


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


def deployments_of(api: client.ApiClient, namespace: str, predictor: str) -> list[str]:
    return [d.name for d in planned_deployments(get(api, SELDON_DEPLOYMENT, namespace)) if d.predictor == predictor]


def edit_by_hand(api: client.ApiClient, namespace: str, uris: dict[str, str]) -> None:
    """kubectl edit (an update, not an apply): predictors load other models, annotations left as they are."""
    obj = get(api, SELDON_DEPLOYMENT, namespace)
    for predictor in obj["spec"]["predictors"]:
        if predictor["name"] in uris:
            predictor["graph"]["modelUri"] = uris[predictor["name"]]
    custom(api).replace_namespaced_custom_object(SELDON_DEPLOYMENT.group, SELDON_DEPLOYMENT.version, namespace,
                                                 SELDON_DEPLOYMENT.plural, NAME, obj)


@pytest.mark.integration
@pytest.mark.parametrize("stable", [PREDICTOR, SERVER_PREDICTOR], ids=["component-spec", "prepackaged-server"])
def test_canary_is_ready_on_its_own_candidates_deployments_only(api: client.ApiClient, namespace: str,
                                                                stable: Obj) -> None:
    """Staging a new candidate over the canary predictor gives it new Deployments, named after its version:
    the previous candidate's, still available (a rolling update keeps old pods serving, and Seldon v1 reports
    no observedGeneration), never read as the new candidate's. Stable's Deployments keep their names."""
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [copy.deepcopy(stable)]})
    seldon_v1_reports(api, namespace)
    stable_deployments = deployments_of(api, namespace, "main")
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")

    router.stage(CANDIDATE_7, stable_version="6")
    [main, canary] = get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"]
    assert main == {**stable, "traffic": 100}  # stable's spec, its component names included, untouched
    assert canary["graph"]["modelUri"] == V7 and canary["traffic"] == 0
    seven = deployments_of(api, namespace, "canary")
    status_for_7 = seldon_v1_reports(api, namespace)
    state = router.observe()
    assert state.canary_ready and state.canary_version == "7", state.message

    router.stage(CANDIDATE_8)  # a new spec version supersedes 7 under the same canary predictor
    state = router.observe()  # Seldon has not reconciled: its status is still the one for 7, all available
    assert state.canary_version == "8" and not state.canary_ready
    eight = deployments_of(api, namespace, "canary")
    assert all("v7" in name for name in seven) and all("v8" in name for name in eight)
    assert eight and not set(eight) & set(seven)
    seldon_v1_reports(api, namespace, available=lambda name: name not in eight, kept=status_for_7)
    assert not router.observe().canary_ready  # 8's pods are starting, 7's still serve
    seldon_v1_reports(api, namespace)
    state = router.observe()
    assert state.canary_ready and state.canary_version == "8", state.message

    router.promote()
    [promoted] = get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"]
    assert promoted["graph"]["modelUri"] == V8
    promoted_deployments = deployments_of(api, namespace, "main")  # new ones, named after 8: not rolled in place
    assert promoted_deployments and all("v8" in name for name in promoted_deployments), promoted_deployments
    assert not set(promoted_deployments) & set(stable_deployments)
    assert router.observe().stable_version is None  # Seldon has not reported 8's own Deployments yet
    seldon_v1_reports(api, namespace)
    assert router.observe().stable_version == "8"


@pytest.mark.integration
def test_version_is_unknown_when_the_predictor_loads_another_model_uri(api: client.ApiClient,
                                                                       namespace: str) -> None:
    """Each version annotation the router writes holds for the modelUri it was written for: a predictor
    pointed at another model by hand (or by a Git sync) serves a version that is not known."""
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [PREDICTOR]})
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    router.stage(CANDIDATE_7, stable_version="6")
    seldon_v1_reports(api, namespace)
    state = router.observe()
    assert (state.stable_version, state.canary_version) == ("6", "7") and state.canary_ready, state.message

    edit_by_hand(api, namespace, {"main": "s3://models/nsfw/5", "canary": "s3://models/nsfw/99"})
    seldon_v1_reports(api, namespace)
    state = router.observe()
    assert state.canary_staged and (state.stable_version, state.canary_version) == (None, None)
    assert "predictor main loads s3://models/nsfw/5, not s3://models/nsfw/6 (version 6)" in state.message
    assert "predictor canary loads s3://models/nsfw/99, not s3://models/nsfw/7 (version 7)" in state.message

    # Review s38r2: stable would take a model nothing judged, recorded as version 7. Refused, nothing written.
    before = get(api, SELDON_DEPLOYMENT, namespace)
    with pytest.raises(TargetStateError, match=r"cannot promote: the canary's model node .* loads "
                                               r"s3://models/nsfw/99, not the staged candidate's s3://models/nsfw/7"):
        router.promote()
    after = get(api, SELDON_DEPLOYMENT, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    router.restore(STABLE_6)  # the router's own write: its version holds again
    seldon_v1_reports(api, namespace)  # once Seldon reports 6's own (new) Deployments
    state = router.observe()
    assert state.stable_version == "6" and "modelUri changed" not in state.message
    router.stage(CandidateModel("nsfw", "7", V7))
    assert router.observe().canary_version == "7"

    # Written before the modelUri was recorded: trusted as before.
    obj = get(api, SELDON_DEPLOYMENT, namespace)
    obj["metadata"]["annotations"] = {"modelrollout.io/model-version": "6",
                                      "modelrollout.io/candidate-version": "7"}
    custom(api).replace_namespaced_custom_object(SELDON_DEPLOYMENT.group, SELDON_DEPLOYMENT.version, namespace,
                                                 SELDON_DEPLOYMENT.plural, NAME, obj)
    edit_by_hand(api, namespace, {"main": "s3://models/nsfw/5"})
    state = router.observe()
    assert (state.stable_version, state.canary_version) == ("6", "7")


@pytest.mark.integration
def test_another_predictors_deployments_are_not_the_canarys(api: client.ApiClient, namespace: str) -> None:
    """Stable "model-2", canary "model": stable's Deployment nsfw-model-2-0-classifier starts with the
    canary's nsfw-model-<digits>-, and is still not the canary's."""
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [{**PREDICTOR, "name": "model-2"}]})
    router = SeldonDeploymentRouter(api, namespace, NAME, "model-2", "model")
    assert list(seldon_v1_reports(api, namespace)) == [f"{NAME}-model-2-0-classifier"]
    router.stage(CANDIDATE_7, stable_version="6")
    state = router.observe()  # Seldon has not made the canary's Deployment yet: "Available" is stable's alone
    assert state.ready and state.canary_staged and not state.canary_ready
    assert "canary predictor model is not available yet" in state.message
    seldon_v1_reports(api, namespace)
    assert router.observe().canary_ready


@pytest.mark.integration
def test_a_seldon_deployment_without_spec_is_a_target_state_error(api: client.ApiClient, namespace: str) -> None:
    """The CRD does not require a spec: every operation says so in a TrafficError the runtime reports, not a
    KeyError."""
    body = {"apiVersion": SELDON_DEPLOYMENT.api_version, "kind": SELDON_DEPLOYMENT.kind,
            "metadata": {"name": NAME, "namespace": namespace}}
    custom(api).patch_namespaced_custom_object(SELDON_DEPLOYMENT.group, SELDON_DEPLOYMENT.version, namespace,
                                               SELDON_DEPLOYMENT.plural, NAME, body, field_manager="kubectl",
                                               _content_type=APPLY_PATCH)
    assert "spec" not in get(api, SELDON_DEPLOYMENT, namespace)
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    operations: list[Callable[[], object]] = [router.observe, lambda: router.stage(CANDIDATE_7, "6"),
                                              lambda: router.set_weight(10), router.promote, router.rollback,
                                              lambda: router.restore(STABLE_6)]
    for operation in operations:
        with pytest.raises(TargetStateError, match=f"SeldonDeployment {namespace}/{NAME} has no spec"):
            operation()
