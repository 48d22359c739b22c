"""The Seldon Core v1 and v2 routers on the real API server with the real upstream CRDs (Seldon Core v1.17.1
SeldonDeployment, Seldon Core v2.6.0 Experiment). Seldon's controllers cannot run here, so each test plays
their part by writing status the way they do (state/deploymentStatus/serviceStatus for v1, conditions
for v2) after each change."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from kubernetes import client

from controller.devstack.seldon_standin import planned_deployments
from controller.operator.kubeapi import APPLY_PATCH, FIELD_MANAGER, load_client_config
from controller.traffic import (
    CandidateModel,
    DeploymentMode,
    PatchRejected,
    SeldonDeploymentRouter,
    SeldonExperimentRouter,
    TargetNotFound,
    TargetStateError,
    router_for,
)
from controller.traffic.kube import SELDON_DEPLOYMENT, SELDON_EXPERIMENT, ObjectClient, Resource
from tests.conftest import run_kubectl

NAME = "nsfw"
CREATOR = "argocd-controller"
V6, V7, V8 = "s3://models/nsfw/6", "s3://models/nsfw/7", "s3://models/nsfw/8"
CANDIDATE_7 = CandidateModel("nsfw", "7", V7)
CANDIDATE_8 = CandidateModel("nsfw", "8", V8)
STABLE_6 = CandidateModel("nsfw", "6", V6, serving_name="nsfw")

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def get(api: client.ApiClient, resource: Resource, namespace: str) -> Obj:
    obj: Obj = custom(api).get_namespaced_custom_object(resource.group, resource.version, namespace,
                                                        resource.plural, NAME)
    return obj


def create(api: client.ApiClient, resource: Resource, namespace: str, spec: Obj) -> None:
    body = {"apiVersion": resource.api_version, "kind": resource.kind,
            "metadata": {"name": NAME, "namespace": namespace, "labels": {"team": "moderation"}}, "spec": spec}
    custom(api).patch_namespaced_custom_object(resource.group, resource.version, namespace, resource.plural, NAME,
                                               body, field_manager=CREATOR, _content_type=APPLY_PATCH)


def write_status(api: client.ApiClient, resource: Resource, namespace: str, status: Obj) -> None:
    """The whole status, replacing what the same controller wrote before (entries it drops disappear)."""
    body = {"apiVersion": resource.api_version, "kind": resource.kind,
            "metadata": {"name": NAME, "namespace": namespace}, "status": status}
    custom(api).patch_namespaced_custom_object_status(
        resource.group, resource.version, namespace, resource.plural, NAME, body, field_manager="seldon-manager",
        force=True, _content_type=APPLY_PATCH)


def managed_by(obj: Obj, manager: str) -> Obj:
    [entry] = [m for m in obj["metadata"]["managedFields"] if m["manager"] == manager and not m.get("subresource")]
    return entry


def twice_is_once(api: client.ApiClient, resource: Resource, namespace: str, operation: Callable[[], None]) -> None:
    operation()
    before = get(api, resource, namespace)
    operation()
    after = get(api, resource, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


# --- Seldon Core v1 ----------------------------------------------------------------------------------

PREDICTOR = {"name": "main", "replicas": 2,
             "graph": {"name": "classifier", "implementation": "MLFLOW_SERVER", "modelUri": V6},
             "componentSpecs": [{"spec": {"containers": [{"name": "classifier",
                                                          "resources": {"requests": {"cpu": "100m"}}}]}}]}


def seldon_v1_reports(api: client.ApiClient, namespace: str, available: bool | Callable[[str], bool] = True,
                      kept: Obj | None = None) -> Obj:
    """Play Seldon Core v1's controller for the spec as it is now: one Deployment per component, named by Seldon's
    own rule (GetDeploymentName) as the stand-in computes it, and one Service per predictor. `available` says
    whether (or which) Deployments have their pods up; `kept` holds the entries of older Deployments Seldon has
    not deleted yet. Returns the deploymentStatus written."""
    obj = get(api, SELDON_DEPLOYMENT, namespace)
    is_up = available if callable(available) else lambda _: available
    deployments = dict(kept or {})
    for planned in planned_deployments(obj):
        up = is_up(planned.name)
        deployments[planned.name] = {"name": planned.name, "status": "Available" if up else "Creating",
                                     "replicas": planned.replicas, "availableReplicas": planned.replicas if up else 0}
    all_up = all(int(d["availableReplicas"]) >= int(d["replicas"]) for d in deployments.values())
    services = {}
    for predictor in obj["spec"]["predictors"]:
        key = f"{NAME}-{predictor['name']}"
        services[key] = {"svcName": key, "httpEndpoint": f"{key}.{namespace}:8000"}
    write_status(api, SELDON_DEPLOYMENT, namespace, {
        "state": "Available" if all_up else "Creating", "deploymentStatus": deployments,
        "serviceStatus": services, "address": {"url": f"http://{NAME}-main.{namespace}.svc.cluster.local:8000"}})
    return deployments


def traffic(obj: Obj) -> dict[str, int]:
    return {p["name"]: p.get("traffic", 0) for p in obj["spec"]["predictors"] if not p.get("shadow")}


@pytest.mark.integration
def test_seldon_deployment_stage_step_rollback_stage_promote(api: client.ApiClient, namespace: str) -> None:
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [PREDICTOR]})
    seldon_v1_reports(api, namespace)
    router = router_for({"seldonDeployment": {"name": NAME, "stablePredictor": "main", "canaryPredictor": "canary"}},
                        namespace, api)
    assert isinstance(router, SeldonDeploymentRouter)
    state = router.observe()
    assert state.ready and state.mode is DeploymentMode.SELDON_DEPLOYMENT and not state.canary_staged

    router.stage(CANDIDATE_7, stable_version="6")
    obj = get(api, SELDON_DEPLOYMENT, namespace)
    assert traffic(obj) == {"main": 100, "canary": 0}
    canary = obj["spec"]["predictors"][1]
    assert canary["graph"]["modelUri"] == V7
    assert [c["spec"] for c in canary["componentSpecs"]] == [c["spec"] for c in PREDICTOR["componentSpecs"]]
    # Named after the candidate: Seldon gives each candidate a Deployment of its own, never a rolling update of
    # the previous candidate's (whose old pods would read as this one's, available).
    assert canary["componentSpecs"][0]["metadata"]["name"] == "classifier-v7"
    assert not router.observe().canary_ready  # Seldon has not created its Deployment yet
    seldon_v1_reports(api, namespace)
    state = router.observe()
    assert state.canary_ready and (state.stable_version, state.canary_version, state.canary_weight) == ("6", "7", 0)
    # Seldon's predictor Service, with the path of the v2 protocol for the graph's root (as status.address.url)
    assert state.canary_url == f"http://{NAME}-canary.{namespace}.svc.cluster.local:8000/v2/models/classifier/infer"

    router.set_weight(10)
    assert traffic(get(api, SELDON_DEPLOYMENT, namespace)) == {"main": 90, "canary": 10}
    assert router.observe().canary_weight == 10

    router.rollback()
    obj = get(api, SELDON_DEPLOYMENT, namespace)
    assert traffic(obj) == {"main": 100}
    assert obj["spec"]["predictors"][0]["graph"]["modelUri"] == V6
    seldon_v1_reports(api, namespace)
    state = router.observe()
    assert not state.canary_staged and state.canary_weight is None and state.stable_version == "6"

    router.stage(CANDIDATE_8)
    before = seldon_v1_reports(api, namespace)
    router.set_weight(50)
    router.promote()
    obj = get(api, SELDON_DEPLOYMENT, namespace)
    assert traffic(obj) == {"main": 100}
    assert obj["spec"]["predictors"][0]["graph"]["modelUri"] == V8
    # Stable's Deployments are named after 8 now, new ones: Seldon's status is still the one from before (the
    # old pods serve), so the promotion must not read as done until it reports them available.
    assert obj["spec"]["predictors"][0]["componentSpecs"][0]["metadata"]["name"] == "classifier-v8"
    state = router.observe()
    assert state.stable_version is None and not state.ready and not state.canary_staged
    promoted = f"{NAME}-main-0-classifier-v8"
    seldon_v1_reports(api, namespace, available=lambda name: name != promoted, kept=before)
    assert router.observe().stable_version is None  # made, its pods not up yet; the old ones still serve
    seldon_v1_reports(api, namespace)
    state = router.observe()
    assert state.stable_version == "8" and state.ready and not state.canary_staged

    # A failed bake: the previous model back, in new Deployments named after 6 (under 8's names Seldon would roll
    # the pods in place, the old ones read as 6's), confirmed only once Seldon reports those available.
    router.restore(STABLE_6)
    obj = get(api, SELDON_DEPLOYMENT, namespace)
    assert obj["spec"]["predictors"][0]["graph"]["modelUri"] == V6
    assert obj["spec"]["predictors"][0]["componentSpecs"][0]["metadata"]["name"] == "classifier-v6"
    assert router.observe().stable_version is None  # Seldon's status is still 8's
    seldon_v1_reports(api, namespace)
    assert router.observe().stable_version == "6"

    # 8 again: stable's names change once more (from 6's), so Seldon makes new Deployments and the promotion is not
    # read as done from 6's pods, still reported available.
    router.stage(CANDIDATE_8)
    before = seldon_v1_reports(api, namespace)
    router.set_weight(50)
    router.promote()
    assert router.observe().stable_version is None
    seldon_v1_reports(api, namespace, available=lambda name: name != promoted, kept=before)
    assert router.observe().stable_version is None
    seldon_v1_reports(api, namespace)
    assert router.observe().stable_version == "8"


@pytest.mark.integration
def test_seldon_deployment_predictors_log_the_version_they_serve(api: client.ApiClient, namespace: str) -> None:
    """The exporter counts each predictor's predictions under the version in its graph logger URL."""
    logger = "http://exporter.monitoring.svc:9102/?team=moderation"
    predictor = copy.deepcopy(PREDICTOR)
    predictor["graph"]["logger"] = {"mode": "all", "url": logger}
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [predictor]})
    seldon_v1_reports(api, namespace)
    router = SeldonDeploymentRouter(api, namespace, NAME, stable_predictor="main", canary_predictor="canary")

    def logged_versions() -> dict[str, str | None]:
        found = get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"]
        return {p["name"]: dict(parse_qsl(urlsplit(p["graph"]["logger"]["url"]).query)).get("model_version")
                for p in found}

    router.stage(CANDIDATE_7, stable_version="6")
    assert logged_versions() == {"main": None, "canary": "7"}  # stable untouched, the canary says 7
    seldon_v1_reports(api, namespace)
    router.promote()
    assert logged_versions() == {"main": "7"}  # stable's own logger now says the version it serves
    router.restore(STABLE_6)
    assert logged_versions() == {"main": "6"}
    assert get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"][0]["graph"]["logger"]["mode"] == "all"


