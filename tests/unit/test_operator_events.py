"""Events follow the stored history: each entry posted once, across kills, lost writes and API trouble."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controller.operator.events import (
    POSTED_THROUGH,
    PostResult,
    entry_key,
    event_name,
    is_warning,
    unposted,
)
from controller.operator.kubeapi import ObjectRef
from controller.operator.metrics import OperatorMetrics
from controller.operator.reconciler import EVENT_RETRY_SECONDS, Reconciler
from controller.operator.runtime import ReconcileOutcome

NS, NAME = "moderation", "nsfw-classifier"


def entry(event: str, second: int) -> dict[str, Any]:
    return {"time": f"2026-01-05T09:00:{second:02d}Z", "event": event, "detail": f"{event} detail"}


class ApiServer:
    """What the reconciler needs of the API server: one rollout, and Events refused as duplicates by name."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.obj = {"metadata": {"namespace": NS, "name": NAME, "uid": "u-1", "resourceVersion": "1"},
                    "spec": {}, "status": status}
        self.events: dict[str, str] = {}
        self.answers: list[PostResult] = []  # scripted answers for the next posts, then the real behaviour
        self.conflict_on_write: int | None = None  # 1-based index of the status write that gets a 409
        self.writes = 0

    def get(self, _ref: ObjectRef) -> dict[str, Any]:
        return self.obj

    def apply_status(self, stored: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        assert stored["metadata"]["resourceVersion"] == self.obj["metadata"]["resourceVersion"]
        self.writes += 1
        if self.writes == self.conflict_on_write:
            raise ApiException(status=409)
        version = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
        self.obj = {**self.obj, "metadata": {**self.obj["metadata"], "resourceVersion": version}, "status": status}
        return self.obj

    def post_event(self, obj: dict[str, Any], item: Mapping[str, Any]) -> PostResult:
        if self.answers:
            answer = self.answers.pop(0)
            if answer is not PostResult.POSTED:
                return answer
        name = event_name(obj["metadata"]["name"], obj["metadata"]["uid"], item)
        if name in self.events:
            return PostResult.ALREADY_POSTED
        self.events[name] = str(item["event"])
        return PostResult.POSTED


def reconcile(server: ApiServer, new_status: dict[str, Any] | None = None,
              metrics: OperatorMetrics | None = None) -> float | None:
    async def step(obj: dict[str, Any]) -> ReconcileOutcome:
        return ReconcileOutcome(status=new_status if new_status is not None else obj["status"])

    reconciler = Reconciler(server, step, metrics or OperatorMetrics())  # type: ignore[arg-type]
    return asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))


def test_unposted_is_what_follows_the_mark_or_everything_when_the_mark_is_gone() -> None:
    history = [entry("Resolved", 1), entry("GatePassed", 2), entry("WeightChanged", 3)]
    assert unposted({"history": history}) == history
    assert unposted({"history": history, POSTED_THROUGH: entry_key(history[1])}) == history[2:]
    assert unposted({"history": history, POSTED_THROUGH: entry_key(history[2])}) == []
    assert unposted({"history": history, POSTED_THROUGH: "truncated-away"}) == history
    assert unposted({}) == []


def test_event_names_are_stable_per_entry_and_differ_per_object() -> None:
    first, second = entry("Resolved", 1), entry("Resolved", 2)
    assert event_name(NAME, "u-1", first) == event_name(NAME, "u-1", dict(reversed(first.items())))
    assert len({event_name(NAME, "u-1", first), event_name(NAME, "u-1", second),
                event_name(NAME, "u-2", first)}) == 3
    assert len(event_name("x" * 253, "u-1", first)) <= 253


def test_warning_events() -> None:
    assert [e for e in ("RollbackStarted", "RolledBack", "GateFailed", "GateInconclusive", "Aborted",
                        "InvalidSpec", "Promoted", "WeightChanged", "GatePassed") if is_warning(e)] == \
        ["RolledBack", "GateFailed", "GateInconclusive", "Aborted", "InvalidSpec"]


