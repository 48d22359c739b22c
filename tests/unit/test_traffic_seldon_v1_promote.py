"""Seldon Core v1 promotion and restore: stable takes Deployments named after the version it gets, and the change
reads as done only once Seldon reports those Deployments available (never from the status written before it)."""

from __future__ import annotations

import copy
from typing import Any

from seldon_fake import FakeObjectClient

from controller.traffic.base import CandidateModel
from controller.traffic.kserve import ANN_VERSION, ANN_VERSION_URI
from controller.traffic.kube import SELDON_DEPLOYMENT
from controller.traffic.seldon import SeldonDeploymentRouter, deployment_names, seldon_name

Obj = dict[str, Any]

V6, V7 = "s3://m/6", "s3://m/7"
CANDIDATE_7 = CandidateModel("m", "7", V7)
STABLE_6 = CandidateModel("m", "6", V6)


def router_on(obj: Obj, name: str = "x") -> tuple[SeldonDeploymentRouter, FakeObjectClient]:
    router = SeldonDeploymentRouter.__new__(SeldonDeploymentRouter)
    fake = FakeObjectClient(SELDON_DEPLOYMENT, obj, name)
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


def stable_names(fake: FakeObjectClient) -> list[str]:
    return [seldon_name(n) for n in deployment_names("x", fake.obj["spec"]["predictors"][0])]


def promote_and_confirm(router: SeldonDeploymentRouter, fake: FakeObjectClient, candidate: CandidateModel,
                        stable_version: str) -> None:
    """Stage `candidate`, 50%, promote: not confirmed from the status written before, only once stable's new
    Deployments (new names, none of the old) are reported available."""
    router.stage(candidate, stable_version)
    seldon_reports(fake, dict.fromkeys(
        [seldon_name(n) for p in fake.obj["spec"]["predictors"] for n in deployment_names("x", p)], True))
    router.set_weight(50, candidate.version)
    before = set(fake.obj["status"]["deploymentStatus"])
    router.promote()
    state = router.observe()
    assert (state.stable_version, state.ready) == (None, False), "confirmed before any new pod"
    assert not set(stable_names(fake)) & before
    seldon_reports(fake, dict.fromkeys(stable_names(fake), True))
    state = router.observe()
    assert (state.stable_version, state.ready, state.message) == (candidate.version, True, "")


def restore_and_confirm(router: SeldonDeploymentRouter, fake: FakeObjectClient, stable: CandidateModel) -> None:
    before = set(fake.obj["status"]["deploymentStatus"])
    router.restore(stable)
    assert not set(stable_names(fake)) & before  # new Deployments, not the promoted version's rolled in place
    state = router.observe()
    assert (state.stable_version, state.ready) == (None, False)
    assert f"version {stable.version}" in state.message
    seldon_reports(fake, {**dict.fromkeys(before, True), **dict.fromkeys(stable_names(fake), False)})
    assert router.observe().stable_version is None
    seldon_reports(fake, dict.fromkeys(stable_names(fake), True))
    state = router.observe()
    assert (state.stable_version, state.ready, state.message) == (stable.version, True, "")


def test_a_restore_waits_for_the_restored_versions_own_deployments() -> None:
    router, fake, _, _ = staged_at_50(sdep())
    router.promote()
    seldon_reports(fake, {"x-main-0-clf-v7": True})
    restore_and_confirm(router, fake, STABLE_6)
    [restored] = fake.obj["spec"]["predictors"]
    assert restored["graph"]["modelUri"] == V6
    assert restored["componentSpecs"] == [{"metadata": {"name": "clf-v6"}, "spec": {"containers": [{"name": "clf"}]}}]


def test_promoting_a_restored_over_version_again_waits_for_new_deployments() -> None:
    # promote 7, restore 6, promote 7 again: under the names of the first promotion the restored version's pods
    # would be rolled in place and read as version 7's.
    router, fake = router_on(sdep())
    seldon_reports(fake, {"x-main-0-clf": True})
    promote_and_confirm(router, fake, CANDIDATE_7, "6")
    restore_and_confirm(router, fake, STABLE_6)
    promote_and_confirm(router, fake, CANDIDATE_7, "6")
    assert stable_names(fake) == ["x-main-0-clf-v7"]


def test_promoting_again_after_a_restore_to_the_previous_version_waits_for_new_deployments() -> None:
    # promote 7, promote 8, restore 7, promote 8 again.
    candidate_8 = CandidateModel("m", "8", "s3://m/8")
    router, fake = router_on(sdep())
    seldon_reports(fake, {"x-main-0-clf": True})
    promote_and_confirm(router, fake, CANDIDATE_7, "6")
    promote_and_confirm(router, fake, candidate_8, "7")
    restore_and_confirm(router, fake, CANDIDATE_7)
    promote_and_confirm(router, fake, candidate_8, "7")


def test_restore_again_after_a_kill_changes_nothing() -> None:
    router, fake, _, _ = staged_at_50(sdep())
    router.promote()
    seldon_reports(fake, {"x-main-0-clf-v7": True})
    router.restore(STABLE_6)
    restored = copy.deepcopy(fake.obj)
    router.restore(STABLE_6)
    assert fake.obj["spec"] == restored["spec"]
    assert fake.obj["metadata"]["annotations"] == restored["metadata"]["annotations"]
    assert router.observe().stable_version is None  # still waiting for version 6's Deployments
    seldon_reports(fake, {"x-main-0-clf-v6": True})
    state = router.observe()
    assert (state.stable_version, state.ready) == ("6", True)
