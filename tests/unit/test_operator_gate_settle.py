"""The operator tells the engine its Prometheus scrape interval (operator run --scrape-interval): the first traffic
step after the gate waits for the gate's own predictions to be scraped. Real stepper and engine; stand-in adapters.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.api.status import GateStatus, ModelRolloutStatus, Phase, VersionRef
from controller.engine import Observations, RegistryObservation, ResolvedVersion, SetCanaryWeight, TargetObservation
from controller.operator import runtime as runtime_module
from controller.operator.runtime import OperatorConfig, RolloutRuntime, RolloutStepper
from controller.verdict import Outcome

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
GATE_DONE = NOW - timedelta(seconds=20)  # the gate passed 20 s ago


def step_once(monkeypatch: pytest.MonkeyPatch, scrape_interval: timedelta) -> tuple[list[int], list[Observations],
                                                                                      ModelRolloutStatus]:
    sent: list[int] = []
    seen: list[Observations] = []
    decide = runtime_module.decide

    def recording(spec: Any, status: Any, observations: Observations, now: datetime) -> Any:
        seen.append(observations)
        return decide(spec, status, observations, now)

    def act(self: RolloutRuntime, action: Any, status: Any) -> None:
        if isinstance(action, SetCanaryWeight):
            sent.append(action.weight)

    monkeypatch.setattr(runtime_module, "decide", recording)
    monkeypatch.setattr(RolloutRuntime, "observe_registry", lambda self, status=None: RegistryObservation(
        candidate=ResolvedVersion("8", source="s3://m/8"), stable_alias_version=ResolvedVersion("7", source="s3://m/7")))
    monkeypatch.setattr(RolloutRuntime, "observe_target", lambda self: (TargetObservation(
        ready=True, stable_version="7", canary_version="8", canary_ready=True, canary_weight=0), None))
    monkeypatch.setattr(RolloutRuntime, "act", act)
    monkeypatch.setattr(RolloutRuntime, "finish_withdrawal", lambda self, status, still_current=None: False)
    raw = {"model": {"name": "nsfw", "version": "8", "stableAlias": "production"},
           "target": {"kserve": {"inferenceService": "nsfw"}},
           "canary": {"steps": [{"setWeight": 10}, {"pause": {}}]},
           "goldenDataset": {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32}}
    gate = GateStatus(request_id="1:gate-1", started_at=GATE_DONE - timedelta(seconds=5), completed_at=GATE_DONE,
                      dataset_sha256="ab" * 32, outcome=Outcome.PASS)
    start = ModelRolloutStatus(phase=Phase.PROGRESSING, observed_generation=1, attempt=1, candidate=VersionRef("8"),
                               stable=VersionRef("7"), current_step=0, canary_weight=0, started_at=NOW, gate=gate)
    config = OperatorConfig(scrape_interval=scrape_interval)
    stepper = RolloutStepper(None, config, clock=lambda: NOW, write_ahead=False)  # type: ignore[arg-type]
    obj: dict[str, Any] = {"metadata": {"namespace": "a", "name": "n", "uid": "u", "generation": 1,
                                        "resourceVersion": "1"}, "spec": raw, "status": start.to_dict()}
    outcome = asyncio.run(stepper.step(obj))
    return sent, seen, ModelRolloutStatus.from_dict(outcome.status)


def test_the_operators_scrape_interval_reaches_the_engine_and_holds_the_first_weight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent, seen, status = step_once(monkeypatch, timedelta(seconds=30))  # the gate's counts are in at 20 + 65 s
    assert seen and all(obs.scrape_interval == timedelta(seconds=30) for obs in seen)
    assert sent == [] and status.message.startswith("Holding step 1/2 until 2026-01-05T09:00:45Z")


def test_a_short_scrape_interval_lets_the_first_weight_go(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, seen, _ = step_once(monkeypatch, timedelta(seconds=5))  # in by 15 s after the gate
    assert seen and all(obs.scrape_interval == timedelta(seconds=5) for obs in seen)
    assert sent == [10]
