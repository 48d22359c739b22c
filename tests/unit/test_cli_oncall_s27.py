"""The on-call CLI against an API server that stalls, restarts, answers 5xx, or sends what a terminal must not get;
and `explain` (and its page) on a stopped operator, a long detail, and a rollback that kept all traffic.

The API server is a local stand-in on 127.0.0.1 (a real HTTP server, run by `serving`); the CLI runs as a process
of its own where a hang is the defect, so a hang fails the test instead of holding it."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.commands import COMMAND_ANNOTATION
from controller.cli import oncall as oncall_module
from controller.cli import report
from controller.cli.main import main
from controller.cli.oncall import OnCall
from controller.cli.report import rate_points, render_html
from controller.cli.shape import printable
from controller.operator.runtime import _unreadable_status
from tests.http_stub import serving

ROLLOUT_PATH = "/apis/modelrollout.io/v1alpha1/namespaces/ns/modelrollouts/r"
LIST_PATH = "/apis/modelrollout.io/v1alpha1/namespaces/ns/modelrollouts"
STALL_SECONDS = 120  # a stalled answer is never sent within a test


def rollout(phase: str, uid: str = "u1") -> dict[str, Any]:
    return {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
            "metadata": {"name": "r", "namespace": "ns", "generation": 1, "resourceVersion": "100", "uid": uid,
                         "annotations": {}},
            "spec": {"model": {"name": "m"}, "canary": {"steps": [{"setWeight": 10}]}},
            "status": {"phase": phase, "observedGeneration": 1, "message": f"{phase} message", "handledCommands": []}}


class Api:
    """GET of rollout r (and its list), merge PATCH, SelfSubjectReview. `answers`: what the next GETs of r answer
    (a dict, an int: that HTTP error with `message`, bytes: that body as is); then `obj`. Once `stalled` (after
    `stall_after_gets` reads of r, or after a PATCH with `stall_after_patch`), every request is read and never
    answered: a half-dead API server or load balancer."""

    def __init__(self, port: int = 0) -> None:
        self.obj = rollout("Progressing")
        self.answers: list[dict[str, Any] | int | bytes] = []
        self.message = "etcdserver: request timed out"
        self.stalled = threading.Event()
        self.released = threading.Event()  # set at the end: a stalled handler thread ends
        self.gets = 0
        self.stall_after_gets: int | None = None
        self.stall_after_patch = False
        self.reads = 0  # GETs of r, answered or not
        self.close_gets = 0  # the next GETs of r whose connection is closed unanswered (a reset, a proxy's idle cut)
        self.get_delay = 0.0  # seconds before a GET of r is answered: a slow but healthy server
        self.patches = 0
        # A PATCH's fate: "answer", "lands-stalls" (written, never answered: the client times out), "stalls" (never
        # written nor answered), "closes" (its connection closed unanswered, not written), "handled-stalls" (written and
        # handled by the operator at once, then a later command written over it; never answered).
        self.patch_mode = "answer"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stall(self) -> bool:
                if owner.stalled.is_set():
                    owner.released.wait(STALL_SECONDS)
                    self.close_connection = True
                    return True
                return False

            def do_GET(self) -> None:
                if self.path.split("?")[0] == ROLLOUT_PATH:
                    owner.reads += 1
                if self._stall():
                    return
                if self.path.split("?")[0] == LIST_PATH:
                    return self._answer(200, {"kind": "ModelRolloutList", "items": [owner.obj]})
                if owner.close_gets:
                    owner.close_gets -= 1
                    self.close_connection = True
                    return
                time.sleep(owner.get_delay)
                owner.gets += 1
                answer = owner.answers.pop(0) if owner.answers else owner.obj
                if isinstance(answer, int):
                    return self._answer(answer, {"kind": "Status", "code": answer, "message": owner.message})
                self._answer(200, answer)
                if owner.stall_after_gets is not None and owner.gets >= owner.stall_after_gets:
                    owner.stalled.set()

            def do_PATCH(self) -> None:
                patch = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if self._stall():
                    return
                owner.patches += 1
                if owner.patch_mode == "closes":
                    self.close_connection = True
                    return
                if owner.patch_mode != "stalls":
                    owner.obj["metadata"]["annotations"].update(patch["metadata"].get("annotations", {}))
                if owner.patch_mode == "handled-stalls":
                    annotations = owner.obj["metadata"]["annotations"]
                    handled = json.loads(annotations[COMMAND_ANNOTATION])["id"]
                    owner.obj["status"]["handledCommands"].append(handled)
                    annotations[COMMAND_ANNOTATION] = json.dumps({"action": "retry", "id": "later", "actor": "bob"})
                if owner.patch_mode != "answer":
                    owner.released.wait(STALL_SECONDS)
                    self.close_connection = True
                    return
                self._answer(200, owner.obj)
                if owner.stall_after_patch:  # the command is out: the API server stops answering while it is awaited
                    owner.stalled.set()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self._stall():
                    return
                self._answer(201, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                                   "status": {"userInfo": {"username": "alice"}}})

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def kubeconfig(self, tmp_path: Path, port: int | None = None) -> str:
        config = {"apiVersion": "v1", "current-context": "c",
                  "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port or self.port}"}}],
                  "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
                  "users": [{"name": "u", "user": {"token": "not-a-secret-token"}}]}
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return str(path)


@pytest.fixture()
def api() -> Iterator[Api]:
    fake = Api()
    with serving(fake.server):
        try:
            yield fake
        finally:
            fake.released.set()


def cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str] | None, float]:
    """The CLI as a process; None when it still ran at `timeout` (killed)."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "controller.cli.main", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None, time.monotonic() - started
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), time.monotonic() - started


