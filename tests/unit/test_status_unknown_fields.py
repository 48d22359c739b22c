"""Status keys a newer operator wrote survive an older one: its status apply (forced, same field manager) removes
whatever it leaves out, so the keys it does not know are written back as they were read."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.api.status import ModelRolloutStatus, Phase, VersionRef
from controller.engine import RegistryObservation, ResolvedVersion, SetCanaryWeight, TargetObservation
from controller.operator.runtime import OperatorConfig, ReconcileOutcome, RolloutRuntime, RolloutStepper

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SHADOW = {"percent": 10, "mirrors": [{"version": "9", "since": "2026-01-05T08:00:00Z"}]}  # a newer operator's
RAW: dict[str, Any] = {
    "model": {"name": "nsfw", "version": "8", "stableAlias": "production"},
    "target": {"kserve": {"inferenceService": "nsfw"}},
    "canary": {"steps": [{"setWeight": 50}, {"pause": {}}]},
    "goldenDataset": {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32},
}
AT_HALF = ModelRolloutStatus(phase=Phase.PROGRESSING, observed_generation=1, attempt=1, candidate=VersionRef("8"),
                             stable=VersionRef("7"), current_step=0, canary_weight=50, started_at=NOW).to_dict()


def test_an_unknown_top_level_key_survives_the_round_trip() -> None:
    raw = {**AT_HALF, "shadowTraffic": copy.deepcopy(SHADOW)}
    status = ModelRolloutStatus.from_dict(raw)
    written = status.to_dict()
    assert written == raw
    assert status.phase is Phase.PROGRESSING and status.preserved == {"shadowTraffic": SHADOW}
    written["shadowTraffic"]["mirrors"].clear()  # a copy: the status never aliases what it read or wrote
    assert status.preserved == {"shadowTraffic": SHADOW} and raw["shadowTraffic"] == SHADOW
    assert ModelRolloutStatus.from_dict(written).to_dict() == written


def test_a_preserved_key_never_shadows_one_this_version_writes() -> None:
    status = ModelRolloutStatus(phase=Phase.PAUSED, preserved={"phase": "Exploded", "rollback": {"cause": "X"},
                                                               "shadowTraffic": SHADOW})
    written = status.to_dict()
    assert written["phase"] == "Paused"
    assert "rollback" not in written  # None here: left out, not filled in from the preserved keys
    assert written["shadowTraffic"] == SHADOW
    # A known key in the stored status is this version's to read, never preserved (even when null).
    assert ModelRolloutStatus.from_dict({**AT_HALF, "rollback": None, "shadowTraffic": SHADOW}).preserved == {
        "shadowTraffic": SHADOW}


@pytest.fixture
def canned(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Canned adapters: candidate `version` beside stable 7, the canary at `weight` (which SetCanaryWeight moves)."""
    world: dict[str, Any] = {"version": "8", "weight": 50}

    def registry(self: RolloutRuntime, status: ModelRolloutStatus | None = None) -> RegistryObservation:
        return RegistryObservation(candidate=ResolvedVersion(world["version"], source=f"s3://m/{world['version']}"),
                                   stable_alias_version=ResolvedVersion("7", source="s3://m/7"))

    def target(self: RolloutRuntime) -> tuple[TargetObservation, None]:
        return TargetObservation(ready=True, stable_version="7", canary_version="8", canary_ready=True,
                                 canary_weight=world["weight"]), None

    def act(self: RolloutRuntime, action: Any, status: ModelRolloutStatus) -> None:
        if isinstance(action, SetCanaryWeight):
            world["weight"] = action.weight

    monkeypatch.setattr(RolloutRuntime, "observe_registry", registry)
    monkeypatch.setattr(RolloutRuntime, "observe_target", target)
    monkeypatch.setattr(RolloutRuntime, "act", act)
    monkeypatch.setattr(RolloutRuntime, "finish_withdrawal", lambda self, status, still_current=None: False)
    return world


class Store:
    """The write-ahead store: records every status applied."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []

    def list_in(self, namespace: str) -> list[dict[str, Any]]:
        return []  # the only ModelRollout of its namespace

    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(copy.deepcopy(status))
        return {"metadata": {**obj["metadata"], "resourceVersion": str(len(self.applied) + 1)}, "status": status}


def rollout(status: dict[str, Any], raw: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    meta = {"namespace": "team-a", "name": "nsfw", "uid": "u-1", "generation": generation, "resourceVersion": "1"}
    return {"metadata": meta, "spec": copy.deepcopy(raw or RAW), "status": copy.deepcopy(status)}


def step(obj: dict[str, Any], store: Store | None = None) -> ReconcileOutcome:
    stepper = RolloutStepper(None, OperatorConfig(), clock=lambda: NOW, write_ahead=False)  # type: ignore[arg-type]
    stepper.store = store  # type: ignore[assignment]
    return asyncio.run(stepper.step(obj))


def test_the_decided_status_still_carries_a_newer_operators_key(canned: dict[str, Any]) -> None:
    canned["weight"] = 0  # the first step's 50% is still to be set: an action, so a write-ahead first
    store = Store()
    outcome = step(rollout({**AT_HALF, "shadowTraffic": SHADOW}), store)
    assert outcome.status["phase"] == "Paused" and outcome.status["currentStep"] == 1  # the decision moved on
    assert outcome.status["shadowTraffic"] == SHADOW
    assert store.applied and all(written["shadowTraffic"] == SHADOW for written in store.applied)  # write-ahead


def test_a_restart_for_a_new_generation_keeps_a_newer_operators_key(canned: dict[str, Any]) -> None:
    """This operator cannot tell whether the key belongs to the attempt or to the rollout, nor undo what it
    stands for (shadow traffic still set on the target): it keeps it for the operator that wrote it."""
    failed = {**AT_HALF, "phase": "Failed", "completedAt": "2026-01-05T08:30:00Z", "shadowTraffic": SHADOW}
    outcome = step(rollout(failed, generation=2))
    assert outcome.status["attempt"] == 2 and outcome.status["phase"] != "Failed"  # started over
    assert outcome.status["shadowTraffic"] == SHADOW


def test_an_unreadable_status_keeps_a_newer_operators_key_as_it_is() -> None:
    raw = {**AT_HALF, "phase": "Shadowing", "shadowTraffic": SHADOW}
    outcome = step(rollout(raw))
    assert outcome.status["phase"] == "Shadowing" and outcome.status["shadowTraffic"] == SHADOW
    assert {c["reason"] for c in outcome.status["conditions"] if c["type"] == "Ready"} == {"StatusUnreadable"}
