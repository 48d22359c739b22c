"""The Seldon Core v2 router's rollback racing another team's edit, on the real API server with the real Seldon Core
v2.6.0 Experiment CRD: a sync took the candidate out of the candidates, the rollback reads the Experiment, and before
its write lands another team adds its own model of the candidate's name (its write then gets a 409 and the rollback
reads again). The race is made certain by a wrapper on the router's read that lands the other team's edit right after
the rollback's first read (review s27r2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client

from controller.operator.kubeapi import load_client_config
from controller.traffic import SeldonExperimentRouter, TargetStateError
from controller.traffic.kube import SELDON_EXPERIMENT, Obj, ObjectClient
from tests.integration.test_traffic_seldon import (
    CANDIDATE_7,
    CANDIDATE_8,
    CREATOR,
    NAME,
    create,
    get,
    seldon_v2_reports,
    twice_is_once,
    weights,
)

GIT = {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]}


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


def ours(obj: Obj) -> dict[str, str]:
    return {k: v for k, v in obj["metadata"]["annotations"].items() if k.startswith("modelrollout.io/")}


@pytest.mark.integration
def test_a_model_of_the_candidates_name_added_during_the_rollback_is_left_alone(
        api: client.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model that comes back between the rollback's read and its write is team-b's: it keeps its weight, the
    candidate's record and version go, and a rollback run again from scratch (the operator restarted before it
    wrote the rollout's status) writes nothing; the next stage refuses team-b's split instead of dropping it."""
    create(api, SELDON_EXPERIMENT, namespace, GIT)
    router = SeldonExperimentRouter(api, namespace, NAME)
    router.stage(CANDIDATE_7, "6")
    router.set_weight(10)
    argocd = ObjectClient(api, SELDON_EXPERIMENT, namespace, NAME, field_manager=CREATOR)
    body = argocd.skeleton()
    body["spec"] = GIT
    argocd.apply(body)  # the manifest in git, forced (self-heal): the candidate leaves the candidates

    team_b = ObjectClient(api, SELDON_EXPERIMENT, namespace, NAME, field_manager="team-b")
    real_get = router.client.get
    reads: list[str] = []

    def racing_get() -> Obj:
        obj = real_get()
        reads.append(obj["metadata"]["resourceVersion"])
        if len(reads) == 1:  # after the rollback's first read, before its write: team-b adds its arm
            arm = team_b.skeleton()
            arm["spec"] = {"candidates": [{"name": "nsfw", "weight": 100}, {"name": "nsfw-v7", "weight": 20}]}
            team_b.apply(arm)
        return obj

    monkeypatch.setattr(router.client, "get", racing_get)
    router.rollback()
    monkeypatch.undo()
    assert len(reads) == 2  # the first write got a 409: the race happened

    obj = get(api, SELDON_EXPERIMENT, namespace)
    assert weights(obj) == {"nsfw": 100, "nsfw-v7": 20}
    assert ours(obj) == {"modelrollout.io/stable-model": "nsfw",
                         "modelrollout.io/model-versions": json.dumps({"nsfw": "6"})}

    # Restarted before the status write: the rollback runs again on a new router, with nothing recorded to go by.
    twice_is_once(api, SELDON_EXPERIMENT, namespace, SeldonExperimentRouter(api, namespace, NAME).rollback)
    assert get(api, SELDON_EXPERIMENT, namespace)["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    seldon_v2_reports(api, namespace)
    state = router.observe()
    assert state.canary_name is None and state.canary_weight is None
    assert "models ModelRollout does not manage carry weight: nsfw-v7" in state.message
    with pytest.raises(TargetStateError, match="does not manage: nsfw-v7"):
        router.stage(CANDIDATE_8, "6")
    assert weights(get(api, SELDON_EXPERIMENT, namespace)) == {"nsfw": 100, "nsfw-v7": 20}


@pytest.mark.integration
def test_a_rollback_that_races_no_one_still_removes_the_candidate(api: client.ApiClient, namespace: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A 409 from an unrelated edit (a label) while the candidate is still in the candidates: the model read on both
    reads is the candidate, and goes; only a model a read found absent is treated as someone else's."""
    create(api, SELDON_EXPERIMENT, namespace, GIT)
    router = SeldonExperimentRouter(api, namespace, NAME)
    router.stage(CANDIDATE_7, "6")
    router.set_weight(10)
    labeller = ObjectClient(api, SELDON_EXPERIMENT, namespace, NAME, field_manager="labeller")
    real_get = router.client.get
    reads: list[str] = []

    def racing_get() -> Obj:
        obj = real_get()
        reads.append(obj["metadata"]["resourceVersion"])
        if len(reads) == 1:
            body = labeller.skeleton()
            body["metadata"]["labels"] = {"touched": "yes"}
            labeller.apply(body)
        return obj

    monkeypatch.setattr(router.client, "get", racing_get)
    router.rollback()
    monkeypatch.undo()
    assert len(reads) == 2
    obj = get(api, SELDON_EXPERIMENT, namespace)
    assert weights(obj) == {"nsfw": 100}
    assert ours(obj) == {"modelrollout.io/stable-model": "nsfw",
                         "modelrollout.io/model-versions": json.dumps({"nsfw": "6"})}
