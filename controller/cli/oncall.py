"""On-call commands: list, get, history, explain, and abort / promote / retry / rollback.

Commands reach the controller through the `modelrollout.io/command` annotation, never the spec, so
Argo CD sees no drift; the actor is the caller's identity as the API server knows it (SelfSubjectReview).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from controller.api.commands import COMMAND_ANNOTATION, Command, CommandAction, CommandError, parse_command
from controller.api.serialization import format_time, parse_time
from controller.api.status import (
    FINALIZER_REFUSED,
    STATUS_REFUSALS,
    STATUS_REJECTED,
    STATUS_UNREADABLE,
    step_fraction,
)
from controller.cli.errors import CliError
from controller.cli.program import program
from controller.cli.report import deciding_test
from controller.cli.shape import mapping, objects, printable, text, well_formed
from controller.http_deadline import transport_cause
from controller.operator.events import is_warning
from controller.operator.kubeapi import (
    FINALIZER,
    GROUP,
    PLURAL,
    VERSION,
    BoundedApiClient,
    without_kube_credentials,
)

TERMINAL = ("Succeeded", "RolledBack", "Failed")
CLI_FIELD_MANAGER = "kubectl-modelrollout"  # who wrote the command annotation, in managedFields
PHASE_COLOURS = {"Succeeded": "32", "Promoting": "32", "Baking": "36", "Progressing": "36", "Gating": "36",
                 "Paused": "33", "Pending": "33", "RollingBack": "31", "RolledBack": "31", "Failed": "31"}
OUTCOME_SYMBOLS = {"pass": "✔", "fail": "✖", "inconclusive": "?"}
GATE_VERDICTS_SHOWN = 10
SEND_ATTEMPTS = 3  # a conflict is most often the operator's own status write: read again and retry
HANDLED_POLL = 0.5  # seconds between reads while waiting for the operator to handle a command
# Seconds past a command's wait in which a status write counts as recent: the operator may be busy (a rollback), or
# may have stopped since; only a status never written or written long ago asks whether it runs.
OPERATOR_SEEN_MARGIN = 60
# The Ready reasons by which the operator holds a spec without starting it (engine/decide.py _refuse_to_run),
# keeping the phase it had; and what a watch then waits for.
HELD_REASONS = {"TargetConflict": "the other ModelRollout on the target to end",
                "InvalidSpec": "a spec (or operator settings) the operator accepts"}
# The Ready reason of a Succeeded rollout whose version serves though a verdict rejected it (the stable alias moved
# onto it by hand): Degraded in Argo CD, and what a watch returns in place of the phase (exit 1, not 0).
PREVIOUSLY_REJECTED = "PreviouslyRejected"
# Paused on a failed check until a human decides (rollback.automatic false): Argo CD's failedPause in
# deploy/argocd/.../health.lua; the commands as the engine's message names them (promote cannot skip a change the
# target has not taken).
# GateInconclusive too (onInconclusive: pause, the default): nothing judges it further, only a human ends it.
FAILED_PAUSES = {"GateFailed": "promote, retry or rollback", "AnalysisFailed": "promote, retry or rollback",
                 "BakeFailed": "promote, retry or rollback", "ProgressDeadlineExceeded": "retry or rollback",
                 "GateInconclusive": "promote, retry or rollback"}
# Paused on an inconclusive verdict while the candidate still serves: the engine judges it on (decide.py
# _WATCHED_PAUSES), so a watch waits on; explain still names the commands a human may run meanwhile.
WATCHED_PAUSES = {"AnalysisInconclusive": "promote, retry or rollback",
                  "BakeInconclusive": "promote, retry or rollback"}
# What promote and retry do from a pause after each check (engine _promote_command, _retry_command), for explain.
PROMOTE_WORDS = {"Gate": "goes on to the steps despite the gate", "Analysis": "skips this check and goes on",
                 "Bake": "ends the bake early and succeeds"}
RETRY_WORDS = {"Gate": "runs the gate again", "Analysis": "judges this step again", "Bake": "bakes again",
               "ProgressDeadline": "sends the last change to the target again"}
# What explain says of each STATUS_REFUSALS reason: only an unreadable status stops the operator on the spec.
REFUSAL_WORDS = {STATUS_REJECTED: "could not store its last decision", STATUS_UNREADABLE: "has stopped on this spec",
                 FINALIZER_REFUSED: "holds this start: its finalizer is refused"}
# The history entries a resolved attempt begins with: where it starts in a status whose entries carry no attempt
# number (written by an older operator).
ATTEMPT_STARTS = ("Resolved", "AlreadyStable")
WARNINGS_SHOWN = 8
# (connect, read) seconds for each request of a one-shot command: kubectl's 10 s TLS handshake limit, and past the API
# server's own 60 s for a request, so a slow but healthy server still answers. The watch and --wait bound each
# read by their own deadline too.
CLI_REQUEST_TIMEOUT = (10.0, 65.0)
WATCH_BACKOFF_MAX = 8.0  # seconds between reads of a watch while the API server does not answer
# How long after its last outage read a watch takes a 401/403 for RBAC syncing again (after an API server restart,
# seconds): past it the permission is gone, and the watch says so rather than reading on for ever.
DENIED_AFTER_OUTAGE_SECONDS = 30.0


class _RetryUnlessStalled(urllib3.Retry):
    """urllib3's retries, but a read timeout is raised at once: a stalled read tried four times, each for the whole
    read timeout, would outlast --timeout and --wait (the watch and the wait read again themselves). A connection
    reset or closed before the answer is still tried again for GET (idempotent, as client-go does); writes are not
    (urllib3 retries no PATCH or POST on a read error)."""

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> _RetryUnlessStalled:
        if isinstance(error, ReadTimeoutError):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


# Connecting is not tried again: each try may wait out the connect timeout. Redirects are still followed.
REQUEST_RETRIES = _RetryUnlessStalled(total=3, connect=0, read=3, other=0)


class Style:
    """Colour and symbols on a terminal, plain text when piped (or NO_COLOR is set, or TERM=dumb)."""

    def __init__(self, stream: TextIO) -> None:
        self.enabled = stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def phase(self, phase: str, status: Any = None) -> str:
        """`phase` coloured; a promotion held (status.promotion.hold) as Paused: it waits on a human, not moving."""
        held = phase == "Promoting" and bool(_hold(status))
        code = PHASE_COLOURS.get("Paused" if held else phase)
        return f"\033[{code}m{phase}\033[0m" if self.enabled and code else phase

    def warn(self, words: str) -> str:
        return f"\033[33m{words}\033[0m" if self.enabled else words

    def outcome(self, outcome: str) -> str:
        if not self.enabled:
            return outcome
        return f"{OUTCOME_SYMBOLS.get(outcome, '')} {outcome}"


# What loading a kubeconfig raises besides its own ConfigException: a missing file, bad YAML, bad base64.
KUBECONFIG_ERRORS = (config.ConfigException, OSError, TypeError, ValueError, yaml.YAMLError)


def no_cluster(exc: BaseException, kubeconfig: str | None = None) -> CliError:
    """`kubeconfig`: the path given (else $KUBECONFIG's, else ~/.kube/config, as the library reads them)."""
    # The library skips a path that does not exist, then says only "Invalid kube-config file": name each one. Only
    # when loading failed: kubectl too merges the $KUBECONFIG entries that exist.
    paths = [path for path in (kubeconfig or kube_config.KUBE_CONFIG_DEFAULT_LOCATION).split(
        kube_config.ENV_KUBECONFIG_PATH_SEPARATOR) if path]
    missing = [path for path in paths if not os.path.exists(os.path.expanduser(path))]
    source = " (in $KUBECONFIG)" if kubeconfig is None and "KUBECONFIG" in os.environ else ""
    absent = f"{', '.join(missing)}{source} {'does' if len(missing) == 1 else 'do'} not exist"
    if missing and len(missing) == len(paths):
        return CliError(f"no cluster: no kubeconfig: {absent}")
    # A YAML or base64 error may quote the file (a token in it): only its type is shown.
    detail = str(exc) if isinstance(exc, config.ConfigException | OSError) else type(exc).__name__
    return CliError(f"no cluster: cannot load a kubeconfig ({detail}{'; ' + absent if missing else ''})")


def _not_current(obj: dict[str, Any]) -> str | None:
    """Why the status may not describe the spec as it is now (a well_formed object), or None."""
    status = obj.get("status") or {}
    generation = obj["metadata"].get("generation")
    observed = status.get("observedGeneration")
    if not status.get("phase") and observed is None and not status.get("history"):
        return (f"no status yet: the operator has not taken this rollout (is it running, and watching namespace "
                f"{obj['metadata']['namespace']}?)")
    if isinstance(generation, int) and isinstance(observed, int) and observed < generation:
        return (f"this status is for generation {observed} of the spec; the operator has not acted on the current "
                f"one ({generation}) yet")
    return None


def _refused_by_http_client(exc: ValueError) -> bool:
    """Whether http.client refused to send the request (a header value with a control character), rather than the
    kubernetes library refusing an argument (pydantic's ValidationError is a ValueError too)."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_globals.get("__name__") == "http.client"


def _server() -> str:
    """The API server's host and port (never the whole URL: it may carry credentials)."""
    parts = urlsplit(client.Configuration.get_default_copy().host or "")
    try:
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    except ValueError:  # a port that is no number
        return str(parts.hostname)


class NotFound(CliError):
    """The API server answered 404: the object is not there (any more)."""


class Transient(CliError):
    """A failure that may pass: the API server unreachable, or answering 5xx or 429 (a restart, an overloaded etcd).
    A watch reads again until its --timeout; 401, 403 and 404 are final (401 and 403 only when no outage came just
    before: see Denied)."""


class Denied(CliError):
    """The API server answered 401 or 403. Right after an API server restart it may: RBAC is synced again."""


def _request_timeout(deadline: float | None) -> tuple[float, float] | None:
    """(connect, read) seconds for a request that must be over by `deadline` (time.monotonic()); None: the client's
    own bound (CLI_REQUEST_TIMEOUT)."""
    if deadline is None:
        return None
    left = max(deadline - time.monotonic(), 0.1)
    return min(CLI_REQUEST_TIMEOUT[0], left), min(CLI_REQUEST_TIMEOUT[1], left)


class OnCall:
    def __init__(self, kubeconfig: str | None, namespace: str | None, out: TextIO | None = None,
                 context_name: str | None = None) -> None:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context_name)
            contexts, context = config.list_kube_config_contexts(config_file=kubeconfig)
        except KUBECONFIG_ERRORS as exc:
            raise no_cluster(exc, kubeconfig) from None
        if context_name is not None:  # the namespace is the chosen context's, as kubectl --context takes it
            context = next((item for item in contexts if item.get("name") == context_name), None)
        self.namespace = namespace or (context or {}).get("context", {}).get("namespace") or "default"
        configuration = client.Configuration.get_default_copy()
        configuration.retries = REQUEST_RETRIES
        # Every request times out: the library's default client waits for ever on a server that stopped answering.
        self.api_client = BoundedApiClient(configuration, CLI_REQUEST_TIMEOUT)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.out = out or sys.stdout  # the stream of the moment, not the one at import
        self.style = Style(self.out)

    # --- reading -------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise NotFound(f"{what}: not found") from None
            # Redacted of what the request was sent with: an exec plugin's refreshed token is there, not in the default.
            message = _api_message(exc, self.custom.api_client.configuration)
            if exc.status in (401, 403):
                raise Denied(f"{what}: no permission ({message or 'permission denied'})") from None
            error = Transient if exc.status == 429 or exc.status >= 500 else CliError
            raise error(f"{what}: the API server answered HTTP {exc.status}: {message}") from None
        except (Urllib3Error, OSError) as exc:
            connect, read = kwargs.get("_request_timeout") or self.api_client.request_timeout
            cause = transport_cause(exc, round(read, 1))
            if cause.startswith("no answer"):  # it was reached: a slow or stalled server, not a missing one
                raise Transient(f"{what}: the API server at {_server()} gave {cause}") from None
            if cause.startswith("no connection"):
                cause = transport_cause(exc, round(connect, 1))
            raise Transient(f"no cluster: cannot reach the API server at {_server()} ({cause})") from None
        except RecursionError:  # json's parser, on an object nested deeper than Python's recursion limit
            raise CliError(f"{what}: an object in the answer nests too deep to be read here; `kubectl get "
                           "modelrollouts -o json` shows it as stored") from None
        except ValueError as exc:
            if not _refused_by_http_client(exc):
                raise
            # Its text quotes the header, token and all. kubectl trims a token file's newline; the library does not.
            raise CliError(f"{what}: the kubeconfig's credentials cannot be sent (a token ending in a newline or "
                           "another control character?)") from None

    def get(self, name: str, deadline: float | None = None) -> dict[str, Any]:
        """The rollout; `deadline` (time.monotonic()) bounds the request, for --timeout and --wait."""
        what = f"ModelRollout {self.namespace}/{name}"
        try:
            found = self._call(what, self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                               name, _request_timeout=_request_timeout(deadline))
        except NotFound as exc:
            # A deleted rollout's account (a revertOnDeletion rollback's end among it) outlives it in its Events.
            raise NotFound(f"{exc}; if it was deleted, its Events tell how it ended (while the API server keeps "
                           f"them): `{_events_command(self.namespace, name)}`") from None
        return _kubernetes_answer(what, found, "ModelRollout")

    def list(self, all_namespaces: bool) -> list[dict[str, Any]]:
        if all_namespaces:
            what = "ModelRollouts"
            found = self._call(what, self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        else:
            what = f"ModelRollouts in {self.namespace}"
            found = self._call(what, self.custom.list_namespaced_custom_object,
                               GROUP, VERSION, self.namespace, PLURAL)
        return objects(_kubernetes_answer(what, found, "ModelRolloutList").get("items"))

    # --- commands ------------------------------------------------------------------------------------

    def actor(self) -> str:
        """Who the API server says we are; the annotation records it for the history."""
        try:
            review = client.AuthenticationV1Api(self.api_client).create_self_subject_review(
                client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview"))
            return str(review.status.user_info.username)
        # ValueError: pydantic's, for an answer that is no SelfSubjectReview (a proxy's login page)
        except (ApiException, Urllib3Error, OSError, AttributeError, ValueError):
            return os.environ.get("USER", "unknown")

    def send(self, name: str, action: CommandAction, full: bool = False) -> tuple[Command, Any]:
        """Write the command, unless the annotation holds one the operator has not handled: one annotation carries
        one command, so writing over it would drop the other silently. Also the uid of the object written to."""
        what = f"ModelRollout {self.namespace}/{name}"
        command = None
        for _ in range(SEND_ATTEMPTS):
            obj = self.get(name)  # also a clear "not found" before anything is written
            pending = pending_command(obj)
            if pending is not None:
                raise CliError(printable(f"command {pending.label} by {pending.actor} (id {pending.id}) is still "
                                         f"pending on {self.namespace}/{name}; wait for the operator to handle it "
                                         f"(is it running?), or {_withdraw(self.namespace, name)}"))
            command = command or Command(id=uuid.uuid4().hex, action=action, actor=self.actor(), full=full)
            # The resourceVersion read makes the merge patch conditional: the API server answers 409 to it
            # when anyone wrote the object since, so another command cannot be written over unseen.
            patch = {"metadata": {"resourceVersion": mapping(obj.get("metadata")).get("resourceVersion"),
                                  "annotations": {COMMAND_ANNOTATION: command.to_annotation()}}}
            try:
                written = self._call(what, self._patch_unless_changed, name, patch)
            except Transient as exc:
                # No answer is no proof nothing was written (a slow webhook or etcd): sending again could carry the
                # command out twice.
                self._landed_after_all(name, command, exc)
                written = True
            if written:
                return command, mapping(obj.get("metadata")).get("uid")
        raise CliError(f"{what} kept changing while the command was written ({SEND_ATTEMPTS} attempts); "
                       "nothing was sent, try again")

    def _landed_after_all(self, name: str, command: Command, failure: CliError) -> None:
        """Returns when the object holds `command` (its annotation, or its id handled already) although its write
        failed with `failure`; else a CliError that says it may have landed all the same."""
        try:
            obj = self.get(name)
        except CliError:
            obj = {}
        pending = pending_command(obj)
        handled = mapping(obj.get("status")).get("handledCommands")
        if (pending is not None and pending.id == command.id) or (isinstance(handled, list) and command.id in handled):
            return
        raise CliError(printable(f"{failure}; {command.label} (id {command.id}) may have been written all the same: "
                                 f"check `{program()} history -n {self.namespace} {name}` (and the annotation) "
                                 "before sending it again"))

    def await_handled(self, name: str, command: Command, uid: Any, wait: float) -> None:
        """Wait up to `wait` seconds for the operator to handle `command` (its id in status.handledCommands), then
        say how: applied (printed), refused (a CliError), or not yet (printed: it stays pending, handled later)."""
        what = f"ModelRollout {self.namespace}/{name}"
        sent = printable(f"{command.label} (id {command.id})")
        deadline = time.monotonic() + wait
        unread = ""  # why the last read failed: the command is out, so a failed read says nothing of its fate
        status: dict[str, Any] = {}
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(HANDLED_POLL, remaining))
            try:
                obj = self.get(name, deadline)
            except NotFound:
                raise CliError(f"{what} was deleted before the operator handled {sent}") from None
            except CliError as exc:
                unread = f" (its status could not be read: {exc})"
                continue
            unread = ""
            if mapping(obj.get("metadata")).get("uid") != uid:
                raise CliError(f"{what} was deleted and created again before the operator handled {sent}; the new "
                               "one did not get it")
            status = mapping(obj.get("status"))
            handled = status.get("handledCommands")
            if isinstance(handled, list) and command.id in handled:
                return self._print_handled(name, command, status)
            pending = pending_command(obj)
            if pending is None or pending.id != command.id:  # `kubectl annotate` or an Argo CD action wrote over it
                raise CliError(f"the command annotation of {what} was overwritten before the operator handled {sent}: "
                               "it will not be carried out")
        # A recent status write is told as a fact, not as proof the operator runs: it may have crashed since.
        seen = _seconds_since_written(status)
        why = unread or (f" (its status was last written {max(seen, 0):.0f} s ago; if the operator is down, the "
                         "command waits for it to start)"
                         if seen is not None and seen <= wait + OPERATOR_SEEN_MARGIN else " (is the operator running?)")
        print(self.style.warn(f"{sent} is not known to be handled yet{why}; it stays pending: follow it with "
                              f"`{program()} history -n {self.namespace} {name}`"), file=self.out)

    def _print_handled(self, name: str, command: Command, status: dict[str, Any]) -> None:
        """What the operator's history says it did with `command`; a refusal is a CliError."""
        entries = printable([e for e in objects(status.get("history")) if e.get("commandId") == command.id])
        sent = printable(f"{command.label} (id {command.id})")
        refused = [e for e in entries if e.get("event") == "CommandIgnored"]
        if refused:
            raise CliError(f"{sent} refused by the operator: {text(refused[0].get('detail'))} (phase now "
                           f"{text(printable(status.get('phase')), '?')})")
        if not entries:  # handled, but its entry is past the kept history (or the status was rewritten)
            print(f"{sent} handled by the operator; its history has no entry for it: see `{program()} history -n "
                  f"{self.namespace} {name}`", file=self.out)
            return
        print(f"{sent} applied: {text(entries[0].get('event'))}: {text(entries[0].get('detail'))}", file=self.out)

    def _patch_unless_changed(self, name: str, patch: dict[str, Any]) -> bool:
        """False when the object changed since it was read (409 Conflict)."""
        try:
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch,
                                                       field_manager=CLI_FIELD_MANAGER)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    # --- output --------------------------------------------------------------------------------------

    def print_list(self, items: Sequence[dict[str, Any]], all_namespaces: bool) -> None:
        items = [well_formed(printable(item)) for item in items]
        rows = [["NAMESPACE"] if all_namespaces else []]
        rows[0] += ["NAME", "PHASE", "STEP", "WEIGHT", "CANDIDATE", "STABLE", "MESSAGE"]
        for obj in items:
            status = obj.get("status") or {}
            row = [obj["metadata"]["namespace"]] if all_namespaces else []
            row += [obj["metadata"]["name"], status.get("phase", ""), _step(obj), _percent(status.get("canaryWeight")),
                    (status.get("candidate") or {}).get("version", ""), (status.get("stable") or {}).get("version", ""),
                    status.get("message", "")]
            rows.append([str(cell) for cell in row])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=self.out)

    def print_rollout(self, obj: dict[str, Any]) -> None:
        pending = _pending_line(obj)  # from the annotation as stored: escaping could change its JSON
        obj = well_formed(printable(obj))
        status = obj.get("status") or {}
        spec = obj.get("spec") or {}
        s = self.style
        print(f"Name:       {obj['metadata']['namespace']}/{obj['metadata']['name']}", file=self.out)
        print(f"Phase:      {s.phase(status.get('phase', 'Pending'), status)}", file=self.out)
        deleting = obj["metadata"].get("deletionTimestamp")
        if deleting:
            held = FINALIZER in (obj["metadata"].get("finalizers") or ())
            print(f"Deleting:   since {deleting}" + ("; held by the controller until it has rolled back "
                                                      "(spec.rollback.revertOnDeletion)" if held else ""),
                  file=self.out)
        print(f"Message:    {status.get('message', '')}", file=self.out)
        if note := _not_current(obj):
            print(f"Note:       {s.warn(note)}", file=self.out)
        if pending is not None:
            print(f"Pending:    {s.warn(pending)}", file=self.out)
        print(f"Step:       {_step(obj)}", file=self.out)
        print(f"Weight:     {_percent(status.get('canaryWeight'))}{_weight_note(spec, status)}", file=self.out)
        print(f"Candidate:  {(status.get('candidate') or {}).get('version', '-')}    "
              f"Stable: {(status.get('stable') or {}).get('version', '-')}", file=self.out)
        gate = status.get("gate") or {}
        if gate:
            print(f"Gate:       {s.outcome(str(gate.get('outcome', '-')))}  dataset sha256 "
                  f"{gate.get('datasetSha256', '-')}", file=self.out)
            if gate.get("reason"):
                print(f"            {text(gate['reason'])}", file=self.out)
            for line in _gate_verdict_lines(gate.get("verdicts", []), s.outcome, "`-o yaml`"):
                print(line, file=self.out)
        verdicts = analysis_verdicts(status)
        if verdicts:
            print("Analysis:", file=self.out)
            for verdict in verdicts:
                print(f"  {s.outcome(verdict['outcome']):<14} {verdict['name']}: {verdict['reason']}", file=self.out)
        for condition in status.get("conditions", []):
            print(f"  condition {condition['type']}={condition['status']} ({condition.get('reason', '')})",
                  file=self.out)

    def print_history(self, obj: dict[str, Any]) -> None:
        obj = well_formed(printable(obj))
        if not obj["status"]["history"]:
            print(f"no history yet{'; ' + note if (note := _not_current(obj)) else ''}", file=self.out)
        # As wide as the longest event shown (ProgressDeadlineExceeded), so the actor and detail columns align.
        width = max((len(entry["event"]) for entry in obj["status"]["history"]), default=0)
        # The times too: format_time drops a fraction's trailing zeros (20 to 27 characters).
        time_width = max((len(entry["time"]) for entry in obj["status"]["history"]), default=0)
        for entry in obj["status"]["history"]:
            print(f"{entry['time']:<{time_width}}  {entry['event']:<{width}} {entry.get('actor', ''):<24} "
                  f"{entry['detail']}", file=self.out)

    def explain(self, obj: dict[str, Any]) -> str:
        pending = _pending_line(obj)
        obj = well_formed(printable(obj))
        status = obj["status"]
        name = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        phase = text(status.get("phase"), "Pending")
        lines = [f"{name} is {phase}: {text(status.get('message'))}"]
        if note := _not_current(obj):
            lines.append(note[:1].upper() + note[1:] + ".")
        if pending is not None:
            lines.append(f"Pending: {pending}.")
        if hold := _hold(status):
            lines.append(_hold_account(hold))
        # The phase and message are kept as they were: only the Ready condition says the operator has stopped.
        if refused := _status_refused(obj):
            said = REFUSAL_WORDS.get(refused[0], "has stopped on this spec")
            lines.append(f"The operator {said} ({refused[0]}): {refused[1]}")
        if stuck := _stuck(obj):
            lines.append(f"No progress within progressDeadline (ProgressDeadlineExceeded): {stuck.rstrip('. ')}; the "
                         "operator keeps trying.")
            rollback = mapping(status.get("rollback"))
            traffic_back = rollback.get("trafficConfirmedAt")
            registry_left = not rollback.get("aliasConfirmedAt") or (
                rollback.get("rejectCandidate", True) and not rollback.get("tagConfirmedAt"))
            if phase == "RollingBack" and not (traffic_back and registry_left) and (check := _target_check(obj)):
                # What the rollback waits on is the target's: what it serves now is read there.
                lines.append(f"Next: check what the target serves: `{check}`.")
            elif phase == "RollingBack" and traffic_back and registry_left:  # only the registry's part (review s32r3)
                lines.append(f"Next: check the registry: the RegistryAvailable condition (`kubectl get modelrollout "
                             f"-n {obj['metadata']['namespace']} {obj['metadata']['name']} -o yaml`) says why it "
                             "cannot be written.")
        pause = mapping(status.get("pause"))
        where = f"-n {obj['metadata']['namespace']} {obj['metadata']['name']}"
        if phase == "Paused" and pause.get("reason") == "PauseStep" and not pause.get("until"):
            # A pause step waits for a human: the command, as a failed check's pause names it (watch).
            lines.append(f"Next: `{program()} promote {where}` to go on (or `{program()} abort {where}`).")
        elif phase == "Paused" and (next_line := _failed_pause_next(text(pause.get("reason")), where,
                                                                     _version(status, "stable"))):
            lines.append(next_line)
        candidate = _version(status, "candidate")
        stable = _version(status, "stable")
        model = text(obj["spec"]["model"].get("name"), "?")
        if candidate and candidate == stable:  # AlreadyStable: the stable alias named the candidate already
            lines.append(f"Version {candidate} of {model} was already the stable version: this attempt rolled "
                         "nothing out.")
        elif candidate:
            lines.append(f"It rolls out version {candidate} of {model}"
                         + (f" in place of version {stable}." if stable else " (no stable version before it)."))
        gate = mapping(status.get("gate"))
        if gate.get("outcome"):
            lines.append(f"The golden gate said {text(gate['outcome'])} on the dataset with sha256 "
                         f"{text(gate.get('datasetSha256'), '?')}: {text(gate.get('reason'))}")
            # The reason names one check: every one that did not pass is listed (a backdoor fails many slices).
            if text(gate["outcome"]) != "pass":
                lines += _gate_verdict_lines([v for v in gate.get("verdicts", []) if v["outcome"] != "pass"], str,
                                             f"`{program()} get -o yaml`")
        for verdict in analysis_verdicts(status):
            evidence = verdict["evidence"]
            counts = {k: v for k, v in evidence.items() if k in ("canary", "stable", "value", "min", "max")}
            test = deciding_test(evidence)
            if test:
                counts.update({key: test[key] for key in ("test", "e_value", "boundary")})
            lines.append(f"Metric {verdict['name']} said {verdict['outcome']}: {verdict['reason']}"
                         + (f" (evidence: {json.dumps(counts, default=str)})" if counts else ""))
            window = mapping(evidence.get("window"))
            if window:
                lines.append(f"  window {text(window.get('start'), '?')} to {text(window.get('end'), '?')}"
                             + (f" (range {text(window['range'])})" if window.get("range") else ""))
            for role, query in mapping(evidence.get("queries")).items():
                lines.append(f"  query {role}: {text(query)}")
        lines += _rollback_account(obj, candidate, stable)
        holding = bool(_hold(status))
        lines += _warnings(status, holding=holding)
        last = status["history"][-1:]
        for entry in last:
            lines.append(f"Last event: {entry['event']} at {entry['time']} by {entry['actor'] or '?'}: "
                         f"{_told_detail(entry, holding)}")
        return "\n".join(lines)

    def watch(self, name: str, interval: float = 1.0, timeout: float | None = None) -> str | None:
        """Print each change until the rollout ends, or pauses on a failed check for a human (Paused); its final
        phase (None when the timeout came first), or PreviouslyRejected for a Succeeded one that left a version a
        verdict rejected serving."""
        deadline = time.monotonic() + timeout if timeout else None
        last = None
        told = None  # the hold last explained: said once, not on every read
        noted = None  # the same for why the status may not describe the spec (none yet, an older generation)
        uid = None  # the object watched: one deleted and created again under its name is another rollout
        failures = 0  # reads in a row that failed for a reason that may pass (an API server restarting)
        outage_seen = 0.0  # when a read last failed for a reason other than a 401/403 (time.monotonic())
        seen_status: dict[str, Any] = {}  # the status last read: what the rollout was doing when deleted
        while True:
            try:
                raw = self.get(name, deadline)
            except NotFound:
                if last is None:  # never read: a wrong name, not an outcome
                    raise
                # Deleted while watched: its outcome cannot be read here (exit 2, as README says), but its Events
                # tell it (a revertOnDeletion rollback's RolledBack or Failed), not a bare "not found".
                rolling_back = mapping(seen_status.get("rollback")).get("cause") == "Deleted" \
                    and seen_status.get("phase") == "RollingBack"
                how = " while rolling back (spec.rollback.revertOnDeletion)" if rolling_back else ""
                raise CliError(f"ModelRollout {self.namespace}/{name}: not found any more: it was deleted{how} while "
                               f"watched; its end is in its Events: `{_events_command(self.namespace, name)}`") \
                    from None
            except (Transient, Denied) as exc:
                # As `kubectl rollout status`: an API server restarting does not end the watch; --timeout does. Right
                # after an outage a 401/403 passes too (RBAC synced again after the restart); else it is final.
                # For a while only: a permission revoked during the outage is final, said without --timeout too.
                denied = isinstance(exc, Denied)
                if denied and (not failures or time.monotonic() - outage_seen > DENIED_AFTER_OUTAGE_SECONDS):
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise CliError(f"{exc}; still so at --timeout") from None
                if not denied:
                    outage_seen = time.monotonic()
                if not failures:
                    said = printable(f"cannot read the rollout ({exc}); reading again until it answers")
                    print(f"  note: {self.style.warn(said)}", file=self.out, flush=True)
                failures += 1
                pause = min(interval * 2 ** min(failures - 1, 3), WATCH_BACKOFF_MAX)  # no overflow in a long outage
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())) if deadline is not None else pause)
                continue
            if failures:
                print("  note: the API server answers again", file=self.out, flush=True)
                failures = 0
            seen = mapping(raw.get("metadata")).get("uid")
            if uid is not None and seen != uid:
                raise CliError(f"ModelRollout {self.namespace}/{name} was deleted and created again while watched: "
                               "the new one is another rollout (watch it again)")
            uid = uid or seen
            # A command the operator has not taken (retry, rollback) may end the phase shown: it is not final yet.
            # Read from the object as stored: escaping for the terminal could change the annotation's JSON.
            pending = pending_command(raw)
            obj = printable(raw)
            status = obj.get("status") or {}
            seen_status = mapping(status)
            line = (status.get("phase"), status.get("currentStep"), status.get("canaryWeight"), status.get("message"),
                    pending)
            if line != last:
                waiting = printable(f"  (waiting for the operator to take {pending.label} by {pending.actor}, id "
                                    f"{pending.id})") if pending else ""
                # The placeholders `get` shows for a status not written yet, not "None".
                print(f"{_watch_stamp()}  {self.style.phase(text(line[0], 'Pending'), status)}"
                      f"  step {_step(obj)}"
                      f"  weight {_percent(line[2])}  {text(line[3])}{waiting}", file=self.out, flush=True)
                last = line
            note = _not_current(well_formed(obj))
            if note is not None and note != noted:
                print(f"  note: {self.style.warn(note)}", file=self.out, flush=True)
            noted = note
            generation = (obj.get("metadata") or {}).get("generation")
            current = status.get("observedGeneration") == generation  # not a finished earlier spec's phase
            # Held, the phase is what the operator kept from before, not the outcome of this spec.
            held = _held(obj) if current and status.get("phase") in TERMINAL else None
            if held is not None and held != told:
                print(f"  not finished: the operator holds this spec ({held}) and keeps the phase it had; waiting "
                      f"for {HELD_REASONS[held]}", file=self.out, flush=True)
            told = held
            refused = _status_refused(obj) if pending is None else None
            if refused is not None:
                # The stored status (even a final phase) is not what the operator decided, and it cannot move on
                # until the spec or the operator changes: waiting would hang a CI job.
                reason, message = refused
                print(f"  stopped ({reason}): {message}", file=self.out, flush=True)
                return reason
            if status.get("phase") in TERMINAL and current and pending is None and held is None:
                rejected = _serves_rejected(obj) if status.get("phase") == "Succeeded" else None
                if rejected is not None:
                    print(f"  not a success: {rejected}", file=self.out, flush=True)
                    return PREVIOUSLY_REJECTED
                return str(status["phase"])
            failed = mapping(status.get("pause")).get("reason") if status.get("phase") == "Paused" else None
            if isinstance(failed, str) and failed in FAILED_PAUSES and current and pending is None:
                # Nothing moves until someone decides: waiting would hang a CI job.
                print(f"  stopped: paused for a human after the {failed} check; run {FAILED_PAUSES[failed]} "
                      f"(`{program()} <command> -n {self.namespace} {name}`)", file=self.out, flush=True)
                return "Paused"
            stuck = _stuck(obj) if current and pending is None else None
            if stuck is not None:
                # As `kubectl rollout status` on a Deployment past its progressDeadlineSeconds.
                print(f"  stopped: no progress within progressDeadline ({stuck}); the operator keeps trying",
                      file=self.out, flush=True)
                return str(status.get("phase"))
            if deadline and time.monotonic() > deadline:
                return None
            time.sleep(interval)