# --- 1: --timeout and --wait hold when the API server stops answering -----------------------------------------


def test_watch_timeout_holds_when_the_api_server_stops_answering(api: Api, tmp_path: Path) -> None:
    api.stall_after_gets = 2  # the watch has shown the rollout
    result, took = cli("get", "r", "--watch", "--timeout", "4s", "--kubeconfig", api.kubeconfig(tmp_path), timeout=40)
    assert result is not None, f"the watch still ran after {took:.0f}s on a stalled API server"
    assert result.returncode == 2 and took < 4 + 10, (result, took)
    assert "Progressing" in result.stdout
    assert result.stderr.startswith("error: ") and "--timeout" in result.stderr, result.stderr


def test_a_commands_wait_holds_when_the_api_server_stops_answering(api: Api, tmp_path: Path) -> None:
    """The stand-in stops answering once the command is written: the wait ends at --wait, the command pending."""
    api.stall_after_patch = True
    result, took = cli("abort", "r", "--wait", "3s", "--kubeconfig", api.kubeconfig(tmp_path), timeout=40)
    assert result is not None, f"abort --wait 3s still ran after {took:.0f}s on a stalled API server"
    assert result.returncode == 0 and took < 3 + 10, (result, took)
    assert "is not known to be handled yet (its status could not be read: ModelRollout ns/r: the API server at " \
        "127.0.0.1:" in result.stdout and " gave no answer within " in result.stdout, result.stdout


# --- 2: a watch outlives an API server restart; 401, 403 and 404 still end it -------------------------------------


def test_watch_survives_an_api_server_restart(tmp_path: Path) -> None:
    first = Api()
    port = first.port
    kubeconfig = first.kubeconfig(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "controller.cli.main", "get", "r", "--watch", "--timeout", "60s",
                                "--kubeconfig", kubeconfig], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with serving(first.server):
            time.sleep(2)  # read and printed once at least
        time.sleep(3)  # down: connections refused
        second = Api(port)
        second.obj = rollout("Succeeded")
        with serving(second.server):
            out, err = process.communicate(timeout=40)
    finally:
        process.kill()
    assert process.returncode == 0, (out, err)
    assert out.count("cannot read the rollout (no cluster: cannot reach the API server") == 1, out
    assert "the API server answers again" in out and "Succeeded" in out


def test_watch_of_an_api_server_answering_5xx_ends_at_its_timeout_saying_why(api: Api, tmp_path: Path) -> None:
    api.answers = [503] * 1000
    result, took = cli("get", "r", "--watch", "--timeout", "3s", "--kubeconfig", api.kubeconfig(tmp_path))
    assert result is not None and result.returncode == 2 and took < 3 + 10, (result, took)
    assert result.stdout.count("cannot read the rollout") == 1, result.stdout
    assert result.stderr == ("error: ModelRollout ns/r: the API server answered HTTP 503: etcdserver: request timed "
                             "out; still so at --timeout\n"), result.stderr
    assert api.gets > 2


