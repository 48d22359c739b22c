"""What RolloutRuntime asks of the router for the engine's traffic actions, and what it reports back.

- A canary step of 0% sets the weight; only the engine's rollback withdraws the candidate (a step at 0% that
  withdrew it never confirmed, and the good candidate was rolled back at progressDeadline).
- A step's weight goes only to this rollout's candidate: a second rollout on the same target that staged its
  own is refused by every router, naming both versions.
- An InferenceService the router can never drive (custom container, ModelMesh) reaches the engine as a target
  error with the reason, not as "not synced yet" for 30 minutes.
- A model name that would change how a models:/ storage URI parses ('?', '#', '/') is refused when staging, as
  the action's error: the serving system is never handed a URI naming another model.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from mlflow.store.artifact.utils.models import _parse_model_uri
from test_engine_support import World, spec_dict

from controller.api.commands import CommandAction
from controller.api.spec import parse_spec
from controller.api.status import ModelRolloutStatus, Phase, VersionRef
from controller.engine import AdapterErrorKind, SetCanaryWeight, StageCandidate, UnstageCandidate
from controller.operator.runtime import OperatorConfig, RolloutRuntime, fill_storage_uri
from controller.traffic.base import TargetStateError
from controller.traffic.kserve import (
    ANN_STABLE_REVISION,
    ANN_STABLE_URI,
    ANN_STABLE_VERSION,
    ANN_VERSION,
    ANN_VERSION_URI,
    DEPLOYMENT_MODE_ANNOTATION,
    KServeRouter,
)
from controller.traffic.seldon import (
    ANN_CANDIDATE_MODEL,
    ANN_CANDIDATE_URI,
    ANN_CANDIDATE_VERSION,
    ANN_MODEL_VERSIONS,
    ANN_STABLE_MODEL,
    SeldonDeploymentRouter,
    SeldonExperimentRouter,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
Obj = dict[str, Any]


def runtime_with(router: Any) -> RolloutRuntime:
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["namespace"] = "ns"
    runtime = RolloutRuntime(obj, parse_spec(obj["spec"]), client.ApiClient(), OperatorConfig())
    runtime.router = router
    return runtime


class RecordingRouter:
    target = "InferenceService ns/m"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def set_weight(self, percent: int, candidate_version: str | None = None) -> None:
        self.calls.append(("set_weight", percent, candidate_version))

    def rollback(self) -> None:
        self.calls.append(("rollback",))


def fake_store(router: Any, obj: Obj) -> list[Obj]:
    """The router reads `obj` and records what it applies (no API server)."""
    applied: list[Obj] = []
    router.client.get = router.client.get_or_none = lambda: copy.deepcopy(obj)
    router.client.apply = lambda body, force=True: applied.append(body) or body
    return applied


# --- a step of 0% is a weight, the rollback withdraws ------------------------------------------------


class LaggingWorld(World):
    """From the gate's answer on, KServe lags a generation: the runtime observes no target (not synced)."""

    lagging = False

    def observe(self, *args: Any, **kwargs: Any) -> Any:
        observations = super().observe(*args, **kwargs)
        self.lagging = self.lagging or observations.gate is not None
        return dataclasses.replace(observations, target=None) if self.lagging else observations


def engine_weight_actions() -> list[SetCanaryWeight]:
    """The SetCanaryWeight actions the engine itself sends: a step at 0% (sent, as the weight 0 left by
    staging is not seen while the target lags), a step at 10%, then a requested rollback."""
    steps = [{"setWeight": 0}, {"analysis": {"duration": "10m"}}, {"setWeight": 10}, {"analysis": {"duration": "10m"}}]
    world = LaggingWorld(spec=spec_dict(canary={"steps": steps}))
    world.run_until(lambda w: any(isinstance(a, SetCanaryWeight) for a in w.executed))
    world.lagging = False
    world.run_until(lambda w: w.target.canary_weight == 10)  # traffic to take back
    world.send(CommandAction.ROLLBACK)
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    return [a for a in world.executed if isinstance(a, SetCanaryWeight)]