def pending_command(obj: dict[str, Any]) -> Command | None:
    """The annotation's command when its id is not in status.handledCommands yet. An annotation that does not
    parse is no command: the operator refuses it once, and it holds nothing up."""
    annotation = mapping(mapping(obj.get("metadata")).get("annotations")).get(COMMAND_ANNOTATION)
    if not isinstance(annotation, str):
        return None
    try:
        command = parse_command(annotation)
    except CommandError:
        return None
    handled = mapping(obj.get("status")).get("handledCommands")
    return None if isinstance(handled, list) and command.id in handled else command


def _held(obj: dict[str, Any]) -> str | None:
    """The reason the operator holds the current spec unstarted (its Ready condition at this generation), or None.
    A Failed phase with InvalidSpec is the refusal's own outcome for a new spec (fail_idle): not held."""
    status = mapping(obj.get("status"))
    for condition in objects(status.get("conditions")):
        reason = condition.get("reason")
        if (condition.get("type") == "Ready" and condition.get("status") == "False"
                and isinstance(reason, str) and reason in HELD_REASONS
                and condition.get("observedGeneration") == mapping(obj.get("metadata")).get("generation")
                and not (reason == "InvalidSpec" and status.get("phase") == "Failed")):
            return str(reason)
    return None


def _serves_rejected(obj: dict[str, Any]) -> str | None:
    """The Ready condition's message when it is False with reason PreviouslyRejected, else None."""
    for condition in objects(mapping(obj.get("status")).get("conditions")):
        if (condition.get("type") == "Ready" and condition.get("status") == "False"
                and condition.get("reason") == PREVIOUSLY_REJECTED):
            return text(condition.get("message"), "production serves a version a verdict rejected")
    return None


