"""A rollout as the CLI shows it: every field it reads has the type it expects.

A status may be partial, written by an older controller, or edited by hand (the CRD leaves `gate`, `analysis`
and `rollback` open), and the on-call still needs an account of it. Fields of the wrong type are dropped,
lists keep only their objects, and the texts a line is built from are strings.
"""

from __future__ import annotations

import re
from typing import Any

# Control characters (ESC can clear or retitle a terminal) and the bidi controls (U+061C ALM, LRM, RLM, the embeddings,
# overrides and isolates), as status text may hold them.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
SECTIONS = ("gate", "analysis", "rollback", "candidate", "stable", "pause", "promotion")


def printable(value: Any) -> Any:
    """Strings from the API server as a terminal may show them: unprintable characters escaped (\\x1b), in map
    keys too (a verdict's query roles are printed as they are named)."""
    if isinstance(value, str):
        return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], value)
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def text(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


def _verdicts(value: Any) -> list[dict[str, Any]]:
    return [{**v, "name": text(v.get("name"), "?"), "outcome": text(v.get("outcome"), "?"),
             "reason": text(v.get("reason")), "evidence": mapping(v.get("evidence"))} for v in objects(value)]


def well_formed(obj: Any) -> dict[str, Any]:
    """A copy of `obj` that the list, get, history and explain views can read without a type check."""
    obj = mapping(obj)
    meta = mapping(obj.get("metadata"))
    meta = {**meta, "name": text(meta.get("name"), "?"), "namespace": text(meta.get("namespace"), "?")}
    spec = dict(mapping(obj.get("spec")))
    spec["model"] = mapping(spec.get("model"))
    canary = mapping(spec.get("canary"))
    spec["canary"] = {**canary, "steps": objects(canary.get("steps"))}
    status = {k: v for k, v in mapping(obj.get("status")).items() if k not in SECTIONS or isinstance(v, dict)}
    for key in ("phase", "message"):
        if key in status:
            status[key] = text(status[key])
    status["history"] = [{**e, "time": text(e.get("time"), "?"), "event": text(e.get("event"), "?"),
                          "actor": text(e.get("actor")), "detail": text(e.get("detail"))}
                         for e in objects(status.get("history"))]
    status["conditions"] = [{**c, "type": text(c.get("type"), "?"), "status": text(c.get("status"), "?"),
                             "reason": text(c.get("reason"))} for c in objects(status.get("conditions"))]
    if "gate" in status:
        status["gate"] = {**status["gate"], "verdicts": _verdicts(status["gate"].get("verdicts"))}
    if "analysis" in status:
        analysis = status["analysis"]
        status["analysis"] = {**analysis, "metrics": _verdicts(analysis.get("metrics") or analysis.get("verdicts"))}
    if "rollback" in status:
        rollback = status["rollback"]
        evidence = mapping(rollback.get("evidence"))
        status["rollback"] = {**rollback, "evidence": {**evidence, "verdicts": _verdicts(evidence.get("verdicts"))}}
    return {**obj, "metadata": meta, "spec": spec, "status": status}
