"""Fixer s31knativefix, live (real kube-apiserver with the upstream InferenceService CRD, the KServe stand-in playing
KServe): the Knative bake rollback (restore() after a promotion) and a candidate whose tag URL was taken away.

- A revision rolled out after the promotion (a newer model synced in from Git) makes the rejected candidate's revision
  previousRolledoutRevision: canaryTrafficPercent 0 would send all traffic back to it. restore() writes stable as a
  new revision instead, and the rejected version never serves again.
- A manifest that names stable's model in another form than the operator's storage-URI template (a first managed
  rollout's usual case) still gets the instant way back, by the version recorded at staging, and the pin comes off.
- enable-tag-routing removed by hand mid-canary: observe() says why the ready candidate has no URL, and the gate's
  error carries it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from controller.api.spec import parse_spec
from controller.api.status import VersionRef
from controller.devstack.kserve_standin import KServeStandIn
from controller.engine.actions import RunGate
from controller.operator.kubeapi import APPLY_PATCH, load_client_config
from controller.operator.runtime import OperatorConfig, RolloutRuntime
from controller.traffic import CandidateModel, KServeRouter
from controller.traffic.kserve import ANN_STABLE_URI, ANN_VERSION, ANN_VERSION_URI, TAG_ROUTING
from controller.traffic.kube import ConflictError
from tests.conftest import run_kubectl
from tests.integration.test_traffic_kserve import (
    CANDIDATE_7,
    GITOPS,
    GROUP,
    NAME,
    PLURAL,
    STABLE_6,
    V8,
    VERSION,
    apply_isvc,
    get,
    split,
    unpin,
    wait_state,
)
from tests.unit.test_api import example

pytestmark = pytest.mark.integration
REV = f"{NAME}-predictor-"


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


@pytest.fixture
def slow_standin(kubeconfig: Path, namespace: str) -> Iterator[KServeStandIn]:
    """Revisions take 3 s to start, as real ones take a while: what serves meanwhile shows."""
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace, ready_delay=3.0) as running:
        yield running


def splits_since(api: client.ApiClient, namespace: str, resource_version: str, until: str,
                 timeout: float = 20.0) -> list[dict[str, int]]:
    """Every traffic split the InferenceService's status held since `resource_version`, read from a watch (so no
    state in between is missed), up to the first in which revision `until` takes all traffic."""
    seen: list[dict[str, int]] = []
    stream = watch.Watch()
    for event in stream.stream(client.CustomObjectsApi(api).list_namespaced_custom_object, GROUP, VERSION, namespace,
                               PLURAL, field_selector=f"metadata.name={NAME}", resource_version=resource_version,
                               timeout_seconds=int(timeout)):
        obj: dict[str, Any] = event["object"]
        if ((obj.get("status") or {}).get("components") or {}).get("predictor", {}).get("traffic"):
            seen.append(split(obj))
        if seen and seen[-1] == {until: 100}:
            stream.stop()
            return seen
    raise AssertionError(f"revision {until} never took all traffic: {seen}")


def promoted_7(api: client.ApiClient, namespace: str, uri_6: str = STABLE_6.storage_uri,
               annotations: dict[str, str] | None = None) -> KServeRouter:
    """Stable 6 (rev 1, its storageUri as the manifest writes it), candidate 7 staged and promoted (rev 2)."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": NAME, "namespace": namespace,
                         "annotations": {"serving.kserve.io/deploymentMode": "Serverless", **(annotations or {})}},
            "spec": {"predictor": {"minReplicas": 1, "model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri_6,
                                                               "resources": {"requests": {"cpu": "100m"}}}}}}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, body, field_manager=GITOPS, _content_type=APPLY_PATCH)
    router = KServeRouter(api, namespace, NAME, settle_timeout=8)
    wait_state(router, lambda s: s.ready, timeout=15)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready, timeout=15)
    router.promote()
    state = wait_state(router, lambda s: s.stable_version == "7" and not s.canary_staged, timeout=15)
    assert state.stable_name == f"{REV}00002"
    return router


