"""A gate URL fixed while the gate runs is the URL judged (README: "The gate's candidateUrl/stableUrl may be fixed at
any time").

Before, a gate run (and its verdict, kept past a lost status write) was told apart by its action alone, which names no
URL: the run started at the mistaken candidateUrl went on after the fix and its verdict decided the rollout (review
s25gate: a backdoored candidate passed, judged at stable's server, and was promoted). The real stepper, reconciler,
engine and RolloutRuntime.measure_gate; test_operator_slots' Store; the model servers stand in for run_gate.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

import pytest
from test_operator_interrupts import until
from test_operator_slots import Store, runtime_replaced, spec

from controller.engine import TargetObservation
from controller.engine.actions import SetCanaryWeight, StageCandidate, UnstageCandidate
from controller.gate import GateReport, InferenceEndpoint
from controller.operator import runtime as runtime_module
from controller.operator.kubeapi import ObjectRef
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import OperatorConfig, RolloutRuntime, RolloutStepper
from controller.operator.scheduler import WakeupQueue
from controller.verdict import Outcome, Verdict

NS, NAME = "tenant-b", "b"
KEY = (NS, NAME)
# The slip: candidateUrl names stable's server, which passes the gate; the candidate's own server fails it.
WRONG = "http://stable.tenant-b.svc.cluster.local"
RIGHT = "http://candidate.tenant-b.svc.cluster.local"


class Servers:
    """Stands in for run_gate: records where each gate run sends the dataset; one sent to WRONG waits for `release`
    when `hold` is set (a slow server)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold: bool) -> None:
        self.hold = hold
        self.sent: list[str] = []
        self.cancelled: list[str] = []
        self.release: asyncio.Event | None = None
        self.weights: dict[tuple[str, str], int] = {}
        servers = self

        async def run_gate(dataset: Any, candidate: InferenceEndpoint, stable: Any, **_: Any) -> GateReport:
            servers.sent.append(candidate.base_url)
            try:
                if servers.hold and candidate.base_url == WRONG:
                    assert servers.release is not None
                    await servers.release.wait()
            except asyncio.CancelledError:
                servers.cancelled.append(candidate.base_url)
                raise
            outcome = Outcome.PASS if candidate.base_url == WRONG else Outcome.FAIL
            verdict = Verdict(name="minAccuracy", outcome=outcome, reason=f"judged at {candidate.base_url}",
                              evidence={})
            return GateReport(outcome=outcome, reason=verdict.reason, verdicts=(verdict,), dataset_sha256="ab" * 32,
                              status={"candidate": {"url": candidate.base_url}}, evidence={})

        def observe_target(self: RolloutRuntime) -> tuple[TargetObservation, None]:
            staged = KEY in servers.weights
            return TargetObservation(ready=True, stable_version="7", canary_version="8" if staged else None,
                                     canary_ready=staged, canary_weight=servers.weights.get(KEY, 0)), None

        def act(self: RolloutRuntime, action: Any, status: Any) -> None:
            if isinstance(action, StageCandidate):
                servers.weights[KEY] = 0
            elif isinstance(action, SetCanaryWeight) and not action.withdraw:
                servers.weights[KEY] = action.weight
            elif isinstance(action, SetCanaryWeight | UnstageCandidate):
                servers.weights.pop(KEY, None)

        runtime_replaced(monkeypatch, observe_target=observe_target, act=act)
        monkeypatch.setattr(runtime_module, "run_gate", run_gate)


def fix_the_url(store: Store) -> None:
    """On-call sets candidateUrl to the candidate's own server (a new generation)."""
    obj = store.objs[KEY]
    obj["spec"]["target"]["kserve"]["candidateUrl"] = RIGHT
    obj["metadata"]["generation"] += 1
    store._changed(*KEY)


def create(store: Store) -> None:
    store.create(NS, NAME, spec(NAME, target={"kserve": {"inferenceService": NAME, "candidateUrl": WRONG}}))


def new_stepper(store: Store, clock: list[dt.datetime] | None = None) -> RolloutStepper:
    """A fresh operator's stepper: nothing in memory."""
    stepper = RolloutStepper(None, OperatorConfig(scrape_interval=dt.timedelta(0)),  # type: ignore[arg-type]
                             **({"clock": lambda: clock[0]} if clock else {}))
    stepper.store = store  # type: ignore[assignment]
    return stepper


