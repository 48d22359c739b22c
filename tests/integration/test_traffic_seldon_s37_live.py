"""Review s36seldon1, on the real API server with the real Seldon Core v1.17.1 CRD: a restore after a promotion
loads stable's model into the model node the router manages (found by the modelUri it recorded), not into a node
put ahead of it since, and is refused when that node cannot be told; observe reads that node. Session 38: its
recorded name tells it even when its model was changed by hand, for a restore and for the next stage. A canary
predictor of the router's set `shadow: true` by hand carries no user: observe says 0% and why, a step and a
promotion are refused, a rollback and a restore remove it."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from controller.traffic import CandidateModel, SeldonDeploymentRouter, TargetStateError
from controller.traffic.kube import SELDON_DEPLOYMENT, ObjectClient
from controller.traffic.seldon import ANN_MODEL_NODE
from tests.integration import test_traffic_seldon as sv1
from tests.integration.test_traffic_seldon import CANDIDATE_7, CANDIDATE_8, NAME, PREDICTOR, STABLE_6, V6, V7, V8

pytestmark = pytest.mark.integration
api = sv1.api  # its fixture, shared
Obj = dict[str, Any]
DETECTOR = "s3://models/detector/1"
CANDIDATE_9 = CandidateModel("nsfw", "9", "s3://models/nsfw/9")


def model_uris(graph: Obj) -> dict[str, Any]:
    found = {graph["name"]: graph.get("modelUri")}
    for child in graph.get("children") or []:
        found.update(model_uris(child))
    return found


def stable_uris(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    [main] = [p for p in sv1.get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"] if p["name"] == "main"]
    return model_uris(main["graph"])


def staged_at(api: client.ApiClient, namespace: str, weight: int) -> SeldonDeploymentRouter:
    """Stable 6 on main, candidate 7 on canary at `weight`%."""
    sv1.create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [PREDICTOR]})
    sv1.seldon_v1_reports(api, namespace)
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    router.stage(CANDIDATE_7, "6")
    if weight:
        router.set_weight(weight, "7")
    return router


def promoted_to_7(api: client.ApiClient, namespace: str) -> SeldonDeploymentRouter:
    router = staged_at(api, namespace, 50)
    router.promote()
    sv1.seldon_v1_reports(api, namespace)
    assert router.observe().stable_version == "7"
    return router


def detector_ahead(predictors: list[Obj], classifier_uri: str | None = None) -> None:
    """An outlier detector (a model node of its own) put ahead of stable's classifier by hand."""
    graph = predictors[0]["graph"]
    if classifier_uri is not None:
        graph["modelUri"] = classifier_uri
    predictors[0]["graph"] = {"name": "detector", "implementation": "SKLEARN_SERVER", "modelUri": DETECTOR,
                              "children": [graph]}


def test_restore_loads_stable_into_the_promoted_node_not_one_put_ahead_of_it(api: client.ApiClient,
                                                                            namespace: str) -> None:
    router = promoted_to_7(api, namespace)
    sv1.edit_predictors(api, namespace, detector_ahead)
    sv1.seldon_v1_reports(api, namespace)
    promoted = router.observe()
    sv1.twice_is_once(api, SELDON_DEPLOYMENT, namespace, lambda: router.restore(STABLE_6))
    assert stable_uris(api, namespace) == {"detector": DETECTOR, "classifier": V6}
    assert promoted.stable_version == "7", promoted  # the classifier loaded what promote wrote there
    sv1.seldon_v1_reports(api, namespace)
    state = router.observe()
    assert (state.stable_version, state.ready, state.canary_weight) == ("6", True, None), state


