"""The decision function: (spec, status, observations, now) -> actions + new status.

Pure: no I/O, no clock, no randomness. Everything it needs to remember goes into the returned status,
so an operator killed at any instant resumes from the last written status: actions are derived from
that status again with the same ids, and an effect counts as done only once it is observed.

Flow: Pending (resolve, stage at 0%) -> Gating -> Progressing/Paused (steps) -> Promoting -> Baking
-> Succeeded; every failure -> RollingBack -> RolledBack (or Paused for a human when rollback is
not automatic). Staging that never gets ready, or a target that never shows up -> Failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.api.commands import Command, CommandAction
from controller.api.durations import format_duration
from controller.api.serialization import format_time, to_json
from controller.api.spec import (
    AnalysisStep,
    GoldenThresholds,
    MetricSpec,
    ModelRolloutSpec,
    OnInconclusive,
    PauseStep,
    SetWeightStep,
    SpecError,
)
from controller.api.status import (
    ACTION_LOG_LIMIT,
    CONTROLLER_ACTOR,
    HANDLED_COMMANDS_LIMIT,
    STATUS_REJECTED,
    TERMINAL_PHASES,
    ActionRecord,
    ActionState,
    AnalysisMode,
    AnalysisStatus,
    Condition,
    ConditionStatus,
    ConditionType,
    GateStatus,
    HistoryEntry,
    HoldReason,
    HoldStatus,
    ModelRolloutStatus,
    PauseReason,
    PauseStatus,
    Phase,
    PromotionStatus,
    RetryState,
    RollbackCause,
    RollbackStatus,
    VersionRef,
    append_history,
    step_fraction,
)
from controller.engine.actions import (
    Action,
    PromoteCandidate,
    RemoveAlias,
    RestoreStable,
    RunAnalysis,
    RunGate,
    SetAlias,
    SetCanaryWeight,
    StageCandidate,
    TagRejected,
    UnstageCandidate,
    history_days_back,
    history_every_days,
)
from controller.engine.claims import TargetClaim
from controller.engine.evidence_bounds import ROLLBACK_EVIDENCE_BYTES, VERDICT_EVIDENCE_BYTES, bounded_evidence
from controller.engine.observations import (
    PENDING_REGISTRATION,
    READY,
    REJECTED_TAG,
    REJECTED_TIME_TAG,
    AdapterError,
    AdapterErrorKind,
    Observations,
    RegistryObservation,
    ResolvedVersion,
    TargetObservation,
    rejection_time,
)
from controller.redaction import redacted_url
from controller.text_bounds import WORDS_MAX, cut_text
from controller.verdict import DATA_LOST, DATASET_INTEGRITY, MEASUREMENT_OUTAGES, Outcome, Verdict, combine

# How soon to look again while waiting for an effect to show up on the target or in the registry.
CONFIRM_POLL = timedelta(seconds=1)
RESOLVING_POLL_MAX = timedelta(seconds=30)
# An ended rollout whose candidate is a registry alias looks this often for the alias naming another version,
# which starts a release (as it does mid-rollout), not whenever something else wakes the rollout.
ALIAS_POLL = timedelta(seconds=30)
# A pending action is handed out again after this long without its effect showing up (all are idempotent),
# so a lost action is retried without every decision of one reconcile repeating it.
RESEND_AFTER = timedelta(seconds=10)
BACKOFF_BASE = timedelta(seconds=2)
BACKOFF_MAX = timedelta(minutes=5)
# A gate run the operator restarted under this many times in a row ends inconclusive: it may be what takes the
# operator down (out of memory), and running it again on every start would crash-loop every rollout.
GATE_INTERRUPTIONS_LIMIT = 3
# Bounds the transitions one decision may chain (e.g. weight confirmed -> analysis starts).
_MAX_TRANSITIONS = 200

CONDITION_MESSAGE_MAX = 32768
COMMAND_REFUSAL_MAX = 512  # a refused command's reason, which may quote an annotation of any size
# How a success that moved nothing ends its detail: the stable alias already named the candidate, but the
# target said it served another version.
NOTHING_ROLLED_OUT = "nothing was rolled out"
# Written by the registry's promote() once the alias moved, last of its record (controller.registry.types takes
# the name from here): the promotion is confirmed when it reads as its own start time (rejection_time's format).
PROMOTED_TIME_TAG = "modelrollout.promoted.time"
# How a held promotion's message begins (_promoting's waits): a command refused meanwhile repeats the hold.
HOLDING_PROMOTION = "Holding the promotion"
# The history entries a resolved attempt begins with (_resolve, _already_stable).
_ATTEMPT_RESOLUTIONS = frozenset({"Resolved", "AlreadyStable"})
# Phases only reached once the candidate is resolved (a rollback may come before resolution).
_PHASES_WITH_A_CANDIDATE = frozenset({Phase.GATING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING, Phase.BAKING})

# Paused on an inconclusive verdict with the version still serving: it is judged on (_watch_while_paused).
_WATCHED_PAUSES = frozenset({PauseReason.ANALYSIS_INCONCLUSIVE, PauseReason.BAKE_INCONCLUSIVE})
_FAILURE_PAUSE = {
    RollbackCause.GATE_FAILED: PauseReason.GATE_FAILED,
    RollbackCause.GATE_INCONCLUSIVE: PauseReason.GATE_INCONCLUSIVE,
    RollbackCause.ANALYSIS_FAILED: PauseReason.ANALYSIS_FAILED,
    RollbackCause.ANALYSIS_INCONCLUSIVE: PauseReason.ANALYSIS_INCONCLUSIVE,
    RollbackCause.BAKE_FAILED: PauseReason.BAKE_FAILED,
    RollbackCause.BAKE_INCONCLUSIVE: PauseReason.BAKE_INCONCLUSIVE,
    RollbackCause.PROGRESS_DEADLINE_EXCEEDED: PauseReason.PROGRESS_DEADLINE_EXCEEDED,
}
# Effect actions carried out by the registry (the rest by the target).
_REGISTRY_ACTIONS = frozenset({"SetAlias", "RemoveAlias", "TagRejected"})
# The target or registry refused the request itself (403, 422): a missed deadline then says nothing of the model.
_REFUSALS = frozenset({AdapterErrorKind.FORBIDDEN, AdapterErrorKind.INVALID})
# The ledger records (by the id part after the attempt) each phase confirms; a paused rollout counts as the phase
# it resumes. Gating, baking and the ended phases confirm none.
_PHASE_ACTIONS = {Phase.PENDING: "stage:", Phase.PROGRESSING: "step-", Phase.PROMOTING: "promote:",
                  Phase.ROLLING_BACK: "rollback:"}
# The rollback evidence's key for the new candidate an abort kept from starting (_ANY_CANDIDATE: not known then,
# so whatever is waiting; never None, which the status leaves out).
_NOT_STARTED = "not_started"
_ANY_CANDIDATE = "*"
# ... and the new candidate a rollback makes way for, as known when it started (the registry may be down later).
_SUPERSEDED_BY = "superseded_by"
_INCONCLUSIVE_PAUSE = {
    RollbackCause.GATE_INCONCLUSIVE: PauseReason.GATE_INCONCLUSIVE,
    RollbackCause.ANALYSIS_INCONCLUSIVE: PauseReason.ANALYSIS_INCONCLUSIVE,
    RollbackCause.BAKE_INCONCLUSIVE: PauseReason.BAKE_INCONCLUSIVE,
}


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]  # in order: traffic first, then registry, then measurements
    status: ModelRolloutStatus
    requeue_after: timedelta | None  # None: only on the next change or command
    events: tuple[HistoryEntry, ...] = ()  # history entries added by this decision


def decide(spec: ModelRolloutSpec, status: ModelRolloutStatus | None, observations: Observations,
           now: datetime) -> Decision:
    """Decide what to do next. `now` must be timezone-aware (UTC)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return _Decider(spec, _hold_as_written_now(_without_recorded_secrets(status or ModelRolloutStatus())),
                    observations, now).run()


def holds_deletion(spec: ModelRolloutSpec, status: ModelRolloutStatus | None) -> bool:
    """Whether a delete must wait (revertOnDeletion): while the rollout has not ended. An ended one holds
    nothing, so an operator uninstalled since never blocks deleting it (or its namespace); a new attempt is
    held again before it acts."""
    phase = status.phase if status is not None else Phase.PENDING
    return spec.rollback.revert_on_deletion and phase not in TERMINAL_PHASES


def _entry_attempt(status: ModelRolloutStatus) -> int:
    """The attempt a history entry recorded now belongs to: the resolved one, or else the one to be resolved next
    (a retry, a restart, the first attempt), which begins with the entries before its resolution."""
    return status.attempt if status.candidate is not None else status.attempt + 1


def ignore_command(status: ModelRolloutStatus, key: str, detail: str, now: datetime, actor: str = CONTROLLER_ACTOR,
                   command_id: str | None = None, advice: str | None = None) -> ModelRolloutStatus:
    """`status` with a command that will not be carried out recorded once: its key in handledCommands, so it is
    never carried out later, and a CommandIgnored history entry saying why. `advice`, how `detail` ends (a held
    promotion's way out), is kept apart too (HistoryEntry.advice) and whole when the detail is cut."""
    if key in status.handled_commands:
        return status
    detail = _one_line(detail)
    advice = _one_line(advice) if advice else None
    if advice is None or not detail.endswith(advice) or len(advice) > COMMAND_REFUSAL_MAX - 40:
        advice = None
        if len(detail) > COMMAND_REFUSAL_MAX:  # the cut marked (review s32r4)
            detail = detail[:COMMAND_REFUSAL_MAX - 1] + "…"
    elif len(detail) > COMMAND_REFUSAL_MAX:  # the cut marked, and the advice after it as it was (review s32r3)
        detail = detail[:COMMAND_REFUSAL_MAX - len(advice) - 3] + "…: " + advice
    entry = HistoryEntry(time=now, event="CommandIgnored", detail=detail, actor=actor, command_id=command_id,
                         attempt=_entry_attempt(status), advice=advice)
    return dataclasses.replace(status, handled_commands=_handled(status, key),
                               history=append_history(status.history, entry, status.events_posted_through))


def _handled(status: ModelRolloutStatus, key: str) -> tuple[str, ...]:
    return (*status.handled_commands, key)[-HANDLED_COMMANDS_LIMIT:]


def reject_spec(status: ModelRolloutStatus | None, error: SpecError, generation: int, now: datetime) -> Decision:
    """What to do with a spec that does not parse (the API server normally refuses it first).

    Nothing running: Failed, naming the field. A rollout in flight: hold everything as it is (no actions)
    and say why, so a typo never strands traffic halfway through a half-understood change. A finished
    rollout whose spec has not changed since (the spec became invalid under a newer operator or its
    settings) keeps its outcome: the refusal says only that it cannot run again.
    """
    return _refuse_to_run(status, "InvalidSpec", str(error), generation, now, fail_idle=True)


# How often a rollout waiting for its target looks again: the rollout that holds it gives no sign when it goes.
TARGET_CONFLICT_RECHECK = timedelta(seconds=30)


def wait_for_target(status: ModelRolloutStatus | None, claim: TargetClaim, holder: str, generation: int,
                    now: datetime) -> Decision:
    """Another ModelRollout is in flight on the same target (see engine/claims.py): this one does nothing until
    that one ends. Unlike an invalid spec it does not fail: it goes on from where it is once the target is free."""
    detail = (f"{claim.path}: ModelRollout {holder!r} is rolling out on {claim} (one rollout at a time per target); "
              "this one waits until it ends")
    decision = _refuse_to_run(status, "TargetConflict", detail, generation, now, fail_idle=False)
    return dataclasses.replace(decision, requeue_after=TARGET_CONFLICT_RECHECK)


def _refuse_to_run(status: ModelRolloutStatus | None, reason: str, detail: str, generation: int, now: datetime, *,
                   fail_idle: bool) -> Decision:
    """Ready=False with `reason`, one history entry (not repeated while the detail holds), no actions.

    fail_idle: a rollout that is not running fails (an invalid spec); else it keeps its phase and waits."""
    status = status or ModelRolloutStatus()
    why = f"invalid spec: {detail}" if fail_idle else f"waiting for the target: {detail}"
    message = _sentence(f"Invalid spec: {detail}" if fail_idle else f"Waiting for the target: {detail}")
    entry = HistoryEntry(time=now, event=reason, detail=detail, attempt=_entry_attempt(status))
    repeated = bool(status.history) and status.history[-1].event == reason and status.history[-1].detail == detail
    history = status.history if repeated else append_history(status.history, entry, status.events_posted_through)
    finished = status.phase in TERMINAL_PHASES and status.observed_generation == generation
    idle = status.phase is Phase.PENDING or (status.phase in TERMINAL_PHASES and not finished)
    if finished:
        ends = "its spec cannot run again" if fail_idle else "nothing new starts"
        message = status.message if repeated else _sentence(f"{status.phase}; {ends}: {detail}")
    elif not idle:
        message = _sentence(f"Holding {status.phase} unchanged: {why}")
    condition = Condition(type=ConditionType.READY, status=ConditionStatus.FALSE, reason=reason,
                          message=message, last_transition_time=now.replace(microsecond=0),
                          observed_generation=generation)
    old = status.condition(ConditionType.READY)
    if old is not None and old.status is ConditionStatus.FALSE:
        condition = dataclasses.replace(condition, last_transition_time=old.last_transition_time)
    conditions = tuple(item if item.type != ConditionType.READY else condition for item in status.conditions)
    if old is None:
        conditions = (condition, *conditions)
    fail = idle and fail_idle
    # A promotion's hold is no more: nothing is decided meanwhile, so no deadline of its ends it either.
    promotion = status.promotion and dataclasses.replace(status.promotion, hold=None)
    new_status = dataclasses.replace(status, phase=Phase.FAILED if fail else status.phase, message=message,
                                     observed_generation=generation, history=history, conditions=conditions,
                                     completed_at=status.completed_at or (now if fail else None),
                                     resolving_since=None if fail else status.resolving_since, promotion=promotion)
    return Decision(actions=(), status=new_status, requeue_after=None, events=() if repeated else (history[-1],))


# Between a gate's request and its count in the exporter: the logger agent's queue and the exporter itself.
GATE_SETTLE_MARGIN = timedelta(seconds=5)


def gate_predictions_scraped_by(gate_completed_at: datetime, scrape_interval: timedelta) -> datetime:
    """When the gate's own predictions (logged like live ones) are surely in Prometheus: a new series shows 0 on
    the first scrape and its count on the next, so two scrapes after the gate, and the margin."""
    return gate_completed_at + 2 * scrape_interval + GATE_SETTLE_MARGIN


