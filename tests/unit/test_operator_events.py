"""Events follow the stored history: each entry posted once, across kills, lost writes and API trouble."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_engine_support import World, spec_dict

from controller.api.commands import COMMAND_ANNOTATION
from controller.api.status import HISTORY_LIMIT, HistoryEntry, ModelRolloutStatus, append_history
from controller.engine import Action, JudgeResult, RegistryObservation, RunGate, TargetObservation
from controller.operator.event_poster import EVENT_RETRY_MAX_SECONDS, EVENT_RETRY_SECONDS, EventPoster
from controller.operator.events import POSTED_THROUGH, PostResult, event_name, is_warning, unposted
from controller.operator.kubeapi import ObjectRef, RolloutStore
from controller.operator.metrics import OperatorMetrics
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import OperatorConfig, ReconcileOutcome, RolloutRuntime, RolloutStepper
from controller.traffic import TargetState

NS, NAME = "moderation", "nsfw-classifier"
NOW = datetime(2026, 1, 5, 9, 1, tzinfo=UTC)


def entry(event: str, seq: int | None, age: timedelta = timedelta(seconds=30)) -> dict[str, Any]:
    found = {"time": (NOW - age).strftime("%Y-%m-%dT%H:%M:%SZ"), "event": event, "detail": f"{event} detail"}
    return found if seq is None else {**found, "seq": seq}


class ApiServer:
    """What the reconciler needs of the API server: one rollout, and Events refused as duplicates by name."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.obj = {"metadata": {"namespace": NS, "name": NAME, "uid": "u-1", "resourceVersion": "1"},
                    "spec": {}, "status": status}
        self.events: dict[str, tuple[str, str]] = {}
        self.answers: list[PostResult] = []  # scripted answers for the next posts, then the real behaviour
        self.conflict_on_write: int | None = None  # 1-based index of the status write that gets a 409
        self.conflict_in_metadata_only = False  # that 409 comes from a label written meanwhile, not a status
        self.conflict_annotations: dict[str, str] = {"team": "moderation"}  # what that metadata write set
        self.writes = 0

    def get(self, _ref: ObjectRef) -> dict[str, Any]:
        return self.obj

    def list_in(self, namespace: str) -> list[dict[str, Any]]:
        return []  # the only ModelRollout of its namespace

    def apply_status(self, stored: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        assert stored["metadata"]["resourceVersion"] == self.obj["metadata"]["resourceVersion"]
        self.writes += 1
        if self.writes == self.conflict_on_write:
            # Someone else wrote first: the object moved on to a new resourceVersion.
            moved = {**self.obj["metadata"], "resourceVersion": str(int(self.obj["metadata"]["resourceVersion"]) + 1)}
            if self.conflict_in_metadata_only:
                self.obj = {**self.obj, "metadata": {**moved, "annotations": self.conflict_annotations}}
            else:
                self.obj = {**self.obj, "metadata": moved, "status": {**self.obj["status"], "message": "theirs"}}
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
        self.events[name] = (str(item["event"]), str(item["detail"]))
        return PostResult.POSTED

    def reasons(self) -> list[str]:
        return sorted(reason for reason, _detail in self.events.values())


def reconcile(server: ApiServer, new_status: dict[str, Any] | None = None,
              metrics: OperatorMetrics | None = None) -> float | None:
    async def step(obj: dict[str, Any]) -> ReconcileOutcome:
        return ReconcileOutcome(status=new_status if new_status is not None else obj["status"])

    reconciler = Reconciler(server, step, metrics or OperatorMetrics(), clock=lambda: NOW)  # type: ignore[arg-type]
    return asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))


def test_the_engine_numbers_entries_in_order_across_the_history_bound() -> None:
    history: tuple[HistoryEntry, ...] = (HistoryEntry(NOW, "Resolved", "before numbering"),)
    for n in range(HISTORY_LIMIT + 5):
        history = append_history(history, HistoryEntry(NOW, "WeightChanged", "same every time"))
        assert history[-1].seq == n + 1
    assert len(history) == HISTORY_LIMIT and [e.seq for e in history] == list(range(6, HISTORY_LIMIT + 6))
    # Above the newest number posted, even when a status written without numbers has lost them.
    assert append_history((HistoryEntry(NOW, "Resolved", "unnumbered"),), HistoryEntry(NOW, "Paused", "x"),
                          floor=12)[-1].seq == 13
    # The real engine, through a whole rollout: every entry numbered, 1, 2, 3..., and the mark carried along.
    world = World()
    world.status = ModelRolloutStatus(events_posted_through=7)
    world.reconcile()
    assert [e.seq for e in world.status.history] == list(range(8, len(world.status.history) + 8))
    assert world.status.events_posted_through == 7 and world.status.to_dict()[POSTED_THROUGH] == 7


