"""What the engine asks the operator to do.

Every action carries a stable `id`: the same step of the same attempt always yields the same id, so an
operator that crashed after acting and before writing status simply does it again, and every action is
idempotent (server-side apply of the same fields, setting an alias or a tag to the same value, running
read-only judges). The engine never trusts that an effect happened: it waits to *observe* it (the
target's reported weight, the alias in the registry, the tag on the version) before moving on.

Effect actions (traffic, registry) are recorded in status.actions; measurement actions (RunGate,
RunAnalysis) are answered by a JudgeResult with the same id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

from controller.api.serialization import to_json
from controller.api.spec import GoldenDatasetSpec
from controller.api.status import AnalysisMode, VersionRef


class ActionType(StrEnum):
    STAGE_CANDIDATE = "StageCandidate"
    SET_CANARY_WEIGHT = "SetCanaryWeight"
    PROMOTE_CANDIDATE = "PromoteCandidate"
    RESTORE_STABLE = "RestoreStable"
    UNSTAGE_CANDIDATE = "UnstageCandidate"
    SET_ALIAS = "SetAlias"
    REMOVE_ALIAS = "RemoveAlias"
    TAG_REJECTED = "TagRejected"
    RUN_GATE = "RunGate"
    RUN_ANALYSIS = "RunAnalysis"


@dataclass(frozen=True)
class _Action:
    type: ClassVar[ActionType]
    id: str

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = to_json(self)
        return {"type": str(self.type), **body}


# --- traffic (the router) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StageCandidate(_Action):
    """Deploy the candidate beside stable with 0% of traffic.

    Confirmed when the target reports canary_version == candidate.version, canary_ready, weight 0.
    """

    type: ClassVar[ActionType] = ActionType.STAGE_CANDIDATE
    candidate: VersionRef


@dataclass(frozen=True)
class SetCanaryWeight(_Action):
    """Give the staged candidate `weight` percent of traffic: a canary step (0 is a valid step weight), or,
    with `withdraw`, the pre-promotion rollback (weight 0, all traffic back to stable, the candidate withdrawn).

    Confirmed when the target reports canary_weight == weight (0 also when no canary is left).
    """

    type: ClassVar[ActionType] = ActionType.SET_CANARY_WEIGHT
    candidate_version: str
    weight: int
    withdraw: bool = False  # the rollback's action, not a step's: a step at 0% must never withdraw


@dataclass(frozen=True)
class PromoteCandidate(_Action):
    """Send all traffic to the candidate and remove the canary setting the way the serving system expects.

    Confirmed when the target reports stable_version == candidate.version and no canary.
    """

    type: ClassVar[ActionType] = ActionType.PROMOTE_CANDIDATE
    candidate: VersionRef


@dataclass(frozen=True)
class RestoreStable(_Action):
    """After a promotion, put the previous version back on all traffic.

    Confirmed when the target reports stable_version == stable.version and no canary weight.
    """

    type: ClassVar[ActionType] = ActionType.RESTORE_STABLE
    stable: VersionRef


@dataclass(frozen=True)
class UnstageCandidate(_Action):
    """Remove a staged candidate that never became ready, leaving the target as it was before staging.

    Confirmed when the target reports no canary.
    """

    type: ClassVar[ActionType] = ActionType.UNSTAGE_CANDIDATE
    candidate_version: str


# --- registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetAlias(_Action):
    """Point the registry alias at a version. Confirmed when the registry reports it."""

    type: ClassVar[ActionType] = ActionType.SET_ALIAS
    alias: str
    version: str
    # The promotion's move: the registry also records on the version what the alias named before (and the
    # `<alias>-previous` alias), so the way back outlives the resource.
    promotion: bool = False


@dataclass(frozen=True)
class RemoveAlias(_Action):
    """Remove the alias, but only while it names `version`: a first rollout's rejected version must not stay
    stable, and an alias someone pointed elsewhere meanwhile is not ours. Confirmed when it names another."""

    type: ClassVar[ActionType] = ActionType.REMOVE_ALIAS
    alias: str
    version: str


@dataclass(frozen=True)
class TagRejected(_Action):
    """Tag the candidate version rejected (modelrollout.rejected) with the reason and evidence summary.

    Confirmed when the registry reports the tag on the candidate.
    """

    type: ClassVar[ActionType] = ActionType.TAG_REJECTED
    version: str
    reason: str
    evidence: Mapping[str, Any]
    rejected_at: datetime
    actor: str


# --- measurements (the judges) -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunGate(_Action):
    """Run the golden-dataset gate on the staged candidate (and stable, when there is one)."""

    type: ClassVar[ActionType] = ActionType.RUN_GATE
    candidate: VersionRef
    stable: VersionRef | None
    dataset: GoldenDatasetSpec


@dataclass(frozen=True)
class RunAnalysis(_Action):
    """Run every analysis judge once.

    canary mode: canary vs stable over [window_start, now]. bake mode: the promoted candidate over
    [window_start, now] vs the baseline version over `baseline_window` of its history, on the days
    `history_days_back` names.
    """

    type: ClassVar[ActionType] = ActionType.RUN_ANALYSIS
    mode: AnalysisMode
    candidate_version: str
    baseline_version: str | None
    canary_weight: int
    window_start: datetime
    step_index: int | None = None
    baseline_window: timedelta | None = None
    metrics: tuple[str, ...] = field(default_factory=tuple)
    # bake mode: when the candidate took all traffic (None: not known, taken as window_start). A window starting
    # later (a watch after an inconclusive bake, a retried bake) must not take the bake's own days as history.
    promoted_at: datetime | None = None


# A bake's deciding run is measured after it ends (asked for once its time is up, read when a worker takes it, and
# retried after an outage until progressDeadline, 30 min by default): a window this much past whole days still
# reads history a day apart. Past windows then overlap by at most this much (1/24 of a day's), and the nearest
# reaches at most this far past promotion, when the previous version no longer served.
HISTORY_SPACING_SLACK = timedelta(hours=1)
_DAY = timedelta(days=1)


def history_every_days(window: timedelta) -> int:
    """How many whole days apart a bake run's history windows are: as many as the window spans less the slack
    (at least one), so that windows as long as the run's overlap one another by at most the slack."""
    return max(1, math.ceil((window - HISTORY_SPACING_SLACK) / _DAY))


def history_days_back(window: timedelta, days: int, since_promotion: timedelta | None = None) -> tuple[int, ...]:
    """How many whole days before a bake run's end each of its `days` history windows ends, nearest first: the
    same hours on past days, `history_every_days` apart.

    `since_promotion`: the run's end less the promotion (None: the window starts at it). The nearest window ends
    no later than the promotion plus the slack's share of the window (an hour of a day's, a minute of a 24-minute
    one): a window that starts well after the promotion would otherwise read the bake's own days, when the
    previous version no longer served. A window starting at the promotion is never moved."""
    every = history_every_days(window)
    first = every
    if since_promotion is not None:
        allowed = HISTORY_SPACING_SLACK * min(1.0, window / _DAY)
        first = max(every, math.ceil((since_promotion - allowed) / _DAY))
    return tuple(first + every * day for day in range(days))


Action = (StageCandidate | SetCanaryWeight | PromoteCandidate | RestoreStable | UnstageCandidate | SetAlias
          | RemoveAlias | TagRejected | RunGate | RunAnalysis)

MEASUREMENT_TYPES = frozenset({ActionType.RUN_GATE, ActionType.RUN_ANALYSIS})