class _Decider:
    def __init__(self, spec: ModelRolloutSpec, status: ModelRolloutStatus, observations: Observations,
                 now: datetime) -> None:
        self.spec = spec
        self.status = status
        self.obs = observations
        self.now = now
        self.actions: list[Action] = []
        self.new_history: list[HistoryEntry] = []
        self.requeue: list[timedelta] = []  # "look again after": the soonest wins
        self.polls = False  # asked to look again soon for an effect to show up (dropped while backing off)
        self.slow_poll: timedelta | None = None  # as polls, at this interval (a long wait)
        self.errors: list[str] = []
        self.failed_actions = {failure.action_id: failure.error for failure in observations.action_failures}
        self.waiting = ""  # why the rollout is not moving, for the message
        self.traffic_held = ""  # what keeps a rollback's traffic step from being confirmed, for the message
        self.holding: HoldStatus | None = None  # the promotion's hold this pass (its `since` is set in _finish)
        self.moved = False
        self.judges_errored: set[str] = set()  # "gate" / "analysis": their error condition stays this round
        # As read: a condition set twice in one decision (observed healthy, then a failed action) keeps its time.
        self.conditions_before = {item.type: item for item in self.status.conditions}
        self.ended_on = (status.phase, status.candidate.version if status.candidate else None)  # as read
        # Read holding the promotion (its message says so) with no hold recorded: an older operator's status.
        self.read_held_without_record = (status.phase is Phase.PROMOTING and status.promotion is not None
                                         and status.promotion.hold is None
                                         and status.message.startswith(HOLDING_PROMOTION))

    # --- the loop ------------------------------------------------------------------------------------

    def run(self) -> Decision:
        self._number_older_entries()
        self._observe_generation()
        self._observe_adapters()
        self._record_accepted_sends()
        self._record_action_failures()
        self._repair_status()
        # An abort or rollback names the versions the human saw: applied before a new candidate restarts the
        # attempt (which would leave it nothing to roll back); the new candidate then starts once it is done.
        rollbacks = (CommandAction.ABORT, CommandAction.ROLLBACK)
        for command in self.obs.commands:
            if command.action in rollbacks:
                self._apply_command(command)
        # A rollout being deleted follows no edit (with revertOnDeletion, _follow_deletion rolls back what runs) and
        # refuses every command; what runs goes on (a rollback under way must finish), so no early return.
        following = not self._being_deleted
        if following:
            self._follow_candidate_changes()
            self._follow_dataset_changes()
            self._follow_step_changes()
        elif not self._a_step_runs():
            self._steps_over_within_the_list()
        for command in self.obs.commands:
            if command.action not in rollbacks:
                self._apply_command(command)
        if following:  # again: a retry or promote out of a pause resumes on the old data's gate
            self._follow_dataset_changes()
        self._follow_deletion()
        for _ in range(_MAX_TRANSITIONS):
            self.moved = False
            self.waiting = ""
            self.holding = None
            self._handle_phase()
            if not self.moved:
                break
        self._finish()
        actions = tuple(self._ordered_actions())
        return Decision(actions=actions, status=self.status, requeue_after=self._requeue_after(),
                        events=tuple(self.new_history))

    def _handle_phase(self) -> None:
        phase = self.status.phase
        # Deleted without revertOnDeletion: left as it is, nothing new started; a rollback, promotion or bake under
        # way goes on (it moves no user onto the candidate).
        if self._being_deleted and not self._deleting and phase in (Phase.PENDING, Phase.GATING, Phase.PROGRESSING,
                                                                     Phase.PAUSED):
            self._wait(f"The ModelRollout is being deleted: left as it is in {phase}")
            return
        if phase is Phase.PENDING:
            self._pending()
        elif phase is Phase.GATING:
            self._gating()
        elif phase is Phase.PROGRESSING:
            self._steps()
        elif phase is Phase.PAUSED:
            pause = self.status.pause
            if pause is not None and pause.reason is PauseReason.PAUSE_STEP:
                self._steps()
            elif pause is not None and pause.reason in _WATCHED_PAUSES:
                self._watch_while_paused(pause)
        elif phase is Phase.PROMOTING:
            self._promoting()
        elif phase is Phase.BAKING:
            self._baking()
        elif phase is Phase.ROLLING_BACK:
            self._rolling_back()

    # --- small state helpers -------------------------------------------------------------------------

    def _update(self, **changes: Any) -> None:
        self.status = dataclasses.replace(self.status, **changes)

    def _move(self, phase: Phase, **changes: Any) -> None:
        self._update(phase=phase, **changes)
        self.moved = True

    def _record(self, event: str, detail: str, actor: str = CONTROLLER_ACTOR,
                command_id: str | None = None, advice: str | None = None) -> None:
        entry = HistoryEntry(time=self.now, event=event, detail=_one_line(detail), actor=actor,
                             command_id=command_id, attempt=_entry_attempt(self.status),
                             advice=_one_line(advice) if advice is not None else None)
        history = append_history(self.status.history, entry, self.status.events_posted_through)
        self.new_history.append(history[-1])
        self._update(history=history)

    def _number_older_entries(self) -> None:
        """HistoryEntry.attempt on the entries of a resolved attempt that an older operator recorded unnumbered: from
        its resolution on (all kept entries when that was trimmed away). Entries before it, or of an attempt not
        resolved yet, stay unnumbered: readers then leave them out of the attempt."""
        history = self.status.history
        if self.status.candidate is None or all(entry.attempt is not None for entry in history):
            return
        start = max((index for index, entry in enumerate(history) if entry.event in _ATTEMPT_RESOLUTIONS), default=0)
        if any(entry.attempt not in (None, self._attempt) for entry in history[start:]):
            return
        self._update(history=(*history[:start], *(dataclasses.replace(entry, attempt=self._attempt)
                                                   for entry in history[start:])))

    def _wait(self, why: str, poll: bool = False) -> None:
        self.waiting = why
        self.polls = self.polls or poll

    def _error(self, message: str) -> None:
        self.errors.append(message)

    def _registry(self) -> RegistryObservation | None:
        """The registry observation when it answered this time; None when it did not."""
        registry = self.obs.registry
        return registry if registry is not None and registry.error is None else None

    @property
    def _deadline(self) -> str:
        """How messages name the deadline: "progressDeadline 30m"."""
        return f"progressDeadline {format_duration(self.spec.progress_deadline)}"

    def _deadline_failure(self, what: str, action_id: str, context: str = "",
                          evidence: dict[str, Any] | None = None, *, judged: bool = True) -> None:
        """`what` did not happen in time: a failure like any other (rolled back, or paused for a human).

        The reason quotes the last error of the action waited on, which the ledger holds only while the latest
        send was refused. When the target or registry refused that request itself (403, 422), or it was never
        sent, the model was never judged on it, so it is not tagged rejected; nor when `judged` is False (what
        was waited on says nothing of the model whatever the error)."""
        record = self._ledger(action_id)
        unsent = record is not None and record.sent_at is None
        held = f"; held unsent ({'; '.join(self.errors)})" if unsent and self.errors else ""
        reason = f"{what} within {self._deadline}{context}{held}{self._last_error_note(action_id)}"
        self._failure(RollbackCause.PROGRESS_DEADLINE_EXCEEDED, reason, evidence or {},
                      reject_candidate=self._deadline_rejects(action_id, judged=judged))

    def _deadline_rejects(self, action_id: str, *, judged: bool = True) -> bool:
        """Whether _deadline_failure on `action_id` would tag the candidate rejected, as things stand now."""
        record = self._ledger(action_id)
        error = _ledger_error(record)
        # Held from the first send all along (the target or registry did not answer): nothing was asked either.
        unsent = record is not None and record.sent_at is None
        return not (unsent or not judged or (error is not None and error.kind in _REFUSALS))

    def _last_error_note(self, action_id: str) -> str:
        record = self._ledger(action_id)
        return f"; last error: {record.last_error}" if record is not None and record.last_error else ""

    def _target(self) -> TargetObservation | None:
        target = self.obs.target
        return target if target is not None and target.error is None else None

    @property
    def _deleting(self) -> bool:
        """Deleted with revertOnDeletion: roll back what runs, start nothing new."""
        return self._being_deleted and self.spec.rollback.revert_on_deletion

    @property
    def _being_deleted(self) -> bool:
        """deletionTimestamp set, with or without revertOnDeletion (a foreground delete's finalizer, Argo CD's
        default prune, keeps the object a while): no edit, command or new attempt is taken from it."""
        return self.obs.deleted_at is not None

    @property
    def _attempt(self) -> int:
        return self.status.attempt

    @property
    def _candidate(self) -> VersionRef:
        candidate = self.status.candidate
        assert candidate is not None  # every phase past resolution has one
        return candidate

    def _step_label(self, index: int | None = None) -> str:
        index = self.status.current_step if index is None else index
        return "step " + step_fraction(index or 0, len(self.spec.canary.steps))

    # --- the action ledger ---------------------------------------------------------------------------

    def _ledger(self, action_id: str) -> ActionRecord | None:
        return next((record for record in self.status.actions if record.id == action_id), None)

    def _put_record(self, record: ActionRecord) -> None:
        records = [item for item in self.status.actions if item.id != record.id]
        records.append(record)
        while len(records) > ACTION_LOG_LIMIT:
            # Evict the oldest finished entry; a pending one is still needed for its deadline, and the stage
            # record says whether a rollback has a canary to withdraw.
            stage = f"{self._attempt}:stage:"
            oldest = next((item for item in records if item.state is not ActionState.PENDING
                           and not item.id.startswith(stage)), records[0])
            records.remove(oldest)
        self._update(actions=tuple(records))

    def _due_to_send(self, action_id: str, last_sent: datetime | None, failures: int = 0) -> bool:
        """First time, after an operator restart, or once the resend (or failure backoff) time is up."""
        if action_id in self.failed_actions:
            return False  # it failed moments ago in this very reconcile: the backoff paces the retry
        if last_sent is None or self.obs.resend_pending:
            return True
        # A rollback stuck past progressDeadline (a target that may never heal): resent at the backoff's pace.
        wait = self._backoff(failures) if failures else BACKOFF_MAX if self._target_stuck() else RESEND_AFTER
        if self.now - last_sent >= wait:
            return True
        self.requeue.append(last_sent + wait - self.now)
        return False

    def _request(self, action: Action, detail: str, *, send: bool = True) -> None:
        """Hand out an effect action unless it was confirmed already or was handed out moments ago.

        send=False only records it as pending: its deadline runs (and `retry` renews it) before it can be sent.
        """
        record = self._ledger(action.id)
        if record is not None and record.state is ActionState.CONFIRMED:
            return
        if record is None or record.state is ActionState.ABANDONED:
            record = ActionRecord(id=action.id, type=str(action.type), state=ActionState.PENDING,
                                  issued_at=self.now, updated_at=self.now, detail=detail)
            self._put_record(record)
        if send and self._due_to_send(action.id, record.sent_at, record.attempts - 1):
            self.actions.append(action)
            self._put_record(dataclasses.replace(record, sent_at=self.now, updated_at=self.now))

    def _measure(self, action: Action, last_sent: datetime | None, errors: int) -> bool:
        """Hand out a RunGate / RunAnalysis request; True when it was handed out now.

        `errors`: the judge's errors in a row, kept in its own status (the retry state is cleared by a
        decision that has no result to look at, so it cannot pace a judge)."""
        if self._due_to_send(action.id, last_sent, errors if last_sent else 0):
            self.actions.append(action)
            return True
        return False

    def _confirm(self, action_id: str) -> None:
        record = self._ledger(action_id)
        if record is not None and record.state is not ActionState.CONFIRMED:
            self._put_record(dataclasses.replace(record, state=ActionState.CONFIRMED, updated_at=self.now))

    def _abandon_pending(self, prefix: str = "") -> None:
        """Abandon the pending records (those whose id starts with `prefix`): nothing will confirm them."""
        for record in self.status.actions:
            if record.state is ActionState.PENDING and record.id.startswith(prefix):
                self._put_record(dataclasses.replace(record, state=ActionState.ABANDONED, updated_at=self.now))

    def _pending_since(self, action_id: str) -> datetime:
        record = self._ledger(action_id)
        return record.issued_at if record is not None else self.now

    def _deadline_passed(self, since: datetime) -> bool:
        left = since + self.spec.progress_deadline - self.now
        if left >= timedelta(0):
            # Look again just after the deadline, even while an error backoff would wait longer.
            self.requeue.append(left + timedelta(milliseconds=100))
            return False
        return True

    # --- observing -----------------------------------------------------------------------------------

    def _observe_generation(self) -> None:
        previous = self.status.observed_generation
        generation = self.obs.generation
        # The API server raises a custom resource's generation when it sets deletionTimestamp: no human edit, so
        # nothing to record and no fresh progressDeadline (the deletion's rollback counts from when it starts).
        if previous is not None and previous != generation and not self._being_deleted:
            rollback = self.status.rollback
            failed = self.status.phase is Phase.FAILED
            rejected = rollback is not None and rollback.reject_candidate
            candidate = self.status.candidate
            # A candidate rejected (aborted, or failed a check) is rolled out again only by retry or a new version.
            kept = (f"; not restarted: version {candidate.version} was rejected (retry, or a new version, starts "
                    "again)") if failed and rejected and candidate is not None \
                and self._wanted_candidate() in (None, candidate.version) else ""
            self._record("SpecChanged", f"generation {previous} -> {generation}{kept}")
            self._update(resolving_since=None)  # a human acted: progressDeadline counts afresh, as for a Deployment
            if failed and not rejected:
                # A fixed spec (e.g. the right target name) gets a fresh attempt without a command.
                self._restart("spec changed after failure")
        self._update(observed_generation=generation)

    def _a_step_runs(self) -> bool:
        pause = self.status.pause
        return self.status.current_step is not None and self.status.phase in (Phase.PROGRESSING, Phase.PAUSED) \
            and self.status.promotion is None \
            and (pause is None or pause.resume_phase in (None, Phase.PROGRESSING))

    def _steps_over_within_the_list(self) -> None:
        """No step is running (the steps are over, or not begun): over, in a shorter list, they are over at its end
        (never a step past it). Also for a rollout being deleted, which follows no edit otherwise (review s33)."""
        index = self.status.current_step
        if index is not None and index > len(self.spec.canary.steps):
            self._update(current_step=len(self.spec.canary.steps))

    def _follow_step_changes(self) -> None:
        """The step index means nothing in another list of steps: a changed list starts again from its first
        step, as Argo Rollouts does (never "past the end, so promote", never judge one weight as another)."""
        signature = steps_signature(self.spec.canary.steps)
        previous = self.status.steps_signature
        if previous == signature:
            return
        self._update(steps_signature=signature)
        index = self.status.current_step
        pause = self.status.pause
        if previous is None or index is None or not self._a_step_runs():
            self._steps_over_within_the_list()
            return
        first = step_fraction(0, len(self.spec.canary.steps))
        for record in self.status.actions:  # the new steps' weights are sent again, even one set before
            if record.id.startswith(f"{self._attempt}:step-"):
                self._put_record(dataclasses.replace(record, state=ActionState.ABANDONED, updated_at=self.now))
        if self.status.phase is Phase.PROGRESSING or (pause is not None and pause.reason is PauseReason.PAUSE_STEP):
            self._record("StepsChanged", f"spec.canary.steps changed at step {index + 1}: starting again from {first}")
            self._move(Phase.PROGRESSING, current_step=0, pause=None, analysis=None)
        else:  # waiting for a human: still waiting, and a resume starts the new steps from the first
            self._record("StepsChanged", f"spec.canary.steps changed at step {index + 1}: once resumed, the steps "
                                         f"start again from {first}")
            self._update(current_step=0, pause=dataclasses.replace(pause, steps_changed=True) if pause else None)

    def _observe_adapters(self) -> None:
        registry = self.obs.registry
        if registry is not None:
            if registry.error is not None:
                self._set_condition(ConditionType.REGISTRY_AVAILABLE, ConditionStatus.FALSE,
                                    f"Registry{registry.error.kind}", registry.error.message)
                self._error(f"registry: {registry.error.message}")
            else:
                self._set_condition(ConditionType.REGISTRY_AVAILABLE, ConditionStatus.TRUE,
                                    "RegistryReachable", "The model registry answered.")
        target = self.obs.target
        if target is None:
            return
        if target.error is not None:
            self._set_condition(ConditionType.TARGET_READY, ConditionStatus.FALSE,
                                f"Target{target.error.kind}", f"{self.spec.target.description}: "
                                f"{target.error.message}")
            self._error(f"target: {target.error.message}")
            return
        candidate = self.status.candidate
        staged = candidate is not None and target.canary_version == candidate.version
        if not target.ready:
            self._set_condition(ConditionType.TARGET_READY, ConditionStatus.FALSE, "TargetNotReady",
                                target.detail or f"{self.spec.target.description} is not ready.")
        elif staged and not target.canary_ready:
            self._set_condition(ConditionType.TARGET_READY, ConditionStatus.FALSE, "CandidateNotReady",
                                target.detail or f"Candidate {target.canary_version} is not ready.")
        else:
            # Ready, yet what the router saw wrong stays said (Seldon v2: another Model carrying weight, maybe the
            # candidate renamed by hand, which it cannot tell: it does not read Models).
            self._set_condition(ConditionType.TARGET_READY, ConditionStatus.TRUE, "TargetReady",
                                _sentence(f"{self.spec.target.description} is ready"
                                          + (f"; {target.detail}" if target.detail else "")))
        self._update(canary_weight=self._observed_candidate_weight(target))

    def _observed_candidate_weight(self, target: TargetObservation) -> int:
        candidate = self.status.candidate
        if candidate is None:
            return 0
        if target.stable_version == candidate.version and not target.canary_weight:
            return 100
        if target.canary_version == candidate.version:
            return target.canary_weight or 0
        return 0

    def _record_accepted_sends(self) -> None:
        """A send the operator carried out without an error was accepted: an earlier refusal no longer counts.
        Cleared only once the answer is known (not when the resend is decided: a kill before it goes out must
        leave the refusal on record)."""
        accepted = set(self.obs.actions_done) - set(self.failed_actions)
        if any(item.id in accepted and item.last_error for item in self.status.actions):
            # In place: the ledger's order is its eviction order.
            self._update(actions=tuple(dataclasses.replace(item, last_error=None, refused_since=None)
                                       if item.id in accepted else item for item in self.status.actions))

    def _record_action_failures(self) -> None:
        for action_id, error in self.failed_actions.items():
            record = self._ledger(action_id)
            if record is not None:
                self._put_record(dataclasses.replace(record, attempts=record.attempts + 1,
                                                     last_error=_describe_error(error), updated_at=self.now,
                                                     refused_since=_refused_since(record, error, self.now)))
                self._action_condition(record, error)
            self._error(f"{action_id}: {error.message}")

    def _action_condition(self, record: ActionRecord, error: AdapterError) -> None:
        """TargetReady or RegistryAvailable False with the words of whoever refused the action."""
        registry_side = record.type in _REGISTRY_ACTIONS
        condition = ConditionType.REGISTRY_AVAILABLE if registry_side else ConditionType.TARGET_READY
        prefix = "Registry" if registry_side else "Target"
        self._set_condition(condition, ConditionStatus.FALSE, f"{prefix}{error.kind}",
                            f"{record.type} {record.detail} failed: {error.message}")

    def _failed_pending(self) -> list[ActionRecord]:
        """Pending actions whose latest send failed and that this phase can still confirm, the most recently
        updated last: another phase's pending record (one a transition left behind) is never confirmed."""
        phase = self.status.phase
        if phase is Phase.PAUSED:
            pause = self.status.pause
            phase = (pause.resume_phase if pause is not None else None) or Phase.PROGRESSING
        part = _PHASE_ACTIONS.get(phase)
        if part is None:
            return []
        prefix = f"{self._attempt}:{part}"
        failed = [item for item in self.status.actions
                  if item.state is ActionState.PENDING and item.last_error and item.id.startswith(prefix)]
        return sorted(failed, key=lambda item: item.updated_at)

    def _ledger_conditions(self) -> None:
        """Keep a failed action's condition False until it is confirmed or a send of it is accepted: the failure
        reaches only the decision right after it, and the next one (woken by that very status write) sees a
        healthy observation."""
        for record in self._failed_pending():
            adapter = self.obs.registry if record.type in _REGISTRY_ACTIONS else self.obs.target
            error = _ledger_error(record)
            if error is not None and (adapter is None or adapter.error is None):  # an adapter error is newer
                self._action_condition(record, error)

    # --- candidate changes and restarts --------------------------------------------------------------

    def _wanted_candidate(self) -> str | None:
        if self.spec.model.version is not None:
            return self.spec.model.version
        registry = self._registry()
        if registry is not None and registry.candidate is not None:
            return registry.candidate.version
        return None  # alias not resolvable now: keep going with what we have

    def _follow_candidate_changes(self) -> None:
        current = self.status.candidate
        wanted = self._wanted_candidate()
        if current is None or wanted is None or wanted == current.version:
            return
        named = f" (@{self.spec.model.alias} names it now)" if self.spec.model.alias is not None else ""
        detail = f"candidate {wanted}{named} replaces {current.version} (generation {self.obs.generation})"
        phase = self.status.phase
        rollback = self.status.rollback
        held = rollback.evidence.get(_NOT_STARTED, "") if rollback is not None else ""
        if held in (_ANY_CANDIDATE, wanted):
            return  # on-call aborted the rollback that was to start it: only retry (or another version) does
        target = self._target()
        staged = self._maybe_staged() or (target is not None and target.canary_version == current.version)
        if phase in TERMINAL_PHASES or (phase is Phase.PENDING and not staged):
            # Nothing of the old candidate is on the target: the new attempt starts from scratch. (A staged one is
            # rolled back, below, which takes it off the target.)
            self._record("NewCandidate", detail)
            self._restart(detail)
        elif phase is Phase.ROLLING_BACK:
            # Also when it restarts already (a re-pin, an earlier new version): the restart is now for this one.
            if rollback is not None and rollback.evidence.get(_SUPERSEDED_BY) != wanted:
                self._record("NewCandidate", f"{detail}; starting over once the rollback completes")
                self._update(rollback=dataclasses.replace(
                    rollback, restart=True, evidence=to_json({**rollback.evidence, _SUPERSEDED_BY: wanted})))
        else:
            self._record("NewCandidate", f"{detail}; rolling {current.version} back first")
            self._roll_back_unjudged(RollbackCause.SUPERSEDED, f"superseded by version {wanted}",
                                     evidence={_SUPERSEDED_BY: wanted}, restart=True)

    def _follow_dataset_changes(self) -> None:
        """A golden dataset re-pinned before promotion: the candidate is gated again, on the new data, before it
        takes (more) traffic. A gate under way starts over; a canary the old gate let through is rolled back (not
        rejected: nothing judged it on the new data) and the rollout starts over, as for a new candidate, so the
        new attempt's steps and deadlines start fresh. A gate a human overrode, and a promoted version, are left:
        the next attempt gates on the new data."""
        gate, dataset = self.status.gate, self.spec.golden_dataset
        if gate is not None and dataset is not None and gate.request_id and gate.thresholds_signature is None \
                and gate.dataset_sha256 == dataset.sha256:
            # A gate recorded before thresholds were signed (an older operator): a later change of them is seen.
            gate = dataclasses.replace(gate, thresholds_signature=thresholds_signature(dataset.thresholds))
            self._update(gate=gate)
        detail = self._repinned()
        if gate is None or detail is None:
            return
        phase = self.status.phase
        if phase is Phase.GATING:
            self._record("DatasetChanged", f"{detail}; the gate starts over")
            self._enter_gate()
        elif (phase is Phase.PROGRESSING or (phase is Phase.PAUSED and self._paused_without_a_verdict())) \
                and gate.outcome is Outcome.PASS and gate.overridden_by is None:
            self._record("DatasetChanged", f"{detail}; rolling {self._candidate.version} back to gate it again")
            self._start_rollback(RollbackCause.DATASET_CHANGED, f"{detail} after the gate passed",
                                 reject_candidate=False, restart=True)

    def _repinned(self) -> str | None:
        """How the golden dataset or its thresholds differ from what this attempt's gate judged by, or None."""
        gate, dataset = self.status.gate, self.spec.golden_dataset
        if gate is None or dataset is None:
            return None
        if gate.dataset_sha256 not in (None, dataset.sha256):
            return f"golden dataset re-pinned: {(gate.dataset_sha256 or '')[:12]} -> {dataset.sha256[:12]}"
        if gate.thresholds_signature not in (None, thresholds_signature(dataset.thresholds)):
            return "goldenDataset.thresholds changed since the gate ran"
        return None

    def _paused_without_a_verdict(self) -> bool:
        """Paused before promotion with no failing verdict waiting on a human: a re-pin may start over from here.
        A failure waits for its human (re-gating would put a failed canary back on traffic unjudged), and a
        promoted version is left (the pause of a bake, or of an alias move past its deadline)."""
        pause = self.status.pause
        return (self.status.promotion is None and pause is not None
                and pause.reason in (PauseReason.PAUSE_STEP, PauseReason.ANALYSIS_INCONCLUSIVE))

    def _follow_deletion(self) -> None:
        """Deleted before it ended, with revertOnDeletion: roll back as an abort would, then end (the operator
        releases the finalizer once the ended status is stored). The candidate is rejected only when a check failed
        it (paused there, automatic rollback off): the delete itself judges nothing."""
        if not self._deleting:
            return
        phase = self.status.phase
        reason = "the ModelRollout was deleted (spec.rollback.revertOnDeletion)"
        if phase is Phase.ROLLING_BACK:
            rollback = self.status.rollback
            if rollback is not None and rollback.restart:  # superseded: end once rolled back, never start over
                self._record("Deleted", f"{reason}; no new attempt once the rollback completes")
                self._update(rollback=dataclasses.replace(rollback, restart=False))
        elif phase is Phase.PENDING and self.status.candidate is None:
            self._record("Deleted", f"{reason} before the candidate was resolved")
            self._move(Phase.ROLLED_BACK, completed_at=self.now)
        elif phase not in TERMINAL_PHASES:
            self._roll_back_unjudged(RollbackCause.DELETED, reason)

    def _roll_back_unjudged(self, cause: RollbackCause, reason: str, *, evidence: dict[str, Any] | None = None,
                            restart: bool = False) -> None:
        """Roll back for a delete or a new version, which judge nothing: not rejected, unless a check failed the
        candidate and waits for a human (automatic rollback off). Then it is rejected for that check, with its
        evidence, as its own rollback would have."""
        pause = self.status.pause
        if not self._failed_awaiting_decision() or pause is None:
            self._start_rollback(cause, reason, evidence=evidence, reject_candidate=False, restart=restart)
            return
        gate = self.status.gate
        failure = (_evidence(gate.verdicts, Outcome.FAIL) if pause.reason is PauseReason.GATE_FAILED and gate
                   else self._analysis_evidence() if self.status.analysis else {})
        self._start_rollback(cause, f"{reason}; rejected for the failure awaiting a decision since "
                                    f"{format_time(pause.since)}: {pause.detail}",
                             evidence={**failure, **(evidence or {})}, restart=restart)

    def _failed_awaiting_decision(self) -> bool:
        """Paused on a failing verdict with automatic rollback off: a judge did fail the candidate."""
        pause, gate = self.status.pause, self.status.gate
        if self.status.phase is not Phase.PAUSED or pause is None:
            return False
        if pause.reason is PauseReason.GATE_FAILED:
            return gate is not None and not _integrity_only(gate.verdicts)
        return pause.reason in (PauseReason.ANALYSIS_FAILED, PauseReason.BAKE_FAILED)

    def _repair_status(self) -> None:
        """A status that cannot be (a phase past resolution without its candidate: edited by hand or by another
        tool) starts the rollout over, instead of failing every reconcile on it."""
        phase = self.status.phase
        if self.status.candidate is None and phase in _PHASES_WITH_A_CANDIDATE:
            # Restarted first: the entry is the new attempt's first (HistoryEntry.attempt), as a retry's is.
            self._restart(f"the status said {phase} without a candidate version")
            self._record("StatusReset", f"status said {phase} without a candidate version; starting over")

    def _restart(self, why: str) -> None:
        """Forget the attempt; the next resolution starts a new one (new attempt number, new action ids)."""
        if self.status.candidate is None and any(entry.attempt == self._attempt + 1 for entry in self.status.history):
            # Given up before it resolved, the attempt still took the next number (its entries carry it): the new one
            # takes the number after, so readers never run the two together.
            self._update(attempt=self._attempt + 1)
        self._abandon_pending()
        self._move(Phase.PENDING, candidate=None, stable=None, current_step=None, gate=None, analysis=None,
                   pause=None, promotion=None, rollback=None, started_at=None, completed_at=None,
                   resolving_since=None)
        for condition in (ConditionType.GATE_PASSED, ConditionType.ANALYSIS_HEALTHY):
            self._set_condition(condition, ConditionStatus.UNKNOWN, "NewAttempt", f"Starting over: {why}.")

    # --- commands ------------------------------------------------------------------------------------

    def _apply_command(self, command: Command) -> None:
        if command.id in self.status.handled_commands:
            return
        refusal = "the ModelRollout is being deleted" if self._being_deleted else self._run_command(command)
        if refusal is None:
            self._update(handled_commands=_handled(self.status, command.id))
            return
        # A refusal that quotes a hold's way out keeps it apart, as StableMismatch does: told without it once the
        # hold has ended (following it then would move the alias for nothing).
        hold = self.status.promotion.hold if self.status.promotion is not None else None
        advice = hold.advice if hold is not None and hold.advice and refusal.endswith(hold.advice) else None
        self.status = ignore_command(self.status, command.id, f"{command.label}: {refusal}", self.now,
                                     actor=command.actor, command_id=command.id, advice=advice)
        self.new_history.append(self.status.history[-1])

    def _run_command(self, command: Command) -> str | None:
        """Carry out a command; return why it was refused, or None."""
        phase = self.status.phase
        pause = self.status.pause
        label = command.label
        if command.action in (CommandAction.ABORT, CommandAction.ROLLBACK):
            rollback = self.status.rollback
            if phase is Phase.ROLLING_BACK and command.action is CommandAction.ABORT and rollback is not None \
                    and rollback.restart:
                self._abort_restart(command, rollback)
                return None
            if phase is Phase.ROLLING_BACK:
                return "already rolling back"
            if phase in (Phase.ROLLED_BACK, Phase.FAILED):
                return f"nothing to roll back in phase {phase}"
            if phase is Phase.SUCCEEDED and command.action is CommandAction.ABORT:
                return "the rollout is finished; use rollback to return to the previous version"
            if phase is Phase.SUCCEEDED and (self.status.stable is None or self.status.promotion is None):
                return self._nothing_to_return_to()
            if phase is Phase.SUCCEEDED and (refusal := self._not_ours_to_roll_back()) is not None:
                return refusal
            if phase is Phase.PENDING and self.status.candidate is None:
                self._record("Aborted", f"{label} before the candidate was resolved", actor=command.actor,
                             command_id=command.id)
                self._update(completed_at=self.now)
                self._move(Phase.ROLLED_BACK)
                return None
            cause = RollbackCause.ABORTED if command.action is CommandAction.ABORT else RollbackCause.ROLLBACK_REQUESTED
            verb = "aborted" if command.action is CommandAction.ABORT else "rollback requested"
            self._record("CommandApplied", label, actor=command.actor, command_id=command.id)
            self._start_rollback(cause, f"{verb} by {command.actor}", actor=command.actor)
            return None
        if command.action is CommandAction.PROMOTE:
            return self._promote_command(command, pause)
        return self._retry_command(command, pause)

    def _nothing_to_return_to(self) -> str:
        """Why a finished rollout has no previous version, and the way out that is left (on-call at 3 a.m.)."""
        candidate = self.status.candidate
        version = f"version {candidate.version}" if candidate is not None else "the candidate"
        if self.status.promotion is None:  # the alias named the candidate already: nothing was rolled out
            return (f"there is no previous version to return to: {version} was @{self.spec.model.stable_alias} "
                    "already, and this rollout changed nothing")
        return (f"there is no previous version to return to: @{self.spec.model.stable_alias} named no version "
                f"before {version}; to replace it, roll out a known-good version (spec.model.version)")

    def _not_ours_to_roll_back(self) -> str | None:
        """Why a finished rollout may not roll back now: a later release (another ModelRollout) may serve on the
        target since, and restoring this one's previous version would undo it. Never acted on blind."""
        target, candidate, stable = self._target(), self._candidate, self.status.stable
        where = self.spec.target.description
        if target is None:
            return f"cannot tell what serves on {where} now: nothing rolled back"
        served = target.stable_version
        if served is None:  # unknown (a promoted version whose pods are not all up, a hand edit): ask the registry
            registry = self._registry()
            alias = registry.stable_alias_version if registry is not None else None
            if alias is not None and alias.version == candidate.version:
                return None
            return (f"cannot tell which version serves on {where} now (it reports none) and "
                    f"@{self.spec.model.stable_alias} no longer names {candidate.version}: nothing rolled back")
        if served not in (candidate.version, stable.version if stable else None):
            return f"version {served} serves now, not this rollout's {candidate.version}: nothing of it to roll back"
        return None

    def _abort_restart(self, command: Command, rollback: RollbackStatus) -> None:
        """Abort while a rollback makes way for a new candidate: the rollback goes on and ends the rollout; the
        new candidate is not started (until retry, or another version)."""
        wanted = self._wanted_candidate() or rollback.evidence.get(_SUPERSEDED_BY)
        what = f"version {wanted}" if wanted else "the new candidate"
        self._record("CommandApplied", f"{command.label}: the rollback goes on and {what} is not started",
                     actor=command.actor, command_id=command.id)
        reason = f"{rollback.reason}; aborted by {command.actor}: {what} is not started (run retry to start it)"
        # Kept with the rollback, so that the ended rollout does not start it either.
        evidence = to_json({**rollback.evidence, _NOT_STARTED: wanted or _ANY_CANDIDATE})
        self._update(rollback=dataclasses.replace(rollback, restart=False, reason=_one_line(reason),
                                                  evidence=evidence))

    def _promote_command(self, command: Command, pause: PauseStatus | None) -> str | None:
        phase = self.status.phase
        step = self._current_step()
        if phase is Phase.BAKING or (pause is not None and pause.reason in (PauseReason.BAKE_FAILED,
                                                                          PauseReason.BAKE_INCONCLUSIVE)):
            self._record("CommandApplied", f"{command.label}: bake ended early", actor=command.actor,
                         command_id=command.id)
            self._succeed(f"bake ended early by {command.actor}")
            return None
        if phase is Phase.PAUSED and pause is not None:
            if pause.reason is PauseReason.PROGRESS_DEADLINE_EXCEEDED:
                return "the target did not take the last change; use retry to try it again or rollback"
            if pause.reason in (PauseReason.GATE_FAILED, PauseReason.GATE_INCONCLUSIVE):
                gate = self.status.gate or GateStatus()
                self._update(gate=dataclasses.replace(gate, overridden_by=command.actor))
                self._record("GateOverridden", f"{command.label}: going on despite the gate ({pause.detail})",
                             actor=command.actor, command_id=command.id)
                self._update(pause=None)
                if command.full:
                    self._start_promotion(command.actor)
                else:
                    self._enter_steps()
                return None
        if phase in (Phase.PROGRESSING, Phase.PAUSED):
            if command.full:
                self._record("CommandApplied", f"{command.label}: skipping the remaining steps",
                             actor=command.actor, command_id=command.id)
                if (repinned := self._repinned()) is not None:
                    # A human override of everything left: said out loud, never silently on the old data's gate.
                    self._record("DatasetChanged", f"{repinned}; promoted by {command.actor} on the earlier gate, "
                                                   "not gated again", actor=command.actor)
                self._update(pause=None)
                self._start_promotion(command.actor)
                return None
            if isinstance(step, SetWeightStep) and phase is Phase.PROGRESSING:
                return f"{self._step_label()} is setting the weight; promote skips analysis and pause steps"
            if pause is not None and pause.steps_changed:  # the old step is gone: nothing to skip
                self._record("CommandApplied", f"{command.label}: resuming at the first of the new steps",
                             actor=command.actor, command_id=command.id)
                self._move(Phase.PROGRESSING, pause=None, current_step=0, analysis=None)
                return None
            self._record("CommandApplied", f"{command.label}: {self._step_label()} skipped",
                         actor=command.actor, command_id=command.id)
            self._update(pause=None)
            self._advance_step()
            return None
        return self._held_promotion() or f"nothing to promote in phase {phase}"

    def _held_promotion(self) -> str | None:
        """A promotion's hold and its way out, as a promote or retry refused during it: there is something to
        promote, and the hold's message says what ends it."""
        message = self.status.message or ""
        if self.status.phase is not Phase.PROMOTING or not message.startswith(HOLDING_PROMOTION):
            return None
        return "the promotion is held" + message[len(HOLDING_PROMOTION):].rstrip(".")

    def _retry_command(self, command: Command, pause: PauseStatus | None) -> str | None:
        phase = self.status.phase
        if phase in (Phase.ROLLED_BACK, Phase.FAILED):
            registry = self._registry()
            if registry is not None and registry.candidate is None:
                # The new attempt would fail at once on resolving, and forget this one's account meanwhile.
                model = self.spec.model
                where = "spec.model.version" if model.version is not None else f"@{model.alias} (or spec.model)"
                return (f"{model.name} {model.candidate_ref} no longer exists in the registry: point {where} at a "
                        "version that exists")
            if registry is not None and registry.unloadable is not None:
                # As above: it would wait in Pending on resolving, this attempt's account gone (review s32r3).
                return f"the new attempt could not start: {registry.unloadable}"
            # Restarted first: the command's entry is the new attempt's first (HistoryEntry.attempt).
            self._restart(f"retry by {command.actor}")
            self._record("CommandApplied", f"{command.label}: starting a new attempt", actor=command.actor,
                         command_id=command.id)
            return None
        if phase is not Phase.PAUSED or pause is None or pause.reason is PauseReason.PAUSE_STEP:
            return self._held_promotion() or f"nothing to retry in phase {phase}"
        self._record("CommandApplied", f"{command.label}: {pause.reason} retried", actor=command.actor,
                     command_id=command.id)
        self._update(pause=None)
        if pause.reason in (PauseReason.GATE_FAILED, PauseReason.GATE_INCONCLUSIVE):
            self._enter_gate()
        elif pause.reason in (PauseReason.ANALYSIS_FAILED, PauseReason.ANALYSIS_INCONCLUSIVE):
            self._move(Phase.PROGRESSING, analysis=None)
        elif pause.reason in (PauseReason.BAKE_FAILED, PauseReason.BAKE_INCONCLUSIVE):
            self._move(Phase.BAKING, analysis=None)
        else:  # the target missed the deadline: give the same pending action a fresh deadline
            for record in self.status.actions:
                if record.state is ActionState.PENDING:
                    # A fresh start: an error before the retry must not decide the retried action (a NotFound
                    # from a registry briefly up on the wrong store would end it again at once).
                    self._put_record(dataclasses.replace(record, issued_at=self.now, updated_at=self.now,
                                                         sent_at=None, last_error=None, refused_since=None))
            self._move(pause.resume_phase or Phase.PROGRESSING)
        return None

    # --- Pending: resolve, then stage at 0% ----------------------------------------------------------

    def _pending(self) -> None:
        if self.status.candidate is None:
            self._resolve()
            return
        self._stage()

    def _resolve(self) -> None:
        model = self.spec.model
        registry = self._registry()
        waiting = f"Waiting for the registry to resolve {model.name} {model.candidate_ref}"
        if registry is None:
            # The registry's error is said by the retry note (once): only "no answer" is said here.
            self._wait(waiting if self.obs.registry and self.obs.registry.error else f"{waiting} (no answer)")
            return
        if registry.candidate is None:
            self._fail(f"{model.name} {model.candidate_ref} does not exist in the registry")
            return
        found = registry.candidate
        if found.status == PENDING_REGISTRATION:
            self._wait_resolving(f"Waiting for {model.name} version {found.version} to finish registering in the "
                                 f"registry")
            return
        if found.status != READY or not found.source:
            # Staged as it is, the serving system would get no model (or a broken one) and the rollout would
            # only fail at the progress deadline, blaming the target.
            why = f"its registration status is {found.status}" if found.status != READY else "it has no source"
            self._fail(f"{model.name} version {found.version} cannot be served: {why}")
            return
        if registry.unloadable is not None:
            # Staged, it would never get ready (failing only at progressDeadline, blaming the target). Refused here,
            # not as a registry error, so that the rollback of the candidate it replaces never waited on it.
            self._set_condition(ConditionType.REGISTRY_AVAILABLE, ConditionStatus.FALSE,
                                f"Registry{AdapterErrorKind.INVALID}", registry.unloadable)
            self._error(f"registry: {registry.unloadable}")
            self._wait(waiting)
            return
        candidate = _version_ref(found)
        stable = None if registry.stable_alias_version is None else _version_ref(registry.stable_alias_version)
        rejected = registry.candidate.tags.get(REJECTED_TAG) == "true"  # "false": a later promotion overruled it
        if stable is not None and stable.version == candidate.version:
            self._already_stable(candidate, stable, rejected=rejected)
            return
        target = self.obs.target
        if target is not None and target.error is not None:
            # Not resolved until the target can be read: a candidate in status puts the rollout in flight, and a
            # mistyped spec.target could then no longer be corrected by an apply (nothing was sent to it).
            self._wait_resolving(f"Waiting to read {self.spec.target.description} before starting version "
                                 f"{candidate.version} ({target.error.message})")
            return
        self._update(candidate=candidate, stable=stable, attempt=self._attempt + 1, started_at=self.now,
                     current_step=None, completed_at=None)
        # The weight observed this pass was the previous attempt's candidate's (100% once promoted): the new one's.
        self._update(canary_weight=self._observed_candidate_weight(target) if target is not None else 0)
        against = f"stable {stable.version} (@{model.stable_alias})" if stable else (
            f"no stable version (@{model.stable_alias} is not set)")
        self._record("Resolved", f"attempt {self._attempt}: candidate {candidate.version} "
                                 f"(run {candidate.run_id or 'unknown'}) against {against}")
        if stable is not None:
            self._stable_mismatch(stable)
        if rejected:
            self._record_previously_rejected(candidate)
        self.moved = True

    def _record_previously_rejected(self, candidate: VersionRef) -> None:
        self._record("PreviouslyRejected", f"version {candidate.version} carries {REJECTED_TAG}: true")

    def _already_stable(self, candidate: VersionRef, stable: VersionRef, *, rejected: bool) -> None:
        """The stable alias names the candidate already: done, but only as far as the target confirms it. The
        alias is the model's, not this target's: another InferenceService of the same model (a second region), or
        one that does not exist, may serve something else entirely."""
        alias, where = self.spec.model.stable_alias, self.spec.target.description
        target = self._target()
        why = None
        if target is None:
            why = self.obs.target.error.message if self.obs.target and self.obs.target.error else "not synced yet"
        elif not target.ready:
            why = target.detail or "not ready"
        if why is not None:
            self._wait_resolving(f"Version {candidate.version} is already @{alias}; waiting to read {where} to see "
                                 f"what it serves ({why})")
            return
        self._update(candidate=candidate, stable=stable, attempt=self._attempt + 1, started_at=self.now)
        self._record("AlreadyStable", f"version {candidate.version} is already @{alias}")
        if rejected:  # the alias was moved there by hand: production runs a version a verdict rejected
            self._record_previously_rejected(candidate)
        served = self._stable_mismatch(stable)
        if served is not None:
            self._fail(f"version {candidate.version} is already @{alias}, but {where} serves version {served}: "
                       f"{NOTHING_ROLLED_OUT} (to roll it out here, point @{alias} back at version {served} first)")
        elif target.stable_version is None:
            # Not staged by a ModelRollout, or changed by hand since (the router's detail says which).
            self._succeed(f"version {candidate.version} is already @{alias}; {where} records no version it serves "
                          f"that can be confirmed, so none is claimed: {NOTHING_ROLLED_OUT}")
        else:
            self._succeed(f"version {candidate.version} already serves as @{alias}")

    def _stable_mismatch(self, stable: VersionRef) -> str | None:
        """The version the target says it serves as stable when the stable alias names another (recorded as a
        Warning): the canary is then compared with what serves, while the evidence names the alias's version."""
        target = self._target()
        served = target.stable_version if target is not None else None
        candidate = self.status.candidate.version if self.status.candidate else None
        if served is None or served in (stable.version, candidate):
            return None
        self._record("StableMismatch", f"{self.spec.target.description} serves version {served} as stable while "
                                       f"@{self.spec.model.stable_alias} names {stable.version}")
        return served

    def _stage_id(self) -> str:
        return f"{self._attempt}:stage:{self._candidate.version}"

    def _stage(self) -> None:
        candidate = self._candidate
        started = self.status.started_at or self.now
        target_label = self.spec.target.description
        target = self.obs.target
        staging_started = self._ledger(self._stage_id()) is not None
        if target is None or target.error is not None:
            why = target.error.message if target is not None and target.error else "not observed yet"
            if self._deadline_passed(started):
                reason = f"{target_label} unavailable for longer than {self._deadline}: {why}"
                if staging_started:  # whatever was staged must come off once the target answers
                    self._start_rollback(RollbackCause.CANDIDATE_NOT_READY, reason, reject_candidate=False,
                                         final_phase=Phase.FAILED)
                else:
                    self._fail(reason)
            else:
                self._wait(f"Waiting for {target_label} ({why})", poll=target is None)
            return
        if (target.canary_version == candidate.version and target.canary_ready
                and not target.canary_weight):
            # Recorded also when only observed (staged before this attempt asked): a rollback must know the
            # candidate reached the target.
            self._request(StageCandidate(id=self._stage_id(), candidate=candidate), f"version {candidate.version}",
                          send=False)
            self._confirm(self._stage_id())
            self._record("CandidateStaged", f"candidate {candidate.version} ready on {target_label} at 0%")
            self._enter_gate()
            return
        if self._deadline_passed(started):
            what = (f"candidate {candidate.version} did not become ready on {target_label}"
                    if target.ready else f"{target_label} is not ready")
            reason = (f"{what} within {self._deadline}"
                      + (f": {target.detail}" if target.detail else "") + self._last_error_note(self._stage_id()))
            if staging_started or target.canary_version == candidate.version:
                self._start_rollback(RollbackCause.CANDIDATE_NOT_READY, reason, reject_candidate=False,
                                     final_phase=Phase.FAILED)
            else:
                self._fail(reason)
            return
        if not target.ready:
            self._wait(f"Waiting for {target_label} to be ready before staging candidate {candidate.version}",
                       poll=True)
            return
        if self._registry() is None:
            self._wait("Holding traffic unchanged until the registry answers")
            return
        self._request(StageCandidate(id=self._stage_id(), candidate=candidate), f"version {candidate.version}")
        self._wait(f"Staging candidate {candidate.version} on {target_label} at 0% traffic and waiting "
                   f"for it to become ready", poll=True)

    # --- Gating --------------------------------------------------------------------------------------

    def _next_judge_request(self, kind: str) -> str:
        number = self.status.judge_requests + 1
        self._update(judge_requests=number)
        return f"{self._attempt}:{kind}-{number}"

    def _enter_gate(self) -> None:
        dataset = self.spec.golden_dataset
        if dataset is None:  # only for a spec built in code: the CRD and parse_spec require goldenDataset
            self._update(gate=GateStatus(skipped=True, reason="no goldenDataset in spec"))
            self._record("GateSkipped", "no goldenDataset in spec")
            self._enter_steps()
            return
        request_id = self._next_judge_request("gate")
        self._move(Phase.GATING, gate=GateStatus(request_id=request_id, started_at=self.now,
                                                 dataset_sha256=dataset.sha256,
                                                 thresholds_signature=thresholds_signature(dataset.thresholds)))
        stable = self.status.stable
        self._record("GateStarted", f"golden dataset {dataset.sha256[:12]}: candidate {self._candidate.version} "
                                    + (f"against stable {stable.version}" if stable else "alone (no stable version)"))

    def _refused_before_restart(self) -> bool:
        """The status read is the one kept when the API server refused what was decided on it, for this generation:
        the gate it handed out answered (a refused write-ahead ran nothing), so a restart did not interrupt it."""
        ready = self.conditions_before.get(ConditionType.READY)
        return (ready is not None and ready.reason == STATUS_REJECTED
                and ready.observed_generation == self.obs.generation)

    def _gating(self) -> None:
        gate = self.status.gate
        dataset = self.spec.golden_dataset
        if gate is None or gate.request_id is None or dataset is None:
            self._enter_gate()  # spec changed under us (dataset added or removed): start the gate over
            return
        result = self.obs.gate if self.obs.gate and self.obs.gate.request_id == gate.request_id else None
        if result is not None and result.error is not None:
            self._error(f"gate: {result.error.message}")
            self._set_condition(ConditionType.GATE_PASSED, ConditionStatus.UNKNOWN, "GateError",
                                result.error.message)
            self.judges_errored.add("gate")
            gate = dataclasses.replace(gate, errors=gate.errors + 1, erroring_since=gate.erroring_since or self.now,
                                       interrupted=0)
            self._update(gate=gate)
            if gate.erroring_since is not None and self._deadline_passed(gate.erroring_since):
                reason = (f"the golden gate could not run for {format_duration(self.spec.progress_deadline)} "
                          f"({gate.errors} attempts): {result.error.message}")
                self._update(gate=dataclasses.replace(gate, completed_at=self.now, outcome=Outcome.INCONCLUSIVE,
                                                      reason=reason))
                self._record("GateInconclusive", reason)
                self._inconclusive(RollbackCause.GATE_INCONCLUSIVE, reason, {"gate_error": result.error.message})
                return
            self._wait(f"The golden gate could not run ({result.error.message}); retrying")
            return
        if result is None:
            if self.obs.resend_pending and gate.requested_at is not None and not self._refused_before_restart():
                gate = dataclasses.replace(gate, interrupted=gate.interrupted + 1)  # handed out, never answered
                self._update(gate=gate)
                if gate.interrupted >= GATE_INTERRUPTIONS_LIMIT:
                    reason = (f"the golden gate was interrupted {gate.interrupted} times in a row: the operator "
                              "restarted while it ran (see its last termination reason: out of memory?)")
                    self._update(gate=dataclasses.replace(gate, completed_at=self.now, outcome=Outcome.INCONCLUSIVE,
                                                          reason=reason))
                    self._record("GateInconclusive", reason)
                    self._inconclusive(RollbackCause.GATE_INCONCLUSIVE, reason, {"gate_interrupted": gate.interrupted})
                    return
            stable = self.status.stable
            if self._measure(RunGate(id=gate.request_id, candidate=self._candidate, stable=stable, dataset=dataset),
                             gate.requested_at, gate.errors):
                self._update(gate=dataclasses.replace(gate, requested_at=self.now))
            against = f"against stable {stable.version}" if stable else "alone (no stable version)"
            self._wait(f"Running the golden gate (sha256 {dataset.sha256[:12]}) on candidate "
                       f"{self._candidate.version} {against}", poll=True)
            return
        verdicts = tuple(_clean_verdict(item) for item in result.verdicts)
        outcome = combine(list(verdicts))
        decisive = _first(verdicts, outcome)
        passed = f"{len(verdicts)} check{'' if len(verdicts) == 1 else 's'} passed"
        reason = (passed if outcome is Outcome.PASS  # no one check is why it passed
                  else f"golden gate {decisive.name}: {decisive.reason}" if decisive
                  else "golden gate gave no verdicts")
        kept = _kept_gate_verdicts(verdicts)  # status lives in etcd: a spec may set limits on 1000 classes
        self._update(gate=dataclasses.replace(gate, completed_at=self.now, outcome=outcome, reason=reason,
                                              verdicts=kept, errors=0, erroring_since=None,
                                              dataset_sha256=result.dataset_sha256 or gate.dataset_sha256,
                                              report=to_json(dict(result.report))))
        if outcome is Outcome.PASS:
            self._record("GatePassed", f"{passed} on dataset {dataset.sha256[:12]}")
            self._enter_steps()
        elif outcome is Outcome.FAIL:
            self._record("GateFailed", reason)
            # A dataset that is not the pinned one says nothing about the model: stop, but do not reject it.
            self._failure(RollbackCause.GATE_FAILED, reason, _evidence(kept, outcome),
                          reject_candidate=not _integrity_only(verdicts))
        else:
            self._record("GateInconclusive", reason)
            self._inconclusive(RollbackCause.GATE_INCONCLUSIVE, reason, _evidence(kept, outcome))

    # --- canary steps --------------------------------------------------------------------------------

    def _enter_steps(self) -> None:
        if self.status.stable is None:
            # No stable version, so there is nothing to compare a canary with or return to.
            target = self._target()
            served = target.stable_version if target is not None else None
            serving = (f" ({self.spec.target.description} serves version {served}, recorded by an earlier rollout: "
                       f"if @{self.spec.model.stable_alias} should name it, spec.model.stableAlias may be misspelt)"
                       if served not in (None, self._candidate.version) else "")
            self._record("NoStableVersion", f"@{self.spec.model.stable_alias} is not set; promoting without "
                                            f"canary steps{serving}")
            self._start_promotion(CONTROLLER_ACTOR)
            return
        self._move(Phase.PROGRESSING, current_step=0, pause=None, analysis=None)

    def _current_step(self) -> SetWeightStep | AnalysisStep | PauseStep | None:
        index = self.status.current_step
        steps = self.spec.canary.steps
        if index is None or index >= len(steps):
            return None
        return steps[index]

    def _advance_step(self) -> None:
        index = (self.status.current_step or 0) + 1
        self._move(Phase.PROGRESSING, current_step=index, pause=None)

    def _weight_id(self, index: int, weight: int) -> str:
        return f"{self._attempt}:step-{index}:weight-{weight}"

    def _steps(self) -> None:
        index = self.status.current_step
        if index is None:
            self._move(Phase.PROGRESSING, current_step=0)
            return
        step = self._current_step()
        if step is None:
            self._record("StepsCompleted", f"all {len(self.spec.canary.steps)} steps done")
            self._start_promotion(CONTROLLER_ACTOR)
        elif isinstance(step, SetWeightStep):
            self._set_weight_step(index, step.weight)
        elif isinstance(step, AnalysisStep):
            self._analysis_step(index, step)
        else:
            self._pause_step(index, step)

    def _set_weight_step(self, index: int, weight: int) -> None:
        candidate = self._candidate
        action_id = self._weight_id(index, weight)
        target = self._target()
        # Not `ready` too (review s35r2): it means stable serves, and a stable gone unready for a while would fail a
        # step that took effect, against the candidate. Seldon v2's router refuses a split its scheduler would not
        # start, so what it reads is what was started (a hand edit after the write aside).
        if target is not None and target.canary_version == candidate.version and target.canary_weight == weight:
            self._confirm(action_id)
            self._record("WeightChanged", f"{self._step_label(index)}: candidate {candidate.version} at {weight}%")
            self._advance_step()
            return
        settled = self._gate_predictions_scraped_by()
        if weight > 0 and settled is not None and self.now < settled:
            # A window opened before then would count the gate's golden set (rich in positives) as live traffic.
            # Held before the action is recorded: its progressDeadline starts after the hold.
            self.requeue.append(settled - self.now)
            self._wait(f"Holding {self._step_label(index)} until {format_time(settled)}: the gate's own "
                       "predictions must be scraped before live traffic is judged")
            return
        action = SetCanaryWeight(id=action_id, candidate_version=candidate.version, weight=weight)
        # Pending from the step's start, not its first send: a target or registry away before it still meets
        # the deadline (and `retry` renews it).
        self._request(action, f"weight {weight}%", send=False)
        if self._deadline_passed(self._pending_since(action_id)):
            observed = ("unknown" if target is None else "no candidate staged" if target.canary_weight is None
                        else f"{target.canary_weight}%")
            # Unread when the deadline is judged, it says nothing of the model: rolled back, not tagged (s40promote).
            self._deadline_failure(f"the target did not take weight {weight}%", action_id,
                                   f" (observed {observed}), at {self._step_label(index)}",
                                   {"step": index, "weight": weight}, judged=target is not None)
            return
        if self.obs.target is not None and self.obs.target.error is not None:
            self._wait(f"Holding {self._step_label(index)} until {self.spec.target.description} answers")
            return
        if self._registry() is None:
            self._wait(f"Holding {self._step_label(index)} at the current weight until the registry answers")
            return
        self._request(action, f"weight {weight}%")
        self._wait(f"{self._step_label(index).capitalize()}: setting candidate {candidate.version} to "
                   f"{weight}% of traffic", poll=True)

    def _gate_predictions_scraped_by(self) -> datetime | None:
        """When this attempt's gate predictions are in Prometheus (None: no gate ran, or no scrape interval told)."""
        gate, interval = self.status.gate, self.obs.scrape_interval
        if gate is None or gate.completed_at is None or interval is None:
            return None
        return gate_predictions_scraped_by(gate.completed_at, interval)

    def _analysis_step(self, index: int, step: AnalysisStep) -> None:
        analysis = self.status.analysis
        if analysis is None or analysis.mode is not AnalysisMode.CANARY or analysis.step_index != index \
                or analysis.ends_at is None:
            settled = self._gate_predictions_scraped_by()
            if settled is not None and self.now < settled:
                # No weight step held it (an analysis first, or after a 0% step): a window opened now would count
                # the gate's golden set as the canary's traffic (review s32crdfix).
                self.requeue.append(settled - self.now)
                self._wait(f"Holding {self._step_label(index)} until {format_time(settled)}: the gate's own "
                           "predictions must be scraped before live traffic is judged")
                return
            self._update(analysis=AnalysisStatus(mode=AnalysisMode.CANARY, window_start=self.now,
                                                 step_index=index, ends_at=self.now + step.duration))
            self._record("AnalysisStarted", f"{self._step_label(index)}: judging for "
                                            f"{format_duration(step.duration)} at {self.status.canary_weight}%")
        outcome = self._judge()
        if outcome is Outcome.FAIL:
            self._judged_failure(RollbackCause.ANALYSIS_FAILED)
        elif outcome is Outcome.PASS:
            self._record("AnalysisPassed", f"{self._step_label(index)}: {self._analysis_summary()}")
            self._advance_step()
        elif outcome is Outcome.INCONCLUSIVE:
            self._inconclusive(RollbackCause.ANALYSIS_INCONCLUSIVE, self._analysis_reason(Outcome.INCONCLUSIVE),
                               self._analysis_evidence())

    def _pause_step(self, index: int, step: PauseStep) -> None:
        pause = self.status.pause
        if self.status.phase is not Phase.PAUSED or pause is None or pause.reason is not PauseReason.PAUSE_STEP:
            until = None if step.duration is None else self.now + step.duration
            pause = PauseStatus(reason=PauseReason.PAUSE_STEP, since=self.now, until=until,
                                detail=self._step_label(index))
            self._update(phase=Phase.PAUSED, pause=pause)
            how_long = "until promoted" if until is None else f"for {format_duration(step.duration or timedelta())}"
            self._record("Paused", f"{self._step_label(index)}: holding at {self.status.canary_weight}% {how_long}")
        # A model waiting at N% is still watched: a failure rolls back, the rest is noted. A timed pause ends
        # only after one last run that covers it, so a failure judged late (a slow Prometheus, an operator
        # that was down) is never skipped.
        if self.spec.analysis.metrics and (self.status.canary_weight or 0) > 0:
            analysis = self.status.analysis
            if analysis is None or analysis.step_index != index or analysis.mode is not AnalysisMode.CANARY:
                self._update(analysis=AnalysisStatus(mode=AnalysisMode.CANARY, window_start=self.now,
                                                     step_index=index, ends_at=pause.until))
            elif analysis.ends_at != pause.until:
                self._update(analysis=dataclasses.replace(analysis, ends_at=pause.until))
            judged = self._judge()
            if judged is Outcome.FAIL:
                self._judged_failure(RollbackCause.ANALYSIS_FAILED)
                return
            if judged is None and pause.until is not None and self.now >= pause.until:
                return  # the last run is still out
        if pause.until is not None and self.now >= pause.until:
            self._record("PauseEnded", f"{self._step_label(index)}: pause over")
            self._advance_step()
            return
        if pause.until is not None:
            self.requeue.append(pause.until - self.now)

    # --- judging (analysis steps, pause steps, bake) -------------------------------------------------

    def _watch_while_paused(self, pause: PauseStatus) -> None:
        """Paused on an inconclusive analysis or bake, the version still serves: it is judged on, from the pause
        (a trigger may start now), and a failure rolls back as it would have in the step or bake. Any other outcome
        leaves the decision to the human."""
        bake = pause.reason is PauseReason.BAKE_INCONCLUSIVE
        if not self.spec.analysis.metrics or (self.spec.bake is None if bake else not self.status.canary_weight):
            return
        mode = AnalysisMode.BAKE if bake else AnalysisMode.CANARY
        analysis = self.status.analysis
        if not self._watching():
            first_run = pause.since + self.spec.analysis.interval
            if self.now < first_run:  # until then status.analysis shows why it paused
                self.requeue.append(first_run - self.now)
                return
            # A threshold's failing runs of the step still count against its failureLimit.
            failed_runs = analysis.failed_runs if analysis is not None and analysis.mode is mode else {}
            self._update(analysis=AnalysisStatus(mode=mode, window_start=pause.since, ends_at=None,
                                                 step_index=None if bake else self.status.current_step,
                                                 failed_runs=failed_runs))
        if self._judge() is Outcome.FAIL:
            self._judged_failure(RollbackCause.BAKE_FAILED if bake else RollbackCause.ANALYSIS_FAILED)

    def _watching(self) -> bool:
        """status.analysis is the watch of a version paused on an inconclusive verdict (_watch_while_paused)."""
        pause, analysis = self.status.pause, self.status.analysis
        return (self.status.phase is Phase.PAUSED and pause is not None and pause.reason in _WATCHED_PAUSES
                and analysis is not None and analysis.window_start == pause.since and analysis.ends_at is None
                and analysis.mode is (AnalysisMode.BAKE if pause.reason is PauseReason.BAKE_INCONCLUSIVE
                                      else AnalysisMode.CANARY))

    def _judge(self) -> Outcome | None:
        """Run the judges every interval; return FAIL at once, or the final outcome when time is up."""
        analysis = self.status.analysis
        assert analysis is not None
        interval = self.spec.analysis.interval
        result = self.obs.analysis
        if result is not None and analysis.request_id is not None and result.request_id == analysis.request_id:
            if result.error is not None:
                return self._unjudged(analysis, "the analysis judges could not run", result.error.message)
            # When its queries were evaluated, not when the answer is read: a slow answer covers no more.
            measured_at = min(result.measured_at or self.now, self.now)
            verdicts = tuple(_clean_verdict(item) for item in result.verdicts)
            # Missing evidence is never a pass: a metric of the spec this run gave no verdict for (say, added while
            # it ran) is inconclusive, not left out of the outcome.
            judged = {item.name for item in verdicts}
            verdicts += tuple(Verdict(metric.name, Outcome.INCONCLUSIVE, "no verdict for it in this run")
                              for metric in self.spec.analysis.metrics if metric.name not in judged)
            verdicts, failed_runs = self._failure_limits(verdicts, analysis.failed_runs)
            growing = frozenset(metric.name for metric in self.spec.analysis.metrics
                                if metric.proportion is not None and metric.proportion.reads_whole_window)
            asked = {metric.name: metric_signature(metric) for metric in self.spec.analysis.metrics}
            verdicts = _data_lost(verdicts, analysis.metrics, bake=analysis.mode is AnalysisMode.BAKE, growing=growing,
                                  asked=asked)
            outcome = combine(list(verdicts))
            outage = _outage(verdicts, analysis.metrics) if outcome is Outcome.INCONCLUSIVE else None
            if outage is not None and analysis.ends_at is not None and measured_at >= analysis.ends_at:
                # The run that would end the step met a moment's outage (Prometheus or the exporter restarting):
                # it says nothing of the model, so it is retried as an error is, until progressDeadline.
                return self._unjudged(analysis, "the end of the analysis window could not be measured",
                                      f"{outage.name} {outage.reason}")
            merged = {item.name: item for item in analysis.metrics}
            merged.update({item.name: item for item in verdicts})
            decisive = _first(verdicts, outcome)
            analysis = dataclasses.replace(
                analysis, runs=analysis.runs + 1, request_id=None, requested_at=None, last_run_at=self.now,
                measured_at=measured_at,
                outcome=outcome, metrics=tuple(merged.values()), failed_runs=failed_runs, errors=0,
                erroring_since=None,
                reason=f"{decisive.name} {decisive.reason}" if decisive else "no verdicts")
            self._update(analysis=analysis)
            if outcome is Outcome.FAIL:
                return Outcome.FAIL
        ends_at = analysis.ends_at
        time_up = ends_at is not None and self.now >= ends_at
        # Time is up only with a run taken at or after the end: after downtime, an old outcome says nothing
        # about the time since (the judges count from the window start, so one run covers it all).
        covered = analysis.measured_at or analysis.last_run_at  # a status from before measured_at: the read
        if time_up and analysis.request_id is None and ends_at is not None \
                and covered is not None and covered >= ends_at:
            return analysis.outcome or Outcome.INCONCLUSIVE
        if analysis.request_id is None:
            due_at = (analysis.last_run_at or analysis.window_start) + interval
            if self.now >= due_at or time_up:
                analysis = dataclasses.replace(analysis, request_id=self._next_judge_request("analysis"),
                                               requested_at=None)
                self._update(analysis=analysis)
            else:
                self.requeue.append(due_at - self.now)
                if ends_at is not None:
                    self.requeue.append(ends_at - self.now)
        if analysis.request_id is not None and not self._judge_errored(analysis.request_id):
            if self._measure(self._run_analysis(analysis), analysis.requested_at, analysis.errors):
                self._update(analysis=dataclasses.replace(analysis, requested_at=self.now))
            self.polls = True
        return None

    def _unjudged(self, analysis: AnalysisStatus, what: str, message: str) -> Outcome | None:
        """A run without a verdict (`what`: why, e.g. "the analysis judges could not run"): counted, and its
        request retried with the backoff; past progressDeadline without one, the step ends inconclusive."""
        self._error(f"analysis: {message}")
        self._set_condition(ConditionType.ANALYSIS_HEALTHY, ConditionStatus.UNKNOWN, "AnalysisError", message)
        self.judges_errored.add("analysis")
        since = analysis.erroring_since or self.now
        analysis = dataclasses.replace(analysis, errors=analysis.errors + 1, erroring_since=since)
        self._update(analysis=analysis)
        if self._deadline_passed(since):
            # No verdict for that long is missing evidence, never a pass: the step ends inconclusive.
            reason = (f"{what} for {format_duration(self.spec.progress_deadline)} ({analysis.errors} attempts): "
                      f"{message}")
            # The request stays, paced by the error count: a pause step judging in the background
            # ignores this outcome and keeps asking, no faster than the backoff.
            self._update(analysis=dataclasses.replace(analysis, outcome=Outcome.INCONCLUSIVE, reason=reason))
            return Outcome.INCONCLUSIVE
        self._wait(f"{what[:1].upper()}{what[1:]} ({message}); retrying")
        return None

    def _failure_limits(self, verdicts: tuple[Verdict, ...],
                        failed_runs: Mapping[str, int]) -> tuple[tuple[Verdict, ...], dict[str, int]]:
        """A threshold metric's failing run within its failureLimit (Argo Rollouts') is counted, not acted on: not
        enough evidence either way, so never a pass either (a last run failing within it ends the step inconclusive).
        """
        limits = {metric.name: metric.threshold.failure_limit for metric in self.spec.analysis.metrics
                  if metric.threshold is not None and metric.threshold.failure_limit}
        counts = dict(failed_runs)
        kept = []
        for item in verdicts:
            limit = limits.get(item.name)
            if limit and item.outcome is Outcome.FAIL:
                failed = counts[item.name] = counts.get(item.name, 0) + 1
                within = failed <= limit
                item = Verdict(item.name, Outcome.INCONCLUSIVE if within else Outcome.FAIL,
                               f"{item.reason} (failed run {failed}, {'within' if within else 'past'} failureLimit "
                               f"{limit})", {**item.evidence, "failedRuns": failed, "failureLimit": limit})
            kept.append(item)
        return tuple(kept), counts

    def _judge_errored(self, request_id: str) -> bool:
        result = self.obs.analysis
        return result is not None and result.request_id == request_id and result.error is not None

    def _run_analysis(self, analysis: AnalysisStatus) -> RunAnalysis:
        assert analysis.request_id is not None
        stable = self.status.stable
        bake = self.spec.bake
        is_bake = analysis.mode is AnalysisMode.BAKE
        promotion = self.status.promotion
        return RunAnalysis(
            id=analysis.request_id, mode=analysis.mode, candidate_version=self._candidate.version,
            baseline_version=stable.version if stable else None,
            canary_weight=100 if is_bake else self._set_weight_before(analysis.step_index),
            window_start=analysis.window_start, step_index=analysis.step_index,
            baseline_window=bake.baseline if is_bake and bake else None,
            metrics=tuple(metric.name for metric in self.spec.analysis.metrics),
            # A watch after an inconclusive bake starts at the pause: its history must still end at the promotion.
            promoted_at=promotion.target_confirmed_at if is_bake and promotion else None)

    def _set_weight_before(self, index: int | None) -> int:
        """The weight the spec has put in place by step `index` (what the judges judge), not the observed one."""
        steps = self.spec.canary.steps[: (index or 0)]
        return next((step.weight for step in reversed(steps) if isinstance(step, SetWeightStep)), 0)

    def _analysis_summary(self) -> str:
        analysis = self.status.analysis
        if analysis is None:
            return "no analysis"
        last = analysis.outcome or "none"
        return f"{analysis.runs} runs, last {last}" + (f" ({analysis.reason})" if analysis.reason else "")

    def _analysis_reason(self, outcome: Outcome) -> str:
        analysis = self.status.analysis
        assert analysis is not None
        decisive = _first(analysis.metrics, outcome)
        what = f"{decisive.name} {decisive.reason}" if decisive else "no verdicts"
        if outcome is Outcome.INCONCLUSIVE and analysis.errors:
            what = analysis.reason  # the judges kept failing: that, not the verdicts, is why
        if analysis.mode is AnalysisMode.BAKE:
            # Never negative: a node whose clock is behind the one that started the bake may decide this.
            promotion = self.status.promotion
            since = (promotion.target_confirmed_at if promotion else None) or analysis.window_start
            elapsed = format_duration(_whole_seconds(max(self.now - since, timedelta(0))))
            return f"{what}, during bake ({elapsed} after promotion)"
        if outcome is Outcome.INCONCLUSIVE and not analysis.errors:
            what = f"not enough evidence after {analysis.runs} runs ({what})"
        return f"{what}, at {self._step_label(analysis.step_index)} ({self.status.canary_weight}%)"

    def _analysis_evidence(self) -> dict[str, Any]:
        analysis = self.status.analysis
        assert analysis is not None
        return {**_evidence(analysis.metrics, analysis.outcome), "step": analysis.step_index,
                "weight": self.status.canary_weight, "mode": str(analysis.mode)}

    def _judged_failure(self, cause: RollbackCause) -> None:
        reason = self._analysis_reason(Outcome.FAIL)
        self._record(str(cause), reason)
        self._failure(cause, reason, self._analysis_evidence())

    # --- failures ------------------------------------------------------------------------------------

    def _failure(self, cause: RollbackCause, reason: str, evidence: dict[str, Any], *,
                 reject_candidate: bool = True) -> None:
        """A failing verdict or a missed deadline: roll back, or wait for a human when that is the rule."""
        if self.spec.rollback.automatic:
            self._start_rollback(cause, reason, evidence=evidence, reject_candidate=reject_candidate)
            return
        resume = self.status.phase if self.status.phase is not Phase.PAUSED else None
        self._move(Phase.PAUSED, pause=PauseStatus(reason=_FAILURE_PAUSE[cause], since=self.now, detail=reason,
                                                   resume_phase=resume))
        self._record("AwaitingDecision", f"{reason}; automatic rollback is off")

    def _inconclusive(self, cause: RollbackCause, reason: str, evidence: dict[str, Any]) -> None:
        if self.spec.analysis.on_inconclusive is OnInconclusive.ROLLBACK:
            # Not enough evidence either way judges nothing: rolled back by policy, never tagged rejected.
            self._failure(cause, reason, evidence, reject_candidate=False)
            return
        resume = self.status.phase if self.status.phase is not Phase.PAUSED else None
        self._move(Phase.PAUSED, pause=PauseStatus(reason=_INCONCLUSIVE_PAUSE[cause], since=self.now,
                                                   detail=reason, resume_phase=resume))
        self._record("AwaitingDecision", f"{reason}; onInconclusive is pause")

    def _fail(self, reason: str) -> None:
        """Fail with nothing applied (nothing to undo)."""
        self._abandon_pending()
        self._record("Failed", reason)
        self._move(Phase.FAILED, completed_at=self.now, pause=None)

    # --- rollback ------------------------------------------------------------------------------------

    def _start_rollback(self, cause: RollbackCause, reason: str, *, actor: str = CONTROLLER_ACTOR,
                        reject_candidate: bool = True, final_phase: Phase = Phase.ROLLED_BACK,
                        restart: bool = False, evidence: dict[str, Any] | None = None) -> None:
        self._abandon_pending()
        after_promotion = self.status.promotion is not None
        rollback = RollbackStatus(
            cause=cause, reason=_one_line(reason), verdict_at=self.now, actor=actor,
            from_step=self.status.current_step, from_weight=self.status.canary_weight,
            after_promotion=after_promotion,
            reject_candidate=reject_candidate and self.status.candidate is not None,
            final_phase=final_phase, restart=restart,
            evidence=to_json({"cause": str(cause), "reason": reason, **(evidence or {})}))
        self._record("RollbackStarted", f"{cause}: {reason}", actor=actor)
        self._move(Phase.ROLLING_BACK, rollback=rollback, pause=None)

    def _rollback_id(self, part: str) -> str:
        return f"{self._attempt}:rollback:{part}"

    def _rolling_back(self) -> None:
        rollback = self.status.rollback
        if rollback is None:  # cannot happen through decide; tolerate a hand-edited status
            self._start_rollback(RollbackCause.ROLLBACK_REQUESTED, "status said RollingBack without a cause")
            return
        if rollback.reject_candidate and self.status.candidate is None:  # hand-edited too: no version to reject
            rollback = dataclasses.replace(rollback, reject_candidate=False)
        rollback = self._rollback_traffic(rollback)
        rollback = self._rollback_alias(rollback)
        rollback = self._rollback_tag(rollback)
        if rollback.recovered_at is None and rollback.traffic_confirmed_at and rollback.alias_confirmed_at \
                and rollback.traffic_kept:
            rollback = dataclasses.replace(rollback, recovered_at=self.now)  # nothing was put back: no MTTR
        elif rollback.recovered_at is None and rollback.traffic_confirmed_at and rollback.alias_confirmed_at:
            seconds = round((self.now - rollback.verdict_at).total_seconds(), 3)
            rollback = dataclasses.replace(rollback, recovered_at=self.now, time_to_recover_seconds=seconds)
            stable = self.status.stable
            alias = self._ledger(self._rollback_id("alias"))
            # AliasNotRestored abandoned the alias step: nothing was verified there.
            settled = "alias not restored" if alias is not None and alias.state is ActionState.ABANDONED \
                else f"alias left on {rollback.alias_left_on}" if rollback.alias_left_on else "alias verified"
            # Said as the target tells it: a withdrawal is confirmed at 0% also when the target does not report
            # stable's version serving (unknown, or a model put there by hand), and then "back on stable" is no fact.
            target = self._target()
            served = target.stable_version if target is not None else None
            back = f"traffic back on {'stable ' + stable.version if stable else 'stable'}"
            if (stable is None or served != stable.version) and not rollback.traffic_kept:
                serving = ("could not be read" if target is None else f"reports version {served} serving" if served
                           else "does not report which version serves")
                versus = f"not stable {stable.version}" if stable else "no earlier version on record"
                back = f"the candidate off {self.spec.target.description} (it {serving}, {versus}: check it)"
            self._record("Recovered", f"{back} and {settled} {seconds}s after the decision")
        self._update(rollback=rollback)
        done = rollback.recovered_at is not None and (rollback.tag_confirmed_at or not rollback.reject_candidate)
        deleted_at = self.obs.deleted_at
        if not done and self._deleting and deleted_at is not None and \
                self._deadline_passed(max(rollback.verdict_at, deleted_at)):
            # The delete waits for this; past the deadline it would wait for good (a namespace being deleted
            # takes the target or the registry Secret with it): end, and say what was not done.
            self._give_up_deleted(rollback)
            return
        if not done:
            self.polls = True
            return
        if rollback.restart:
            # The same candidate gated again, unless a new one was named meanwhile.
            again = rollback.cause is RollbackCause.DATASET_CHANGED and _SUPERSEDED_BY not in rollback.evidence
            if not again and not rollback.after_promotion and not self._unstaged():
                self.polls = True
                return
            self._record("RolledBackToGateAgain" if again else "RolledBackForNewCandidate", rollback.reason)
            self._restart(rollback.reason)
            return
        self._record(str(rollback.final_phase), rollback.reason)
        self._move(rollback.final_phase, completed_at=self.now)

    def _give_up_deleted(self, rollback: RollbackStatus) -> None:
        steps = (("traffic to stable", rollback.traffic_confirmed_at), ("stable alias", rollback.alias_confirmed_at),
                 (f"{REJECTED_TAG} tag", rollback.tag_confirmed_at if rollback.reject_candidate else self.now))
        missing = ", ".join(what for what, confirmed in steps if confirmed is None)
        detail = (f"deleted rollout: gave up after {self._deadline}; "
                  f"not confirmed: {missing}")
        self._abandon_pending()
        self.actions.clear()  # this decision's requests too: the rollback ends here
        # Traffic and alias back (only a tag missing): rolled back all the same, as far as users are concerned.
        phase = rollback.final_phase if rollback.recovered_at is not None else Phase.FAILED
        self._record(str(phase), detail)
        self._update(rollback=dataclasses.replace(rollback, final_phase=phase))
        self._move(phase, completed_at=self.now)

    def _rollback_traffic(self, rollback: RollbackStatus) -> RollbackStatus:
        if rollback.traffic_confirmed_at is not None:
            return rollback
        candidate = self.status.candidate
        stable = self.status.stable
        target = self._target()
        if stable is None and candidate is not None and not rollback.restart and target is not None \
                and target.stable_version == candidate.version:
            # A first rollout's candidate took all traffic (seen on the target, not assumed from the promotion
            # having started): there is no earlier version to give it back to. A superseded one (restart)
            # stays stable for its successor, as any promoted version does.
            self._record("TrafficNotRestored", f"no earlier version to put back: version {candidate.version} "
                                               f"keeps all traffic on {self.spec.target.description}")
            return dataclasses.replace(rollback, traffic_confirmed_at=self.now, traffic_kept=True,
                                       final_phase=Phase.FAILED)
        observed = self.obs.target
        if observed is not None and observed.error is not None and observed.error.kind is AdapterErrorKind.NOT_FOUND:
            # The serving object is gone, so no user reaches the candidate through it.
            self._record("TrafficRestored", f"{self.spec.target.description} no longer exists")
            self._update(canary_weight=0)  # no object, no traffic to the candidate: as a confirmed withdrawal
            return dataclasses.replace(rollback, traffic_confirmed_at=self.now)
        action: Action
        uncleared = ""  # the withdrawal's last error, when the router's record of the candidate stays (below)
        # Before promotion, the version rolled back serving as stable: promoted by hand (KServe Knative's
        # canaryTrafficPercent removed, Standard's candidate written into the predictor), so no canary weight is
        # no evidence. The way back is a promotion's: stable restored, confirmed only once the target shows it.
        # (Any other stable version may be what served before the rollout: see _stable_mismatch.)
        promoted_by_hand = target is not None and candidate is not None and stable is not None \
            and not rollback.after_promotion and target.stable_version == candidate.version
        if promoted_by_hand and candidate is not None and stable is not None:
            self.traffic_held = (f"{self.spec.target.description} reports version {candidate.version} serving as "
                                 f"stable (promoted outside ModelRollout?): restoring version {stable.version}")
            # Kept until traffic is confirmed back (a target that cannot be read meanwhile undoes nothing).
            rollback = dataclasses.replace(rollback, candidate_served_as_stable=True)
        # Once asked for, a restore is confirmed as a promotion's is, by stable seen serving: while it rolls out
        # (Seldon's new Deployments) stable reads as no version, and no canary is no evidence either.
        restore = self._ledger(self._rollback_id("restore"))
        restoring = restore is not None and restore.state is ActionState.PENDING and not promoted_by_hand \
            and not rollback.after_promotion
        if restoring and stable is not None:
            self.traffic_held = (f"restoring version {stable.version}: {self.spec.target.description} does not "
                                 "report it serving and ready yet")
        if rollback.cause is RollbackCause.CANDIDATE_NOT_READY and candidate is not None and not promoted_by_hand \
                and not restoring:
            action = UnstageCandidate(id=self._rollback_id("unstage"), candidate_version=candidate.version)
            # As the withdrawal's below: a share the target does not ascribe to the candidate is off it only on a
            # target it was never seen staged on (a renamed canary's users are on it all the same).
            foreign = target is not None and target.canary_version is None and not self._stage_seen()
            done = target is not None and target.canary_version != candidate.version \
                and (not target.canary_weight or foreign)
            detail = f"unstage {candidate.version}"
            if done and target is not None and not foreign and not target.ready:
                # As the withdrawal's below: a target that does not report itself ready has not shown the spec read
                # in effect (Seldon v2 refusing it keeps serving the split it last started).
                done = False
                self.traffic_held = (f"{self.spec.target.description} does not report the candidate off and stable "
                                     f"serving yet{': ' + target.detail if target.detail else ''}")
        elif (rollback.after_promotion or promoted_by_hand or restoring) and stable is not None:
            action = RestoreStable(id=self._rollback_id("restore"), stable=stable)
            # Ready too: putting a version back may need new pods (KServe Standard mode, Seldon), and until
            # they serve, the rejected version may still answer.
            done = target is not None and target.stable_version == stable.version and not target.canary_weight \
                and target.ready
            detail = f"version {stable.version} to 100%"
        else:
            action = SetCanaryWeight(id=self._rollback_id("traffic"),
                                     candidate_version=candidate.version if candidate else "", weight=0, withdraw=True)
            detail = "weight 0%"
            # Target unobservable (unreachable, not synced): nothing to undo only if the candidate never reached it.
            # A share the target does not ascribe to the candidate, on a target it was never seen staged on, is
            # someone else's canary (Seldon: a predictor of that name the user runs): not this rollback's to undo.
            foreign = target is not None and target.canary_version is None and not self._stage_seen()
            done = not self._maybe_staged() if target is None else (not target.canary_weight or foreign)
            if done and target is not None and not foreign and not target.ready:
                # Off the candidate is not back on stable until stable serves (as a restore waits): the withdrawal
                # is sent all the same (a candidate left at 0% may be what keeps the target from being ready).
                done = False
                version = f"stable version {stable.version}" if stable is not None else "stable"
                self.traffic_held = (f"{self.spec.target.description} does not report {version} serving and ready "
                                     f"yet{': ' + target.detail if target.detail else ''}")
            elif done and target is not None and target.canary_version is None and self._stage_seen() \
                    and self._withdrawal_owed(action.id):
                # The candidate seen staged, then gone some other way (an Argo CD sync): withdrawn once all the
                # same, so the router drops its record of it (a later model of that name is someone else's).
                done = False
            elif done and target is not None and target.canary_version is None and self._stage_seen():
                # Not owed any more, yet it failed (refused, or still failing past the deadline): said, so that
                # on-call clears the router's record by hand.
                uncleared = self._last_error_note(action.id)
        if done:
            self._confirm(action.id)
            for other in ("traffic", "restore"):  # the one a hand promotion (or its undoing) made way for
                if self._rollback_id(other) != action.id:
                    self._abandon_pending(self._rollback_id(other))
            seen = "the candidate was never staged on" if target is None or target.canary_weight \
                else f"{detail} observed on"
            # What the router saw wrong is no part of "back on stable" it can vouch for (Seldon v2: a Model it does
            # not manage carrying weight may be the candidate renamed): said beside it.
            caveat = f"; the target says: {target.detail}" if target is not None and target.detail else ""
            if uncleared and candidate is not None:
                caveat += (f"; the router's record of candidate {candidate.version} could not be cleared (no user is "
                           f"on it; its withdrawal failed{uncleared}): clear it by hand, else a later model of that "
                           "name may be taken for it")
            self._record("TrafficRestored", f"{seen} {self.spec.target.description}{caveat}")
            return dataclasses.replace(rollback, traffic_confirmed_at=self.now,
                                       serving_when_confirmed=target.stable_version if target is not None else None)
        # Back to safety at once: this needs the target only, never the registry.
        self._request(action, detail)
        return rollback

    def _withdrawal_owed(self, action_id: str) -> bool:
        """Whether a withdrawal the target needs for nothing but the router's record is still to be sent: never sent,
        sent before an operator restart (maybe never carried out), or failed for a reason that may pass, until
        progressDeadline from the first of its latest run of failures that were no outage (refused_since: a router
        that could not be reached at all has not turned it down, and is tried again once it answers). A refused one
        (its error in TargetReady) is not retried, nor one failing past that deadline (it would hold the rollback open
        for ever): no user is on the candidate."""
        record = self._ledger(action_id)
        restarted = self.obs.resend_pending and action_id not in self.failed_actions
        if record is None or record.sent_at is None or restarted:
            return True
        error = self.failed_actions.get(action_id) or _ledger_error(record)
        return error is not None and error.kind not in _REFUSALS \
            and not (record.refused_since is not None and self._deadline_passed(record.refused_since))

    def _unstaged(self) -> bool:
        """Whether the candidate a rollback makes way for a new one is off the target; else it is asked for. The new
        attempt forgets it, and one that stages nothing (its version already stable, or not resolvable) would leave it
        staged at 0% for good: the runtime withdraws what is left only of a rollout that ended RolledBack or Failed.
        (A re-gate of the same candidate keeps it staged: no unstage and restage of it.)"""
        candidate = self._candidate
        action = UnstageCandidate(id=self._rollback_id("unstage"), candidate_version=candidate.version)
        record = self._ledger(action.id)
        if record is not None and record.state is ActionState.CONFIRMED:
            return True
        observed, target = self.obs.target, self._target()
        gone = observed is not None and observed.error is not None and observed.error.kind is AdapterErrorKind.NOT_FOUND
        # A staging never seen may still land (KServe has taken it, Knative not made the revision yet): then the
        # unstage is sent once at least. And not pinned: Knative's canaryTrafficPercent 0 comes off only through
        # the router. A write-ahead read on the first decision after a restart proves nothing was sent.
        sent = record is not None and record.sent_at is not None and record.last_error is None \
            and action.id not in self.failed_actions and not self.obs.resend_pending
        if gone or ((sent or self._stage_seen()) and target is not None
                    and target.canary_version != candidate.version and not target.pinned):
            self._confirm(action.id)
            return True
        error = _ledger_error(record)
        if record is not None and error is not None and error.kind is not AdapterErrorKind.UNAVAILABLE \
                and action.id in self.failed_actions and record.refused_since is not None \
                and self._deadline_passed(record.refused_since) and target is not None and not target.canary_weight:
            # Refused again past progressDeadline of refusals in a row (a router that can no longer drive the
            # target), and the target, read now, shows no user on a canary: holding the new attempt for ever helps
            # no one. It starts, and on-call is told what was left. An unreachable or unreadable target, or traffic
            # put back on a canary since the withdrawal (an Argo CD sync), is waited for.
            self._record("CandidateNotUnstaged", f"candidate {candidate.version} could not be taken off "
                                                 f"{self.spec.target.description} within {self._deadline} (no "
                                                 f"user is on it){self._last_error_note(action.id)}: clear it by "
                                                 "hand, else a later model of that name may be taken for it")
            self._abandon_pending(action.id)
            return True
        self._request(action, f"unstage {candidate.version}")
        return False

    def _stage_seen(self) -> bool:
        """Whether this attempt's candidate was seen staged: the attempt got past staging, or staging confirmed."""
        status = self.status
        if status.gate is not None or status.current_step is not None or status.promotion is not None:
            return True
        record = self._ledger(self._stage_id()) if status.candidate is not None else None
        return record is not None and record.state is ActionState.CONFIRMED

    def _maybe_staged(self) -> bool:
        """Whether this attempt's candidate may be on the target: staging was asked for or seen, or the attempt
        got past staging (a status written before a staging seen only on the target was recorded)."""
        status = self.status
        if status.candidate is None:
            return False
        if status.gate is not None or status.current_step is not None or status.promotion is not None:
            return True
        prefix = f"{self._attempt}:stage:"
        return any(record.id.startswith(prefix) for record in status.actions)

    def _rollback_alias(self, rollback: RollbackStatus) -> RollbackStatus:
        if rollback.alias_confirmed_at is not None:
            return rollback
        stable = self.status.stable
        alias = self.spec.model.stable_alias
        registry = self._registry()
        if stable is None:
            # Also when a new version waits (restart): a rejected version is never the way back.
            if rollback.reject_candidate:
                return self._remove_candidate_alias(rollback, alias)
            return dataclasses.replace(rollback, alias_confirmed_at=self.now)  # no alias to keep
        if registry is None:
            return rollback
        current = registry.stable_alias_version
        action = SetAlias(id=self._rollback_id("alias"), alias=alias, version=stable.version)
        candidate = self.status.candidate
        # Until its promotion confirmed the alias on the candidate this rollout has not touched it (the promotion
        # holds rather than move it off a third version): a third version there was set by someone else while it
        # ran. Undo only what this rollout did, not their decision. (After that it moved the alias
        # itself, and a rollback puts back what it found.)
        promotion = self.status.promotion
        moved_by_hand = (promotion is None or promotion.alias_confirmed_at is None) and current is not None \
            and current.version not in (stable.version, candidate.version if candidate else None)
        if moved_by_hand and self._ledger(action.id) is None:
            self._record("AliasLeft", f"@{alias} names version {current.version}, set outside this rollout: "
                                      f"left there, not put back to {stable.version}")
            return dataclasses.replace(rollback, alias_confirmed_at=self.now, alias_left_on=current.version)
        restored = current is not None and current.version == stable.version
        error = _ledger_error(self._ledger(action.id))
        if not restored and error is not None and error.kind is AdapterErrorKind.NOT_FOUND:
            # The registry answers, but has no such version (deleted mid-rollout; MLflow drops its aliases with
            # it): no send will ever put the alias back, so the step ends, saying so, as the tag step does.
            self._abandon_pending(action.id)
            # (An id that the alias step's is not a prefix of: _abandon_pending above matches by prefix.)
            removal = RemoveAlias(id=self._rollback_id("unalias"), alias=alias,
                                  version=candidate.version if candidate else "")
            if candidate is not None and current is not None and current.version == candidate.version \
                    and rollback.reject_candidate:
                # After a promotion it names the rejected candidate: at least not that one, as a first rollout's
                # rollback does with no stable to put back. The ledger entry says this rollback removed it.
                self._request(removal, f"@{alias} off {candidate.version}")
                return rollback
            removed = self._ledger(removal.id) is not None
            self._confirm(removal.id)
            where = f"names version {current.version}" if current else "is not set"
            if removed and current is None:
                where = f"was taken off the rejected version {removal.version}"
            self._record("AliasNotRestored", f"@{alias} cannot be put back on version {stable.version}, which no "
                                             f"longer exists in the registry ({error.message}); @{alias} {where}")
            return dataclasses.replace(rollback, alias_confirmed_at=self.now)
        return self._settle_alias(rollback, action, restored, "AliasRestored", f"@{alias} -> version {stable.version}",
                                  f"@{alias} -> {stable.version}")

    def _remove_candidate_alias(self, rollback: RollbackStatus, alias: str) -> RollbackStatus:
        """No stable version to point the alias back at: it must at least not name the rejected candidate."""
        candidate = self.status.candidate
        registry = self._registry()
        if candidate is None:
            return dataclasses.replace(rollback, alias_confirmed_at=self.now)
        if registry is None:
            return rollback
        current = registry.stable_alias_version
        action = RemoveAlias(id=self._rollback_id("alias"), alias=alias, version=candidate.version)
        return self._settle_alias(rollback, action, current is None or current.version != candidate.version,
                                  "AliasRemoved", f"@{alias} no longer names version {candidate.version}",
                                  f"@{alias} off {candidate.version}")

    def _settle_alias(self, rollback: RollbackStatus, action: SetAlias | RemoveAlias, observed: bool, event: str,
                      detail: str, asked: str) -> RollbackStatus:
        """Confirm the alias step once the registry shows it (recorded if this rollback moved it), else ask."""
        if observed:
            self._confirm(action.id)
            if self._ledger(action.id) is not None:
                self._record(event, detail)
            return dataclasses.replace(rollback, alias_confirmed_at=self.now)
        self._request(action, asked)
        return rollback

    def _rollback_tag(self, rollback: RollbackStatus) -> RollbackStatus:
        if not rollback.reject_candidate or rollback.tag_confirmed_at is not None:
            return rollback
        candidate = self._candidate
        action = TagRejected(id=self._rollback_id("tag"), version=candidate.version, reason=rollback.reason,
                             evidence=rollback.evidence, rejected_at=rollback.verdict_at, actor=rollback.actor)
        record = self._ledger(action.id)
        observed_error = self.obs.registry.error if self.obs.registry is not None else None
        if record is not None and record.refused_since is not None and observed_error is not None \
                and observed_error.kind is AdapterErrorKind.UNAVAILABLE:
            # The registry is away now: the refusals before this outage no longer run up to the deadline.
            record = dataclasses.replace(record, refused_since=None)
            self._put_record(record)
        error = _ledger_error(record)
        # Judged when a refusal is seen now (the tag's, or the registry refusing the reads it needs first, e.g.
        # revoked credentials: the tag is not sent then), not merely once time has passed: an operator that was
        # down past the deadline saw no refusal meanwhile, and sends the tag again first.
        refused_now = action.id in self.failed_actions or (
            observed_error is not None and observed_error.kind is not AdapterErrorKind.UNAVAILABLE)
        if record is not None and rollback.traffic_confirmed_at and rollback.alias_confirmed_at \
                and error is not None and error.kind is not AdapterErrorKind.UNAVAILABLE \
                and refused_now and record.refused_since is not None and not self._deleting \
                and self._deadline_passed(record.refused_since):
            # Users are back on stable, and the registry answers but has refused the tag for progressDeadline
            # in a row (e.g. a redirect that turns the POST into a 405): holding the target for ever for a tag
            # helps no one. The rollback ends untagged, and says so. A registry that is away is waited for,
            # and its outage does not count as refusal time (one 404 as it comes back does not give up): the
            # tag is what keeps the version from being rolled out again. (A deleted rollout's rollback gives
            # up in _give_up_deleted.)
            self._record("CandidateNotTagged", f"version {candidate.version} is not tagged {REJECTED_TAG}: the "
                                               f"registry did not take the tag within {self._deadline}"
                                               f"{self._last_error_note(action.id)}")
            self._abandon_pending(action.id)
            return dataclasses.replace(rollback, reject_candidate=False)
        registry = self._registry()
        if registry is None:
            return rollback
        # The rejected version's own tags, also when the spec has moved on to another version: an entry in
        # the ledger only says the tag was asked for (a kill or a failed call leaves the same entry).
        observed = next((v for v in (registry.candidate, registry.rolled_back)
                         if v is not None and v.version == candidate.version), None)
        if observed is None and registry.rolled_back_gone:
            self._confirm(action.id)
            self._record("CandidateRejected", f"version {candidate.version} no longer exists in the registry: "
                                              f"no {REJECTED_TAG} tag to write")
            return dataclasses.replace(rollback, tag_confirmed_at=self.now)
        # This rejection's tags, not an earlier attempt's: each rejection is recorded with its own reason.
        tagged = observed is not None and (observed.tags.get(REJECTED_TAG) == "true" and
                                           observed.tags.get(REJECTED_TIME_TAG) == rejection_time(rollback.verdict_at))
        if tagged:
            self._confirm(action.id)
            self._record("CandidateRejected", f"version {candidate.version} tagged {REJECTED_TAG}")
            return dataclasses.replace(rollback, tag_confirmed_at=self.now)
        self._request(action, f"version {candidate.version}")
        return rollback

    # --- promotion and bake --------------------------------------------------------------------------

    def _start_promotion(self, actor: str) -> None:
        # `promote --full` may skip a step whose weight is pending: nothing will confirm it now.
        self._abandon_pending(f"{self._attempt}:step-")
        stable = self.status.stable
        self._move(Phase.PROMOTING, pause=None, promotion=PromotionStatus(
            started_at=self.now, previous_version=stable.version if stable else None, actor=actor))
        self._record("PromotionStarted", f"candidate {self._candidate.version} to all traffic"
                                         + (f", previous version {stable.version}" if stable else ""),
                     actor=actor)

    def _promoting(self) -> None:
        promotion = self.status.promotion
        if promotion is None:
            self._start_promotion(CONTROLLER_ACTOR)
            return
        candidate = self._candidate
        alias = self.spec.model.stable_alias
        target = self._target()
        if promotion.target_confirmed_at is None:
            action_id = f"{self._attempt}:promote:target"
            serves_all = target is not None and target.stable_version == candidate.version \
                and target.canary_version is None
            # Confirmed only on a target that says it is ready: Seldon v2's router reads the version from the spec
            # it wrote, so readiness is the one word from Seldon that the promotion took (review s33seldon).
            if serves_all and target.ready:
                self._confirm(action_id)
                self._record("Promoted", f"candidate {candidate.version} serves all traffic")
                promotion = dataclasses.replace(promotion, target_confirmed_at=self.now)
                self._update(promotion=promotion, canary_weight=100)
            else:
                action = PromoteCandidate(id=action_id, candidate=candidate)
                # Pending from the promotion's start, not its first send: a target or registry away before it
                # still meets the deadline (and `retry` renews it).
                self._request(action, f"version {candidate.version}", send=False)
                # The staged candidate vanished (e.g. a sync reapplied the target's spec): never send an
                # unverified revision all traffic in one go, nor send the promotion again.
                vanished = target is not None and not (
                    (target.canary_version == candidate.version and target.canary_ready)
                    or target.stable_version == candidate.version)
                reason = (f"candidate {candidate.version} is no longer staged and ready on "
                          f"{self.spec.target.description}, so it cannot be promoted")
                held = self._alias_set_elsewhere()
                record = self._ledger(action_id)
                # Sent, the canary gone and stable's version not known yet: the target is making the promoted
                # version's pods (Seldon's new Deployments), not losing the candidate; no hold, nothing to do.
                rolling_out = vanished and target is not None and record is not None and record.sent_at is not None \
                    and target.canary_version is None and target.stable_version is None
                if rolling_out:
                    reason = (f"{self.spec.target.description} is still rolling out the promoted version "
                              f"{candidate.version}: stable does not report it serving yet")
                if self._candidate_gone() and (record is None or record.sent_at is None):
                    # Deleted from the registry (MLflow drops its aliases with it): its alias can never move, so
                    # never send it all traffic; taken off the target as an unready one is, not tagged (nothing
                    # judged it, and there is no version left to tag).
                    self._start_rollback(RollbackCause.CANDIDATE_NOT_READY,
                                         f"candidate {candidate.version} no longer exists in the registry, so it "
                                         "cannot be promoted", reject_candidate=False, final_phase=Phase.FAILED)
                    return
                # One rule for the deadline's tagging and for every hold that tells it beforehand.
                rejects = self._promotion_deadline_rejects(action_id, held, vanished)
                if self._deadline_passed(self._pending_since(action_id)):
                    if held is not None and not vanished:
                        self._failure(RollbackCause.PROGRESS_DEADLINE_EXCEEDED,
                                      f"the promotion was held past {self._deadline}: {held}", {},
                                      reject_candidate=rejects)
                    elif vanished:
                        self._failure(RollbackCause.PROGRESS_DEADLINE_EXCEEDED, f"{reason} (waited {self._deadline})",
                                      {}, reject_candidate=rejects)
                    elif target is None:
                        # Unread, the target said nothing of the model: rolled back, not tagged (review s40promote).
                        self._deadline_failure(f"{self.spec.target.description} could not be read to confirm the "
                                               f"promotion of {candidate.version}", action_id, judged=False)
                    else:
                        self._deadline_failure(f"the target did not take the promotion of {candidate.version}",
                                               action_id)
                elif target is None:
                    self._hold(HoldReason.TARGET_UNAVAILABLE, f" until {self.spec.target.description} answers",
                               action_id, reject=rejects)
                elif self._registry() is None:
                    self._hold(HoldReason.REGISTRY_UNAVAILABLE, " until the registry answers", action_id,
                               reject=rejects)
                elif rolling_out:
                    self._wait(f"Promoting candidate {candidate.version}: {reason}", poll=True)
                elif serves_all:
                    where = self.spec.target.description
                    self._wait(f"Promoting candidate {candidate.version}: {where} names it as serving all traffic "
                               f"but is not ready" + (f": {target.detail}" if target.detail else ""), poll=True)
                elif vanished:
                    self._hold(HoldReason.CANDIDATE_NOT_STAGED, f": {reason}", action_id, poll=True,
                               reject=rejects)
                elif held is not None:
                    self._hold_for_alias(held, action_id)
                else:
                    self._request(action, f"version {candidate.version}")
                    self._wait(f"Promoting candidate {candidate.version} to all traffic", poll=True)
                return
        registry = self._registry()
        action_id = f"{self._attempt}:promote:alias"
        doubt = self._serving_doubt(target)
        if doubt is not None:
            self._held_off_target(action_id, *doubt)
            return
        current = registry.stable_alias_version if registry is not None else None
        moved = current is not None and current.version == candidate.version
        # promote() overrules an earlier rejection, and records the promotion (the way back, then promoted.time),
        # only after moving the alias: a failure or kill in between leaves them undone, so the (idempotent)
        # promotion is sent again until the flag and its own promoted.time read so.
        overruled = moved and current is not None and current.tags.get(REJECTED_TAG) != "true" \
            and current.tags.get(PROMOTED_TIME_TAG) == rejection_time(promotion.started_at)
        if not overruled:
            error = _ledger_error(self._ledger(action_id))
            if error is not None and error.kind is AdapterErrorKind.NOT_FOUND and registry is not None \
                    and self._candidate_gone():
                # The candidate is gone from the registry, as this reconcile's read agrees (one NotFound alone may
                # be a registry briefly up on the wrong store, whose reads fail too): no send will ever move the
                # alias, so the promotion ends now rather than at the deadline. Not tagged: nothing judged it.
                self._failure(RollbackCause.PROGRESS_DEADLINE_EXCEEDED, f"the registry cannot move @{alias} to "
                              f"{candidate.version}: {error.message}", {}, reject_candidate=False)
                return
            held = None if moved else self._alias_set_elsewhere()
            # The candidate serves all traffic and no judge watches it until the alias has moved (the bake
            # starts after): a registry that refuses or stays away is a missed deadline, rolled back. The
            # wait is a pending record from its start, so that `retry` gives it a fresh deadline.
            self._request(SetAlias(id=action_id, alias=alias, version=candidate.version, promotion=True),
                          f"@{alias} -> {candidate.version}", send=registry is not None and held is None)
            flagged = moved and current is not None and current.tags.get(REJECTED_TAG) == "true"
            recording = f"clear {REJECTED_TAG}" if flagged else "record the promotion"
            what = (f"{recording} on version {candidate.version} (@{alias} moved)" if moved
                    else f"move @{alias} to {candidate.version}")
            if held is not None and self._deadline_passed(self._pending_since(action_id)):
                self._failure(RollbackCause.PROGRESS_DEADLINE_EXCEEDED,
                              f"the promotion was held past {self._deadline}: {held}", {},
                              reject_candidate=False)
                return
            if held is not None:
                self._hold_for_alias(held, action_id)
                return
            if self._deadline_passed(self._pending_since(action_id)):
                # The candidate already served all traffic and nothing judged it: a registry that fails its
                # writes (503, a timeout, a redirect turning the POST into a 405) is rolled back, never tagged.
                self._deadline_failure(f"the registry did not {what}", action_id, judged=False)
                return
            if registry is None:
                # The candidate serves all traffic meanwhile: a hold like the target step's, with the deadline's
                # outcome above (untagged: nothing judged it).
                self._hold(HoldReason.REGISTRY_UNAVAILABLE, f": @{alias} moves to version {candidate.version} once the "
                           "registry answers", action_id, reject=self._deadline_rejects(action_id, judged=False))
                return
            self._wait(f"{'Clearing ' + REJECTED_TAG if flagged else 'Recording the promotion'} on version "
                       f"{candidate.version}, now @{alias}" if moved
                       else f"Moving @{alias} to version {candidate.version}", poll=True)
            return
        self._confirm(action_id)
        self._record("AliasMoved", f"@{alias} -> version {candidate.version}"
                                   + (f" (was {promotion.previous_version})" if promotion.previous_version else ""))
        self._update(promotion=dataclasses.replace(promotion, alias_confirmed_at=self.now))
        if self.spec.bake is not None and self.status.stable is not None:
            self._move(Phase.BAKING, analysis=None)
            # Judged from when the candidate took all traffic, not from now: the alias may have moved late (a
            # registry away, an operator restarted in between), and what the version served meanwhile counts.
            self._start_bake(promotion.target_confirmed_at or self.now)
        else:
            self._succeed("promoted")

    def _serving_doubt(self, target: TargetObservation | None) -> tuple[HoldReason, str] | None:
        """None when the target read now shows the candidate serving all traffic; else why not, and the hold it
        makes: put back since it took the promotion (a GitOps sync, a hand edit), unread, or not saying which
        version serves (Seldon v1 while the promoted Deployments scale up)."""
        candidate, where = self._candidate, self.spec.target.description
        if target is None:
            return HoldReason.TARGET_UNAVAILABLE, (f"{where} could not be read to confirm candidate "
                                                   f"{candidate.version} still serves all traffic")
        if target.stable_version == candidate.version and target.canary_version is None:
            return None
        if target.stable_version is None and target.canary_version is None:
            return HoldReason.TARGET_UNAVAILABLE, (f"{where} does not say which version serves (candidate "
                                                   f"{candidate.version} did)"
                                                   + (f": {target.detail}" if target.detail else ""))
        canary = (f", canary {target.canary_version} at {target.canary_weight or 0}%" if target.canary_version
                  else "")
        return HoldReason.CANDIDATE_NOT_STAGED, (f"{where} no longer serves candidate {candidate.version} alone (it "
                                                 f"serves stable {target.stable_version or 'unknown'}{canary})")

    def _held_off_target(self, action_id: str, reason: HoldReason, why: str) -> None:
        """The promotion's alias step, while the target does not show the candidate serving all traffic
        (_serving_doubt): the alias stays, or it could name a version that serves nobody, and the promotion is not
        over. Rolled back at progressDeadline, untagged: nothing judged the model."""
        candidate, alias, where = self._candidate, self.spec.model.stable_alias, self.spec.target.description
        self._request(SetAlias(id=action_id, alias=alias, version=candidate.version, promotion=True),
                      f"@{alias} -> {candidate.version}", send=False)
        registry = self._registry()
        current = registry.stable_alias_version if registry is not None else None
        # Moved already (its confirmation not yet stored, as after a kill): put back by the rollback at the deadline.
        left = (f"@{alias} already names {candidate.version}; it is put back unless the target serves "
                f"{candidate.version} again" if current is not None and current.version == candidate.version
                else f"@{alias} stays")
        if self._deadline_passed(self._pending_since(action_id)):
            self._failure(RollbackCause.PROGRESS_DEADLINE_EXCEEDED, f"{why} (waited {self._deadline})", {},
                          reject_candidate=False)
        elif reason is HoldReason.TARGET_UNAVAILABLE:
            self._hold(reason, f" until {where} shows version {candidate.version} serving all traffic: {why}; "
                       f"{left}", action_id, reject=False, poll=self._target() is not None)
        else:
            self._hold(reason, f": {why}; {left}", action_id, reject=False, poll=True)

    def _promotion_deadline_rejects(self, action_id: str, held: str | None, vanished: bool) -> bool:
        """Whether the promotion's target step, past its deadline, tags the candidate rejected as things stand now
        (`held`: _alias_set_elsewhere; `vanished`: the staged candidate is gone or not ready). Gone from the target,
        nothing judged it bad: not tagged, as an unsent promotion is not (still staged but not ready: its own
        failing, tagged); a stable alias moved by hand: not tagged; else as _deadline_failure decides."""
        target = self._target()
        if vanished:
            return target is not None and target.canary_version == self._candidate.version
        return held is None and self._deadline_rejects(action_id, judged=target is not None)

    def _alias_set_elsewhere(self) -> str | None:
        """Why the promotion must not move the stable alias now: it names a version that is neither the one this
        rollout found there (status.stable) nor its candidate, so someone pointed it there while the rollout ran.
        Moving it would overrule their decision unseen, and a rollback would put back the version they replaced."""
        registry = self._registry()
        current = registry.stable_alias_version if registry is not None else None
        stable = self.status.stable
        if self._alias_put_back_after_promotion():
            named = f"version {current.version}" if current is not None else "no version"
            return (f"@{self.spec.model.stable_alias} names {named} again: this promotion had moved it to version "
                    f"{self._candidate.version}, and it was pointed back outside this rollout")
        if current is None or current.version in (stable.version if stable else None, self._candidate.version):
            return None
        found = f"version {stable.version}" if stable else "no version"
        return (f"@{self.spec.model.stable_alias} names version {current.version}, set outside this rollout (it "
                f"named {found} when the rollout started)")

    def _hold(self, reason: HoldReason, said: str, action_id: str, *, reject: bool, advice: str | None = None,
              poll: bool = False) -> None:
        """Wait, holding the promotion (`said` follows HOLDING_PROMOTION in the message), and record the hold for
        status.promotion.hold: what ends it at progressDeadline from `action_id`'s start, as _promoting decides."""
        self._wait(f"{HOLDING_PROMOTION}{said}", poll=poll)
        self.holding = HoldStatus(reason=reason, deadline=self._pending_since(action_id) + self.spec.progress_deadline,
                                  rolls_back=self.spec.rollback.automatic, reject_candidate=reject, advice=advice)

    def _alias_put_back_after_promotion(self) -> bool:
        """The stable alias names the version this rollout found there, while the candidate carries this promotion's
        own promoted.time, written only once its move was done: someone pointed the alias back since (a kill can hide
        the move from every reconcile), and sending the promotion again would overrule them unseen."""
        registry, stable, promotion = self._registry(), self.status.stable, self.status.promotion
        if registry is None or promotion is None:
            return False
        current, candidate = registry.stable_alias_version, registry.candidate
        # A first rollout's (no stable version) is put back by removing the alias.
        return (current.version if current else None) == (stable.version if stable else None) \
            and candidate is not None and candidate.version == self._candidate.version \
            and candidate.tags.get(PROMOTED_TIME_TAG) == rejection_time(promotion.started_at)

    def _alias_left_promoted_version(self) -> str | None:
        """What the stable alias names, when it no longer names the version this rollout promoted (moved after the
        promotion, outside this rollout); None when it does, or when the registry did not answer."""
        registry, promotion = self._registry(), self.status.promotion
        if registry is None or promotion is None or promotion.alias_confirmed_at is None:
            return None
        current = registry.stable_alias_version
        if current is not None and current.version == self._candidate.version:
            return None
        named = f"version {current.version}" if current is not None else "no version"
        return (f"@{self.spec.model.stable_alias} names {named}, not the promoted version {self._candidate.version}: "
                "moved outside this rollout after the promotion")

    def _hold_for_alias(self, held: str, action_id: str) -> None:
        alias, stable = self.spec.model.stable_alias, self.status.stable
        undo = (f"point @{alias} at version {self._candidate.version} again" if self._alias_put_back_after_promotion()
                else f"point @{alias} back at version {stable.version}" if stable else f"remove @{alias}")
        advice = f"{undo} to promote candidate {self._candidate.version}, or roll back"
        said = f"{held}: {advice}"
        # Said once per hold, not at every reconcile (nor after a read that failed meanwhile): a hold is new when the
        # last one said something else, or when a promotion step was sent since (the alias was put back in between).
        last = next((entry for entry in reversed(self.status.history) if entry.event == "StableMismatch"), None)
        sent = [record.sent_at for record in self.status.actions if record.id.startswith(f"{self._attempt}:promote:")
                and record.sent_at is not None]
        if last is None or last.detail != said or any(time > last.time for time in sent):
            # The advice apart too: once the hold has ended, readers tell the entry without it.
            self._record("StableMismatch", said, advice=advice)
        elif last.advice is None:  # said by an operator that kept no advice apart: added to the same entry
            self._update(history=tuple(dataclasses.replace(entry, advice=advice) if entry is last else entry
                                       for entry in self.status.history))
        # Rolled back untagged at the deadline: nothing judged the candidate.
        self._hold(HoldReason.STABLE_ALIAS_MOVED, f": {said}", action_id, reject=False, advice=advice, poll=True)

    def _candidate_gone(self) -> bool:
        """The registry answers that the rollout's candidate no longer exists: a pinned one the spec resolves to, or
        status.candidate read on its own when the spec no longer resolves to it (an alias-named one whose alias went:
        removed on purpose, it still exists)."""
        registry = self._registry()
        return registry is not None and (registry.candidate_gone or (
            registry.candidate is None and self.spec.model.version is not None))

    def _baking(self) -> None:
        bake = self.spec.bake
        if bake is None:  # bake removed from the spec while baking
            self._succeed("bake removed from spec")
            return
        analysis = self.status.analysis
        if analysis is None or analysis.mode is not AnalysisMode.BAKE:
            self._start_bake(self.now)  # a retried bake, or one added to the spec since: a full bake from now
        elif analysis.ends_at is not None and analysis.ends_at != analysis.window_start + bake.duration:
            # bake.duration edited mid-bake: the spec's duration counts, from the same start (one shorter than
            # what was already measured is decided by a fresh run).
            ends_at = analysis.window_start + bake.duration
            self._record("SpecChanged", f"bake.duration is now {format_duration(bake.duration)}: the bake ends at "
                                        f"{format_time(ends_at)}")
            covered = analysis.measured_at or analysis.last_run_at
            if covered is not None and covered >= ends_at:
                # Already past the new end: a fresh run decides (through the outage rule), not a stored one.
                analysis = dataclasses.replace(analysis, measured_at=None, last_run_at=None)
            self._update(analysis=dataclasses.replace(analysis, ends_at=ends_at))
        outcome = self._judge()
        if outcome is Outcome.FAIL:
            self._judged_failure(RollbackCause.BAKE_FAILED)
        elif outcome is Outcome.PASS:
            self._record("BakePassed", self._analysis_summary())
            self._succeed("bake passed")
        elif outcome is Outcome.INCONCLUSIVE:
            self._inconclusive(RollbackCause.BAKE_INCONCLUSIVE, self._analysis_reason(Outcome.INCONCLUSIVE),
                               self._analysis_evidence())

    def _start_bake(self, since: datetime) -> None:
        bake = self.spec.bake
        if bake is None:
            return
        # A promote --full right after the gate: its predictions, counted as the candidate's, would open the bake.
        settled = self._gate_predictions_scraped_by()
        held = settled is not None and settled > since
        since = settled if held and settled is not None else since
        self._update(analysis=AnalysisStatus(mode=AnalysisMode.BAKE, window_start=since, ends_at=since + bake.duration))
        # What the run that ends it reads (windows as long as the bake, as many days apart): a bake of days reaches
        # `baseline` times as far back, which the previous version's age and Prometheus' retention must cover.
        promotion = self.status.promotion
        promoted_at = (promotion.target_confirmed_at if promotion else None) or since
        days = max(1, int(bake.baseline / timedelta(days=1)))
        farthest = history_days_back(bake.duration, days, since + bake.duration - promoted_at)[-1]
        every = history_every_days(bake.duration)
        reach = timedelta(days=farthest) - (since - promoted_at)
        stable = self.status.stable.version if self.status.stable else "?"
        self._record("BakeStarted", f"judging version {self._candidate.version} against version {stable}'s history "
                                    f"on {days} past days, {'a day' if every == 1 else f'{every} days'} apart, back "
                                    f"to {format_duration(_whole_seconds(reach))} before the promotion (version "
                                    f"{stable} must have served that long and Prometheus keep "
                                    f"{format_duration(timedelta(days=farthest) + bake.duration)} of data at the "
                                    f"bake's end), for {format_duration(bake.duration)}"
                                    + (f" from {format_time(since)}, once the gate's own predictions are scraped"
                                       if held else f" since the promotion at {format_time(since)}"
                                       if since != self.now else ""))

    def _succeed(self, why: str) -> None:
        moved = self._alias_left_promoted_version()
        if moved is not None:
            self._record("StableMismatch", moved)
        self._record("Succeeded", why)
        self._move(Phase.SUCCEEDED, completed_at=self.now, pause=None)

    # --- conditions, message, requeue ----------------------------------------------------------------

    def _set_condition(self, condition_type: str, status: ConditionStatus, reason: str, message: str) -> None:
        existing = self.conditions_before.get(condition_type)
        if existing is not None and existing.status is status:
            transition = existing.last_transition_time
        else:
            transition = self.now.replace(microsecond=0)  # conventions: second precision
        message = _one_line(message)
        if len(message) > CONDITION_MESSAGE_MAX:  # metav1.Condition's limit: a longer one is refused
            message = message[:CONDITION_MESSAGE_MAX - 3] + "..."
        condition = Condition(type=condition_type, status=status, reason=reason, message=message,
                              last_transition_time=transition, observed_generation=self.obs.generation)
        others = [item for item in self.status.conditions if item.type != condition_type]
        order = [str(item) for item in ConditionType]
        conditions = sorted([*others, condition],
                            key=lambda item: order.index(item.type) if item.type in order else len(order))
        self._update(conditions=tuple(conditions))

    def _finish(self) -> None:
        self._update_retry()
        self._record_hold()
        resolving = self.status.phase is Phase.PENDING and self.status.candidate is None
        if resolving != (self.status.resolving_since is not None):
            self._update(resolving_since=self.now if resolving else None)
        self._ledger_conditions()
        message = self._message()
        index = self.status.current_step
        self._update(message=message, step=None if index is None else step_fraction(index, len(self.spec.canary.steps)))
        self._derived_conditions(message)

    def _record_hold(self) -> None:
        """status.promotion.hold: this pass's hold, since when the promotion has been held; cleared when it is not."""
        promotion = self.status.promotion
        if promotion is None:
            return
        hold = self.holding if self.status.phase is Phase.PROMOTING else None
        if hold is not None:
            before = promotion.hold
            # A hold that began under an operator which recorded none: since when is not known.
            older = before is None and self.read_held_without_record
            since = before.since if before is not None else (None if older else self.now)
            hold = dataclasses.replace(hold, since=since)
        if hold != promotion.hold:
            self._update(promotion=dataclasses.replace(promotion, hold=hold))

    def _deadline_exceeded(self, message: str) -> None:
        """Progressing False/ProgressDeadlineExceeded while still trying; said once as a Warning Event too (a stuck
        wait otherwise posts none: `kubectl describe` and Event-based alerts would see nothing)."""
        old = self.status.condition(ConditionType.PROGRESSING)
        if old is None or old.reason != "ProgressDeadlineExceeded":
            self._record("ProgressDeadlineExceeded", message)
        self._set_condition(ConditionType.PROGRESSING, ConditionStatus.FALSE, "ProgressDeadlineExceeded", message)

    def _rollback_stuck(self) -> str:
        """What a rollback has not confirmed (empty: nothing, or not for longer than progressDeadline yet)."""
        rollback = self.status.rollback
        if (self.status.phase is not Phase.ROLLING_BACK or rollback is None
                or self.now - rollback.verdict_at <= self.spec.progress_deadline):
            return ""
        missing = [what for what, at in (("traffic back on stable", rollback.traffic_confirmed_at),
                                         (f"@{self.spec.model.stable_alias}", rollback.alias_confirmed_at))
                   if at is None]
        if rollback.reject_candidate and rollback.tag_confirmed_at is None:
            missing.append("the candidate's rejection tag")
        if not missing and rollback.restart and self.status.candidate is not None:
            missing.append(f"version {self.status.candidate.version} off the target before the new candidate starts")
        return ", ".join(missing) or "its end"

    def _target_stuck(self) -> bool:
        """A rollback stuck past progressDeadline on a target not ready (or unreadable), which may never heal; a ready
        one showing the candidate again (a sync put it back) is acted on at the usual pace."""
        target = self._target()
        return bool(self._rollback_stuck()) and (target is None or not target.ready)

    def _stuck_poll(self) -> timedelta | None:
        """How often a rollback stuck past progressDeadline looks again: less often the longer it lasts (as
        _wait_resolving), since no event tells when the target heals; None while it is not stuck."""
        rollback = self.status.rollback
        if rollback is None or not self._target_stuck():
            return None
        past = self.now - rollback.verdict_at - self.spec.progress_deadline
        return min(max(CONFIRM_POLL, past / 10), RESOLVING_POLL_MAX)

    def _resolving_too_long(self) -> bool:
        """Pending without a candidate for longer than progressDeadline, waiting or failing: a version that never
        finishes registering is as stuck as a registry that never answers."""
        status = self.status
        if status.phase is not Phase.PENDING or status.candidate is not None or status.resolving_since is None:
            return False
        return self.now - status.resolving_since > self.spec.progress_deadline

    def _wait_resolving(self, why: str) -> None:
        """A wait no event ends (the registry and the target send none): look again, less often the longer it
        lasts (1 s at first, 30 s from 5 minutes on), so a version stuck registering costs the registry little."""
        self._wait(why)
        since = self.status.resolving_since or self.now
        self.slow_poll = min(max(CONFIRM_POLL, (self.now - since) / 10), RESOLVING_POLL_MAX)

    def _update_retry(self) -> None:
        if not self.errors:
            self._update(retry=None)
            return
        reason = _one_line("; ".join(self.errors))
        retry = self.status.retry
        if retry is None:
            retry = RetryState(attempts=1, since=self.now, reason=reason, last_attempt_at=self.now)
        else:
            last = retry.last_attempt_at or retry.since
            if self.now - last >= self._backoff(retry.attempts):
                retry = dataclasses.replace(retry, attempts=retry.attempts + 1, last_attempt_at=self.now)
            retry = dataclasses.replace(retry, reason=reason)
        self._update(retry=retry)
        due = (retry.last_attempt_at or self.now) + self._backoff(retry.attempts)
        self.requeue.append(max(due - self.now, timedelta(0)))

    @staticmethod
    def _backoff(attempts: int) -> timedelta:
        return min(BACKOFF_BASE * (2 ** min(max(attempts - 1, 0), 16)), BACKOFF_MAX)

    def _requeue_after(self) -> timedelta | None:
        if self.status.phase in TERMINAL_PHASES and not self.errors:
            # Only once it resolved a candidate: a rollout that never did starts again by a retry or a spec edit.
            follows = self.spec.model.alias is not None and self.status.candidate is not None and not self._deleting
            return ALIAS_POLL if follows else None
        hints = list(self.requeue)
        if self.polls and not self.errors:  # while backing off, the backoff paces the polling
            hints.append(self._stuck_poll() or CONFIRM_POLL)
        if self.slow_poll is not None and not self.errors:
            hints.append(self.slow_poll)
        if not hints:
            return None
        soonest = min(hints)
        # Never "now" (zero): a due time that has just passed is looked at on the next poll.
        return soonest if soonest > timedelta(0) else CONFIRM_POLL

    def _message(self) -> str:
        status = self.status
        phase = status.phase
        candidate = status.candidate.version if status.candidate else None
        alias = self.spec.model.stable_alias
        retry_note = self._retry_note()
        if phase is Phase.SUCCEEDED:
            succeeded = self._last_event_detail("Succeeded")
            rejected = self._already_stable_but_rejected()
            if succeeded.endswith(NOTHING_ROLLED_OUT):  # no claim on what serves: the target disagreed
                # Degraded in Argo CD (the Ready condition): the message says why.
                return _sentence(succeeded[:1].upper() + succeeded[1:]) + (
                    f" Version {candidate} carries {REJECTED_TAG}=true: a verdict rejected it." if rejected else "")
            if rejected:
                return _sentence(f"Version {candidate} serves all traffic as @{alias}, though it carries "
                                 f"{REJECTED_TAG}=true: a verdict rejected it and the alias was moved onto it by hand")
            moved = self._alias_left_promoted_version()
            if moved is not None:
                return _sentence(f"Version {candidate} serves all traffic, but {moved}")
            if self._registry() is None and status.message.startswith(f"Version {candidate} serves all traffic, but"):
                return status.message  # the registry away is no evidence that the alias came back
            return _sentence(f"Version {candidate} serves all traffic as @{alias}")
        if phase is Phase.FAILED:
            reason = status.rollback.reason if status.rollback else self._last_event_detail("Failed")
            return _sentence(f"Failed: {reason}")
        if phase is Phase.ROLLED_BACK:
            reason = status.rollback.reason if status.rollback else self._last_event_detail("Aborted")
            return _sentence(f"Rolled back: {reason}")
        if phase is Phase.ROLLING_BACK and status.rollback is not None:
            rollback = status.rollback
            if rollback.recovered_at is not None and (rollback.tag_confirmed_at or not rollback.reject_candidate):
                left = f"taking version {candidate} off {self.spec.target.description} before the new candidate starts"
            elif rollback.recovered_at is not None:
                left = "waiting for the registry to tag the candidate rejected"
            elif rollback.traffic_confirmed_at is not None and rollback.traffic_kept:
                # A first rollout: nothing to put back (review s32r5: this said "back on stable").
                left = f"version {candidate} keeps all traffic (no earlier version to put back), taking @{alias} off it"
            elif rollback.traffic_confirmed_at is not None:
                left = f"traffic is back on stable, restoring @{alias}"
            else:
                left = self.traffic_held or "returning traffic to stable"
            return _sentence(f"Rolling back: {rollback.reason}; {left}{retry_note}")
        if phase is Phase.PAUSED and status.pause is not None:
            pause = status.pause
            if pause.reason is PauseReason.PAUSE_STEP:
                until = f"until {format_time(pause.until)}" if pause.until else "until someone runs promote"
                return _sentence(f"Paused at {self._step_label()} with candidate {candidate} at "
                                 f"{status.canary_weight}% {until}{retry_note}")
            # Only the commands that work: promote cannot skip a change the target has not taken.
            commands = "retry or rollback" if pause.reason is PauseReason.PROGRESS_DEADLINE_EXCEEDED \
                else "promote, retry or rollback"
            return _sentence(f"Paused: {pause.detail}; run {commands}{retry_note}")
        if self.waiting:
            return _sentence(f"{self.waiting}{retry_note}")
        if phase is Phase.PROGRESSING and status.analysis is not None and status.analysis.ends_at is not None:
            analysis = status.analysis
            return _sentence(f"{self._step_label().capitalize()}: judging candidate {candidate} at "
                             f"{status.canary_weight}% until {format_time(analysis.ends_at)} "
                             f"({self._analysis_summary()}){retry_note}")
        if phase is Phase.BAKING and status.analysis is not None and status.analysis.ends_at is not None:
            return _sentence(f"Baking version {candidate} against version "
                             f"{status.stable.version if status.stable else '?'} until "
                             f"{format_time(status.analysis.ends_at)} ({self._analysis_summary()}){retry_note}")
        return _sentence(f"{phase}{': candidate ' + candidate if candidate else ''}{retry_note}")

    def _retry_note(self) -> str:
        """The retry state, or else the latest failed pending action with its failure count: a failure is seen
        by one decision only, and the user must see it until the action is confirmed."""
        retry = self.status.retry
        current = f" (retry {retry.attempts}: {retry.reason})" if retry else ""
        failed = self._failed_pending()
        error = _ledger_error(failed[-1]) if failed else None
        if error is None:
            return current
        record = failed[-1]
        own = _one_line(f"{record.id}: {error.message}")  # as _record_action_failures words it
        note = f"retry {record.attempts - 1}: {own}"
        if retry is None or retry.reason == own:  # the same words whether the failure is new or not
            return f" ({note})"
        if record.id in retry.reason:
            return current
        return f" (retry {retry.attempts}: {retry.reason}; {note})"

    def _already_stable_but_rejected(self) -> bool:
        """Ended AlreadyStable (nothing promoted) on a version recorded as PreviouslyRejected right after; or, the
        history (50 entries) having moved on since, still the same ended attempt that was found so."""
        history = self.status.history
        ready = self.conditions_before.get(ConditionType.READY)
        candidate = self.status.candidate.version if self.status.candidate else None
        if (ready is not None and ready.reason == "PreviouslyRejected" and self.status.promotion is None
                and self.ended_on == (Phase.SUCCEEDED, candidate) and self.status.phase is Phase.SUCCEEDED
                and not any(entry.event == "AlreadyStable" for entry in self.new_history)):
            return True
        last = max((index for index, entry in enumerate(history) if entry.event == "AlreadyStable"), default=None)
        return (self.status.promotion is None and last is not None and last + 1 < len(history)
                and history[last + 1].event == "PreviouslyRejected")

    def _last_event_detail(self, event: str) -> str:
        entry = next((item for item in reversed(self.status.history) if item.event == event), None)
        return entry.detail if entry else "see history"

    def _derived_conditions(self, message: str) -> None:
        status = self.status
        phase = status.phase
        if phase is Phase.SUCCEEDED and self._already_stable_but_rejected():
            # Done, but not good: production serves a version a verdict rejected. Argo CD, `get --watch` and
            # `kubectl wait --for=condition=Ready` must not read that as a success.
            self._set_condition(ConditionType.READY, ConditionStatus.FALSE, "PreviouslyRejected", message)
        elif phase is Phase.SUCCEEDED:
            self._set_condition(ConditionType.READY, ConditionStatus.TRUE, "RolloutSucceeded", message)
        else:
            # A held promotion waits for a human or its deadline: `kubectl get`'s Reason column says so.
            hold = status.promotion.hold if phase is Phase.PROMOTING and status.promotion else None
            self._set_condition(ConditionType.READY, ConditionStatus.FALSE,
                                str(hold.reason) if hold else str(phase), message)
        if phase in TERMINAL_PHASES:
            reason = {Phase.SUCCEEDED: "RolloutSucceeded", Phase.ROLLED_BACK: "RolledBack",
                      Phase.FAILED: "RolloutFailed"}[phase]
            self._set_condition(ConditionType.PROGRESSING, ConditionStatus.FALSE, reason, message)
        elif phase is Phase.PAUSED:
            reason = str(status.pause.reason) if status.pause else "Paused"
            self._set_condition(ConditionType.PROGRESSING, ConditionStatus.FALSE, reason, message)
        elif self._resolving_too_long():
            # As a Deployment says it: still trying (nothing was done, nothing to undo), but stuck for too long.
            self._deadline_exceeded(f"no progress for more than progressDeadline "
                                    f"{format_duration(self.spec.progress_deadline)}: {message}")
        elif unconfirmed := self._rollback_stuck():
            # Still trying, and the rejected candidate may still serve: loud (Argo CD: Degraded), not "progressing".
            self._deadline_exceeded(f"rollback unconfirmed for more than progressDeadline "
                                    f"{format_duration(self.spec.progress_deadline)} (not confirmed: {unconfirmed}): "
                                    f"{message}")
        else:
            self._set_condition(ConditionType.PROGRESSING, ConditionStatus.TRUE, _progress_reason(status), message)
        gate = status.gate
        ended = phase in TERMINAL_PHASES
        if gate is None:
            self._not_run_unless_held(ConditionType.GATE_PASSED, "GateNotRun",
                                      "The golden gate did not run in this attempt." if ended
                                      else "The golden gate has not run yet.", ended)
        elif gate.skipped:
            self._set_condition(ConditionType.GATE_PASSED, ConditionStatus.TRUE, "GateSkipped",
                                "No goldenDataset in spec; the gate was skipped.")
        elif gate.overridden_by:
            self._set_condition(ConditionType.GATE_PASSED, ConditionStatus.TRUE, "GateOverridden",
                                f"Promoted past the gate by {gate.overridden_by}: {gate.reason}.")
        elif gate.outcome is Outcome.PASS:
            self._set_condition(ConditionType.GATE_PASSED, ConditionStatus.TRUE, "GatePassed",
                                "Every golden-dataset check passed.")
        elif gate.outcome is Outcome.FAIL:
            self._set_condition(ConditionType.GATE_PASSED, ConditionStatus.FALSE, "GateFailed", gate.reason)
        elif gate.outcome is Outcome.INCONCLUSIVE:
            self._set_condition(ConditionType.GATE_PASSED, ConditionStatus.FALSE, "GateInconclusive", gate.reason)
        elif "gate" not in self.judges_errored:
            self._set_condition(ConditionType.GATE_PASSED, ConditionStatus.UNKNOWN, "GateRunning",
                                "The golden gate is running.")
        analysis = status.analysis
        pause = status.pause
        if "analysis" in self.judges_errored:
            pass  # the judges could not run: that (set by _judge) stands over the last verdict
        elif self._watching() and pause is not None and analysis is not None and analysis.outcome is not Outcome.FAIL:
            # The step's own verdict stands: a short watch since the pause says little either way.
            watched = f"; judged on since the pause: {self._analysis_summary()}" if analysis.outcome else ""
            self._set_condition(ConditionType.ANALYSIS_HEALTHY, ConditionStatus.UNKNOWN, "NotEnoughEvidence",
                                f"{pause.detail}{watched}")
        elif analysis is None or analysis.outcome is None:
            # A new step's judges have not answered yet: the last verdict stands until they do.
            self._not_run_unless_held(ConditionType.ANALYSIS_HEALTHY, "AnalysisNotRun",
                                      "No analysis ran in this attempt." if ended else "No analysis verdict yet.",
                                      ended)
        elif analysis.outcome is Outcome.PASS:
            self._set_condition(ConditionType.ANALYSIS_HEALTHY, ConditionStatus.TRUE, "AnalysisPassed",
                                self._analysis_summary())
        elif analysis.outcome is Outcome.FAIL:
            self._set_condition(ConditionType.ANALYSIS_HEALTHY, ConditionStatus.FALSE, "AnalysisFailed",
                                self._analysis_summary())
        else:
            self._set_condition(ConditionType.ANALYSIS_HEALTHY, ConditionStatus.UNKNOWN, "NotEnoughEvidence",
                                self._analysis_summary())

    def _not_run_unless_held(self, condition_type: str, reason: str, message: str, ended: bool) -> None:
        """`condition_type` Unknown with `reason` (the judge has not run) unless a verdict is held: that one stands,
        said again as it is, so that its observedGeneration follows the spec as every condition's does."""
        held = self.status.condition(condition_type)
        if held is None or self._no_verdict_held(held, reason, ended):
            self._set_condition(condition_type, ConditionStatus.UNKNOWN, reason, message)
        else:
            self._set_condition(condition_type, held.status, held.reason, held.message)

    @staticmethod
    def _no_verdict_held(held: Condition, not_run: str, ended: bool) -> bool:
        """`held` says the judge has not run (said again: its message follows the phase, "not yet" becoming "did
        not run in this attempt" once it ends), or is a restart's "Starting over" on an attempt that has ended
        without this judge (e.g. sent back to the version already stable): not starting over any more."""
        return held.reason == not_run or (ended and held.reason == "NewAttempt")

    def _ordered_actions(self) -> list[Action]:
        # Traffic first (fastest way to safety), then registry, then measurements; no duplicates. An action handed
        # out earlier in this decision whose record was then abandoned (a rollback or restart started after it) is
        # not sent: a promotion's alias move would land after the rollback had verified the alias.
        abandoned = {record.id for record in self.status.actions if record.state is ActionState.ABANDONED}
        seen: set[str] = set(abandoned)
        unique = [action for action in self.actions if not (action.id in seen or seen.add(action.id))]
        rank = {"StageCandidate": 0, "SetCanaryWeight": 0, "PromoteCandidate": 0, "RestoreStable": 0,
                "UnstageCandidate": 0, "SetAlias": 1, "RemoveAlias": 1, "TagRejected": 2, "RunGate": 3,
                "RunAnalysis": 3}
        return sorted(unique, key=lambda action: rank[str(action.type)])


