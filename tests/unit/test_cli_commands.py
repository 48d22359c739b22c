"""The on-call commands against a local stand-in for the API server (127.0.0.1): commands that cannot overwrite
each other, `get --watch` that waits for the command it was run after, and answers that are no API server's."""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_engine_support import Registry, Target, World, spec_dict, verdict

from controller.api import CommandAction, SpecError
from controller.api.commands import COMMAND_ANNOTATION
from controller.api.status import PauseReason, Phase
from controller.cli import oncall as oncall_module
from controller.cli.main import build_parser, main
from controller.cli.oncall import OnCall
from controller.devstack.demo import run_demo
from controller.devstack.processes import StackError
from controller.engine import REJECTED_TAG, reject_spec
from controller.engine.claims import target_claim
from controller.engine.decide import wait_for_target
from controller.operator.runtime import _unreadable_status, refused_status
from controller.verdict import Outcome
from tests.http_stub import serving

ROLLOUT_PATH = "/apis/modelrollout.io/v1alpha1/namespaces/ns/modelrollouts/r"
LIST_PATH = "/apis/modelrollout.io/v1alpha1/namespaces/ns/modelrollouts"
REVIEW_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


def rollout(phase: str, annotation: str | None = None, handled: tuple[str, ...] = ()) -> dict[str, Any]:
    annotations = {COMMAND_ANNOTATION: annotation} if annotation is not None else {}
    return {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
            "metadata": {"name": "r", "namespace": "ns", "generation": 3, "resourceVersion": "100",
                         "annotations": annotations},
            "spec": {"model": {"name": "m"}, "canary": {"steps": [{"setWeight": 10}]}},
            "status": {"phase": phase, "observedGeneration": 3, "message": f"{phase} message",
                       "handledCommands": list(handled)}}


def command(action: str, command_id: str, actor: str = "bob") -> str:
    return json.dumps({"action": action, "id": command_id, "actor": actor})


OPERATOR_DELAY = 0.3  # seconds from a command's PATCH to the fake operator's status write


def records(event: str, detail: str) -> Callable[[FakeApi, str], None]:
    """An operator that handles the command as the engine does: its id in handledCommands, a history entry."""
    def handle(fake: FakeApi, command_id: str) -> None:
        status = fake.obj["status"]
        status["handledCommands"].append(command_id)
        status.setdefault("history", []).append({"time": "2025-01-01T00:00:00Z", "event": event, "detail": detail,
                                                 "actor": "alice", "commandId": command_id, "seq": 7})
        fake.obj["metadata"]["resourceVersion"] = str(int(fake.obj["metadata"]["resourceVersion"]) + 1)
    return handle


