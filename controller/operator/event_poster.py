"""Posts the stored history entries not yet posted as Kubernetes Events; the caller stores the new mark."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controller.operator.events import EVENT_TTL, POSTED_THROUGH, PostResult, entry_time, event_reason, unposted
from controller.operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)

# How soon Events that the API server could not take are tried again, at first and at the longest.
EVENT_RETRY_SECONDS = 5.0
EVENT_RETRY_MAX_SECONDS = 300.0


class EventSink(Protocol):
    def post_event(self, obj: dict[str, Any], entry: Mapping[str, Any]) -> PostResult: ...


@dataclass(frozen=True)
class Posted:
    mark: int  # the seq of the newest entry posted (or given up); store it as status.eventsPostedThrough
    retry_after: float | None  # seconds until the entries the API server could not take are tried again


class EventPoster:
    def __init__(self, sink: EventSink, metrics: OperatorMetrics,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.sink = sink
        self.metrics = metrics
        self.clock = clock

    async def post(self, stored: dict[str, Any], status: Mapping[str, Any]) -> Posted:
        """Post the entries of `status` (already stored in `stored`) numbered above its mark.

        Entries stored by a reconcile that was killed or lost its last write are posted by the next one, and
        those already posted are refused by name, not posted again. Entries the API server could not take are
        tried again soon at first, less often as they age; past the Events' lifetime they are given up.
        """
        meta = stored["metadata"]
        mark = status.get(POSTED_THROUGH) or 0
        pending = unposted(status)
        if pending and pending[0]["seq"] > mark + 1:
            log.warning("%s/%s: history entries %d to %d left the bounded history before they were posted as Events",
                        meta["namespace"], meta["name"], mark + 1, pending[0]["seq"] - 1)
        now = self.clock()
        for entry in pending:
            recorded = entry_time(entry)
            age = now - (recorded or now)
            if age > EVENT_TTL:
                log.warning("not posting Event %s for %s/%s: recorded %.0f s ago, past the Events' lifetime",
                            event_reason(entry), meta["namespace"], meta["name"], age.total_seconds())
            else:
                posted = await asyncio.to_thread(self.sink.post_event, stored, entry)
                if posted is PostResult.DEFERRED and recorded is None:
                    # Its age is unknown (an entry edited by hand): never aged out, it would be retried for ever.
                    log.warning("not posting Event %s for %s/%s again: its history entry has no readable time",
                                event_reason(entry), meta["namespace"], meta["name"])
                elif posted is PostResult.DEFERRED:
                    retry = min(max(age.total_seconds() / 2, EVENT_RETRY_SECONDS), EVENT_RETRY_MAX_SECONDS)
                    return Posted(mark, retry)
                if posted is PostResult.POSTED:
                    self.metrics.count_event(event_reason(entry))
            mark = entry["seq"]
        return Posted(mark, None)
