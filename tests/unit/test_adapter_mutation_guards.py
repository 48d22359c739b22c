"""Rules of the traffic and registry adapters that a mutation review (s23) showed no test held: each test here
fails on the mutant it is named after (a KServe Standard gate measuring stable against itself, a failed read taken
for a deleted target, another team's canaries replaced, a promotion not idempotent, the way back lost)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.registry.memory import InMemoryRegistry
from controller.registry.types import PREVIOUS_VERSION_TAG
from controller.traffic.base import AccessDenied, CandidateModel, TargetStateError, TargetUnavailable
from controller.traffic.kserve import KServeRouter, standard_state, standard_view
from controller.traffic.kube import INFERENCE_SERVICE, ObjectClient

PREFIX = "modelrollout.io/"


def staged_standard() -> dict[str, Any]:
    """A KServe Standard InferenceService: stable (no predictor name) serves 6, our canary 7 takes 10%."""
    canary = {"trafficPercent": 10, "predictor": {
        "name": "v7", "annotations": {PREFIX + "model-version": "7", PREFIX + "model-storage-uri": "s3://m/7",
                                      PREFIX + "stable-version": "6", PREFIX + "stable-storage-uri": "s3://m/6",
                                      PREFIX + "stable-predictor-name": ""},
        "model": {"modelFormat": {"name": "sklearn"}, "name": "kserve-container", "storageUri": "s3://m/7"}}}
    return {"metadata": {"name": "m", "namespace": "ns", "generation": 3, "resourceVersion": "1"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://m/6"}},
                     "canary": [canary]},
            "status": {"observedGeneration": 3, "deploymentMode": "Standard",
                       "canaryStatuses": [{"name": "v7", "ready": True, "trafficPercent": 10}],
                       "components": {"predictor": {"url": "http://m-predictor.ns.svc.cluster.local"}},
                       "conditions": [{"type": "PredictorReady", "status": "True"}]}}


def router() -> KServeRouter:
    return KServeRouter(client.ApiClient(), "ns", "m")


def test_the_standard_gate_measures_the_canary_predictors_service_not_stables() -> None:
    """The gate falls back on this URL when the spec names none: stable's would pass any candidate."""
    state = standard_state("m", standard_view(staged_standard(), "m"))
    assert state.canary_url == "http://m-v7-predictor.ns.svc.cluster.local"


def test_standard_staging_refuses_canaries_someone_else_made() -> None:
    """spec.canary is an atomic list applied with force: staging over it would take another team's traffic."""
    obj = staged_standard()
    obj["spec"]["canary"] = [{"trafficPercent": 20, "predictor": {
        "name": "theirs", "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://other/x"}}}]
    with pytest.raises(TargetStateError, match="did not create"):
        router()._standard_stage(standard_view(obj, "m"), CandidateModel("m", "8", "s3://m/8"), "6")


def test_a_standard_promotion_sent_again_changes_nothing() -> None:
    """A restart between the apply and the ledger write sends the promotion again: it must not be refused."""
    body = router()._standard_promote(standard_view(staged_standard(), "m"))
    assert body is not None
    promoted = copy.deepcopy(staged_standard())
    promoted["spec"]["predictor"] = body["spec"]["predictor"] | {"model": {
        "modelFormat": {"name": "sklearn"}, **body["spec"]["predictor"]["model"]}}
    promoted["spec"]["canary"] = []
    assert router()._standard_promote(standard_view(promoted, "m")) is None


class _Refusing:
    def __init__(self, status: int) -> None:
        self.status = status
        self.api_client = client.ApiClient()

    def get_namespaced_custom_object(self, *_: Any) -> Any:
        raise ApiException(status=self.status, reason="refused")


@pytest.mark.parametrize(("status", "error"), [(503, TargetUnavailable), (403, AccessDenied)])
def test_a_read_that_fails_is_not_a_deleted_target(status: int, error: type[Exception]) -> None:
    """Read as "gone", a rollback would record traffic restored without sending anything."""
    objects = ObjectClient(client.ApiClient(), INFERENCE_SERVICE, "ns", "m")
    objects.custom = _Refusing(status)  # type: ignore[assignment]
    with pytest.raises(error):
        objects.get_or_none()


def registry_with_versions(count: int) -> InMemoryRegistry:
    registry = InMemoryRegistry()
    for _ in range(count):
        registry.add_version("m")
    return registry


def test_a_first_promotion_removes_a_stale_previous_alias() -> None:
    """Left from an earlier history, it would send a one-command rollback to a version nobody replaced."""
    registry = registry_with_versions(3)
    registry.set_alias("m", "production-previous", "1")
    registry.promote("m", "production", "3", "ns/r")
    assert registry.verify_alias("m", "production-previous") is None


def test_the_previous_version_is_recorded_before_the_alias_moves() -> None:
    """A crash between the two writes must not leave the alias moved with no record of the way back."""
    registry = registry_with_versions(3)
    registry.set_alias("m", "production", "2")
    writes: list[str] = []

    def recorded(name: str, write: Callable[..., None]) -> Callable[..., None]:
        def wrapper(*args: Any) -> None:
            writes.append(name if name == "tags" else f"alias {args[1]}")
            write(*args)
        return wrapper

    registry._set_alias = recorded("alias", registry._set_alias)  # type: ignore[method-assign]
    registry._set_version_tags = recorded("tags", registry._set_version_tags)  # type: ignore[method-assign]
    registry.promote("m", "production", "3", "ns/r")
    assert writes.index("tags") < writes.index("alias production"), writes
    assert registry.resolve("m", version="3").tags[PREVIOUS_VERSION_TAG] == "2"
