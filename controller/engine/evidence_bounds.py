"""How much verdict evidence status keeps: etcd bounds an object's size, and a status write it refuses does nothing the
engine decided, a rollback included. Pure: no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from controller.api.serialization import to_json
from controller.text_bounds import cut_text

# What one verdict's evidence may take in status (as JSON): etcd refuses a write over 1.5 MiB by default, and a refused
# status does nothing it decided, a rollback included. The spec allows 20 metrics, 4096-character templates and a
# 999-day bake baseline: kept whole, a failing bake's evidence took several MiB. status.rollback.evidence copies the
# deciding verdicts again, in less room: status.analysis holds the larger copy. 20 metrics take at most 400 KiB.
VERDICT_EVIDENCE_BYTES = 16 * 1024
ROLLBACK_EVIDENCE_BYTES = 4 * 1024
# The evidence key that says what was cut: the evidence's size whole, the budget and any top-level keys left out.
EVIDENCE_CUT = "evidenceCut"
# Tried in turn until the evidence fits: the characters kept of a long string (a rendered query), and the entries
# kept at each end of a long list (a bake's days). Numbers and short strings are never cut.
_EVIDENCE_CUTS = ((1024, 12), (256, 4), (64, 1))
_CUT_NAMES_SHOWN = 5


def bounded_evidence(evidence: Mapping[str, Any], budget: int) -> dict[str, Any]:
    """`evidence` as plain JSON in at most `budget` bytes (ensure_ascii JSON, more than UTF-8 needs): unchanged when
    it fits; else long strings cut (saying how many characters, with the whole one's sha256 to match it with a
    query rendered by hand) and long lists cut to their ends (saying how many entries), then top-level entries left
    out, named, as a last resort. Evidence cut before (the rollback's copy of status.analysis) keeps its counts."""
    plain = to_json(dict(evidence))
    size = _json_bytes(plain)
    if size <= budget:
        return plain
    before = plain.get(EVIDENCE_CUT)
    whole = before.get("bytes") if isinstance(before, dict) else None
    note: dict[str, Any] = {"bytes": whole if isinstance(whole, int) else size, "budget": budget}
    for chars, ends in _EVIDENCE_CUTS:
        cut = {**_cut(plain, chars, ends), EVIDENCE_CUT: note}
        if _json_bytes(cut) <= budget:
            return cut
    kept: dict[str, Any] = {EVIDENCE_CUT: note}
    left: list[str] = []
    room = budget - _json_bytes(kept) - 100 - _CUT_NAMES_SHOWN * 80  # the names of what is left out, cut to 64
    for key, value in cut.items():
        if key == EVIDENCE_CUT:
            continue
        if (more := _json_bytes({key: value})) <= room:  # what the entry adds: its own JSON less "{}", plus ", "
            kept[key], room = value, room - more
        else:
            left.append(cut_text(key, 64))
    # A copy cut before (the rollback's, of status.analysis) also counts and names what that cut left out.
    earlier = before.get("keysLeftOut") if isinstance(before, dict) else None
    earlier_names = before.get("keysLeftOutNames") if isinstance(before, dict) else None
    names = [*(earlier_names if isinstance(earlier_names, list) else []), *left]
    note.update(keysLeftOut=len(left) + (earlier if isinstance(earlier, int) else 0),
                keysLeftOutNames=names[:_CUT_NAMES_SHOWN])
    while _json_bytes(kept) > budget and note["keysLeftOutNames"]:  # names escaped for JSON may need more room
        note["keysLeftOutNames"].pop()
    return kept


_ENTRIES_CUT = re.compile(r"\[(\d+) entries cut\]")


def _cut(value: Any, chars: int, ends: int) -> Any:
    if isinstance(value, str):
        return cut_text(value, chars)
    if isinstance(value, dict):
        return {cut_text(key, chars): _cut(item, chars, ends) for key, item in value.items()}
    if isinstance(value, list):
        if len(value) > 2 * ends + 1:
            gone = sum(int(m.group(1)) if isinstance(item, str) and (m := _ENTRIES_CUT.fullmatch(item)) else 1
                       for item in value[ends:len(value) - ends])
            value = [*value[:ends], f"[{gone} entries cut]", *value[len(value) - ends:]]
        return [_cut(item, chars, ends) for item in value]
    return value


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, default=str))
