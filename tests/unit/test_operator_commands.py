"""On-call commands at the start of a reconcile: never left hanging. A command the rollout cannot carry out now
(the spec is refused, the annotation is no command) is refused once, in the history, not kept for later."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.api.commands import COMMAND_ANNOTATION, Command, CommandAction, unreadable_key
from controller.api.status import ModelRolloutStatus, Phase, RollbackCause, RollbackStatus, VersionRef
from controller.engine import (
    REJECTED_TAG,
    REJECTED_TIME_TAG,
    RegistryObservation,
    ResolvedVersion,
    SetCanaryWeight,
    TagRejected,
    TargetObservation,
    UnstageCandidate,
    ignore_command,
    rejection_time,
)
from controller.operator.runtime import OperatorConfig, ReconcileOutcome, RolloutRuntime, RolloutStepper

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
REFUSED_URL = "http://10.0.0.7:8080/v2/models/nsfw/infer"  # not a Service of team-a, not in --gate-hosts
RAW: dict[str, Any] = {
    "model": {"name": "nsfw", "version": "8", "stableAlias": "production"},
    "target": {"kserve": {"inferenceService": "nsfw", "candidateUrl": REFUSED_URL}},
    "canary": {"steps": [{"setWeight": 50}, {"pause": {}}]},
    "goldenDataset": {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32},
}
AT_HALF = ModelRolloutStatus(phase=Phase.PROGRESSING, observed_generation=1, attempt=1, candidate=VersionRef("8"),
                             stable=VersionRef("7"), current_step=0, canary_weight=50, started_at=NOW).to_dict()


def rollout(status: dict[str, Any], annotation: str | None, raw: dict[str, Any] | None = None,
            generation: int = 1) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "team-a", "name": "nsfw", "uid": "u-1", "generation": generation,
                            "resourceVersion": "1"}
    if annotation is not None:
        meta["annotations"] = {COMMAND_ANNOTATION: annotation}
    return {"metadata": meta, "spec": copy.deepcopy(raw or RAW), "status": copy.deepcopy(status)}


def command(action: CommandAction, command_id: str = "c1") -> str:
    return Command(id=command_id, action=action, actor="alice").to_annotation()


@pytest.fixture
def acted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Canned adapters: candidate 8 at `weight` beside stable 7; the effects carried out, by type."""
    weight = {"now": 50}
    tags: dict[str, str] = {}
    done: list[str] = []

    def registry(self: RolloutRuntime, status: ModelRolloutStatus | None = None) -> RegistryObservation:
        return RegistryObservation(candidate=ResolvedVersion("8", source="s3://m/8", tags=dict(tags)),
                                   stable_alias_version=ResolvedVersion("7", source="s3://m/7"))

    def target(self: RolloutRuntime) -> tuple[TargetObservation, None]:
        return TargetObservation(ready=True, stable_version="7", canary_version="8", canary_ready=True,
                                 canary_weight=weight["now"]), None

    def act(self: RolloutRuntime, action: Any, status: ModelRolloutStatus) -> None:
        done.append(str(action.type))
        if isinstance(action, SetCanaryWeight | UnstageCandidate):
            weight["now"] = action.weight if isinstance(action, SetCanaryWeight) else 0
        elif isinstance(action, TagRejected):
            tags.update({REJECTED_TAG: "true", REJECTED_TIME_TAG: rejection_time(action.rejected_at)})

    monkeypatch.setattr(RolloutRuntime, "observe_registry", registry)
    monkeypatch.setattr(RolloutRuntime, "observe_target", target)
    monkeypatch.setattr(RolloutRuntime, "act", act)
    monkeypatch.setattr(RolloutRuntime, "finish_withdrawal", lambda self, status, still_current=None: False)
    return done


def step(obj: dict[str, Any]) -> ReconcileOutcome:
    stepper = RolloutStepper(None, OperatorConfig(default_prometheus_url="http://prom:9090"),  # type: ignore[arg-type]
                             clock=lambda: NOW, write_ahead=False)
    return asyncio.run(stepper.step(obj))


def events(status: dict[str, Any]) -> list[tuple[str, str]]:
    return [(entry["event"], entry["detail"]) for entry in status.get("history") or ()]


