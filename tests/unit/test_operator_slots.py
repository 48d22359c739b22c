"""A stalling Prometheus must not hold the reconcile workers: an analysis lends its worker while it waits, as a gate
does, so that another tenant's abort is acted on meanwhile."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import importlib
import itertools
import json
import threading
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controller.engine import JudgeResult, RegistryObservation, ResolvedVersion, TargetObservation
from controller.engine.actions import RunAnalysis, SetCanaryWeight, StageCandidate, UnstageCandidate
from controller.operator.events import PostResult
from controller.operator.kubeapi import ObjectRef
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import OperatorConfig, RolloutRuntime, RolloutStepper
from controller.operator.scheduler import WakeupQueue
from controller.verdict import Outcome, Verdict

# controller.engine exports the function decide, which hides the module of the same name.
decide_module = importlib.import_module("controller.engine.decide")

ANALYSIS = {"prometheus": {"address": "http://tarpit.tenant-a:9090"}, "interval": "30s",
            "metrics": [{"name": "errors", "threshold": {"query": "vector(0)", "max": 1}}]}


def spec(name: str, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"name": name, "version": "8", "stableAlias": "production"},
        "target": {"kserve": {"inferenceService": name}},
        "canary": {"steps": [{"setWeight": 10}, {"pause": {}}]},
        "goldenDataset": {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32,
                          "thresholds": {"minAccuracy": 0.5}}}
    return {**raw, **extra}


class Store:
    """ModelRollouts by (namespace, name); a status write on a stale resourceVersion conflicts. Each change is a
    watch event with the object's body; the operator's own status writes too once `loop` is set (as a real watch:
    they come back from another thread, the API server)."""

    def __init__(self) -> None:
        self.objs: dict[tuple[str, str], dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.queue: WakeupQueue | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _watched(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        assert self.queue is not None
        self.queue.seen(ObjectRef(namespace, name), body)
        self.queue.wake(ObjectRef(namespace, name))

    def _changed(self, namespace: str, name: str) -> None:
        self.objs[(namespace, name)]["metadata"]["resourceVersion"] = str(next(self.versions))
        self._watched(namespace, name, copy.deepcopy(self.objs[(namespace, name)]))

    def create(self, namespace: str, name: str, raw: dict[str, Any]) -> None:
        self.objs[(namespace, name)] = {
            "apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout", "spec": raw, "status": {},
            "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}", "generation": 1,
                         "annotations": {}}}
        self._changed(namespace, name)

    def annotate(self, namespace: str, name: str, key: str, value: str) -> None:
        self.objs[(namespace, name)]["metadata"]["annotations"][key] = value
        self._changed(namespace, name)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.objs[(namespace, name)]["status"]

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        return copy.deepcopy(self.objs.get((ref.namespace, ref.name)))

    def list_in(self, namespace: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (ns, _), o in self.objs.items() if ns == namespace]

    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        current = self.objs[(meta["namespace"], meta["name"])]
        if current["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        current["status"] = copy.deepcopy(status)
        current["metadata"]["resourceVersion"] = str(next(self.versions))
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._watched, meta["namespace"], meta["name"], copy.deepcopy(current))
        return copy.deepcopy(current)

    def apply_finalizer(self, obj: dict[str, Any], hold: bool) -> dict[str, Any] | None:
        return self.get(ObjectRef(obj["metadata"]["namespace"], obj["metadata"]["name"]))

    def post_event(self, obj: dict[str, Any], entry: Any) -> PostResult:
        return PostResult.POSTED


def runtime_replaced(monkeypatch: pytest.MonkeyPatch, **methods: Any) -> None:
    """RolloutRuntime with these methods, candidate 8 over stable 7 in the registry, and nothing to withdraw."""
    monkeypatch.setattr(RolloutRuntime, "observe_registry", lambda self, status=None: RegistryObservation(
        candidate=ResolvedVersion("8", source="s3://m/8"), stable_alias_version=ResolvedVersion("7", source="s3://m/7")))
    for name, method in methods.items():
        monkeypatch.setattr(RolloutRuntime, name, method)
    # No gate traffic to wait for before the first weight (_set_weight_step).
    monkeypatch.setattr(decide_module, "GATE_SETTLE_MARGIN", dt.timedelta(0))
    monkeypatch.setattr(RolloutRuntime, "finish_withdrawal", lambda self, status, still_current=None: False)


def test_analyses_stalled_on_a_slow_prometheus_do_not_hold_up_another_rollouts_abort(
        monkeypatch: pytest.MonkeyPatch) -> None:
    weights: dict[tuple[str, str], int] = {}
    analysing: set[str] = set()
    prometheus_answers = threading.Event()

    def observe_target(self: RolloutRuntime) -> tuple[TargetObservation, None]:
        key = (self.namespace, self.name)
        return TargetObservation(ready=True, stable_version="7", canary_version="8" if key in weights else None,
                                 canary_ready=key in weights, canary_weight=weights.get(key, 0)), None

    def act(self: RolloutRuntime, action: Any, status: Any) -> None:
        key = (self.namespace, self.name)
        if isinstance(action, StageCandidate):
            weights[key] = 0
        elif isinstance(action, SetCanaryWeight) and not action.withdraw:
            weights[key] = action.weight
        elif isinstance(action, SetCanaryWeight | UnstageCandidate):
            weights.pop(key, None)

    async def measure_gate(self: RolloutRuntime, action: Any, state: Any) -> JudgeResult:
        return JudgeResult(action.id, verdicts=(Verdict(name="accuracy", outcome=Outcome.PASS, reason="ok",
                                                        evidence={}),), dataset_sha256="ab" * 32)

    def measure_analysis(self: RolloutRuntime, action: RunAnalysis, now: dt.datetime) -> JudgeResult:
        analysing.add(self.name)
        prometheus_answers.wait(10)  # a tarpit: up to the metric budget, minutes
        return JudgeResult(action.id, verdicts=(Verdict(name="errors", outcome=Outcome.INCONCLUSIVE,
                                                        reason="PrometheusTooSlow"),))

    runtime_replaced(monkeypatch, observe_target=observe_target, act=act, measure_gate=measure_gate,
                     measure_analysis=measure_analysis)
    # Rollout time: jumped past the analysis interval once the canaries are at 10%.
    ahead = [dt.timedelta()]

    def clock() -> dt.datetime:
        return dt.datetime.now(dt.UTC) + ahead[0]

    async def until(condition: Any, within: float) -> float:
        started = time.monotonic()
        while not condition():
            assert time.monotonic() - started < within
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    async def main() -> float:
        store = Store()
        stepper = RolloutStepper(None, OperatorConfig(scrape_interval=dt.timedelta(0)), clock=clock)  # type: ignore[arg-type]
        stepper.store = store  # type: ignore[assignment]
        queue = WakeupQueue(Reconciler(store, stepper.step, clock=clock).reconcile)  # type: ignore[arg-type]
        store.queue = queue
        task = asyncio.create_task(queue.run(concurrency=4))
        try:
            store.create("tenant-b", "b", spec("b"))
            await until(lambda: weights.get(("tenant-b", "b")) == 10, 5)
            tenant_a = [f"a{i}" for i in range(4)]  # as many as the queue has workers
            for name in tenant_a:
                store.create("tenant-a", name, spec(name, analysis=ANALYSIS, canary={
                    "steps": [{"setWeight": 10}, {"analysis": {"duration": "10m"}}]}))
            # The analysis step has begun (its window is open): a clock moved before would open the window after it.
            await until(lambda: all(weights.get(("tenant-a", name)) == 10 and (store.status("tenant-a", name).get(
                "analysis") or {}).get("windowStart") for name in tenant_a), 5)
            ahead[0] = dt.timedelta(minutes=5)
            for name in tenant_a:
                queue.wake(ObjectRef("tenant-a", name))
            await until(lambda: analysing == set(tenant_a), 5)
            store.annotate("tenant-b", "b", "modelrollout.io/command",
                           json.dumps({"action": "abort", "id": "abort-1", "actor": "oncall"}))
            acted_on = await until(lambda: weights.get(("tenant-b", "b"), 0) == 0, 5)
            assert store.status("tenant-b", "b")["phase"] in ("RollingBack", "RolledBack", "Aborted")
            assert analysing == set(tenant_a) and not prometheus_answers.is_set()  # all four still stalled
            return acted_on
        finally:
            prometheus_answers.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert asyncio.run(main()) < 1.0