def test_a_step_at_zero_sets_the_weight_and_only_the_rollback_withdraws() -> None:
    actions = engine_weight_actions()
    step = next(a for a in actions if ":step-" in a.id)
    rollback = next(a for a in actions if ":rollback:" in a.id)
    assert step.weight == rollback.weight == 0
    router = RecordingRouter()
    runtime = runtime_with(router)
    runtime.act(step, ModelRolloutStatus())
    runtime.act(rollback, ModelRolloutStatus())
    # The typed signal, whatever the id says; and a candidate that never became ready.
    runtime.act(SetCanaryWeight(id="2:anything", candidate_version="7", weight=0, withdraw=True), ModelRolloutStatus())
    runtime.act(UnstageCandidate(id="2:rollback:unstage", candidate_version="7"), ModelRolloutStatus())
    assert router.calls == [("set_weight", 0, "7"), ("rollback",), ("rollback",), ("rollback",)]


# --- a step's weight goes only to this rollout's candidate -------------------------------------------


def knative_staged(version: str, uri: str, recorded_uri: str | None = None) -> Obj:
    annotations = {DEPLOYMENT_MODE_ANNOTATION: "Serverless", ANN_VERSION: version,
                   ANN_VERSION_URI: recorded_uri or uri, ANN_STABLE_VERSION: "6", ANN_STABLE_URI: "s3://m/6",
                   ANN_STABLE_REVISION: "m-predictor-00001"}
    return {"metadata": {"name": "m", "namespace": "ns", "resourceVersion": "5", "annotations": annotations},
            "spec": {"predictor": {"canaryTrafficPercent": 0, "model": {"storageUri": uri}}}}


def standard_staged(version: str, uri: str, recorded_uri: str | None = None) -> Obj:
    canary = {"name": f"v{version}", "model": {"storageUri": uri},
              "annotations": {ANN_VERSION: version, ANN_VERSION_URI: recorded_uri or uri, ANN_STABLE_URI: "s3://m/6"}}
    return {"metadata": {"name": "m", "namespace": "ns", "resourceVersion": "5",
                         "annotations": {DEPLOYMENT_MODE_ANNOTATION: "Standard"}},
            "spec": {"predictor": {"model": {"storageUri": "s3://m/6"}},
                     "canary": [{"trafficPercent": 0, "predictor": canary}]}}


def seldon_v1_staged(version: str, uri: str, recorded_uri: str | None = None) -> Obj:
    predictors = [{"name": "main", "traffic": 100, "graph": {"name": "clf", "modelUri": "s3://m/6"}},
                  {"name": "canary", "traffic": 0, "graph": {"name": "clf", "modelUri": uri}}]
    annotations = {ANN_CANDIDATE_VERSION: version, ANN_CANDIDATE_URI: recorded_uri or uri}
    return {"metadata": {"name": "m", "namespace": "ns", "resourceVersion": "5", "annotations": annotations},
            "spec": {"predictors": predictors}}


def seldon_v2_staged(version: str, uri: str, recorded_uri: str | None = None) -> Obj:
    model = uri.rsplit("/", 1)[-1]  # the Seldon Model's name
    versions = {"m-v6": "6"} if recorded_uri else {"m-v6": "6", model: version}  # recorded_uri: no record
    annotations = {ANN_STABLE_MODEL: "m-v6", ANN_CANDIDATE_MODEL: model, ANN_MODEL_VERSIONS: json.dumps(versions)}
    return {"metadata": {"name": "m", "namespace": "ns", "resourceVersion": "5", "annotations": annotations},
            "spec": {"default": "m-v6", "candidates": [{"name": "m-v6", "weight": 100}, {"name": model, "weight": 0}]}}


ROUTERS = {
    "knative": (lambda: KServeRouter(client.ApiClient(), "ns", "m"), knative_staged),
    "standard": (lambda: KServeRouter(client.ApiClient(), "ns", "m"), standard_staged),
    "seldon-v1": (lambda: SeldonDeploymentRouter(client.ApiClient(), "ns", "m", "main", "canary"), seldon_v1_staged),
    "seldon-v2": (lambda: SeldonExperimentRouter(client.ApiClient(), "ns", "m"), seldon_v2_staged),
}