def test_a_bake_rollback_after_a_model_was_synced_in_never_sends_traffic_back_to_the_rejected_version(
        api: client.ApiClient, namespace: str, slow_standin: KServeStandIn) -> None:
    router = promoted_7(api, namespace)
    # An Argo CD sync of a newer manifest, forced: model 8 replaces the promoted 7 and KServe rolls it out.
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
                "metadata": {"name": NAME, "namespace": namespace},
                "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": V8}}}}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, manifest, field_manager=GITOPS, force=True,
        _content_type=APPLY_PATCH)
    wait_state(router, lambda s: s.stable_name == f"{REV}00003" and split(get(api, namespace)) == {f"{REV}00003": 100},
               timeout=15)
    component = get(api, namespace)["status"]["components"]["predictor"]
    assert component["previousRolledoutRevision"] == f"{REV}00002"  # the rejected 7: where a pin would go
    before = get(api, namespace)["metadata"]["resourceVersion"]

    router.restore(STABLE_6)
    seen = splits_since(api, namespace, before, until=f"{REV}00004")
    assert all(f"{REV}00002" not in shares for shares in seen), seen  # the rejected 7 never serves again
    obj = get(api, namespace)
    assert obj["spec"]["predictor"]["model"]["storageUri"] == STABLE_6.storage_uri
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]  # nothing left pinned
    state = wait_state(router, lambda s: s.stable_version == "6")
    assert state.stable_name == f"{REV}00004" and not state.canary_staged and not state.pinned
    generation = obj["metadata"]["generation"]
    router.restore(STABLE_6)  # restored: the engine's next call writes nothing
    assert get(api, namespace)["metadata"]["generation"] == generation


def test_a_bake_rollback_is_instant_when_the_object_recorded_stable_in_another_uri_form(
        api: client.ApiClient, namespace: str, slow_standin: KServeStandIn) -> None:
    # 6 in the form an earlier rollout wrote and recorded (the operator's template had the slash then); the template
    # gives it without the slash now. The object's own record of version 6 for that URI is what the match trusts.
    manifest_6 = "s3://models/nsfw/6/"
    stable = CandidateModel(STABLE_6.name, "6", "s3://models/nsfw/6")
    router = promoted_7(api, namespace, uri_6=manifest_6,
                        annotations={ANN_VERSION: "6", ANN_VERSION_URI: manifest_6})
    assert get(api, namespace)["metadata"]["annotations"][ANN_STABLE_URI] == manifest_6

    started = time.monotonic()
    router.restore(stable)
    state = wait_state(router, lambda s: s.stable_version == "6" and not s.canary_weight)
    assert time.monotonic() - started < 2.0  # a new revision would take 3 s to start
    assert state.stable_name == f"{REV}00001"  # stable's own revision, at once
    obj = get(api, namespace)
    assert split(obj) == {f"{REV}00001": 100}
    assert obj["spec"]["predictor"]["model"]["storageUri"] == manifest_6  # the form that served, written back
    annotations = obj["metadata"]["annotations"]
    assert (annotations[ANN_VERSION], annotations[ANN_VERSION_URI], annotations[ANN_STABLE_URI]) == \
        ("6", manifest_6, manifest_6)
    assert state.pinned
    # The engine keeps calling restore(): the pin comes off once the copy of stable is ready, then nothing.
    unpin(router, lambda: router.restore(stable), timeout=15)
    obj = get(api, namespace)
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
    assert obj["spec"]["predictor"]["model"]["storageUri"] == manifest_6
    state = wait_state(router, lambda s: s.stable_name == f"{REV}00003")
    assert state.stable_version == "6" and not state.message
    generation = obj["metadata"]["generation"]
    router.restore(stable)
    assert get(api, namespace)["metadata"]["generation"] == generation


def test_a_candidate_whose_tag_routing_was_removed_by_hand_says_why_it_has_no_url(
        api: client.ApiClient, namespace: str, kubeconfig: Path) -> None:
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace):
        apply_isvc(api, namespace)
        router = KServeRouter(api, namespace, NAME)
        wait_state(router, lambda s: s.ready)
        router.stage(CANDIDATE_7, stable_version="6")
        state = wait_state(router, lambda s: s.canary_ready)
        assert state.canary_url and not state.message
        result = run_kubectl(kubeconfig, "annotate", "inferenceservice", NAME, "-n", namespace, f"{TAG_ROUTING}-")
        assert result.returncode == 0, result.stderr
        # The annotation change made a revision (a copy of the candidate); once it is ready it has no latest- URL.
        state = wait_state(router, lambda s: s.canary_ready and s.canary_name == f"{REV}00003")
        assert state.canary_url is None
        assert f"{TAG_ROUTING} is not 'true'" in state.message and "no URL of its own" in state.message
        # The gate's error says it, rather than only "no inference URL yet".
        spec = example()
        spec["target"] = {"kserve": {"inferenceService": NAME}}
        parsed = parse_spec(spec)
        runtime = RolloutRuntime({"metadata": {"name": "nsfw-v7", "namespace": namespace}, "spec": spec}, parsed,
                                 api, OperatorConfig())
        gate = RunGate(id="gate-1", candidate=VersionRef(version="7"), stable=None, dataset=parsed.golden_dataset)
        judged = asyncio.run(runtime.measure_gate(gate, state))
        assert judged.error is not None and "the staged candidate has no inference URL yet" in judged.error.message
        assert TAG_ROUTING in judged.error.message