# --- pure helpers --------------------------------------------------------------------------------------


def _version_ref(resolved: ResolvedVersion) -> VersionRef:
    return _redacted_source(VersionRef(version=resolved.version, run_id=resolved.run_id, source=resolved.source,
                                       lineage=dict(resolved.lineage)))


def _redacted_source(ref: VersionRef) -> VersionRef:
    """ref without user info or query in its source (status is every namespace viewer's to read)."""
    source = redacted_url(ref.source) if ref.source else ref.source
    return ref if source == ref.source else dataclasses.replace(ref, source=source, source_redacted=True)


def _hold_as_written_now(status: ModelRolloutStatus) -> ModelRolloutStatus:
    """An abort's hold on whatever candidate waits, which an older operator wrote as null: the next status write
    would leave the null out, and the hold with it."""
    rollback = status.rollback
    if rollback is None or _NOT_STARTED not in rollback.evidence or rollback.evidence[_NOT_STARTED] is not None:
        return status
    evidence = {**rollback.evidence, _NOT_STARTED: _ANY_CANDIDATE}
    return dataclasses.replace(status, rollback=dataclasses.replace(rollback, evidence=evidence))


def _without_recorded_secrets(status: ModelRolloutStatus) -> ModelRolloutStatus:
    """A status an operator before source redaction wrote: redacted at the next decision, ended rollouts too."""
    candidate = _redacted_source(status.candidate) if status.candidate else None
    stable = _redacted_source(status.stable) if status.stable else None
    if candidate is status.candidate and stable is status.stable:
        return status
    return dataclasses.replace(status, candidate=candidate, stable=stable)


