"""The operator's /metrics: the names deploy/monitoring queries, each fact counted once, over the real engine."""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import generate_latest
from test_deploy_monitoring import OPERATOR_METRICS
from test_engine_support import World, spec_dict, verdict

from controller.api.status import Phase
from controller.operator.events import PostResult
from controller.operator.kubeapi import ObjectRef
from controller.operator.metrics import GATE_METRIC, OperatorMetrics, serve
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import ReconcileOutcome
from controller.verdict import Outcome

NS, NAME = "moderation", "nsfw-classifier"


def obj(status: dict[str, Any] | None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": NS, "name": NAME, "resourceVersion": "1"}, "spec": spec or spec_dict(),
            "status": status or {}}


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    assert found is not None, (name, labels, generate_latest(metrics.registry).decode())
    return found


def exposed(metrics: OperatorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def verdicts(metrics: OperatorMetrics, metric: str, result: str, namespace: str = NS, rollout: str = NAME) -> float:
    return value(metrics, "modelrollout_verdicts_total", namespace=namespace, rollout=rollout, metric=metric,
                 result=result)


def run_world(world: World, metrics: OperatorMetrics, done: Any, step: timedelta = timedelta(seconds=30),
              limit: int = 400) -> list[dict[str, Any]]:
    """Each reconcile's stored status goes to the metrics, as the Reconciler does after a successful write."""
    statuses = []
    before: dict[str, Any] = {}
    for _ in range(limit):
        first = len(world.decisions)
        world.reconcile()
        after = world.status.to_dict()
        metrics.observe(obj(before), after)
        for entry in (e for d in world.decisions[first:] for e in d.events):
            metrics.count_event(entry.event)  # as the Reconciler does for each entry it posts
        statuses.append(after)
        before = after
        if done(world):
            return statuses
        world.advance(step)
    raise AssertionError(f"not done; phase {world.status.phase}")


def test_every_series_the_rules_and_dashboard_query_exists_before_any_event() -> None:
    metrics = OperatorMetrics()
    metrics.observe(obj({}), {"phase": "Pending"})
    text = exposed(metrics)
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert names >= OPERATOR_METRICS
    for phase in Phase:
        assert value(metrics, "modelrollout_rollouts", phase=str(phase)) == (1 if phase is Phase.PENDING else 0)
    # Counters at 0 before their first event (so increase() sees the first one), with the labels they are
    # queried by: the spec's analysis metrics and the gate, the rollout's rollbacks.
    for result in ("pass", "fail", "inconclusive"):
        assert verdicts(metrics, "nsfw-rate", result) == 0
        assert verdicts(metrics, GATE_METRIC, result) == 0
    assert value(metrics, "modelrollout_rollbacks_total", namespace=NS, rollout=NAME) == 0
    assert value(metrics, "modelrollout_canary_weight", namespace=NS, rollout=NAME) == 0
    assert value(metrics, "modelrollout_reconcile_errors_total") == 0
    assert value(metrics, "modelrollout_time_to_recover_seconds_count") == 0


def failing_after(passes: int) -> Any:
    calls = {"n": 0}

    def judge(_request: Any) -> list[Any]:
        calls["n"] += 1
        return [verdict(Outcome.PASS if calls["n"] <= passes else Outcome.FAIL)]

    return judge


def test_a_rollback_through_the_engine_is_counted_once_however_often_its_status_is_read() -> None:
    metrics = OperatorMetrics()
    world = World(judge=failing_after(5))
    statuses = run_world(world, metrics, lambda w: w.status.phase == Phase.ROLLED_BACK)
    final = statuses[-1]
    runs = {(s["analysis"]["windowStart"], s["analysis"]["lastRunAt"]) for s in statuses
            if (s.get("analysis") or {}).get("lastRunAt")}
    assert len(runs) == 6  # five passes, then the failure
    assert verdicts(metrics, "nsfw-rate", "pass") == 5
    assert verdicts(metrics, "nsfw-rate", "fail") == 1
    assert verdicts(metrics, GATE_METRIC, "pass") == 1
    assert value(metrics, "modelrollout_rollbacks_total", namespace=NS, rollout=NAME) == 1
    assert value(metrics, "modelrollout_time_to_recover_seconds_count") == 1
    assert value(metrics, "modelrollout_time_to_recover_seconds_sum") == pytest.approx(
        final["rollback"]["timeToRecoverSeconds"])
    entered = [h["event"] for h in final["history"] if h["event"] in ("WeightChanged", "AnalysisStarted", "Paused")]
    assert entered == ["WeightChanged", "AnalysisStarted"]  # 1%, then judged there until the failure
    assert value(metrics, "modelrollout_steps_total", namespace=NS, rollout=NAME) == len(entered)
    assert value(metrics, "modelrollout_events_total", reason="RollbackStarted") == 1
    assert value(metrics, "modelrollout_rollouts", phase="RolledBack") == 1
    assert value(metrics, "modelrollout_rollouts", phase="Progressing") == 0
    assert value(metrics, "modelrollout_canary_weight", namespace=NS, rollout=NAME) == 0

    # The next reconciles read the same status again (requeues, watch events): nothing new is counted.
    before = exposed(metrics)
    for _ in range(3):
        metrics.observe(obj(final), final)
    assert exposed(metrics) == before


def test_a_restarted_operator_takes_the_stored_status_as_its_baseline() -> None:
    world = World(judge=failing_after(2))
    run_world(world, OperatorMetrics(), lambda w: w.status.phase == Phase.ROLLED_BACK)
    final = world.status.to_dict()
    fresh = OperatorMetrics()  # a new process: its counters start at 0 and the old rollback is not news
    fresh.observe(obj(final), final)
    assert value(fresh, "modelrollout_rollbacks_total", namespace=NS, rollout=NAME) == 0
    assert value(fresh, "modelrollout_time_to_recover_seconds_count") == 0
    assert verdicts(fresh, "nsfw-rate", "fail") == 0
    assert value(fresh, "modelrollout_rollouts", phase="RolledBack") == 1


def test_weight_follows_the_observed_weight_and_a_deleted_rollout_leaves_no_series() -> None:
    metrics = OperatorMetrics()
    metrics.observe(obj({}), {"phase": "Progressing", "canaryWeight": 10, "currentStep": 0})
    assert value(metrics, "modelrollout_canary_weight", namespace=NS, rollout=NAME) == 10
    assert value(metrics, "modelrollout_rollouts", phase="Progressing") == 1
    metrics.forget(NS, NAME)
    assert f'rollout="{NAME}"' not in exposed(metrics)
    assert value(metrics, "modelrollout_rollouts", phase="Progressing") == 0


class FakeStore:
    def __init__(self, stored: dict[str, Any] | None = None, get_error: int | None = None,
                 apply_error: int | None = None) -> None:
        self.stored, self.get_error, self.apply_error = stored, get_error, apply_error
        self.events: list[str] = []
        self.written: list[dict[str, Any]] = []

    def get(self, _ref: ObjectRef) -> dict[str, Any] | None:
        if self.get_error:
            raise ApiException(status=self.get_error, reason="Forbidden")
        return self.stored

    def apply_status(self, stored: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        if self.apply_error:
            raise ApiException(status=self.apply_error)
        self.written.append(status)
        return {**stored, "status": status}

    def post_event(self, _obj: dict[str, Any], entry: Mapping[str, Any]) -> PostResult:
        self.events.append(entry["event"])
        return PostResult.POSTED


def reconcile(store: FakeStore, outcome: ReconcileOutcome, metrics: OperatorMetrics) -> float | None:
    async def step(_obj: dict[str, Any]) -> ReconcileOutcome:
        return outcome

    reconciler = Reconciler(store, step, metrics, clock=lambda: datetime(2026, 1, 5, 9, 0, 5, tzinfo=UTC))
    return asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))  # type: ignore[arg-type]


