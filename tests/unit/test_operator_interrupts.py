"""A reconcile waiting for its own gate or analysis stops for someone else's change (an on-call abort), and one
namespace holds at most half of the gate slots and analysis threads.

Before, the per-object reconcile stayed parked until the wait ended: a rollout whose analysis was queued behind
another tenant's stalled ones (or whose own Prometheus stalled), or whose gate was queued behind theirs, did not see
its abort for up to 300 s (an analysis) or 30 min (a gate). The real RolloutStepper, Reconciler and WakeupQueue, with
test_operator_slots' Store (each change a watch event with the object's body).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_operator_slots import ANALYSIS, Store, runtime_replaced, spec

from controller.api.commands import COMMAND_ANNOTATION
from controller.engine import JudgeResult, TargetObservation
from controller.engine.actions import RunAnalysis, RunGate, SetCanaryWeight, StageCandidate, UnstageCandidate
from controller.operator.kubeapi import ObjectRef
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import OperatorConfig, RolloutRuntime, RolloutStepper
from controller.operator.scheduler import WakeupQueue
from controller.verdict import Outcome, Verdict

decide_module = importlib.import_module("controller.engine.decide")

ANALYSED = {"steps": [{"setWeight": 10}, {"analysis": {"duration": "10m"}}]}
ABORT = json.dumps({"action": "abort", "id": "abort-1", "actor": "oncall"})
Key = tuple[str, str]


class Tenants:
    """Rollouts of several namespaces on one operator; the gates or analyses of stalled rollouts hang (a model
    server answering just inside its timeout, a tarpit Prometheus) until `answer()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.weights: dict[Key, int] = {}
        self.gates: list[Key] = []  # started, in order
        self.analyses: list[Key] = []
        self.gates_running: set[Key] = set()
        self.analyses_running: set[Key] = set()
        self.stalled: dict[str, set[Key]] = {"gate": set(), "analysis": set()}
        self.steps: list[Key] = []  # reconciles' steps, in order
        self.prometheus_answers = threading.Event()
        self.servers_answer: asyncio.Event | None = None
        self.ahead = dt.timedelta()  # rollout time: jumped past an analysis interval
        tenants = self

        def observe_target(self: RolloutRuntime) -> tuple[TargetObservation, None]:
            key = (self.namespace, self.name)
            staged = key in tenants.weights
            return TargetObservation(ready=True, stable_version="7", canary_version="8" if staged else None,
                                     canary_ready=staged, canary_weight=tenants.weights.get(key, 0)), None

        def act(self: RolloutRuntime, action: Any, status: Any) -> None:
            key = (self.namespace, self.name)
            if isinstance(action, StageCandidate):
                tenants.weights[key] = 0
            elif isinstance(action, SetCanaryWeight) and not action.withdraw:
                tenants.weights[key] = action.weight
            elif isinstance(action, SetCanaryWeight | UnstageCandidate):
                tenants.weights.pop(key, None)

        async def measure_gate(self: RolloutRuntime, action: RunGate, state: Any) -> JudgeResult:
            key = (self.namespace, self.name)
            tenants.gates.append(key)
            tenants.gates_running.add(key)
            try:
                if key in tenants.stalled["gate"]:
                    assert tenants.servers_answer is not None
                    await tenants.servers_answer.wait()
            finally:
                tenants.gates_running.discard(key)
            return JudgeResult(action.id, verdicts=(Verdict(name="accuracy", outcome=Outcome.PASS, reason="ok",
                                                            evidence={}),), dataset_sha256="ab" * 32)

        def measure_analysis(self: RolloutRuntime, action: RunAnalysis, now: dt.datetime) -> JudgeResult:
            key = (self.namespace, self.name)
            tenants.analyses.append(key)
            tenants.analyses_running.add(key)
            try:
                if key in tenants.stalled["analysis"]:
                    tenants.prometheus_answers.wait(10)
            finally:
                tenants.analyses_running.discard(key)
            return JudgeResult(action.id, verdicts=(Verdict(name="errors", outcome=Outcome.PASS, reason="ok",
                                                            evidence={}),), measured_at=now)

        runtime_replaced(monkeypatch, observe_target=observe_target, act=act, measure_gate=measure_gate,
                         measure_analysis=measure_analysis)
        self.store = Store()
        self.stepper = RolloutStepper(None, OperatorConfig(scrape_interval=dt.timedelta(0)),  # type: ignore[arg-type]
                                      clock=lambda: dt.datetime.now(dt.UTC) + self.ahead)
        self.stepper.store = self.store  # type: ignore[assignment]

        async def step(obj: dict[str, Any]) -> Any:
            self.steps.append((obj["metadata"]["namespace"], obj["metadata"]["name"]))
            return await self.stepper.step(obj)

        self.queue = WakeupQueue(Reconciler(self.store, step, clock=self.stepper.clock).reconcile)  # type: ignore[arg-type]
        self.store.queue = self.queue

    def run(self, scenario: Callable[[Tenants], Any]) -> None:
        async def main() -> None:
            self.servers_answer = asyncio.Event()
            task = asyncio.create_task(self.queue.run(concurrency=4))
            try:
                await scenario(self)
            finally:
                self.answer()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(main())

    def answer(self) -> None:
        self.prometheus_answers.set()
        if self.servers_answer is not None:
            self.servers_answer.set()

    def create(self, namespace: str, names: list[str], stalls: str | None = None, **extra: Any) -> list[Key]:
        """Rollouts whose `stalls` ("gate", "analysis") hangs; with an analysis step when that is the analysis."""
        keys = [(namespace, name) for name in names]
        if stalls is not None:
            self.stalled[stalls].update(keys)
        for name in names:
            self.store.create(namespace, name, spec(name, **extra))
        return keys

    async def at_analysis(self, keys: list[Key]) -> None:
        """At 10% and past the analysis interval: each asks for its first analysis run."""
        # The analysis step has begun (its window is open): a clock moved before would open the window after it.
        await until(lambda: all(self.weights.get(key) == 10 and (self.store.status(*key).get("analysis") or {}).get(
            "windowStart") for key in keys), 10)
        self.ahead += dt.timedelta(minutes=5)
        for key in keys:
            self.queue.wake(ObjectRef(*key))

    def abort(self, key: Key) -> None:
        self.store.annotate(*key, COMMAND_ANNOTATION, ABORT)

    async def aborted(self, key: Key, within: float = 1.0) -> None:
        """The abort is decided within `within` seconds and, from a canary step, its traffic taken off (a gating
        one's candidate at 0% is unstaged after the registry's rejection tag, which this fake never confirms)."""
        await until(lambda: "abort-1" in self.store.status(*key).get("handledCommands", ()), within)
        assert self.store.status(*key)["phase"] in ("RollingBack", "RolledBack")
        if self.weights.get(key):
            await until(lambda: key not in self.weights, within)


async def until(condition: Callable[[], bool], within: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_an_abort_is_acted_on_while_its_analysis_is_queued_behind_other_tenants_stalled_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = Tenants(monkeypatch)

    async def scenario(world: Tenants) -> None:
        a = world.create("tenant-a", [f"a{i}" for i in range(5)], stalls="analysis", analysis=ANALYSIS, canary=ANALYSED)
        c = world.create("tenant-c", [f"c{i}" for i in range(4)], stalls="analysis", analysis=ANALYSIS, canary=ANALYSED)
        await world.at_analysis([*a, *c])
        # Every analysis thread stalled: four of A's (its share) and four of C's.
        await until(lambda: len(world.analyses_running) == 8, 10)
        b = world.create("tenant-b", ["b"], analysis=ANALYSIS, canary=ANALYSED)[0]
        await world.at_analysis([b])
        await until(lambda: world.store.status(*b).get("analysis", {}).get("requestId"), 5)
        await asyncio.sleep(0.2)
        assert b not in world.analyses  # queued for a thread
        world.abort(b)
        await world.aborted(b)
        assert len(world.analyses_running) == 8 and b not in world.analyses  # the others still stalled
        assert len([key for key in world.analyses if key[0] == "tenant-a"]) == 4

    world.run(scenario)


def test_an_abort_is_acted_on_while_the_rollouts_own_analysis_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    world = Tenants(monkeypatch)

    async def scenario(world: Tenants) -> None:
        b = world.create("tenant-b", ["b"], stalls="analysis", analysis=ANALYSIS, canary=ANALYSED)[0]
        await world.at_analysis([b])
        await until(lambda: b in world.analyses_running, 5)
        world.abort(b)
        await world.aborted(b)
        assert b in world.analyses_running  # its thread cannot be stopped: it ends there, unread
        world.answer()
        await until(lambda: not world.analyses_running, 5)
        await until(lambda: len(world.stepper._analysis_shares) == 0, 1)  # the namespace's share given back
        assert world.analyses == [b]

    world.run(scenario)


def test_an_abort_is_acted_on_while_the_gate_slots_are_held_by_other_tenants(monkeypatch: pytest.MonkeyPatch) -> None:
    world = Tenants(monkeypatch)

    async def scenario(world: Tenants) -> None:
        others = [*world.create("tenant-a", ["a0", "a1"], stalls="gate"),
                  *world.create("tenant-c", ["c0", "c1"], stalls="gate")]
        await until(lambda: world.gates_running == set(others), 5)
        b = world.create("tenant-b", ["b"])[0]
        await until(lambda: world.store.status(*b).get("phase") == "Gating" and b in world.weights, 5)
        await asyncio.sleep(0.2)
        assert b not in world.gates  # queued for a gate slot
        world.abort(b)
        await world.aborted(b)
        assert world.gates_running == set(others)  # theirs go on
        world.answer()
        await until(lambda: not world.gates_running, 5)
        await asyncio.sleep(0.2)
        assert b not in world.gates  # its queued gate was dropped, never run
        assert len(world.stepper._gate_shares) == 0

    world.run(scenario)


def test_one_namespace_holds_half_of_the_gate_slots_and_another_tenants_gate_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = Tenants(monkeypatch)

    async def scenario(world: Tenants) -> None:
        a = world.create("tenant-a", [f"a{i}" for i in range(5)], stalls="gate")
        await until(lambda: len(world.gates_running) >= 2, 5)
        await asyncio.sleep(0.1)  # A's other rollouts are queued for a slot
        b = world.create("tenant-b", ["b"])[0]
        await until(lambda: b in world.gates, 1)
        await until(lambda: world.store.status(*b).get("phase") == "Paused", 2)  # its gate passed: at the pause step
        assert len(world.gates_running) == 2 and world.gates_running < set(a)
        world.answer()
        await until(lambda: len(set(world.gates)) == 6, 5)

    world.run(scenario)


def test_a_command_that_changes_nothing_interrupts_the_wait_and_the_analysis_is_picked_up_not_run_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = Tenants(monkeypatch)

    async def scenario(world: Tenants) -> None:
        b = world.create("tenant-b", ["b"], stalls="analysis", analysis=ANALYSIS, canary=ANALYSED)[0]
        await world.at_analysis([b])
        await until(lambda: b in world.analyses_running, 5)
        # Not a command: decided on now (recorded as ignored) while the analysis still runs.
        world.store.annotate(*b, COMMAND_ANNOTATION, "{not json")
        await until(lambda: any(entry.get("event") == "CommandIgnored"
                                for entry in world.store.status(*b).get("history", ())), 1)
        assert b in world.analyses_running
        world.answer()
        await until(lambda: world.store.status(*b).get("analysis", {}).get("runs") == 1, 2)
        assert world.analyses == [b]  # measured once: the next decision picked up the run under way

    world.run(scenario)


def test_a_spec_edit_interrupts_the_wait_and_the_gate_is_picked_up_not_run_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = Tenants(monkeypatch)

    async def scenario(world: Tenants) -> None:
        b = world.create("tenant-b", ["b"], stalls="gate")[0]
        await until(lambda: b in world.gates_running, 5)
        world.store.objs[b]["spec"]["canary"]["steps"].append({"setWeight": 50})
        world.store.objs[b]["metadata"]["generation"] = 2
        world.store._changed(*b)
        await until(lambda: world.store.status(*b).get("observedGeneration") == 2, 1)  # decided on while it runs
        assert b in world.gates_running and world.store.status(*b)["phase"] == "Gating"
        world.answer()
        await until(lambda: world.store.status(*b).get("phase") == "Paused", 2)
        assert world.gates == [b]

    world.run(scenario)


def test_the_operators_own_status_writes_do_not_interrupt_a_measurement_an_abort_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = Tenants(monkeypatch)

    async def scenario(world: Tenants) -> None:
        world.store.loop = asyncio.get_running_loop()  # its status writes come back as watch events
        b = world.create("tenant-b", ["b"], stalls="analysis", analysis=ANALYSIS, canary=ANALYSED)[0]
        await world.at_analysis([b])
        await until(lambda: b in world.analyses_running, 5)
        steps = len(world.steps)
        world.queue.seen(ObjectRef(*b), world.store.get(ObjectRef(*b)))  # its write-ahead's event, late
        world.queue.wake(ObjectRef(*b))
        await asyncio.sleep(0.5)
        assert len(world.steps) == steps  # the reconcile still waits: not interrupted, not run again
        world.abort(b)
        await world.aborted(b)
        assert world.analyses == [b]

    world.run(scenario)