def _clean_verdict(verdict: Verdict) -> Verdict:
    """A copy whose evidence is plain JSON, so the status round-trips exactly, and at most VERDICT_EVIDENCE_BYTES."""
    return Verdict(name=verdict.name, outcome=Outcome(verdict.outcome),
                   reason=cut_text(_one_line(verdict.reason), WORDS_MAX),
                   evidence=bounded_evidence(verdict.evidence, VERDICT_EVIDENCE_BYTES))


# The gate's verdicts status.gate keeps whole: of each outcome that is not a pass up to the first number, of the
# passes up to the second; the rest are counted (and named, up to GATE_NAMES_KEPT) by one verdict per outcome.
# status lives in etcd; the gate's MLflow evidence run (gate-report.json) holds them all.
GATE_VERDICTS_KEPT = 50
GATE_PASSES_KEPT = 20
GATE_NAMES_KEPT = 20
_GATE_MORE = {Outcome.FAIL: "failed", Outcome.INCONCLUSIVE: "inconclusive", Outcome.PASS: "passed"}


def _kept_gate_verdicts(verdicts: tuple[Verdict, ...]) -> tuple[Verdict, ...]:
    """The gate's verdicts as status keeps them, in order; their combined outcome is unchanged."""
    kept: list[Verdict] = []
    left: dict[Outcome, list[str]] = {outcome: [] for outcome in _GATE_MORE}
    seen = dict.fromkeys(_GATE_MORE, 0)
    for item in verdicts:
        seen[item.outcome] += 1
        if seen[item.outcome] <= (GATE_PASSES_KEPT if item.outcome is Outcome.PASS else GATE_VERDICTS_KEPT):
            kept.append(item)
        else:
            left[item.outcome].append(item.name)
    for outcome, names in left.items():
        if names:
            word, shown = _GATE_MORE[outcome], names[:GATE_NAMES_KEPT]
            listed = f": {', '.join(shown)}" + (f" and {len(names) - len(shown)} more" if names[len(shown):] else "")
            kept.append(Verdict(f"more checks {word}", outcome,
                                f"{len(names)} more checks {word}{listed if outcome is not Outcome.PASS else ''}; "
                                "the gate's evidence run in MLflow (gate-report.json) holds every verdict",
                                {"checks": len(names), "names": shown}))
    return tuple(kept)


