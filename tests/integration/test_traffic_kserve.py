"""The KServe router on the real API server with the real upstream InferenceService CRD and the KServe
stand-in playing KServe's controller: every write is validated by KServe's own schema, every effect is
read back from status."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from kubernetes import client

from controller.api.spec import parse_spec
from controller.api.status import ModelRolloutStatus, Phase, VersionRef
from controller.devstack.kserve_standin import REVISIONS_KEY, KServeStandIn
from controller.operator.kubeapi import APPLY_PATCH, FIELD_MANAGER, load_client_config
from controller.operator.runtime import OperatorConfig, RolloutRuntime
from controller.traffic import (
    CandidateModel,
    DeploymentMode,
    KServeRouter,
    PatchRejected,
    TargetNotFound,
    TargetState,
    TargetStateError,
    router_for,
)
from controller.traffic.kserve import deployment_mode
from tests.conftest import run_kubectl
from tests.unit.test_api import example

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
NAME = "nsfw-classifier"
GITOPS = "argocd-controller"  # the manager that created the InferenceService, as Argo CD would with SSA
V6, V7, V8 = ("mlflow-artifacts:/1/models/m-6/artifacts", "mlflow-artifacts:/1/models/m-7/artifacts",
              "mlflow-artifacts:/1/models/m-8/artifacts")
CANDIDATE_7 = CandidateModel("nsfw-classifier", "7", V7)
CANDIDATE_8 = CandidateModel("nsfw-classifier", "8", V8)
STABLE_6 = CandidateModel("nsfw-classifier", "6", V6)

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


@pytest.fixture
def standin(kubeconfig: Path, namespace: str) -> Iterator[KServeStandIn]:
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace) as running:
        yield running


def apply_isvc(api: client.ApiClient, namespace: str, mode: str = "Serverless", name: str = NAME,
               predictor_extra: Obj | None = None, model_format: bool = True) -> None:
    """The InferenceService as a team's GitOps tool applies it."""
    model: Obj = {"storageUri": V6, "resources": {"requests": {"cpu": "100m"}}}
    if model_format:
        model["modelFormat"] = {"name": "sklearn"}
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace, "labels": {"team": "moderation"},
                         "annotations": {"serving.kserve.io/deploymentMode": mode}},
            "spec": {"predictor": {"minReplicas": 1, "model": model, **(predictor_extra or {})}}}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, body, field_manager=GITOPS, _content_type=APPLY_PATCH)


def get(api: client.ApiClient, namespace: str, name: str = NAME) -> Obj:
    obj: Obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj


def wait_state(router: KServeRouter, check: Callable[[TargetState], bool], timeout: float = 10.0) -> TargetState:
    deadline = time.monotonic() + timeout
    while True:
        state = router.observe()
        if state.synced and check(state):
            return state
        assert time.monotonic() < deadline, f"target never reached the expected state: {state}"
        time.sleep(0.05)


def managed_by(obj: Obj, manager: str) -> list[Obj]:
    return [m for m in obj["metadata"]["managedFields"] if m["manager"] == manager and not m.get("subresource")]


def split(obj: Obj) -> dict[str, int]:
    """Percent per revision (two targets may resolve to the same revision)."""
    shares: dict[str, int] = {}
    for target in obj["status"]["components"]["predictor"]["traffic"]:
        shares[target["revisionName"]] = shares.get(target["revisionName"], 0) + target["percent"]
    return {revision: percent for revision, percent in shares.items() if percent}