def test_reconciler_counts_errors_and_only_what_it_stored() -> None:
    metrics = OperatorMetrics()
    rolled_back = {"phase": "RolledBack", "rollback": {"verdictAt": "2026-01-05T09:00:00Z", "cause": "Aborted",
                                                       "reason": "x", "timeToRecoverSeconds": 1.5},
                   "history": [{"time": "2026-01-05T09:00:00Z", "event": "RollbackStarted", "detail": "x", "seq": 1}]}
    outcome = ReconcileOutcome(status=rolled_back, actions_taken=["RestoreStable:a1-restore"])
    with pytest.raises(ApiException):
        reconcile(FakeStore(get_error=403), outcome, metrics)
    assert value(metrics, "modelrollout_reconcile_errors_total") == 1
    # A lost write (409) is decided again on fresh state: nothing it would have recorded is counted yet.
    assert reconcile(FakeStore(obj({"phase": "Progressing"}), apply_error=409), outcome, metrics) == 0.0
    assert value(metrics, "modelrollout_reconcile_errors_total") == 1
    assert value(metrics, "modelrollout_rollbacks_total", namespace=NS, rollout=NAME) == 0  # the baseline, read
    assert value(metrics, "modelrollout_actions_total", type="RestoreStable") == 1
    store = FakeStore(obj({"phase": "Progressing"}))
    reconcile(store, outcome, metrics)
    assert store.events == ["RollbackStarted"]
    assert value(metrics, "modelrollout_events_total", reason="RollbackStarted") == 1
    assert value(metrics, "modelrollout_rollbacks_total", namespace=NS, rollout=NAME) == 1
    assert value(metrics, "modelrollout_time_to_recover_seconds_count") == 1
    assert value(metrics, "modelrollout_reconcile_duration_seconds_count") == 3
    reconcile(FakeStore(None), outcome, metrics)  # gone: its series go too
    assert f'rollout="{NAME}"' not in exposed(metrics)


