"""One rollout at a time per target: when several ModelRollouts in a namespace name the same object, only one may
act on it.

Two rollouts driving one InferenceService would stage over each other's candidates and withdraw each other's
canaries. The API server cannot refuse the second (a schema sees one object at a time), so the operator holds it.
A rollout in flight (an attempt started and not ended) has its target; when several are in flight, the one
whose attempt started first. One not in flight takes nothing from anyone: an ended rollout kept beside a newer one
(one ModelRollout per release) never blocks it, and a new attempt waits while another rollout is in flight on the
target. Pure functions here, over the raw objects the operator lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.api.serialization import parse_time
from controller.api.status import TERMINAL_PHASES, Phase

# spec.target's keys, the field naming the object under each, and the kind it is.
_TARGETS = (("kserve", "inferenceService", "InferenceService"), ("seldonDeployment", "name", "SeldonDeployment"),
            ("seldonExperiment", "name", "Experiment"))
_ENDED = frozenset(str(p) for p in TERMINAL_PHASES)


@dataclass(frozen=True)
class TargetClaim:
    path: str  # the spec field naming the object, e.g. spec.target.kserve.inferenceService
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"


def target_claim(obj: Mapping[str, Any]) -> TargetClaim | None:
    """The object a ModelRollout's spec names, None when its spec names none it could act on."""
    target = ((obj.get("spec") or {}).get("target")) or {}
    if not isinstance(target, Mapping):
        return None
    for key, field, kind in _TARGETS:
        body = target.get(key)
        if isinstance(body, Mapping) and isinstance(body.get(field), str) and body[field]:
            return TargetClaim(f"spec.target.{key}.{field}", kind, body[field])
    return None


def in_flight(obj: Mapping[str, Any]) -> bool:
    """Whether the rollout's stored status is in flight: it may have the target in hand. Any phase but the ended
    ones, and Pending once an attempt has started (its candidate resolved: staging comes next)."""
    status = obj.get("status")
    if not isinstance(status, Mapping):
        return False
    phase = status.get("phase")
    if phase == str(Phase.PENDING):
        return bool(status.get("startedAt"))
    return isinstance(phase, str) and bool(phase) and phase not in _ENDED


def _seconds(text: Any) -> float:
    try:
        return parse_time(text).timestamp()
    except (ValueError, TypeError, AttributeError, OverflowError):  # missing or not a time: last
        return float("inf")


def _order(obj: Mapping[str, Any]) -> tuple[float, float, str]:
    """When its attempt started (the first write of an attempt stores it), then when it was created, then its name."""
    meta = obj.get("metadata") or {}
    status = obj.get("status")
    started = status.get("startedAt") if isinstance(status, Mapping) else None
    return _seconds(started), _seconds(meta.get("creationTimestamp")), str(meta.get("name") or "")


def target_holder(obj: Mapping[str, Any], others: Iterable[Mapping[str, Any]]) -> str | None:
    """The name of the rollout among `others` (the namespace's ModelRollouts) that has obj's target, or None when
    obj may act on it: another one in flight on the same object, when obj is not in flight or started after it."""
    claim = target_claim(obj)
    if claim is None:
        return None
    me = obj.get("metadata") or {}
    mine = in_flight(obj)
    first: Mapping[str, Any] | None = None
    for other in others:
        meta = other.get("metadata") or {}
        if meta.get("uid") == me.get("uid") or meta.get("namespace") != me.get("namespace") or not in_flight(other):
            continue
        theirs = target_claim(other)
        if theirs is None or (theirs.kind, theirs.name) != (claim.kind, claim.name):
            continue
        if (not mine or _order(other) < _order(obj)) and (first is None or _order(other) < _order(first)):
            first = other
    return None if first is None else str((first.get("metadata") or {}).get("name"))
