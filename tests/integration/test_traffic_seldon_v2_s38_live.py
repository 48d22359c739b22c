"""Review s38traffic, on the real API server with the real Seldon Core v2 Experiment CRD.

An Experiment last promoted by a rollout of another registered model serves a Model of the candidate's version
number (MLflow numbers versions per model): stable read as that number looked like the candidate promoted by hand,
so a failed step restored instead of taking the candidate out. Stable's version is now unknown (marked at staging),
through a rollback too, and a restore picks the Model of the version's own name. Weights set by hand read as the
share users get: a small one is not 0%, a negative one is named and not ready."""

from __future__ import annotations

import pytest
from kubernetes import client

from controller.traffic import CandidateModel, SeldonExperimentRouter
from controller.traffic.kube import SELDON_EXPERIMENT, ObjectClient
from tests.integration import test_traffic_seldon as sv
from tests.integration.test_traffic_seldon import CANDIDATE_7, NAME

pytestmark = pytest.mark.integration
api = sv.api  # its fixture, shared
ZETA_3 = CandidateModel("zeta", "3", "s3://zeta/3")
ALPHA_3 = CandidateModel("alpha", "3", "s3://alpha/3")


def zeta_3_promoted(api: client.ApiClient, namespace: str) -> SeldonExperimentRouter:
    sv.create(api, SELDON_EXPERIMENT, namespace, {"default": "base", "candidates": [{"name": "base", "weight": 100}]})
    sv.seldon_v2_reports(api, namespace)
    router = SeldonExperimentRouter(api, namespace, NAME)
    router.stage(ZETA_3, "2")
    router.set_weight(50, "3")
    router.promote()
    sv.seldon_v2_reports(api, namespace)
    assert (router.observe().stable_version, router.observe().stable_name) == ("3", "zeta-v3")
    return router


def test_another_models_version_of_the_candidates_number_is_not_read_as_the_candidate(
        api: client.ApiClient, namespace: str) -> None:
    router = zeta_3_promoted(api, namespace)
    # alpha's stable alias names version 1, which never served here: the engine's hint.
    sv.twice_is_once(api, SELDON_EXPERIMENT, namespace, lambda: router.stage(ALPHA_3, "1"))
    router.set_weight(30, "3")
    sv.seldon_v2_reports(api, namespace)
    state = router.observe()
    assert (state.stable_name, state.canary_name, state.canary_version, state.canary_weight) == (
        "zeta-v3", "alpha-v3", "3", 30), state
    assert state.stable_version is None, state  # before: "3", the candidate's number
    router.rollback()
    sv.seldon_v2_reports(api, namespace)
    state = router.observe()
    assert (state.stable_name, state.stable_version, state.canary_weight) == ("zeta-v3", None, None), state
    assert "stable model zeta-v3 is recorded as version 3 of another registered model" in state.message, state
    assert sv.weights(sv.get(api, SELDON_EXPERIMENT, namespace))["zeta-v3"] == 100


def test_a_next_rollout_of_stables_own_model_reads_its_version_again(api: client.ApiClient, namespace: str) -> None:
    """The mark lasts while stable is that Model: a rollout of zeta's version 4 after alpha's rolled back reads
    stable as version 3 again."""
    router = zeta_3_promoted(api, namespace)
    router.stage(ALPHA_3, "1")
    router.rollback()
    router.stage(CandidateModel("zeta", "4", "s3://zeta/4"), "3")
    sv.seldon_v2_reports(api, namespace)
    state = router.observe()
    assert (state.stable_name, state.stable_version, state.canary_version) == ("zeta-v3", "3", "4"), state


def test_a_restore_picks_the_model_of_the_versions_own_name(api: client.ApiClient, namespace: str) -> None:
    """zeta-v3 and alpha-v3 both in the Experiment, both version 3: restoring zeta's version 3 restores zeta-v3."""
    router = zeta_3_promoted(api, namespace)
    router.stage(ALPHA_3, "3")
    router.set_weight(50, "3")
    router.promote()
    sv.twice_is_once(api, SELDON_EXPERIMENT, namespace, lambda: router.restore(ZETA_3))
    assert {n: w for n, w in sv.weights(sv.get(api, SELDON_EXPERIMENT, namespace)).items() if w} == {"zeta-v3": 100}
    sv.seldon_v2_reports(api, namespace)
    state = router.observe()
    assert (state.stable_name, state.stable_version) == ("zeta-v3", "3"), state


def weights_by_hand(api: client.ApiClient, namespace: str, weights: dict[str, int]) -> None:
    edit = ObjectClient(api, SELDON_EXPERIMENT, namespace, NAME, field_manager="kubectl-edit")
    body = edit.skeleton()
    body["spec"] = {"candidates": [{"name": n, "weight": w} for n, w in weights.items()]}
    edit.apply(body)
    sv.seldon_v2_reports(api, namespace)


def test_weights_set_by_hand_read_as_the_share_users_get(api: client.ApiClient, namespace: str) -> None:
    sv.create(api, SELDON_EXPERIMENT, namespace, {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]})
    router = SeldonExperimentRouter(api, namespace, NAME)
    router.stage(CANDIDATE_7, "6")
    weights_by_hand(api, namespace, {"nsfw": 1000, "nsfw-v7": 4})  # 0.4% of users on the candidate
    state = router.observe()
    assert (state.canary_weight, state.ready) == (1, True), state
    weights_by_hand(api, namespace, {"nsfw": 4, "nsfw-v7": 1000})
    assert router.observe().canary_weight == 99
    for weights, canary in (({"nsfw": 100, "nsfw-v7": -50}, 0), ({"nsfw": -50, "nsfw-v7": 100}, 100)):
        weights_by_hand(api, namespace, weights)
        state = router.observe()
        assert state.canary_weight == canary and not state.ready, state
        assert "negative weights, set outside ModelRollout: " in state.message and "-50" in state.message, state
