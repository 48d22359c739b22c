"""Typed ModelRollout status: everything the controller knows lives here, never in its memory.

`ModelRolloutStatus.to_dict()` is what the operator writes to `.status`; `from_dict()` reads it back
exactly (round trip). Keys are camelCase; fields that are None are left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from controller.api.serialization import SKIP, from_json, json_keys, to_json
from controller.verdict import Outcome, Verdict

CONTROLLER_ACTOR = "modelrollout-controller"
HISTORY_LIMIT = 50
ACTION_LOG_LIMIT = 50
HANDLED_COMMANDS_LIMIT = 20


class Phase(StrEnum):
    PENDING = "Pending"
    GATING = "Gating"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    BAKING = "Baking"
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED})


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    READY = "Ready"  # the candidate serves all traffic and survived bake: the rollout is done and good
    PROGRESSING = "Progressing"  # the controller is moving the rollout on without waiting for a human
    REGISTRY_AVAILABLE = "RegistryAvailable"
    TARGET_READY = "TargetReady"
    GATE_PASSED = "GatePassed"
    ANALYSIS_HEALTHY = "AnalysisHealthy"


def owned_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """`status` as the controller applies it: with only its own condition types. Another field manager's condition
    (status.conditions is a list keyed by type) is read and kept in memory, but left out of the apply, so
    server-side apply leaves it to its owner, and an entry the controller co-owned before is released."""
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return dict(status)
    own = {str(item) for item in ConditionType}
    return {**status, "conditions": [item for item in conditions
                                     if isinstance(item, Mapping) and item.get("type") in own]}


def same_owned_status(decided: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """Whether applying `decided` would change nothing of the controller's own: another manager's condition is
    never applied (owned_status), and where it sits in the stored list is the API server's doing (review s33r4: a
    foreign condition stored first made every decision differ in order alone, one idle write after each)."""
    return owned_status(decided) == owned_status(stored)


# Ready reasons the operator's runtime sets when the stored status cannot move on: the API server refused the decided
# status (the stored one is kept, saying so), the stored one cannot be read back, or the API server refused the
# revertOnDeletion finalizer a start needs (the start is held). A watch returns on each.
STATUS_REJECTED = "StatusRejected"
STATUS_UNREADABLE = "StatusUnreadable"
FINALIZER_REFUSED = "FinalizerRefused"
STATUS_REFUSALS = (STATUS_REJECTED, STATUS_UNREADABLE, FINALIZER_REFUSED)


@dataclass(frozen=True)
class Condition:
    """One condition, as the Kubernetes API conventions define it."""

    type: str
    status: ConditionStatus
    reason: str  # CamelCase
    message: str
    last_transition_time: datetime
    observed_generation: int | None = None


@dataclass(frozen=True)
class VersionRef:
    """A registry version as resolved once at the start of a rollout attempt."""

    version: str
    run_id: str | None = None
    # Without user info or query (a token, a presigned signature): status is readable by every namespace viewer.
    source: str | None = None
    lineage: Mapping[str, str] = field(default_factory=dict)
    # True: something was cut from source, so what to serve is read from the registry again (None: nothing was).
    source_redacted: bool | None = None


@dataclass(frozen=True)
class HistoryEntry:
    time: datetime
    event: str  # stable CamelCase name
    detail: str
    actor: str = CONTROLLER_ACTOR
    command_id: str | None = None  # set when an on-call command caused the entry
    seq: int | None = None  # 1, 2, 3... in the order recorded (None: recorded before entries were numbered)
    # The rollout attempt the entry belongs to: one number from a retry's command (or the first entry) through the
    # attempt's end, so readers find where the current attempt begins however the history is trimmed. None:
    # recorded by an operator that did not number attempts (or by the runtime, outside any decision).
    attempt: int | None = None
    # The way out of what the entry reports while it still holds (a promotion held on a hand-moved stable alias),
    # also said at the end of `detail` for Events: readers of an ended hold leave it out.
    advice: str | None = None


def append_history(history: tuple[HistoryEntry, ...], entry: HistoryEntry,
                   floor: int = 0) -> tuple[HistoryEntry, ...]:
    """`history` with `entry` numbered next and appended, the oldest entries dropped beyond HISTORY_LIMIT.

    Numbers only go up: above every number in `history` and above `floor` (the newest number already
    posted as an Event), even when a status written without numbers has cleared them.
    """
    last = max((item.seq for item in history if item.seq is not None), default=0)
    return (*history, dataclasses.replace(entry, seq=max(last, floor) + 1))[-HISTORY_LIMIT:]


class ActionState(StrEnum):
    PENDING = "Pending"  # emitted, effect not yet observed
    CONFIRMED = "Confirmed"  # effect observed on the target or in the registry
    ABANDONED = "Abandoned"  # no longer wanted (rollback or restart overtook it)


@dataclass(frozen=True)
class ActionRecord:
    """Ledger entry for an effect action (traffic or registry); measurement requests are not logged."""

    id: str
    type: str
    state: ActionState
    issued_at: datetime  # first asked for; the progress deadline counts from here
    updated_at: datetime
    detail: str = ""
    sent_at: datetime | None = None  # last handed to the operator
    attempts: int = 1  # 1 + failures reported back
    last_error: str | None = None
    # Since when the sends have been refused (errors other than Unavailable) with no accepted send and no outage
    # in between: a refusal's deadline counts from here, so a long outage does not count as refusal time.
    refused_since: datetime | None = None


@dataclass(frozen=True)
class GateStatus:
    request_id: str | None = None
    started_at: datetime | None = None
    requested_at: datetime | None = None  # the RunGate request was last handed to the operator
    completed_at: datetime | None = None
    dataset_sha256: str | None = None
    thresholds_signature: str | None = None  # digest of goldenDataset.thresholds this gate judges by
    outcome: Outcome | None = None
    reason: str = ""
    verdicts: tuple[Verdict, ...] = ()
    overridden_by: str | None = None  # a human promoted past a failing or inconclusive gate
    skipped: bool = False  # no goldenDataset in the spec
    # Runs that ended in an error (not a verdict) in a row: they pace the next run and, past the progress
    # deadline, end the gate as inconclusive.
    errors: int = 0
    erroring_since: datetime | None = None
    interrupted: int = 0  # runs in a row the operator restarted under (handed out, never answered)
    # What the gate measured: the dataset, per-class metrics (and confusion matrices, up to a dozen classes) of
    # candidate and stable, their comparison, the largest slices. The full record is the MLflow evidence run.
    report: Mapping[str, Any] = field(default_factory=dict)


class AnalysisMode(StrEnum):
    CANARY = "canary"  # canary vs stable at the same time under the same traffic
    BAKE = "bake"  # promoted version vs the previous version's history


@dataclass(frozen=True)
class AnalysisStatus:
    """The judges' state for the step (or bake) being judged; replaced when the step changes."""

    mode: AnalysisMode
    window_start: datetime  # the judges' window starts here (the weight was in place from then)
    step_index: int | None = None
    ends_at: datetime | None = None  # None while judging in the background during a pause step
    runs: int = 0
    request_id: str | None = None  # the run asked for and not answered yet
    requested_at: datetime | None = None
    last_run_at: datetime | None = None  # its answer was read (the next run is due an interval later)
    measured_at: datetime | None = None  # its queries were evaluated (the time it covers up to)
    outcome: Outcome | None = None
    reason: str = ""
    metrics: tuple[Verdict, ...] = ()  # last verdict per metric
    failed_runs: Mapping[str, int] = field(default_factory=dict)  # per threshold metric with a failureLimit
    errors: int = 0  # runs in a row that ended in an error, as for the gate
    erroring_since: datetime | None = None


