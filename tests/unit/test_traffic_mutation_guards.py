"""Rules of the traffic routers that the s23 mutation review showed no test held (each test fails on the mutant
named in its comment): API errors mapped to what the engine retries, one target kind, KServe readiness and staging
refusals, logger URLs relabelled on the way back, Seldon staging, restore and rollback records."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from seldon_fake import FakeObjectClient
from test_adapter_mutation_guards import _Refusing, router, staged_standard
from test_kserve_unpin import Kserve, candidate_serving
from test_traffic_kserve_status import KNATIVE_CONDITIONS, knative_isvc, rolled_out, standard_isvc
from test_traffic_seldon_rules import CANDIDATE_7, deployment_router, experiment_router, predictor, traffic, weights

from controller.api.spec import SeldonDeploymentTarget, TargetSpec
from controller.traffic import router_for
from controller.traffic.base import AccessDenied, CandidateModel, TargetStateError, TargetUnavailable
from controller.traffic.kserve import ANN_VERSION_URI, knative_state, knative_view, standard_state, standard_view
from controller.traffic.kube import INFERENCE_SERVICE, SELDON_DEPLOYMENT, ObjectClient, annotations_of
from controller.traffic.seldon import SeldonDeploymentRouter

LOGGER = "http://logger.ns/log?team=a&model_version=7"


# --- API errors --------------------------------------------------------------------------------------


def test_a_rate_limited_read_is_unavailable_and_retried() -> None:
    """K6: a 429 read as a plain error would fail the rollout on an API server under load."""
    objects = ObjectClient(client.ApiClient(), INFERENCE_SERVICE, "ns", "m")
    objects.custom = _Refusing(429)  # type: ignore[assignment]
    with pytest.raises(TargetUnavailable):
        objects.get()


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_write_reads_as_forbidden(status: int) -> None:
    """K5: the operator tells RBAC to fix, not a passing fault to retry."""
    objects = ObjectClient(client.ApiClient(), INFERENCE_SERVICE, "ns", "m")
    objects.custom = mock.Mock(api_client=client.ApiClient(), **{  # type: ignore[assignment]
        "patch_namespaced_custom_object.side_effect": ApiException(status=status, reason="refused")})
    with pytest.raises(AccessDenied) as refused:
        objects.apply({"metadata": {}})
    assert refused.value.reason == "Forbidden"


# --- router_for ----------------------------------------------------------------------------------------


def test_a_target_naming_two_kinds_is_refused() -> None:
    """F1: the first kind found would be driven, whichever the user meant."""
    with pytest.raises(ValueError, match="exactly one"):
        router_for({"kserve": {"inferenceService": "m"}, "seldonExperiment": {"name": "e"}}, "ns", client.ApiClient())


def test_a_parsed_seldon_target_keeps_its_stable_and_canary_predictors_apart() -> None:
    """F3: swapped, staging would overwrite the stable predictor with the candidate."""
    target = TargetSpec(seldon_deployment=SeldonDeploymentTarget("sd", stable_predictor="main", canary_predictor="c"))
    routed = router_for(target, "ns", client.ApiClient())
    assert isinstance(routed, SeldonDeploymentRouter)
    assert (routed.stable_predictor, routed.canary_predictor) == ("main", "c")


# --- KServe ----------------------------------------------------------------------------------------------


def test_knative_a_candidate_revision_not_yet_ready_is_not_a_ready_canary() -> None:
    """KS30: a KServe without PredictorConfigurationReady has only latestReadyRevision to say it."""
    obj = knative_isvc("s3://m/7", 0, {"latestCreatedRevision": "m-predictor-00002",
                                       "latestReadyRevision": "m-predictor-00001",
                                       "latestRolledoutRevision": "m-predictor-00001"})
    obj["status"]["conditions"] = [c for c in KNATIVE_CONDITIONS if c["type"] != "PredictorConfigurationReady"]
    state = knative_state("m", knative_view(obj, "m"))
    assert state.canary_name == "m-predictor-00002" and not state.canary_ready


@pytest.mark.parametrize("conditions", [[], [{"type": "PredictorReady", "status": "Unknown"}]])
def test_standard_stable_is_ready_only_when_kserve_says_so(conditions: list[dict[str, Any]]) -> None:
    """KS42: absent or Unknown is not ready (a new InferenceService, a controller that has not caught up)."""
    obj = staged_standard()
    obj["status"]["conditions"] = conditions
    assert not standard_state("m", standard_view(obj, "m")).ready


def test_standard_a_first_rollouts_stable_version_is_the_one_recorded_at_staging() -> None:
    """KS43: stable carries no version annotation before its first promotion; the canary entry recorded it."""
    assert standard_state("m", standard_view(staged_standard(), "m")).stable_version == "6"


def test_knative_staging_waits_until_kserve_has_processed_the_spec() -> None:
    """KS73: latestCreated/RolledOut may still describe the spec before the last write."""
    obj = rolled_out("s3://m/7")
    obj["metadata"]["generation"] = 6
    with pytest.raises(TargetStateError, match="has not processed") as refused:
        router()._knative_stage(knative_view(obj, "m"), CandidateModel("m", "8", "s3://m/8"), None)
    assert refused.value.reason == "Unavailable"


def test_knative_staging_refuses_a_canary_this_router_did_not_start() -> None:
    """KS75: annotations left by an earlier rollout (stable rev 1) must not pass for someone else's canary (rev 5
    beside rev 4): it would be replaced, and the stale stable recorded as the way back."""
    obj = knative_isvc("s3://other/x", 10, {"latestCreatedRevision": "m-predictor-00005",
                                            "latestReadyRevision": "m-predictor-00005",
                                            "latestRolledoutRevision": "m-predictor-00004"})
    with pytest.raises(TargetStateError, match="did not start"):
        router()._knative_stage(knative_view(obj, "m"), CandidateModel("m", "8", "s3://m/8"), None)


def test_knative_rollback_after_a_promotion_does_nothing() -> None:
    """KS60: the promoted candidate is stable now; only restore() (with the version to go back to) moves it."""
    kserve = Kserve()
    promoted = candidate_serving(kserve, after_promotion=True)
    writes = len(kserve.applied)
    promoted.rollback()
    assert len(kserve.applied) == writes


@pytest.mark.parametrize("stable", [None, CandidateModel("m", "6", "s3://m/6")])
def test_knative_a_withdrawal_relabels_the_logger_url_to_stables_version(stable: CandidateModel | None) -> None:
    """KS65: the copy of stable would count its predictions under the rejected version 7."""
    obj = knative_isvc("s3://m/7", 0, {"latestCreatedRevision": "m-predictor-00003",
                                       "latestReadyRevision": "m-predictor-00003",
                                       "latestRolledoutRevision": "m-predictor-00001"})
    obj["spec"]["predictor"]["logger"] = {"url": LOGGER}
    body = router()._knative_restore(knative_view(obj, "m"), stable)
    assert body["spec"]["predictor"]["logger"]["url"] == "http://logger.ns/log?team=a&model_version=6"


def test_standard_a_restore_relabels_the_logger_url_to_the_restored_version() -> None:
    """KS90: as above, for the predictor a Standard restore puts back."""
    obj = standard_isvc("s3://m/7")
    obj["spec"]["predictor"]["logger"] = {"url": LOGGER}
    body = router()._standard_restore(standard_view(obj, "m"), CandidateModel("m", "6", "s3://m/6"))
    assert body is not None
    assert body["spec"]["predictor"]["logger"]["url"] == "http://logger.ns/log?team=a&model_version=6"


# --- Seldon Core v1 ------------------------------------------------------------------------------------


def test_v1_staging_again_gives_stable_all_the_traffic() -> None:
    """S23: a new candidate over one of ours at 40% starts at 0 and stable must have the rest: traffic sums to 100."""
    staged, fake = deployment_router()  # candidate 7 at 40%
    staged.stage(CandidateModel("nsfw", "8", "s3://models/8"), "6")
    assert traffic(fake) == {"main": 100, "canary": 0}


def test_v1_staging_beside_a_stable_that_names_no_traffic_gives_it_100() -> None:
    """S23: a lone predictor may leave traffic out; beside a canary Seldon wants the two to sum to 100."""
    lone = predictor("main", 0, "s3://models/6")
    del lone["traffic"]
    sdep = SeldonDeploymentRouter(client.ApiClient(), "ns", "nsfw", "main", "canary")
    sdep.client = fake = FakeObjectClient(SELDON_DEPLOYMENT, {"spec": {"predictors": [lone]}})
    sdep.stage(CandidateModel("nsfw", "7", "s3://models/7"), "6")
    assert traffic(fake) == {"main": 100, "canary": 0}


def test_v1_a_restore_records_the_model_uri_of_the_version_it_writes() -> None:
    """S38: without it, a modelUri edited by hand later would still read as the restored version."""
    staged, fake = deployment_router()
    staged.promote()
    staged.restore(CandidateModel("nsfw", "6", "s3://models/6"))
    assert annotations_of(fake.obj)[ANN_VERSION_URI] == "s3://models/6"


# --- Seldon Core v2 ------------------------------------------------------------------------------------


def test_v2_with_no_stable_recorded_the_experiments_default_is_stable_whatever_the_weights() -> None:
    """S41: the default model is the one the experiment stands for; the heaviest is only the last resort."""
    experiment, _ = experiment_router([{"name": "ab", "weight": 60}, {"name": "nsfw", "weight": 40}])
    assert experiment.observe().stable_name == "nsfw"


def test_v2_staging_the_stable_model_as_its_own_candidate_is_refused() -> None:
    """S51: written, the stable model would get weight 0: an experiment with no traffic anywhere."""
    experiment, fake = experiment_router([{"name": "nsfw-v7", "weight": 100}], default="nsfw-v7")
    with pytest.raises(TargetStateError, match="is the stable model"):
        experiment.stage(CANDIDATE_7, "6")
    assert weights(fake) == {"nsfw-v7": 100} and not fake.applies


def test_v2_a_rollback_forgets_its_candidate_even_one_kept_as_the_default() -> None:
    """S59: the default stays among the candidates at 0; still recorded as the candidate, a later promote()
    would give the rejected model all the traffic."""
    experiment, fake = experiment_router([{"name": "nsfw", "weight": 100}])  # nsfw: the default
    experiment.stage(CANDIDATE_7, "6")
    experiment.promote()
    experiment.stage(CandidateModel("nsfw", "6", "s3://models/nsfw/6", serving_name="nsfw"))
    experiment.rollback()
    assert weights(fake) == {"nsfw-v7": 100, "nsfw": 0}
    assert experiment.observe().canary_name is None