def _first(verdicts: tuple[Verdict, ...], outcome: Outcome | None) -> Verdict | None:
    return next((item for item in verdicts if item.outcome == outcome), verdicts[0] if verdicts else None)


def _outage(verdicts: tuple[Verdict, ...], before: tuple[Verdict, ...]) -> Verdict | None:
    """The first inconclusive verdict when every one of them is a moment's measurement outage: a query problem
    that can pass (the runner's unmeasured verdicts name it in evidence["problem"]) on a metric an earlier run of
    the same window did measure. A metric never measured there (Prometheus behind a redirect, a query of the wrong
    type, a baseline too long for its budget) is not waiting for a blip to pass. None when any says otherwise."""
    # DataLost counted, only fewer than the run before: its metric is measured, and a retry may read it whole again
    # (an HA replica that kept its data).
    measured = {item.name for item in before if item.evidence.get("problem") in (None, "", DATA_LOST)}
    unmeasured = [item for item in verdicts if item.outcome is Outcome.INCONCLUSIVE]
    outages = [item for item in unmeasured
               if str(item.evidence.get("problem")) in MEASUREMENT_OUTAGES and item.name in measured]
    return outages[0] if outages and len(outages) == len(unmeasured) else None


# A proportion's totals count from the window's start, so they only grow from run to run, but for increase()'s
# extrapolation to the window's edges: up to about a scrape's worth of predictions at each edge, two in all. A fall
# past that (and past a tenth, for bursty traffic) is Prometheus no longer holding part of the window.
DATA_LOST_FALL = 0.1
DATA_LOST_SCRAPES = 2