@pytest.mark.integration
def test_seldon_deployment_idempotence_and_ownership(api: client.ApiClient, namespace: str) -> None:
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [PREDICTOR]})
    seldon_v1_reports(api, namespace)
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    twice_is_once(api, SELDON_DEPLOYMENT, namespace, lambda: router.stage(CANDIDATE_7, "6"))
    twice_is_once(api, SELDON_DEPLOYMENT, namespace, lambda: router.set_weight(25))
    twice_is_once(api, SELDON_DEPLOYMENT, namespace, router.rollback)
    twice_is_once(api, SELDON_DEPLOYMENT, namespace, lambda: router.stage(CANDIDATE_7, "6"))
    twice_is_once(api, SELDON_DEPLOYMENT, namespace, router.promote)
    twice_is_once(api, SELDON_DEPLOYMENT, namespace, lambda: router.restore(STABLE_6))

    obj = get(api, SELDON_DEPLOYMENT, namespace)
    ours = managed_by(obj, FIELD_MANAGER)["fieldsV1"]
    # spec.predictors is an atomic list in Seldon's schema: owning it whole is the only way to change it.
    assert ours["f:spec"] == {"f:predictors": {}}
    # The version, the modelUri it was written for (a model replaced by hand reads as unknown) and its graph node.
    assert set(ours["f:metadata"]["f:annotations"]) == {"f:modelrollout.io/model-version",
                                                         "f:modelrollout.io/model-storage-uri",
                                                         "f:modelrollout.io/model-node"}
    theirs = managed_by(obj, CREATOR)["fieldsV1"]
    assert "f:protocol" in theirs["f:spec"] and "f:labels" in theirs["f:metadata"]
    assert obj["spec"]["protocol"] == "v2" and obj["metadata"]["labels"] == {"team": "moderation"}