@pytest.mark.parametrize("kind", ROUTERS)
def test_a_step_moves_traffic_only_to_this_rollouts_candidate(kind: str) -> None:
    make_router, staged = ROUTERS[kind]
    step = SetCanaryWeight(id="1:step-2:weight-50", candidate_version="7", weight=50)
    # Another rollout on the same target replaced candidate 7 by its own, ungated 8.
    router = make_router()
    applied = fake_store(router, staged("8", "s3://m/m-v8"))
    with pytest.raises(TargetStateError, match="candidate version 8 staged, not 7"):
        runtime_with(router).act(step, ModelRolloutStatus())
    assert applied == []
    # A candidate whose version cannot be told: refused too.
    router = make_router()
    applied = fake_store(router, staged("7", "s3://m/m-v7", recorded_uri="s3://m/other"))
    with pytest.raises(TargetStateError, match="version is unknown"):
        runtime_with(router).act(step, ModelRolloutStatus())
    assert applied == []
    # Its own candidate takes the weight.
    router = make_router()
    applied = fake_store(router, staged("7", "s3://m/m-v7"))
    runtime_with(router).act(step, ModelRolloutStatus())
    assert len(applied) == 1 and "50" in json.dumps(applied[0]["spec"])


# --- an InferenceService that can never be driven says why -------------------------------------------


