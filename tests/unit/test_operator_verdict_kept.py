"""A gate's verdict outlives a lost status write: the decision that read it is decided again, not the gate run.

The gate runs for minutes. Before, when the status write holding its verdict failed (a 409 because a human edited
the steps or sent a command meanwhile, or a 503), the verdict was dropped and the gate ran again from the start.
Real stepper, reconciler and engine; the adapters answer from the engine's test world.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from test_engine_support import World, spec_dict
from test_operator_events import NAME, NS, HangingEvents, operator

from controller.api.status import GateStatus, ModelRolloutStatus
from controller.engine import JudgeResult, RunAnalysis, RunGate
from controller.operator.kubeapi import ObjectRef
from controller.operator.runtime import RolloutRuntime, RolloutStepper


class LosesTheVerdict(HangingEvents):
    """Refuses, once, the first status write that holds a finished gate (or a counted analysis run): with a 503, or
    with a 409 after a spec edit (one to metadata alone is merged: see kubeapi.apply_decided_status)."""

    def __init__(self, error: int, holds: str) -> None:
        super().__init__({})
        self.hang = 0.0
        self.error, self.holds, self.refused = error, holds, 0

    def apply_status(self, stored: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        if stored["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise ApiException(status=409)  # written on a resourceVersion that moved on, as the API server answers
        done = (status.get("gate") or {}).get("completedAt") if self.holds == "gate" \
            else (status.get("analysis") or {}).get("runs")
        if done and not self.refused:
            self.refused += 1
            self.writes += 1
            if self.error == 409:  # a human edited the spec meanwhile (the decision read the old generation)
                meta = self.obj["metadata"]
                self.obj = {**self.obj, "metadata": {**meta, "resourceVersion": str(int(meta["resourceVersion"]) + 1),
                                                     "generation": meta["generation"] + 1}}
            raise ApiException(status=self.error)
        return super().apply_status(stored, status)


def run(monkeypatch: pytest.MonkeyPatch, server: LosesTheVerdict, until: str) -> tuple[list[str], dict[str, Any]]:
    world = World()
    world.spec = spec_dict(canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "10m"}}, {"pause": {}}]})
    world.spec.pop("bake")
    reconciler = operator(monkeypatch, world, server)
    runs: list[str] = []
    measure_gate = RolloutRuntime.measure_gate

    async def counted_gate(self: RolloutRuntime, action: RunGate, state: Any) -> JudgeResult:
        runs.append(action.id)
        return await measure_gate(self, action, state)

    def counted_analysis(self: RolloutRuntime, action: RunAnalysis, now: Any) -> JudgeResult:
        runs.append(action.id)
        _gate, analysis, _failure = world.execute(action)
        assert analysis is not None
        return analysis

    monkeypatch.setattr(RolloutRuntime, "measure_gate", counted_gate)
    monkeypatch.setattr(RolloutRuntime, "measure_analysis", counted_analysis)
    for _ in range(40):
        try:
            again = asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
        except ApiException as exc:
            assert exc.status == 503  # kopf retries the handler: the next reconcile reads the same stored state
            again = 0.0
        world.now += timedelta(seconds=again if again is not None else 30)
        if until in [entry["event"] for entry in server.obj["status"].get("history", [])]:
            break
    return runs, server.obj["status"]


@pytest.mark.parametrize("error", [409, 503])
def test_a_gate_verdict_lost_to_a_failed_status_write_is_decided_again_without_running_the_gate(
        monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    server = LosesTheVerdict(error, holds="gate")
    runs, status = run(monkeypatch, server, until="GatePassed")
    assert server.refused == 1
    assert [r for r in runs if "gate" in r] == ["1:gate-1"], runs
    assert status["gate"]["outcome"] == "pass" and status["gate"]["requestId"] == "1:gate-1"


@pytest.mark.parametrize("error", [409, 503])
def test_an_analysis_run_lost_to_a_failed_status_write_is_measured_again_and_counted_once(
        monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """Not kept: read late (after a 503's backoff) it would stand for a window that stopped short of its end."""
    server = LosesTheVerdict(error, holds="analysis")
    runs, status = run(monkeypatch, server, until="AnalysisPassed")
    assert server.refused == 1
    analyses = [r for r in runs if "analysis" in r]
    assert len(analyses) == len(set(analyses)) + 1, runs  # the lost run's request, measured again
    (passed,) = [entry["detail"] for entry in status["history"] if entry["event"] == "AnalysisPassed"]
    assert status["phase"] == "Paused" and f"{len(set(analyses))} runs" in passed, passed


def test_a_kept_gate_verdict_reaches_only_the_rollout_and_the_request_it_was_measured_for() -> None:
    stepper = RolloutStepper(None, None, write_ahead=False)  # type: ignore[arg-type]
    key, gate = ("a", "n"), JudgeResult("1:gate-1")
    open_gate = ModelRolloutStatus(gate=GateStatus(request_id="1:gate-1"))
    stepper._gate_verdicts[key] = ("uid-1", gate)
    assert stepper._gate_verdict_asked_for(key, "uid-2", open_gate) is None  # made again under its name
    stepper._gate_verdicts[key] = ("uid-1", gate)
    assert stepper._gate_verdict_asked_for(key, "uid-1", open_gate) is gate
    assert stepper._gate_verdict_asked_for(key, "uid-1", open_gate) is gate  # until a stored status closes it
    assert stepper._gate_verdict_asked_for(key, "uid-1", ModelRolloutStatus(gate=GateStatus(
        request_id="1:gate-2"))) is None  # another request (a re-pin)
    assert stepper._gate_verdict_asked_for(key, "uid-1", open_gate) is None  # and dropped
