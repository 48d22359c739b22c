"""Seldon Core v1: the candidate under another predictor name (the canary renamed by hand) keeps users on it; a
restore, like a rollback, takes them off (the predictor kept, at 0) and gives their share to stable. Promotion puts
the canary's model into stable's own graph."""

from __future__ import annotations

import copy

import pytest
from test_traffic_seldon_v1_promote import STABLE_6, V7, sdep, staged_at_50

from controller.traffic.base import TargetStateError


def test_restore_takes_users_off_the_candidate_under_another_name() -> None:
    router, fake, _, _ = staged_at_50(sdep())
    for predictor in fake.obj["spec"]["predictors"]:
        if predictor["name"] == "canary":
            predictor["name"] = "canary-b"
    assert router.observe().canary_weight == 50
    router.restore(STABLE_6)
    assert [(p["name"], p["traffic"], p["graph"]["modelUri"]) for p in fake.obj["spec"]["predictors"]] == [
        ("main", 100, "s3://m/6"), ("canary-b", 0, V7)]
    assert router.observe().canary_weight is None


def test_promotion_refused_when_stables_graph_no_longer_loads_a_model() -> None:
    """Stable takes only the canary's model, into its own model node: with none left (its graph replaced by hand),
    nothing is written rather than a graph that is neither stable's nor the canary's."""
    router, fake, _, _ = staged_at_50(sdep())
    fake.obj["spec"]["predictors"][0]["graph"] = {"name": "router", "implementation": "RANDOM_ABTEST"}
    before = copy.deepcopy(fake.obj)
    with pytest.raises(TargetStateError, match=r"cannot promote: predictor main of .* has no modelUri"):
        router.promote()
    assert fake.obj == before


def test_promotion_refused_when_a_model_node_was_added_ahead_of_the_canarys_in_stable() -> None:
    """Review s26r3: an outlier detector added ahead of the classifier during the canary took the candidate's URI,
    the classifier stayed on the old version, and observe read the promotion as done."""
    router, fake, _, _ = staged_at_50(sdep())
    stable = fake.obj["spec"]["predictors"][0]
    classifier = stable["graph"]
    stable["graph"] = {"name": "od", "type": "TRANSFORMER", "implementation": "SKLEARN_SERVER",
                       "modelUri": "s3://models/od/1", "children": [classifier]}
    before = copy.deepcopy(fake.obj)
    with pytest.raises(TargetStateError, match=r"cannot promote: the first model node of predictor main .* is 'od'"):
        router.promote()
    assert fake.obj == before


def test_promotion_goes_on_when_stables_model_node_was_only_renamed() -> None:
    """Review s26final: a rename is an edit stable keeps; the node still loads the stable version's model."""
    router, fake, _, _ = staged_at_50(sdep())
    fake.obj["spec"]["predictors"][0]["graph"]["name"] = "classifier2"
    router.promote()
    [stable] = [p for p in fake.obj["spec"]["predictors"] if p["name"] == "main"]
    assert stable["graph"]["name"] == "classifier2" and stable["graph"]["modelUri"] == V7