class PauseReason(StrEnum):
    PAUSE_STEP = "PauseStep"
    GATE_FAILED = "GateFailed"
    GATE_INCONCLUSIVE = "GateInconclusive"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    BAKE_FAILED = "BakeFailed"
    BAKE_INCONCLUSIVE = "BakeInconclusive"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"


@dataclass(frozen=True)
class PauseStatus:
    reason: PauseReason
    since: datetime
    until: datetime | None = None  # None: until a human acts
    detail: str = ""
    resume_phase: Phase | None = None  # where `retry` or `promote` picks up again
    steps_changed: bool = False  # spec.canary.steps changed during the wait: resume at the first step


class HoldReason(StrEnum):
    """Why a promotion waits without moving (engine _promoting): what has to change for it to go on."""

    TARGET_UNAVAILABLE = "TargetUnavailable"  # the target cannot be read, or does not say which version serves
    REGISTRY_UNAVAILABLE = "RegistryUnavailable"  # the registry does not answer
    CANDIDATE_NOT_STAGED = "CandidateNotStaged"  # gone or not ready on the target; or put back after promotion
    STABLE_ALIAS_MOVED = "StableAliasMoved"  # the stable alias was pointed at another version outside this rollout


@dataclass(frozen=True)
class HoldStatus:
    """A promotion held, as of the decision that wrote it; absent when the promotion is not held."""

    reason: HoldReason
    deadline: datetime  # unless the hold ends first: progressDeadline from the promotion step waited on
    since: datetime | None = None  # None: held already when read from an operator that did not record holds
    rolls_back: bool = True  # at the deadline; False: paused for a human (spec.rollback.automatic false)
    reject_candidate: bool = True  # that rollback tags the candidate rejected (nothing judged it when False)
    advice: str | None = None  # the way out, when a human has one besides rolling back