def _data_lost(verdicts: tuple[Verdict, ...], before: tuple[Verdict, ...], *, bake: bool,
               growing: frozenset[str] | None = None, asked: Mapping[str, str] | None = None) -> tuple[Verdict, ...]:
    """Each verdict, but DataLost (an inconclusive measurement outage, verdict.MEASUREMENT_OUTAGES) where a metric's
    totals over the window fell below what an earlier run of the same window counted (`before`: status.analysis's
    last verdict per metric), or came back empty after it counted (a threshold's query too, once it answered): a pass
    there would judge the part of the window Prometheus still holds as if it were all of it, and an end on NoData
    would decide on a moment an HA replica or a retry may not share. A failure stands: the predictions it counted
    were made. A verdict without counts carries the earlier ones on (countsSeen), so an outage between does not
    forget them. Checked: the canary's and stable's totals, a bake's new version's only (its history's days move by
    whole days). Only for the proportion metrics in `growing` (None: all), whose counts read the window from its
    start: a fixed range's counts rise and fall with the traffic. `asked`: each metric's metric_signature now,
    stored in its verdict (QUERIES_SIGNATURE): an earlier run that asked other queries (the spec edited mid-window)
    counted something else, so it is not compared with (one without it, from an older operator, still is)."""
    arms = ("canary",) if bake else ("canary", "stable")
    asked = asked or {}
    earlier = {item.name: item for item in before
               if item.evidence.get(QUERIES_SIGNATURE) in (None, asked.get(item.name))}
    kept = []
    for item in verdicts:
        seen = _counts_seen(earlier[item.name], arms) if item.name in earlier else None
        value = _value_seen(earlier[item.name]) if item.name in earlier and seen is None else None
        if value is not None and item.evidence.get("problem") == "NoData":
            # A threshold's query (NoData: nothing in the hour before either, else it would be StaleSeries).
            detail = (f"the query answered {value:.6g} in an earlier run of this window and now finds no sample in "
                      f"the hour before: {_LOST}")
            kept.append(_clean_verdict(Verdict(item.name, Outcome.INCONCLUSIVE, f"{DATA_LOST}: {detail}", {
                **item.evidence, "problem": DATA_LOST, "detail": detail, "valueSeen": value})))
            continue
        if item.outcome is Outcome.FAIL or seen is None or not any(seen[arm] > 0 for arm in arms) \
                or (growing is not None and item.name not in growing):
            kept.append(item)
            continue
        own = _counts_seen(item, arms, carried=False)
        if own is None and item.evidence.get("problem") != "NoData":
            kept.append(_clean_verdict(Verdict(item.name, item.outcome, item.reason,
                                               {**item.evidence, "countsSeen": seen})))
            continue
        if own is not None and not any(_fell(seen, own, arm) for arm in arms):
            kept.append(item)
            continue
        now = "nothing" if own is None else "/".join(f"{arm} {own[arm]:.6g}" for arm in arms)
        detail = (f"the totals over this window fell from {'/'.join(f'{arm} {seen[arm]:.6g}' for arm in arms)} (an "
                  f"earlier run) to {now}: counts from the window's start only grow, so {_LOST}")
        kept.append(_clean_verdict(Verdict(item.name, Outcome.INCONCLUSIVE, f"{DATA_LOST}: {detail}", {
            **item.evidence, "problem": DATA_LOST, "detail": detail, "countsSeen": seen,
            "onWhatIsLeft": f"{item.outcome}: {item.reason}"})))
    return tuple(_signed(item, asked.get(item.name)) for item in kept)


