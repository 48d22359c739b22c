"""The pure decision engine: decide(spec, status, observations, now) -> Decision(actions, status)."""

from controller.engine.actions import (
    Action,
    ActionType,
    PromoteCandidate,
    RestoreStable,
    RunAnalysis,
    RunGate,
    SetAlias,
    SetCanaryWeight,
    StageCandidate,
    TagRejected,
    UnstageCandidate,
)
from controller.engine.decide import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    CONFIRM_POLL,
    RESEND_AFTER,
    Decision,
    decide,
    reject_spec,
)
from controller.engine.observations import (
    REJECTED_TAG,
    REJECTED_TIME_TAG,
    ActionFailure,
    AdapterError,
    AdapterErrorKind,
    JudgeResult,
    Observations,
    RegistryObservation,
    ResolvedVersion,
    TargetObservation,
    rejection_time,
)

__all__ = [
    "BACKOFF_BASE", "BACKOFF_MAX", "CONFIRM_POLL", "REJECTED_TAG", "REJECTED_TIME_TAG", "RESEND_AFTER",
    "Action", "ActionFailure", "ActionType",
    "AdapterError", "AdapterErrorKind", "Decision", "JudgeResult", "Observations", "PromoteCandidate",
    "RegistryObservation", "ResolvedVersion", "RestoreStable", "RunAnalysis", "RunGate", "SetAlias",
    "SetCanaryWeight", "StageCandidate", "TagRejected", "TargetObservation", "UnstageCandidate", "decide",
    "reject_spec", "rejection_time",
]