def custom_container() -> Obj:
    return {"metadata": {"name": "m", "namespace": "ns", "resourceVersion": "1", "generation": 1,
                         "annotations": {DEPLOYMENT_MODE_ANNOTATION: "Serverless"}},
            "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "x"}]}}}


def model_mesh() -> Obj:
    obj = knative_staged("7", "s3://m/7")
    obj["metadata"]["annotations"] = {DEPLOYMENT_MODE_ANNOTATION: "ModelMesh"}
    return obj


@pytest.mark.parametrize(("obj", "reason"), [(custom_container(), "custom containers are not supported"),
                                             (model_mesh(), "ModelMesh InferenceServices have no canary support")])
def test_an_unsupported_inference_service_is_a_target_error_naming_the_reason(obj: Obj, reason: str) -> None:
    router = KServeRouter(client.ApiClient(), "ns", "m")
    fake_store(router, obj)
    observation, _ = runtime_with(router).observe_target()
    assert observation is not None and observation.error is not None
    assert observation.error.kind is AdapterErrorKind.INVALID and reason in observation.error.message

    # What the rollout shows: the reason, at once (it used to say "not observed yet" for 30 minutes).
    class Unsupported(World):
        def observe(self, *args: Any, **kwargs: Any) -> Any:
            return dataclasses.replace(super().observe(*args, **kwargs), target=observation)

    world = Unsupported()
    world.reconcile()
    world.advance(dt.timedelta(seconds=1))
    world.reconcile()
    assert reason in world.status.message


def test_a_mode_kserve_has_not_reported_yet_is_still_only_not_synced() -> None:
    router = KServeRouter(client.ApiClient(), "ns", "m")
    obj = knative_staged("7", "s3://m/7")
    obj["metadata"]["annotations"].pop(DEPLOYMENT_MODE_ANNOTATION)  # and no status.deploymentMode yet
    fake_store(router, obj)
    observation, state = runtime_with(router).observe_target()
    assert observation is None and state is not None and not state.synced
    assert "cannot tell the deployment mode" in state.message


# --- the model name in a models:/ storage URI ----------------------------------------------------------


MODELS_URI = "models:/{name}/{version}"


@pytest.mark.parametrize(("name", "breaker"), [("fraud?v2", "?"), ("fraud/v2", "/")])
def test_a_name_that_changes_how_a_models_uri_parses_is_refused_naming_it(name: str, breaker: str) -> None:
    with pytest.raises(ValueError) as caught:
        fill_storage_uri(MODELS_URI, name=name, version="7", source="s3://b/m", run_id="r")
    message = str(caught.value)
    assert message.startswith(f"spec.model.name {name!r} cannot go into the models:/ URI of the operator's "
                              f"--storage-uri-template {MODELS_URI!r}: its {breaker!r} "), message
    # A template that leaves the name out: a version's source may be a models:/ URI of its own.
    assert fill_storage_uri("{source}", name=name, version="7", source="models:/m-0123", run_id="") == "models:/m-0123"


@pytest.mark.parametrize("template", ["s3://models/{name}/{version}", "S3://b/{name}/{version}",
                                      "http://models:8080/{name}/{version}",
                                      "https://models.example.com/{name}/{version}/model.joblib"])
@pytest.mark.parametrize(("name", "breaker", "meaning"), [("fraud?v2", "?", "starts the URI's query"),
                                                          ("fraud#v2", "#", "starts the URI's fragment")])
def test_a_name_that_cuts_the_path_of_another_uri_is_refused_naming_it(template: str, name: str, breaker: str,
                                                                        meaning: str) -> None:
    """A storage initializer's URL parser ends the path at '?' or '#': s3://models/fraud?v2/7 is the prefix
    models/fraud, another model's objects."""
    with pytest.raises(ValueError) as caught:
        fill_storage_uri(template, name=name, version="7", source="", run_id="")
    assert str(caught.value) == (
        f"spec.model.name {name!r} cannot go into the URI of the operator's --storage-uri-template {template!r}: "
        f"its {breaker!r} {meaning}, so the serving system would load another model; register the model under a "
        "name without '?' or '#'")


@pytest.mark.parametrize("name", ["fraud v2", "Betrugserkennung-üß", "fr@ud_v2.1", "fraud%3Fv2"])
def test_an_ordinary_name_fills_another_uri_unchanged(name: str) -> None:
    assert fill_storage_uri("s3://models/{name}/{version}", name=name, version="7", source="", run_id="") \
        == f"s3://models/{name}/7"


@pytest.mark.parametrize("template", ["/mnt/models/{name}/{version}", "pvc://models/{name}/{version}",
                                      "file:///models/{name}/{version}", "gs://b/{name}/{version}"])
def test_a_name_is_only_text_where_the_uri_is_split_as_a_string(template: str) -> None:
    """Review s37r2: KServe splits pvc://, file:// and gs:// URIs as strings (no URL parser): '?' and '#' reach the
    path as they are, and the right model is loaded."""
    for name in ("fraud?v2", "fraud#v2"):
        assert fill_storage_uri(template, name=name, version="7", source="", run_id="") \
            == template.format(name=name, version="7")


@pytest.mark.parametrize("name", ["fraud v2", "Betrugserkennung-üß", "欺诈", "fraud%3Fv2", "fr@ud_v2.1", "fraud#v2"])
def test_an_ordinary_name_fills_a_models_uri_unchanged_and_parses_back(name: str) -> None:
    uri = fill_storage_uri(MODELS_URI, name=name, version="7", source="", run_id="")
    assert uri == f"models:/{name}/7"
    parsed = _parse_model_uri(uri)
    assert (parsed.name, parsed.version) == (name, "7")


class StagingRouter(RecordingRouter):
    def stage(self, candidate: Any, stable_version: str | None = None) -> None:
        self.calls.append(("stage", candidate, stable_version))


def staging(name: str) -> tuple[RolloutRuntime, StagingRouter]:
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["namespace"] = "ns"
    obj["spec"]["model"]["name"] = name
    runtime = RolloutRuntime(obj, parse_spec(obj["spec"]), client.ApiClient(),
                             OperatorConfig(storage_uri_template=MODELS_URI))
    runtime.router = router = StagingRouter()
    return runtime, router


def test_staging_under_a_name_a_models_uri_cannot_carry_fails_the_action_before_the_router_is_called() -> None:
    stage = StageCandidate(id="stage-1", candidate=VersionRef("7", source="s3://b/7"))
    runtime, router = staging("fraud?v2")
    # ValueError: what the reconcile records as the action's failure (lastError), as for a template that cannot fill.
    with pytest.raises(ValueError, match=r"spec.model.name 'fraud\?v2' cannot go into the models:/ URI"):
        runtime.act(stage, ModelRolloutStatus())
    assert router.calls == []
    runtime, router = staging("fraud v2")
    runtime.act(stage, ModelRolloutStatus())
    assert [(call[0], call[1].storage_uri) for call in router.calls] == [("stage", "models:/fraud v2/7")]