def _status_refused(obj: dict[str, Any]) -> tuple[str, str] | None:
    """The Ready condition's reason and message when, at this generation, the operator could not store the status it
    decided (StatusRejected) or cannot read the stored one (StatusUnreadable): the phase shown will not move on."""
    generation = mapping(obj.get("metadata")).get("generation")
    for condition in objects(mapping(obj.get("status")).get("conditions")):
        if (condition.get("type") == "Ready" and condition.get("status") == "False"
                and condition.get("reason") in STATUS_REFUSALS and condition.get("observedGeneration") == generation):
            return str(condition["reason"]), text(condition.get("message"), "")
    return None


def _stuck(obj: dict[str, Any]) -> str | None:
    """The message of a Progressing condition turned False by ProgressDeadlineExceeded at this generation: a
    rollout that cannot start (a target that cannot be read, the registry away) or a rollback not confirmed. None
    when paused (rollback.automatic false): then a human decides, the operator does not keep trying."""
    generation = mapping(obj.get("metadata")).get("generation")
    status = mapping(obj.get("status"))
    if status.get("pause") or status.get("phase") == "Paused":
        return None
    for condition in objects(status.get("conditions")):
        if (condition.get("type") == "Progressing" and condition.get("status") == "False"
                and condition.get("reason") == "ProgressDeadlineExceeded"
                and condition.get("observedGeneration") == generation):
            return str(condition.get("message") or "")
    return None


