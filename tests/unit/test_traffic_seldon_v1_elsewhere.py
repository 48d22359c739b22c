"""Seldon Core v1: the candidate under another predictor name (the canary renamed by hand) keeps users on it; a
restore, like a rollback, takes them off (the predictor kept, at 0) and gives their share to stable. Promotion puts
the canary's model into stable's own graph."""

from __future__ import annotations

import copy

import pytest
from seldon_fake import FakeObjectClient
from test_traffic_seldon_v1_promote import STABLE_6, V7, sdep, staged_at_50

from controller.traffic.base import TargetStateError
from controller.traffic.seldon import ANN_MODEL_NODE


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


def od_ahead(fake: FakeObjectClient, classifier_uri: str | None = None) -> None:
    """An outlier detector (a model node of its own) added ahead of stable's classifier during the canary."""
    stable = fake.obj["spec"]["predictors"][0]
    classifier = stable["graph"]
    if classifier_uri is not None:
        classifier["modelUri"] = classifier_uri
    stable["graph"] = {"name": "od", "type": "TRANSFORMER", "implementation": "SKLEARN_SERVER",
                       "modelUri": "s3://models/od/1", "children": [classifier]}


def test_promotion_loads_the_candidate_into_the_node_loading_stables_model_not_one_added_ahead() -> None:
    """Review s26r3: an outlier detector added ahead of the classifier during the canary took the candidate's URI,
    the classifier stayed on the old version, and observe read the promotion as done. The classifier is the node
    loading the stable model the router recorded: it takes the candidate, the detector keeps its own."""
    router, fake, _, _ = staged_at_50(sdep())
    od_ahead(fake)
    router.promote()
    [stable] = [p for p in fake.obj["spec"]["predictors"] if p["name"] == "main"]
    assert (stable["graph"]["modelUri"], stable["graph"]["children"][0]["modelUri"]) == ("s3://models/od/1", V7)


def test_promotion_refused_when_a_node_was_added_ahead_and_no_node_loads_stables_model() -> None:
    """The classifier's model changed by hand too, and its name not recorded (staged before names were): which
    node is the canary's is unknown, nothing is written."""
    router, fake, _, _ = staged_at_50(sdep())
    od_ahead(fake, "s3://m/6-hotfix")
    del fake.obj["metadata"]["annotations"][ANN_MODEL_NODE]
    before = copy.deepcopy(fake.obj)
    with pytest.raises(TargetStateError, match=r"cannot promote: the model node of predictor main .* is 'od'"):
        router.promote()
    assert fake.obj == before


def test_promotion_loads_the_candidate_into_the_named_classifier_whose_model_was_changed_by_hand() -> None:
    """Session 38: the recorded name tells the classifier from a node added ahead even when its model was changed
    by hand during the canary: the promotion replaces that model, the detector keeps its own."""
    router, fake, _, _ = staged_at_50(sdep())
    od_ahead(fake, "s3://m/6-hotfix")
    router.promote()
    [stable] = [p for p in fake.obj["spec"]["predictors"] if p["name"] == "main"]
    assert (stable["graph"]["modelUri"], stable["graph"]["children"][0]["modelUri"]) == ("s3://models/od/1", V7)


def test_promotion_goes_on_when_stables_model_node_was_only_renamed() -> None:
    """Review s26final: a rename is an edit stable keeps; the node still loads the stable version's model."""
    router, fake, _, _ = staged_at_50(sdep())
    fake.obj["spec"]["predictors"][0]["graph"]["name"] = "classifier2"
    router.promote()
    [stable] = [p for p in fake.obj["spec"]["predictors"] if p["name"] == "main"]
    assert stable["graph"]["name"] == "classifier2" and stable["graph"]["modelUri"] == V7


def test_promotion_refused_when_the_canarys_model_was_changed_by_hand() -> None:
    """Review s38r2: the canary's classifier pointed at another model by hand (a detector put ahead of it too):
    stable would take a model nothing judged, recorded as version 7. Refused, nothing written."""
    router, fake, _, _ = staged_at_50(sdep())
    canary = fake.obj["spec"]["predictors"][1]
    classifier = canary["graph"]
    classifier["modelUri"] = "s3://m/hotfix"
    canary["graph"] = {"name": "od", "implementation": "SKLEARN_SERVER", "modelUri": "s3://models/od/1",
                       "children": [classifier]}
    before = copy.deepcopy(fake.obj)
    with pytest.raises(TargetStateError, match=r"cannot promote: the canary's model node 'clf' of .* loads "
                                               r"s3://m/hotfix, not the staged candidate's " + V7):
        router.promote()
    assert fake.obj == before