@pytest.mark.integration
def test_knative_stage_step_rollback_stage_promote(api: client.ApiClient, namespace: str,
                                                   standin: KServeStandIn) -> None:
    apply_isvc(api, namespace)
    router = router_for({"kserve": {"inferenceService": NAME}}, namespace, api)
    assert isinstance(router, KServeRouter)
    stable = wait_state(router, lambda s: s.ready)
    assert stable.mode is DeploymentMode.KNATIVE and not stable.canary_staged

    router.stage(CANDIDATE_7, stable_version="6")
    state = wait_state(router, lambda s: s.canary_ready)
    assert (state.stable_version, state.canary_version, state.canary_weight) == ("6", "7", 0)
    assert state.canary_url == f"http://latest-{NAME}-predictor.{namespace}.example.com"
    assert state.stable_url == f"http://prev-{NAME}-predictor.{namespace}.example.com"
    predictor = get(api, namespace)["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == V7 and predictor["canaryTrafficPercent"] == 0

    router.set_weight(10)
    state = wait_state(router, lambda s: s.canary_weight == 10)
    obj = get(api, namespace)
    assert split(obj) == {state.canary_name: 10, state.stable_name: 90}

    started = time.monotonic()
    router.rollback()
    state = wait_state(router, lambda s: not s.canary_weight and not s.canary_staged)
    assert time.monotonic() - started < 2.0  # traffic back on stable within the MTTR budget
    obj = get(api, namespace)
    assert split(obj) == {state.stable_name: 100}
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V6  # the spec no longer names the rejected model
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert state.stable_version == "6"

    router.stage(CANDIDATE_8)
    state = wait_state(router, lambda s: s.canary_ready)
    assert (state.stable_version, state.canary_version) == ("6", "8")
    router.set_weight(50)
    wait_state(router, lambda s: s.canary_weight == 50)
    # At 100% KServe rolls the candidate's revision out itself; until promoted it is still the canary.
    router.set_weight(100)
    state = wait_state(router, lambda s: s.canary_weight == 100)
    assert (state.stable_version, state.canary_version, state.canary_staged) == ("6", "8", True)
    router.promote()
    state = wait_state(router, lambda s: s.stable_version == "8" and not s.canary_staged)
    obj = get(api, namespace)
    component = obj["status"]["components"]["predictor"]
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V8
    assert component["latestRolledoutRevision"] == component["latestCreatedRevision"] == state.stable_name
    assert component["previousRolledoutRevision"] == f"{NAME}-predictor-00001"
    assert split(obj) == {state.stable_name: 100}


def unpin(router: KServeRouter, operation: Callable[[], None], timeout: float = 10.0) -> None:
    """Call a rollback or restore until its pin is off (once the copy of stable is ready), as the operator does."""
    deadline = time.monotonic() + timeout
    while True:
        operation()
        if not router.observe().pinned:
            return
        assert time.monotonic() < deadline, "the pin did not come off"
        time.sleep(0.1)


@pytest.mark.integration
def test_restore_after_promotion_pins_the_previous_revision(api: client.ApiClient, namespace: str,
                                                            standin: KServeStandIn) -> None:
    apply_isvc(api, namespace)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.promote()
    wait_state(router, lambda s: s.stable_version == "7" and not s.canary_staged)
    router.rollback()  # after a promotion rollback() has nothing staged to withdraw
    assert router.observe().stable_version == "7"

    started = time.monotonic()
    router.restore(STABLE_6)
    state = wait_state(router, lambda s: s.stable_version == "6" and not s.canary_weight)
    assert time.monotonic() - started < 2.0
    obj = get(api, namespace)
    assert state.stable_name == f"{NAME}-predictor-00001"  # the original revision, not a new copy
    assert split(obj) == {state.stable_name: 100}
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V6
    # The copy of stable (the same model) is ready at once here: the next call takes the pin off, then nothing.
    unpin(router, lambda: router.restore(STABLE_6))
    obj = get(api, namespace)
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V6
    generation = obj["metadata"]["generation"]
    router.restore(STABLE_6)
    assert get(api, namespace)["metadata"]["generation"] == generation


@pytest.mark.integration
def test_every_operation_is_idempotent(api: client.ApiClient, namespace: str, standin: KServeStandIn) -> None:
    apply_isvc(api, namespace)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    steps: list[tuple[str, Callable[[], None], Callable[[TargetState], bool]]] = [
        ("stage", lambda: router.stage(CANDIDATE_7, "6"), lambda s: s.canary_ready),
        ("set_weight", lambda: router.set_weight(20), lambda s: s.canary_weight == 20),
        ("rollback", lambda: unpin(router, router.rollback), lambda s: not s.canary_staged and not s.pinned),
        ("stage again", lambda: router.stage(CANDIDATE_7, "6"), lambda s: s.canary_ready),
        ("promote", router.promote, lambda s: s.stable_version == "7"),
    ]
    for what, operation, done in steps:
        operation()
        wait_state(router, done)
        before = get(api, namespace)
        operation()
        after = get(api, namespace)
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], what
        assert after["spec"] == before["spec"], what


@pytest.mark.integration
def test_router_owns_only_its_fields(api: client.ApiClient, namespace: str, kubeconfig: Path,
                                     standin: KServeStandIn) -> None:
    apply_isvc(api, namespace)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)

    obj = get(api, namespace)
    [ours] = managed_by(obj, FIELD_MANAGER)
    assert ours["operation"] == "Apply"
    assert set(ours["fieldsV1"]) == {"f:metadata", "f:spec"}
    assert set(ours["fieldsV1"]["f:metadata"]) == {"f:annotations"}
    assert all(key.startswith(("f:modelrollout.io/", "f:serving.kserve.io/enable-tag-routing"))
               for key in ours["fieldsV1"]["f:metadata"]["f:annotations"])
    assert ours["fieldsV1"]["f:spec"] == {"f:predictor": {"f:canaryTrafficPercent": {},
                                                          "f:model": {"f:storageUri": {}}}}
    [theirs] = managed_by(obj, GITOPS)
    model = theirs["fieldsV1"]["f:spec"]["f:predictor"]["f:model"]
    assert "f:modelFormat" in model and "f:resources" in model
    assert "f:storageUri" not in model  # taken over while the rollout runs (force: the router's to move)

    # Another manager edits a field the router does not own: the router's next write leaves it alone.
    patched = run_kubectl(kubeconfig, "label", "isvc", NAME, "-n", namespace, "owner=oncall")
    assert patched.returncode == 0, patched.stderr
    router.set_weight(10)
    router.promote()
    obj = get(api, namespace)
    assert obj["metadata"]["labels"] == {"team": "moderation", "owner": "oncall"}
    assert obj["spec"]["predictor"]["minReplicas"] == 1
    assert obj["spec"]["predictor"]["model"]["resources"] == {"requests": {"cpu": "100m"}}
    [ours] = managed_by(obj, FIELD_MANAGER)
    assert "f:canaryTrafficPercent" not in ours["fieldsV1"]["f:spec"]["f:predictor"]  # promoted: field removed