def _older_operator(status: dict[str, Any]) -> bool:
    """Whether an operator older than attempt numbers (HistoryEntry.attempt) wrote the status: its newest entry
    that is not the runtime's carries none."""
    decided = [e for e in objects(status.get("history")) if e.get("event") not in STATUS_REFUSALS]
    return not decided or _numbered(decided[-1]) is None


def _target_unready(status: dict[str, Any]) -> str | None:
    """TargetReady's message when that condition is False (the target does not report itself ready), else None."""
    for condition in objects(status.get("conditions")):
        if condition.get("type") == "TargetReady" and condition.get("status") == "False":
            return text(condition.get("message"), "(no message)")
    return None


def _events_command(namespace: str | None, name: str) -> str:
    """The kubectl command listing a rollout's Events, which outlive it."""
    return (f"kubectl get events -n {namespace} --field-selector involvedObject.kind=ModelRollout,"
            f"involvedObject.name={name}")


def _target_check(obj: dict[str, Any]) -> str | None:
    """The kubectl command that shows the rollout's target (always in the rollout's namespace), or None."""
    target = mapping(mapping(obj.get("spec")).get("target"))
    namespace = text(mapping(obj.get("metadata")).get("namespace"), "?")
    for key, resource, field in (("kserve", "inferenceservice", "inferenceService"),
                                 ("seldonDeployment", "seldondeployment", "name"),
                                 ("seldonExperiment", "experiments.mlops.seldon.io", "name")):
        name = mapping(target.get(key)).get(field)
        if isinstance(name, str) and name:
            return f"kubectl get {resource} -n {namespace} {name} -o yaml"
    return None