@pytest.mark.integration
def test_seldon_deployment_concurrent_edit_is_not_overwritten(api: client.ApiClient, namespace: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    create(api, SELDON_DEPLOYMENT, namespace, {"predictors": [PREDICTOR]})
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    read = router.client.get
    reads: list[str] = []

    def read_then_someone_scales() -> Obj:
        obj = read()
        if not reads:  # another client edits the same atomic list between the router's read and write
            scaled = {**PREDICTOR, "replicas": 5}
            create(api, SELDON_DEPLOYMENT, namespace, {"predictors": [scaled]})
        reads.append(obj["metadata"]["resourceVersion"])
        return obj

    monkeypatch.setattr(router.client, "get", read_then_someone_scales)
    router.stage(CANDIDATE_7)
    assert len(reads) == 2
    predictors = get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"]
    assert [(p["name"], p["replicas"]) for p in predictors] == [("main", 5), ("canary", 5)]


@pytest.mark.integration
def test_seldon_deployment_refusals(api: client.ApiClient, namespace: str) -> None:
    missing = SeldonDeploymentRouter(api, namespace, "absent", "main", "canary")
    assert not missing.observe().exists
    with pytest.raises(TargetNotFound, match=f"SeldonDeployment {namespace}/absent not found"):
        missing.stage(CANDIDATE_7)
    create(api, SELDON_DEPLOYMENT, namespace, {"predictors": [PREDICTOR]})
    wrong = SeldonDeploymentRouter(api, namespace, NAME, "primary", "canary")
    with pytest.raises(TargetStateError, match="no predictor named primary"):
        wrong.stage(CANDIDATE_7)
    with pytest.raises(TargetStateError, match="no candidate is staged"):
        SeldonDeploymentRouter(api, namespace, NAME, "main", "canary").set_weight(10)
    with pytest.raises(ValueError, match="0 to 100"):
        SeldonDeploymentRouter(api, namespace, NAME, "main", "canary").set_weight(101)
    # A write the schema refuses carries the API server's words: a missing required field (422) ...
    oc = ObjectClient(api, SELDON_DEPLOYMENT, namespace, NAME)
    body = oc.skeleton()
    body["spec"] = {"predictors": [{"name": "main", "traffic": 100}]}
    with pytest.raises(PatchRejected) as refused:
        oc.apply(body)
    assert "spec.predictors[0].graph: Required value" in refused.value.api_message
    # ... and a value of the wrong type, which server-side apply reports as a 500, is just as final.
    body["spec"] = {"predictors": [{**PREDICTOR, "traffic": "all"}]}
    with pytest.raises(PatchRejected) as refused:
        oc.apply(body)
    assert ".spec.predictors[0].traffic: expected numeric (int or float), got string" in refused.value.api_message
    assert get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"] == [PREDICTOR]


@pytest.mark.integration
def test_seldon_deployment_beside_an_unmanaged_predictor_keeps_the_sum_at_100(api: client.ApiClient,
                                                                             namespace: str) -> None:
    create(api, SELDON_DEPLOYMENT, namespace, {"predictors": [PREDICTOR]})
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    router.stage(CANDIDATE_7, "6")
    router.set_weight(40)
    # Another team adds an A/B predictor mid-canary, taking 10 from stable so the sum stays 100.
    predictors = get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"]
    predictors[0]["traffic"] = 50
    predictors.append({**copy.deepcopy(PREDICTOR), "name": "ab", "traffic": 10,
                       "graph": {**PREDICTOR["graph"], "modelUri": "s3://models/fraud/1"}})
    edit = ObjectClient(api, SELDON_DEPLOYMENT, namespace, NAME, field_manager="kubectl-edit")
    body = edit.skeleton()
    body["spec"] = {"predictors": predictors}
    edit.apply(body)
    # A step would make 110: refused, nothing written.
    with pytest.raises(TargetStateError, match=r"cannot set the canary to 60%: .* does not manage: ab \(10%\)"):
        router.set_weight(60)
    assert traffic(get(api, SELDON_DEPLOYMENT, namespace)) == {"main": 50, "canary": 40, "ab": 10}
    # Rollback is not refused (users must get off the candidate): stable takes the canary's share, ab keeps its own.
    twice_is_once(api, SELDON_DEPLOYMENT, namespace, router.rollback)
    assert traffic(get(api, SELDON_DEPLOYMENT, namespace)) == {"main": 90, "ab": 10}


def edit_predictors(api: client.ApiClient, namespace: str, change: Callable[[list[Obj]], None]) -> None:
    """Someone else's edit of spec.predictors (kubectl edit), on the list as it is now."""
    predictors = copy.deepcopy(get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"])
    change(predictors)
    edit = ObjectClient(api, SELDON_DEPLOYMENT, namespace, NAME, field_manager="kubectl-edit")
    body = edit.skeleton()
    body["spec"] = {"predictors": predictors}
    edit.apply(body)


@pytest.mark.integration
def test_seldon_deployment_canary_renamed_by_hand_still_counts_and_rolls_back(api: client.ApiClient,
                                                                              namespace: str) -> None:
    """The canary predictor renamed mid-rollout still serves the candidate: its users count as the canary's share,
    promotion is refused, and rollback takes them off (the predictor is kept, at 0) so it is never read as done
    while the rejected model has traffic."""
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [PREDICTOR]})
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    router.stage(CANDIDATE_7, "6")
    router.set_weight(50, "7")

    def rename_and_add_ab(predictors: list[Obj]) -> None:
        [canary] = [p for p in predictors if p["name"] == "canary"]
        canary["name"] = "canary-renamed"
        predictors[0]["traffic"] = 40  # another team's A/B predictor takes 10 from stable
        predictors.append({**copy.deepcopy(PREDICTOR), "name": "ab", "traffic": 10,
                           "graph": {**PREDICTOR["graph"], "modelUri": "s3://models/fraud/1"}})
        # A shadow of the candidate serves no user: not counted, not touched.
        predictors.append({**copy.deepcopy(canary), "name": "mirror", "shadow": True, "traffic": 0})

    edit_predictors(api, namespace, rename_and_add_ab)
    seldon_v1_reports(api, namespace)
    state = router.observe()
    assert state.canary_weight == 50 and not state.canary_staged
    assert "predictor canary-renamed (50%) serves the candidate (s3://models/nsfw/7)" in state.message
    with pytest.raises(TargetStateError, match=r"predictor canary is gone .*\(predictor canary-renamed serves"):
        router.promote()

    twice_is_once(api, SELDON_DEPLOYMENT, namespace, router.rollback)
    obj = get(api, SELDON_DEPLOYMENT, namespace)
    assert traffic(obj) == {"main": 90, "canary-renamed": 0, "ab": 10}  # ab keeps its own share
    assert {p["name"]: p["graph"]["modelUri"] for p in obj["spec"]["predictors"]} == {
        "main": V6, "canary-renamed": V7, "ab": "s3://models/fraud/1", "mirror": V7}
    seldon_v1_reports(api, namespace)
    state = router.observe()
    assert state.canary_weight is None and state.stable_version == "6"