def test_a_gate_running_at_a_url_fixed_since_is_run_again_at_the_fixed_url(monkeypatch: pytest.MonkeyPatch) -> None:
    servers = Servers(monkeypatch, hold=True)
    store = Store()
    queue = WakeupQueue(Reconciler(store, new_stepper(store).step).reconcile)  # type: ignore[arg-type]
    store.queue = queue

    async def main() -> None:
        servers.release = asyncio.Event()
        running = asyncio.create_task(queue.run(concurrency=2))
        try:
            create(store)
            await until(lambda: servers.sent == [WRONG], 5)
            fix_the_url(store)
            await until(lambda: RIGHT in servers.sent, 2)  # at once, not when the engine next hands the gate out
            servers.release.set()  # the mistaken server answers now, too late
            await until(lambda: (store.status(*KEY).get("gate") or {}).get("completedAt"), 2)
        finally:
            servers.release.set()
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    asyncio.run(main())
    gate = store.status(*KEY)["gate"]
    assert gate["outcome"] == "fail" and gate["report"]["candidate"]["url"] == RIGHT, gate
    assert servers.sent == [WRONG, RIGHT] and servers.cancelled == [WRONG]


class Reconciled(Store):
    """Reconciled in turn by the test (no watch); with `edit_first`, the URL is fixed just before the status write
    that holds the gate's verdict, so that write is a 409 and the verdict is kept for the next decision."""

    def __init__(self, edit_first: bool) -> None:
        super().__init__()
        self.edit_first = edit_first

    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        if (status.get("gate") or {}).get("completedAt") and self.edit_first:
            self.edit_first = False
            fix_the_url(self)
        return super().apply_status(obj, status)

    def _watched(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        pass


def reconcile_until_the_gate_ends(store: Store, clock: list[dt.datetime]) -> dict[str, Any]:
    reconciler = Reconciler(store, new_stepper(store, clock).step, clock=lambda: clock[0])  # type: ignore[arg-type]
    for _ in range(20):
        again = asyncio.run(reconciler.reconcile(ObjectRef(*KEY)))
        clock[0] += dt.timedelta(seconds=again if again is not None else 30)
        if (store.status(*KEY).get("gate") or {}).get("completedAt"):
            break
    return copy.deepcopy(store.status(*KEY)["gate"])


def test_a_kept_verdict_measured_at_a_url_fixed_since_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    servers = Servers(monkeypatch, hold=False)
    store = Reconciled(edit_first=True)
    create(store)
    gate = reconcile_until_the_gate_ends(store, [dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)])
    assert not store.edit_first and servers.sent == [WRONG, RIGHT], servers.sent
    assert gate["outcome"] == "fail" and gate["report"]["candidate"]["url"] == RIGHT, gate


def test_after_a_restart_the_open_gate_runs_at_the_url_the_spec_names_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while its gate ran at the mistaken URL, the URL fixed meanwhile: nothing of that run outlives the
    operator, and the request status left open is run again at the fixed URL."""
    servers = Servers(monkeypatch, hold=True)
    store = Reconciled(edit_first=False)
    clock = [dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)]
    create(store)

    async def killed_while_the_gate_runs() -> None:
        servers.release = asyncio.Event()
        reconciler = Reconciler(store, new_stepper(store, clock).step, clock=lambda: clock[0])  # type: ignore[arg-type]
        for _ in range(10):
            step = asyncio.create_task(reconciler.reconcile(ObjectRef(*KEY)))
            await asyncio.wait([step], timeout=1)
            if servers.sent:
                break
        step.cancel()
        await asyncio.gather(step, return_exceptions=True)

    asyncio.run(killed_while_the_gate_runs())
    assert servers.sent == [WRONG] and store.status(*KEY)["phase"] == "Gating", servers.sent
    fix_the_url(store)
    gate = reconcile_until_the_gate_ends(store, clock)
    assert servers.sent == [WRONG, RIGHT] and gate["outcome"] == "fail", (servers.sent, gate)
