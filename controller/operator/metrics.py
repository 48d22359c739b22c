"""The operator's Prometheus metrics, served on /metrics.

deploy/monitoring (alerts, recording rules, dashboard) queries these names and labels:

| series | type | labels |
| --- | --- | --- |
| modelrollout_rollouts | gauge: rollouts per phase | phase |
| modelrollout_canary_weight | gauge: share of traffic on the candidate, as observed | namespace, rollout |
| modelrollout_rollbacks_total | counter: rollbacks started | namespace, rollout |
| modelrollout_time_to_recover_seconds | histogram: failing verdict -> traffic and alias back | - |
| modelrollout_verdicts_total | counter: verdicts | namespace, rollout, metric, result (pass, fail, inconclusive) |
| modelrollout_steps_total | counter: canary steps entered | namespace, rollout |
| modelrollout_reconcile_errors_total | counter: reconciles that raised | - |
| modelrollout_status_writes_refused_total | counter: status writes the API server refused as too large or invalid | - |
| modelrollout_events_total | counter: Events posted | reason |
| modelrollout_actions_total | counter: actions handed to the adapters | type |
| modelrollout_reconcile_duration_seconds | histogram | - |
| modelrollout_kube_api_last_success_timestamp_seconds | gauge: last call that went through (0: none yet) | - |
| modelrollout_kube_api_failures_total | counter: calls that could not use the API server | kind (API_FAILURE_KINDS) |

Everything is derived from the status a reconcile wrote, never from the operator's own guesses, and each
fact is counted once: a verdict is keyed by the time its run finished (`analysis.lastRunAt`,
`gate.completedAt`), a rollback by the time of its verdict (`rollback.verdictAt`), a step entered by the
number of its history entry (`seq`); Events are counted as they are posted (controller.operator.events). The
status of a rollout seen for the first time since the process started is a baseline, not news: a restart
must not count again what the previous process already counted (that would look like a fresh rollback to
`increase()`). Series with labels exist at 0 before their first event, so `increase()` sees it.

The API server's health is the exception: it is what the operator's own calls met (kubeapi.BoundedApiClient tells
each one's outcome), shown on /metrics and on the liveness endpoint (kube_api_health), which stays 200 through an
outage: a restart would not bring the API server back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from controller.api.status import Phase
from controller.cli.shape import mapping, objects
from controller.operator.kubeapi import API_FAILURE_KINDS
from controller.verdict import Outcome

log = logging.getLogger(__name__)

GATE_METRIC = "golden-gate"  # the gate's combined verdict, one per gate run
RESULTS = tuple(str(outcome) for outcome in Outcome)
# The history events that enter a canary step: a weight in place, an analysis step begun, a pause step begun.
# Several steps can pass within one reconcile, so steps are counted from these, not from status.currentStep.
STEP_EVENTS = frozenset({"WeightChanged", "AnalysisStarted", "Paused"})
# From a rollback that is over in a second (the engine acts within one reconcile) to one waiting on a
# serving controller for many minutes.
RECOVERY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class _Seen:
    """What has been counted for one rollout; only the latest key of each kind is needed."""

    phase: str = str(Phase.PENDING)
    gate: str | None = None
    analysis_run: str | None = None
    rollback: str | None = None  # verdictAt of the last counted rollback
    recovered: str | None = None  # verdictAt of the last rollback whose recovery time was observed
    history_seq: int = 0  # seq of the newest history entry counted
    metric_names: tuple[str, ...] = ()  # the analysis metrics its spec names: their verdict series


def _keys(status: Any) -> _Seen:
    """The keys of what a status records: the facts the counters count.

    The CRD leaves rollback, pause, actions... free-form, and a status edited by hand is still observed (with
    Ready False StatusUnreadable): a field of the wrong type counts as empty.
    """
    status = mapping(status)
    seen = _Seen(phase=str(status.get("phase") or Phase.PENDING))
    gate = mapping(status.get("gate"))
    if gate.get("completedAt") and gate.get("outcome"):
        seen.gate = f"{gate.get('requestId')}@{gate['completedAt']}"
    analysis = mapping(status.get("analysis"))
    if analysis.get("lastRunAt"):
        seen.analysis_run = f"{analysis.get('mode')}/{analysis.get('windowStart')}@{analysis['lastRunAt']}"
    seen.history_seq = max((seq for seq, _entry in _numbered(status)), default=0)
    rollback = mapping(status.get("rollback"))
    if rollback.get("verdictAt"):
        seen.rollback = str(rollback["verdictAt"])
        if isinstance(rollback.get("timeToRecoverSeconds"), int | float):
            seen.recovered = seen.rollback
    return seen


def _numbered(status: Any) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for entry in objects(mapping(status).get("history")):
        if isinstance(entry.get("seq"), int):
            yield entry["seq"], entry


class OperatorMetrics:
    """The operator's registry; `observe()` after each reconcile whose status is in the API server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rollouts = Gauge("modelrollout_rollouts", "ModelRollouts by phase (as last written by this operator).",
                              ["phase"], registry=r)
        self.canary_weight = Gauge("modelrollout_canary_weight",
                                   "Percent of traffic on the candidate, as observed on the serving system.",
                                   ["namespace", "rollout"], registry=r)
        self.rollbacks = Counter("modelrollout_rollbacks", "Rollbacks started, whatever the cause.",
                                 ["namespace", "rollout"], registry=r)
        self.time_to_recover = Histogram(
            "modelrollout_time_to_recover_seconds",
            "From the failing verdict (or rollback command) to traffic and stable alias verified back.",
            buckets=RECOVERY_BUCKETS, registry=r)
        # Per rollout: rollouts share metric names, and one's passing verdicts must not hide another's.
        self.verdicts = Counter("modelrollout_verdicts",
                                "Judge verdicts by rollout and analysis metric (or golden-gate).",
                                ["namespace", "rollout", "metric", "result"], registry=r)
        self.steps = Counter("modelrollout_steps", "Canary steps entered.", ["namespace", "rollout"], registry=r)
        self.reconcile_errors = Counter("modelrollout_reconcile_errors",
                                        "Reconciles that failed with an error (retried with backoff).", registry=r)
        # Not reconcile errors: the rollout says why (Ready False, StatusRejected) and is decided again later.
        self.status_writes_refused = Counter(
            "modelrollout_status_writes_refused",
            "Status writes the API server refused for what they hold (too large, invalid); the status kept says so.",
            registry=r)
        self.events = Counter("modelrollout_events", "History entries posted as Kubernetes Events (best effort).",
                              ["reason"], registry=r)
        self.actions = Counter("modelrollout_actions", "Actions handed to the adapters, by type.", ["type"],
                               registry=r)
        self.reconcile_duration = Histogram("modelrollout_reconcile_duration_seconds",
                                            "Time one reconcile took (read, decide and act, write status).",
                                            buckets=RECONCILE_BUCKETS, registry=r)
        # An operator up whose calls fail is told apart from an idle one (no calls) by the failures; an alert needs
        # both (deploy/monitoring/prometheusrule.yaml).
        self.kube_api_last_success = Gauge(
            "modelrollout_kube_api_last_success_timestamp_seconds",
            "When a call of the operator to the Kubernetes API server last went through (Unix time; 0: not yet).",
            registry=r)
        self.kube_api_failures = Counter(
            "modelrollout_kube_api_failures",
            "Calls of the operator that could not use the Kubernetes API server, by kind (connect, timeout, tls, "
            "5xx, 429, 401, other).", ["kind"], registry=r)
        for kind in API_FAILURE_KINDS:
            self.kube_api_failures.labels(kind)
        for phase in Phase:
            self.rollouts.labels(str(phase)).set(0)
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._api_lock = threading.Lock()  # apart: a call's outcome never waits for observe()
        self._api_last_success: float | None = None
        self._api_last_failure: tuple[float, str] | None = None
        self._api_failures_since_success = 0

    # --- the API server, as the operator's calls find it (kubeapi.ApiCallObserver) ----------------------

    def api_call_succeeded(self) -> None:
        with self._api_lock:  # set under the lock: a slower thread must not put an older time back
            self._api_last_success = time.time()
            self._api_failures_since_success = 0
            self.kube_api_last_success.set(self._api_last_success)

    def api_call_failed(self, kind: str) -> None:
        with self._api_lock:
            self._api_last_failure = (time.time(), kind)
            self._api_failures_since_success += 1
        self.kube_api_failures.labels(kind).inc()

    def kube_api_health(self, now: float | None = None) -> dict[str, Any]:
        """For the liveness endpoint: how long ago a call to the API server last went through (None: not yet), and
        the kind of the last failure and how long ago it was. Kinds and numbers only, never a URL or a message."""
        now = time.time() if now is None else now
        with self._api_lock:
            success, failure = self._api_last_success, self._api_last_failure
            failures = self._api_failures_since_success
        return {"lastSuccessAgeSeconds": None if success is None else round(max(now - success, 0.0), 1),
                "failuresSinceLastSuccess": failures,
                "lastFailure": None if failure is None else {"kind": failure[1],
                                                             "ageSeconds": round(max(now - failure[0], 0.0), 1)}}

    # --- per reconcile -------------------------------------------------------------------------------

    def count_actions(self, actions: Iterable[str]) -> None:
        """Actions as the runtime lists them, "Type:id"."""
        for action in actions:
            self.actions.labels(action.split(":", 1)[0]).inc()

    def baseline(self, obj: Mapping[str, Any]) -> None:
        """The rollout as just read, before the reconcile acts: the first time it is seen, its stored status is
        the baseline. Taken at once, so that what the reconcile stores is counted later even if it then fails."""
        with self._lock:
            self._baseline(_key(obj), obj)

    def observe(self, obj: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Count what `status` (now stored for `obj`) records that was not counted yet.

        `obj` is the rollout as read before the reconcile: the first time a rollout is seen, its stored
        status is the baseline.
        """
        key = _key(obj)
        status = mapping(status)
        judged = self._metric_names(obj)
        with self._lock:
            seen = self._baseline(key, obj)
            for name in judged:
                for result in RESULTS:
                    self.verdicts.labels(*key, name, result)
            now = _keys(status)
            self._count(key, seen, now, status, judged)
            seen.phase = now.phase
            # A renamed metric's series go as a deleted rollout's do (forget).
            renamed = set(seen.metric_names) - set(judged) - {GATE_METRIC}
            seen.metric_names = tuple(judged)
            self._drop_verdicts(key, renamed)
            self._set_phases()
        weight = status.get("canaryWeight")
        self.canary_weight.labels(*key).set(weight if isinstance(weight, int | float) else 0)

    def _baseline(self, key: tuple[str, str], obj: Mapping[str, Any]) -> _Seen:
        seen = self._seen.get(key)
        if seen is None:
            seen = _keys(obj.get("status"))
            self._seen[key] = seen
            # At 0 before the first event, so that increase() sees it.
            self.rollbacks.labels(*key)
            self.steps.labels(*key)
            for result in RESULTS:
                self.verdicts.labels(*key, GATE_METRIC, result)
        return seen

    def count_event(self, reason: str) -> None:
        """A history entry posted as a Kubernetes Event."""
        self.events.labels(reason).inc()

    def _count(self, key: tuple[str, str], seen: _Seen, now: _Seen, status: Mapping[str, Any],
               judged: list[str]) -> None:
        if now.gate and now.gate != seen.gate:
            outcome = str(mapping(status.get("gate")).get("outcome"))
            if outcome in RESULTS:
                self.verdicts.labels(*key, GATE_METRIC, outcome).inc()
            seen.gate = now.gate
        if now.analysis_run and now.analysis_run != seen.analysis_run:
            # A new run (lastRunAt) judged every metric of the spec; the status keeps the last verdict of each.
            for item in objects(mapping(status.get("analysis")).get("metrics")):
                outcome = str(item.get("outcome"))
                if item.get("name") in judged and outcome in RESULTS:
                    self.verdicts.labels(*key, str(item["name"]), outcome).inc()
            seen.analysis_run = now.analysis_run
        if now.history_seq < seen.history_seq:
            seen.history_seq = 0  # numbers went down: another object of the same name (its DELETED was missed)
        for seq, entry in _numbered(status):
            if seq > seen.history_seq and entry.get("event") in STEP_EVENTS:
                self.steps.labels(*key).inc()
        seen.history_seq = max(seen.history_seq, now.history_seq)
        if now.rollback and now.rollback != seen.rollback:
            self.rollbacks.labels(*key).inc()
            seen.rollback = now.rollback
        if now.recovered and now.recovered != seen.recovered:
            seconds = mapping(status.get("rollback")).get("timeToRecoverSeconds")
            self.time_to_recover.observe(max(float(seconds), 0.0))
            seen.recovered = now.recovered

    def forget(self, namespace: str, name: str) -> None:
        """The rollout is gone: its per-rollout series go too, and it no longer counts in a phase."""
        key = (namespace, name)
        with self._lock:
            gone = self._seen.pop(key, None)
            if gone is None:
                return
            self._set_phases()
            self._drop_verdicts(key, {*gone.metric_names, GATE_METRIC})
        for metric in (self.canary_weight, self.rollbacks, self.steps):
            with contextlib.suppress(KeyError):
                metric.remove(*key)

    def _drop_verdicts(self, key: tuple[str, str], names: set[str]) -> None:
        """The rollout's verdict series of these metric names go: names are user strings, and the registry would
        otherwise keep every name ever used. Called with the lock held."""
        for name in names:
            for result in RESULTS:
                with contextlib.suppress(KeyError):
                    self.verdicts.remove(*key, name, result)

    def _set_phases(self) -> None:
        counts = Tally(seen.phase for seen in self._seen.values())
        for phase in {str(p) for p in Phase} | set(counts):
            self.rollouts.labels(phase).set(counts.get(phase, 0))

    @staticmethod
    def _metric_names(obj: Mapping[str, Any]) -> list[str]:
        metrics = objects(mapping(mapping(obj.get("spec")).get("analysis")).get("metrics"))
        return [str(m["name"]) for m in metrics if m.get("name")]


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return str(meta["namespace"]), str(meta["name"])


def serve(metrics: OperatorMetrics, address: str, port: int) -> int | None:
    """Serve /metrics on a daemon thread; port 0 picks a free one. Returns the port, or None if it cannot bind.

    A metrics port that cannot be bound is logged, not fatal: rollouts and rollbacks must go on without
    metrics, and Prometheus' `up == 0` (ModelRolloutTargetDown) reports the missing target.
    """
    try:
        server, _thread = start_http_server(port, addr=address, registry=metrics.registry)
    except OSError as exc:
        log.error("cannot serve metrics on %s:%s: %s; running without /metrics", address, port, exc)
        return None
    bound = int(server.server_port)
    log.info("serving metrics on http://%s:%d/metrics", address, bound)
    return bound