@pytest.mark.integration
def test_seldon_deployment_promotion_keeps_stables_component_edits(api: client.ApiClient, namespace: str) -> None:
    """Resources and env set on stable's component specs during the canary survive the promotion: the canary's
    are a copy taken at staging, so only its graph goes to stable."""
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [PREDICTOR]})
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    router.stage(CANDIDATE_7, "6")
    router.set_weight(10, "7")
    resources = {"requests": {"cpu": "100m", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    env = [{"name": "OMP_NUM_THREADS", "value": "2"}]

    def on_call_raises_memory(predictors: list[Obj]) -> None:
        container = predictors[0]["componentSpecs"][0]["spec"]["containers"][0]
        container["resources"], container["env"] = resources, env
        predictors[0]["replicas"] = 5

    edit_predictors(api, namespace, on_call_raises_memory)
    router.set_weight(50, "7")
    router.promote()
    [promoted] = get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"]
    assert promoted["graph"]["modelUri"] == V7 and promoted["traffic"] == 100 and promoted["replicas"] == 5
    [component] = promoted["componentSpecs"]
    assert component["metadata"]["name"] == "classifier-v7"  # new Deployments for the candidate, as before
    assert component["spec"]["containers"] == [{"name": "classifier", "resources": resources, "env": env}]


@pytest.mark.integration
def test_seldon_deployment_promotion_keeps_stables_graph_edits(api: client.ApiClient, namespace: str) -> None:
    """Edits made to stable's graph during the canary (a parameter, a logger) survive the promotion: the canary's
    graph is a copy taken at staging, so stable takes only its model (and the logger says its version). A
    prepackaged server (no component spec) still gets its component named after the candidate's version."""
    predictor = {"name": "main", "replicas": 1,
                 "graph": {"name": "classifier", "implementation": "SKLEARN_SERVER", "modelUri": V6}}
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [predictor]})
    seldon_v1_reports(api, namespace)
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    router.stage(CANDIDATE_7, "6")
    router.set_weight(10, "7")
    parameters = [{"name": "method", "type": "STRING", "value": "predict_proba"}]

    def on_call_edits_the_graph(predictors: list[Obj]) -> None:
        predictors[0]["graph"]["parameters"] = parameters
        predictors[0]["graph"]["logger"] = {"mode": "all", "url": "http://exporter.monitoring.svc:9102/"}

    edit_predictors(api, namespace, on_call_edits_the_graph)
    router.set_weight(100, "7")
    router.promote()
    [promoted] = get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"]
    assert promoted["graph"] == {"name": "classifier", "implementation": "SKLEARN_SERVER", "modelUri": V7,
                                 "parameters": parameters,
                                 "logger": {"mode": "all", "url": "http://exporter.monitoring.svc:9102/?model_version=7"}}
    assert promoted["componentSpecs"] == [{"metadata": {"name": "classifier-v7"},
                                           "spec": {"containers": [{"name": "classifier"}]}}]
    assert promoted["traffic"] == 100
    seldon_v1_reports(api, namespace)  # Seldon's Deployment names for it, by its own rule
    state = router.observe()
    assert state.stable_version == "7" and state.ready, state.message


