"""Seldon Core v1 promotion: stable takes the candidate's version-named Deployments, and the promotion reads as
done only once Seldon reports those Deployments available (never from the status written before the change)."""

from __future__ import annotations

import copy
from typing import Any

from controller.traffic.base import CandidateModel, ConflictError, TargetNotFound
from controller.traffic.kserve import ANN_VERSION, ANN_VERSION_URI
from controller.traffic.kube import SELDON_DEPLOYMENT, ObjectClient
from controller.traffic.seldon import SeldonDeploymentRouter, deployment_names, seldon_name

Obj = dict[str, Any]

V6, V7 = "s3://m/6", "s3://m/7"
CANDIDATE_7 = CandidateModel("m", "7", V7)
STABLE_6 = CandidateModel("m", "6", V6)


class FakeObjectClient(ObjectClient):
    """One object in memory; apply merges metadata.annotations (as the router's field manager) and spec."""

    def __init__(self, obj: Obj, name: str = "x") -> None:
        self.resource, self.namespace, self.name, self.field_manager = SELDON_DEPLOYMENT, "ns", name, "mr"
        obj.setdefault("metadata", {}).update({"name": name, "namespace": "ns"})
        obj["metadata"].setdefault("resourceVersion", "1")
        self.obj = obj
        self.owned: set[str] = set()
        self.applies: list[Obj] = []

    def get(self) -> Obj:
        if self.obj is None:
            raise TargetNotFound("not found")
        return copy.deepcopy(self.obj)

    def apply(self, body: Obj, force: bool = True) -> Obj:
        body = copy.deepcopy(body)
        self.applies.append(body)
        meta = body["metadata"]
        if meta.get("resourceVersion") and meta["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise ConflictError("409")
        annotations = self.obj["metadata"].setdefault("annotations", {})
        written = meta.get("annotations") or {}
        for key in self.owned - set(written):  # server-side apply drops what the manager no longer sends
            annotations.pop(key, None)
        annotations.update(written)
        self.owned = set(written)
        self.obj.setdefault("spec", {}).update(body.get("spec") or {})
        self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.obj)


def router_on(obj: Obj, name: str = "x") -> tuple[SeldonDeploymentRouter, FakeObjectClient]:
    router = SeldonDeploymentRouter.__new__(SeldonDeploymentRouter)
    fake = FakeObjectClient(obj, name)
    router.client, router.stable_predictor, router.canary_predictor = fake, "main", "canary"
    return router, fake


def sdep(predictor: Obj | None = None) -> Obj:
    stable = predictor or {"name": "main", "traffic": 100, "replicas": 2,
                           "graph": {"name": "clf", "implementation": "SKLEARN_SERVER", "modelUri": V6},
                           "componentSpecs": [{"spec": {"containers": [{"name": "clf"}]}}]}
    return {"spec": {"protocol": "v2", "predictors": [stable]},
            "metadata": {"annotations": {ANN_VERSION: "6", ANN_VERSION_URI: V6}}}


def seldon_reports(fake: FakeObjectClient, available: dict[str, bool], state: str = "Available") -> None:
    """Seldon's status: the object's state and each named Deployment's replicas (1) and available ones."""
    fake.obj["status"] = {"state": state, "deploymentStatus": {
        name: {"replicas": 1, "availableReplicas": 1 if up else 0} for name, up in available.items()}}


def staged_at_50(obj: Obj, name: str = "x") -> tuple[SeldonDeploymentRouter, FakeObjectClient, list[str], list[str]]:
    """Candidate 7 staged and at 50%, every Deployment available: (router, fake, stable's, canary's names)."""
    router, fake = router_on(obj, name)
    router.stage(CANDIDATE_7, "6")
    stable, canary = fake.obj["spec"]["predictors"]
    stable_names = [seldon_name(n) for n in deployment_names(name, stable)]
    canary_names = [seldon_name(n) for n in deployment_names(name, canary)]
    seldon_reports(fake, dict.fromkeys([*stable_names, *canary_names], True))
    router.set_weight(50, "7")
    assert router.observe().canary_ready
    return router, fake, stable_names, canary_names


