"""The metrics read whatever status is stored (hand edits included) and never fail a reconcile."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import generate_latest
from test_operator_metrics import NAME, NS, FakeStore, obj, reconcile, value

from controller.operator import metrics as metrics_module
from controller.operator.metrics import OperatorMetrics
from controller.operator.runtime import ReconcileOutcome

ROLLED_BACK = {"phase": "RolledBack", "rollback": {"verdictAt": "2026-01-05T09:00:00Z", "timeToRecoverSeconds": 2},
               "history": [{"time": "2026-01-05T09:00:00Z", "event": "WeightChanged", "detail": "", "seq": 1}]}


@pytest.mark.parametrize("edit", [
    {"rollback": "x"},
    {"rollback": ["x"], "gate": "x", "analysis": "x"},
    {"gate": {"completedAt": "t", "outcome": "pass"}, "analysis": {"lastRunAt": "t", "metrics": ["x", 1]}},
    {"history": "x"},
    {"history": ["x", 1, None, {"seq": 2, "event": "Paused"}]},
])
def test_a_field_of_the_wrong_type_counts_as_empty(edit: dict[str, Any]) -> None:
    metrics = OperatorMetrics()
    edited = {"phase": "Progressing", **edit}
    metrics.observe(obj(edited), edited)  # as baseline
    metrics.observe(obj(edited), {**ROLLED_BACK, **edit})  # as news
    metrics.observe(obj({**ROLLED_BACK, **edit}), edited)  # and back
    assert value(metrics, "modelrollout_rollouts", phase="Progressing") == 1
    assert value(metrics, "modelrollout_rollbacks_total", namespace=NS, rollout=NAME) == \
        (1 if "rollback" not in edit else 0)
    # A spec whose metrics are no list names none (the old name's series go), and a status that is no object
    # records nothing.
    metrics.observe({**obj(edited), "spec": {"analysis": {"metrics": "x"}}}, "x")  # type: ignore[arg-type]
    assert 'metric="nsfw-rate"' not in generate_latest(metrics.registry).decode()
    assert value(metrics, "modelrollout_rollouts", phase="Pending") == 1


def test_a_metrics_failure_is_logged_and_the_reconcile_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    metrics = OperatorMetrics()

    def broken(*_args: Any) -> None:
        raise AttributeError("'str' object has no attribute 'get'")

    monkeypatch.setattr(metrics_module, "_keys", broken)  # reading the status, for the baseline and the news
    store = FakeStore(obj({"phase": "Progressing"}))
    with caplog.at_level(logging.ERROR):
        assert reconcile(store, ReconcileOutcome(status=ROLLED_BACK, requeue_after=7.0), metrics) == 7.0
    assert store.events == ["WeightChanged"]  # its Events still go out, and the mark is stored
    assert store.written[-1]["eventsPostedThrough"] == 1
    assert value(metrics, "modelrollout_reconcile_errors_total") == 0
    assert "metrics not updated" in caplog.text