def _seconds_since_written(status: dict[str, Any]) -> float | None:
    """Seconds since the operator last wrote to the status: its newest history entry or condition transition."""
    stamps = [e.get("time") for e in objects(status.get("history"))[-1:]]
    stamps += [c.get("lastTransitionTime") for c in objects(status.get("conditions"))]
    times = []
    for stamp in stamps:
        try:
            times.append(parse_time(stamp))
        except (AttributeError, TypeError, ValueError):  # absent or not a time: says nothing
            continue
    return (datetime.now(UTC) - max(times)).total_seconds() if times else None


def _gate_verdict_lines(verdicts: list[dict[str, Any]], outcome: Callable[[str], str], shows_all: str) -> list[str]:
    """The gate's verdicts (well_formed), at most GATE_VERDICTS_SHOWN, what did not pass first: the check behind a
    failed gate must not hide among passes. `shows_all` names the command that shows the rest."""
    ordered = sorted(verdicts, key=lambda v: v["outcome"] == "pass")
    lines = [f"  {outcome(v['outcome']):<14} {v['name']}: {v['reason']}" for v in ordered[:GATE_VERDICTS_SHOWN]]
    if len(ordered) > GATE_VERDICTS_SHOWN:
        # Status keeps a bounded number of verdicts: a `more checks ...` verdict counts the rest, which only the
        # MLflow evidence run holds (the candidate version's modelrollout.gate.run_id tag names it).
        where = ("the gate's MLflow evidence run has every check in gate-report.json (the candidate version's "
                 "`modelrollout.gate.run_id` tag names the run)"
                 if any(str(v["name"]).startswith("more checks ") for v in verdicts) else f"{shows_all} shows them all")
        lines.append(f"  … and {len(ordered) - GATE_VERDICTS_SHOWN} more ({where})")
    return lines


