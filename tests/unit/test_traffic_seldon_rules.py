"""The Seldon routers beside traffic they do not manage (a third v1 predictor, a v2 model they never wrote), and
the size of the v2 model-versions annotation, on an in-memory stand-in for the object client."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client
from seldon_fake import FakeObjectClient

from controller.devstack.seldon_standin import ModelEndpoint, SeldonExperimentStandIn, SeldonMesh
from controller.traffic.base import CandidateModel, TargetStateError
from controller.traffic.kube import SELDON_DEPLOYMENT, SELDON_EXPERIMENT
from controller.traffic.seldon import ANN_MODEL_VERSIONS, SeldonDeploymentRouter, SeldonExperimentRouter

Obj = dict[str, Any]


CANDIDATE_7 = CandidateModel("nsfw", "7", "s3://models/nsfw/7")


def experiment_router(candidates: list[Obj], default: str = "nsfw") -> tuple[SeldonExperimentRouter,
                                                                               FakeObjectClient]:
    router = SeldonExperimentRouter(client.ApiClient(), "ns", "nsfw")
    fake = FakeObjectClient(SELDON_EXPERIMENT, {"spec": {"default": default, "candidates": candidates}})
    router.client = fake
    router._mesh_url = lambda: "http://seldon-mesh.ns.svc.cluster.local"  # type: ignore[method-assign]
    return router, fake


def weights(fake: FakeObjectClient) -> dict[str, int]:
    return {c["name"]: c["weight"] for c in fake.obj["spec"]["candidates"]}


def share(fake: FakeObjectClient, model: str) -> float:
    return weights(fake).get(model, 0) / sum(weights(fake).values())


def hand_edit(fake: FakeObjectClient, new: dict[str, int]) -> None:
    fake.obj["spec"]["candidates"] = [{"name": n, "weight": w} for n, w in new.items()]
    fake.obj["metadata"]["resourceVersion"] = str(int(fake.obj["metadata"]["resourceVersion"]) + 1)


# --- Seldon Core v2 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("edited", "after"), [
    ({"nsfw": 50, "nsfw-v7": 40, "fraud-ab": 10}, {"nsfw": 90, "fraud-ab": 10}),  # stable lowered by hand
    ({"nsfw": 60, "nsfw-v7": 40, "fraud-ab": 10}, {"nsfw": 100, "fraud-ab": 10}),  # added on top
])
def test_v2_rollback_beside_a_foreign_model_takes_the_candidate_out_and_leaves_its_share(
        edited: dict[str, int], after: dict[str, int]) -> None:
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    router.stage(CANDIDATE_7, "6")
    router.set_weight(40, "7")
    hand_edit(fake, edited)  # another team's A/B model
    foreign_share = share(fake, "fraud-ab")
    router.rollback()
    assert weights(fake) == after
    assert share(fake, "fraud-ab") == pytest.approx(foreign_share)
    state = router.observe()
    assert not state.canary_staged and not state.canary_weight  # the engine sees the withdrawal done
    assert "models ModelRollout does not manage carry weight: fraud-ab" in state.message
    writes = len(fake.applies)
    router.rollback()
    assert len(fake.applies) == writes  # done already: nothing written


def test_v2_observe_reads_the_candidates_own_weight_beside_a_foreign_model() -> None:
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    router.stage(CANDIDATE_7, "6")
    hand_edit(fake, {"nsfw": 90, "nsfw-v7": 0, "fraud-ab": 10})
    assert router.observe().canary_weight == 0
    hand_edit(fake, {"nsfw": 50, "nsfw-v7": 40, "fraud-ab": 10})
    assert router.observe().canary_weight == 40
    # A model this router wrote still counts, with its candidate annotation removed by hand: rollback takes it out.
    del fake.obj["metadata"]["annotations"]["modelrollout.io/candidate-model"]
    assert router.observe().canary_weight == 40
    router.rollback()
    assert weights(fake) == {"nsfw": 90, "fraud-ab": 10}


def test_v2_stage_still_refuses_beside_a_weighted_foreign_model() -> None:
    router, fake = experiment_router([{"name": "nsfw", "weight": 90}, {"name": "fraud-ab", "weight": 10}])
    with pytest.raises(TargetStateError, match="models ModelRollout does not manage: fraud-ab"):
        router.stage(CANDIDATE_7, "6")
    assert fake.applies == []


def test_v2_set_weight_refuses_beside_a_foreign_model_added_after_staging() -> None:
    # Stable 100-N and candidate N beside fraud-ab's 10 give the candidate N/110, never N: the engine would resend
    # the step until its deadline.
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    router.stage(CANDIDATE_7, "6")
    router.set_weight(10, "7")
    hand_edit(fake, {"nsfw": 90, "nsfw-v7": 10, "fraud-ab": 10})
    before, writes = copy.deepcopy(fake.obj["spec"]), len(fake.applies)
    with pytest.raises(TargetStateError, match=r"cannot set the candidate to 25%: .* does not manage: "
                                               r"fraud-ab \(weight 10\)"):
        router.set_weight(25, "7")
    assert fake.obj["spec"] == before and len(fake.applies) == writes
    router.rollback()  # users still get off the candidate, fraud-ab keeps its weight
    assert weights(fake) == {"nsfw": 100, "fraud-ab": 10}


def test_v2_set_weight_beside_a_foreign_model_at_weight_0_goes_ahead() -> None:
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    router.stage(CANDIDATE_7, "6")
    hand_edit(fake, {"nsfw": 100, "nsfw-v7": 0, "fraud-ab": 0})  # it takes no users
    router.set_weight(25, "7")
    assert weights(fake) == {"nsfw": 75, "nsfw-v7": 25, "fraud-ab": 0}
    assert router.observe().canary_weight == 25


STABLE_6 = CandidateModel("nsfw", "6", "s3://models/nsfw/6", serving_name="nsfw")


@pytest.mark.parametrize(("edited", "after"), [
    ({"nsfw": 0, "nsfw-v7": 80, "fraud-ab": 20}, {"nsfw": 80, "fraud-ab": 20}),
    ({"nsfw": 0, "nsfw-v7": 100, "fraud-ab": 0}, {"nsfw": 100, "fraud-ab": 0}),  # at 0 it takes no users
])
def test_v2_restore_beside_a_foreign_model_moves_only_its_own_models(edited: dict[str, int],
                                                                     after: dict[str, int]) -> None:
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    router.stage(CANDIDATE_7, "6")
    router.promote()
    hand_edit(fake, edited)  # another team splits the promoted model's traffic
    router.restore(STABLE_6)
    assert weights(fake) == after
    state = router.observe()
    assert state.stable_version == "6" and not state.canary_weight
    spec = copy.deepcopy(fake.obj["spec"])
    router.restore(STABLE_6)
    assert fake.obj["spec"] == spec


def test_v2_model_versions_keeps_only_the_models_it_may_need() -> None:
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    for version in range(7, 40):
        router.stage(CandidateModel("nsfw", str(version), f"s3://models/nsfw/{version}"), "6")
        router.set_weight(10, str(version))
        (router.promote if version % 2 else router.rollback)()
    versions = json.loads(fake.obj["metadata"]["annotations"][ANN_MODEL_VERSIONS])
    assert versions == {"nsfw": "6", "nsfw-v37": "37", "nsfw-v39": "39"}  # the default, the old and new stable
    # The promoted-over stable stays named, so a restore finds the Model it was served by.
    router.restore(CandidateModel("nsfw", "37", "s3://models/nsfw/37"))
    assert weights(fake) == {"nsfw": 0, "nsfw-v37": 100}
    assert json.loads(fake.obj["metadata"]["annotations"][ANN_MODEL_VERSIONS]) == {"nsfw": "6", "nsfw-v37": "37"}


def test_v2_a_promoted_over_stable_with_its_own_name_is_restored_by_that_name() -> None:
    router, fake = experiment_router([{"name": "nsfw", "weight": 0}, {"name": "nsfw-prod", "weight": 100}])
    fake.obj["metadata"]["annotations"] = {"modelrollout.io/stable-model": "nsfw-prod"}
    router.stage(CANDIDATE_7, "6")
    router.promote()
    assert weights(fake) == {"nsfw": 0, "nsfw-v7": 100}
    router.restore(CandidateModel("nsfw", "6", "s3://models/nsfw/6"))
    assert weights(fake) == {"nsfw": 0, "nsfw-prod": 100}


MIRRORED = r"mirrors nsfw-v7, the candidate's Model: remove the mirror first \(Seldon refuses a model that is both"


def test_v2_stage_refuses_an_experiment_that_mirrors_the_candidate() -> None:
    # The team shadow-tested nsfw-v7 before rolling version 7 out: Seldon would refuse the experiment and keep the old.
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    fake.obj["spec"]["mirror"] = {"name": "nsfw-v7", "percent": 100}
    before = copy.deepcopy(fake.obj)
    with pytest.raises(TargetStateError, match=MIRRORED):
        router.stage(CANDIDATE_7, "6")
    assert fake.obj == before and fake.applies == []


def test_v2_set_weight_promote_and_restore_refuse_a_mirror_among_the_candidates_and_rollback_goes_ahead() -> None:
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    router.stage(CANDIDATE_7, "6")
    fake.obj["spec"]["mirror"] = {"name": "nsfw-v7", "percent": 100}  # added after staging
    before, writes = copy.deepcopy(fake.obj), len(fake.applies)
    with pytest.raises(TargetStateError, match=MIRRORED):
        router.set_weight(25, "7")
    with pytest.raises(TargetStateError, match=MIRRORED):
        router.promote()
    assert fake.obj == before and len(fake.applies) == writes
    router.rollback()  # users get off the candidate whatever the mirror: the experiment left is valid
    assert weights(fake) == {"nsfw": 100}
    # After a promotion, the Model a restore would put back is mirrored.
    router, fake = experiment_router([{"name": "nsfw", "weight": 0}, {"name": "nsfw-prod", "weight": 100}])
    fake.obj["metadata"]["annotations"] = {"modelrollout.io/stable-model": "nsfw-prod"}
    router.stage(CANDIDATE_7, "6")
    router.promote()
    fake.obj["spec"]["mirror"] = {"name": "nsfw-prod", "percent": 10}
    before, writes = copy.deepcopy(fake.obj), len(fake.applies)
    with pytest.raises(TargetStateError, match="mirrors nsfw-prod, a Model among its candidates: remove the mirror"):
        router.restore(CandidateModel("nsfw", "6", "s3://models/nsfw/6"))
    assert fake.obj == before and len(fake.applies) == writes


def offline_standin(obj: Obj) -> tuple[SeldonExperimentStandIn, SeldonMesh]:
    """The v2 stand-in reconciling `obj` in memory (its status written back into it), every Model available, and
    its mesh never started: its routes are all a test reads."""
    def write(_: Obj, status: Obj) -> None:
        obj["status"] = copy.deepcopy(status)
    standin = SeldonExperimentStandIn(client.ApiClient(), models=lambda ns, m: ModelEndpoint("http://127.0.0.1:1", m))
    mesh = SeldonMesh("ns", standin.models)
    standin.mesh = lambda namespace: mesh  # type: ignore[method-assign]
    standin._get = lambda namespace, name: copy.deepcopy(obj)  # type: ignore[method-assign]
    standin._write_status = write  # type: ignore[method-assign]
    return standin, mesh


@pytest.mark.parametrize(("spec", "refusal"), [
    ({"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}, {"name": "nsfw-v7", "weight": 0}],
      "mirror": {"name": "nsfw-v7", "percent": 100}},
     "each candidate and mirror must be unique but found resource nsfw-v7 duplicated in experiment nsfw"),
    ({"default": "nsfw", "candidates": [{"name": "nsfw-v7", "weight": 100}]},
     "default model/pipeline nsfw not found in experiment nsfw candidates"),
], ids=["mirror-is-a-candidate", "default-not-a-candidate"])
def test_v2_standin_refuses_what_seldon_refuses_and_keeps_the_experiment_it_started(spec: Obj, refusal: str) -> None:
    obj: Obj = {"metadata": {"name": "nsfw", "namespace": "ns"},
                "spec": {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}]}}
    standin, mesh = offline_standin(obj)
    standin.reconcile("ns", "nsfw")
    started = copy.deepcopy(mesh.experiments["nsfw"])
    assert started.active and started.candidates == [("nsfw", 100)]
    ready = {c["type"]: c for c in obj["status"]["conditions"]}
    obj["spec"] = spec
    standin.reconcile("ns", "nsfw")
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    model_ready = conditions.pop("ModelReady")  # where Seldon's operator records the scheduler's error
    assert (model_ready["status"], model_ready["reason"]) == ("False", refusal)
    assert conditions == ready and ready["Ready"]["status"] == "True"  # Ready, CandidatesReady... as they were
    assert mesh.experiments["nsfw"] == started  # still serving the experiment last started
    assert mesh.choose("nsfw") == "nsfw"


# --- Seldon Core v1 ----------------------------------------------------------------------------------


def predictor(name: str, traffic: int, uri: str) -> Obj:
    return {"name": name, "traffic": traffic,
            "graph": {"name": "classifier", "implementation": "SKLEARN_SERVER", "modelUri": uri}}


def deployment_router() -> tuple[SeldonDeploymentRouter, FakeObjectClient]:
    router = SeldonDeploymentRouter(client.ApiClient(), "ns", "nsfw", "main", "canary")
    fake = FakeObjectClient(SELDON_DEPLOYMENT, {"spec": {"predictors": [predictor("main", 100, "s3://models/6")]}})
    router.client = fake
    router.stage(CandidateModel("nsfw", "7", "s3://models/7"), "6")
    router.set_weight(40, "7")
    return router, fake


def traffic(fake: FakeObjectClient) -> dict[str, int]:
    return {p["name"]: p.get("traffic", 0) for p in fake.obj["spec"]["predictors"] if not p.get("shadow")}


def add_predictor(fake: FakeObjectClient, main: int, **others: int) -> None:
    predictors = fake.obj["spec"]["predictors"]
    predictors[0]["traffic"] = main
    predictors += [predictor(name, weight, f"s3://other/{name}") for name, weight in others.items()]
    predictors.append({**predictor("mirror", 0, "s3://other/mirror"), "shadow": True})  # a shadow takes none


def test_v1_set_weight_refuses_beside_an_unmanaged_predictor() -> None:
    router, fake = deployment_router()
    add_predictor(fake, 50, ab=10)
    before = copy.deepcopy(fake.obj["spec"])
    with pytest.raises(TargetStateError, match=r"cannot set the canary to 60%: .* does not manage: ab \(10%\)"):
        router.set_weight(60, "7")
    assert fake.obj["spec"] == before


def test_v1_rollback_beside_an_unmanaged_predictor_keeps_the_sum_at_100() -> None:
    router, fake = deployment_router()
    add_predictor(fake, 50, ab=10)
    router.rollback()
    assert traffic(fake) == {"main": 90, "ab": 10}
    router.rollback()  # nothing staged any more
    assert traffic(fake) == {"main": 90, "ab": 10}


def test_v1_rollback_says_why_when_no_split_can_sum_to_100() -> None:
    router, fake = deployment_router()
    add_predictor(fake, 0, ab=70, cd=40)
    before = copy.deepcopy(fake.obj["spec"])
    with pytest.raises(TargetStateError, match=r"cannot roll back .* carry 110% traffic \(ab 70%, cd 40%\), more "
                                               r"than 100.*canary predictor canary stays"):
        router.rollback()
    assert fake.obj["spec"] == before


def test_v1_promote_and_restore_beside_an_unmanaged_predictor_keep_the_sum_at_100() -> None:
    """A predictor given traffic by hand mid-rollout keeps its share through a promotion and a bake's restore."""
    router, fake = deployment_router()
    add_predictor(fake, 50, ab=10)
    router.promote()
    assert traffic(fake) == {"main": 90, "ab": 10}
    router.restore(CandidateModel("nsfw", "6", "s3://models/6"))
    assert traffic(fake) == {"main": 90, "ab": 10}
    fake.obj["spec"]["predictors"][1]["traffic"] = 110
    before = copy.deepcopy(fake.obj["spec"])
    with pytest.raises(TargetStateError, match=r"cannot restore .* carry 110% traffic \(ab 110%\).*stable keeps"):
        router.restore(CandidateModel("nsfw", "5", "s3://models/5"))
    assert fake.obj["spec"] == before