@pytest.mark.integration
def test_seldon_deployment_rollback_clears_the_record_of_a_canary_gone(api: client.ApiClient, namespace: str) -> None:
    """The canary predictor deleted by hand (or predictors self-healed by Argo CD): rollback still removes the
    candidate's record, once, so a predictor that later serves that model (another team's A/B) is neither read as
    the canary nor taken to 0 by a later rollout's rollback."""
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [PREDICTOR]})
    seldon_v1_reports(api, namespace)
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    router.stage(CANDIDATE_7, "6")
    edit_predictors(api, namespace, lambda predictors: predictors.pop(1))
    before = get(api, SELDON_DEPLOYMENT, namespace)
    twice_is_once(api, SELDON_DEPLOYMENT, namespace, router.rollback)
    obj = get(api, SELDON_DEPLOYMENT, namespace)
    assert obj["spec"]["predictors"] == before["spec"]["predictors"]  # only the record changed
    assert {k: v for k, v in obj["metadata"]["annotations"].items() if k.startswith("modelrollout.io/")} == {
        "modelrollout.io/model-version": "6", "modelrollout.io/model-storage-uri": V6,
        "modelrollout.io/model-node": "classifier"}

    def team_tests_version_7(predictors: list[Obj]) -> None:
        predictors[0]["traffic"] = 90
        predictors.append({**copy.deepcopy(PREDICTOR), "name": "ab-v7", "traffic": 10,
                           "graph": {**PREDICTOR["graph"], "modelUri": V7}})

    edit_predictors(api, namespace, team_tests_version_7)
    seldon_v1_reports(api, namespace)
    state = router.observe()
    assert state.canary_weight is None and "ab-v7" not in state.message
    with pytest.raises(TargetStateError, match="does not manage: ab-v7"):
        router.stage(CANDIDATE_8, "6")
    twice_is_once(api, SELDON_DEPLOYMENT, namespace, router.rollback)  # the v8 rollout's: nothing of ours
    assert traffic(get(api, SELDON_DEPLOYMENT, namespace)) == {"main": 90, "ab-v7": 10}


# --- Seldon Core v2 ----------------------------------------------------------------------------------


def seldon_v2_reports(api: client.ApiClient, namespace: str, candidates_ready: bool = True) -> None:
    """Play Seldon Core v2's controller: the experiment is active once its candidate models are available. Its
    conditions only: Seldon Core v2 never writes status.observedGeneration (the stand-in does not either)."""
    flag = "True" if candidates_ready else "False"
    write_status(api, SELDON_EXPERIMENT, namespace, {"conditions": [
        {"type": "CandidatesReady", "status": flag, "reason": "candidates ready" if candidates_ready else "waiting"},
        {"type": "ExperimentReady", "status": flag},
        {"type": "MirrorReady", "status": "True"},
        {"type": "Ready", "status": flag, "message": "" if candidates_ready else "candidate models not available"}]})


def weights(obj: Obj) -> dict[str, int]:
    return {c["name"]: c["weight"] for c in obj["spec"]["candidates"]}