class FakeApi:
    """Answers GET and merge PATCH of one ModelRollout (409 when the patch's resourceVersion is not the stored
    one, as the API server does), its list, and SelfSubjectReview; or, with `html`, a login page to everything."""

    def __init__(self) -> None:
        self.obj = rollout("Progressing")
        # What the next GETs answer (an int: that HTTP error; None: 404 Not Found).
        self.script: list[dict[str, Any] | int | None] = []
        self.after_get: Callable[[FakeApi], None] | None = None  # another writer, between a read and a patch
        self.html = False
        self.echo_auth: int | None = None  # that HTTP error to every GET, quoting the Authorization header (a proxy)
        self.gets = 0
        self.patches: list[dict[str, Any]] = []
        # "The operator": what it does to the object (None: deletes it), OPERATOR_DELAY after a PATCH writes a command.
        self.operator: Callable[[FakeApi, str], None] | None = None
        self.lock = threading.Lock()  # the operator's write is not interleaved with a request's
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if isinstance(body, bytes) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                with owner.lock:
                    self._get()

            def _get(self) -> None:
                if owner.html:
                    return self._answer(200, b"<html><body>Please log in</body></html>")
                if owner.echo_auth:
                    header = self.headers.get("Authorization", "")
                    scheme, _, credential = header.partition(" ")
                    decoded = base64.b64decode(credential).decode("latin-1") if scheme == "Basic" else ""
                    return self._answer(owner.echo_auth, {"kind": "Status", "code": owner.echo_auth, "message":
                                                          f"invalid credentials in header: {header} ({decoded})"})
                if self.path.split("?")[0] == LIST_PATH:
                    return self._answer(200, {"kind": "ModelRolloutList", "items": [owner.obj]})
                owner.gets += 1
                answer = owner.script.pop(0) if owner.script else owner.obj
                if answer is None:
                    return self._answer(404, {"kind": "Status", "reason": "NotFound", "code": 404})
                if isinstance(answer, int):
                    return self._answer(answer, {"kind": "Status", "message": "etcdserver: request timed out"})
                owner.obj = copy.deepcopy(answer)
                self._answer(200, answer)
                if owner.after_get:
                    owner.after_get(owner)

            def do_PATCH(self) -> None:
                patch = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with owner.lock:
                    self._patch(patch)

            def _patch(self, patch: dict[str, Any]) -> None:
                if owner.html:
                    return self._answer(200, b"<html><body>Please log in</body></html>")
                owner.patches.append(patch)
                meta = owner.obj["metadata"]
                wanted = patch["metadata"].get("resourceVersion")
                if wanted is not None and wanted != meta["resourceVersion"]:
                    return self._answer(409, {"kind": "Status", "reason": "Conflict", "code": 409,
                                              "message": "the object has been modified"})
                meta["annotations"].update(patch["metadata"].get("annotations", {}))
                meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
                self._answer(200, owner.obj)
                if owner.operator and COMMAND_ANNOTATION in patch["metadata"].get("annotations", {}):
                    command_id = json.loads(patch["metadata"]["annotations"][COMMAND_ANNOTATION])["id"]
                    timer = threading.Timer(OPERATOR_DELAY, owner.handle, (command_id,))
                    timer.daemon = True
                    timer.start()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if owner.html:
                    return self._answer(200, b"<html><body>Please log in</body></html>")
                self._answer(201, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                                   "status": {"userInfo": {"username": "alice"}}})

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def handle(self, command_id: str) -> None:
        with self.lock:
            assert self.operator is not None
            self.operator(self, command_id)

    def kubeconfig(self, tmp_path: Path, user: dict[str, Any] | None = None, namespace: Any = "ns") -> str:
        config = {"apiVersion": "v1", "current-context": "c",
                  "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{self.server.server_port}"}}],
                  "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": namespace}}],
                  "users": [{"name": "u", "user": user or {"token": "t"}}]}
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return str(path)


@pytest.fixture()
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    with serving(fake.server):
        yield fake


@pytest.fixture()
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """`get --watch` polls every second: not in a unit test."""
    monkeypatch.setattr(oncall_module, "time", types.SimpleNamespace(
        sleep=lambda _s: None, monotonic=time.monotonic, strftime=time.strftime))


# --- get --watch -------------------------------------------------------------------------------------------


def test_watch_after_retry_waits_for_the_operator_to_take_the_command(
        api: FakeApi, tmp_path: Path, no_wait: None, capsys: pytest.CaptureFixture[str]) -> None:
    retry = command("retry", "new", actor="me")
    before = rollout("RolledBack", retry, handled=("old",))  # the operator has not read the annotation yet
    api.script = [before, rollout("Progressing", retry, ("old", "new")), rollout("Succeeded", retry, ("old", "new"))]
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "waiting for the operator to take retry by me, id new" in out
    assert "Progressing" in out and "Succeeded" in out and api.gets == 3


def test_watch_after_rollback_of_a_success_does_not_exit_0(api: FakeApi, tmp_path: Path, no_wait: None) -> None:
    rollback = command("rollback", "rb")
    done = rollout("Succeeded", rollback, handled=("x",))
    api.script = [done, done, rollout("RollingBack", rollback, ("x", "rb")),
                  rollout("RolledBack", rollback, ("x", "rb"))]
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1  # as documented