def test_metrics_are_served_on_a_free_port_and_a_taken_port_is_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    metrics = OperatorMetrics()
    port = serve(metrics, "127.0.0.1", 0)
    assert port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert 'modelrollout_rollouts{phase="Succeeded"} 0.0' in body
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with caplog.at_level(logging.ERROR):
            assert serve(OperatorMetrics(), "127.0.0.1", taken.getsockname()[1]) is None
    assert "running without /metrics" in caplog.text


def test_steps_are_counted_by_entry_number_once_and_again_for_an_object_made_anew() -> None:
    metrics = OperatorMetrics()

    def steps() -> float:
        return value(metrics, "modelrollout_steps_total", namespace=NS, rollout=NAME)

    def history(*events: str) -> list[dict[str, Any]]:
        return [{"time": "2026-01-05T09:00:00Z", "event": e, "detail": "", "seq": n} for n, e in enumerate(events, 1)]

    old = {"phase": "Progressing", "history": history("Resolved", "WeightChanged")}
    metrics.observe(obj(old), old)  # first sight: the baseline, not news
    newer = {"phase": "Paused", "history": history("Resolved", "WeightChanged", "Paused", "WeightChanged")}
    metrics.observe(obj(old), newer)
    metrics.observe(obj(newer), newer)
    assert steps() == 2
    # Deleted and created again under the same name, the deletion unseen: its numbers start over.
    anew = {"phase": "Progressing", "history": history("WeightChanged")}
    metrics.observe(obj(newer), anew)
    assert steps() == 3


def test_a_rollback_stored_on_the_way_is_counted_when_the_final_write_loses() -> None:
    # First reconcile since a restart: the stepper stored the rollback (write-ahead), then the final write lost a
    # 409. The next read has the rollback in it and would be taken as the baseline: it must be counted now.
    metrics = OperatorMetrics()
    rolled_back = {"phase": "RollingBack", "rollback": {"verdictAt": "2026-01-05T09:00:00Z", "cause": "Aborted",
                                                        "reason": "x"}}
    outcome = ReconcileOutcome(status={**rolled_back, "phase": "RolledBack"}, stored_status=rolled_back)
    assert reconcile(FakeStore(obj({"phase": "Progressing"}), apply_error=409), outcome, metrics) == 0.0
    assert value(metrics, "modelrollout_rollbacks_total", namespace=NS, rollout=NAME) == 1
    reconcile(FakeStore(obj(rolled_back)), outcome, metrics)  # read back and decided again: not counted twice
    assert value(metrics, "modelrollout_rollbacks_total", namespace=NS, rollout=NAME) == 1


def test_a_deleted_rollout_is_forgotten_by_the_stepper_too() -> None:
    forgotten: list[tuple[str, str]] = []

    async def step(_obj: dict[str, Any]) -> ReconcileOutcome:
        raise AssertionError("nothing to step: the rollout is gone")

    reconciler = Reconciler(FakeStore(None), step, OperatorMetrics(),  # type: ignore[arg-type]
                            forget=lambda ns, name: forgotten.append((ns, name)))
    assert asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME))) is None
    assert forgotten == [(NS, NAME)]


