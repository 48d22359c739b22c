"""A status the API server refuses for what it holds (too large for etcd, invalid) is said, not retried in silence.

Before, every status write path (the stepper's write-ahead and start, the reconciler's final write) re-raised it: the
reconcile failed again and again on the queue's backoff while the rollout showed nothing, posted no Event, and the
decision was made and refused each time. Now the stored status is kept, saying why in Ready (StatusRejected), with a
Warning Event once; the reconcile still fails (backoff, the reconcile-errors alert) and writes nothing more.

The real RolloutStore turns the API server's answers into that refusal: its `custom` API here answers status writes
as the real API server does (the bodies are the ones kube-apiserver 1.34 with etcd 3.6 gave).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_engine_support import World, spec_dict, verdict
from test_operator_events import NAME, NOW, NS, ApiServer, HangingEvents, operator
from test_target_claims import me

from controller.api.status import HISTORY_LIMIT
from controller.engine import JudgeResult, RegistryObservation, ResolvedVersion, RunGate
from controller.operator.events import POSTED_THROUGH, is_warning
from controller.operator.kubeapi import ObjectRef, RolloutStore
from controller.operator.metrics import OperatorMetrics
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import OperatorConfig, ReconcileOutcome, RolloutRuntime, RolloutStepper
from controller.verdict import Outcome

REASON = "StatusRejected"
ETCD_LIMIT = 1_572_864  # etcd's --max-request-bytes default: 1.5 MiB
LONG_CLASS = "nsfw-" + "n" * 1_600_000  # a class name from a .npz dataset (up to ~1 MiB each, 1000 of them)


def answer(status: int, reason: str, body: dict[str, Any]) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", **body})
    return exc


def etcd_too_large() -> ApiException:
    return answer(500, "Internal Server Error", {"message": "etcdserver: request is too large", "code": 500})


def invalid(secret: str, field: str = "status.phase") -> ApiException:
    """The API server's 422, which quotes the values it refuses in its message and causes."""
    return answer(422, "Unprocessable Entity", {
        "message": f'ModelRollout.modelrollout.io "{NAME}" is invalid: [{field}: Unsupported value: "{secret}"]',
        "reason": "Invalid", "code": 422,
        "details": {"name": NAME, "group": "modelrollout.io", "kind": "ModelRollout", "causes": [
            {"reason": "FieldValueNotSupported", "message": f'Unsupported value: "{secret}"', "field": field},
            {"reason": "FieldValueInvalid", "message": "Invalid value: null: some validation rules were not checked",
             "field": "<nil>"}]}})


