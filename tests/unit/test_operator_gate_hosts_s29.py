"""Review s29r6: the gate's URL hosts are checked by the settings only while the attempt's gate is ahead, computed
once per step from the stored status. A new version on a rollout past its gate rolls back, restarts and gates again
in that one step: its gate ran at a host no longer allowed, or at one never allowed set in the same edit. The gate
now checks the hosts where it runs, and the next step refuses the spec (InvalidSpec)."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
from typing import Any

import pytest
from test_operator_interrupts import until
from test_operator_slots import Store, spec

from controller.engine import RegistryObservation, ResolvedVersion, TargetObservation
from controller.engine.actions import SetCanaryWeight, StageCandidate, UnstageCandidate
from controller.gate import GateReport, InferenceEndpoint
from controller.operator import runtime as runtime_module
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import OperatorConfig, RolloutRuntime, RolloutStepper
from controller.operator.scheduler import WakeupQueue
from controller.verdict import Outcome, Verdict

decide_module = importlib.import_module("controller.engine.decide")
NS, NAME = "tenant-b", "b"
KEY = (NS, NAME)
URL = "http://gate.example.com"


@pytest.mark.parametrize(("hosts_after", "new_url"), [
    ((), None),  # an upgrade (or --gate-hosts) no longer allows gate.example.com
    (("gate.example.com",), "http://169.254.169.254/latest"),  # a host never allowed, set with the new version
], ids=["no-longer-allowed", "never-allowed"])
def test_a_new_versions_gate_never_runs_at_a_host_the_operator_refuses(monkeypatch: pytest.MonkeyPatch,
                                                                       hosts_after: tuple[str, ...],
                                                                       new_url: str | None) -> None:
    sent: list[tuple[str, str]] = []
    canary: dict[str, Any] = {}

    async def run_gate(dataset: Any, candidate: InferenceEndpoint, stable: Any, **_: Any) -> GateReport:
        sent.append((canary.get("version", "-"), candidate.base_url))
        passed = Verdict(name="minAccuracy", outcome=Outcome.PASS, reason="ok", evidence={})
        return GateReport(outcome=Outcome.PASS, reason="ok", verdicts=(passed,), dataset_sha256="ab" * 32,
                          status={}, evidence={})

    def observe_registry(self: RolloutRuntime, status: Any = None) -> RegistryObservation:
        return RegistryObservation(candidate=ResolvedVersion(self.spec.model.version, source="s3://m/x"),
                                   stable_alias_version=ResolvedVersion("7", source="s3://m/7"))

    def observe_target(self: RolloutRuntime) -> tuple[TargetObservation, None]:
        return TargetObservation(ready=True, stable_version="7", canary_version=canary.get("version"),
                                 canary_ready="version" in canary, canary_weight=canary.get("weight", 0)), None

    def act(self: RolloutRuntime, action: Any, status: Any) -> None:
        if isinstance(action, StageCandidate):
            canary.update(version=action.candidate.version, weight=0)
        elif isinstance(action, SetCanaryWeight) and not action.withdraw:
            canary["weight"] = action.weight
        elif isinstance(action, SetCanaryWeight | UnstageCandidate):
            canary.clear()

    monkeypatch.setattr(RolloutRuntime, "observe_registry", observe_registry)
    monkeypatch.setattr(RolloutRuntime, "observe_target", observe_target)
    monkeypatch.setattr(RolloutRuntime, "act", act)
    monkeypatch.setattr(RolloutRuntime, "finish_withdrawal", lambda self, status, still_current=None: False)
    monkeypatch.setattr(decide_module, "GATE_SETTLE_MARGIN", dt.timedelta(0))
    monkeypatch.setattr(runtime_module, "run_gate", run_gate)
    store = Store()

    def serve(gate_hosts: tuple[str, ...]) -> asyncio.Task[None]:
        stepper = RolloutStepper(None, OperatorConfig(scrape_interval=dt.timedelta(0),  # type: ignore[arg-type]
                                                      gate_hosts=gate_hosts))
        stepper.store = store  # type: ignore[assignment]
        store.queue = queue = WakeupQueue(Reconciler(store, stepper.step).reconcile)  # type: ignore[arg-type]
        return asyncio.create_task(queue.run(concurrency=1))

    def refused() -> bool:
        return any(c.get("reason") == "InvalidSpec" for c in store.status(*KEY).get("conditions", []))

    async def scenario() -> None:
        running = serve(("gate.example.com",))  # gate passes, canary at 10%
        store.create(NS, NAME, spec(NAME, target={"kserve": {"inferenceService": NAME, "candidateUrl": URL}}))
        await until(lambda: canary.get("weight") == 10, 5)
        running.cancel()
        running = serve(hosts_after)  # the operator restarted with its new settings
        obj = store.objs[KEY]
        obj["spec"]["model"]["version"] = "9"
        if new_url:
            obj["spec"]["target"]["kserve"]["candidateUrl"] = new_url
        obj["metadata"]["generation"] += 1
        store._changed(*KEY)
        try:
            await until(refused, 5)
        finally:
            running.cancel()

    asyncio.run(scenario())
    assert sent == [("8", URL)], sent  # the first attempt's gate only
    assert refused()