def test_unposted_is_what_is_numbered_above_the_mark() -> None:
    history = [entry("Resolved", None), entry("GatePassed", 1), entry("WeightChanged", 2), entry("WeightChanged", 3)]
    assert unposted({"history": history}) == history[1:]  # an entry recorded before numbering is never posted
    assert unposted({"history": history, POSTED_THROUGH: 2}) == history[3:]
    assert unposted({"history": history, POSTED_THROUGH: 3}) == []
    assert unposted({}) == []


def test_event_names_are_stable_per_entry_and_differ_per_object_and_are_valid() -> None:
    first = entry("Resolved", 1)
    assert event_name(NAME, "u-1", first) == event_name(NAME, "u-1", dict(reversed(first.items())))
    renumbered = {**entry("Paused", 1), "time": "2026-01-05T10:00:00Z"}  # 1 again, after an older operator
    assert len({event_name(NAME, "u-1", first), event_name(NAME, "u-1", entry("Resolved", 2)),
                event_name(NAME, "u-2", first), event_name(NAME, "u-1", renumbered)}) == 4
    long_name = event_name("a" * 199 + "-b" * 27, "u-1", first)
    assert len(long_name) <= 253 and "-." not in long_name


def test_warning_events() -> None:
    assert [e for e in ("RollbackStarted", "RolledBack", "GateFailed", "GateInconclusive", "Aborted",
                        "InvalidSpec", "Promoted", "WeightChanged", "GatePassed", "TrafficNotRestored",
                        "GateOverridden", "AliasRemoved") if is_warning(e)] == \
        ["RollbackStarted", "RolledBack", "GateFailed", "GateInconclusive", "Aborted", "InvalidSpec",
         "TrafficNotRestored", "GateOverridden"]


def test_new_entries_are_posted_once_each_even_when_identical_and_the_mark_is_stored() -> None:
    server = ApiServer({"phase": "Pending", "history": []})
    metrics = OperatorMetrics()
    first = {"phase": "Progressing", "history": [entry("Resolved", 1), entry("WeightChanged", 2),
                                                 entry("WeightChanged", 3)]}
    first["history"][2]["time"] = first["history"][1]["time"]  # same moment, same detail: still two entries
    reconcile(server, first, metrics)
    assert server.reasons() == ["Resolved", "WeightChanged", "WeightChanged"]
    assert server.obj["status"][POSTED_THROUGH] == 3
    # Reconciles that add nothing post nothing and write nothing.
    writes = server.writes
    for _ in range(3):
        reconcile(server)
    assert len(server.events) == 3 and server.writes == writes
    second = {**server.obj["status"], "history": [*first["history"], entry("AnalysisStarted", 4)]}
    reconcile(server, second, metrics)
    assert server.reasons() == ["AnalysisStarted", "Resolved", "WeightChanged", "WeightChanged"]
    assert metrics.registry.get_sample_value("modelrollout_events_total", {"reason": "WeightChanged"}) == 2


def test_entries_stored_by_a_reconcile_that_died_are_posted_by_the_next_without_duplicates() -> None:
    history = [entry("Resolved", 1), entry("GatePassed", 2), entry("WeightChanged", 3)]
    # Killed after posting the first Event, before recording the mark: the status holds no mark.
    server = ApiServer({"phase": "Progressing", "history": history})
    server.events[event_name(NAME, "u-1", history[0])] = ("Resolved", "Resolved detail")
    metrics = OperatorMetrics()
    reconcile(server, metrics=metrics)
    assert server.reasons() == ["GatePassed", "Resolved", "WeightChanged"]
    assert server.obj["status"][POSTED_THROUGH] == 3
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
    assert len(server.events) == 2 and server.obj["status"][POSTED_THROUGH] == 2