class ApiFront:
    """The API server behind the real RolloutStore: status writes reach patch_namespaced_custom_object_status below,
    which answers `refuse(body)` when it gives an answer, else stores the status in `server` (409 on a stale
    resourceVersion, as the API server does)."""

    def __init__(self, server: ApiServer, refuse: Callable[[dict[str, Any]], ApiException | None]) -> None:
        self.server, self.refuse = server, refuse
        self.refused, self.sent = 0, []  # the sizes of the bodies sent
        self.store = RolloutStore(client.ApiClient(client.Configuration()))
        self.store.custom = self  # type: ignore[assignment]

    def patch_namespaced_custom_object_status(self, group: str, version: str, namespace: str, plural: str, name: str,
                                              body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.sent.append(len(json.dumps(body)))
        error = self.refuse(body)
        if error is not None:
            self.refused += 1
            raise error
        return ApiServer.apply_status(self.server, {"metadata": body["metadata"]}, body["status"])


def over_etcd_limit(body: dict[str, Any]) -> ApiException | None:
    return etcd_too_large() if len(json.dumps(body)) > ETCD_LIMIT else None


class EtcdLimited(HangingEvents):
    """The engine tests' API server, its status writes going through the real RolloutStore to an etcd that refuses a
    request over its limit."""

    def __init__(self) -> None:
        super().__init__({})
        self.hang = 0.0
        self.front = ApiFront(self, over_etcd_limit)

    def apply_status(self, stored: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        return self.front.store.apply_status(stored, status)


def sample(reconciler: Reconciler, name: str) -> float:
    return reconciler.metrics.registry.get_sample_value(name) or 0.0


def rejected(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in status.get("conditions") or () if c["type"] == "Ready" and c["reason"] == REASON]


# --- the write-ahead: a gate verdict too large for etcd, the real stepper, engine and reconciler ------------------

@pytest.mark.parametrize("outcome", [Outcome.PASS, Outcome.FAIL])
def test_a_gate_verdict_too_large_for_etcd_is_said_once_and_the_gate_is_not_run_again(
        monkeypatch: pytest.MonkeyPatch, outcome: Outcome) -> None:
    """A pass is decided with no action (the weight comes next time): the reconciler's final write is refused. A
    failure is decided with its rollback's actions: their write-ahead is refused, and none of them is carried out.
    (A failure repeats the name 8 times, in its reasons and evidence: a shorter name makes it as large.)"""
    world = World()
    world.spec = spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]})
    world.spec.pop("bake")
    world.gate_verdicts = [verdict(Outcome.PASS, "accuracy", "0.98"),
                           verdict(outcome, f"class {LONG_CLASS[:None if outcome is Outcome.PASS else 250_000]} "
                                   "minRecall", "recall 0.5 against minRecall 0.95")]
    server = EtcdLimited()
    reconciler = operator(monkeypatch, world, server)
    gates: list[str] = []
    measure_gate = RolloutRuntime.measure_gate

    async def counted_gate(self: RolloutRuntime, action: RunGate, state: Any) -> JudgeResult:
        gates.append(action.id)
        return await measure_gate(self, action, state)

    monkeypatch.setattr(RolloutRuntime, "measure_gate", counted_gate)
    step = reconciler.step
    refused_on_the_way: list[bool] = []

    async def recorded(obj: dict[str, Any]) -> ReconcileOutcome:
        outcome = await step(obj)
        refused_on_the_way.append(getattr(outcome, "refused", None) is not None)
        return outcome

    reconciler.step = recorded
    errors: list[ApiException] = []
    writes_after_first_refusal: list[int] = []
    for _ in range(8):
        try:
            again = asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
        except ApiException as exc:  # a reconcile error: the queue retries it on its backoff (5 s, 10 s ... 300 s)
            errors.append(exc)
            writes_after_first_refusal.append(server.writes)
            again = 5.0 * 2 ** (len(errors) - 1)
        world.now += timedelta(seconds=again if again is not None else 30)

    status = server.obj["status"]
    assert len(errors) >= 3, status.get("message")
    assert server.front.refused == len(errors)  # each reconcile decided it again (from the kept verdict)...
    assert gates == ["1:gate-1"]  # ...and did not run the gate again
    assert refused_on_the_way.count(True) == (len(errors) if outcome is Outcome.FAIL else 0)
    assert [a.type for a in world.executed if a.type != "RunGate"] == ["StageCandidate"]  # nothing of the decision
    assert len(set(writes_after_first_refusal)) == 1, "a refusal that repeats must write nothing (nor wake anything)"
    # The status stored before the verdict is kept, and says why it does not move on.
    assert status["phase"] == "Gating" and "completedAt" not in status["gate"]
    (ready,) = rejected(status)
    assert ready["status"] == "False" and ready["observedGeneration"] == 1
    assert "etcdserver: request is too large" in ready["message"] and "bytes" in ready["message"]
    entries = [e for e in status["history"] if e["event"] == REASON]
    assert len(entries) == 1 and entries[0]["detail"] == ready["message"]
    # One Warning Event (named after the entry: never twice), and the mark that records it is stored.
    assert server.reasons().count(REASON) == 1 and is_warning(REASON)
    assert status[POSTED_THROUGH] == status["history"][-1]["seq"]
    # Never the decided status's contents: not in status, the Event, the errors or the counters' labels.
    assert "nnnnnnnnnn" not in json.dumps(status) + json.dumps(list(server.events.values()))
    assert all("nnnnnnnnnn" not in str(error) for error in errors)
    assert sample(reconciler, "modelrollout_status_writes_refused_total") == len(errors)
    assert sample(reconciler, "modelrollout_reconcile_errors_total") == len(errors)

    # Once the verdict fits (here: etcd's limit raised), the kept verdict is stored and the rollout moves on.
    server.front.refuse = lambda body: None
    for _ in range(4):
        again = asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
        world.now += timedelta(seconds=again if again is not None else 30)
    status = server.obj["status"]
    assert status["gate"]["outcome"] == str(outcome) and gates == ["1:gate-1"] and not rejected(status)
    assert status["phase"] in (("Progressing", "Paused") if outcome is Outcome.PASS else ("RollingBack", "RolledBack"))