def test_promotion_reads_as_done_only_once_the_versions_deployments_are_available() -> None:
    router, fake, old, canary = staged_at_50(sdep())
    router.promote()
    # Seldon has not acted yet: its status is the one from before, Available, with the old pods only.
    state = router.observe()
    assert state.stable_version is None and state.canary_version is None and not state.ready
    assert "version 7" in state.message
    new = [seldon_name(n) for n in deployment_names("x", fake.obj["spec"]["predictors"][0])]
    assert new == ["x-main-0-clf-v7"] and not set(new) & {*old, *canary}
    # Seldon made the new Deployment; its pods are not up, the old ones still serve.
    seldon_reports(fake, {**dict.fromkeys([*old, *canary], True), **dict.fromkeys(new, False)}, state="Creating")
    assert router.observe().stable_version is None
    # Even an Available state does not stand in for the version's own Deployments.
    seldon_reports(fake, {**dict.fromkeys([*old, *canary], True), **dict.fromkeys(new, False)})
    assert router.observe().stable_version is None
    seldon_reports(fake, dict.fromkeys(new, True))
    state = router.observe()
    assert (state.stable_version, state.canary_version, state.ready, state.message) == ("7", None, True, "")


def test_promote_gives_stable_the_candidates_version_named_component_specs_and_keeps_the_rest() -> None:
    stable: Obj = {"name": "main", "traffic": 100, "replicas": 2, "annotations": {"seldon.io/svc-name": "x-svc"},
                   "explainer": {"type": "AnchorTabular", "modelUri": "s3://explainers/x"},
                   "graph": {"name": "clf", "implementation": "SKLEARN_SERVER", "modelUri": V6},
                   "componentSpecs": [{"metadata": {"name": "x-main"}, "spec": {"containers": [{"name": "clf"}]}}]}
    router, fake, _, _ = staged_at_50(sdep(copy.deepcopy(stable)))
    router.promote()
    [promoted] = fake.obj["spec"]["predictors"]
    assert promoted["graph"]["modelUri"] == V7 and promoted["traffic"] == 100
    assert {k: promoted[k] for k in ("replicas", "annotations", "explainer")} == \
        {k: stable[k] for k in ("replicas", "annotations", "explainer")}
    # Its own name x-main would keep the old Deployment, rolled in place: read as available before any new pod.
    assert promoted["componentSpecs"] == [{"metadata": {"name": "clf-v7"}, "spec": {"containers": [{"name": "clf"}]}}]


def test_a_prepackaged_stable_without_component_specs_gets_the_candidates() -> None:
    router, fake, old, _ = staged_at_50(sdep({"name": "main", "traffic": 100, "graph": {
        "name": "clf", "implementation": "MLFLOW_SERVER", "modelUri": V6}}))
    assert old == ["x-main-0-clf"]
    router.promote()
    [promoted] = fake.obj["spec"]["predictors"]
    assert deployment_names("x", promoted) == ["x-main-0-clf-v7"]
    assert router.observe().stable_version is None
    seldon_reports(fake, {"x-main-0-clf-v7": True})
    assert router.observe().stable_version == "7"


def test_long_names_are_read_as_seldon_hashes_them() -> None:
    name = "x" * 50  # <sdep>-main-0-clf-v7 is over 63 characters
    router, fake, _, _ = staged_at_50(sdep(), name)
    router.promote()
    hashed = seldon_name(f"{name}-main-0-clf-v7")
    assert hashed.startswith("seldon-")
    seldon_reports(fake, {f"{name}-main-0-clf-v7": True})  # the unhashed name is not what Seldon reports
    assert router.observe().stable_version is None
    seldon_reports(fake, {hashed: True})
    assert router.observe().stable_version == "7"


def test_promote_again_after_a_kill_changes_nothing() -> None:
    router, fake, _, _ = staged_at_50(sdep())
    router.promote()
    promoted, writes = copy.deepcopy(fake.obj), len(fake.applies)
    router.promote()
    assert len(fake.applies) == writes and fake.obj == promoted


def test_a_stable_never_promoted_here_reads_as_before() -> None:
    # Deployments named by Seldon's container rule, or none reported at all: the version as recorded.
    router, fake = router_on(sdep())
    seldon_reports(fake, {})
    state = router.observe()
    assert (state.stable_version, state.ready) == ("6", True)


def test_a_restore_after_promotion_is_read_from_the_state_as_the_readme_says() -> None:
    router, fake, _, _ = staged_at_50(sdep())
    router.promote()
    seldon_reports(fake, {"x-main-0-clf-v7": True})
    router.restore(STABLE_6)  # rolls the version-7-named Deployment in place
    state = router.observe()
    assert (state.stable_version, state.ready) == ("6", True)
