"""What the operator observed before calling the engine: registry, target, judges' results, commands.

The operator fills these by running the adapters; it never interprets them. An adapter that failed
reports an AdapterError instead of data, and the engine decides what that means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from controller.api.commands import Command
from controller.text_bounds import WORDS_MAX, cut_text
from controller.verdict import Verdict


class AdapterErrorKind(StrEnum):
    UNAVAILABLE = "Unavailable"  # connection refused, timeout, 5xx: try again later
    NOT_FOUND = "NotFound"  # the object (InferenceService, registered model) does not exist
    CONFLICT = "Conflict"  # 409: someone else wrote first; retried on fresh state
    FORBIDDEN = "Forbidden"  # 401/403: credentials or RBAC
    INVALID = "Invalid"  # 422 or a webhook refused the patch
    ERROR = "Error"  # anything else


@dataclass(frozen=True)
class AdapterError:
    kind: AdapterErrorKind
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", cut_text(self.message, WORDS_MAX))


@dataclass(frozen=True)
class ResolvedVersion:
    """A registry version as the registry adapter found it."""

    version: str
    run_id: str | None = None
    source: str | None = None
    lineage: Mapping[str, str] = field(default_factory=dict)  # dataset lineage tags of the run/version
    tags: Mapping[str, str] = field(default_factory=dict)  # all version tags (the rejection tag among them)
    status: str = "READY"  # MLflow's registration status: PENDING_REGISTRATION, FAILED_REGISTRATION or READY


REJECTED_TAG = "modelrollout.rejected"
# MLflow's model version registration statuses (only a READY version can be served).
READY = "READY"
PENDING_REGISTRATION = "PENDING_REGISTRATION"
REJECTED_TIME_TAG = "modelrollout.rejected.time"  # which rejection the tags describe


def rejection_time(moment: datetime) -> str:
    """REJECTED_TIME_TAG's value: the failing verdict's time, to the second, in UTC."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RegistryObservation:
    """The registry as seen now.

    candidate: what spec.model.version / spec.model.alias resolves to; None (with no error) means it
        does not exist.
    stable_alias_version: what spec.model.stableAlias points to now; None means the alias is not set.
    rolled_back: while rolling back, the version being rolled back (status.candidate) when the spec no longer
        resolves to it, so that its rejection tags are observed too; rolled_back_gone: it no longer exists.
    candidate_gone: status.candidate no longer exists, checked while paused, promoting or rolling back when the
        spec no longer resolves to it (an alias-named candidate whose alias was removed).
    unloadable: why candidate cannot be staged as the operator is configured (its source, or stable's, a URI only
        MLflow resolves, with no --storage-uri-template); it waits in Pending, refused only when resolved, so that a
        rollback in flight (of the candidate it replaces) is never held by it.
    """

    candidate: ResolvedVersion | None = None
    stable_alias_version: ResolvedVersion | None = None
    error: AdapterError | None = None
    rolled_back: ResolvedVersion | None = None
    rolled_back_gone: bool = False
    candidate_gone: bool = False
    unloadable: str | None = None


@dataclass(frozen=True)
class TargetObservation:
    """The serving object as its status reports it (never as last patched).

    stable_version / canary_version: registry versions the router sees serving the main share and
        staged as canary; canary_version is None when no canary is configured.
    canary_weight: observed percent of traffic on the canary; None when no canary is configured.
    An absent target is reported as error kind NOT_FOUND.
    """

    ready: bool = False
    stable_version: str | None = None
    canary_version: str | None = None
    canary_ready: bool = False
    canary_weight: int | None = None
    detail: str = ""  # the serving system's own words, e.g. a KServe condition message
    error: AdapterError | None = None
    # A rollback left traffic held on the previous deployment by a setting only the router removes, once the
    # serving system is ready for it (KServe Knative's canaryTrafficPercent 0 on its copy of stable).
    pinned: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", cut_text(self.detail, WORDS_MAX))


@dataclass(frozen=True)
class JudgeResult:
    """Answer to a RunGate or RunAnalysis action, matched to it by request_id."""

    request_id: str
    verdicts: tuple[Verdict, ...] = ()
    error: AdapterError | None = None  # the judges could not run at all (dataset unreachable, ...)
    dataset_sha256: str | None = None  # the gate: hash of the data actually used
    # The gate: its compact record for status.gate.report (dataset, per-class metrics and confusion matrices of
    # candidate and stable, their comparison, slices); plain JSON.
    report: Mapping[str, Any] = field(default_factory=dict)
    # An analysis run: the time its queries were evaluated at (its window's end), which may be long before its
    # answer is read. None: unknown, taken as the time it is read.
    measured_at: datetime | None = None


@dataclass(frozen=True)
class ActionFailure:
    """An action the operator tried in this reconcile and could not carry out."""

    action_id: str
    error: AdapterError


@dataclass(frozen=True)
class Observations:
    generation: int  # metadata.generation of the resource read
    registry: RegistryObservation | None = None  # None: not looked at this time
    target: TargetObservation | None = None
    gate: JudgeResult | None = None
    analysis: JudgeResult | None = None
    commands: tuple[Command, ...] = ()  # from the command annotation; already-handled ids are ignored
    action_failures: tuple[ActionFailure, ...] = ()
    # Effect actions carried out without an error since the last decision: their latest answer was an
    # acceptance, so an earlier refusal recorded on them no longer counts.
    actions_done: tuple[str, ...] = ()
    # True on the operator's first reconcile of this rollout since it (re)started: actions recorded as
    # pending may never have been carried out, so they are sent again at once.
    resend_pending: bool = False
    # metadata.deletionTimestamp: when the ModelRollout was deleted (it still exists while a finalizer holds it).
    deleted_at: datetime | None = None
    # How often Prometheus scrapes the exporter (operator run --scrape-interval, which the operator always passes):
    # the gate's own predictions are counted a scrape or two after it, so the first traffic step waits for them to
    # be in (_set_weight_step). None: not told (a caller that judges no traffic), no wait.
    scrape_interval: timedelta | None = None
