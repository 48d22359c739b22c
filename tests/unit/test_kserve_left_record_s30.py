"""KServe Knative: the candidate taken out of spec.predictor another way mid-canary (Argo CD's self-heal put stable's
storageUri back; our canaryTrafficPercent stays), then rollback(): the record ends as a rollback of ours leaves it
(stable's version on stable's storageUri), the spec's model untouched. A third model there is refused, nothing
written. The object in memory, its status from the repo's KServe stand-in (test_kserve_unpin.Kserve); the live runs:
tests/integration/test_kserve_left_record_s30_live.py."""

from __future__ import annotations

import pytest
from test_kserve_unpin import V6, Kserve

from controller.traffic.base import CandidateModel, TargetState, TargetStateError
from controller.traffic.kserve import ANN_VERSION, ANN_VERSION_URI, _record_stale, knative_view

THIRD = "s3://m/9"


def staged_then_synced(uri: str) -> tuple[Kserve, int]:
    kserve = Kserve()
    router = kserve.router()
    router.stage(CandidateModel("m", "7", "s3://m/7"), stable_version="6")
    router.set_weight(10, "7")
    kserve.obj["spec"]["predictor"]["model"]["storageUri"] = uri  # the self-heal (another manager's write)
    kserve.obj["metadata"]["generation"] += 1
    return kserve, len(kserve.applied)


def test_stable_synced_back_then_rollback_records_stables_version_in_one_write() -> None:
    kserve, written = staged_then_synced(V6)
    assert _record_stale(knative_view(kserve.get(), "m"))
    assert "storageUri changed outside ModelRollout" in router_state(kserve).message  # the record names 7
    kserve.router().rollback()
    body = kserve.applied[written]
    assert body["spec"]["predictor"]["model"]["storageUri"] == V6
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 10  # the pin comes off as after our own rollback
    annotations = kserve.get()["metadata"]["annotations"]
    assert (annotations[ANN_VERSION], annotations[ANN_VERSION_URI]) == ("6", V6)
    assert not _record_stale(knative_view(kserve.get(), "m"))
    for _ in range(3):  # as the operator calls while pinned: the pin comes off, the record is not written again
        kserve.router().rollback()
    assert "canaryTrafficPercent" not in kserve.get()["spec"]["predictor"]
    assert all(b["metadata"]["annotations"][ANN_VERSION] == "6" for b in kserve.applied[written:])
    state = router_state(kserve)
    assert state.stable_version == "6" and not state.pinned and state.message == "", state


def test_a_third_model_synced_in_is_refused_and_nothing_is_written() -> None:
    kserve, written = staged_then_synced(THIRD)
    with pytest.raises(TargetStateError, match=r"neither the candidate nor stable .*canaryTrafficPercent 10"):
        kserve.router().rollback()
    assert len(kserve.applied) == written
    assert kserve.get()["spec"]["predictor"]["model"]["storageUri"] == THIRD


def test_a_record_without_the_candidates_uri_is_not_settled() -> None:
    """Annotations written before the URI was recorded, or a first rollout's rollback (no stable version known):
    nothing tells them stale, so nothing is written for them."""
    kserve, _ = staged_then_synced(V6)
    del kserve.obj["metadata"]["annotations"][ANN_VERSION_URI]
    assert not _record_stale(knative_view(kserve.get(), "m"))


def router_state(kserve: Kserve) -> TargetState:
    return kserve.router().observe()