def _numbered(entry: dict[str, Any]) -> int | None:
    """The entry's attempt number (HistoryEntry.attempt), or None: recorded by an operator that numbered none."""
    attempt = entry.get("attempt")
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None


def _attempt_start(status: dict[str, Any]) -> int:
    """Where the current attempt begins in status.history: the entries of the newest entry's attempt, back to the
    first entry of another one (or to one recorded without a number: its attempt is not known, so it is left out).
    The runtime's StatusRejected entries carry no number and are passed over. Numbers are on every entry, so the
    answer stays right however far the history (HISTORY_LIMIT) was trimmed.

    A status an older operator wrote (its newest entry has no number): a resolved attempt (a candidate) begins at
    its resolution; an unresolved one after an earlier resolution is not known to begin anywhere: none of it is told."""
    history = objects(status.get("history"))
    # The newest entry an operator decided on (not the runtime's): numbered, or the status is an older operator's.
    newest = next((i for i in reversed(range(len(history))) if history[i].get("event") not in STATUS_REFUSALS), None)
    if newest is not None and _numbered(history[newest]) is not None:
        start = newest
        current = _numbered(history[start])
        while start > 0 and (_numbered(history[start - 1]) == current or (
                _numbered(history[start - 1]) is None and history[start - 1].get("event") in STATUS_REFUSALS)):
            start -= 1
        return start
    starts = [i for i, e in enumerate(history) if e.get("event") in ATTEMPT_STARTS]
    if _version(status, "candidate") is not None:
        return starts[-1] if starts else 0
    return len(history) if starts else 0


def _hold(status: Any) -> dict[str, Any]:
    """status.promotion.hold while the promotion is held (engine _record_hold), else empty: an older operator's
    status records none, and a hold is then not told (its message still says it)."""
    status = mapping(status)
    if status.get("phase") != "Promoting":
        return {}
    hold = mapping(mapping(status.get("promotion")).get("hold"))
    return hold if hold.get("reason") else {}