@dataclass(frozen=True)
class PromotionStatus:
    started_at: datetime
    previous_version: str | None = None  # remembered for one-command rollback
    target_confirmed_at: datetime | None = None
    alias_confirmed_at: datetime | None = None
    actor: str = CONTROLLER_ACTOR
    # Inside the promotion, not beside it: an older operator drops what it does not know of a known object, where
    # it would write back an unknown top-level key as read, a hold that ended told as holding still.
    hold: HoldStatus | None = None


class RollbackCause(StrEnum):
    GATE_FAILED = "GateFailed"
    GATE_INCONCLUSIVE = "GateInconclusive"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    BAKE_FAILED = "BakeFailed"
    BAKE_INCONCLUSIVE = "BakeInconclusive"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    CANDIDATE_NOT_READY = "CandidateNotReady"  # staging never became ready: undo it and fail
    ABORTED = "Aborted"
    ROLLBACK_REQUESTED = "RollbackRequested"
    SUPERSEDED = "Superseded"  # a new candidate replaced this one mid-rollout
    DATASET_CHANGED = "DatasetChanged"  # the golden dataset was re-pinned after the gate passed: gated again
    DELETED = "Deleted"  # the ModelRollout was deleted before it ended (spec.rollback.revertOnDeletion)


@dataclass(frozen=True)
class RollbackStatus:
    cause: RollbackCause
    reason: str  # one line, reused in status.message and in the registry's rejection tag
    verdict_at: datetime  # when the failing verdict (or command) was seen: MTTR starts here
    actor: str = CONTROLLER_ACTOR
    from_step: int | None = None
    from_weight: int | None = None
    after_promotion: bool = False  # the candidate had taken all traffic: restore the previous version
    reject_candidate: bool = True  # tag the candidate rejected in the registry
    final_phase: Phase = Phase.ROLLED_BACK
    restart: bool = False  # start a new attempt once done (a new candidate is waiting)
    evidence: Mapping[str, Any] = field(default_factory=dict)  # summary written to the rejection tag
    traffic_confirmed_at: datetime | None = None
    alias_confirmed_at: datetime | None = None
    tag_confirmed_at: datetime | None = None
    recovered_at: datetime | None = None  # traffic and alias both verified
    # A first rollout's candidate had taken all traffic: there was no earlier version to put back.
    traffic_kept: bool = False
    # The stable alias named another version, set outside this rollout while it ran: left there, not put back.
    alias_left_on: str | None = None
    # The candidate was seen serving as stable before any promotion (promoted outside ModelRollout): until traffic
    # is confirmed back, it may still serve all of it.
    candidate_served_as_stable: bool | None = None  # None: not seen so (or recorded by an older operator)
    # The version the target reported serving as stable when traffic was confirmed back (None: it reported none,
    # could not be read, or an older operator confirmed it): "back on stable" is told only when it is stable's.
    serving_when_confirmed: str | None = None
    time_to_recover_seconds: float | None = None