def test_watch_is_not_held_up_by_an_annotation_that_is_no_command(api: FakeApi, tmp_path: Path) -> None:
    api.obj = rollout("Succeeded", "{not json")
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0 and api.gets == 1


def engine_rollout(world: World, annotation: str | None = None) -> dict[str, Any]:
    """`rollout r` in namespace ns as the API server stores it, with the engine's status for `world`."""
    return {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
            "metadata": {"name": "r", "namespace": "ns", "generation": world.generation, "resourceVersion": "100",
                         "annotations": {COMMAND_ANNOTATION: annotation} if annotation else {}},
            "spec": copy.deepcopy(world.spec), "status": world.status.to_dict()}


def test_watch_waits_for_a_new_version_the_operator_holds_instead_of_reporting_the_old_outcome(
        api: FakeApi, tmp_path: Path, no_wait: None, capsys: pytest.CaptureFixture[str]) -> None:
    # Version 7 succeeded; version 8 is applied while another ModelRollout is in flight on the target
    # (TargetConflict), then the operator's settings refuse the spec too (InvalidSpec): both keep Succeeded with
    # observedGeneration current. Once let go, version 8 fails its analysis and is rolled back.
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}]}))
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "8"}}
    world.generation = 2
    claim = target_claim({"spec": world.spec})
    assert claim is not None
    world.status = wait_for_target(world.status, claim, "other", world.generation, world.now).status
    conflict = engine_rollout(world)
    refused = reject_spec(world.status, SpecError("spec.target", "not allowed here"), world.generation, world.now)
    assert (conflict["status"]["phase"], refused.status.phase) == ("Succeeded", Phase.SUCCEEDED)
    world.status = refused.status
    invalid = engine_rollout(world)
    world.judge = lambda _r: [verdict(Outcome.FAIL)]
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    api.script = [conflict, conflict, invalid, invalid, engine_rollout(world)]
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1  # version 8 rolled back
    out = capsys.readouterr().out
    assert api.gets == 5
    assert out.count("not finished: the operator holds this spec (TargetConflict) and keeps the phase it had; "
                     "waiting for the other ModelRollout on the target to end") == 1
    assert out.count("(InvalidSpec)") == 1 and "RolledBack" in out


def test_watch_takes_no_hold_from_a_condition_of_an_earlier_generation(
        api: FakeApi, tmp_path: Path, no_wait: None) -> None:
    """A TargetConflict the operator recorded for generation 1 says nothing of generation 2, which succeeded."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}]}))
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    claim = target_claim({"spec": world.spec})
    assert claim is not None
    world.status = wait_for_target(world.status, claim, "other", world.generation, world.now).status
    stale = engine_rollout(world)
    stale["metadata"]["generation"] = stale["status"]["observedGeneration"] = world.generation + 1
    api.script = [stale, rollout("RolledBack")]  # read on (wrongly held), the watch would end in 1
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0 and api.gets == 1


def test_watch_ends_on_a_new_spec_the_operator_failed_as_invalid(
        api: FakeApi, tmp_path: Path, no_wait: None) -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}]}))
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    world.generation = 2
    world.status = reject_spec(world.status, SpecError("spec.target", "not allowed here"), 2, world.now).status
    api.obj = engine_rollout(world)
    assert api.obj["status"]["phase"] == "Failed"  # the refusal's own outcome, nothing to wait for
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1 and api.gets == 1


@pytest.mark.parametrize(("world", "reason"), [
    (World(spec=spec_dict(rollback={"automatic": False}), judge=lambda _r: [verdict(Outcome.FAIL)]),
     PauseReason.ANALYSIS_FAILED),
    (World(spec=spec_dict(rollback={"automatic": False}), gate_verdicts=[verdict(Outcome.FAIL, "accuracy", "0.90")]),
     PauseReason.GATE_FAILED),
    # The default onInconclusive: pause, a model server the gate could not reach: only a human ends it either.
    (World(gate_verdicts=[verdict(Outcome.INCONCLUSIVE, "accuracy", "?")]), PauseReason.GATE_INCONCLUSIVE)])
def test_watch_exits_1_on_a_pause_after_a_failed_check_naming_the_commands(
        api: FakeApi, tmp_path: Path, no_wait: None, capsys: pytest.CaptureFixture[str], world: World,
        reason: PauseReason) -> None:
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    assert world.status.pause is not None and world.status.pause.reason is reason
    paused = engine_rollout(world)
    api.script = [paused, paused, rollout("Succeeded")]  # the old watch read on, past the pause
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1 and api.gets == 1
    assert (f"stopped: paused for a human after the {reason} check; run promote, retry or rollback "
            "(`modelrollout <command> -n ns r`)") in capsys.readouterr().out


def test_watch_exits_1_on_a_rollout_stuck_past_its_progress_deadline(
        api: FakeApi, tmp_path: Path, no_wait: None, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped target keeps the rollout Pending, trying, past progressDeadline: a CI job's watch must not hang."""
    world = World(target=Target(exists=False))
    world.reconcile()
    waiting = engine_rollout(world)
    world.advance(timedelta(minutes=31))
    world.reconcile()
    stuck = engine_rollout(world)
    api.script = [waiting, stuck, stuck, rollout("Succeeded")]
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1 and api.gets == 2
    out = capsys.readouterr().out
    assert "stopped: no progress within progressDeadline (" in out and "InferenceService nsfw-classifier" in out