@pytest.mark.parametrize("action", [CommandAction.ABORT, CommandAction.ROLLBACK])
def test_abort_and_rollback_run_while_the_operators_settings_refuse_the_spec(acted: list[str],
                                                                               action: CommandAction) -> None:
    """Neither needs the gate the refused URL is for: traffic goes back to stable now, not once the URL is fixed."""
    outcome = step(rollout(AT_HALF, command(action)))
    status = outcome.status
    assert status["phase"] in ("RollingBack", "RolledBack") and status["handledCommands"] == ["c1"]
    assert ("CommandApplied", str(action)) in events(status)
    assert acted and "RunGate" not in acted and not any(a.startswith("RunGate") for a in outcome.actions_taken)
    assert status["canaryWeight"] == 0


def test_a_rollback_started_while_the_spec_is_refused_goes_on_to_its_end(acted: list[str]) -> None:
    """The next reconciles (the command handled now) keep rolling back instead of holding it halfway."""
    status = step(rollout(AT_HALF, command(CommandAction.ABORT))).status
    for _ in range(3):
        status = step(rollout(status, command(CommandAction.ABORT))).status
    assert status["phase"] == "RolledBack", status["message"]
    assert [event for event, _ in events(status)].count("CommandApplied") == 1


@pytest.mark.parametrize("action", [CommandAction.PROMOTE, CommandAction.RETRY])
def test_any_other_command_while_the_spec_is_refused_is_refused_once_and_never_runs_later(
        acted: list[str], action: CommandAction) -> None:
    obj = rollout(AT_HALF, command(action, "c2"))
    status = step(obj).status
    assert status["phase"] == "Progressing" and status["handledCommands"] == ["c2"] and not acted
    refused = [detail for event, detail in events(status) if event == "CommandIgnored"]
    assert refused == [f"{action}: spec invalid: spec.target.kserve.candidateUrl"]
    again = step(rollout(status, command(action, "c2"))).status
    assert [event for event, _ in events(again)].count("CommandIgnored") == 1
    # The URL fixed hours later: the old command stays handled, it does not act now.
    fixed = copy.deepcopy(RAW)
    fixed["target"]["kserve"]["candidateUrl"] = "http://nsfw-latest.team-a.svc.cluster.local/v2/models/nsfw/infer"
    later = step(rollout(again, command(action, "c2"), raw=fixed, generation=2)).status
    assert not [event for event, _ in events(later) if event in ("CommandApplied", "GateOverridden")]


def test_every_command_is_refused_when_the_spec_does_not_parse(acted: list[str]) -> None:
    raw = {**RAW, "canary": {"steps": [{"setWeight": 150}]}}  # refused by the API server too, normally
    status = step(rollout(AT_HALF, command(CommandAction.ABORT), raw=raw)).status
    assert status["phase"] == "Progressing" and status["handledCommands"] == ["c1"] and not acted
    (refused,) = [detail for event, detail in events(status) if event == "CommandIgnored"]
    assert refused.startswith("abort: spec invalid: spec.canary.steps")


@pytest.mark.parametrize(("text", "problem"), [
    ('{"action": "abrot", "actor": "alice", "id": "1"}', "action must be one of abort, promote, retry, rollback, "
                                                         "got 'abrot'"),
    ('{"action": "abort", "actor": "alice", "id": "1", "reason": "x"}', "unknown key(s) 'reason'"),
    ('{"action": "abort", "actor": "alice"}', "id must be a non-empty string"),
])
def test_an_annotation_that_is_no_command_is_refused_once_in_the_history(acted: list[str], text: str,
                                                                         problem: str) -> None:
    """Not only in the operator's log: on-call must see that the abort did not go through."""
    valid = {**RAW, "target": {"kserve": {"inferenceService": "nsfw"}}}
    status = step(rollout(AT_HALF, text, raw=valid)).status
    refused = [(event, detail) for event, detail in events(status) if event == "CommandIgnored"]
    assert len(refused) == 1 and problem in refused[0][1] and COMMAND_ANNOTATION in refused[0][1]
    assert unreadable_key(text) in status["handledCommands"] and text not in str(status)
    again = step(rollout(status, text, raw=valid)).status  # stored: not said again, also after a restart
    assert [event for event, _ in events(again)].count("CommandIgnored") == 1