# The evidence key of the metric_signature a verdict's run asked by (_data_lost compares only runs that share it).
QUERIES_SIGNATURE = "queriesSignature"


def _signed(item: Verdict, signature: str | None) -> Verdict:
    """`item` with the signature of the queries its run asked (None: a metric no longer in the spec, left as it is)."""
    if signature is None or item.evidence.get(QUERIES_SIGNATURE) == signature:
        return item
    # First: evidence over its budget keeps top-level entries in order until full, so the signature stays.
    evidence = {QUERIES_SIGNATURE: signature, **{k: v for k, v in item.evidence.items() if k != QUERIES_SIGNATURE}}
    return _clean_verdict(Verdict(item.name, item.outcome, item.reason, evidence))


_LOST = ("Prometheus no longer holds part of the window (it likely lost its data: restarted without persistent "
         "storage, or another HA replica answered); not judged on what is left")


def _value_seen(item: Verdict) -> float | None:
    """The number a threshold's run measured (or, DataLost, the one before it had: valueSeen); None otherwise."""
    problem = item.evidence.get("problem")
    value = item.evidence.get("valueSeen") if problem == DATA_LOST else None if problem else item.evidence.get("value")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def _counts_seen(item: Verdict, arms: tuple[str, ...], *, carried: bool = True) -> dict[str, Any] | None:
    """The totals per arm `item` counted (or, `carried`, those it carries from an earlier run: countsSeen), with the
    share of the window they were scaled by (countsScaledBy); None when it has none."""
    seen = item.evidence.get("countsSeen") if carried else None
    if isinstance(seen, Mapping) and all(_is_count(seen.get(arm)) for arm in arms):
        return dict(seen)
    totals = [item.evidence.get(arm) for arm in arms]
    if not all(isinstance(part, Mapping) and _is_count(part.get("total")) for part in totals):
        return None
    window = item.evidence.get("window")
    share = window.get("countsScaledBy") if isinstance(window, Mapping) else None
    return {**{arm: float(part["total"]) for arm, part in zip(arms, totals, strict=True)},
            "countsScaledBy": share if _is_count(share) and 0 < share <= 1 else None}