def test_a_decision_whose_status_was_not_stored_posts_nothing() -> None:
    server = ApiServer({"phase": "Pending", "history": []})
    server.conflict_on_write = 1
    assert reconcile(server, {"phase": "Progressing", "history": [entry("Resolved", 1)]}) == 0.0
    assert server.events == {}


def test_a_conflict_from_metadata_alone_keeps_the_decision() -> None:
    """A label or annotation written meanwhile (a GitOps tool) must not throw away what the decision carries,
    e.g. a golden gate's verdict after minutes of inference: it is applied again on the fresh version."""
    server = ApiServer({"phase": "Pending", "history": []})
    server.conflict_on_write, server.conflict_in_metadata_only = 1, True
    reconcile(server, {"phase": "Progressing", "history": [entry("Resolved", 1)]})
    assert server.obj["status"]["phase"] == "Progressing" and server.reasons() == ["Resolved"]
    assert server.obj["metadata"]["annotations"] == {"team": "moderation"}


def test_a_command_written_meanwhile_is_decided_on_not_acted_past() -> None:
    server = ApiServer({"phase": "Pending", "history": []})
    server.conflict_on_write, server.conflict_in_metadata_only = 1, True
    server.conflict_annotations = {COMMAND_ANNOTATION: '{"action":"abort","actor":"alice","id":"c1"}'}
    assert reconcile(server, {"phase": "Progressing", "history": [entry("Resolved", 1)]}) == 0.0
    assert server.obj["status"]["phase"] == "Pending" and server.events == {}


def test_entries_past_the_events_lifetime_and_unnumbered_ones_are_not_posted() -> None:
    # An operator upgraded under a finished rollout, or down for hours: no flood of stale Events.
    history = [entry("Resolved", None, age=timedelta(days=2)), entry("Succeeded", 1, age=timedelta(hours=2)),
               entry("AliasMoved", 2)]
    server = ApiServer({"phase": "Succeeded", "history": history})
    reconcile(server)
    assert server.reasons() == ["AliasMoved"] and server.obj["status"][POSTED_THROUGH] == 2


def test_entries_that_left_the_history_unposted_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    server = ApiServer({"phase": "Progressing", "history": [entry("Paused", 9)], POSTED_THROUGH: 5})
    reconcile(server)
    assert server.reasons() == ["Paused"] and "entries 6 to 8 left the bounded history" in caplog.text


@pytest.mark.parametrize("trouble", [PostResult.DEFERRED, PostResult.REFUSED])
def test_api_trouble_defers_the_rest_and_a_refusal_is_skipped(trouble: PostResult) -> None:
    fresh = timedelta(seconds=4)
    history = [entry("Resolved", 1, fresh), entry("GatePassed", 2, fresh), entry("WeightChanged", 3, fresh)]
    server = ApiServer({"phase": "Pending", "history": []})
    server.answers = [PostResult.POSTED, trouble]
    requeue = reconcile(server, {"phase": "Progressing", "history": history})
    if trouble is PostResult.DEFERRED:
        # Unreachable or busy: the rest waits for the next reconcile, which comes soon (5 s at the least).
        assert requeue == EVENT_RETRY_SECONDS
        assert server.reasons() == ["Resolved"]
        assert server.obj["status"][POSTED_THROUGH] == 1
        reconcile(server)
        assert server.reasons() == ["GatePassed", "Resolved", "WeightChanged"]
    else:
        # Never to be taken (forbidden, invalid): skipped, so it cannot hold back the Events after it.
        assert requeue is None
        assert server.reasons() == ["Resolved", "WeightChanged"]
    assert server.obj["status"][POSTED_THROUGH] == 3


def test_retries_slow_down_as_the_waiting_entry_ages() -> None:
    server = ApiServer({"phase": "Succeeded", "history": [entry("Succeeded", 1, age=timedelta(minutes=8))]})
    server.answers = [PostResult.DEFERRED]
    assert reconcile(server) == 240.0  # half its age
    server.answers = [PostResult.DEFERRED]
    server.obj["status"]["history"] = [entry("Succeeded", 1, age=timedelta(minutes=50))]
    assert reconcile(server) == EVENT_RETRY_MAX_SECONDS