def _ended_hold_detail(entry: dict[str, Any]) -> str:
    """An entry quoting a hold (StableMismatch, a command refused during it) told once the hold has ended: without
    the advice, the way out of a hold that is no more (following it would undo what happened since)."""
    detail, advice = text(entry.get("detail")), entry.get("advice")
    if isinstance(advice, str) and advice and detail.endswith(advice):
        ended = "the promotion was held; that hold has ended" if entry.get("event") == "StableMismatch" \
            else "that hold has ended"
        return f"{detail[:-len(advice)].rstrip(': ')} ({ended})"
    if _numbered(entry) is None:  # an older operator's entry: any advice is not kept apart, so none is shown
        return f"(recorded by an older operator: `{program()} history` shows its detail, which may advise on a hold " \
               "that has ended)"
    return detail


def _warnings(status: dict[str, Any], holding: bool = False) -> list[str]:
    """The current attempt's Warning entries (as its Events are posted) before the last one, which is told apart.
    A StableMismatch hold's advice is kept only while the promotion is `holding`."""
    history = objects(status.get("history"))
    found = [e for e in history[_attempt_start(status):-1] if is_warning(e["event"])]
    if not found:
        return []
    lines = ["Warnings in this attempt:"]
    if len(found) > WARNINGS_SHOWN:
        lines.append(f"  … {len(found) - WARNINGS_SHOWN} earlier (`{program()} history` shows them)")
    for e in found[-WARNINGS_SHOWN:]:
        lines.append(f"  {e['event']} at {e['time']}: {_told_detail(e, holding)}")
    return lines


def told_detail(entry: dict[str, Any], status: Any) -> str:
    """An entry's detail as explain tells it in this status (the HTML page's table too): a hold's advice only while
    the promotion is held."""
    # An unnumbered entry is an older operator's, so of no hold this operator records (review s32r5).
    current = _numbered(entry) is not None and _numbered(entry) == mapping(status).get("attempt")
    return _told_detail(entry, bool(_hold(status)) and current)


def _told_detail(entry: dict[str, Any], holding: bool) -> str:
    """An entry's detail as explain tells it: a hold's advice (a StableMismatch entry's, or any entry's that keeps
    one apart) only while the promotion is `holding`."""
    if holding or (entry["event"] != "StableMismatch" and not entry.get("advice")):
        return entry["detail"]
    return _ended_hold_detail(entry)


def _failed_pause_next(reason: str, where: str, stable: str | None) -> str | None:
    """The `Next:` of a rollout paused after a failed or inconclusive check (automatic rollback off, or
    onInconclusive pause): the commands `get --watch` names (FAILED_PAUSES), each with what it does here (engine
    _promote_command, _retry_command), pasteable. None for a pause that is no check's."""
    commands = FAILED_PAUSES.get(reason) or WATCHED_PAUSES.get(reason)
    if commands is None:
        return None
    check = reason.removesuffix("Failed").removesuffix("Inconclusive").removesuffix("Exceeded")
    said = {"promote": PROMOTE_WORDS.get(check, "goes on despite it"),
            "retry": RETRY_WORDS.get(check, "tries it again"),
            "rollback": f"puts traffic back on {f'version {stable}' if stable else 'stable'}"}
    chosen = [f"`{program()} {command} {where}` {said[command]}" for command in said if command in commands]
    offered = ", ".join(chosen[:-1]) + f", or {chosen[-1]}" if len(chosen) > 1 else chosen[0]
    judged = " (the operator keeps judging it meanwhile)" if reason in WATCHED_PAUSES else ""
    return f"Next: paused for a human after the {reason} check{judged}: {offered}."


def _withdraw(namespace: str, name: str) -> str:
    """How to take back a command the operator has not handled: its annotation removed."""
    return f"withdraw it: `kubectl annotate modelrollout -n {namespace} {name} {COMMAND_ANNOTATION}-`"


def _pending_line(obj: dict[str, Any]) -> str | None:
    """The command written and not handled yet, and how to withdraw it (printable), or None."""
    pending = pending_command(obj)
    if pending is None:
        return None
    meta = mapping(obj.get("metadata"))
    return printable(f"{pending.label} by {pending.actor} (id {pending.id}) is not handled by the operator yet (is it "
                     f"running?); {_withdraw(text(meta.get('namespace'), '?'), text(meta.get('name'), '?'))}")


def _hold_account(hold: dict[str, Any]) -> str:
    """Since when the promotion is held and what ends it at progressDeadline unless the hold ends first, as the
    engine recorded it (status.promotion.hold)."""
    since = f" since {text(hold['since'])}" if hold.get("since") else ""
    when = f"progressDeadline ({text(hold['deadline'])})" if hold.get("deadline") else "progressDeadline"
    if hold.get("rollsBack") is False:
        outcome = "paused for a human (spec.rollback.automatic is false)"
    else:
        outcome = "rolled back" + ("" if hold.get("rejectCandidate", True) else " untagged (not tagged rejected)")
    return f"The promotion is held{since}: unless the hold ends first, it is {outcome} at {when}."


def _kubernetes_answer(what: str, answer: Any, kind: str) -> dict[str, Any]:
    """`answer` when it is what the API server sends; a proxy's login page (HTTP 200, HTML) is refused."""
    if not isinstance(answer, dict) or answer.get("kind") != kind:
        raise CliError(f"{what}: the server did not answer as a Kubernetes API server (no {kind} in its answer; "
                       "a proxy's login page?)")
    return answer


