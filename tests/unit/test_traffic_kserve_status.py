"""What the KServe router reads from an InferenceService's status, on statuses real KServe writes and the
stand-in does not (the integration tests run the router against the stand-in and the real API server)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from controller.traffic.base import CandidateModel, ConflictError, TargetStateError
from controller.traffic.kserve import (
    KServeRouter,
    _check_stable_uri,
    knative_state,
    knative_view,
    standard_state,
    standard_view,
)

PREFIX = "modelrollout.io/"


def staged_after_a_rollback(configuration: str) -> dict[str, Any]:
    """Candidate 8 staged (generation 4) after a rollback left rev 3, a copy of stable (rev 1), latest."""
    return {
        "metadata": {"name": "m", "namespace": "ns", "generation": 4,
                     "annotations": {PREFIX + "model-version": "8", PREFIX + "stable-version": "6",
                                     PREFIX + "stable-storage-uri": "s3://b/v6",
                                     PREFIX + "stable-revision": "m-predictor-00001"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/v8"},
                               "canaryTrafficPercent": 0}},
        "status": {"observedGeneration": 4, "deploymentMode": "Knative",
                   "components": {"predictor": {
                       "latestCreatedRevision": "m-predictor-00003", "latestReadyRevision": "m-predictor-00003",
                       "latestRolledoutRevision": "m-predictor-00001",
                       "traffic": [{"revisionName": "m-predictor-00001", "percent": 100, "tag": "prev",
                                    "url": "http://prev-m"},
                                   {"revisionName": "m-predictor-00003", "percent": 0, "tag": "latest",
                                    "url": "http://latest-m"}]}},
                   "conditions": [{"type": "PredictorRouteReady", "status": "True"},
                                  {"type": "IngressReady", "status": "True"},
                                  {"type": "PredictorConfigurationReady", "status": configuration}]}}


def test_the_previous_latest_revision_is_not_a_ready_candidate_before_knative_configures_the_new_one() -> None:
    """Knative's Service moves observedGeneration before its Configuration has made the candidate's revision."""
    state = knative_state("m", knative_view(staged_after_a_rollback("Unknown"), "m"))
    assert state.synced and not state.canary_ready  # the gate must not measure the copy of stable


def test_a_configured_latest_revision_is_the_ready_candidate() -> None:
    state = knative_state("m", knative_view(staged_after_a_rollback("True"), "m"))
    assert state.canary_ready and state.canary_name == "m-predictor-00003" and state.canary_url == "http://latest-m"


def knative_weight(percent: int | None, *, rolled_out: str, traffic: list[dict[str, Any]],
                   generation: int = 5, observed: int = 5) -> dict[str, Any]:
    """Candidate 8 (rev 2) staged against stable 6 (rev 1), with KServe's status for canaryTrafficPercent
    `percent` (None: removed, the promotion). previousRolledoutRevision is rev 1 once rev 2 took 100%."""
    predictor: dict[str, Any] = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/v8"}}
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    return {
        "metadata": {"name": "m", "namespace": "ns", "generation": generation,
                     "annotations": {PREFIX + "model-version": "8", PREFIX + "stable-version": "6",
                                     PREFIX + "stable-storage-uri": "s3://b/v6",
                                     PREFIX + "stable-revision": "m-predictor-00001",
                                     "serving.kserve.io/enable-tag-routing": "true"}},
        "spec": {"predictor": predictor},
        "status": {"observedGeneration": observed, "deploymentMode": "Serverless",
                   "components": {"predictor": {
                       "latestCreatedRevision": "m-predictor-00002", "latestReadyRevision": "m-predictor-00002",
                       "latestRolledoutRevision": rolled_out, "previousRolledoutRevision": "m-predictor-00001",
                       "traffic": traffic}},
                   "conditions": [{"type": "Ready", "status": "True"},
                                  {"type": "PredictorRouteReady", "status": "True"},
                                  {"type": "IngressReady", "status": "True"},
                                  {"type": "PredictorConfigurationReady", "status": "True"}]}}


# KServe's route at canaryTrafficPercent 100: the latest revision alone, and PropagateStatus rolls it out.
ALL_ON_CANDIDATE = [{"revisionName": "m-predictor-00002", "latestRevision": True, "percent": 100, "tag": "latest",
                     "url": "http://latest-m"}]


def test_knative_weight_100_is_the_candidate_at_100_not_a_promotion() -> None:
    state = knative_state("m", knative_view(knative_weight(100, rolled_out="m-predictor-00002",
                                                           traffic=ALL_ON_CANDIDATE), "m"))
    # What the engine confirms set_weight(100) by: the candidate at 100%; stable is the recorded one, at 0%.
    assert (state.canary_version, state.canary_weight, state.canary_name) == ("8", 100, "m-predictor-00002")
    assert (state.stable_version, state.stable_name) == ("6", "m-predictor-00001")
    assert state.canary_ready and state.canary_url == "http://latest-m" and state.ready and not state.message


def test_knative_weight_100_reads_as_promoted_only_once_canary_traffic_percent_is_removed() -> None:
    before = knative_state("m", knative_view(knative_weight(100, rolled_out="m-predictor-00002",
                                                            traffic=ALL_ON_CANDIDATE), "m"))
    assert not (before.stable_version == "8" and before.canary_version is None)  # the engine's "promoted"
    after = knative_state("m", knative_view(knative_weight(None, rolled_out="m-predictor-00002",
                                                           traffic=ALL_ON_CANDIDATE, generation=6, observed=6), "m"))
    assert (after.stable_version, after.canary_version, after.canary_weight) == ("8", None, None)
    assert after.stable_name == "m-predictor-00002" and not after.canary_staged


def test_knative_rollback_from_weight_100_is_not_back_on_stable_until_the_status_says_so() -> None:
    # canaryTrafficPercent 0 written; KServe has not processed it: the candidate still has all traffic.
    written = knative_state("m", knative_view(knative_weight(0, rolled_out="m-predictor-00002",
                                                             traffic=ALL_ON_CANDIDATE, observed=4), "m"))
    assert written.canary_staged and written.canary_weight == 100
    # KServe's first pass: the ksvc asks for latest 0% and prev (still rev 2, rolled out) 100%, so
    # PropagateStatus moves latestRolledoutRevision back to rev 1 before any traffic does.
    def pinned(prev: str) -> list[dict[str, Any]]:  # the ksvc's traffic once it pins `prev` to 100%
        return [{"revisionName": "m-predictor-00002", "latestRevision": True, "percent": 0, "tag": "latest",
                 "url": "http://latest-m"},
                {"revisionName": prev, "latestRevision": False, "percent": 100, "tag": "prev", "url": "http://prev-m"}]

    moving = knative_state("m", knative_view(knative_weight(0, rolled_out="m-predictor-00001",
                                                            traffic=pinned("m-predictor-00002")), "m"))
    assert (moving.canary_version, moving.canary_weight, moving.stable_version) == ("8", 100, "6")
    # Next pass: prev names rev 1, which now has all traffic.
    done = knative_state("m", knative_view(knative_weight(0, rolled_out="m-predictor-00001",
                                                          traffic=pinned("m-predictor-00001")), "m"))
    assert (done.canary_version, done.canary_weight, done.stable_version) == ("8", 0, "6")
    assert done.stable_url == "http://prev-m"


def test_knative_stray_traffic_counts_as_canary_weight_so_a_rollback_is_not_confirmed() -> None:
    # The candidate at 0%, but 20% still goes to rev 3, neither stable (rev 1) nor the candidate (rev 2).
    traffic = [{"revisionName": "m-predictor-00001", "percent": 80, "tag": "prev"},
               {"revisionName": "m-predictor-00002", "percent": 0, "tag": "latest", "latestRevision": True},
               {"revisionName": "m-predictor-00003", "percent": 20}]
    state = knative_state("m", knative_view(knative_weight(0, rolled_out="m-predictor-00001", traffic=traffic), "m"))
    assert state.canary_weight == 20, state  # not 0: "back on stable" would confirm a rollback
    assert "20% of traffic goes to revisions that are neither stable nor the candidate" in state.message


# --- the storageUri a version annotation was written for ---------------------------------------------
# A kubectl edit, a Git sync or a hand revert replaces the model and keeps the router's annotations: the
# version they name must not be read as the version served (the engine would confirm it and move the alias).

CHANGED = "storageUri changed outside ModelRollout"
KNATIVE_CONDITIONS = [{"type": t, "status": "True"}
                      for t in ("Ready", "PredictorRouteReady", "IngressReady", "PredictorConfigurationReady")]


def knative_isvc(uri: str, percent: int | None, component: dict[str, Any], *,
                 recorded: str | None = "s3://m/7") -> dict[str, Any]:
    """Version 7 (recorded for `recorded`; None: written before the URI was recorded) staged against stable 6
    (rev 1), the spec now naming `uri`."""
    annotations = {PREFIX + "model-version": "7", PREFIX + "stable-version": "6",
                   PREFIX + "stable-storage-uri": "s3://m/6", PREFIX + "stable-revision": "m-predictor-00001",
                   "serving.kserve.io/enable-tag-routing": "true"}
    if recorded is not None:
        annotations[PREFIX + "model-storage-uri"] = recorded
    predictor: dict[str, Any] = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    return {"metadata": {"name": "m", "namespace": "ns", "generation": 5, "resourceVersion": "1",
                         "annotations": annotations},
            "spec": {"predictor": predictor},
            "status": {"observedGeneration": 5, "deploymentMode": "Serverless", "conditions": KNATIVE_CONDITIONS,
                       "components": {"predictor": component}}}


def mid_canary(uri: str, recorded: str | None = "s3://m/7") -> dict[str, Any]:
    """At 10%; the edited spec made rev 3, which as the latest ready revision takes the 10%."""
    return knative_isvc(uri, 10, {
        "latestCreatedRevision": "m-predictor-00003", "latestReadyRevision": "m-predictor-00003",
        "latestRolledoutRevision": "m-predictor-00001",
        "traffic": [{"revisionName": "m-predictor-00001", "percent": 90, "tag": "prev", "url": "http://prev-m"},
                    {"revisionName": "m-predictor-00003", "percent": 10, "latestRevision": True, "tag": "latest",
                     "url": "http://latest-m"}]}, recorded=recorded)


def rolled_out(uri: str, recorded: str | None = "s3://m/7") -> dict[str, Any]:
    """canaryTrafficPercent removed and rev 4, made from `uri`, rolled out at 100%."""
    return knative_isvc(uri, None, {
        "latestCreatedRevision": "m-predictor-00004", "latestReadyRevision": "m-predictor-00004",
        "latestRolledoutRevision": "m-predictor-00004", "previousRolledoutRevision": "m-predictor-00002",
        "traffic": [{"revisionName": "m-predictor-00004", "percent": 100, "latestRevision": True}]},
        recorded=recorded)


def test_knative_a_candidate_replaced_mid_canary_is_not_read_as_the_candidate() -> None:
    state = knative_state("m", knative_view(mid_canary("s3://other/x"), "m"))
    assert state.canary_name == "m-predictor-00003" and state.canary_weight == 10
    assert state.canary_version is None  # not "7 ready at 10%"
    assert CHANGED in state.message and "s3://other/x" in state.message
    assert state.stable_version == "6"  # rev 1 is the recorded stable revision: revisions do not change


def test_knative_a_replaced_model_is_named_without_the_secrets_its_uris_carry() -> None:
    """The message reaches status, the log and the TargetReady condition: a storage URI's token must not."""
    state = knative_state("m", knative_view(mid_canary("https://u:TOKEN1@h.example/x?sig=SIG1",
                                                       recorded="https://u:TOKEN2@h.example/m/7?sig=SIG2"), "m"))
    assert CHANGED in state.message and "h.example/x?<redacted>" in state.message, state.message
    assert not any(secret in state.message for secret in ("TOKEN1", "TOKEN2", "SIG1", "SIG2")), state.message
    with pytest.raises(TargetStateError) as refused:
        _check_stable_uri("InferenceService ns/m", "https://u:TOKEN3@h.example/m/6",
                          CandidateModel("m", "7", "https://u:TOKEN3@h.example/m/6"))
    assert "TOKEN3" not in str(refused.value) and "https://h.example/m/6" in str(refused.value)


