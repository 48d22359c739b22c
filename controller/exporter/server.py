"""HTTP side of the exporter: POST logger events anywhere, GET /metrics, GET /healthz."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Metric, generate_latest
from prometheus_client.samples import Sample

from controller.exporter.connections import MAX_CONNECTIONS, Drain, run_server
from controller.exporter.events import (
    IDENTITY_ATTRIBUTES,
    IGNORED_TYPES,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    TOO_LARGE_REASON,
    CloudEvent,
    DecodeOptions,
    MalformedEvent,
    Prediction,
    check_label,
    inflated,
    may_inflate,
    parse_cloudevent,
    payload_unused,
    prediction_from_event,
)

log = logging.getLogger(__name__)
# What to do about a drop reason of the exporter's set-up, in its log line.
DROP_HINTS = {"NoClassNames": ": an index or a row of scores names no class without the exporter's --class-names "
                              "(integer labels are indexes: list the classes, e.g. 0,1)"}
OTHER_CLASS = "__other__"
PREDICTIONS_METRIC = "modelrollout_predictions"  # exposed as modelrollout_predictions_total
# Answers of a model identity no class could be read from (events.UNREADABLE_REASONS), exposed with _total: a family of
# its own, so that no class metric's total changes (a canary whose every answer is unreadable stays without evidence
# for a class rate, never a pass at rate 0). One series per identity, made at 0 as classes are, so that a proportion
# metric adding it to the predictions always has both sides.
UNREADABLE_METRIC = "modelrollout_unreadable_predictions"
INTERNAL_REASON = "Internal"  # an event the exporter failed on for a reason of its own: a bug, not the sender's
# Every body-read slot taken for BODY_WAIT_SECONDS: answered 503, and lost (KServe's logger does not retry).
BUSY_REASON = "Busy"
# A declared body this small is read without a slot (aiohttp's read buffer), unless it has a Content-Encoding: it is
# inflated (by events.inflated: aiohttp's decoding is off, see connections.serve) up to MAX_EVENT_BYTES (a 4 KiB
# gzip body is 4 MiB).
SMALL_BODY_BYTES = 64 * 1024
TOO_SLOW_REASON = "TooSlow"  # a body not read whole in BODY_READ_SECONDS: answered 408
# A JSON body decodes to about 13x its size in Python objects: one event past this would take the exporter (256Mi)
# over its limit, and its restart would reset every namespace's counters. A class-rate response is far smaller.
MAX_EVENT_BYTES = 4 * 1024 * 1024
# Bodies read at once: each may hold MAX_EVENT_BYTES until it is whole, and aiohttp has no timeout on a body, so
# slow senders (60 connections each a byte short of 4 MiB took 283 MiB) would otherwise grow memory without bound.
# A connection waiting for a slot has only aiohttp's read buffer (~128 KiB) filled; it waits BODY_WAIT_SECONDS at
# most (then 503), and a read holds its slot BODY_READ_SECONDS at most (a 4 MiB body in a cluster takes
# milliseconds), so that slow senders cannot keep the slots from everyone else for good.
BODY_READ_SLOTS = 8
BODY_WAIT_SECONDS = 5.0
BODY_READ_SECONDS = 10.0
# Kept attributes of pending requests, in UTF-8: 10,000 requests of 7 labels of 253 4-byte characters are ~70 MiB
# (~80 MiB of Python objects) without it. A request past either bound evicts the oldest.
MAX_PENDING_BYTES = 8 * 1024 * 1024
# A response delivered again (CloudEvents delivery is at least once: a Knative broker retries one answered late or
# 5xx after it was counted) is answered 202 and counted as a duplicate, not as predictions, while its id is remembered:
# for COUNTED_ID_SECONDS (a broker's retries with backoff end within minutes), at most MAX_COUNTED_IDS of them (the
# oldest go first). Each is kept as a 16-byte digest, whatever the id's length: ~10 MiB at the bound.
# The digest covers the body and the model identity too: KServe's agent takes the id from the client's own Ce-Id header
# when it sends one, so two predictions may share an id; a redelivery repeats the event byte for byte.
DUPLICATE_OUTCOME = "duplicate"
COUNTED_ID_SECONDS = 600.0
MAX_COUNTED_IDS = 65_536
DROP_WARNING_SECONDS = 600.0  # a drop reason is logged once in this long: a flood of drops is not a flood of lines
# A model identity silent this long gives up its place when a bound is reached: well above the longest analysis
# window, and its history stays in Prometheus (a series that comes back starts from 0, a counter reset).
MODEL_IDLE_SECONDS = 24 * 3600.0
# Prediction series in all (each identity times its inference service's classes, and its unreadable series). One
# renders in about 1 KiB of /metrics at the longest labels, 4 KiB when their characters take 4 bytes in UTF-8, and a
# render holds the text about twice (see render()): at most ~50 MiB at any label content, within the exporter's 256Mi.
MAX_TOTAL_SERIES = 6_144


def namespace_share(total_series: int) -> int:
    """One namespace's share of the series: a team's flood of versions or classes leaves room for three others."""
    return max(1, total_series // 4)


MAX_NAMESPACE_SERIES = namespace_share(MAX_TOTAL_SERIES)
# Model identities of one inference service counted at once in its namespace across two back-to-back rollouts: stable,
# then each rollout's canary and its version promoted to stable (2 per rollout). An identity keeps its place until idle
# for MODEL_IDLE_SECONDS, so a second rollout within 24 h of a promotion finds the first's 3 still there; 3 held only
# the first (review s30r2b LOW 3). Each has a series per class. A third rollout the same day waits for the first's to
# idle: bounded memory has to stop somewhere, and a canary left uncounted is inconclusive, never a pass.
ROLLOUT_IDENTITIES = 5


LIST_EACH_CLASS_ONCE = "list each class once, in the model's output order"


def class_names_problem(class_names: tuple[str, ...]) -> str | None:
    """Why --class-names cannot be the model's classes in its output order, or None: an empty entry dropped would
    shift every later index (a model's class 1 counted as class 2), a repeated one would merge two classes."""
    first_at: dict[str, int] = {}
    for entry, name in enumerate(class_names, start=1):
        if not name.strip():
            return f"entry {entry} is empty (or only whitespace): {LIST_EACH_CLASS_ONCE}"
        if name in first_at:
            return f"entry {entry} ({name[:64]!r}) repeats entry {first_at[name]}: {LIST_EACH_CLASS_ONCE}"
        first_at[name] = entry
    return None


def class_budget_problem(class_names: tuple[str, ...], max_total_series: int,
                         max_namespace_series: int | None) -> str | None:
    """Why the series bounds cannot hold two back-to-back rollouts' identities with a series for each configured
    class and one for unreadable answers (the second's canary or promoted version would be refused as TooManySeries
    until the first's versions idle for a day, and a larger class list's for good), or None."""
    needed = ROLLOUT_IDENTITIES * (len(set(class_names)) + 1)
    share = namespace_share(max_total_series) if max_namespace_series is None else max_namespace_series
    if needed <= share:
        return None
    how = (f"--max-namespace-series (unset: a quarter of --max-series {max_total_series}) is {share}: set --max-series "
           f"to at least {needed * 4}, or --max-namespace-series to at least {needed} and --max-series to at least "
           f"{max(needed, max_total_series)}" if max_namespace_series is None else
           f"--max-namespace-series is {share}: set it to at least {needed} (and --max-series to at least "
           f"{max(needed, max_total_series)})")
    return (f"--class-names lists {len(set(class_names))} classes: two back-to-back rollouts' {ROLLOUT_IDENTITIES} "
            "model versions (stable, each canary and each promoted one, kept until idle for 24 h) need a series per "
            f"class and one for unreadable answers, {needed} in one namespace, but {how} "
            "(chart: exporter.maxSeries, exporter.maxNamespaceSeries). Memory grows with them: raise the exporter's "
            f"memory limit too (256Mi holds {MAX_TOTAL_SERIES} series).")


RENDER_CHUNK = 1024  # series rendered into text at a time (see render())
Identity = tuple[str, str, str, str]  # namespace, inference service, variant, model version
# The judges compare model versions of one inference service only: classes are shared, and made at 0, within one.
Service = tuple[str, str]  # namespace, inference service
PREDICTION_LABELS = ("namespace", "inference_service", "variant", "model_version", "class")
UNREADABLE_LABELS = PREDICTION_LABELS[:4]  # an identity
# A series /metrics has shown: its sample's name, then its label values (PREDICTION_LABELS or UNREADABLE_LABELS).
Shown = tuple[str, ...]
SHOWN_LABELS = {f"{PREDICTIONS_METRIC}_total": PREDICTION_LABELS, f"{UNREADABLE_METRIC}_total": UNREADABLE_LABELS}
# A pending request: ce-source and ce-id (as CloudEvents identifies an event), then its namespace and component. The id
# alone is no key: KServe's agent takes it from the client's own Ce-Id header, which two teams may share.
PendingKey = tuple[str, str, str, str]
T = TypeVar("T")
# Runs a decoding step: in the calling thread, or (the server) in a worker thread, so that a 4 MiB event's seconds of
# decoding do not hold the event loop, /metrics with it.
Runner = Callable[..., Awaitable[Any]]


def _pending_key(event: CloudEvent) -> PendingKey:
    attributes = event.attributes
    return (attributes.get("source", ""), event.id, attributes.get("namespace", ""), attributes.get("component", ""))


def _answer_digest(body: bytes, max_bytes: int) -> bytes:
    return _digest(inflated(body, max_bytes))


def _digest(*parts: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:  # each length first: no two lists of parts hash the same bytes
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


async def _inline(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return function(*args, **kwargs)


def _finished(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (every step run _inline)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("an inline coroutine suspended")


@dataclass
class ExporterMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.predictions = Counter(
            PREDICTIONS_METRIC, "Predictions by predicted class, per served model and variant.",
            PREDICTION_LABELS, registry=self.registry)
        self.unreadable = Counter(
            UNREADABLE_METRIC, "Answers no class could be read from (a NaN score, an unknown label, a bad tensor), per "
            "served model and variant; the reason is in modelrollout_exporter_malformed_events_total.",
            UNREADABLE_LABELS, registry=self.registry)
        self.events = Counter("modelrollout_exporter_events", "Logger events received, by outcome.",
                              ["outcome"], registry=self.registry)
        self.malformed = Counter("modelrollout_exporter_malformed_events", "Events dropped, by reason.",
                                 ["reason"], registry=self.registry)


@dataclass
class _Families:
    """Metric families already collected, for generate_latest to render."""

    families: list[Metric]

    def collect(self) -> list[Metric]:
        return self.families


class PredictionExporter:
    """Counts predictions; a malformed event is counted and dropped, never raised."""

    def __init__(self, options: DecodeOptions | None = None, max_classes: int = 64,
                 max_pending_requests: int = 10_000, pending_seconds: float = 60.0,
                 max_models: int = 200, max_namespaces: int = 100, max_total_models: int = 1_000,
                 model_idle_seconds: float = MODEL_IDLE_SECONDS, clock: Callable[[], float] = time.monotonic,
                 max_event_bytes: int = MAX_EVENT_BYTES, max_total_series: int = MAX_TOTAL_SERIES,
                 max_namespace_series: int = MAX_NAMESPACE_SERIES, max_pending_bytes: int = MAX_PENDING_BYTES,
                 body_read_slots: int = BODY_READ_SLOTS, body_wait_seconds: float = BODY_WAIT_SECONDS,
                 body_read_seconds: float = BODY_READ_SECONDS, max_counted_ids: int = MAX_COUNTED_IDS,
                 counted_id_seconds: float = COUNTED_ID_SECONDS) -> None:
        self.options = options or DecodeOptions()
        self.max_event_bytes = max_event_bytes
        self.metrics = ExporterMetrics()
        # Every bound is per namespace (and namespaces are bounded too): one team's flood of classes or
        # model versions cannot crowd out another team's series. The totals stay bounded as well (model identities,
        # and the prediction series /metrics renders), so the exporter's memory has a ceiling whatever senders
        # claim. The model and series bounds are on identities counted lately, not a lifetime quota: a bound
        # reached first evicts those idle longer than model_idle_seconds, with their series, else every
        # service's 201st version would go uncounted for good.
        self.max_classes = max_classes  # per inference service
        self._known_classes: dict[Service, set[str]] = {}
        self._seen: dict[str, OrderedDict[Identity, float]] = {}  # last counted at, least recent first
        self._max_models = max_models
        self._max_namespaces = max_namespaces
        self._max_total_models = max_total_models
        self._max_total_series = max_total_series
        self._max_namespace_series = max_namespace_series
        self._model_idle_seconds = model_idle_seconds
        # Prediction series /metrics has shown: one it has not is shown at 0 whatever it counted (see render()).
        # Bounded like the series, and forgotten with them.
        self._scraped: set[Shown] = set()
        # Requests' attributes (never their payloads) kept briefly so that a response without identity headers
        # can borrow its request's; a response that never comes must not keep its request forever.
        self._requests: OrderedDict[PendingKey, tuple[float, CloudEvent, int]] = OrderedDict()  # and its kept bytes
        self._pending_ids: dict[tuple[str, str], set[PendingKey]] = {}  # by source and id: what a response may take
        self._max_pending = max_pending_requests
        self._pending_bytes = 0
        self._max_pending_bytes = max_pending_bytes
        self._pending_seconds = pending_seconds
        # Responses counted lately, by digest (identity, source, id, body): bounded and expired like `_requests`.
        self._counted: OrderedDict[bytes, float] = OrderedDict()
        self._max_counted = max_counted_ids
        self._counted_seconds = counted_id_seconds
        self._body_read_slots = body_read_slots
        self._body_wait_seconds = body_wait_seconds
        self._body_read_seconds = body_read_seconds
        self._clock = clock
        self._warned: dict[str, float] = {}  # drop reason: when it was last logged

    def handle(self, headers: dict[str, str], body: bytes, query: str) -> str:
        """Decodes and counts the event in this thread."""
        return _finished(self.handle_with(_inline, headers, body, query))

    async def handle_with(self, run: Runner, headers: dict[str, str], body: bytes, query: str) -> str:
        """`run` runs the decoding steps (pure); the counting stays in the caller's thread (the event loop)."""
        try:
            return await self._count(run, headers, body, query)
        except MalformedEvent as exc:
            reason = exc.reason
            log.debug("dropped event: %s", exc)
        except Exception as exc:  # one event must never take the exporter down; its message may quote the payload
            reason = INTERNAL_REASON
            log.error("dropped event: unexpected %s", type(exc).__name__)
        return self._dropped(reason)

    def _dropped(self, reason: str) -> str:
        self.metrics.events.labels("malformed").inc()
        self._lost(reason)
        return "malformed"

    def _lost(self, reason: str, count: int = 1) -> None:
        """An event, or rows of a counted one (as many as `count`), dropped for this reason."""
        self.metrics.malformed.labels(reason).inc(count)
        # Else a drop is seen only in the counter. The reason alone: an event's detail may quote its payload.
        now = self._clock()
        if now - self._warned.get(reason, -DROP_WARNING_SECONDS) >= DROP_WARNING_SECONDS:
            self._warned[reason] = now
            log.warning("dropped an event (or rows of one) as %s%s (counted in "
                        "modelrollout_exporter_malformed_events_total; the next for this reason are not logged for %d "
                        "minutes)", reason, DROP_HINTS.get(reason, ""), DROP_WARNING_SECONDS // 60)

    async def _count(self, run: Runner, headers: dict[str, str], body: bytes, query: str) -> str:
        event: CloudEvent = await run(parse_cloudevent, headers, body, max_bytes=self.max_event_bytes)
        # Of the answer as the model server wrote it: a redelivery compressed anew (or not) is the same answer.
        body_digest: bytes = await run(_answer_digest, body, self.max_event_bytes) \
            if event.type in RESPONSE_TYPES else b""
        if event.type in REQUEST_TYPES:
            self._remember(event)
            self.metrics.events.labels("request").inc()
            return "request"
        if event.type in IGNORED_TYPES:
            self.metrics.events.labels("ignored").inc()
            return "ignored"
        if event.type not in RESPONSE_TYPES:
            raise MalformedEvent("UnknownEventType", f"event type {event.type[:80]!r}")
        request = self._request_of(event)
        prediction: Prediction = await run(prediction_from_event, event, query, self.options, request)
        identity = prediction.identity
        service = identity[:2]
        # As CloudEvents identifies an event (source and id), within the identity its sender reports, and its bytes.
        delivered = _digest(json.dumps([*identity, event.attributes.get("source", ""), event.id]).encode(),
                            body_digest)
        if self._already_counted(delivered):
            self.metrics.events.labels(DUPLICATE_OUTCOME).inc()
            return DUPLICATE_OUTCOME
        if self._admit(identity):
            # Every class its service has seen, and its unreadable answers, at zero: its first prediction of one then
            # shows at the next scrape, not one later (a new series is first shown at 0, see render()).
            for name in self._classes(service):
                self.metrics.predictions.labels(*identity, name)
            self.metrics.unreadable.labels(*identity)
        if not prediction.classes and prediction.unread:
            # No row read (prediction_from_event returned it for its unreadable ones): counted against its model
            # version, remembered as counted so that a redelivery counts it once, and dropped as before.
            self.metrics.unreadable.labels(*identity).inc(prediction.unreadable)
            self._remember_counted(delivered)
            return self._dropped(prediction.unread[0])
        # One increment per class, not per prediction: a large batch must not hold the event loop for seconds.
        # Every class is placed before any is counted: an event refused for one (TooManySeries) counts nothing.
        named = [(self._bounded_class(service, predicted), n)
                 for predicted, n in Tally(prediction.classes).items()]
        for name, n in named:
            self.metrics.predictions.labels(*identity, name).inc(n)
        if prediction.unreadable:
            self.metrics.unreadable.labels(*identity).inc(prediction.unreadable)
        self._remember_counted(delivered)  # only once counted: a refused event's retry may still count
        self.metrics.events.labels("counted").inc()
        # Each row not read is dropped alone (the golden gate loses only that sample), counted by its reason.
        for reason, n in Tally(prediction.unread).items():
            self._lost(reason, n)
        return "counted"

    def _already_counted(self, delivered: bytes) -> bool:
        now = self._clock()
        while self._counted and next(iter(self._counted.values())) < now - self._counted_seconds:
            self._counted.popitem(last=False)
        return delivered in self._counted

    def _remember_counted(self, delivered: bytes) -> None:
        self._counted[delivered] = self._clock()
        self._counted.move_to_end(delivered)
        while len(self._counted) > self._max_counted:
            self._counted.popitem(last=False)

    def _classes(self, service: Service) -> set[str]:
        return self._known_classes.setdefault(service, set(self.options.class_names))

    def _identities(self, service: Service) -> list[Identity]:
        return [identity for identity in self._seen.get(service[0], ()) if identity[1] == service[1]]

    def _bounded_class(self, service: Service, name: str) -> str:
        # A model that emits free text must not explode the series count.
        known = self._classes(service)
        if name in known:
            return name
        if len(known) >= self.max_classes:
            name = OTHER_CLASS  # kept in `known` once used: past the cap, it takes no class's place
            if name in known:
                return name
        # A series for each of the service's model identities. Past the bound on them the event is refused, where
        # the malformed counter shows it, not counted as __other__.
        refused = self._series_refusal(service[0], len(self._identities(service)))
        if refused is not None:
            self._evict_idle(self._clock())
            refused = self._series_refusal(service[0], len(self._identities(service)))
            if refused is not None:
                raise refused
        known.add(name)
        # A class one model version predicts first (stable's, usually) is created at zero for the others too.
        for identity in self._identities(service):
            self.metrics.predictions.labels(*identity, name)
        return name

    def _admit(self, identity: Identity) -> bool:
        """Whether the identity is new; it is now the most recently counted. Refused past a bound."""
        # Identity labels come from callers: a bound on them bounds the series count.
        now = self._clock()
        namespace = identity[0]
        seen = self._seen.get(namespace)
        if seen is not None and identity in seen:
            seen[identity] = now
            seen.move_to_end(identity)
            return False
        refused = self._refusal(identity)
        if refused is not None:
            self._evict_idle(now)
            refused = self._refusal(identity)
            if refused is not None:
                raise refused
        self._seen.setdefault(namespace, OrderedDict())[identity] = now
        return True

    def _refusal(self, identity: Identity) -> MalformedEvent | None:
        namespace = identity[0]
        seen = self._seen.get(namespace)
        if seen is None and len(self._seen) >= self._max_namespaces:
            return MalformedEvent("TooManyNamespaces", f"already counting {self._max_namespaces} namespaces")
        if seen is not None and len(seen) >= self._max_models:
            return MalformedEvent("TooManyModels", f"already counting {self._max_models} model versions in "
                                                   f"namespace {namespace[:63]!r}")
        if sum(len(models) for models in self._seen.values()) >= self._max_total_models:
            return MalformedEvent("TooManyModels", f"already counting {self._max_total_models} model versions")
        # A new identity gets a series for each class its service has seen, and one for its unreadable answers.
        return self._series_refusal(namespace, self._width(identity[:2]) + 1)

    def _width(self, service: Service) -> int:
        """Classes the service has seen: a series for each of its identities."""
        known = self._known_classes.get(service)
        return len(known) if known is not None else len(set(self.options.class_names))

    def _series(self, namespace: str | None = None) -> int:
        """Prediction series in all (or in one namespace): every identity has one for each class its inference
        service has seen, and one for its unreadable answers."""
        return sum(self._width(identity[:2]) + 1 for name, seen in self._seen.items()
                   if namespace is None or name == namespace for identity in seen)

    def _series_refusal(self, namespace: str, more: int) -> MalformedEvent | None:
        """TooManySeries when `more` series would pass the namespace's share or the total."""
        if self._series(namespace) + more > self._max_namespace_series:
            return MalformedEvent("TooManySeries", f"already counting {self._max_namespace_series} prediction "
                                                   f"series in namespace {namespace[:63]!r}")
        if self._series() + more > self._max_total_series:
            return MalformedEvent("TooManySeries", f"already counting {self._max_total_series} prediction series")
        return None

    def _evict_idle(self, now: float) -> None:
        # Their series go too, so that /metrics stays as bounded as the identities; Prometheus keeps the history.
        for namespace, seen in list(self._seen.items()):
            while seen and next(iter(seen.values())) < now - self._model_idle_seconds:
                identity, _ = seen.popitem(last=False)
                service = identity[:2]
                for name in {*self.options.class_names, *self._known_classes.get(service, ()), OTHER_CLASS}:
                    self.metrics.predictions.remove(*identity, name)
                    # One that comes back is shown at 0 first again.
                    self._scraped.discard((f"{PREDICTIONS_METRIC}_total", *identity, name))
                self.metrics.unreadable.remove(*identity)
                self._scraped.discard((f"{UNREADABLE_METRIC}_total", *identity))
                if not any(other[1] == service[1] for other in seen):  # the service's class budget is free again
                    self._known_classes.pop(service, None)
            if not seen:  # the namespace's place is free again
                del self._seen[namespace]

    def _remember(self, event: CloudEvent) -> None:
        # Only what a response may borrow is kept, each value checked like a label: the bound on pending
        # requests is then a bound on their memory too.
        check_label("event id", event.id)
        attributes = {k: event.attributes[k] for k in IDENTITY_ATTRIBUTES if k in event.attributes}
        for name, value in attributes.items():
            check_label(f"{name} attribute", value)
        key = _pending_key(event)
        # The source is kept in the key, unchecked (it is no label): its bytes count, whatever its characters.
        size = (sum(len(value.encode()) for value in (event.id, *attributes.values()))
                + len(key[0].encode("utf-8", "surrogatepass")))
        now = self._clock()
        self._forget_request(key)  # a repeated request moves to the back with its new time
        self._requests[key] = (now, dataclasses.replace(event, attributes=attributes, data=None), size)
        self._pending_ids.setdefault(key[:2], set()).add(key)
        self._pending_bytes += size
        while self._requests and (len(self._requests) > self._max_pending
                                  or self._pending_bytes > self._max_pending_bytes
                                  or next(iter(self._requests.values()))[0] < now - self._pending_seconds):
            self._forget_request(next(iter(self._requests)))

    def _forget_request(self, key: PendingKey) -> CloudEvent | None:
        """The pending request of that key, no longer pending."""
        pending = self._requests.pop(key, None)
        if pending is None:
            return None
        same_id = self._pending_ids[key[:2]]
        same_id.discard(key)
        if not same_id:
            del self._pending_ids[key[:2]]
        self._pending_bytes -= pending[2]
        return pending[1]

    def _request_of(self, response: CloudEvent) -> CloudEvent | None:
        """The pending request a response pairs with (same source and id), no longer pending; None when none is
        known for sure."""
        source, event_id, namespace, component = _pending_key(response)
        if component and component != "predictor":  # a transformer's or explainer's: never its predictor's request
            return self._forget_request((source, event_id, namespace, component))
        keys = list(self._pending_ids.get((source, event_id), ()))
        if namespace:  # its own namespace's, else one that named none
            keys = [key for key in keys if key[2] == namespace] or [key for key in keys if not key[2]]
        keys = [key for key in keys if key[3] in ("", "predictor")] or keys
        if not keys or len({key[2] for key in keys}) > 1:
            # Requests of several namespaces share this id (a client-chosen one): borrowing would guess which team's
            # prediction this is. Without its own identity headers the response is dropped as MissingIdentity.
            return None
        return self._forget_request(max(keys, key=lambda key: self._requests[key][0]))

    def render(self) -> bytes:
        return self.render_holding()[0]

    def render_holding(self) -> tuple[bytes, bool]:
        """The /metrics exposition, in which a prediction series shows 0 on the first scrape that sees it, and
        whether it held any series' counts back so.

        increase() and rate() never count a series' first sample: a series first scraped at n would lose its
        first n predictions (a canary's first `nsfw`, exactly what the judges measure). Its counts are held back
        one scrape, never lost: the registry keeps them, and the next render shows them. A render that fails
        marks nothing; two renders at once both show 0. Another Prometheus scraping the same exporter (an HA
        pair) may still see a series first at n, after this one's scrape showed it at 0.
        """
        shown: set[Shown] = set()
        held_back = False

        def first_at_zero(family: Metric) -> list[Sample]:
            nonlocal held_back
            held = []
            for sample in family.samples:
                if sample.name == f"{family.name}_created":  # a time per series: twice the text, read by no judge
                    continue
                if (labels := SHOWN_LABELS.get(sample.name)) is not None:
                    series = (sample.name, *(sample.labels[n] for n in labels))
                    shown.add(series)
                    if series not in self._scraped:
                        held_back = held_back or sample.value > 0
                        sample = sample._replace(value=0.0)
                held.append(sample)
            return held

        parts: list[bytes] = []
        for family in self.metrics.registry.collect():
            samples = first_at_zero(family)
            # A chunk at a time: one string of every series would take 4 bytes a character from one emoji on.
            for start in range(0, max(len(samples), 1), RENDER_CHUNK):
                chunk = copy.copy(family)  # the registry's own families are left as they are
                chunk.samples = samples[start:start + RENDER_CHUNK]
                text = generate_latest(_Families([chunk]))
                parts.append(text.split(b"\n", 2)[2] if start else text)  # its HELP and TYPE lines once
        body = b"".join(parts)
        # After the render, with no await in between: no event or other scrape runs in the event loop meanwhile.
        self._scraped |= shown
        return body, held_back

    def app(self, drain: Drain | None = None) -> web.Application:
        """drain: the one serve() waits for after SIGTERM (None: no drain), which /readyz and /metrics report to."""
        drain = drain or Drain()
        reading = asyncio.Semaphore(self._body_read_slots)  # this app's event loop's
        # Events that may take seconds to decode are decoded in a worker thread, one at a time as on the event loop
        # before (a 4 MiB body is up to ~90 MiB of Python objects); a small one, on the event loop, waits for none.
        decoding = asyncio.Semaphore(1)

        async def slot_taken() -> bool:
            try:
                async with asyncio.timeout(self._body_wait_seconds):
                    await reading.acquire()
            except TimeoutError:
                return False
            return True

        def busy() -> web.Response:
            return web.json_response({"outcome": self._dropped(BUSY_REASON)}, status=503)

        async def read(request: web.Request) -> bytes | web.Response:
            try:
                async with asyncio.timeout(self._body_read_seconds):
                    return await request.read()
            except web.HTTPRequestEntityTooLarge:
                return web.json_response({"outcome": self._dropped(TOO_LARGE_REASON)}, status=413)
            except TimeoutError:
                return web.json_response({"outcome": self._dropped(TOO_SLOW_REASON)}, status=408)

        async def receive(request: web.Request) -> web.Response:
            if drain.drained:  # the last counts have been scraped: one counted now would die with the pod
                response = web.json_response({"outcome": "draining"}, status=503)
            else:
                drain.event_started()
                try:
                    response = await count(request)
                finally:
                    drain.event_ended()
            if drain.draining:
                response.force_close()  # a sender keeping it open reconnects through the Service, to a ready pod
            return response

        async def count(request: web.Request) -> web.Response:
            headers = dict(request.headers)
            if payload_unused(headers):
                # Drained unread, as sent (never inflated: see connections.serve): a request's image or tensor
                # may pass any size limit, but not any time.
                try:
                    async with asyncio.timeout(self._body_read_seconds):
                        await request.release()
                except TimeoutError:
                    return web.json_response({"outcome": self._dropped(TOO_SLOW_REASON)}, status=408)
                outcome = self.handle(headers, b"", request.query_string)
                return web.json_response({"outcome": outcome}, status=202 if outcome != "malformed" else 400)
            # A small body takes no slot: it costs no more than the read buffer a waiting connection holds anyway,
            # and slow senders holding every slot must not stop other teams' ordinary events.
            encoded = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower() not in ("", "identity")
            small = (not encoded and request.content_length is not None
                     and request.content_length <= SMALL_BODY_BYTES)
            held = False
            try:
                if not small:
                    if not await slot_taken():
                        return busy()
                    held = True
                body_or_answer = await read(request)
                if isinstance(body_or_answer, web.Response):
                    return body_or_answer
                body = body_or_answer
                if len(body) > SMALL_BODY_BYTES or may_inflate(headers, body):
                    # Decoded in a worker thread, one at a time. The body keeps (or takes) a read slot until then,
                    # so no more bodies than slots wait in memory for their turn, and the rest are answered Busy.
                    if not held:
                        if not await slot_taken():
                            return busy()
                        held = True
                    async with decoding:
                        outcome = await self.handle_with(asyncio.to_thread, headers, body, request.query_string)
                else:
                    outcome = self.handle(headers, body, request.query_string)
            finally:
                if held:
                    reading.release()
            return web.json_response({"outcome": outcome}, status=202 if outcome != "malformed" else 400)

        async def metrics(request: web.Request) -> web.Response:
            rendered_at, quiet = drain.now(), drain.quiet()
            body, held_back = self.render_holding()
            response = web.Response(body=body)
            response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            await response.prepare(request)
            await response.write_eof()  # written whole before a drain may end on it
            drain.scrape_answered(rendered_at, complete=quiet and not held_back)
            return response

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            # Liveness stays on /healthz: a draining exporter is alive, and must not be restarted.
            return web.Response(status=503, text="draining") if drain.draining else web.Response(text="ok")

        app = web.Application(client_max_size=self.max_event_bytes)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_post("/{tail:.*}", receive)
        return app


def run(host: str, port: int, options: DecodeOptions, *, max_total_series: int = MAX_TOTAL_SERIES,
        max_namespace_series: int | None = None, max_pending_bytes: int = MAX_PENDING_BYTES,
        body_read_slots: int = BODY_READ_SLOTS, max_connections: int = MAX_CONNECTIONS,
        drain_seconds: float = 0.0) -> None:
    """max_namespace_series None: namespace_share(max_total_series). Serves until SIGTERM or SIGINT, then drains for
    at most drain_seconds (see Drain)."""
    if (listed := class_names_problem(options.class_names)) is not None:
        raise SystemExit(f"error: --class-names: {listed}")
    problem = class_budget_problem(options.class_names, max_total_series, max_namespace_series)
    if problem is not None:  # refused now: counting stable alone and dropping every canary would look like it works
        raise SystemExit(f"error: {problem}")
    if not options.class_names:
        log.warning("no --class-names: an output that is a class index or a row of scores names no class, and its "
                    "events are dropped as NoClassNames (integer labels are indexes: list the classes, e.g. 0,1)")
    if max_namespace_series is None:
        max_namespace_series = namespace_share(max_total_series)
    exporter = PredictionExporter(options, max_total_series=max_total_series, max_namespace_series=max_namespace_series,
                                  max_pending_bytes=max_pending_bytes, body_read_slots=body_read_slots)
    # Not web.run_app: its connections are unbounded in number, header size and header time (see connections.py).
    drain = Drain(drain_seconds)
    run_server(exporter.app(drain), host, port, max_connections=max_connections, drain=drain)