def test_new_entries_are_posted_once_and_the_mark_is_stored() -> None:
    server = ApiServer({"phase": "Pending", "history": []})
    metrics = OperatorMetrics()
    first = {"phase": "Progressing", "history": [entry("Resolved", 1), entry("WeightChanged", 2)]}
    reconcile(server, first, metrics)
    assert sorted(server.events.values()) == ["Resolved", "WeightChanged"]
    assert server.obj["status"][POSTED_THROUGH] == entry_key(first["history"][-1])
    # Reconciles that add nothing post nothing and write nothing.
    writes = server.writes
    for _ in range(3):
        reconcile(server)
    assert len(server.events) == 2 and server.writes == writes
    second = {**server.obj["status"], "history": [*first["history"], entry("AnalysisStarted", 3)]}
    reconcile(server, second, metrics)
    assert sorted(server.events.values()) == ["AnalysisStarted", "Resolved", "WeightChanged"]
    assert metrics.registry.get_sample_value("modelrollout_steps_total", {"namespace": NS, "rollout": NAME}) == 2
    assert metrics.registry.get_sample_value("modelrollout_events_total", {"reason": "Resolved"}) == 1


def test_entries_stored_by_a_reconcile_that_died_are_posted_by_the_next_without_duplicates() -> None:
    history = [entry("Resolved", 1), entry("GatePassed", 2), entry("WeightChanged", 3)]
    # Killed after posting the first Event, before recording the mark: the status holds no mark.
    server = ApiServer({"phase": "Progressing", "history": history})
    server.events[event_name(NAME, "u-1", history[0])] = "Resolved"
    metrics = OperatorMetrics()
    reconcile(server, metrics=metrics)
    assert sorted(server.events.values()) == ["GatePassed", "Resolved", "WeightChanged"]
    assert server.obj["status"][POSTED_THROUGH] == entry_key(history[-1])
    # The Event another process posted is not counted again here.
    assert metrics.registry.get_sample_value("modelrollout_events_total", {"reason": "Resolved"}) is None
    assert metrics.registry.get_sample_value("modelrollout_events_total", {"reason": "GatePassed"}) == 1


def test_a_lost_mark_write_is_made_good_by_the_next_reconcile() -> None:
    history = [entry("Resolved", 1), entry("GatePassed", 2)]
    server = ApiServer({"phase": "Pending", "history": []})
    server.conflict_on_write = 2  # the status goes in, the mark after the Events does not
    reconcile(server, {"phase": "Progressing", "history": history})
    assert len(server.events) == 2 and POSTED_THROUGH not in server.obj["status"]
    reconcile(server)
    assert len(server.events) == 2 and server.obj["status"][POSTED_THROUGH] == entry_key(history[-1])


def test_a_lost_status_write_posts_nothing() -> None:
    server = ApiServer({"phase": "Pending", "history": []})
    server.conflict_on_write = 1
    assert reconcile(server, {"phase": "Progressing", "history": [entry("Resolved", 1)]}) == 0.0
    assert server.events == {}


@pytest.mark.parametrize("trouble", [PostResult.DEFERRED, PostResult.REFUSED])
def test_api_trouble_defers_the_rest_and_a_refusal_is_skipped(trouble: PostResult) -> None:
    history = [entry("Resolved", 1), entry("GatePassed", 2), entry("WeightChanged", 3)]
    server = ApiServer({"phase": "Pending", "history": []})
    server.answers = [PostResult.POSTED, trouble]
    requeue = reconcile(server, {"phase": "Progressing", "history": history})
    if trouble is PostResult.DEFERRED:
        # Unreachable or busy: the rest waits for the next reconcile, which comes soon.
        assert requeue == EVENT_RETRY_SECONDS
        assert list(server.events.values()) == ["Resolved"]
        assert server.obj["status"][POSTED_THROUGH] == entry_key(history[0])
        reconcile(server)
        assert sorted(server.events.values()) == ["GatePassed", "Resolved", "WeightChanged"]
    else:
        # Never to be taken (forbidden, invalid): skipped, so it cannot hold back the Events after it.
        assert requeue is None
        assert sorted(server.events.values()) == ["Resolved", "WeightChanged"]
    assert server.obj["status"][POSTED_THROUGH] == entry_key(history[-1])