def analysis_verdicts(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The last verdict of each metric: `status.analysis.metrics` (older writers used `verdicts`)."""
    analysis = status.get("analysis") or {}
    return list(analysis.get("metrics") or analysis.get("verdicts") or [])


def _version(status: dict[str, Any], which: str) -> str | None:
    version = mapping(status.get(which)).get("version")
    return text(version) if version not in (None, "") else None


def _rollback_account(obj: dict[str, Any], candidate: str | None, stable: str | None) -> list[str]:
    """What the rollback did and what it has not confirmed yet: only confirmed steps are told as done."""
    status = obj["status"]
    rollback = mapping(status.get("rollback"))
    if not rollback:
        return []
    who = text(rollback.get("actor"), "the controller")
    why = text(rollback.get("reason"), "?")
    done = bool(rollback.get("recoveredAt"))
    history = objects(status.get("history"))
    # This attempt's entries: what the rollback could not do.
    said = {e.get("event") for e in history[_attempt_start(status):]}
    back_to = f"version {stable}" if stable else "stable"
    if rollback.get("trafficKept"):
        # Nothing to put traffic back on; the alias and the rejected tag are still the rollback's to settle.
        lines = [f"It was stopped by {who} because {why}. Version {candidate or '?'} still serves all traffic: "
                 "there was no earlier version to put back. Next: deploy a fixed version."]
    else:
        lines = [f"It {'was' if done else 'is being'} rolled back by {who} because {why}."]
        if rollback.get("trafficConfirmedAt"):
            at = text(rollback["trafficConfirmedAt"])
            serving = rollback.get("servingWhenConfirmed")
            if stable and serving == stable:
                lines.append(f"Traffic is back on {back_to} (confirmed at {at}).")
            else:  # off the candidate, and only that: the target did not report stable serving (or an older status)
                # No version recorded: the target named none, or an older operator (without the field) wrote it.
                reported = f"the target reported version {text(serving)} serving" if serving not in (None, "") \
                    else "the status records no version serving then (the target named none, or an older operator " \
                         "wrote it)"
                versus = f"so {back_to} is not confirmed serving: check it" if stable \
                    else "and no earlier version is on record"
                lines.append(f"Traffic is off version {candidate or '?'} (confirmed at {at}); {reported}, "
                             f"{versus} (TrafficRestored says what was seen).")
        else:
            # All of it once promoted, by this rollout or by hand (the engine's message says which it restores).
            promoted = (rollback.get("afterPromotion") is True or status.get("canaryWeight") == 100
                        or rollback.get("candidateServedAsStable") is True)
            unready = _target_unready(status)
            if unready is None:
                lines.append(f"Traffic is NOT yet confirmed back on {back_to}: the candidate may still serve "
                             f"{'all' if promoted else 'some'} of it.")
            elif not promoted and status.get("canaryWeight") == 0 and not _older_operator(status):
                # The engine holds the confirmation until stable is reported serving and ready (traffic_held):
                # the candidate is off, and what is wrong is stable, not the candidate. An older operator's status
                # does not record a candidate serving as stable (candidateServedAsStable): 0% proves nothing there.
                # 0% is what the target shows written; a target refusing the write (Seldon v2) serves its last split.
                lines.append(f"The target shows version {candidate or '?'} at 0% but does not report {back_to} "
                             "serving and ready: users may be getting errors, or may still be on the split it last "
                             f"put in effect. TargetReady says: {unready}")
            else:  # a target not ready has not shown the weights in effect (the weight shown is its last ready read)
                lines.append(f"Traffic is NOT yet confirmed back on {back_to}: the candidate may still serve "
                             f"{'all' if promoted else 'some'} of it. The target does not report itself ready, so "
                             f"users may be getting errors. TargetReady says: {unready}")
            if unready is not None and not _stuck(obj) and (check := _target_check(obj)):
                # Past progressDeadline explain names the target already.
                lines.append(f"Next: check the target: `{check}`; the rollback is confirmed once it reports "
                             f"{back_to} serving and ready.")
    alias = text(obj["spec"]["model"].get("stableAlias"), "the stable alias")
    alias = f"@{alias}" if obj["spec"]["model"].get("stableAlias") else alias
    if rollback.get("aliasLeftOn"):
        left = text(rollback["aliasLeftOn"])
        lines.append(f"{alias} was left on version {left}, where it was moved outside this rollout while it ran.")
        serving = rollback.get("servingWhenConfirmed")
        serving = text(serving) if serving not in (None, "") else None
        if rollback.get("trafficConfirmedAt") and not rollback.get("trafficKept") and stable and stable != left:
            # A retry would take the alias's version as stable, not the one traffic is on. Traffic is said to be
            # on a version only as the target reported it when the rollback confirmed it (servingWhenConfirmed).
            if serving == stable:
                lines.append(f"Next: the registry names version {left} while traffic is on version {stable}: "
                             f"point {alias} at the version you mean before a retry.")
            elif serving is None:
                lines.append(f"Next: the registry names version {left} and no version is confirmed serving: check "
                             f"the target, then point {alias} at the version you mean before a retry.")
            elif serving != left:
                lines.append(f"Next: the registry names version {left} while the target reported version {serving} "
                             f"serving: point {alias} at the version you mean before a retry.")
    elif "AliasNotRestored" in said:
        lines.append(f"{alias} could NOT be put back on {back_to}: it no longer exists in the registry "
                     "(AliasNotRestored says where the alias is).")
    elif rollback.get("aliasConfirmedAt"):
        where = f"on version {stable}" if stable else f"off version {candidate or '?'}"
        lines.append(f"{alias} is confirmed {where} in the registry.")
    elif stable:
        lines.append(f"{alias} is not yet confirmed in the registry.")
    else:  # nothing to put it back on: it is taken off the candidate
        lines.append(f"{alias} is not yet confirmed off version {candidate or '?'} in the registry: it may still "
                     "name it.")
    if "CandidateNotTagged" in said:
        lines.append(f"Version {candidate or '?'} is NOT tagged rejected: the registry did not take the tag "
                     "(CandidateNotTagged); tag it by hand so that it is not rolled out again.")
    elif rollback.get("rejectCandidate", True):
        tagged = "is tagged" if rollback.get("tagConfirmedAt") else "is not yet tagged"
        lines.append(f"Version {candidate or '?'} {tagged} rejected in the registry.")
    seconds = rollback.get("timeToRecoverSeconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        lines.append(f"Recovery took {seconds:.2f} s from the decision.")
    return lines


def _api_message(exc: ApiException, configuration: client.Configuration) -> str:
    """The Status message, without the credentials of `configuration` (a proxy in front of the API server may echo
    the Authorization header): redacted before it is cut (a cut token would not be found)."""
    try:
        message = str(json.loads(exc.body or "{}").get("message", ""))
    except (ValueError, AttributeError):
        return ""
    return without_kube_credentials(message, configuration)[:300]


def _step(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    if isinstance(status.get("step"), str):
        return str(status["step"])
    total = len(((obj.get("spec") or {}).get("canary") or {}).get("steps") or [])
    current = status.get("currentStep")  # a status written before `step` existed
    return step_fraction(current, total) if isinstance(current, int) else f"-/{total}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _watch_stamp() -> str:
    """When the watch read this, in UTC as history, explain and Events print their times (whole seconds): a local
    time without date or zone could not be compared with them."""
    return format_time(_utc_now().replace(microsecond=0))


def _percent(value: Any) -> str:
    return f"{value}%" if isinstance(value, int) else "-"


def _weight_note(spec: dict[str, Any], status: dict[str, Any]) -> str:
    """What set the weight shown: once the promotion has sent the candidate all traffic (promotion.targetConfirmedAt)
    the promotion did, not the last step; once a rollback started (status.rollback), neither did."""
    if mapping(status.get("rollback")):  # RollingBack or RolledBack: no step set it (explain tells the rollback's)
        return ""
    if mapping(status.get("promotion")).get("targetConfirmedAt"):
        return " (promoted)" if status.get("canaryWeight") == 100 else ""
    steps = (spec.get("canary") or {}).get("steps") or []
    current = status.get("currentStep")
    if not isinstance(current, int):  # no step yet: nothing to claim one set the weight
        return ""
    weights = [s["setWeight"] for s in steps[:current] if "setWeight" in s]
    before = f"{weights[-1]}%" if weights else None
    # The engine moves currentStep past a setWeight step only once the target has taken its weight: the step at
    # currentStep has set nothing yet (held, waiting for the target, or past its progressDeadline).
    waiting = steps[current] if 0 <= current < len(steps) else None
    if isinstance(waiting, dict) and "setWeight" in waiting:
        label = _step({"spec": spec, "status": status})
        set_before = f"the steps before it set {before}" if before else "no step before it set a weight"
        return f" (step {label} waits for {waiting['setWeight']}%; {set_before})"
    return f" (set by the last step: {before or '0%'})"


def dump(obj: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        print(json.dumps(obj, indent=2, default=str), file=out)
    else:
        print(yaml.safe_dump(obj, sort_keys=False), file=out, end="")
