"""One ModelRollout per target: when several in a namespace name the same object, the first one created has it.

Two rollouts driving one InferenceService would stage over each other's candidates and withdraw each other's
canaries. The API server cannot refuse the second (a schema sees one object at a time), so the operator holds it:
pure functions here, over the raw objects the operator lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# spec.target's keys, the field naming the object under each, and the kind it is.
_TARGETS = (("kserve", "inferenceService", "InferenceService"), ("seldonDeployment", "name", "SeldonDeployment"),
            ("seldonExperiment", "name", "Experiment"))


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


def _seniority(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    # RFC 3339 in UTC to the second, as the API server writes it: compared as text. Same second: by name.
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def target_holder(obj: Mapping[str, Any], others: Iterable[Mapping[str, Any]]) -> str | None:
    """The name of the rollout among `others` (the namespace's ModelRollouts) that has obj's target before obj,
    or None when obj has it."""
    claim = target_claim(obj)
    if claim is None:
        return None
    me = obj.get("metadata") or {}
    first: Mapping[str, Any] | None = None
    for other in others:
        meta = other.get("metadata") or {}
        if meta.get("uid") == me.get("uid") or meta.get("namespace") != me.get("namespace"):
            continue
        theirs = target_claim(other)
        if theirs is None or (theirs.kind, theirs.name) != (claim.kind, claim.name):
            continue
        if _seniority(other) < _seniority(obj) and (first is None or _seniority(other) < _seniority(first)):
            first = other
    return None if first is None else str((first.get("metadata") or {}).get("name"))