FOREIGN_CANARY = (r"predictor canary of .* exists and was not written by ModelRollout; choose another "
                  r"spec\.target\.seldonDeployment\.canaryPredictor")


@pytest.mark.parametrize("theirs", [
    {**predictor("canary", 25, "s3://team/ab-experiment"), "replicas": 3},  # Seldon's own canary example
    {**predictor("canary", 100, "s3://team/shadow"), "shadow": True},
], ids=["their-canary", "their-shadow"])
def test_v1_a_canary_predictor_it_did_not_write_is_refused_and_left_alone(theirs: Obj) -> None:
    router = SeldonDeploymentRouter(client.ApiClient(), "ns", "nsfw", "main", "canary")
    main = predictor("main", 100 - (0 if theirs.get("shadow") else theirs["traffic"]), "s3://models/6")
    fake = FakeObjectClient(SELDON_DEPLOYMENT, {"spec": {"predictors": [main, theirs]}})
    router.client = fake
    before = copy.deepcopy(fake.obj)
    with pytest.raises(TargetStateError, match=FOREIGN_CANARY):
        router.stage(CandidateModel("nsfw", "7", "s3://models/7"), "6")
    for version in ("7", None):
        with pytest.raises(TargetStateError, match=FOREIGN_CANARY):
            router.set_weight(50, version)
    with pytest.raises(TargetStateError, match="no candidate is staged"):
        router.promote()
    assert fake.obj == before and fake.applies == []
    state = router.observe()  # not the candidate, but users on it are not on stable
    assert state.canary_name is None and not state.canary_staged
    shadow = bool(theirs.get("shadow"))
    assert state.canary_weight == (None if shadow else 25)
    router.rollback()  # not the router's to remove: kept, with its users back on stable
    if shadow:
        assert fake.obj == before and fake.applies == []
    else:
        kept = fake.obj["spec"]["predictors"][1]
        assert traffic(fake) == {"main": 100, "canary": 0}
        assert kept["graph"]["modelUri"] == "s3://team/ab-experiment" and kept["replicas"] == 3
        assert router.observe().canary_weight is None


