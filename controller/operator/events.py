"""Kubernetes Events from the status history: each entry is posted once, even when the operator is killed.

The history is the trail and is stored first; Events follow it. The engine numbers entries (`seq`), and
`status.eventsPostedThrough` is the seq of the newest entry posted, so the entries to post are those above
it. An Event is named after its entry (seq and time), so posting it again after a kill (before the mark was
stored) is refused as AlreadyExists instead of making a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from controller.api.serialization import parse_time
from controller.api.status import FINALIZER_REFUSED, STATUS_REJECTED

POSTED_THROUGH = "eventsPostedThrough"
# Entries whose event name contains one of these are Warning Events, and so are WARNING_REASONS; the rest
# (progress) are Normal. RollbackStarted is a Warning whatever its cause: a missed progress deadline, an
# on-call abort or a superseded candidate have no failed check of their own before it.
WARNING_EVENTS = ("Fail", "RollingBack", "RolledBack", "Abort", "Inconclusive", "Error", "Invalid")
WARNING_REASONS = frozenset({"RollbackStarted", "TrafficNotRestored", "GateOverridden", "CommandIgnored",
                             "CandidateRejected", "PreviouslyRejected", "AwaitingDecision", "StatusReset", "AliasLeft",
                             "AliasNotRestored", "CandidateNotTagged", "CandidateNotUnstaged", "StableMismatch",
                             "TargetConflict", "ProgressDeadlineExceeded", STATUS_REJECTED,
                             FINALIZER_REFUSED})
# The API server's default --event-ttl. An Event posted for an entry this old may have expired since, so
# posting it again could not be told apart from a duplicate: such entries are not posted.
EVENT_TTL = timedelta(hours=1)
# What an entry's event must look like to be an Event reason (and a metric label): a CamelCase word, as the engine
# writes them. Anything else (a status edited by hand) is posted as UNKNOWN_REASON: reasons are never data.
REASON = re.compile(r"[A-Z][A-Za-z]{1,63}")
UNKNOWN_REASON = "Unknown"


class PostResult(StrEnum):
    POSTED = "Posted"
    ALREADY_POSTED = "AlreadyPosted"  # an earlier reconcile posted it and was stopped before it said so
    REFUSED = "Refused"  # the API server will never take it (forbidden, invalid): skipped, with a warning
    DEFERRED = "Deferred"  # the API server is unreachable or busy: this entry and the rest wait


def event_name(rollout: str, uid: str | None, entry: Mapping[str, Any]) -> str:
    """Stable per entry and per object: the uid tells apart a rollout deleted and created again, the time an
    entry numbered again (after an older operator rewrote the status without numbers)."""
    digest = hashlib.sha256(json.dumps([uid, entry.get("seq"), entry.get("time")]).encode()).hexdigest()[:16]
    return f"{rollout[:200].rstrip('.-')}.{digest}"


def event_reason(entry: Mapping[str, Any]) -> str:
    reason = entry.get("event")
    return reason if isinstance(reason, str) and REASON.fullmatch(reason) else UNKNOWN_REASON


def is_warning(reason: str) -> bool:
    return reason in WARNING_REASONS or any(word in reason for word in WARNING_EVENTS)


def entry_time(entry: Mapping[str, Any]) -> datetime | None:
    try:
        return parse_time(str(entry["time"]))
    except (KeyError, ValueError):
        return None


def unposted(status: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    """The history entries numbered above the mark (entries recorded before numbering are never posted)."""
    mark = status.get(POSTED_THROUGH) or 0
    return [entry for entry in status.get("history") or []
            if isinstance(entry.get("seq"), int) and entry["seq"] > mark]