# --- review s31r3kserve ---------------------------------------------------------------------------------------------


def sync_8(api: client.ApiClient, namespace: str, router: KServeRouter) -> str:
    """A forced Argo CD sync of a newer manifest: model 8 replaces the promoted 7 and KServe rolls it out, which
    makes the rejected 7 previousRolledoutRevision. The resourceVersion then."""
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
                "metadata": {"name": NAME, "namespace": namespace},
                "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": V8}}}}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, manifest, field_manager=GITOPS, force=True,
        _content_type=APPLY_PATCH)
    wait_state(router, lambda s: s.stable_name == f"{REV}00003" and split(get(api, namespace)) == {f"{REV}00003": 100},
               timeout=15)
    obj = get(api, namespace)
    assert obj["status"]["components"]["predictor"]["previousRolledoutRevision"] == f"{REV}00002"
    return str(obj["metadata"]["resourceVersion"])


def test_a_sync_landing_just_before_the_pin_never_sends_traffic_back_to_the_rejected_version(
        api: client.ApiClient, namespace: str, slow_standin: KServeStandIn) -> None:
    # restore() decides to pin on the status it read (7 rolled out, 6 previous); the sync of 8 lands before the pin's
    # apply, which gets a 409. Re-checked on the object read again, the pin would now reach 7: not written.
    router = promoted_7(api, namespace)
    apply = router.client.apply
    landed: list[str] = []
    conflicts: list[ConflictError] = []

    def sync_lands_first(body: dict[str, Any], force: bool = True) -> dict[str, Any]:
        if not landed:
            landed.append(sync_8(api, namespace, router))
        try:
            return apply(body, force)
        except ConflictError as exc:
            conflicts.append(exc)
            raise
    router.client.apply = sync_lands_first  # type: ignore[method-assign]
    router.restore(STABLE_6)
    assert len(conflicts) == 1  # the pin's first apply, refused: the object changed since restore() read it
    seen = splits_since(api, namespace, landed[0], until=f"{REV}00004")
    assert all(f"{REV}00002" not in shares for shares in seen), seen  # the rejected 7 never serves again
    state = wait_state(router, lambda s: s.stable_version == "6")
    assert state.stable_name == f"{REV}00004" and not state.pinned


def test_with_no_pin_stable_goes_back_in_the_templates_form_which_loads(
        api: client.ApiClient, namespace: str, slow_standin: KServeStandIn) -> None:
    # The bucket that held 6 moved: the operator's template now gives s3://new-bucket/nsfw/6, and the URI recorded at
    # staging no longer starts a new revision. With 8 rolled out since, no pin reaches 6's revision: the new revision
    # must be made from the template's URI, or 8 serves for good.
    router = promoted_7(api, namespace)
    sync_8(api, namespace, router)
    slow_standin.never_ready_marker = "m-6"  # the recorded mlflow-artifacts:/1/models/m-6/... no longer loads
    moved = CandidateModel(STABLE_6.name, "6", "s3://new-bucket/nsfw/6")
    router.restore(moved)
    state = wait_state(router, lambda s: s.stable_name == f"{REV}00004", timeout=15)
    assert state.stable_version == "6" and split(get(api, namespace)) == {f"{REV}00004": 100}
    obj = get(api, namespace)
    assert obj["spec"]["predictor"]["model"]["storageUri"] == moved.storage_uri
    assert (obj["metadata"]["annotations"][ANN_VERSION_URI], obj["metadata"]["annotations"][ANN_STABLE_URI]) == \
        (moved.storage_uri, moved.storage_uri)
    generation = obj["metadata"]["generation"]
    router.restore(moved)  # restored: nothing more
    assert get(api, namespace)["metadata"]["generation"] == generation


def test_a_stable_version_from_the_engines_hint_alone_never_puts_another_models_uri_back(
        api: client.ApiClient, namespace: str, slow_standin: KServeStandIn) -> None:
    # The InferenceService served another registered model's 6; staging took "6" from the engine's hint. The bake's
    # restore(6) must not pin back to that model and confirm it as this one's 6: this model's 6 is written.
    router = promoted_7(api, namespace, uri_6="s3://other-model/6")
    before = get(api, namespace)["metadata"]["resourceVersion"]
    router.restore(STABLE_6)
    seen = splits_since(api, namespace, before, until=f"{REV}00003")
    assert all(f"{REV}00001" not in shares for shares in seen), seen  # the other model never serves again
    obj = get(api, namespace)
    assert obj["spec"]["predictor"]["model"]["storageUri"] == STABLE_6.storage_uri
    state = wait_state(router, lambda s: s.stable_version == "6")
    assert state.stable_name == f"{REV}00003" and not state.pinned
