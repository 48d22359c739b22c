"""The revertOnDeletion finalizer refused by the API server for a rollout still there (an admission policy, a
tightened CRD rule; review s39runtime): every reconcile failed on the queue's backoff and the status said nothing: a
new rollout sat with no status at all, a new attempt after an ended one was stored as Staging (claiming its target)
and never acted, an ended rollout's delete waited for good. Now the stored status says so (Ready False,
FinalizerRefused, once per generation, posted as a Warning Event) and it stays a reconcile error."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from test_cli_commands import FakeApi, api, no_wait  # noqa: F401 (fixtures)
from test_cli_commands import rollout as cli_rollout
from test_operator_finalizer import RAW, REASONS, SUCCEEDED, observed, rollout

from controller.api.commands import COMMAND_ANNOTATION
from controller.api.status import FINALIZER_REFUSED
from controller.cli.main import main
from controller.cli.oncall import _status_refused
from controller.engine import RegistryObservation, ResolvedVersion
from controller.operator.events import PostResult, is_warning
from controller.operator.kubeapi import FINALIZER, ObjectRef
from controller.operator.metrics import OperatorMetrics
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import (
    FinalizerRefused,
    OperatorConfig,
    RolloutRuntime,
    RolloutStepper,
    finalizer_refused_status,
)

SECRET = "s3cr3t"
REF = ObjectRef("team-a", "nsfw")


class Cluster:
    """One rollout as the API server holds it; the finalizer write answers `error` while it is set."""

    def __init__(self, obj: dict[str, Any], error: int | None = 422) -> None:
        self.obj = obj
        self.error = error
        self.applied: list[bool] = []
        self.status_writes: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        return copy.deepcopy(self.obj)

    def list_in(self, namespace: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.obj)]

    def _bump(self) -> None:
        meta = self.obj["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    def apply_finalizer(self, obj: dict[str, Any], hold: bool) -> dict[str, Any]:
        self.applied.append(hold)
        if self.error:
            refused = ApiException(status=self.error, reason=REASONS.get(self.error))
            refused.body = f'{{"message": "denied by policy: annotation token={SECRET}"}}'  # may quote the object
            raise refused
        self.obj["metadata"]["finalizers"] = [FINALIZER] if hold else []
        self._bump()
        return copy.deepcopy(self.obj)

    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        self.status_writes.append(copy.deepcopy(status))
        self.obj["status"] = copy.deepcopy(status)
        self._bump()
        return copy.deepcopy(self.obj)

    def post_event(self, obj: dict[str, Any], entry: Any) -> PostResult:
        self.events.append(dict(entry))
        return PostResult.POSTED


def reconcile(cluster: Cluster, stepper: RolloutStepper | None = None) -> ApiException | None:
    stepper = stepper or RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    stepper.store = cluster  # type: ignore[assignment]
    reconciler = Reconciler(cluster, stepper.step, OperatorMetrics())  # type: ignore[arg-type]
    try:
        asyncio.run(reconciler.reconcile(REF))
    except ApiException as exc:
        return exc
    return None


def ready(cluster: Cluster) -> dict[str, Any]:
    return next(c for c in cluster.obj["status"]["conditions"] if c["type"] == "Ready")


def said(cluster: Cluster) -> list[dict[str, Any]]:
    return [e for e in cluster.obj["status"].get("history") or [] if e["event"] == FINALIZER_REFUSED]


@pytest.mark.parametrize("error", [409, 422])
def test_a_new_rollout_whose_finalizer_is_refused_says_so_once_and_stays_a_reconcile_error(error: int) -> None:
    cluster = Cluster(rollout(None, held=False), error=error)
    first = reconcile(cluster)
    assert first is not None and first.status == error and first.body is None  # the queue's backoff, the alert
    condition = ready(cluster)
    assert (condition["status"], condition["reason"]) == ("False", FINALIZER_REFUSED)
    assert condition["message"].startswith(f"The API server refused to add the controller's finalizer {FINALIZER} "
                                           f"(HTTP {error} {REASONS[error]}): spec.rollback.revertOnDeletion cannot "
                                           "be honoured")
    assert "phase" not in cluster.obj["status"]  # nothing decided, nothing acted
    assert [e["event"] for e in cluster.events] == [FINALIZER_REFUSED] and is_warning(FINALIZER_REFUSED)
    assert SECRET not in repr(cluster.obj["status"]) + repr(cluster.events) + str(first)
    assert _status_refused(cluster.obj) == (FINALIZER_REFUSED, condition["message"])  # explain and --wait say it
    writes = len(cluster.status_writes)
    again = reconcile(cluster)
    assert again is not None and again.status == error
    assert len(said(cluster)) == 1 and len(cluster.status_writes) == writes  # said once per generation
    assert len(cluster.events) == 1


def test_once_the_finalizer_is_allowed_the_rollout_starts_and_ready_no_longer_says_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    acted = observed(monkeypatch, candidate="8", stable="7")
    cluster = Cluster(rollout(None, held=False))
    stepper = RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    assert reconcile(cluster, stepper) is not None
    cluster.error = None  # the policy lifted
    for _ in range(3):
        assert reconcile(cluster, stepper) is None
    assert cluster.obj["metadata"]["finalizers"] == [FINALIZER]
    assert cluster.obj["status"]["phase"] not in (None, "Succeeded")
    assert ready(cluster)["reason"] != FINALIZER_REFUSED
    assert any(action.endswith(":stage:8") for action in acted), acted


def test_a_new_attempt_whose_finalizer_is_refused_is_stored_saying_so_and_acts_on_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    acted = observed(monkeypatch, candidate="8", stable="7")
    obj = rollout(SUCCEEDED, held=False)
    obj["metadata"]["generation"] = 2
    cluster = Cluster(obj)
    refused = reconcile(cluster)
    assert refused is not None and refused.status == 422 and acted == []
    status = cluster.obj["status"]
    assert status["phase"] == "Pending" and status["candidate"]["version"] == "8"  # the start, as stored
    assert (ready(cluster)["status"], ready(cluster)["reason"]) == ("False", FINALIZER_REFUSED)
    assert [e["event"] for e in cluster.events][-1] == FINALIZER_REFUSED
    assert reconcile(cluster) is not None and acted == []  # still held unacted
    assert len(said(cluster)) == 1


READY_SUCCEEDED = [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "done",
                    "lastTransitionTime": "2026-12-03T02:00:00Z", "observedGeneration": 1}]


@pytest.mark.parametrize("deleting", [False, True])
def test_an_ended_rollout_whose_release_is_refused_says_a_delete_waits_and_keeps_its_outcome(
        monkeypatch: pytest.MonkeyPatch, deleting: bool) -> None:
    """Its outcome and Ready stand (nothing decided later would set Ready back): a Warning entry only, once. Deleted,
    it is a reconcile error (the delete waits on it); else the rollout goes on, and the release is tried again."""
    acted = observed(monkeypatch, candidate="7", stable="7")
    ended = {**SUCCEEDED, "eventsPostedThrough": 0, "conditions": READY_SUCCEEDED}
    raw = {**RAW, "model": {**RAW["model"], "version": "7"}}  # the version it promoted: nothing new
    cluster = Cluster(rollout(ended, held=True, deleting=deleting, raw=raw))
    refused = reconcile(cluster)
    assert (refused is not None and refused.status == 422) is deleting
    assert cluster.applied == [False]
    status = cluster.obj["status"]
    assert status["phase"] == "Succeeded" and ready(cluster)["status"] == "True"  # the outcome stands
    (entry,) = said(cluster)
    assert entry["detail"].startswith(f"The API server refused to remove the controller's finalizer {FINALIZER} "
                                      "(HTTP 422 Unprocessable Entity): a delete of this rollout waits until the "
                                      "finalizer is removed")
    assert [e["event"] for e in cluster.events] == [FINALIZER_REFUSED]
    reconcile(cluster)
    writes = len(cluster.status_writes)
    reconcile(cluster)
    assert cluster.applied == [False, False, False]  # tried again
    assert len(said(cluster)) == 1 and len(cluster.status_writes) == writes and len(cluster.events) == 1
    assert _status_refused(cluster.obj) is None and acted == []  # get --watch reads the outcome


def test_an_ended_rollout_whose_release_is_refused_still_follows_a_new_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s39r2 F1: every reconcile ended at the refused release, so a new version was never acted on."""
    acted = observed(monkeypatch, candidate="8", stable="7")
    obj = rollout({**SUCCEEDED, "conditions": READY_SUCCEEDED}, held=True)
    obj["metadata"]["generation"] = 2  # the spec names version 8 now
    cluster = Cluster(obj)
    stepper = RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    assert reconcile(cluster, stepper) is None
    assert any(action.endswith(":stage:8") for action in acted), acted  # held by the finalizer still on
    assert cluster.obj["status"]["candidate"]["version"] == "8" and cluster.obj["status"]["phase"] != "Succeeded"
    assert cluster.obj["metadata"]["finalizers"] == [FINALIZER]
    assert [e["event"] for e in said(cluster)] == [FINALIZER_REFUSED]