def test_watch_exits_1_on_a_success_that_left_a_rejected_version_serving(
        api: FakeApi, tmp_path: Path, no_wait: None, capsys: pytest.CaptureFixture[str]) -> None:
    """@production was moved by hand onto a version a verdict rejected: Succeeded (nothing to roll out), not good."""
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version="7"))
    world.registry.versions["7"][REJECTED_TAG] = "true"
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED
    api.obj = engine_rollout(world)
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1 and api.gets == 1
    assert ("  not a success: Version 7 serves all traffic as @production, though it carries "
            "modelrollout.rejected=true: a verdict rejected it and the alias was moved onto it by hand.") in \
        capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("reason", ["StatusRejected", "StatusUnreadable"])
def test_watch_exits_1_when_the_operator_cannot_store_or_read_the_status(
        api: FakeApi, tmp_path: Path, no_wait: None, capsys: pytest.CaptureFixture[str], reason: str) -> None:
    """The stored phase (Succeeded of the last spec, here) will not move on: a CI job's watch must neither hang nor
    read it as the new spec's outcome. The condition is the operator runtime's own."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}]}))
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    obj = engine_rollout(world)
    obj["metadata"]["generation"] = world.generation + 1  # a spec edit whose decided status was refused
    now = datetime.now(UTC)
    obj["status"] = (refused_status(obj["status"], "too large for etcd", world.generation + 1, now)
                     if reason == "StatusRejected" else
                     _unreadable_status(obj["status"], "status.phase: bad", world.generation + 1, now))
    api.script = [obj, rollout("Succeeded")]  # the old watch read on
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1 and api.gets == 1
    out = capsys.readouterr().out
    assert f"  stopped ({reason}): " in out
    assert ("refused to store the status" if reason == "StatusRejected" else "cannot read the status") in out
    # At an older generation it says nothing about this spec: the watch reads on to the outcome.
    obj["metadata"]["generation"] = world.generation + 2
    api.script, api.gets = [obj, rollout("Succeeded")], 0
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0


def test_watch_goes_on_past_a_failed_pause_with_a_command_pending(
        api: FakeApi, tmp_path: Path, no_wait: None) -> None:
    world = World(spec=spec_dict(rollback={"automatic": False}), judge=lambda _r: [verdict(Outcome.FAIL)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.ROLLBACK, command_id="rb")
    paused = engine_rollout(world, command("rollback", "rb"))
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    api.script = [paused, engine_rollout(world, command("rollback", "rb"))]
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1 and api.gets == 2


def test_watch_of_a_rollout_without_status_shows_gets_placeholders_and_says_why_once(
        api: FakeApi, tmp_path: Path, no_wait: None, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = {**rollout("Pending"), "status": {}}  # the operator has not taken it (none runs)
    api.script = [fresh, fresh, rollout("Succeeded")]
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "None" not in "\n".join(lines)
    assert lines[0].split()[1:] == ["Pending", "step", "-/1", "weight", "-"]
    assert [line for line in lines if "no status yet" in line] == [
        "  note: no status yet: the operator has not taken this rollout (is it running, and watching namespace ns?)"]
    assert lines[2].split()[1] == "Succeeded" and len(lines) == 3


def test_watch_timeout_exits_2_saying_so(api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["get", "r", "--watch", "--timeout", "1s", "--kubeconfig", api.kubeconfig(tmp_path)]) == 2
    assert time.monotonic() - started < 5
    assert capsys.readouterr().err == "error: ns/r did not end within --timeout 1s\n"
    assert main(["get", "r", "--timeout", "1s", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    assert "--timeout applies to --watch only" in capsys.readouterr().err


def test_an_api_error_during_watch_is_not_read_as_a_failed_rollout(
        api: FakeApi, tmp_path: Path, no_wait: None, capsys: pytest.CaptureFixture[str]) -> None:
    """A 5xx is the API server's own trouble (a restart, etcd): read again, said once; 403 and 404 end it, exit 2."""
    api.script = [rollout("Progressing"), 500, 503, rollout("Succeeded")]
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("cannot read the rollout") == 1 and "HTTP 500" in out and "the API server answers again" in out
    for status, said in ((403, "no permission"), (None, "not found")):
        api.script, api.gets = [rollout("Progressing"), status, rollout("Succeeded")], 0
        assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 2 and api.gets == 2
        assert said in capsys.readouterr().err