def test_watch_ends_when_the_rollout_is_deleted_and_created_again(api: Api, tmp_path: Path) -> None:
    """Between two reads: the new object's outcome (here Succeeded) is not the watched rollout's."""
    api.answers = [rollout("Progressing"), rollout("Succeeded", uid="u2")]
    result, _ = cli("get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path))
    assert result is not None and result.returncode == 2, result
    assert "was deleted and created again while watched" in result.stderr


# --- 5: a status nested past the recursion limit -------------------------------------------------------------------


def deep_rollout(depth: int) -> bytes:
    """A rollout whose open `gate` nests `depth` levels (the API server stores it, kubectl reads it), written as
    text: Python's json cannot write it."""
    deep = '{"a": ' * depth + '"x"' + "}" * depth
    text = json.dumps(rollout("Progressing")).replace('"handledCommands": []', f'"gate": {{"deep": {deep}}}')
    assert deep in text
    return text.encode()


def test_a_status_nested_too_deep_is_one_clear_error_and_a_watch_exit_2(
        api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = deep_rollout(1500)
    assert json.loads(deep_rollout(10))["status"]["gate"]["deep"]["a"]["a"]  # the same shape, readable
    kubeconfig = api.kubeconfig(tmp_path)
    for args, code in ((["get", "r"], 1), (["explain", "r"], 1), (["get", "r", "--watch"], 2)):
        api.answers = [body]
        assert main([*args, "--kubeconfig", kubeconfig]) == code, args
        assert capsys.readouterr().err == ("error: ModelRollout ns/r: an object in the answer nests too deep to be "
                                           "read here; `kubectl get modelrollouts -o json` shows it as stored\n")


def test_an_error_no_handler_foresaw_during_a_watch_is_exit_2_not_a_failed_rollout(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fails(*_: object, **__: object) -> None:
        raise RuntimeError("Authorization: Bearer s3cret")

    monkeypatch.setattr(OnCall, "watch", fails)
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ModelRollout r cannot be read: unexpected RuntimeError at controller/cli/")
    assert "s3cret" not in err


# --- 6, 7: nothing from the server drives the terminal ------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 500, 409])
def test_an_api_servers_message_reaches_stderr_escaped(api: Api, tmp_path: Path, status: int,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    api.message = "denied \x1b]0;owned-title\x07\x1b[2J\x1b]8;;http://evil.example/\x1b\\click \u202e\u061c done"
    api.answers = [status]
    assert main(["get", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err and "\u061c" not in err, repr(err)
    assert "denied \\x1b]0;owned-title\\x07\\x1b[2J" in err and "\\u061c done" in err, err


def test_the_arabic_letter_mark_is_escaped_as_the_other_bidi_controls() -> None:
    assert printable("a\u061cb\u200fc") == "a\\u061cb\\u200fc"
    assert "\u061c" not in render_html({"metadata": {"name": "r\u061c", "namespace": "ns"},
                                        "status": {"phase": "Failed", "message": "m\u061c"}})


# --- 3: explain says when the operator has stopped on the status --------------------------------------------------


@pytest.fixture()
def oncall(offline_kubeconfig: Path) -> OnCall:
    return OnCall(str(offline_kubeconfig), None, out=io.StringIO())


def test_explain_says_the_operator_cannot_read_the_status_and_the_page_follows(oncall: OnCall) -> None:
    """runtime._unreadable_status keeps the phase and message: only Ready (False, StatusUnreadable) tells."""
    obj = rollout("Progressing")
    obj["status"]["message"] = "Step 2/6: analysis 4m of 10m"
    obj["status"] = _unreadable_status(obj["status"], "status.phase: bad", 1, datetime.now(UTC))
    explained = oncall.explain(copy.deepcopy(obj))
    assert "The operator has stopped on this spec (StatusUnreadable): This operator cannot read the status" in \
        explained, explained
    assert "The operator has stopped on this spec (StatusUnreadable)" in render_html(obj, explained)
    obj["metadata"]["generation"] = 2  # a condition of an earlier spec says nothing of this one
    assert "has stopped" not in oncall.explain(obj)


def test_explain_says_a_rollout_is_stuck_past_its_progress_deadline(oncall: OnCall) -> None:
    obj = rollout("Pending")
    obj["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                    "message": "InferenceService nsfw-classifier not found", "observedGeneration": 1}]
    assert ("No progress within progressDeadline (ProgressDeadlineExceeded): InferenceService nsfw-classifier not "
            "found; the operator keeps trying.") in oncall.explain(obj)


# --- s27r4: follow-ups ------------------------------------------------------------------------------------------------


def test_explain_of_a_rollout_paused_for_a_human_past_its_deadline_says_nothing_of_keeping_trying(
        oncall: OnCall) -> None:
    """The engine's own status (rollback.automatic false): phase Paused, and Progressing False copies the reason."""
    message = "Paused: no progress within progressDeadline 10m; run retry or rollback (rollback.automatic is false)."
    obj = rollout("Paused")
    obj["status"].update({"message": message, "pause": {"reason": "ProgressDeadlineExceeded", "message": message}})
    obj["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                    "message": message, "observedGeneration": 1}]
    explained = oncall.explain(copy.deepcopy(obj))
    assert "keeps trying" not in explained and ".;" not in explained, explained
    del obj["status"]["pause"]  # not paused (phase Pending): the operator does keep trying
    obj["status"]["phase"] = "Pending"
    explained = oncall.explain(obj)
    assert ("No progress within progressDeadline (ProgressDeadlineExceeded): Paused: no progress within "
            "progressDeadline 10m; run retry or rollback (rollback.automatic is false); the operator keeps trying."
            ) in explained, explained


def test_explain_words_a_rejected_status_as_a_decision_not_stored_not_as_stopped(oncall: OnCall) -> None:
    obj = rollout("Progressing")
    obj["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": "StatusRejected",
                                    "message": "the API server refused the status; it is decided again after a while",
                                    "observedGeneration": 1}]
    explained = oncall.explain(obj)
    assert ("The operator could not store its last decision (StatusRejected): the API server refused the status; "
            "it is decided again after a while") in explained, explained
    assert "has stopped" not in explained


def test_a_403_right_after_an_outage_is_read_again_but_not_one_after_a_read_or_alone(
        api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An API server restarting answers 503 (or refuses connections), then 403 while RBAC syncs, then the rollout."""
    kubeconfig = api.kubeconfig(tmp_path)
    api.message = 'modelrollouts.modelrollout.io "r" is forbidden: User "alice" cannot get resource'
    api.answers = [503, 403, rollout("Succeeded")]
    assert main(["get", "r", "--watch", "--timeout", "30s", "--kubeconfig", kubeconfig]) == 0
    out = capsys.readouterr().out
    assert out.count("cannot read the rollout") == 1 and "the API server answers again" in out, out
    for answers in ([403], [503, rollout("Progressing"), 403]):  # no outage just before: final, exit 2
        api.answers = list(answers)
        assert main(["get", "r", "--watch", "--timeout", "30s", "--kubeconfig", kubeconfig]) == 2, answers
        assert capsys.readouterr().err.startswith("error: ModelRollout ns/r: no permission (modelrollouts")


@pytest.mark.parametrize("mode", ["lands-stalls", "handled-stalls"])
def test_a_command_whose_write_times_out_but_lands_is_sent_once_and_told_as_sent(
        api: Api, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The write lands but its answer comes after the client's read timeout (slow webhooks or etcd)."""
    monkeypatch.setattr(oncall_module, "CLI_REQUEST_TIMEOUT", (10.0, 1.0), raising=False)
    api.patch_mode = mode
    started = time.monotonic()
    assert main(["abort", "r", "--wait", "2s", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    assert time.monotonic() - started < 10
    out = capsys.readouterr().out
    assert "abort sent to ns/r as alice" in out, out
    # Then awaited as any command written: still pending, or handled already.
    assert ("is not known to be handled yet" if mode == "lands-stalls" else "handled by the operator") in out, out
    assert api.patches == 1


@pytest.mark.parametrize("mode", ["stalls", "closes"])
def test_a_command_whose_write_fails_unseen_is_not_sent_again_and_says_to_check_the_history(
        api: Api, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(oncall_module, "CLI_REQUEST_TIMEOUT", (10.0, 1.0), raising=False)
    api.patch_mode = mode
    assert main(["abort", "r", "--wait", "2s", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "may have been written all the same: check `modelrollout history -n ns r`" in err, err
    assert ("gave no answer within 1s" if mode == "stalls" else "(connection failed)") in err, err
    assert api.patches == 1  # never sent twice


def test_one_shot_requests_wait_past_the_api_servers_own_60s_and_kubectls_10s_handshake(
        api: Api, tmp_path: Path) -> None:
    assert OnCall(api.kubeconfig(tmp_path), None).api_client.request_timeout == (10.0, 65.0)


def test_a_read_timeout_is_told_as_no_answer_not_as_an_unreachable_server(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(oncall_module, "CLI_REQUEST_TIMEOUT", (10.0, 1.0), raising=False)
    kubeconfig = api.kubeconfig(tmp_path)
    api.get_delay = 0.5  # slow, within the read timeout: answered
    assert main(["get", "r", "--kubeconfig", kubeconfig]) == 0
    api.stalled.set()
    started = time.monotonic()
    assert main(["get", "r", "--kubeconfig", kubeconfig]) == 1
    err = capsys.readouterr().err
    assert err == f"error: ModelRollout ns/r: the API server at 127.0.0.1:{api.port} gave no answer within 1s\n", err
    assert time.monotonic() - started < 5 and api.reads == 2  # a stalled read is not tried again


@pytest.mark.parametrize("command", ["get", "history", "explain"])
def test_a_read_whose_connection_is_closed_unanswered_is_tried_again(
        api: Api, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    api.close_gets = 1
    assert main([command, "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0, capsys.readouterr().err
    assert api.reads == 2


def test_a_watch_through_a_long_outage_does_not_overflow_its_backoff(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1,100 reads answered 503 (an outage of hours, no --timeout); the sleeps are skipped, the reads are real."""
    pauses: list[float] = []
    monkeypatch.setattr(oncall_module.time, "sleep", pauses.append)
    api.answers = [503] * 1100 + [rollout("Succeeded")]
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    backoff = [p for p in pauses if p]  # urllib3 sleeps 0 s between tries too
    assert backoff[:5] == [1, 2, 4, 8, 8] and max(backoff) == 8 and len(backoff) == 1100, backoff[:8]


# --- 8: a rollback that kept all traffic still tells the alias and the tag -------------------------------------------


def test_explain_of_a_rollback_that_kept_all_traffic_tells_the_alias_and_the_tag(oncall: OnCall) -> None:
    obj = rollout("RollingBack")
    obj["spec"]["model"]["stableAlias"] = "production"
    obj["status"].update({
        "candidate": {"version": "7"}, "canaryWeight": 100,
        "rollback": {"cause": "BakeFailed", "reason": "nsfw-rate failed in bake", "actor": "modelrollout-controller",
                     "verdictAt": "2026-12-06T03:00:00Z", "trafficConfirmedAt": "2026-12-06T03:00:01Z",
                     "trafficKept": True, "rejectCandidate": True},
        "history": [{"time": "2026-12-06T02:00:00Z", "event": "Resolved", "detail": "candidate 7, no stable"},
                    {"time": "2026-12-06T03:00:01Z", "event": "TrafficNotRestored",
                     "detail": "no earlier version to put back: version 7 keeps all traffic"}]})
    explained = oncall.explain(obj)
    assert "Version 7 still serves all traffic" in explained and "Traffic is" not in explained
    assert "@production is not yet confirmed off version 7 in the registry: it may still name it." in explained
    assert "Version 7 is not yet tagged rejected in the registry." in explained
    obj["status"]["rollback"].update({"aliasConfirmedAt": "2026-12-06T03:00:02Z",
                                      "tagConfirmedAt": "2026-12-06T03:00:03Z"})
    explained = oncall.explain(obj)
    assert "@production is confirmed off version 7" in explained and "Version 7 is tagged rejected" in explained


# --- 4: the rates in a decision's words are found in linear time -----------------------------------------------------


def history_status(detail: str) -> dict[str, Any]:
    return {"phase": "RolledBack", "history": [{"time": "2026-12-06T03:00:00Z", "event": "RolledBack",
                                                "detail": detail, "actor": "modelrollout-controller"}]}


def test_a_long_history_detail_is_charted_in_linear_time() -> None:
    """100,000 name characters took half a minute (the unanchored metric name was tried from each position)."""
    for detail in ("a" * 100_000, "x canary 1% (1/2) " * 20_000, "a" * 1_000_000):
        started = time.monotonic()
        assert rate_points(history_status(detail)) == []
        render_html({"metadata": {"name": "r", "namespace": "ns"}, "status": history_status(detail)})
        assert time.monotonic() - started < 3, len(detail)


def test_only_a_details_first_characters_are_searched_for_rates() -> None:
    rates = "nsfw-rate canary 6.2% (31/500) vs stable 0.2% (98/49000)"
    padding = "." * (report.RATES_SEARCHED - len(rates) - 2)
    assert [p.metric for p in rate_points(history_status(f"{padding}; {rates}"))] == ["nsfw-rate"]
    assert rate_points(history_status(f"{padding}; x{rates}")) == []  # its end is past the characters searched


def test_a_403_that_outlasts_the_outage_ends_the_watch_without_a_timeout(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Permission revoked during the outage: after DENIED_AFTER_OUTAGE_SECONDS of 403s the watch says so and exits 2,
    also with no --timeout (it read on for ever, showing only the old outage note: review s27r6)."""
    monkeypatch.setattr(oncall_module, "DENIED_AFTER_OUTAGE_SECONDS", 0.5, raising=False)
    kubeconfig = api.kubeconfig(tmp_path)
    api.message = 'modelrollouts.modelrollout.io "r" is forbidden: User "alice" cannot get resource'
    api.answers = [503, *[403] * 50]
    started = time.monotonic()
    assert main(["get", "r", "--watch", "--kubeconfig", kubeconfig]) == 2
    assert time.monotonic() - started < 20
    assert capsys.readouterr().err.startswith("error: ModelRollout ns/r: no permission (modelrollouts")