@pytest.mark.integration
def test_schema_refusal_is_a_clear_error(api: client.ApiClient, namespace: str, standin: KServeStandIn) -> None:
    # KServe's canary schema requires model.modelFormat, which spec.predictor may leave to a runtime
    # default: staging such an InferenceService in Standard mode is refused by the API server itself.
    apply_isvc(api, namespace, mode="Standard", model_format=False)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    with pytest.raises(PatchRejected) as refused:
        router.stage(CANDIDATE_7)
    assert "spec.canary[0].predictor.model.modelFormat: Required value" in refused.value.api_message
    assert f"InferenceService {namespace}/{NAME}" in str(refused.value)
    assert refused.value.reason == "Invalid"

    # And any write the schema refuses surfaces the API server's own words.
    body = router.client.skeleton()
    body["spec"] = {"canary": [{"trafficPercent": 150, "predictor": {"name": "Bad_Name"}}]}
    with pytest.raises(PatchRejected) as refused:
        router.client.apply(body)
    assert "should be less than or equal to 100" in refused.value.api_message
    assert "should match '^[a-z]([-a-z0-9]*[a-z0-9])?$'" in refused.value.api_message
    assert "canary" not in get(api, namespace)["spec"]


@pytest.mark.integration
def test_an_admission_refusal_quoting_the_storage_uri_keeps_its_credentials_out(
        api: client.ApiClient, namespace: str, kubeconfig: Path, standin: KServeStandIn) -> None:
    """KServe's webhook refuses a storage URI it does not support by quoting it ("StorageUri [%s] is not supported");
    the refusal reaches status, Events and logs. Played here by a ValidatingAdmissionPolicy with those words."""
    apply_isvc(api, namespace)
    name = f"storage-uri-{namespace}"
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": name},
              "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [
                  {"apiGroups": [GROUP], "apiVersions": ["*"], "operations": ["UPDATE"], "resources": [PLURAL]}]},
                  "validations": [{
                      "expression": "object.spec.predictor.model.storageUri.startsWith('mlflow-artifacts:')",
                      "messageExpression": "'StorageUri [' + object.spec.predictor.model.storageUri + "
                                           "'] is not supported'", "reason": "Invalid"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": name},
               "spec": {"policyName": name, "validationActions": ["Deny"], "matchResources": {
                   "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}}
    applied = run_kubectl(kubeconfig, "apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                           "items": [policy, binding]}))
    assert applied.returncode == 0, applied.stderr
    try:
        router = KServeRouter(api, namespace, NAME)
        wait_state(router, lambda s: s.ready)
        source = "git+https://ci-bot:glpat-SECRET-123@gitlab.example.com/ml/nsfw.git?token=QUERY-SECRET"
        probe = json.dumps({"spec": {"predictor": {"model": {"storageUri": "s3://probe"}}}})
        deadline = time.monotonic() + 30  # a new policy is enforced within a few seconds
        while run_kubectl(kubeconfig, "patch", PLURAL, NAME, "-n", namespace, "--dry-run=server", "--type=merge",
                          "-p", probe).returncode == 0:
            assert time.monotonic() < deadline, "the admission policy was never enforced"
            time.sleep(0.2)
        with pytest.raises(PatchRejected) as refused:
            router.stage(CandidateModel(NAME, "7", source))
        said = f"{refused.value} {refused.value.api_message}"
        assert "StorageUri [git+https://gitlab.example.com/ml/nsfw.git" in said
        assert "glpat-SECRET-123" not in said and "ci-bot" not in said and "QUERY-SECRET" not in said
    finally:
        run_kubectl(kubeconfig, "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name)


@pytest.mark.integration
def test_missing_target_is_target_not_found(api: client.ApiClient, namespace: str) -> None:
    router = router_for({"kserve": {"inferenceService": "absent"}}, namespace, api)
    state = router.observe()
    assert not state.exists and "absent" in state.message
    operations: list[Callable[[], None]] = [lambda: router.stage(CANDIDATE_7), lambda: router.set_weight(5),
                                            router.promote, router.rollback, lambda: router.restore(STABLE_6)]
    for operation in operations:
        with pytest.raises(TargetNotFound, match=f"InferenceService {namespace}/absent not found"):
            operation()


@pytest.mark.integration
def test_router_never_touches_another_namespace(api: client.ApiClient, namespace: str, kubeconfig: Path,
                                                standin: KServeStandIn) -> None:
    other = f"{namespace}-other"
    created = run_kubectl(kubeconfig, "create", "namespace", other)
    assert created.returncode == 0, created.stderr
    apply_isvc(api, namespace)
    apply_isvc(api, other)
    untouched = get(api, other)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7)
    wait_state(router, lambda s: s.canary_ready)
    router.set_weight(30)
    router.rollback()
    # Even a body naming the other namespace is written to the router's own.
    body = router.client.skeleton()
    body["metadata"]["namespace"] = other
    body["metadata"]["labels"] = {"stray": "no"}
    router.client.apply(body)
    assert get(api, other) == untouched
    assert get(api, namespace)["metadata"]["labels"]["stray"] == "no"


@pytest.mark.integration
def test_never_ready_candidate_gets_no_traffic_and_is_withdrawn(api: client.ApiClient, namespace: str,
                                                               standin: KServeStandIn) -> None:
    apply_isvc(api, namespace)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CandidateModel("nsfw-classifier", "9", "s3://models/never-ready/9"), stable_version="6")
    state = wait_state(router, lambda s: s.canary_staged)
    assert not state.canary_ready and state.canary_weight == 0 and state.ready
    assert "never became ready" in state.message
    router.set_weight(25)
    state = wait_state(router, lambda s: get(api, namespace)["spec"]["predictor"]["canaryTrafficPercent"] == 25)
    assert state.canary_weight == 0  # KServe routes the canary share to the latest *ready* revision: stable
    router.rollback()
    state = wait_state(router, lambda s: not s.canary_staged)
    assert state.ready and state.stable_version == "6" and not state.message
    assert get(api, namespace)["spec"]["predictor"]["model"]["storageUri"] == V6


@pytest.mark.integration
def test_a_finished_rollout_withdraws_only_its_own_candidate(api: client.ApiClient, namespace: str,
                                                             standin: KServeStandIn) -> None:
    """A Failed or RolledBack rollout finishes withdrawing its candidate on each reconcile: never a canary of
    another version, which another rollout (or a later attempt) staged on the same InferenceService."""
    apply_isvc(api, namespace)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_8, stable_version="6")
    wait_state(router, lambda s: s.canary_staged)
    spec = example()
    spec["target"] = {"kserve": {"inferenceService": NAME}}
    obj = {"metadata": {"name": "nsfw-v7", "namespace": namespace}, "spec": spec}
    runtime = RolloutRuntime(obj, parse_spec(spec), api, OperatorConfig())
    for status in (ModelRolloutStatus(phase=Phase.FAILED),  # failed before it staged anything
                   ModelRolloutStatus(phase=Phase.ROLLED_BACK, candidate=VersionRef(version="7"))):
        assert runtime.finish_withdrawal(status) is False
        assert router.observe().canary_version == "8"
    own = ModelRolloutStatus(phase=Phase.ROLLED_BACK, candidate=VersionRef(version="8"))
    deadline = time.monotonic() + 10
    while runtime.finish_withdrawal(own):  # KServe Knative takes two writes
        assert time.monotonic() < deadline, "the rollout's own candidate was never withdrawn"
        time.sleep(0.2)
    assert not wait_state(router, lambda s: not s.canary_staged).canary_staged


@pytest.mark.integration
def test_a_rollbacks_pin_comes_off_once_the_copy_of_stable_is_ready(api: client.ApiClient, namespace: str,
                                                                    standin: KServeStandIn) -> None:
    """canaryTrafficPercent 0, left on, would hold every later revision at 0%: a change made outside
    ModelRollout (here the GitOps tool's) would never serve. The finished rollout removes it, but only once
    the copy of stable the rollback made is ready (before that KServe would route to the rejected revision)."""
    apply_isvc(api, namespace)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.set_weight(10)
    wait_state(router, lambda s: s.canary_weight == 10)
    standin.ready_delay = 3.0  # the copy of stable takes a while to start, as a real revision does
    router.rollback()
    state = wait_state(router, lambda s: not s.canary_staged)
    assert state.pinned and state.stable_version == "6" and state.canary_weight is None
    spec = example()
    spec["target"] = {"kserve": {"inferenceService": NAME}}
    runtime = RolloutRuntime({"metadata": {"name": "nsfw-v7", "namespace": namespace}, "spec": spec},
                             parse_spec(spec), api, OperatorConfig())
    own = ModelRolloutStatus(phase=Phase.ROLLED_BACK, candidate=VersionRef(version="7"))
    assert runtime.finish_withdrawal(own) is True  # the copy is not ready: pinned still
    assert get(api, namespace)["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert split(get(api, namespace)) == {f"{NAME}-predictor-00001": 100}
    deadline = time.monotonic() + 15
    while runtime.finish_withdrawal(own):
        assert time.monotonic() < deadline, "the pin never came off"
        time.sleep(0.2)
    state = wait_state(router, lambda s: s.stable_name == f"{NAME}-predictor-00003")
    assert not state.pinned and state.stable_version == "6" and not state.canary_staged and not state.message
    obj = get(api, namespace)
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
    assert "f:canaryTrafficPercent" not in managed_by(obj, FIELD_MANAGER)[0]["fieldsV1"]["f:spec"]["f:predictor"]
    assert split(obj) == {f"{NAME}-predictor-00003": 100}  # the copy of stable: the same model
    generation = obj["metadata"]["generation"]
    assert runtime.finish_withdrawal(own) is False and get(api, namespace)["metadata"]["generation"] == generation

    standin.ready_delay = 0.0
    apply_isvc(api, namespace, predictor_extra={"maxReplicas": 3})  # a later change made outside ModelRollout
    state = wait_state(router, lambda s: s.stable_name == f"{NAME}-predictor-00004")
    assert split(get(api, namespace)) == {f"{NAME}-predictor-00004": 100} and state.stable_version == "6"


@pytest.mark.integration
def test_conflicting_write_is_retried_on_fresh_state(api: client.ApiClient, namespace: str, kubeconfig: Path,
                                                     standin: KServeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    apply_isvc(api, namespace)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    read = router.client.get
    reads: list[str] = []

    def read_then_someone_writes() -> Obj:
        obj = read()
        if not reads:  # between the router's first read and its write, another client changes the object
            patched = run_kubectl(kubeconfig, "label", "isvc", NAME, "-n", namespace, "edited=meanwhile")
            assert patched.returncode == 0, patched.stderr
        reads.append(obj["metadata"]["resourceVersion"])
        return obj

    monkeypatch.setattr(router.client, "get", read_then_someone_writes)
    router.stage(CANDIDATE_7)
    assert len(reads) >= 2 and reads[0] != reads[-1]
    obj = get(api, namespace)
    assert obj["metadata"]["labels"]["edited"] == "meanwhile"
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V7


@pytest.mark.integration
def test_standard_mode_stage_step_rollback_stage_promote(api: client.ApiClient, namespace: str,
                                                         standin: KServeStandIn) -> None:
    apply_isvc(api, namespace, mode="Standard")
    router = KServeRouter(api, namespace, NAME)
    state = wait_state(router, lambda s: s.ready)
    assert state.mode is DeploymentMode.STANDARD

    router.stage(CANDIDATE_7, stable_version="6")
    state = wait_state(router, lambda s: s.canary_ready)
    assert (state.stable_version, state.canary_version, state.canary_weight) == ("6", "7", 0)
    assert state.canary_name == f"{NAME}-v7-predictor"
    [entry] = get(api, namespace)["spec"]["canary"]
    assert entry["trafficPercent"] == 0 and entry["predictor"]["name"] == "v7"
    assert entry["predictor"]["model"]["storageUri"] == V7
    assert entry["predictor"]["model"]["resources"] == {"requests": {"cpu": "100m"}}  # a copy of stable

    router.set_weight(10)
    wait_state(router, lambda s: s.canary_weight == 10)
    assert get(api, namespace)["status"]["canaryStatuses"][0]["trafficPercent"] == 10
    router.rollback()
    state = wait_state(router, lambda s: not s.canary_staged)
    obj = get(api, namespace)
    assert obj["spec"]["canary"] == [] and obj["spec"]["predictor"]["model"]["storageUri"] == V6

    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.promote()
    state = wait_state(router, lambda s: s.stable_version == "7" and not s.canary_staged)
    predictor = get(api, namespace)["spec"]["predictor"]
    # The canary's name moves to spec.predictor, so KServe keeps the canary's Deployment: no restart.
    assert predictor["name"] == "v7" and predictor["model"]["storageUri"] == V7
    assert state.stable_name == f"{NAME}-v7-predictor"
    router.restore(STABLE_6)
    state = wait_state(router, lambda s: s.stable_version == "6")
    predictor = get(api, namespace)["spec"]["predictor"]
    assert "name" not in predictor and predictor["model"]["storageUri"] == V6


def candidate_at(api: client.ApiClient, namespace: str, weight: int, mode: str = "Serverless") -> KServeRouter:
    """Version 7 staged against stable 6 and taking `weight`% of traffic."""
    apply_isvc(api, namespace, mode=mode)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.set_weight(weight)
    wait_state(router, lambda s: s.canary_weight == weight)
    return router


def patch_as(api: client.ApiClient, namespace: str, patch: Any, content_type: str, manager: str) -> None:
    """What `kubectl patch` / `kubectl edit` send: an Update by another field manager."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, patch,
                                                                field_manager=manager, _content_type=content_type)


@pytest.mark.integration
@pytest.mark.parametrize("finish", ["rollback", "promote"])
def test_standard_a_canary_edited_by_hand_is_still_removed(api: client.ApiClient, namespace: str,
                                                           standin: KServeStandIn, finish: str) -> None:
    """An on-call gives the canary more memory mid-rollout (`kubectl edit`: an Update), so its manager owns the
    atomic spec.canary too: leaving the list out of an apply would remove nothing, the candidate would keep its
    share through a rollback and a canary would outlive its promotion."""
    router = candidate_at(api, namespace, 20, mode="Standard")
    patch_as(api, namespace, [{"op": "add", "path": "/spec/canary/0/predictor/model/resources/limits",
                               "value": {"memory": "2Gi"}}], "application/json-patch+json", "kubectl-edit")
    assert managed_by(get(api, namespace), "kubectl-edit")
    if finish == "rollback":
        router.rollback()
        state = wait_state(router, lambda s: not s.canary_staged)
        assert (state.canary_version, state.canary_weight, state.message) == (None, None, "")
        assert get(api, namespace)["spec"]["predictor"]["model"]["storageUri"] == V6
    else:
        router.promote()
        state = wait_state(router, lambda s: s.stable_version == "7" and not s.canary_staged)
        assert (state.canary_version, state.canary_weight, state.message) == (None, None, "")
        predictor = get(api, namespace)["spec"]["predictor"]
        assert predictor["name"] == "v7" and predictor["model"]["storageUri"] == V7
    obj = get(api, namespace)
    assert obj["spec"]["canary"] == [] and "canaryStatuses" not in obj["status"]


@pytest.mark.integration
def test_knative_promotion_removes_a_canary_traffic_percent_moved_by_hand(api: client.ApiClient, namespace: str,
                                                                         standin: KServeStandIn) -> None:
    """An on-call moves the canary by hand (`kubectl patch --type merge`), so its manager owns
    canaryTrafficPercent too: promotion removes it all the same, or the candidate would never roll out."""
    router = candidate_at(api, namespace, 10)
    patch_as(api, namespace, {"spec": {"predictor": {"canaryTrafficPercent": 50}}},
             "application/merge-patch+json", "kubectl-patch")
    wait_state(router, lambda s: s.canary_weight == 50)
    router.promote()
    state = wait_state(router, lambda s: s.stable_version == "7" and not s.canary_staged)
    obj = get(api, namespace)
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V7
    assert split(obj) == {state.stable_name: 100} and state.stable_name == f"{NAME}-predictor-00002"
    resource_version = obj["metadata"]["resourceVersion"]
    router.promote()  # promoted: nothing more to write
    assert get(api, namespace)["metadata"]["resourceVersion"] == resource_version


LOGGER = "http://exporter.monitoring.svc:9102/?team=moderation&variant=stable"


def logged_version(url: str | None) -> str | None:
    """The model_version a logger URL reports (and no variant: it would turn false on promotion)."""
    assert url is not None
    query = dict(parse_qsl(urlsplit(url).query))
    assert "variant" not in query and query["team"] == "moderation", url
    return query.get("model_version")


@pytest.mark.integration
def test_each_knative_revision_logs_the_version_it_serves(api: client.ApiClient, namespace: str,
                                                          standin: KServeStandIn) -> None:
    """The exporter tells candidate from stable by the version in each revision's logger URL (a revision keeps
    the URL it was made with): written in the same write as the model, through weights, rollback, promotion."""
    apply_isvc(api, namespace, predictor_extra={"logger": {"mode": "all", "url": LOGGER}})
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)

    def spec_logger() -> Obj:
        logger: Obj = get(api, namespace)["spec"]["predictor"]["logger"]
        return logger

    def revisions() -> list[Obj]:
        status = get(api, namespace)["status"]
        return list(json.loads(status["annotations"][REVISIONS_KEY]))

    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    assert logged_version(spec_logger()["url"]) == "7" and spec_logger()["mode"] == "all"  # the team's mode kept
    first, candidate = revisions()
    assert first["logger_url"] == LOGGER and logged_version(candidate["logger_url"]) == "7"
    router.set_weight(10)
    wait_state(router, lambda s: s.canary_weight == 10)
    assert len(revisions()) == 2  # the same URL again: no new revision
    router.rollback()
    wait_state(router, lambda s: not s.canary_staged)
    assert logged_version(spec_logger()["url"]) == "6"  # the copy of stable says 6 too

    router.stage(CANDIDATE_8)
    wait_state(router, lambda s: s.canary_ready)
    router.promote()
    wait_state(router, lambda s: s.stable_version == "8" and not s.canary_staged)
    assert logged_version(spec_logger()["url"]) == "8" and logged_version(revisions()[-1]["logger_url"]) == "8"
    router.restore(STABLE_6)
    wait_state(router, lambda s: s.stable_version == "6")
    assert logged_version(spec_logger()["url"]) == "6"


@pytest.mark.integration
def test_a_first_rollouts_rollback_does_not_label_stable_with_the_rejected_version(
        api: client.ApiClient, namespace: str, standin: KServeStandIn) -> None:
    """No stable version known: the copy of stable the rollback makes names no version (it counts as stable),
    never the rejected candidate's; and a weight change leaves the logger URL alone (no revision of its own)."""
    apply_isvc(api, namespace, predictor_extra={"logger": {"mode": "all", "url": LOGGER}})
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7)  # no stable_version: a first rollout
    wait_state(router, lambda s: s.canary_ready)
    router.set_weight(10)
    state = wait_state(router, lambda s: s.canary_weight == 10)
    assert state.canary_name == get(api, namespace)["status"]["components"]["predictor"]["latestCreatedRevision"]
    router.rollback()
    wait_state(router, lambda s: not s.canary_staged)
    url = get(api, namespace)["spec"]["predictor"]["logger"]["url"]
    assert logged_version(url) is None and url == "http://exporter.monitoring.svc:9102/?team=moderation", url


@pytest.mark.integration
def test_each_standard_predictor_logs_the_version_it_serves(api: client.ApiClient, namespace: str,
                                                            standin: KServeStandIn) -> None:
    apply_isvc(api, namespace, mode="Standard", predictor_extra={"logger": {"mode": "all", "url": LOGGER}})
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    spec = get(api, namespace)["spec"]
    assert spec["predictor"]["logger"]["url"] == LOGGER  # stable untouched
    assert logged_version(spec["canary"][0]["predictor"]["logger"]["url"]) == "7"
    router.set_weight(10)
    wait_state(router, lambda s: s.canary_weight == 10)
    router.promote()
    wait_state(router, lambda s: s.stable_version == "7" and not s.canary_staged)
    # The canary's logger moves with its name and model: the promoted predictor still reports 7.
    assert logged_version(get(api, namespace)["spec"]["predictor"]["logger"]["url"]) == "7"
    router.restore(STABLE_6)
    wait_state(router, lambda s: s.stable_version == "6")
    assert logged_version(get(api, namespace)["spec"]["predictor"]["logger"]["url"]) == "6"


def test_deployment_mode_follows_kserve_precedence() -> None:
    def isvc(annotation: str | None = None, status: str | None = None) -> Obj:
        annotations = {"serving.kserve.io/deploymentMode": annotation} if annotation else {}
        return {"metadata": {"name": "m", "annotations": annotations},
                "status": {"deploymentMode": status} if status else {}}

    assert deployment_mode(isvc("Serverless")) is DeploymentMode.KNATIVE
    assert deployment_mode(isvc("RawDeployment")) is DeploymentMode.STANDARD
    assert deployment_mode(isvc("Knative", status="Standard")) is DeploymentMode.STANDARD  # status wins
    assert deployment_mode(isvc(), DeploymentMode.STANDARD) is DeploymentMode.STANDARD  # configured default
    with pytest.raises(TargetStateError, match="cannot tell the deployment mode"):
        deployment_mode(isvc())
    with pytest.raises(TargetStateError, match="ModelMesh"):
        deployment_mode(isvc("ModelMesh"))


TAG_ROUTING = "serving.kserve.io/enable-tag-routing"


def apply_isvc_tag_routing(api: client.ApiClient, namespace: str, tag_routing: str | None) -> None:
    """The GitOps manifest, with the team's own enable-tag-routing (None: the manifest does not set it). Applied
    without force, as an unchanged manifest is re-applied: a conflict raises."""
    annotations = {"serving.kserve.io/deploymentMode": "Serverless"}
    if tag_routing is not None:
        annotations[TAG_ROUTING] = tag_routing
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": NAME, "namespace": namespace, "labels": {"team": "moderation"},
                         "annotations": annotations},
            "spec": {"predictor": {"minReplicas": 1, "model": {"storageUri": V6, "modelFormat": {"name": "sklearn"},
                                                               "resources": {"requests": {"cpu": "100m"}}}}}}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, body, field_manager=GITOPS, _content_type=APPLY_PATCH)