# --- the reconciler's own write, and the Events mark ----------------------------------------------------------

def front_server(status: dict[str, Any], refuse: Callable[[dict[str, Any]], ApiException | None]) -> ApiServer:
    server = ApiServer(status)
    server.obj["metadata"]["generation"] = 3
    front = ApiFront(server, refuse)
    server.apply_status = front.store.apply_status  # type: ignore[method-assign]
    server.front = front  # type: ignore[attr-defined]
    return server


def reconciler_for(server: ApiServer, decided: dict[str, Any], put_back: list[str]) -> Reconciler:
    async def step(obj: dict[str, Any]) -> ReconcileOutcome:
        return ReconcileOutcome(status=copy.deepcopy(decided), put_back=lambda: put_back.append("put back"))

    return Reconciler(server, step, OperatorMetrics(), clock=lambda: NOW)  # type: ignore[arg-type]


STORED = {"phase": "Progressing", "message": "Step 1/2: 10%", "observedGeneration": 3,
          "history": [{"time": "2026-01-05T09:00:00Z", "event": "WeightChanged", "detail": "10%", "seq": 4}],
          POSTED_THROUGH: 4,
          "conditions": [{"type": "Ready", "status": "False", "reason": "Progressing", "message": "Step 1/2",
                          "lastTransitionTime": "2026-01-05T08:00:00Z", "observedGeneration": 3}]}


@pytest.mark.parametrize(("refusal", "said"), [
    (etcd_too_large(), "too large (HTTP 500: etcdserver: request is too large)"),
    (answer(500, "Internal Server Error", {"code": 500, "message": "rpc error: code = ResourceExhausted desc = trying "
                                           "to send message larger than max (2624252 vs. 2097152)"}),
     "too large (HTTP 500: rpc error: code = ResourceExhausted"),
    (answer(413, "Request Entity Too Large", {"code": 413, "reason": "RequestEntityTooLarge",
                                              "message": "Request entity too large: limit is 3145728"}),
     "too large (HTTP 413: Request entity too large: limit is 3145728)"),
    (invalid("s3cret-Bogus"), "invalid (HTTP 422: status.phase FieldValueNotSupported)"),
    (answer(400, "Bad Request", {"code": 400, "reason": "BadRequest", "message": "error decoding YAML: error "
                                 "converting YAML to JSON: yaml: line 7: did not find expected ',' near s3cret-Bogus"}),
     "unreadable (HTTP 400: not decodable as YAML"),
])
def test_the_reconcilers_refused_write_keeps_the_stored_status_saying_why(refusal: ApiException, said: str) -> None:
    decided = {**STORED, "phase": "s3cret-Bogus", "message": "holds s3cret-Bogus"}
    server = front_server(copy.deepcopy(STORED), lambda body: refusal if "s3cret" in json.dumps(body) else None)
    put_back: list[str] = []
    reconciler = reconciler_for(server, decided, put_back)
    with pytest.raises(ApiException) as raised:
        asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
    assert raised.value.status == refusal.status and "s3cret" not in str(raised.value)
    status = server.obj["status"]
    (ready,) = rejected(status)
    assert said in ready["message"] and "s3cret" not in json.dumps(status)
    assert ready["observedGeneration"] == 3 and ready["lastTransitionTime"] == "2026-01-05T08:00:00Z"  # False before
    assert {k: v for k, v in status.items() if k not in ("conditions", "history", POSTED_THROUGH)} == \
        {k: v for k, v in STORED.items() if k not in ("conditions", "history", POSTED_THROUGH)}
    assert [e["seq"] for e in status["history"]] == [4, 5] and status[POSTED_THROUGH] == 5
    assert server.reasons() == [REASON] and put_back == ["put back"]  # the decision's answers are read again

    # Decided and refused again: nothing written, no second Event; a reconcile error again.
    writes = server.writes
    with pytest.raises(ApiException):
        asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
    assert server.writes == writes and server.reasons() == [REASON]
    assert sample(reconciler, "modelrollout_status_writes_refused_total") == 2

    # A spec edit that does not help is said once more, for its generation.
    server.obj["metadata"]["generation"] = 4
    with pytest.raises(ApiException):
        asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
    assert [c["observedGeneration"] for c in rejected(server.obj["status"])] == [4]
    assert server.reasons() == [REASON, REASON]