@pytest.mark.parametrize("uri", ["s3://other/x",  # edited after the promotion (or promoted after an edit)
                                 "s3://m/6"])  # reverted by hand to the old stable's model
def test_knative_a_rolled_out_model_replaced_by_hand_is_not_read_as_the_promoted_version(uri: str) -> None:
    state = knative_state("m", knative_view(rolled_out(uri), "m"))
    assert state.stable_name == "m-predictor-00004" and state.canary_version is None
    assert state.stable_version is None and CHANGED in state.message  # not "7 serves all traffic"


def test_knative_the_model_the_version_was_recorded_for_is_read_as_before() -> None:
    state = knative_state("m", knative_view(rolled_out("s3://m/7"), "m"))
    assert state.stable_version == "7" and not state.message
    assert knative_state("m", knative_view(mid_canary("s3://m/7"), "m")).canary_version == "7"


def test_knative_annotations_written_before_the_uri_was_recorded_are_read_as_before() -> None:
    assert knative_state("m", knative_view(mid_canary("s3://other/x", recorded=None), "m")).canary_version == "7"
    state = knative_state("m", knative_view(rolled_out("s3://m/6", recorded=None), "m"))
    assert state.stable_version == "7" and not state.message


def test_knative_staging_on_a_replaced_model_records_the_engines_stable_not_the_stale_annotation() -> None:
    router = KServeRouter(client.ApiClient(), "ns", "m")
    body = router._knative_stage(knative_view(rolled_out("s3://m/6"), "m"), CandidateModel("m", "8", "s3://m/8"),
                                 stable_hint="6")
    written = body["metadata"]["annotations"]
    assert (written[PREFIX + "stable-version"], written[PREFIX + "stable-storage-uri"]) == ("6", "s3://m/6")
    assert (written[PREFIX + "model-version"], written[PREFIX + "model-storage-uri"]) == ("8", "s3://m/8")
    # What the model says of itself, when it is the one it was recorded for, still wins over the hint.
    body = router._knative_stage(knative_view(rolled_out("s3://m/7"), "m"), CandidateModel("m", "8", "s3://m/8"),
                                 stable_hint="5")
    assert body["metadata"]["annotations"][PREFIX + "stable-version"] == "7"


