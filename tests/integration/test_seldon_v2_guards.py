"""The Seldon Core v2 router on Experiments it must not drive blindly, on the real API server with the real
Seldon Core v2.6.0 Experiment CRD: one without a spec, one over pipelines, and a rollback or restore whose
candidate annotation was removed by hand, or that another team's model shares traffic with (its weight and
share are left as they are, and a traffic step beside it is refused)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client

from controller.operator.kubeapi import load_client_config
from controller.traffic import SeldonExperimentRouter, TargetStateError
from controller.traffic.kube import SELDON_EXPERIMENT, ObjectClient
from tests.integration.test_traffic_seldon import (
    CANDIDATE_7,
    NAME,
    STABLE_6,
    create,
    custom,
    get,
    seldon_v2_reports,
    twice_is_once,
    weights,
)

ANN_CANDIDATE_MODEL = "modelrollout.io/candidate-model"


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


def every_operation(router: SeldonExperimentRouter) -> dict[str, Callable[[], None]]:
    return {"stage": lambda: router.stage(CANDIDATE_7, "6"), "set_weight": lambda: router.set_weight(10),
            "promote": router.promote, "rollback": router.rollback, "restore": lambda: router.restore(STABLE_6)}


@pytest.mark.integration
def test_an_experiment_without_spec_is_refused_not_a_crash(api: client.ApiClient, namespace: str) -> None:
    # The CRD requires candidates only inside spec: an Experiment without a spec is valid to the API server.
    r = SELDON_EXPERIMENT
    custom(api).create_namespaced_custom_object(r.group, r.version, namespace, r.plural, {
        "apiVersion": r.api_version, "kind": r.kind, "metadata": {"name": NAME, "namespace": namespace}})
    router = SeldonExperimentRouter(api, namespace, NAME)
    state = router.observe()
    assert state.exists and not state.ready and state.message == f"Experiment {namespace}/{NAME} has no spec"
    for name, operation in every_operation(router).items():
        with pytest.raises(TargetStateError, match="has no spec"):
            operation()
        assert "spec" not in get(api, SELDON_EXPERIMENT, namespace), name


@pytest.mark.integration
def test_a_pipeline_experiment_is_reported_and_never_driven(api: client.ApiClient, namespace: str) -> None:
    create(api, SELDON_EXPERIMENT, namespace, {"resourceType": "pipeline", "default": "nsfw-pipeline",
                                               "candidates": [{"name": "nsfw-pipeline", "weight": 100}]})
    seldon_v2_reports(api, namespace)
    router = SeldonExperimentRouter(api, namespace, NAME)
    before = get(api, SELDON_EXPERIMENT, namespace)["metadata"]["resourceVersion"]
    state = router.observe()
    assert state.exists and state.synced and not state.ready and not state.canary_staged
    assert "spec.resourceType pipeline" in state.message
    for name, operation in every_operation(router).items():
        with pytest.raises(TargetStateError, match=r"spec\.resourceType pipeline"):
            operation()
        assert get(api, SELDON_EXPERIMENT, namespace)["metadata"]["resourceVersion"] == before, name

    # resourceType model, spelled out, is what the router drives.
    create(api, SELDON_EXPERIMENT, namespace, {"resourceType": "model", "default": "nsfw",
                                               "candidates": [{"name": "nsfw", "weight": 100}]})
    router.stage(CANDIDATE_7, "6")
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 100, "nsfw-v7": 0}


@pytest.mark.integration
def test_rollback_without_the_candidate_annotation_and_beside_a_foreign_model(api: client.ApiClient,
                                                                            namespace: str) -> None:
    create(api, SELDON_EXPERIMENT, namespace, {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]})
    router = SeldonExperimentRouter(api, namespace, NAME)
    router.stage(CANDIDATE_7, "6")
    router.set_weight(40)
    r = SELDON_EXPERIMENT
    custom(api).patch_namespaced_custom_object(r.group, r.version, namespace, r.plural, NAME, {
        "metadata": {"annotations": {ANN_CANDIDATE_MODEL: None}}})  # removed by hand (a merge patch)
    seldon_v2_reports(api, namespace)
    assert router.observe().canary_weight == 40  # reported as stray weight
    # The router wrote nsfw-v7 there (its model-versions annotation says so): it takes it out.
    twice_is_once(api, SELDON_EXPERIMENT, namespace, router.rollback)
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 100}
    seldon_v2_reports(api, namespace)
    state = router.observe()
    assert state.canary_weight is None and not state.message

    # A model the router never wrote carries weight: rollback still takes the candidate out (users must get off
    # it), leaves that model's entry as it is, and gives stable all of its own weight, so the other's share stays.
    router.stage(CANDIDATE_7, "6")
    router.set_weight(40)
    edit = ObjectClient(api, SELDON_EXPERIMENT, namespace, NAME, field_manager="kubectl-edit")
    body = edit.skeleton()
    body["spec"] = {"candidates": [{"name": "nsfw", "weight": 50}, {"name": "nsfw-v7", "weight": 40},
                                   {"name": "fraud-ab", "weight": 10}]}
    edit.apply(body)
    seldon_v2_reports(api, namespace)
    assert router.observe().canary_weight == 40  # the candidate's own share, fraud-ab's not counted
    # A step is refused beside it: 100-N and N beside fraud-ab's 10 would never give the candidate N.
    before = get(api, SELDON_EXPERIMENT, namespace)
    with pytest.raises(TargetStateError, match=r"cannot set the candidate to 50%: .* does not manage: "
                                               r"fraud-ab \(weight 10\)"):
        router.set_weight(50)
    after = get(api, SELDON_EXPERIMENT, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    twice_is_once(api, SELDON_EXPERIMENT, namespace, router.rollback)
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 90, "fraud-ab": 10}
    seldon_v2_reports(api, namespace)
    state = router.observe()
    assert state.canary_weight is None and "models ModelRollout does not manage carry weight: fraud-ab" in state.message
    # Staging beside it is still refused: a new canary's steps would not be the shares they say.
    with pytest.raises(TargetStateError, match="models ModelRollout does not manage: fraud-ab"):
        router.stage(CANDIDATE_7, "6")


@pytest.mark.integration
def test_restore_beside_a_foreign_model_moves_only_the_routers_models(api: client.ApiClient,
                                                                       namespace: str) -> None:
    create(api, SELDON_EXPERIMENT, namespace, {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]})
    router = SeldonExperimentRouter(api, namespace, NAME)
    router.stage(CANDIDATE_7, "6")
    router.promote()
    # Another team adds its A/B model beside the promoted one, by hand, at weight 0: it takes no users, and
    # restore takes out only the model it promoted.
    edit = ObjectClient(api, SELDON_EXPERIMENT, namespace, NAME, field_manager="kubectl-edit")
    body = edit.skeleton()
    body["spec"] = {"candidates": [{"name": "nsfw", "weight": 0}, {"name": "nsfw-v7", "weight": 100},
                                   {"name": "fraud-ab", "weight": 0}]}
    edit.apply(body)
    twice_is_once(api, SELDON_EXPERIMENT, namespace, lambda: router.restore(STABLE_6))
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 100, "fraud-ab": 0}

    # With weight, their split is not ended either: a failed bake's restore gives the restored model all of the
    # router's weight and leaves theirs, so their share stays while the rejected version leaves.
    router.stage(CANDIDATE_7, "6")
    router.promote()
    body["spec"] = {"candidates": [{"name": "nsfw", "weight": 0}, {"name": "nsfw-v7", "weight": 80},
                                   {"name": "fraud-ab", "weight": 20}]}
    edit.apply(body)
    twice_is_once(api, SELDON_EXPERIMENT, namespace, lambda: router.restore(STABLE_6))
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 80, "fraud-ab": 20}
    seldon_v2_reports(api, namespace)
    state = router.observe()
    assert state.stable_version == "6" and state.canary_weight is None
