"""KServe Knative: the canaryTrafficPercent 0 a rollback or restore pins comes off once the copy of stable is ready.

Left in place, only the router's field manager owns it, so every later revision made outside ModelRollout
(resources, image, a Git sync) would stay at 0% of traffic, silently. The object here is kept in memory, its
status written by the repo's KServe stand-in, and applies follow server-side apply for the router's own fields:
a field the router owned and leaves out of its next body is removed.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_runtime_actions import runtime_with

from controller.api.status import ModelRolloutStatus, Phase, VersionRef
from controller.devstack.kserve_standin import KServeStandIn, Revision, _keep_transition_times
from controller.operator.runtime import PIN_RECHECK_SECONDS, OperatorConfig, RolloutStepper
from controller.traffic.base import CandidateModel
from controller.traffic.kserve import KServeRouter, knative_view

Obj = dict[str, Any]
V6, V7 = "s3://m/6", "s3://m/7"


def _leaves(d: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[tuple[str, ...], Any] = {}
    for k, v in d.items():
        out.update(_leaves(v, (*prefix, k)))
    return out


class Kserve:
    """One InferenceService in Knative mode; `slow` names revisions that are not ready yet."""

    def __init__(self) -> None:
        self.obj: Obj = {"metadata": {"name": "m", "namespace": "ns", "generation": 1, "resourceVersion": "1",
                                      "annotations": {}},
                         "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": V6}}}}
        self.slow: set[str] = set()
        self.standin = KServeStandIn(client.ApiClient())
        self.standin._is_ready = lambda r: r.name not in self.slow  # type: ignore[method-assign]
        self.owned: set[tuple[str, ...]] = set()
        self.applied: list[Obj] = []

    def get(self) -> Obj:
        status = self.standin._knative_status(self.obj)
        status["conditions"] = _keep_transition_times(status["conditions"], [])
        self.obj["status"] = status
        return copy.deepcopy(self.obj)

    def apply(self, body: Obj, force: bool = True) -> Obj:
        body = copy.deepcopy(body)
        self.applied.append(body)
        for key in ("name", "namespace", "resourceVersion"):
            body["metadata"].pop(key, None)
        new = _leaves({"metadata": body["metadata"], "spec": body["spec"]})
        before = copy.deepcopy(self.obj["spec"])
        for path in self.owned - set(new):  # no other manager in these tests: what the router drops goes
            parent = self.obj
            for key in path[:-1]:
                parent = parent.get(key, {})
            parent.pop(path[-1], None)
        for path, value in new.items():
            parent = self.obj
            for key in path[:-1]:
                parent = parent.setdefault(key, {})
            parent[path[-1]] = value
        self.owned = set(new)
        if self.obj["spec"] != before:
            self.obj["metadata"]["generation"] += 1
        self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.obj)

    def revisions(self) -> list[Revision]:
        return [Revision(**r) for r in json.loads(self.get()["status"]["annotations"][
            "standin.modelrollout.io/revisions"])]

    def router(self) -> KServeRouter:
        router = KServeRouter(client.ApiClient(), "ns", "m", settle_timeout=0.2, poll_interval=0.01)
        router.client.get = router.client.get_or_none = self.get  # type: ignore[method-assign]
        router.client.apply = self.apply  # type: ignore[method-assign]
        return router


def rolled_back(after_promotion: bool) -> tuple[Kserve, KServeRouter]:
    """Candidate 7 staged against stable 6 and withdrawn (rollback at 10%, or restore after promotion): the
    pin is on and the copy of stable, rev 3, is not ready yet."""
    kserve = Kserve()
    router = candidate_serving(kserve, after_promotion)
    withdraw(router, after_promotion)
    obj = kserve.get()
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V6
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert obj["status"]["components"]["predictor"]["latestCreatedRevision"] == "m-predictor-00003"
    return kserve, router


def candidate_serving(kserve: Kserve, after_promotion: bool) -> KServeRouter:
    """Candidate 7 staged against stable 6, at 10% or promoted; the copy of stable a withdrawal makes is slow."""
    router = kserve.router()
    router.stage(CandidateModel("m", "7", V7), stable_version="6")
    kserve.slow.add("m-predictor-00003")
    if after_promotion:
        router.set_weight(100)
        router.promote()
    else:
        router.set_weight(10)
    return router


def withdraw(router: KServeRouter, after_promotion: bool) -> None:
    if after_promotion:
        router.restore(CandidateModel("m", "6", V6))
    else:
        router.rollback()


@pytest.mark.parametrize("after_promotion", [False, True], ids=["rollback", "restore"])
def test_the_pin_stays_until_the_copy_of_stable_is_ready_then_one_call_removes_it(after_promotion: bool) -> None:
    kserve, router = rolled_back(after_promotion)
    state = router.observe()
    # Pinned, stable at 100%; no canary or weight the engine could misread.
    assert state.pinned and state.synced and state.stable_version == "6"
    assert (state.canary_name, state.canary_weight) == (None, None)
    written = len(kserve.applied)
    withdraw(router, after_promotion)
    assert len(kserve.applied) == written  # rev 3 not ready: unpinning would send users to the rejected revision
    assert kserve.get()["spec"]["predictor"]["canaryTrafficPercent"] == 0 and router.observe().pinned

    kserve.slow.clear()
    withdraw(router, after_promotion)
    assert len(kserve.applied) == written + 1
    assert "canaryTrafficPercent" not in kserve.applied[-1]["spec"]["predictor"]
    obj = kserve.get()
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
    assert obj["status"]["components"]["predictor"]["latestRolledoutRevision"] == "m-predictor-00003"
    assert len(kserve.revisions()) == 3  # the unpin made no revision of its own
    state = router.observe()
    assert not state.pinned and state.stable_version == "6" and state.canary_weight is None and not state.message

    withdraw(router, after_promotion)
    assert len(kserve.applied) == written + 1  # nothing more to write

    # A later change made outside ModelRollout now gets the traffic.
    kserve.obj["spec"]["predictor"]["resources"] = {"limits": {"memory": "4Gi"}}
    kserve.obj["metadata"]["generation"] += 1
    traffic = kserve.get()["status"]["components"]["predictor"]["traffic"]
    assert [(t["revisionName"], t["percent"]) for t in traffic] == [("m-predictor-00004", 100)]


def test_finish_withdrawal_keeps_calling_while_pinned() -> None:
    kserve, router = rolled_back(after_promotion=False)
    runtime = runtime_with(router)
    status = ModelRolloutStatus(phase=Phase.ROLLED_BACK, candidate=VersionRef(version="7"))
    assert runtime.finish_withdrawal(status) is True
    assert runtime.finish_withdrawal(status) is True
    assert kserve.get()["spec"]["predictor"]["canaryTrafficPercent"] == 0
    # Waiting for pods that may take minutes (or never come) is not polled every second.
    assert runtime.withdrawal_recheck == PIN_RECHECK_SECONDS > 1
    kserve.slow.clear()
    assert runtime.finish_withdrawal(status) is False
    assert "canaryTrafficPercent" not in kserve.get()["spec"]["predictor"]
    written = len(kserve.applied)
    assert runtime.finish_withdrawal(status) is False and len(kserve.applied) == written


def test_a_canary_traffic_percent_another_manager_also_sets_is_not_ours_to_remove() -> None:
    kserve, _ = rolled_back(after_promotion=False)
    obj = kserve.get()
    ctp = {"f:spec": {"f:predictor": {"f:canaryTrafficPercent": {}}}}
    obj["metadata"]["managedFields"] = [{"manager": "modelrollout-controller", "operation": "Apply",
                                         "fieldsV1": {"f:spec": {"f:predictor": {"f:model": {}}}}},
                                        {"manager": "argocd-controller", "operation": "Apply", "fieldsV1": ctp}]
    assert not knative_view(obj, "m").pinned  # our apply without it left it to Argo CD: nothing to wait for
    obj["metadata"]["managedFields"][0]["fieldsV1"] = ctp
    assert knative_view(obj, "m").pinned


class LaggingKserve(Kserve):
    """KServe as it really reports (kserve/kserve#6081): status.observedGeneration is its Knative Service's
    counter, which a pin moves twice for one InferenceService generation. So once stable's storageUri is
    written back, the status can read as caught up while KServe has not reconciled that write yet."""

    def __init__(self) -> None:
        super().__init__()
        self.lagging = False

    def get(self) -> Obj:
        if not self.lagging:
            return super().get()
        self.obj["status"]["observedGeneration"] = self.obj["metadata"]["generation"]
        return copy.deepcopy(self.obj)

    def apply(self, body: Obj, force: bool = True) -> Obj:
        out = super().apply(body, force)
        predictor = body["spec"]["predictor"]
        if predictor["model"]["storageUri"] == V6 and predictor.get("canaryTrafficPercent") == 0:
            self.lagging = True
        return out


@pytest.mark.parametrize("after_promotion", [False, True], ids=["rollback", "restore"])
def test_a_status_that_only_looks_caught_up_never_unpins_onto_the_withdrawn_revision(after_promotion: bool) -> None:
    kserve = LaggingKserve()
    router = candidate_serving(kserve, after_promotion)
    kserve.get()
    withdraw(router, after_promotion)  # the pin, then stable's storageUri: KServe has not reconciled the latter
    assert kserve.obj["spec"]["predictor"]["model"]["storageUri"] == V6 and kserve.lagging
    withdraw(router, after_promotion)  # called again while pinned: latestCreated/Ready still name the candidate's
    assert kserve.obj["spec"]["predictor"].get("canaryTrafficPercent") == 0, "unpinned onto the rejected revision"

    kserve.lagging = False
    traffic = kserve.get()["status"]["components"]["predictor"]["traffic"]
    assert [(t["revisionName"], t["percent"]) for t in traffic if t["percent"]] == [("m-predictor-00001", 100)]
    kserve.slow.clear()
    withdraw(router, after_promotion)  # the copy of stable is ready: now the pin comes off
    status = kserve.get()["status"]["components"]["predictor"]
    assert "canaryTrafficPercent" not in kserve.obj["spec"]["predictor"]
    assert status["latestRolledoutRevision"] == "m-predictor-00003"


def test_finish_withdrawal_leaves_a_canary_staged_again_since_its_status_was_read() -> None:
    """Two operators overlap in a rolling update: one ends a reconcile on a status read before a retry, while the
    other has staged the same version again at 10%. Withdrawing on that old read took the retry's canary off the
    target (and pinned it) for good: the rollout sat Paused at 0%."""
    kserve = Kserve()
    router = candidate_serving(kserve, after_promotion=False)  # version 7 at 10%: the retry's canary
    runtime = runtime_with(router)
    old_read = ModelRolloutStatus(phase=Phase.ROLLED_BACK, attempt=1, candidate=VersionRef(version="7"))
    written = len(kserve.applied)
    assert runtime.finish_withdrawal(old_read, still_current=lambda: False) is False
    assert len(kserve.applied) == written and router.observe().canary_weight == 10
    # Cannot tell now (the API server did not answer): unfinished, so asked again, never dropped for good.
    assert runtime.finish_withdrawal(old_read, still_current=lambda: None) is True
    assert len(kserve.applied) == written
    runtime.finish_withdrawal(old_read, still_current=lambda: True)  # still ours: withdrawn
    assert kserve.get()["spec"]["predictor"]["canaryTrafficPercent"] == 0


class OneRollout:
    def __init__(self, obj: dict[str, Any] | Exception | None) -> None:
        self.obj = obj

    def get(self, ref: object) -> dict[str, Any] | None:
        if isinstance(self.obj, Exception):
            raise self.obj
        return copy.deepcopy(self.obj)


def test_the_stepper_asks_the_stored_rollout_whether_the_withdrawal_is_still_its_own() -> None:
    ended = ModelRolloutStatus(phase=Phase.ROLLED_BACK, attempt=1, candidate=VersionRef(version="7"))
    retried = ModelRolloutStatus(phase=Phase.PROGRESSING, attempt=2, candidate=VersionRef(version="7"))
    meta = {"namespace": "ns", "name": "m", "uid": "u1", "resourceVersion": "7"}
    unwritten = {"metadata": dict(meta), "status": retried.to_dict()}  # as this step read it, its decision unstored
    stepper = RolloutStepper(OneRollout(unwritten), OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    assert stepper._still_withdrawn(meta, ended) is True  # nobody wrote since: the same reconcile withdraws at once
    meta["resourceVersion"] = "6"  # written by someone else since this step read it
    stored = {"metadata": {**meta, "resourceVersion": "8"}, "status": ended.to_dict()}
    stepper.store = OneRollout(stored)  # type: ignore[assignment]
    assert stepper._still_withdrawn(meta, ended) is True  # ... but it still ends this attempt
    for fresh in ({"metadata": {**meta, "resourceVersion": "8"}, "status": retried.to_dict()},  # a retry took it on
                  {"metadata": {**meta, "uid": "u2"}, "status": ended.to_dict()},  # deleted and made again
                  None):  # deleted
        stepper.store = OneRollout(fresh)  # type: ignore[assignment]
        assert stepper._still_withdrawn(meta, ended) is False, fresh
    for trouble in (ApiException(status=503), {"metadata": {**meta, "resourceVersion": "8"},
                                               "status": {"phase": 7}}):  # not now
        stepper.store = OneRollout(trouble)  # type: ignore[assignment]
        assert stepper._still_withdrawn(meta, ended) is None, trouble