def test_two_rollouts_judging_the_same_metric_name_count_apart_and_go_apart() -> None:
    """Team A's stuck `nsfw-rate` must not be hidden by team B's passing one (ModelRolloutAnalysisInconclusive)."""
    metrics = OperatorMetrics()
    stuck, passing = obj({}), obj({})
    passing["metadata"] = {**passing["metadata"], "namespace": "team-b"}

    def judged(run: str, outcome: str) -> dict[str, Any]:
        return {"phase": "Progressing", "analysis": {"mode": "canary", "windowStart": "2026-01-05T09:00:00Z",
                                                     "lastRunAt": run, "metrics": [{"name": "nsfw-rate",
                                                                                    "outcome": outcome}]}}

    metrics.observe(stuck, {"phase": "Progressing"})
    metrics.observe(passing, {"phase": "Progressing"})
    for minute in range(3):
        run = f"2026-01-05T09:0{minute}:00Z"
        metrics.observe(stuck, judged(run, "inconclusive"))
        metrics.observe(passing, judged(run, "pass"))

    assert (verdicts(metrics, "nsfw-rate", "inconclusive"), verdicts(metrics, "nsfw-rate", "pass")) == (3, 0)
    assert (verdicts(metrics, "nsfw-rate", "inconclusive", "team-b"),
            verdicts(metrics, "nsfw-rate", "pass", "team-b")) == (0, 3)
    assert verdicts(metrics, GATE_METRIC, "fail", "team-b") == 0  # each rollout's gate series exist at 0 too
    metrics.forget(NS, NAME)
    assert f'namespace="{NS}"' not in exposed(metrics)  # the gate's series go with the rollout too
    assert verdicts(metrics, "nsfw-rate", "pass", "team-b") == 3


def test_a_rollback_stored_on_the_way_is_counted_when_the_reconcile_then_fails() -> None:
    # First reconcile since a restart: the stepper stored the rollback (write-ahead), then a later write failed
    # with a 500 and the reconcile raised. The next reconcile reads the rollback back: it is news, not baseline.
    metrics = OperatorMetrics()
    rolled_back = {"phase": "RollingBack", "rollback": {"verdictAt": "2026-01-05T09:00:00Z", "cause": "Aborted",
                                                        "reason": "x"}}
    store = FakeStore(obj({"phase": "Progressing"}))

    async def write_ahead_then_fail(_obj: dict[str, Any]) -> ReconcileOutcome:
        store.stored = obj(rolled_back)
        raise ApiException(status=500)

    reconciler = Reconciler(store, write_ahead_then_fail, metrics)  # type: ignore[arg-type]
    with pytest.raises(ApiException):
        asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
    reconcile(store, ReconcileOutcome(status=rolled_back), metrics)  # read back: nothing new to write
    assert value(metrics, "modelrollout_rollbacks_total", namespace=NS, rollout=NAME) == 1
    reconcile(store, ReconcileOutcome(status=rolled_back), metrics)
    assert value(metrics, "modelrollout_rollbacks_total", namespace=NS, rollout=NAME) == 1


def test_a_renamed_metrics_verdict_series_go_but_not_another_rollouts() -> None:
    metrics = OperatorMetrics()

    def named(*names: str, rollout: str = NAME) -> dict[str, Any]:
        found = obj({"phase": "Progressing"}, spec_dict(analysis={"metrics": [{"name": n} for n in names]}))
        found["metadata"] = {**found["metadata"], "name": rollout}
        return found

    for version in range(3):
        metrics.observe(named(f"error-rate-v{version}"), {"phase": "Progressing"})
    assert 'metric="error-rate-v0"' not in exposed(metrics) and 'metric="error-rate-v1"' not in exposed(metrics)
    assert verdicts(metrics, "error-rate-v2", "fail") == 0
    metrics.observe(named("shared", rollout="other"), {"phase": "Progressing"})
    metrics.observe(named("error-rate-v2", "shared"), {"phase": "Progressing"})
    metrics.observe(named("error-rate-v2"), {"phase": "Progressing"})  # dropped by this one, still "other"'s
    assert metrics.registry.get_sample_value("modelrollout_verdicts_total", {
        "namespace": NS, "rollout": NAME, "metric": "shared", "result": "fail"}) is None
    assert verdicts(metrics, "shared", "fail", rollout="other") == 0
    metrics.forget(NS, NAME)
    metrics.forget(NS, "other")
    assert "modelrollout_verdicts_total{" not in exposed(metrics)