@pytest.mark.integration
def test_seldon_experiment_stage_step_rollback_stage_promote(api: client.ApiClient, namespace: str) -> None:
    create(api, SELDON_EXPERIMENT, namespace, {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]})
    seldon_v2_reports(api, namespace)
    router = router_for({"seldonExperiment": {"name": NAME}}, namespace, api)
    assert isinstance(router, SeldonExperimentRouter)
    assert router.observe().ready

    router.stage(CANDIDATE_7, stable_version="6")
    obj = get(api, SELDON_EXPERIMENT, namespace)
    assert weights(obj) == {"nsfw": 100, "nsfw-v7": 0}  # weight 0: share = 0 / 100
    assert obj["spec"]["default"] == "nsfw"
    state = router.observe()
    # No observedGeneration to wait for: the spec reads as in effect, and the conditions from before the change
    # (the candidates then, ready) say the candidate is ready before Seldon has looked at it (README's known limit).
    assert state.synced and state.canary_ready and state.canary_weight == 0
    seldon_v2_reports(api, namespace, candidates_ready=False)  # Seldon: the candidate Model is not loaded yet
    state = router.observe()
    assert state.synced and not state.ready and not state.canary_ready
    assert state.message == "experiment is not ready: candidate models not available"
    seldon_v2_reports(api, namespace)
    state = router.observe()
    assert state.canary_ready and (state.stable_version, state.canary_version, state.canary_weight) == ("6", "7", 0)
    assert (state.stable_name, state.canary_name) == ("nsfw", "nsfw-v7")

    router.set_weight(10)
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 90, "nsfw-v7": 10}
    seldon_v2_reports(api, namespace)
    assert router.observe().canary_weight == 10

    router.rollback()
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 100}
    seldon_v2_reports(api, namespace)
    state = router.observe()
    assert not state.canary_staged and state.stable_version == "6"

    router.stage(CandidateModel("nsfw", "8", V8, serving_name="nsfw-challenger"))
    seldon_v2_reports(api, namespace)
    router.set_weight(50)
    router.promote()
    obj = get(api, SELDON_EXPERIMENT, namespace)
    assert weights(obj) == {"nsfw": 0, "nsfw-challenger": 100}  # the default model must stay a candidate
    # The versions of the Models still named only: the rolled-back nsfw-v7 is gone, so it does not grow.
    versions = json.loads(obj["metadata"]["annotations"]["modelrollout.io/model-versions"])
    assert versions == {"nsfw": "6", "nsfw-challenger": "8"}
    seldon_v2_reports(api, namespace)
    state = router.observe()
    assert state.stable_version == "8" and state.stable_name == "nsfw-challenger" and not state.canary_staged

    router.restore(STABLE_6)
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 100}
    seldon_v2_reports(api, namespace)
    assert router.observe().stable_version == "6"


@pytest.mark.integration
def test_seldon_experiment_share_is_weight_over_sum(api: client.ApiClient, namespace: str) -> None:
    create(api, SELDON_EXPERIMENT, namespace, {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]})
    router = SeldonExperimentRouter(api, namespace, NAME)
    router.stage(CANDIDATE_7)
    # Someone scales the weights by hand (3:1): the router reads the share, not the raw number.
    oc = ObjectClient(api, SELDON_EXPERIMENT, namespace, NAME, field_manager="kubectl-edit")
    body = oc.skeleton()
    body["spec"] = {"candidates": [{"name": "nsfw", "weight": 3}, {"name": "nsfw-v7", "weight": 1}]}
    oc.apply(body)
    seldon_v2_reports(api, namespace)
    assert router.observe().canary_weight == 25


@pytest.mark.integration
def test_seldon_experiment_rollback_clears_the_record_of_a_candidate_a_sync_removed(api: client.ApiClient,
                                                                                  namespace: str) -> None:
    """Argo CD's self-heal takes the candidate out of the candidates mid-canary: rollback still removes its record
    (as Seldon Core v1's does), once, so another team's later A/B arm of that name is neither read as the candidate,
    nor dropped by the next stage, nor removed by a later rollback (an ended rollout finishing its withdrawal)."""
    create(api, SELDON_EXPERIMENT, namespace, {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]})
    router = SeldonExperimentRouter(api, namespace, NAME)
    router.stage(CANDIDATE_7, "6")
    router.set_weight(10)
    argocd = ObjectClient(api, SELDON_EXPERIMENT, namespace, NAME, field_manager=CREATOR)
    body = argocd.skeleton()
    body["spec"] = {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]}
    argocd.apply(body)  # the manifest in git, forced (self-heal)
    twice_is_once(api, SELDON_EXPERIMENT, namespace, router.rollback)
    obj = get(api, SELDON_EXPERIMENT, namespace)
    assert weights(obj) == {"nsfw": 100}
    assert {k: v for k, v in obj["metadata"]["annotations"].items() if k.startswith("modelrollout.io/")} == {
        "modelrollout.io/stable-model": "nsfw", "modelrollout.io/model-versions": json.dumps({"nsfw": "6"})}

    team_b = ObjectClient(api, SELDON_EXPERIMENT, namespace, NAME, field_manager="team-b")
    body = team_b.skeleton()
    body["spec"] = {"candidates": [{"name": "nsfw", "weight": 100}, {"name": "nsfw-v7", "weight": 20}]}
    team_b.apply(body)
    seldon_v2_reports(api, namespace)
    state = router.observe()
    assert state.canary_name is None and state.canary_weight is None and not state.canary_staged
    assert "models ModelRollout does not manage carry weight: nsfw-v7" in state.message
    before = get(api, SELDON_EXPERIMENT, namespace)
    with pytest.raises(TargetStateError, match="does not manage: nsfw-v7"):
        router.stage(CANDIDATE_8, "6")
    twice_is_once(api, SELDON_EXPERIMENT, namespace, router.rollback)  # nothing of ours: not written
    after = get(api, SELDON_EXPERIMENT, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert weights(after) == {"nsfw": 100, "nsfw-v7": 20}


@pytest.mark.integration
def test_seldon_experiment_refuses_a_candidate_model_name_no_model_can_carry(api: client.ApiClient,
                                                                             namespace: str) -> None:
    """A Kubernetes object name is at most 253 characters, a Seldon Model's too (mlops.seldon.io objects shown
    here by the Experiment, the one of them whose CRD is installed): a version resolved at run time whose Model name
    would be longer is refused before any write, naming spec.model.name; one at the limit is staged."""
    r = SELDON_EXPERIMENT
    for length, accepted in ((253, True), (254, False)):
        body = {"apiVersion": r.api_version, "kind": r.kind, "metadata": {"name": "e" * length},
                "spec": {"candidates": [{"name": "nsfw", "weight": 100}]}}
        try:
            custom(api).create_namespaced_custom_object(r.group, r.version, namespace, r.plural, body)
        except client.ApiException as exc:
            assert not accepted and exc.status == 422 and "must be no more than 253 characters" in exc.body
        else:
            assert accepted
    create(api, SELDON_EXPERIMENT, namespace, {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]})
    router = SeldonExperimentRouter(api, namespace, NAME)
    before = get(api, SELDON_EXPERIMENT, namespace)
    with pytest.raises(TargetStateError, match=r"^spec\.model\.name: gives version 12 the Seldon Model name "
                                               r"n{32}\.\.\. \(254 characters"):
        router.stage(CandidateModel("n" * 250, "12", V7), "6")  # an alias's version, fine for versions 1-9
    after = get(api, SELDON_EXPERIMENT, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    router.stage(CandidateModel("n" * 250, "7", V7), "6")
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 100, "n" * 250 + "-v7": 0}