def test_answers_that_say_nothing_about_the_content_are_raised_as_they_were() -> None:
    for error in (answer(500, "Internal Server Error", {"code": 500, "message": "etcdserver: leader changed"}),
                  answer(503, "Service Unavailable", {"code": 503, "message": "the server is shutting down"})):
        server = front_server(copy.deepcopy(STORED), lambda body, error=error: error)
        with pytest.raises(ApiException) as raised:
            asyncio.run(reconciler_for(server, {**STORED, "message": "next"}, []).reconcile(ObjectRef(NS, NAME)))
        assert raised.value is error and server.obj["status"] == STORED and server.events == {}


def test_a_status_over_the_api_servers_request_limit_is_not_sent() -> None:
    """The API server reads at most 3 MiB of a request and drops the connection on a larger one (no answer at all)."""
    server = front_server(copy.deepcopy(STORED), lambda body: None)
    decided = {**STORED, "message": "x" * (3 * 1024 * 1024)}
    with pytest.raises(ApiException) as raised:
        asyncio.run(reconciler_for(server, decided, []).reconcile(ObjectRef(NS, NAME)))
    assert raised.value.status == 413 and "not sent" in str(raised.value)
    sent = server.front.sent  # type: ignore[attr-defined]
    assert sent and max(sent) < 10_000  # the small status saying so (and its Events mark), not the large one
    (ready,) = rejected(server.obj["status"])
    assert "the API server reads at most 3,145,728 bytes" in ready["message"]


def test_a_status_that_cannot_even_say_so_is_a_reconcile_error_counted_twice() -> None:
    """The stored status itself at the edge of the limit: the few hundred bytes saying why do not fit either."""
    server = front_server(copy.deepcopy(STORED), lambda body: etcd_too_large())
    reconciler = reconciler_for(server, {**STORED, "message": "next"}, [])
    with pytest.raises(ApiException) as raised:
        asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
    assert raised.value.status == 500 and server.obj["status"] == STORED and server.events == {}
    assert sample(reconciler, "modelrollout_status_writes_refused_total") == 2


def test_a_refused_events_mark_is_counted_and_raised_not_ignored() -> None:
    """The status is stored and its Events are out; only the mark is refused (a policy here): posted again later,
    they are refused by name."""
    server = front_server({"phase": "Pending", "history": []},
                          lambda body: invalid("mark") if POSTED_THROUGH in body["status"] else None)
    decided = {"phase": "Pending", "history": [{"time": "2026-01-05T09:00:30Z", "event": "Resolved", "detail": "7",
                                                "seq": 1}]}
    reconciler = reconciler_for(server, decided, [])
    with pytest.raises(ApiException):
        asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
    assert server.obj["status"] == decided and server.reasons() == ["Resolved"]
    assert sample(reconciler, "modelrollout_status_writes_refused_total") == 1


def test_the_entry_is_numbered_above_the_mark_and_the_history_stays_bounded() -> None:
    history = [{"time": "2026-01-05T09:00:00Z", "event": "WeightChanged", "detail": "w", "seq": n}
               for n in range(1, HISTORY_LIMIT + 1)]
    stored = {"phase": "Progressing", "history": history, POSTED_THROUGH: HISTORY_LIMIT + 7}
    server = front_server(copy.deepcopy(stored),
                          lambda body: etcd_too_large() if body["status"].get("message") else None)
    with pytest.raises(ApiException):
        asyncio.run(reconciler_for(server, {**stored, "message": "m"}, []).reconcile(ObjectRef(NS, NAME)))
    history = server.obj["status"]["history"]
    assert len(history) == HISTORY_LIMIT and history[-1]["event"] == REASON and history[-1]["seq"] == HISTORY_LIMIT + 8


# --- the stepper's start, stored before the next rollout of its target may look -------------------------------