def test_v1_a_rollback_takes_users_off_a_canary_whose_record_was_removed_by_hand() -> None:
    router, fake = deployment_router()
    router.stage(CandidateModel("nsfw", "7", "s3://models/7"), "6")
    router.set_weight(40, "7")
    annotations = fake.obj["metadata"]["annotations"]
    for key in [key for key in annotations if "candidate" in key]:
        del annotations[key]  # a hand edit, or a replace from a manifest without them
    state = router.observe()
    assert state.canary_weight == 40 and "was not written by ModelRollout" in state.message
    router.rollback()
    assert traffic(fake) == {"main": 100, "canary": 0}
    assert router.observe().canary_weight is None  # the engine's "traffic back on stable" holds only now
    router.restore(CandidateModel("nsfw", "6", "s3://models/6"))
    assert traffic(fake) == {"main": 100, "canary": 0}  # a restore keeps it off too, never deletes it


def test_v1_stage_replaces_its_own_canary_but_not_one_whose_model_changed_by_hand() -> None:
    router, fake = deployment_router()
    router.stage(CandidateModel("nsfw", "8", "s3://models/8"), "6")  # its own canary: replaced
    canary = fake.obj["spec"]["predictors"][1]
    assert canary["graph"]["modelUri"] == "s3://models/8" and canary["traffic"] == 0
    canary["graph"]["modelUri"] = "s3://team/hotfix"
    before = copy.deepcopy(fake.obj)
    with pytest.raises(TargetStateError, match=r"predictor canary of .* exists and was not written by ModelRollout as "
                                               r"it stands \(modelUri changed outside ModelRollout: predictor canary "
                                               r"loads s3://team/hotfix"):
        router.stage(CandidateModel("nsfw", "9", "s3://models/9"), "6")
    assert fake.obj == before
    router.rollback()  # still its canary to take traffic off
    assert traffic(fake) == {"main": 100}