@pytest.mark.integration
def test_seldon_experiment_idempotence_ownership_and_refusals(api: client.ApiClient, namespace: str) -> None:
    create(api, SELDON_EXPERIMENT, namespace, {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]})
    router = SeldonExperimentRouter(api, namespace, NAME)
    with pytest.raises(TargetStateError, match="no candidate is staged"):
        router.set_weight(10)
    twice_is_once(api, SELDON_EXPERIMENT, namespace, lambda: router.stage(CANDIDATE_7, "6"))
    twice_is_once(api, SELDON_EXPERIMENT, namespace, lambda: router.set_weight(30))
    twice_is_once(api, SELDON_EXPERIMENT, namespace, router.rollback)
    twice_is_once(api, SELDON_EXPERIMENT, namespace, lambda: router.stage(CANDIDATE_7, "6"))
    twice_is_once(api, SELDON_EXPERIMENT, namespace, router.promote)

    obj = get(api, SELDON_EXPERIMENT, namespace)
    ours = managed_by(obj, FIELD_MANAGER)["fieldsV1"]
    assert ours["f:spec"] == {"f:candidates": {}}
    assert set(ours["f:metadata"]["f:annotations"]) == {"f:modelrollout.io/stable-model",
                                                        "f:modelrollout.io/model-versions"}
    assert "f:default" in managed_by(obj, CREATOR)["fieldsV1"]["f:spec"]

    missing = SeldonExperimentRouter(api, namespace, "absent")
    assert not missing.observe().exists
    with pytest.raises(TargetNotFound, match=f"Experiment {namespace}/absent not found"):
        missing.promote()
    oc = ObjectClient(api, SELDON_EXPERIMENT, namespace, NAME)
    body = oc.skeleton()
    body["spec"] = {"candidates": [{"name": "nsfw"}]}
    with pytest.raises(PatchRejected, match=r"spec.candidates\[0\].weight: Required value"):
        oc.apply(body)


@pytest.mark.integration
def test_seldon_routers_never_touch_another_namespace(api: client.ApiClient, namespace: str,
                                                      kubeconfig: Path) -> None:
    other = f"{namespace}-other"
    created = run_kubectl(kubeconfig, "create", "namespace", other)
    assert created.returncode == 0, created.stderr
    for ns in (namespace, other):
        create(api, SELDON_DEPLOYMENT, ns, {"predictors": [PREDICTOR]})
        create(api, SELDON_EXPERIMENT, ns, {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]})
    untouched = (get(api, SELDON_DEPLOYMENT, other), get(api, SELDON_EXPERIMENT, other))
    for router in (SeldonDeploymentRouter(api, namespace, NAME, "main", "canary"),
                   SeldonExperimentRouter(api, namespace, NAME)):
        router.stage(CANDIDATE_7)
        router.set_weight(40)
        router.promote()
    assert (get(api, SELDON_DEPLOYMENT, other), get(api, SELDON_EXPERIMENT, other)) == untouched
    assert get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"][0]["graph"]["modelUri"] == V7
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 0, "nsfw-v7": 100}