def test_an_entry_without_a_readable_time_is_tried_once_not_retried_for_ever() -> None:
    # Never older than the Events' lifetime, a hand-edited entry under a full Events quota was retried every 5 s.
    untimed = {k: v for k, v in entry("Succeeded", 1).items() if k != "time"}
    server = ApiServer({"phase": "Succeeded", "history": [untimed, entry("Succeeded", 2)]})
    server.answers = [PostResult.DEFERRED, PostResult.DEFERRED]
    assert reconcile(server) == 15.0  # the timed one after it waits (half its 30 s); the untimed one is given up
    assert server.obj["status"][POSTED_THROUGH] == 1


class RaisingEvents:
    def __init__(self, error: Exception | None) -> None:
        self.error, self.created = error, []

    def create_namespaced_event(self, namespace: str, body: client.CoreV1Event) -> None:
        if self.error:
            raise self.error
        self.created.append(body)


def quota_exceeded() -> ApiException:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403, "message":
                           'events "r.abc" is forbidden: exceeded quota: events, requested: count/events=1, '
                           'used: count/events=1000, limited: count/events=1000'})
    return exc


@pytest.mark.parametrize(("error", "result"), [
    (None, PostResult.POSTED),
    (ApiException(status=409), PostResult.ALREADY_POSTED),
    (ApiException(status=403), PostResult.REFUSED),
    (quota_exceeded(), PostResult.DEFERRED),  # the namespace's Events are full until old ones expire
    (ApiException(status=401), PostResult.DEFERRED),
    (ApiException(status=422), PostResult.REFUSED),
    (ApiException(status=429), PostResult.DEFERRED),
    (ApiException(status=503), PostResult.DEFERRED),
    (ApiException(status=0, reason="SSLError"), PostResult.DEFERRED),
    (urllib3.exceptions.ReadTimeoutError(None, "/api", "read timed out"), PostResult.DEFERRED),
    (urllib3.exceptions.MaxRetryError(None, "/api"), PostResult.DEFERRED),
    (ConnectionResetError(), PostResult.DEFERRED),
])
def test_post_event_says_what_became_of_the_event(error: Exception | None, result: PostResult) -> None:
    store = RolloutStore(client.ApiClient(client.Configuration()))  # not the default a CLI test loaded
    store.core = RaisingEvents(error)  # type: ignore[assignment]
    obj = {"metadata": {"namespace": NS, "name": NAME, "uid": "u-1", "resourceVersion": "4"}}
    assert store.post_event(obj, entry("RolledBack", 7)) is result
    if error is None:
        (event,) = store.core.created  # type: ignore[attr-defined]
        assert event.metadata.name == event_name(NAME, "u-1", entry("RolledBack", 7)) and event.type == "Warning"
        assert event.reason == "RolledBack" and event.message == "RolledBack detail"
        assert event.first_timestamp == NOW - timedelta(seconds=30)  # when it happened, not when it was posted