def _is_count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _fell(seen: Mapping[str, Any], now: Mapping[str, Any], arm: str) -> bool:
    """`arm`'s total fell from `seen` to `now` by more than DATA_LOST_FALL of it and DATA_LOST_SCRAPES scrapes' worth
    of predictions at `seen`'s pace (its counts scaled by the share of its window its samples spanned: a scrape is
    (1 - share) of that window)."""
    before = float(seen[arm])
    share = seen.get("countsScaledBy")
    scrapes = DATA_LOST_SCRAPES * before * (1 - share) / share if _is_count(share) and 0 < share <= 1 else 0.0
    return float(now[arm]) < before - max(DATA_LOST_FALL * before, scrapes)


def _integrity_only(verdicts: tuple[Verdict, ...]) -> bool:
    """Only the dataset's hash failed: that says nothing about the model, so it is not rejected."""
    return {item.name for item in verdicts if item.outcome is Outcome.FAIL} == {DATASET_INTEGRITY}


def _evidence(verdicts: tuple[Verdict, ...], outcome: Outcome | None) -> dict[str, Any]:
    """The deciding verdicts, for status.rollback.evidence: a smaller copy (status.analysis or status.gate holds
    the larger one, which a new analysis or gate replaces)."""
    deciding = [item for item in verdicts if item.outcome == outcome] or list(verdicts)
    # Less the queries' signature: _data_lost's bookkeeping, which says nothing to a reader of the rollback.
    return {"verdicts": [{**item.to_dict(), "evidence": bounded_evidence(
        {key: value for key, value in item.evidence.items() if key != QUERIES_SIGNATURE}, ROLLBACK_EVIDENCE_BYTES)}
        for item in deciding]}


def _describe_error(error: AdapterError) -> str:
    return f"{error.kind}: {error.message}"


def _refused_since(record: ActionRecord, error: AdapterError, now: datetime) -> datetime | None:
    """When the current run of refusals of `record`'s action began, `error` being its latest failure: an
    Unavailable ends the run (an outage is waited for, not counted); a refusal after another keeps its start."""
    if error.kind is AdapterErrorKind.UNAVAILABLE:
        return None
    previous = _ledger_error(record)
    refusing = previous is not None and previous.kind is not AdapterErrorKind.UNAVAILABLE
    return (record.refused_since or now) if refusing else now


def _ledger_error(record: ActionRecord | None) -> AdapterError | None:
    """A ledger entry's last error (written by _describe_error) read back; an unknown kind reads as Error."""
    if record is None or not record.last_error:
        return None
    kind, _, message = record.last_error.partition(": ")
    try:
        return AdapterError(AdapterErrorKind(kind), message or record.last_error)
    except ValueError:
        return AdapterError(AdapterErrorKind.ERROR, record.last_error)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _sentence(text: str) -> str:
    text = _one_line(text).rstrip(".")
    return text[:1].upper() + text[1:] + "."


def _whole_seconds(duration: timedelta) -> timedelta:
    return timedelta(seconds=int(duration.total_seconds()))


def _progress_reason(status: ModelRolloutStatus) -> str:
    phase = status.phase
    if phase is Phase.PENDING:
        return "Resolving" if status.candidate is None else "Staging"
    return {Phase.GATING: "GateRunning", Phase.PROGRESSING: "StepInProgress", Phase.PROMOTING: "Promoting",
            Phase.BAKING: "Baking", Phase.ROLLING_BACK: "RollingBack"}.get(phase, str(phase))


def steps_signature(steps: Any) -> str:
    """A short digest of the canary steps as parsed (so formatting and key order do not count)."""
    # Typed: an analysis step and a pause step may look alike.
    return _signature([{type(step).__name__: to_json(step)} for step in steps])


def metric_signature(metric: MetricSpec) -> str:
    """A short digest of what a metric asks Prometheus (its query templates, as written): bounds and limits left out,
    since they do not change what is counted. Whitespace is not what is asked (a query rewritten as a YAML block
    gains a newline): runs of it count as one space."""
    if metric.threshold is not None:
        templates = [metric.threshold.query]
    else:
        assert metric.proportion is not None
        templates = [metric.proportion.events, metric.proportion.total]
    return _signature([" ".join(template.split()) for template in templates])


def thresholds_signature(thresholds: GoldenThresholds) -> str:
    """A short digest of the golden thresholds as parsed."""
    return _signature(to_json(thresholds))


def _signature(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