@pytest.mark.integration
def test_seldon_experiment_urls_come_from_seldon_mesh(api: client.ApiClient, namespace: str) -> None:
    """Seldon Core v2 reports no address on an Experiment: every Model is reached through the namespace's
    seldon-mesh Service, by model name in the path, at its load balancer when it has one."""
    create(api, SELDON_EXPERIMENT, namespace, {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]})
    router = SeldonExperimentRouter(api, namespace, NAME)
    assert router.observe().canary_url is None  # nothing staged: nothing for the gate to reach
    router.stage(CANDIDATE_7, "6")
    cluster = f"http://seldon-mesh.{namespace}.svc.cluster.local"
    state = router.observe()  # no Service readable: Seldon's own name and port
    assert (state.stable_url, state.canary_url) == (f"{cluster}/v2/models/nsfw/infer",
                                                    f"{cluster}/v2/models/nsfw-v7/infer")
    core = client.CoreV1Api(api)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "seldon-mesh", "namespace": namespace},
               "spec": {"type": "LoadBalancer", "selector": {"app": "seldon-envoy"},
                        "ports": [{"name": "data", "port": 80, "targetPort": 9000}]}}
    core.patch_namespaced_service("seldon-mesh", namespace, service, field_manager="seldon-manager",
                                  _content_type=APPLY_PATCH)
    assert router.observe().canary_url == f"{cluster}/v2/models/nsfw-v7/infer"  # no ingress yet
    status = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "seldon-mesh", "namespace": namespace},
              "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
    core.patch_namespaced_service_status("seldon-mesh", namespace, status, field_manager="cloud-lb",
                                         _content_type=APPLY_PATCH)
    assert router.observe().canary_url == "http://203.0.113.7/v2/models/nsfw-v7/infer"


@pytest.mark.integration
def test_seldon_deployment_urls_follow_the_service_name_and_protocol(api: client.ApiClient, namespace: str) -> None:
    """The Service comes from status.serviceStatus under Seldon's key (the seldon.io/svc-name annotation when
    set), the path from spec.protocol, as Seldon builds status.address.url."""
    predictor = {**PREDICTOR, "annotations": {"seldon.io/svc-name": "nsfw-svc"}}
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "tensorflow", "predictors": [predictor]})
    write_status(api, SELDON_DEPLOYMENT, namespace, {"state": "Available", "serviceStatus": {
        "nsfw-svc": {"svcName": "nsfw-svc", "httpEndpoint": f"nsfw-svc.{namespace}:8000"}}})
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    service_url = f"http://nsfw-svc.{namespace}.svc.cluster.local:8000"  # the reported short name, made full
    assert router.observe().stable_url == f"{service_url}/v1/models/classifier:predict"
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "seldon", "predictors": [predictor]})
    assert router.observe().stable_url == service_url  # /api/v1.0: not for the gate


@pytest.mark.integration
def test_seldon_deployment_canary_names_its_own_objects_and_promotion_keeps_stables(api: client.ApiClient,
                                                                                   namespace: str) -> None:
    """A canary copied from stable must not take the Service and Deployment names stable chose (both would
    resolve to one Service, and the gate would compare stable with itself); promotion hands stable the
    canary's model under the candidate's Deployment names (new Deployments, whose availability observe waits
    for) and keeps the rest of stable (its explainer, Service name, replicas)."""
    long_canary = "candidate-" + "c" * 50  # <sdep>-<predictor>-0-classifier is over 63 characters
    stable = {**PREDICTOR, "annotations": {"seldon.io/svc-name": "nsfw-svc"},
              "explainer": {"type": "AnchorTabular", "modelUri": "s3://explainers/nsfw"},
              "componentSpecs": [{"metadata": {"name": "nsfw-main"}, **PREDICTOR["componentSpecs"][0]}]}
    create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [stable]})
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", long_canary)
    router.stage(CANDIDATE_7, stable_version="6")
    canary = get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"][1]
    assert "seldon.io/svc-name" not in (canary.get("annotations") or {})
    assert canary["componentSpecs"][0]["metadata"]["name"] == "classifier-v7"  # not stable's nsfw-main

    # Seldon's names for the canary: its Service <sdep>-<predictor>, its Deployment hashed past 63 characters.
    def hashed(name: str) -> str:
        return "seldon-" + hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()

    service, deployment = hashed(f"{NAME}-{long_canary}"), hashed(f"{NAME}-{long_canary}-0-classifier-v7")
    write_status(api, SELDON_DEPLOYMENT, namespace, {
        "state": "Available",
        "deploymentStatus": {f"{NAME}-main-0-nsfw-main": {"replicas": 2, "availableReplicas": 2},
                             deployment: {"replicas": 2, "availableReplicas": 2}},
        "serviceStatus": {"nsfw-svc": {"svcName": "nsfw-svc", "httpEndpoint": f"nsfw-svc.{namespace}:8000"},
                          service: {"svcName": service, "httpEndpoint": f"{service}.{namespace}:8000"}}})
    state = router.observe()
    assert state.canary_ready, state.message
    assert state.stable_url == f"http://nsfw-svc.{namespace}.svc.cluster.local:8000/v2/models/classifier/infer"
    assert state.canary_url == f"http://{service}.{namespace}.svc.cluster.local:8000/v2/models/classifier/infer"

    router.promote()
    [promoted] = get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"]
    assert promoted["graph"]["modelUri"] == V7 and promoted["traffic"] == 100
    assert promoted["explainer"] == stable["explainer"] and promoted["annotations"] == stable["annotations"]
    assert promoted["replicas"] == 2 and promoted["componentSpecs"][0]["metadata"]["name"] == "classifier-v7"
    assert router.observe().stable_version is None  # Seldon has not made main's Deployment for 7 yet