def test_an_annotation_that_is_no_command_is_refused_also_while_the_spec_is_refused(acted: list[str]) -> None:
    status = step(rollout(AT_HALF, '{"action": "abrot", "actor": "alice", "id": "1"}')).status
    (refused,) = [detail for event, detail in events(status) if event == "CommandIgnored"]
    assert "got 'abrot'" in refused and not acted


def test_each_distinct_annotation_text_has_its_own_key() -> None:
    first = unreadable_key('{"action": "abrot"}')
    assert first == unreadable_key('{"action": "abrot"}') != unreadable_key('{"action": "abrt"}')
    assert "abrot" not in first


def test_while_the_spec_is_refused_nothing_past_the_rollback_is_carried_out(monkeypatch: pytest.MonkeyPatch,
                                                                           acted: list[str]) -> None:
    """A rollback for a newer candidate ends in a new attempt: that is held (and fails, naming the field) as any
    refused spec is, never staged toward a gate the operator refuses."""
    monkeypatch.setattr(RolloutRuntime, "observe_registry", lambda self, status=None: RegistryObservation(
        candidate=ResolvedVersion("9", source="s3://m/9"), stable_alias_version=ResolvedVersion("7", source="s3://m/7")))
    monkeypatch.setattr(RolloutRuntime, "observe_target",
                        lambda self: (TargetObservation(ready=True, stable_version="7"), None))
    superseded = ModelRolloutStatus(
        phase=Phase.ROLLING_BACK, observed_generation=1, attempt=1, candidate=VersionRef("8"), stable=VersionRef("7"),
        current_step=0, canary_weight=0, started_at=NOW,
        rollback=RollbackStatus(cause=RollbackCause.SUPERSEDED, reason="superseded by version 9", verdict_at=NOW,
                                reject_candidate=False, restart=True)).to_dict()
    raw = {**RAW, "model": {**RAW["model"], "version": "9"}}
    outcome = step(rollout(superseded, None, raw=raw))
    assert outcome.status["phase"] == "Pending" and outcome.status["candidate"]["version"] == "9"
    # Only the rollback's withdrawal of 8, seen staged (sent once so the router drops its record of 8), nothing of 9.
    assert acted == ["SetCanaryWeight"], acted
    held = step(rollout(outcome.status, None, raw=raw)).status
    assert held["phase"] == "Failed" and "spec.target.kserve.candidateUrl" in held["message"]
    assert acted == ["SetCanaryWeight"], acted


def test_a_refusal_is_one_bounded_line_recorded_once_by_the_engine_and_the_operator_alike() -> None:
    status = ModelRolloutStatus.from_dict(AT_HALF)
    detail = "promote: " + "x\n" * 2000
    once = ignore_command(status, "c1", detail, NOW, actor="alice", command_id="c1")
    entry = once.history[-1]
    assert (entry.event, entry.actor, entry.command_id) == ("CommandIgnored", "alice", "c1")
    assert "\n" not in entry.detail and len(entry.detail) <= 512
    assert once.handled_commands[-1] == "c1"
    assert ignore_command(once, "c1", "again", NOW) == once


class StoredRollout:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj

    def get(self, ref: object) -> dict[str, Any]:
        return copy.deepcopy(self.obj)


def test_the_stepper_hands_finish_withdrawal_a_check_against_the_stored_rollout(
        acted: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without it (the argument defaults to "current"), an operator acting on an old read withdraws a retry's
    canary during a rolling update: the check must read the stored rollout."""
    checks: list[Any] = []
    monkeypatch.setattr(RolloutRuntime, "finish_withdrawal",
                        lambda self, status, still_current=lambda: True: checks.append(still_current) or False)
    obj = rollout(AT_HALF, command(CommandAction.ABORT))
    stepper = RolloutStepper(None, OperatorConfig(default_prometheus_url="http://prom:9090"),  # type: ignore[arg-type]
                             clock=lambda: NOW, write_ahead=False)
    outcome = asyncio.run(stepper.step(obj))
    assert checks, "finish_withdrawal was not called"
    retried = copy.deepcopy(obj)  # meanwhile another operator took a retry on: written since, attempt + 1
    retried["metadata"]["resourceVersion"] = "written-since"
    retried["status"] = {**outcome.status, "phase": "Progressing", "attempt": (outcome.status.get("attempt") or 1) + 1}
    stepper.store = StoredRollout(retried)  # type: ignore[assignment]
    assert checks[-1]() is not True, "the check the stepper passed does not read the stored rollout"
