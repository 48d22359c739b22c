"""The one small interface every serving system is driven through, and the errors it raises.

A router moves traffic on one object (an InferenceService, a SeldonDeployment, an Experiment) in one
namespace. It is synchronous (the operator calls it through `asyncio.to_thread`), keeps no state of its
own between calls (what it must remember lives on the object it drives), and every operation is
idempotent: calling it twice leaves the object exactly as calling it once.

Reading the state: `observe()` reports what the serving system's *status* says, never what was last
patched. When `synced` is False the serving controller has not yet processed the latest spec, so
nothing in the state may be taken as confirmation of a patch: poll again. An object the router can never
drive as it stands (e.g. a KServe ModelMesh or custom-container predictor) is a TargetStateError instead,
so the reason reaches the rollout's status rather than a wait for a catch-up that will not come.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from controller.redaction import redact_urls

# Annotation keys the routers write on the objects they drive (always under this prefix).
ANNOTATION_PREFIX = "modelrollout.io/"


class DeploymentMode(StrEnum):
    KNATIVE = "Knative"  # KServe Serverless: revisions, canaryTrafficPercent
    STANDARD = "Standard"  # KServe Standard (formerly RawDeployment): spec.canary[]
    SELDON_DEPLOYMENT = "SeldonDeployment"  # Seldon Core v1 predictors
    SELDON_EXPERIMENT = "SeldonExperiment"  # Seldon Core v2 Experiment


@dataclass(frozen=True)
class CandidateModel:
    """The model version to stage.

    serving_name: the name the serving system knows this version by, where it needs one (Seldon Core v2:
        the Model resource to put in the Experiment). Routers that derive it leave it None.
    """

    name: str  # registered model name
    version: str  # registry version
    storage_uri: str  # what the model server loads (KServe storageUri, Seldon v1 modelUri)
    serving_name: str | None = None


@dataclass(frozen=True)
class TargetState:
    """The serving object as its status reports it.

    exists: False when the object is missing (observe never raises TargetNotFound).
    synced: the serving controller has processed the current spec; when False, poll again before
        confirming anything.
    ready: the stable version serves traffic.
    stable_version / canary_version: registry versions; None when unknown or, for the canary, when no
        candidate is staged.
    canary_weight: percent of traffic the candidate receives as the serving system reports it; None when
        no candidate is staged.
    stable_name / canary_name: the serving system's own names (revision, predictor, Seldon Model).
    pinned: a rollback left traffic held on the previous deployment by a setting only the router removes
        (KServe Knative: canaryTrafficPercent on a spec naming stable); call rollback() until it is False.
    message: what is wrong or pending, in one sentence; empty when all is well.
    """

    target: str
    exists: bool
    mode: DeploymentMode | None = None
    synced: bool = False
    ready: bool = False
    stable_version: str | None = None
    stable_name: str | None = None
    stable_url: str | None = None
    canary_version: str | None = None
    canary_name: str | None = None
    canary_ready: bool = False
    canary_weight: int | None = None
    canary_url: str | None = None
    pinned: bool = False
    message: str = ""

    def __post_init__(self) -> None:
        # It quotes the serving system's conditions, whose failures quote the storage URI the router wrote: a
        # presigned signature or a git token in it would reach the rollout's status and Events.
        if self.message:
            object.__setattr__(self, "message", redact_urls(self.message))

    @property
    def canary_staged(self) -> bool:
        return self.canary_name is not None


@runtime_checkable
class TrafficRouter(Protocol):
    """Stage a candidate beside stable, move traffic, promote or roll back: one object, one namespace."""

    @property
    def target(self) -> str:
        """For messages, e.g. "InferenceService moderation/nsfw-classifier"."""
        ...

    def observe(self) -> TargetState:
        """Read-only: what the serving system reports now. Raises TargetStateError (reason "Invalid") when
        the object cannot be driven as it is; a missing object is reported (exists False), not raised."""
        ...

    def stage(self, candidate: CandidateModel, stable_version: str | None = None) -> None:
        """Deploy the candidate beside stable at 0% of traffic.

        stable_version names the registry version serving today; it is recorded on the object when the
        object does not already say (the first rollout on a target).
        """
        ...

    def set_weight(self, percent: int, candidate_version: str | None = None) -> None:
        """Give the staged candidate `percent` of traffic (0..100), stable the rest.

        candidate_version: the registry version the caller staged. When given, the router refuses
        (TargetStateError) unless the staged candidate is recorded as that version: two rollouts on one
        target would otherwise give one's weight to the other's ungated candidate. None skips the check
        (a person driving the router by hand).
        """
        ...

    def promote(self) -> None:
        """Candidate to all traffic, the canary setting removed the way the serving system expects.

        Some systems promote in steps the serving controller must take in between (see each router);
        call again until observe() shows the candidate as stable with no canary.
        """
        ...

    def rollback(self) -> None:
        """Before promotion: all traffic back to stable at once, and the spec no longer naming the candidate.

        Also the way to withdraw a candidate that never became ready. With nothing staged it does nothing
        (after a promotion the candidate *is* stable: use restore()).
        """
        ...

    def restore(self, stable: CandidateModel) -> None:
        """After promotion (a failed bake): put `stable`, the version that served before, back on all
        traffic and remove any canary. Instant where the serving system keeps the previous deployment
        (KServe Knative revisions); elsewhere the previous model has to start again."""
        ...


# --- errors ------------------------------------------------------------------------------------------
# `reason` uses the same words as the engine's AdapterErrorKind, so the operator maps errors one to one.


class TrafficError(Exception):
    reason = "Error"


class TargetNotFound(TrafficError):
    reason = "NotFound"


class PatchRejected(TrafficError):
    """The API server (schema, CEL or a webhook) refused the patch; `api_message` is its own words."""

    reason = "Invalid"

    def __init__(self, message: str, api_message: str) -> None:
        super().__init__(message)
        self.api_message = api_message


class ConflictError(TrafficError):
    """409 persisted after re-reading and re-applying on fresh state several times."""

    reason = "Conflict"


class AccessDenied(TrafficError):
    reason = "Forbidden"


class TargetUnavailable(TrafficError):
    """The API server could not be reached or failed (5xx): try again later."""

    reason = "Unavailable"


class TargetStateError(TrafficError):
    """The operation cannot be carried out in the target's current state (the message says why).

    reason "Unavailable" means it may succeed later (e.g. the serving controller has not caught up);
    "Invalid" means it will not until something else changes (e.g. nothing is staged).
    """

    def __init__(self, message: str, reason: str = "Invalid") -> None:
        super().__init__(message)
        self.reason = reason


def check_candidate_version(target: str, staged: str | None, wanted: str | None, unknown_why: str = "") -> None:
    """set_weight's guard: the staged candidate must be the caller's (`wanted`; None: not checked)."""
    if wanted is None:
        return
    if staged is None:
        raise TargetStateError(f"{target}: the staged candidate's version is unknown ({unknown_why or 'none recorded'})"
                               f", so it is not given the traffic meant for version {wanted}")
    if staged != wanted:
        raise TargetStateError(f"{target} has candidate version {staged} staged, not {wanted} (another rollout on "
                               f"the same target?): its traffic is left as it is")


def check_percent(percent: int) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"traffic percent must be an integer from 0 to 100, got {percent!r}")
    return percent
