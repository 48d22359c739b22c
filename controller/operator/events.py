"""Kubernetes Events from the status history: each entry is posted once, even when the operator is killed.

The history is the trail and is stored first; Events follow it. An Event's name is derived from its entry, so
posting it again after a kill is refused as AlreadyExists instead of making a duplicate, and
`status.eventsPostedThrough` (the key of the newest entry posted) keeps later reconciles from trying again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

POSTED_THROUGH = "eventsPostedThrough"
# Entries whose event name contains one of these are Warning Events; the rest are Normal.
WARNING_EVENTS = ("Fail", "RollingBack", "RolledBack", "Abort", "Inconclusive", "Deadline", "Error", "Invalid")


class PostResult(StrEnum):
    POSTED = "Posted"
    ALREADY_POSTED = "AlreadyPosted"  # an earlier reconcile posted it and was stopped before it said so
    REFUSED = "Refused"  # the API server will never take it (forbidden, invalid): skipped, with a warning
    DEFERRED = "Deferred"  # the API server is unreachable or busy: this entry and the rest wait


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def entry_key(entry: Mapping[str, Any]) -> str:
    return _digest(entry)


def event_name(rollout: str, uid: str | None, entry: Mapping[str, Any]) -> str:
    """Stable per entry and per object (the uid tells apart a rollout deleted and created again)."""
    return f"{rollout[:200]}.{_digest([uid, entry_key(entry)])}"


def is_warning(event: str) -> bool:
    return any(word in event for word in WARNING_EVENTS)


def unposted(status: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    """The history entries after the newest one posted.

    When the mark is no longer in the bounded history (more entries than it holds went by unposted), all of
    it is posted: the entries still in the API server are refused as AlreadyPosted.
    """
    history: list[Mapping[str, Any]] = list(status.get("history") or [])
    mark = status.get(POSTED_THROUGH)
    if mark:
        for index in range(len(history) - 1, -1, -1):
            if entry_key(history[index]) == mark:
                return history[index + 1:]
    return history