def test_restore_after_a_hand_promotion_finds_the_node_loading_the_candidate(api: client.ApiClient,
                                                                            namespace: str) -> None:
    router = staged_at(api, namespace, 0)
    sv1.edit_predictors(api, namespace, lambda predictors: detector_ahead(predictors, V7))  # promoted by hand
    sv1.seldon_v1_reports(api, namespace)
    promoted = router.observe()
    router.restore(STABLE_6)
    assert stable_uris(api, namespace) == {"detector": DETECTOR, "classifier": V6}
    assert promoted.stable_version == "7", promoted
    assert [p["name"] for p in sv1.get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"]] == ["main"]


def renamed_and_pointed_at(uri: str) -> Any:
    """A detector put ahead, and the classifier renamed and pointed at `uri` by hand: neither its recorded name nor
    a recorded modelUri tells it."""
    def edit(predictors: list[Obj]) -> None:
        predictors[0]["graph"]["name"] = "classifier2"
        detector_ahead(predictors, uri)
    return edit


def refused_without_a_write(api: client.ApiClient, namespace: str, action: Any, match: str) -> None:
    before = sv1.get(api, SELDON_DEPLOYMENT, namespace)
    with pytest.raises(TargetStateError, match=match) as refused:
        action()
    assert refused.value.reason == "Invalid"
    after = sv1.get(api, SELDON_DEPLOYMENT, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_restore_refused_when_the_promoted_node_cannot_be_told(api: client.ApiClient, namespace: str) -> None:
    """A node put ahead and the classifier renamed and its model changed by hand too: no node has the recorded name
    or loads what the router wrote."""
    router = promoted_to_7(api, namespace)
    sv1.edit_predictors(api, namespace, renamed_and_pointed_at(V8))
    sv1.seldon_v1_reports(api, namespace)
    state = router.observe()
    assert state.stable_version is None and "detector" in state.message and "classifier2" in state.message, state
    refused_without_a_write(api, namespace, lambda: router.restore(STABLE_6),
                            r"cannot restore version 6: no model node of predictor main .* "
                            r"loads .*nsfw/7.*'detector', 'classifier2'")


def test_restore_and_stage_write_into_the_named_classifier_pointed_at_another_model_by_hand(
        api: client.ApiClient, namespace: str) -> None:
    """Session 38: after a promotion, a detector put ahead and the classifier pointed at another model by hand. The
    recorded name still tells the classifier: observe reads its version as unknown, a restore loads stable's model
    into it, and a next rollout stages the candidate into the canary's copy of it (before, into the detector's)."""
    router = promoted_to_7(api, namespace)
    sv1.edit_predictors(api, namespace, lambda predictors: detector_ahead(predictors, V8))
    sv1.seldon_v1_reports(api, namespace)
    state = router.observe()
    assert state.stable_version is None and "classifier" in state.message, state
    sv1.twice_is_once(api, SELDON_DEPLOYMENT, namespace, lambda: router.stage(CANDIDATE_9, "7"))
    [canary] = [p for p in sv1.get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"] if p["name"] == "canary"]
    assert model_uris(canary["graph"]) == {"detector": DETECTOR, "classifier": CANDIDATE_9.storage_uri}
    assert stable_uris(api, namespace) == {"detector": DETECTOR, "classifier": V8}
    router.rollback()
    sv1.twice_is_once(api, SELDON_DEPLOYMENT, namespace, lambda: router.restore(STABLE_6))
    assert stable_uris(api, namespace) == {"detector": DETECTOR, "classifier": V6}
    sv1.seldon_v1_reports(api, namespace)
    assert router.observe().stable_version == "6"


def test_stage_refused_when_stables_model_node_cannot_be_told(api: client.ApiClient, namespace: str) -> None:
    """Session 38: a rollout after the promoted classifier was renamed and pointed at another model by hand, with a
    detector put ahead of it: the candidate is not staged into the detector's copy."""
    router = promoted_to_7(api, namespace)
    sv1.edit_predictors(api, namespace, renamed_and_pointed_at(V6))
    sv1.seldon_v1_reports(api, namespace)
    refused_without_a_write(api, namespace, lambda: router.stage(CANDIDATE_8, "7"),
                            r"cannot stage version 8: no model node of predictor main .* "
                            r"loads .*nsfw/7.*'detector', 'classifier2'.*set the annotation "
                            r"modelrollout.io/model-node to the name of the node")
    # The remedy the refusal names (review s38r2): the node's name recorded by hand.
    edit = ObjectClient(api, SELDON_DEPLOYMENT, namespace, NAME, field_manager="kubectl-annotate")
    body = edit.skeleton()
    body["metadata"]["annotations"] = {ANN_MODEL_NODE: "classifier2"}
    edit.apply(body)
    router.stage(CANDIDATE_8, "7")
    [canary] = [p for p in sv1.get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"] if p["name"] == "canary"]
    assert model_uris(canary["graph"]) == {"detector": DETECTOR, "classifier2": V8}


def canary_made_shadow(api: client.ApiClient, namespace: str) -> SeldonDeploymentRouter:
    router = staged_at(api, namespace, 20)

    def shadow(predictors: list[Obj]) -> None:  # users off the candidate: requests mirrored to it only
        predictors[0]["traffic"] = 100
        predictors[1]["shadow"] = True
    sv1.edit_predictors(api, namespace, shadow)
    sv1.seldon_v1_reports(api, namespace)
    return router


def test_a_canary_made_shadow_carries_no_user_and_is_neither_stepped_nor_promoted(api: client.ApiClient,
                                                                                 namespace: str) -> None:
    router = canary_made_shadow(api, namespace)
    state = router.observe()
    # Still the staged candidate (a rollback, and the runtime's finishing of one, take it off), at 0% of users.
    assert (state.canary_name, state.canary_version, state.canary_weight) == ("canary", "7", 0), state
    assert "predictor canary of" in state.message and "is a shadow (shadow: true" in state.message, state.message
    before = sv1.get(api, SELDON_DEPLOYMENT, namespace)
    with pytest.raises(TargetStateError, match=r"cannot set the canary to 30%: predictor canary of .* is a shadow"):
        router.set_weight(30, "7")
    with pytest.raises(TargetStateError, match=r"cannot promote: predictor canary of .* is a shadow"):
        router.promote()
    assert sv1.get(api, SELDON_DEPLOYMENT, namespace)["metadata"]["resourceVersion"] == \
        before["metadata"]["resourceVersion"]
    sv1.twice_is_once(api, SELDON_DEPLOYMENT, namespace, router.rollback)
    obj = sv1.get(api, SELDON_DEPLOYMENT, namespace)
    assert [p["name"] for p in obj["spec"]["predictors"]] == ["main"] and sv1.traffic(obj) == {"main": 100}
    assert not router.observe().canary_staged


def test_a_restore_removes_a_canary_made_shadow(api: client.ApiClient, namespace: str) -> None:
    router = canary_made_shadow(api, namespace)
    sv1.twice_is_once(api, SELDON_DEPLOYMENT, namespace, lambda: router.restore(STABLE_6))
    obj = sv1.get(api, SELDON_DEPLOYMENT, namespace)
    assert [p["name"] for p in obj["spec"]["predictors"]] == ["main"] and sv1.traffic(obj) == {"main": 100}
    assert stable_uris(api, namespace) == {"classifier": V6}


def test_stage_and_promote_load_the_candidate_into_the_classifier_not_a_node_ahead_of_it(
        api: client.ApiClient, namespace: str) -> None:
    """A rollout after a detector was put ahead of the promoted classifier: the canary's copy of the graph takes the
    candidate in the classifier (the node loading the recorded stable model), and so does stable on promotion."""
    router = promoted_to_7(api, namespace)
    sv1.edit_predictors(api, namespace, detector_ahead)
    sv1.seldon_v1_reports(api, namespace)
    sv1.twice_is_once(api, SELDON_DEPLOYMENT, namespace, lambda: router.stage(CANDIDATE_8, "7"))
    [canary] = [p for p in sv1.get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"] if p["name"] == "canary"]
    assert model_uris(canary["graph"]) == {"detector": DETECTOR, "classifier": V8}
    assert stable_uris(api, namespace) == {"detector": DETECTOR, "classifier": V7}
    router.set_weight(50, "8")
    sv1.twice_is_once(api, SELDON_DEPLOYMENT, namespace, router.promote)
    assert stable_uris(api, namespace) == {"detector": DETECTOR, "classifier": V8}
    sv1.seldon_v1_reports(api, namespace)
    assert router.observe().stable_version == "8"


def test_a_hand_edit_of_the_managed_node_is_seen_though_another_node_loads_the_same_model(
        api: client.ApiClient, namespace: str) -> None:
    """Review s37r2: stable's two model nodes both load 6; stage writes 7 into the first (its name is recorded).
    Pointed at another model by hand, that node is not stood in for by the other one loading 6: the version stable
    serves is unknown, before and after a rollback."""
    predictor = {**PREDICTOR, "graph": {**PREDICTOR["graph"], "children": [
        {"name": "copy", "implementation": "SKLEARN_SERVER", "modelUri": V6}]}}
    sv1.create(api, SELDON_DEPLOYMENT, namespace, {"protocol": "v2", "predictors": [predictor]})
    sv1.seldon_v1_reports(api, namespace)
    router = SeldonDeploymentRouter(api, namespace, NAME, "main", "canary")
    router.stage(CANDIDATE_7, "6")
    router.set_weight(20, "7")
    [canary] = [p for p in sv1.get(api, SELDON_DEPLOYMENT, namespace)["spec"]["predictors"] if p["name"] == "canary"]
    assert model_uris(canary["graph"]) == {"classifier": V7, "copy": V6}

    def point_classifier_at_8(predictors: list[Obj]) -> None:
        predictors[0]["graph"]["modelUri"] = V8
    sv1.edit_predictors(api, namespace, point_classifier_at_8)
    sv1.seldon_v1_reports(api, namespace)
    for done in ((), (router.rollback,)):
        for action in done:
            action()
        state = router.observe()
        assert state.stable_version is None and "modelUri changed outside ModelRollout" in state.message, state