def test_knative_restoring_records_the_uri_of_the_version_it_writes() -> None:
    router = KServeRouter(client.ApiClient(), "ns", "m")
    # Candidate 7 pinned at 0% and rev 1 rolled out again: the stable storageUri goes back.
    view = knative_view(knative_isvc("s3://m/7", 0, {
        "latestCreatedRevision": "m-predictor-00003", "latestReadyRevision": "m-predictor-00003",
        "latestRolledoutRevision": "m-predictor-00001",
        "traffic": [{"revisionName": "m-predictor-00001", "percent": 100}]}), "m")
    for stable in (None, CandidateModel("m", "6", "s3://m/6")):
        written = router._knative_restore(view, stable)["metadata"]["annotations"]
        assert (written[PREFIX + "model-version"], written[PREFIX + "model-storage-uri"]) == ("6", "s3://m/6")


def standard_isvc(uri: str, *, recorded: str | None = "s3://m/7",
                  canary: tuple[str, str | None] | None = None) -> dict[str, Any]:
    """Predictor v7 with version 7 (recorded for `recorded`) naming `uri`; canary: candidate 8's entry, its
    storageUri and the URI recorded for it."""
    annotations = {PREFIX + "model-version": "7", **({PREFIX + "model-storage-uri": recorded} if recorded else {})}
    spec: dict[str, Any] = {"predictor": {"name": "v7", "annotations": annotations,
                                          "model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}}
    statuses = []
    if canary is not None:
        canary_uri, canary_recorded = canary
        canary_annotations = {PREFIX + "model-version": "8", PREFIX + "stable-version": "7",
                              PREFIX + "stable-storage-uri": "s3://m/7", PREFIX + "stable-predictor-name": "v7",
                              **({PREFIX + "model-storage-uri": canary_recorded} if canary_recorded else {})}
        spec["canary"] = [{"trafficPercent": 10, "predictor": {
            "name": "v8", "annotations": canary_annotations,
            "model": {"modelFormat": {"name": "sklearn"}, "name": "kserve-container", "storageUri": canary_uri}}}]
        statuses = [{"name": "v8", "ready": True, "trafficPercent": 10}]
    return {"metadata": {"name": "m", "namespace": "ns", "generation": 3, "resourceVersion": "1"},
            "spec": spec,
            "status": {"observedGeneration": 3, "deploymentMode": "Standard", "canaryStatuses": statuses,
                       "conditions": [{"type": "PredictorReady", "status": "True"}]}}


def test_standard_a_canary_replaced_mid_canary_is_not_read_as_the_candidate() -> None:
    state = standard_state("m", standard_view(standard_isvc("s3://m/7", canary=("s3://other/x", "s3://m/8")), "m"))
    assert state.canary_name == "m-v8-predictor" and state.canary_ready and state.canary_weight == 10
    assert state.canary_version is None and state.stable_version == "7"
    assert CHANGED in state.message and "canary predictor v8" in state.message
    state = standard_state("m", standard_view(standard_isvc("s3://m/7", canary=("s3://m/8", "s3://m/8")), "m"))
    assert state.canary_version == "8" and not state.message


@pytest.mark.parametrize("uri", ["s3://other/x", "s3://m/6"])  # edited after the promotion; reverted by hand
def test_standard_a_promoted_model_replaced_by_hand_is_not_read_as_the_promoted_version(uri: str) -> None:
    state = standard_state("m", standard_view(standard_isvc(uri), "m"))
    assert state.stable_version is None and CHANGED in state.message
    # Nor does the stable version recorded on a canary staged before the edit stand in for it.
    state = standard_state("m", standard_view(standard_isvc(uri, canary=("s3://m/8", "s3://m/8")), "m"))
    assert state.stable_version is None and state.canary_version == "8"


def test_standard_annotations_written_before_the_uri_was_recorded_are_read_as_before() -> None:
    state = standard_state("m", standard_view(standard_isvc("s3://other/x", recorded=None,
                                                            canary=("s3://other/y", None)), "m"))
    assert (state.stable_version, state.canary_version, state.message) == ("7", "8", "")
    assert standard_state("m", standard_view(standard_isvc("s3://m/7"), "m")).stable_version == "7"


def test_standard_staging_records_the_uri_and_prefers_the_engines_stable_over_a_stale_annotation() -> None:
    router = KServeRouter(client.ApiClient(), "ns", "m")
    body = router._standard_stage(standard_view(standard_isvc("s3://m/6"), "m"), CandidateModel("m", "8", "s3://m/8"),
                                  "6")
    [entry] = body["spec"]["canary"]
    written = entry["predictor"]["annotations"]
    assert (written[PREFIX + "model-version"], written[PREFIX + "model-storage-uri"]) == ("8", "s3://m/8")
    assert (written[PREFIX + "stable-version"], written[PREFIX + "stable-storage-uri"]) == ("6", "s3://m/6")
    # The stable predictor keeps its own recorded URI, so the stale version stays untrusted.
    assert body["spec"]["predictor"]["annotations"][PREFIX + "model-storage-uri"] == "s3://m/7"


def test_standard_promotion_and_restore_carry_the_uri_of_the_version_they_write() -> None:
    router = KServeRouter(client.ApiClient(), "ns", "m")
    staged = standard_view(standard_isvc("s3://m/7", canary=("s3://m/8", "s3://m/8")), "m")
    promoted = router._standard_promote(staged)
    assert promoted is not None
    written = promoted["spec"]["predictor"]["annotations"]
    assert (written[PREFIX + "model-version"], written[PREFIX + "model-storage-uri"]) == ("8", "s3://m/8")
    restored = router._standard_restore(standard_view(standard_isvc("s3://m/7"), "m"),
                                        CandidateModel("m", "6", "s3://m/6"))
    assert restored is not None
    written = restored["spec"]["predictor"]["annotations"]
    assert (written[PREFIX + "model-version"], written[PREFIX + "model-storage-uri"]) == ("6", "s3://m/6")


def test_standard_a_foreign_canary_entrys_traffic_counts_as_canary_weight() -> None:
    # No canary of ours, but an entry someone else added takes 15%: stable does not have all the traffic.
    obj = standard_isvc("s3://m/7")
    obj["spec"]["canary"] = [{"trafficPercent": 15, "predictor": {
        "name": "theirs", "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://other/x"}}}]
    obj["status"]["canaryStatuses"] = [{"name": "theirs", "ready": True, "trafficPercent": 15}]
    state = standard_state("m", standard_view(obj, "m"))
    assert state.canary_weight == 15, state
    assert "spec.canary holds 1 entries ModelRollout did not create" in state.message


def test_standard_the_canary_is_removed_by_an_empty_list_and_an_empty_list_reads_as_no_canary() -> None:
    # spec.canary is an atomic list: once a `kubectl edit` of the canary made another manager an owner, an apply
    # leaving it out removes nothing. Only writing it (empty) takes it away.
    router = KServeRouter(client.ApiClient(), "ns", "m")
    staged = standard_view(standard_isvc("s3://m/7", canary=("s3://m/8", "s3://m/8")), "m")
    bodies = [router._standard_promote(staged), router._standard_rollback(staged),
              router._standard_restore(staged, CandidateModel("m", "7", "s3://m/7")),
              router._standard_restore(staged, CandidateModel("m", "6", "s3://m/6"))]
    assert [body["spec"]["canary"] if body else None for body in bodies] == [[], [], [], []]
    obj = standard_isvc("s3://m/7")
    obj["spec"]["canary"] = []
    state = standard_state("m", standard_view(obj, "m"))
    assert (state.stable_version, state.canary_version, state.canary_weight, state.message) == ("7", None, None, "")
    assert router._standard_rollback(standard_view(obj, "m")) is None  # nothing staged: nothing written


def knative_at(percent: int, managers: list[tuple[str, str]]) -> dict[str, Any]:
    """Candidate 8 staged at `percent` over stable 6; managers: (manager, operation) owning canaryTrafficPercent."""
    ctp = {"f:spec": {"f:predictor": {"f:canaryTrafficPercent": {}}}}
    obj = staged_after_a_rollback("True")
    obj["metadata"].update(resourceVersion="41", managedFields=[
        {"manager": "argocd-controller", "operation": "Apply", "fieldsV1": {"f:spec": {"f:predictor": {}}}},
        *({"manager": m, "operation": op, "fieldsV1": ctp} for m, op in managers)])
    obj["spec"]["predictor"]["canaryTrafficPercent"] = percent
    return obj


@pytest.mark.parametrize(("managers", "removed"), [
    ([("kubectl-patch", "Update")], True),  # the on-call moved it: only a merge patch removes it
    ([("modelrollout-controller", "Apply"), ("kubectl-patch", "Update")], True),
    ([("modelrollout-controller", "Apply")], False),  # ours alone: the apply leaving it out removes it
])
@pytest.mark.parametrize("move", ["promote", "restore"])
def test_knative_promotion_removes_a_canary_traffic_percent_another_manager_set(
        monkeypatch: pytest.MonkeyPatch, managers: list[tuple[str, str]], removed: bool, move: str) -> None:
    router = KServeRouter(client.ApiClient(), "ns", "m")
    obj = knative_at(50, managers)
    patches: list[dict[str, Any]] = []

    def merge_patch(patch: dict[str, Any]) -> dict[str, Any]:
        patches.append(patch)
        if len(patches) == 1:  # the object changed since it was read: read again, patch again
            raise ConflictError("conflict")
        return obj

    applied: list[dict[str, Any]] = []
    monkeypatch.setattr(router.client, "get", lambda: obj)
    monkeypatch.setattr(router.client, "apply", lambda body, force=True: applied.append(body) or obj)
    monkeypatch.setattr(router.client, "merge_patch", merge_patch, raising=False)
    if move == "promote":
        router.promote()
    else:  # after promotion, a version no revision holds: rolled out as a new revision, on all traffic
        router.restore(CandidateModel("m", "5", "s3://b/v5"))
        assert applied[0]["spec"]["predictor"]["model"]["storageUri"] == "s3://b/v5"
    assert "canaryTrafficPercent" not in applied[0]["spec"]["predictor"]
    expected = {"metadata": {"resourceVersion": "41"}, "spec": {"predictor": {"canaryTrafficPercent": None}}}
    assert patches == ([expected, expected] if removed else [])