def test_a_running_rollout_whose_finalizer_is_refused_goes_on_and_takes_an_abort(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s39r2 F4: revertOnDeletion turned on mid-flight under a policy refusing the finalizer froze the rollout,
    an on-call abort included, with users on the canary."""
    observed(monkeypatch, candidate="8", stable="7")
    cluster = Cluster(rollout(None, held=False), error=None)
    stepper = RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    for _ in range(3):
        reconcile(cluster, stepper)
    assert cluster.obj["status"]["phase"] not in (None, "Succeeded", "RolledBack")  # under way, held
    cluster.obj["metadata"]["finalizers"], cluster.obj["metadata"]["managedFields"] = [], []  # taken off by hand
    cluster.error = 422  # and a policy now refuses it
    cluster.obj["metadata"].setdefault("annotations", {})[COMMAND_ANNOTATION] = json.dumps(
        {"action": "abort", "id": "oncall-1", "actor": "bob"})
    for _ in range(4):
        assert reconcile(cluster, stepper) is None
    status = cluster.obj["status"]
    assert "oncall-1" in status["handledCommands"]
    assert status["phase"] in ("RollingBack", "RolledBack", "Failed"), status["phase"]
    (entry,) = said(cluster)
    assert "a delete of this rollout would not roll it back (revertOnDeletion). It goes on" in entry["detail"]
    assert ready(cluster)["reason"] != FINALIZER_REFUSED


def test_a_rollout_going_on_without_its_finalizer_holds_a_new_version_it_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s39r3: the attempt let go on unheld is the running one only; a new version it would start next is a
    start, held until the finalizer is on (before, version 9 was staged without it)."""
    versions = {"candidate": "8"}

    def registry(self: RolloutRuntime, status: object = None) -> RegistryObservation:
        return RegistryObservation(
            candidate=ResolvedVersion(versions["candidate"], source=f"s3://m/{versions['candidate']}"),
            stable_alias_version=ResolvedVersion("7", source="s3://m/7"))

    acted = observed(monkeypatch, candidate="8", stable="7")
    monkeypatch.setattr(RolloutRuntime, "observe_registry", registry)
    cluster = Cluster(rollout(None, held=False), error=None)
    stepper = RolloutStepper(None, OperatorConfig(), write_ahead=False)  # type: ignore[arg-type]
    for _ in range(3):
        reconcile(cluster, stepper)
    cluster.obj["metadata"]["finalizers"], cluster.obj["metadata"]["managedFields"] = [], []  # taken off by hand
    cluster.error = 422  # and a policy now refuses it
    cluster.obj["spec"]["model"]["version"] = versions["candidate"] = "9"
    cluster.obj["metadata"]["generation"] = 2
    acted.clear()
    for _ in range(4):
        refused = reconcile(cluster, stepper)
        assert refused is not None and refused.status == 422
    assert not any(":stage:9" in action for action in acted), acted
    assert (ready(cluster)["status"], ready(cluster)["reason"]) == ("False", FINALIZER_REFUSED)
    assert "so the rollout does not start" in ready(cluster)["message"]
    cluster.error = None  # allowed again: version 9 starts, held
    for _ in range(4):
        reconcile(cluster, stepper)
    assert any(action.endswith(":stage:9") for action in acted), acted
    assert cluster.obj["metadata"]["finalizers"] == [FINALIZER]


# --- what `get --watch` makes of it ---------------------------------------------------------------------------


@pytest.mark.parametrize(("hold", "phase", "code"), [(True, None, 1), (False, "Succeeded", 0)])
def test_watch_stops_on_a_refused_hold_but_reads_an_ended_rollouts_outcome_past_a_refused_release(
        api: FakeApi, tmp_path: Path, no_wait: None, capsys: pytest.CaptureFixture[str],  # noqa: F811 (fixtures)
        hold: bool, phase: str | None, code: int) -> None:
    """Held: the rollout cannot start, and waiting would hang a CI job. Released: the outcome stands; only a later
    delete waits."""
    obj = cli_rollout(phase or "Pending")
    generation = obj["metadata"]["generation"]
    status = {**SUCCEEDED, "observedGeneration": generation} if phase else {}
    obj["status"] = finalizer_refused_status(status, FinalizerRefused(422, "Unprocessable Entity", hold), generation,
                                             datetime.now(UTC))
    api.script = [obj, obj]
    assert main(["get", "r", "--watch", "--timeout", "20s", "--kubeconfig", api.kubeconfig(tmp_path)]) == code
    out = capsys.readouterr().out
    assert (f"  stopped ({FINALIZER_REFUSED}): " in out) is hold