def tag_routing_owners(obj: Obj) -> set[str]:
    return {m["manager"] for m in obj["metadata"]["managedFields"] if not m.get("subresource")
            and f"f:{TAG_ROUTING}" in m.get("fieldsV1", {}).get("f:metadata", {}).get("f:annotations", {})}


@pytest.mark.integration
@pytest.mark.parametrize("before", [None, "false", "true"])
def test_an_ended_rollout_gives_enable_tag_routing_back(api: client.ApiClient, namespace: str,
                                                        standin: KServeStandIn, before: str | None) -> None:
    """Staging sets enable-tag-routing "true" (the candidate's `latest-` URL); once the rollout has ended the team's
    own value is back, the router owns the field no more (or, where it replaced their value, shares it), no extra
    revision is made, and their unchanged manifest applies again without a conflict."""
    apply_isvc_tag_routing(api, namespace, before)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    assert get(api, namespace)["metadata"]["annotations"][TAG_ROUTING] == "true"
    router.set_weight(10)
    wait_state(router, lambda s: s.canary_weight == 10)
    # Each call by a new router, as an operator restarted between any two writes would make it.
    unpin(router, lambda: KServeRouter(api, namespace, NAME).rollback())
    state = wait_state(router, lambda s: not s.canary_staged and not s.pinned)
    obj = get(api, namespace)
    assert obj["metadata"]["annotations"].get(TAG_ROUTING) == before
    # Released in the write that put stable's model back: its copy (00003) is the only revision since.
    assert state.stable_name == f"{NAME}-predictor-00003" and split(obj) == {state.stable_name: 100}
    owners = tag_routing_owners(obj)
    assert owners == {None: set(), "false": {FIELD_MANAGER}, "true": {GITOPS}}[before], owners
    generation = obj["metadata"]["generation"]
    router.rollback()
    assert get(api, namespace)["metadata"]["generation"] == generation  # nothing left to do

    apply_isvc_tag_routing(api, namespace, before)  # the unchanged manifest again: no 409
    obj = get(api, namespace)
    assert obj["metadata"]["annotations"].get(TAG_ROUTING) == before and obj["metadata"]["generation"] == generation
    assert tag_routing_owners(obj) >= ({GITOPS} if before else set())

    # Promoted, it stays (a revision made then would close the way back); restore() gives it back.
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.promote()
    wait_state(router, lambda s: s.stable_version == "7" and not s.canary_staged)
    assert get(api, namespace)["metadata"]["annotations"][TAG_ROUTING] == "true"
    router.restore(STABLE_6)
    wait_state(router, lambda s: s.stable_version == "6" and not s.canary_weight)
    unpin(router, lambda: KServeRouter(api, namespace, NAME).restore(STABLE_6))
    obj = get(api, namespace)
    assert obj["metadata"]["annotations"].get(TAG_ROUTING) == before
    assert FIELD_MANAGER not in tag_routing_owners(obj) or before == "false"
    apply_isvc_tag_routing(api, namespace, before)