@dataclass(frozen=True)
class RetryState:
    """Adapter errors since `since`; drives the exponential requeue backoff.

    `attempts` grows only when a retry comes after the previous backoff ran out, so several decisions
    within one reconcile count once.
    """

    attempts: int
    since: datetime
    reason: str
    last_attempt_at: datetime | None = None


def step_fraction(index: int, total: int) -> str:
    """Step `index` (from 0) of `total`, as people count it: "n/m" from 1 (past the last step: the last)."""
    return f"{min(index + 1, total)}/{total}"


@dataclass(frozen=True)
class ModelRolloutStatus:
    phase: Phase = Phase.PENDING
    observed_generation: int | None = None
    message: str = ""
    # Rollout attempt number; action ids are scoped by it so a retry never reuses one. It counts an attempt that
    # ended before its candidate was resolved too (its history entries carry the number), from its restart on.
    attempt: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    candidate: VersionRef | None = None
    stable: VersionRef | None = None  # what served before this rollout; the way back
    current_step: int | None = None  # 0-based index into spec.canary.steps
    steps_signature: str | None = None  # of the spec.canary.steps current_step indexes (Argo's currentStepHash)
    step: str | None = None  # "n/m", 1-based as every message says it (the printer column)
    canary_weight: int | None = None  # share of traffic on the candidate, as observed on the target
    gate: GateStatus | None = None
    analysis: AnalysisStatus | None = None
    pause: PauseStatus | None = None
    promotion: PromotionStatus | None = None
    rollback: RollbackStatus | None = None
    retry: RetryState | None = None
    resolving_since: datetime | None = None  # Pending without a candidate from then on: progressDeadline counts here
    conditions: tuple[Condition, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    actions: tuple[ActionRecord, ...] = ()
    handled_commands: tuple[str, ...] = ()  # ids of on-call commands already applied (or refused)
    judge_requests: int = 0  # RunGate/RunAnalysis requests issued so far; numbers their ids
    events_posted_through: int = 0  # seq of the newest history entry posted as a Kubernetes Event (operator)
    # Top-level keys this operator does not know (a newer one's, during an upgrade or a downgrade): written back
    # as read, since the status apply removes what it leaves out. Never decided on; carried across a restart too.
    preserved: Mapping[str, Any] = field(default_factory=dict, hash=False, metadata={SKIP: True})

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = to_json(self)
        known = json_keys(type(self))  # a known key always wins, even one left out because it is None
        result.update((key, to_json(value)) for key, value in self.preserved.items() if key not in known)
        return result

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ModelRolloutStatus:
        """Read `.status`; an empty or missing status is a fresh Pending rollout."""
        if not raw:
            return cls()
        status: ModelRolloutStatus = from_json(cls, raw)
        known = json_keys(cls)
        unknown = {str(key): to_json(value) for key, value in raw.items() if key not in known}
        return dataclasses.replace(status, preserved=unknown) if unknown else status

    def condition(self, condition_type: str) -> Condition | None:
        return next((item for item in self.conditions if item.type == condition_type), None)