# --- commands ------------------------------------------------------------------------------------------------


def test_a_command_is_refused_while_another_is_pending(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api.obj = rollout("Progressing", command("abort", "first", actor="alice"), handled=("older",))
    assert main(["promote", "r", "--full", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    assert ("error: command abort by alice (id first) is still pending on ns/r; wait for the operator to handle it"
            in capsys.readouterr().err)
    assert api.patches == [] and json.loads(api.obj["metadata"]["annotations"][COMMAND_ANNOTATION])["id"] == "first"


@pytest.mark.parametrize("annotation", [None, command("abort", "first"), "{not a command"])
def test_a_command_is_written_conditionally_once_the_last_one_is_handled(
        api: FakeApi, tmp_path: Path, annotation: str | None) -> None:
    api.obj = rollout("Progressing", annotation, handled=("first",))
    assert main(["abort", "r", "--wait", "0", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    assert [p["metadata"]["resourceVersion"] for p in api.patches] == ["100"]
    written = json.loads(api.obj["metadata"]["annotations"][COMMAND_ANNOTATION])
    assert (written["action"], written["actor"]) == ("abort", "alice")


def test_a_command_written_between_the_read_and_the_patch_is_not_overwritten(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def alice_is_faster(fake: FakeApi) -> None:
        fake.after_get = None
        fake.obj["metadata"]["annotations"][COMMAND_ANNOTATION] = command("abort", "alices", actor="alice")
        fake.obj["metadata"]["resourceVersion"] = "101"

    api.after_get = alice_is_faster
    assert main(["promote", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    assert "command abort by alice (id alices) is still pending" in capsys.readouterr().err
    assert json.loads(api.obj["metadata"]["annotations"][COMMAND_ANNOTATION])["id"] == "alices"


def test_a_status_write_between_the_read_and_the_patch_only_costs_a_second_try(api: FakeApi, tmp_path: Path) -> None:
    def operator_writes_status(fake: FakeApi) -> None:
        fake.after_get = None
        fake.obj["metadata"]["resourceVersion"] = "101"

    api.after_get = operator_writes_status
    assert main(["abort", "r", "--wait", "0", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    assert [p["metadata"]["resourceVersion"] for p in api.patches] == ["100", "101"]
    assert json.loads(api.obj["metadata"]["annotations"][COMMAND_ANNOTATION])["action"] == "abort"


# --- --wait: what the operator did with the command ----------------------------------------------------------


def test_a_command_the_operator_applies_exits_0_with_its_detail(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api.obj = rollout("Paused")
    api.operator = records("GateOverridden", "promote: going on despite the gate (accuracy 0.91 < 0.95)")
    assert main(["promote", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("promote sent to ns/r as alice (id ") and len(lines) == 2
    assert re.fullmatch(r"promote \(id \w+\) applied: GateOverridden: promote: going on despite the gate "
                        r"\(accuracy 0\.91 < 0\.95\)", lines[1]), lines[1]


def test_a_command_the_operator_refuses_exits_1_naming_the_phase(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api.obj = rollout("Succeeded")
    api.operator = records("CommandIgnored", "abort: the rollout is finished; use rollback to return to the previous "
                                             "version")
    assert main(["abort", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "abort sent to ns/r" in captured.out
    assert re.fullmatch(r"error: abort \(id \w+\) refused by the operator: abort: the rollout is finished; use "
                        r"rollback to return to the previous version \(phase now Succeeded\)\n", captured.err), \
        captured.err


def test_a_command_no_operator_handles_exits_0_after_the_wait_saying_how_to_follow_it(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["retry", "r", "--wait", "1s", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    assert 1 <= time.monotonic() - started < 5 and api.gets >= 2  # the send's read, then the polls
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and captured.err == "" and "\033" not in captured.out  # piped: no colour
    assert re.fullmatch(r"retry \(id \w+\) is not known to be handled yet \(is the operator running\?\); it stays "
                        r"pending: "
                        r"follow it with `modelrollout history -n ns r`", lines[1]), lines[1]


def test_a_command_to_a_busy_operator_does_not_ask_whether_it_runs(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A rollback's reconcile waits out KServe's 10 s settle time before it reads a command: the old default wait.
    assert build_parser().parse_args(["abort", "r"]).wait == timedelta(seconds=30)
    written = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    api.obj = rollout("RollingBack")
    api.obj["status"]["history"] = [{"time": written, "event": "RollbackStarted", "detail": "d", "actor": "x"}]
    assert main(["abort", "r", "--wait", "1s", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    # A write seconds ago is told as such, not as "the operator is running": it may have crashed since.
    assert re.fullmatch(r"abort \(id \w+\) is not known to be handled yet \(its status was last written [5-9] s ago; "
                        r"if the operator is down, the command waits for it to start\); it stays pending: follow it "
                        r"with `modelrollout history -n ns r`", line), line
    # Written two hours ago: nothing shows the operator running, so the CLI still asks.
    api.obj["status"]["history"][0]["time"] = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    api.obj["metadata"]["annotations"] = {}
    assert main(["abort", "r", "--wait", "1s", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    assert "is not known to be handled yet (is the operator running?)" in capsys.readouterr().out


def test_a_read_failing_while_waiting_is_not_taken_for_a_refusal(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One 503 on a poll ended the wait with exit 1, the code for "refused", for a promote the operator had applied:
    # a script running it again would skip a second step.
    api.obj = rollout("Paused")
    applied = records("CommandApplied", "promote: step 2 (pause) skipped")

    def operator(fake: FakeApi, command_id: str) -> None:
        applied(fake, command_id)
        fake.script = [503]  # the CLI's next read meets an API server hiccup

    api.operator = operator
    assert main(["promote", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    assert "applied: CommandApplied: promote: step 2 (pause) skipped" in capsys.readouterr().out


def test_wait_0_returns_once_the_command_is_written(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api.operator = records("CommandApplied", "rollback")
    started = time.monotonic()
    assert main(["rollback", "r", "--wait", "0", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    assert time.monotonic() - started < OPERATOR_DELAY and api.gets == 1
    assert re.fullmatch(r"rollback sent to ns/r as alice \(id \w+\)\n", capsys.readouterr().out)


def replaced(fake: FakeApi, _: str) -> None:
    fake.obj = {**rollout("Pending"), "metadata": {**rollout("Pending")["metadata"], "uid": "second"}}


def overwritten(fake: FakeApi, _: str) -> None:
    fake.obj["metadata"]["annotations"][COMMAND_ANNOTATION] = command("promote", "argocds", actor="argocd")


@pytest.mark.parametrize(("operator", "said"), [
    (lambda fake, _: setattr(fake, "obj", None), "ModelRollout ns/r was deleted before the operator handled abort"),
    (replaced, "ModelRollout ns/r was deleted and created again before the operator handled abort"),
    (overwritten, "the command annotation of ModelRollout ns/r was overwritten before the operator handled abort")])
def test_a_rollout_deleted_replaced_or_overwritten_while_waiting_is_an_error(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        operator: Callable[[FakeApi, str], None], said: str) -> None:
    api.obj["metadata"]["uid"] = "first"
    api.operator = operator
    assert main(["abort", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said} (id ") and err.count("\n") == 1, err


# --- answers that are no API server's -----------------------------------------------------------------------


@pytest.mark.parametrize("args", [["list"], ["list", "-o", "json"], ["get", "r"], ["get", "r", "-o", "json"],
                                  ["history", "r"], ["explain", "r"], ["abort", "r"]])
def test_a_login_page_is_an_error_not_a_rollout(api: FakeApi, tmp_path: Path, args: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    api.html = True
    assert main([*args, "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "did not answer as a Kubernetes API server" in captured.err and "Traceback" not in captured.err
    assert captured.out == "" and api.patches == []


def test_a_login_page_answering_who_am_i_falls_back_to_user(api: FakeApi, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "carol")
    api.html = True
    assert OnCall(api.kubeconfig(tmp_path), None).actor() == "carol"


def test_a_list_with_a_status_no_view_foresaw_is_one_line(api: FakeApi, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*_: object) -> None:
        raise TypeError("unforeseen")

    monkeypatch.setattr(OnCall, "print_list", broken)
    assert main(["list", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    assert "has an unexpected shape (TypeError)" in capsys.readouterr().err


# --- nothing unforeseen reaches the terminal as a traceback -----------------------------------------------------

ONCALL_COMMANDS = [["list"], ["get", "r"], ["get", "r", "-o", "json"], ["history", "r"], ["explain", "r"],
                   ["abort", "r"], ["promote", "r"], ["retry", "r"], ["rollback", "r"]]


@pytest.mark.parametrize("args", ONCALL_COMMANDS)
@pytest.mark.parametrize("source", ["tokenFile", "token"])
def test_a_token_ending_in_a_newline_is_one_line_that_does_not_show_it(
        api: FakeApi, tmp_path: Path, args: list[str], source: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`echo TOKEN > file` (or an exec plugin's "token\\n"): http.client refuses the header and quotes it whole."""
    token = "s3cret-bearer-4f9a"
    (tmp_path / "token").write_text(token + "\n")
    user = {"tokenFile": str(tmp_path / "token")} if source == "tokenFile" else {"token": token + "\n"}
    assert main([*args, "--kubeconfig", api.kubeconfig(tmp_path, user)]) == 1
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if line.startswith("error:")] == [captured.err.strip()]
    assert "the kubeconfig's credentials cannot be sent (a token ending in a newline" in captured.err
    assert token not in captured.out + captured.err
    assert api.gets == 0 and api.patches == []


@pytest.mark.parametrize("args", [["get", "r"], ["list"]])
@pytest.mark.parametrize("status", [401, 403, 500])
@pytest.mark.parametrize("user", [{"token": "s3cret-bearer-4f9a"}, {"username": "ops", "password": "s3cret-pässwörd"}])
def test_a_status_message_echoing_the_authorization_header_does_not_show_the_credentials(
        api: FakeApi, tmp_path: Path, args: list[str], status: int, user: dict[str, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    """An authenticating proxy in front of the API server whose Status message quotes the request's header."""
    api.echo_auth = status
    assert main([*args, "--kubeconfig", api.kubeconfig(tmp_path, user)]) == 1
    printed = "".join(capsys.readouterr())
    assert "invalid credentials in header: ***" in printed, printed
    pair = f"{user.get('username')}:{user.get('password')}"
    for secret in ("s3cret", base64.b64encode(pair.encode("latin-1")).decode()):
        assert secret not in printed, printed


def test_a_token_an_exec_plugin_refreshed_is_not_shown_either(api: FakeApi, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An exec plugin's token (EKS, GKE) is refreshed on the client's own configuration, not on the default one."""
    plugin = tmp_path / "plugin.sh"
    plugin.write_text(f"""#!/bin/sh
n=$(cat {tmp_path}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {tmp_path}/n
echo '{{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
  "status": {{"token": "tok-'$n'-s3cret", "expirationTimestamp": "2020-01-01T00:00:00Z"}}}}'
""")
    plugin.chmod(0o755)
    api.echo_auth = 403
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(plugin),
                     "interactiveMode": "Never"}}
    assert main(["get", "r", "--kubeconfig", api.kubeconfig(tmp_path, user)]) == 1
    printed = "".join(capsys.readouterr())
    assert "invalid credentials in header: ***" in printed and "s3cret" not in printed, printed
    assert int((tmp_path / "n").read_text()) > 1  # the token sent is not the one of load time


def test_an_error_no_handler_foresaw_shows_its_type_not_its_text(
        api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fails(*_: object) -> None:
        raise RuntimeError("Authorization: Bearer s3cret-bearer-4f9a")

    monkeypatch.setattr(OnCall, "get", fails)
    assert main(["get", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert re.fullmatch(r"error: unexpected RuntimeError at controller/cli/\w+\.py:\d+ \(its message is not shown: "
                        r"it may hold credentials\)\n", captured.err), captured.err
    assert "s3cret" not in captured.out + captured.err


def test_an_argument_the_library_refuses_is_not_taken_for_a_bad_token(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unquoted number as the namespace: the kubernetes library's pydantic check, a ValueError as well."""
    assert main(["list", "--kubeconfig", api.kubeconfig(tmp_path, namespace=2024)]) == 1
    assert capsys.readouterr().err.startswith("error: unexpected ValidationError")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["history", "r"], ["get", "r", "-o", "json"]])
def test_output_to_a_full_disk_is_one_line(api: FakeApi, tmp_path: Path, args: list[str]) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "controller.cli.main", *args,
                                 "--kubeconfig", api.kubeconfig(tmp_path)],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert result.returncode == 1 and result.stderr == "error: No space left on device (OSError)\n", result.stderr


@pytest.mark.parametrize(("missing", "named"), [("mlflow", "MLflow"), ("prometheus", "Prometheus")])
def test_the_demo_on_a_stack_without_mlflow_or_prometheus_says_which(tmp_path: Path, missing: str, named: str) -> None:
    # Without MLflow it was "unexpected KeyError", with nothing started yet: the demo names what it needs first.
    state: dict[str, Any] = {"env": {"KUBECONFIG": str(tmp_path / "none")}, "prometheusRoot": str(tmp_path)}
    if missing == "mlflow":
        state["env"]["PROMETHEUS_URL"] = "http://127.0.0.1:9"
    else:
        state["env"]["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"
        del state["prometheusRoot"]
    with pytest.raises(StackError, match=f"needs the stack's {named}"):
        run_demo(state, tmp_path)