def test_a_refused_start_is_not_acted_on_and_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy that refuses the start (its startedAt): nothing of it is stored or done, and the stored status says
    why. (The target is not synced yet, so the start has no action to write ahead of: the stepper stores it itself.)"""
    monkeypatch.setattr(RolloutRuntime, "observe_registry", lambda self, status=None: RegistryObservation(
        candidate=ResolvedVersion("7", source="s3://m/7"), stable_alias_version=ResolvedVersion("6", source="s3://m/6")))
    monkeypatch.setattr(RolloutRuntime, "observe_target", lambda self: (None, None))  # not synced: no action yet
    acted: list[str] = []
    monkeypatch.setattr(RolloutRuntime, "act", lambda self, action, status: acted.append(action.type))
    server = ApiServer({})
    server.obj = me()
    server.obj["metadata"]["namespace"], server.obj["metadata"]["name"] = NS, NAME
    front = ApiFront(server, lambda body: invalid("now", "status.startedAt") if body["status"].get("startedAt")
                     else None)
    server.apply_status = front.store.apply_status  # type: ignore[method-assign]
    stepper = RolloutStepper(None, OperatorConfig(), clock=lambda: NOW, write_ahead=False)  # type: ignore[arg-type]
    stepper.store = server  # type: ignore[assignment]
    outcomes: list[ReconcileOutcome] = []

    async def step(obj: dict[str, Any]) -> ReconcileOutcome:
        outcomes.append(await stepper.step(obj))
        return outcomes[-1]

    reconciler = Reconciler(server, step, OperatorMetrics(), clock=lambda: NOW)  # type: ignore[arg-type]
    with pytest.raises(ApiException) as raised:
        asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
    assert raised.value.status == 422 and front.refused == 1 and acted == []
    assert outcomes[0].refused is raised.value  # the stepper's own write was refused, and it said so to the caller
    status = server.obj["status"]
    assert "startedAt" not in status and len(stepper._start_locks) == 0
    (ready,) = rejected(status)
    assert "invalid (HTTP 422: status.startedAt FieldValueNotSupported)" in ready["message"]
    assert server.reasons() == [REASON]


# --- operator restarts while the gate's decision is refused --------------------------------------------------

def refuse_progressing(body: dict[str, Any]) -> ApiException | None:
    """A ValidatingAdmissionPolicy refusing this rollout's status in phase Progressing (as in review s26chaos)."""
    return answer(422, "Unprocessable Entity", {"message": "denied", "reason": "Invalid", "code": 422}) \
        if body["status"].get("phase") == "Progressing" else None


@pytest.mark.parametrize("on_inconclusive", ["pause", "rollback"])
def test_restarts_while_the_gates_decision_is_refused_neither_interrupt_the_gate_nor_say_it_again(
        monkeypatch: pytest.MonkeyPatch, on_inconclusive: str) -> None:
    """Each restart hands the gate out again (written ahead), it passes, and its decision is refused again. Before,
    each restart counted one more interruption (the third ended the gate GateInconclusive "out of memory?", rolling
    back with onInconclusive: rollback), and said StatusRejected once more (the write-ahead had replaced Ready)."""
    world = World()
    world.spec = spec_dict(analysis={**spec_dict()["analysis"], "onInconclusive": on_inconclusive})
    server = EtcdLimited()
    server.front.refuse = refuse_progressing
    gates: list[str] = []

    async def counted_gate(self: RolloutRuntime, action: RunGate, state: Any) -> JudgeResult:
        gates.append(action.id)
        gate, _analysis, _failure = world.execute(action)
        assert gate is not None
        return gate

    def run(reconciler: Reconciler, times: int) -> None:
        for _ in range(times):
            try:
                again = asyncio.run(reconciler.reconcile(ObjectRef(NS, NAME)))
            except ApiException as exc:
                assert exc.status == 422
                again = 5.0
            world.now += timedelta(seconds=again if again is not None else 30)

    for _ in range(5):  # the first start, then 4 restarts (a new process: nothing of the last one kept)
        reconciler = operator(monkeypatch, world, server)
        monkeypatch.setattr(RolloutRuntime, "measure_gate", counted_gate)
        run(reconciler, 4)
        status = server.obj["status"]
        assert status["phase"] == "Gating" and status["gate"].get("interrupted", 0) == 0, status.get("message")
        assert [c["reason"] for c in status["conditions"] if c["type"] == "Ready"] == [REASON]
        world.now += timedelta(minutes=2)
    assert len(gates) == 5  # run once per start, each time answered
    entries = [e for e in status["history"] if e["event"] == REASON]
    assert len(entries) == 1 and server.reasons().count(REASON) == 1, [e["detail"] for e in entries]
    assert not any("Inconclusive" in e["event"] for e in status["history"])

    # The policy lifted: the kept verdict of the last start is stored and the rollout moves on.
    server.front.refuse = lambda body: None
    run(reconciler, 3)
    assert server.obj["status"]["phase"] in ("Progressing", "Paused") and not rejected(server.obj["status"])