def test_v1_messages_name_model_uris_without_their_secrets() -> None:
    """The refusals reach status, the log and the TargetReady condition: a modelUri's token must not."""
    router, fake = deployment_router()
    fake.obj["spec"]["predictors"][0]["graph"]["modelUri"] = "https://u:TOKEN1@h.example/m/6?sig=SIG1"
    with pytest.raises(TargetStateError) as same:
        router.stage(CandidateModel("nsfw", "7", "https://u:TOKEN1@h.example/m/6?sig=SIG1"), "6")
    assert "https://h.example/m/6?<redacted>" in str(same.value)
    router.stage(CandidateModel("nsfw", "8", "https://u:TOKEN2@h.example/m/8?sig=SIG2"), "6")
    fake.obj["spec"]["predictors"][1]["graph"]["modelUri"] = "https://u:TOKEN3@h.example/hotfix?sig=SIG3"
    with pytest.raises(TargetStateError) as changed:
        router.stage(CandidateModel("nsfw", "9", "s3://models/9"), "6")
    message = f"{same.value} {changed.value}"
    assert "modelUri changed outside ModelRollout" in message and "h.example/hotfix?<redacted>" in message, message
    assert not any(secret in message for secret in ("TOKEN", "SIG1", "SIG2", "SIG3")), message