class HangingEvents(ApiServer):
    """Its Events endpoint hangs (as until the client's read timeout) until an effect action has been sent, at
    most `hang` seconds, once."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status)
        self.acted = threading.Event()
        self.hang = 2.0
        self.timeline: list[str] = []

    def post_event(self, obj: dict[str, Any], item: Mapping[str, Any]) -> PostResult:
        self.acted.wait(self.hang)
        self.hang = 0.0
        self.timeline.append(f"posted {item['event']}")
        return super().post_event(obj, item)


def operator(monkeypatch: pytest.MonkeyPatch, world: World, server: HangingEvents) -> Reconciler:
    """The real stepper (write-ahead and Events), reconciler and poster; the adapters answer from `world`."""
    def observe_registry(self: RolloutRuntime, status: ModelRolloutStatus | None = None) -> RegistryObservation:
        world.status = status if status is not None else ModelRolloutStatus()
        return world.observe().registry

    def act(self: RolloutRuntime, action: Action, status: ModelRolloutStatus) -> None:
        world.execute(action)
        server.timeline.append(f"acted {action.type}")
        server.acted.set()

    async def measure_gate(self: RolloutRuntime, action: RunGate, state: TargetState | None) -> JudgeResult:
        # The gate runs for minutes: what the write-ahead stored before it must be out as Events meanwhile.
        history = [e["event"] for e in server.obj["status"]["history"]]
        deadline = time.monotonic() + 2.0
        while server.reasons() != sorted(history) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        server.timeline.append(f"gate ran with {server.reasons() == sorted(history)} Events out")
        gate, _analysis, _failure = world.execute(action)
        assert gate is not None
        return gate

    def observe_target(self: RolloutRuntime) -> tuple[TargetObservation | None, TargetState | None]:
        return world.target.observe(world.now), None

    monkeypatch.setattr(RolloutRuntime, "observe_registry", observe_registry)
    monkeypatch.setattr(RolloutRuntime, "observe_target", observe_target)
    monkeypatch.setattr(RolloutRuntime, "act", act)
    monkeypatch.setattr(RolloutRuntime, "measure_gate", measure_gate)
    monkeypatch.setattr(RolloutRuntime, "finish_withdrawal", lambda self, status, still_current=None: False)
    server.obj = {**server.obj, "spec": world.spec, "metadata": {**server.obj["metadata"], "generation": 1}}
    metrics = OperatorMetrics()
    poster = EventPoster(server, metrics, clock=lambda: world.now)
    stepper = RolloutStepper(None, OperatorConfig(), clock=lambda: world.now,  # type: ignore[arg-type]
                             write_ahead=False, events=poster)
    stepper.store = server  # type: ignore[assignment]
    return Reconciler(server, stepper.step, metrics, clock=lambda: world.now,  # type: ignore[arg-type]
                      events=poster, forget=stepper.forget)


def test_a_rounds_effects_are_not_held_back_by_its_events_which_still_go_out_once_each_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback decided while the Events endpoint hangs is sent at once, not a request timeout later; the
    round's Events follow (or go beside) its effects, and a gate's go out while it runs."""
    world = World()
    world.spec = spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]})
    world.spec.pop("bake")
    server = HangingEvents({})
    reconciler = operator(monkeypatch, world, server)
    for _ in range(6):
        again = asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
        world.now += timedelta(seconds=again or 30)
        if server.obj["status"].get("phase") == "Paused":
            break
    assert server.timeline[0] == "acted StageCandidate", server.timeline
    assert "gate ran with True Events out" in server.timeline, server.timeline
    history = server.obj["status"]["history"]
    assert server.obj["status"]["phase"] == "Paused" and server.obj["status"][POSTED_THROUGH] == history[-1]["seq"]
    # Once each (the reconciler's own post after the stepper's finds them posted), in the history's order.
    assert [reason for reason, _detail in server.events.values()] == [e["event"] for e in history]


@pytest.mark.parametrize(("event", "reason"), [
    ("RolledBackForNewCandidate", "RolledBackForNewCandidate"),
    ("SomethingNewer", "SomethingNewer"),  # a newer operator's word is still a word
    ("any text at all, even spaces", "Unknown"),
    ("rolledBack", "Unknown"),
    ("Rolled-Back", "Unknown"),
    ("A" + "b" * 64, "Unknown"),
    ("", "Unknown"),
    (7, "Unknown"),
    (None, "Unknown"),
])
def test_an_event_reason_is_a_fixed_word_never_the_entrys_text(event: Any, reason: str) -> None:
    """A status edited by hand (or one this operator cannot read) may hold any text where the event name goes."""
    server = ApiServer({"phase": "Pending", "history": []})
    metrics = OperatorMetrics()
    store = RolloutStore(client.ApiClient(client.Configuration()))  # not the default a CLI test loaded
    store.core = RaisingEvents(None)  # type: ignore[assignment]
    item = {**entry("Resolved", 1), "event": event}
    reconcile(server, {"phase": "Pending", "history": [item]}, metrics)
    assert store.post_event(server.obj, item) is PostResult.POSTED
    (posted,) = store.core.created  # type: ignore[attr-defined]
    assert posted.reason == reason
    assert metrics.registry.get_sample_value("modelrollout_events_total", {"reason": reason}) == 1
    # The text is in no label either: the posted entry is counted under the fixed word alone.
    assert [s.labels["reason"] for m in metrics.events.collect() for s in m.samples if s.name.endswith("_total")] \
        == [reason]