@pytest.mark.integration
@pytest.mark.parametrize("how", ["self-heal", "edit"])
def test_tag_routing_given_back_when_the_candidate_left_the_spec_another_way(
        api: client.ApiClient, namespace: str, standin: KServeStandIn, how: str) -> None:
    """Mid-canary stable's storageUri is put back outside ModelRollout: Argo CD self-heal (force) re-applies the
    team's manifest (our canaryTrafficPercent stays: a pin), or an on-call's edit also drops canaryTrafficPercent
    (nothing staged). The rollback that follows writes no model, yet the enable-tag-routing staging forced to
    "true" is given back, once, and the unchanged manifest applies again without a conflict."""
    apply_isvc_tag_routing(api, namespace, None)  # the manifest does not set enable-tag-routing
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.set_weight(10, "7")
    wait_state(router, lambda s: s.canary_weight == 10)
    objects = client.CustomObjectsApi(api)
    if how == "self-heal":
        manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
                    "metadata": {"name": NAME, "namespace": namespace, "labels": {"team": "moderation"},
                                 "annotations": {"serving.kserve.io/deploymentMode": "Serverless"}},
                    "spec": {"predictor": {"minReplicas": 1, "model": {
                        "storageUri": V6, "modelFormat": {"name": "sklearn"},
                        "resources": {"requests": {"cpu": "100m"}}}}}}
        objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, manifest,
                                               field_manager=GITOPS, force=True, _content_type=APPLY_PATCH)
    else:
        edit = {"spec": {"predictor": {"canaryTrafficPercent": None, "model": {"storageUri": V6}}}}
        objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, edit,
                                               field_manager="kubectl-edit",
                                               _content_type="application/merge-patch+json")
    assert get(api, namespace)["metadata"]["annotations"][TAG_ROUTING] == "true"  # staging's, still ours

    # As the operator does: rollback() until nothing is pinned or staged, each call by a new router.
    deadline = time.monotonic() + 15
    while True:
        KServeRouter(api, namespace, NAME).rollback()
        state = router.observe()
        if state.synced and not state.pinned and not state.canary_staged:
            break
        assert time.monotonic() < deadline, f"the rollback never finished: {state}"
        time.sleep(0.1)
    obj = get(api, namespace)
    assert TAG_ROUTING not in obj["metadata"]["annotations"], obj["metadata"]["annotations"]
    assert tag_routing_owners(obj) == set()
    # 00003 is the outside change's copy of stable; the release made one more (00004), which takes all traffic.
    state = wait_state(router, lambda s: s.ready and s.stable_name == f"{NAME}-predictor-00004")
    obj = get(api, namespace)
    assert split(obj) == {state.stable_name: 100} and "canaryTrafficPercent" not in obj["spec"]["predictor"]
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V6
    router.rollback()  # given back already: nothing to write
    time.sleep(0.5)
    after = get(api, namespace)
    assert after["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert after["status"]["components"]["predictor"]["latestCreatedRevision"] == f"{NAME}-predictor-00004"
    apply_isvc_tag_routing(api, namespace, None)  # the unchanged manifest, without force: no 409
    assert TAG_ROUTING not in get(api, namespace)["metadata"]["annotations"]
