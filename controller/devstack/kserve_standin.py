"""A stand-in for KServe's controller on the local stack, where KServe and Knative cannot run.

It watches InferenceServices and writes their status the way KServe documents it (and its source does),
so the operator meets the behaviour it will meet on a cluster:

Knative (Serverless) mode
  - every change of the revision template (spec.predictor without canaryTrafficPercent, plus the
    object's labels and annotations, which KServe copies into the template) creates a revision
    <isvc>-predictor-0000N, as Knative does;
  - traffic is computed as KServe's ksvc reconciler does: with canaryTrafficPercent N and a rolled-out
    revision, the latest *ready* revision gets N% (tag `latest` when serving.kserve.io/enable-tag-routing
    is "true") and latestRolledoutRevision the rest (tag `prev`); without it the latest ready revision
    gets 100%;
  - latestRolledoutRevision / previousRolledoutRevision move as KServe's PropagateStatus moves them: a
    latest revision at 100% becomes rolled out and the old one becomes previous; canaryTrafficPercent < 100
    on an already rolled-out latest revision pins previousRolledoutRevision again ("rollback");
  - conditions PredictorConfigurationReady, PredictorRouteReady, PredictorReady, LatestDeploymentReady,
    RoutesReady, IngressReady, Ready; url, address, observedGeneration, deploymentMode, modelStatus.
Standard mode (spec.canary[], KServe after v0.20)
  - status.canaryStatuses[{name, ready, trafficPercent}] and the CanaryPredictorReady condition; a canary
    that is not ready gets no traffic (KServe gates canary traffic on readiness).
  - IngressReady True (KServe's raw-deployment controller: its Ingress/HTTPRoute is programmed, or none is made),
    or False as a Gateway that has not programmed the HTTPRoute yet leaves it (set_ingress_not_ready); Ready
    follows PredictorReady and IngressReady.

A revision never becomes ready when its storage URI contains "never-ready" (never_ready_marker), which
is how tests stage a candidate that hangs. ready_delay makes every revision take that long to become
ready. The URLs written to status come from url_for(UrlRequest): the default gives the hostnames KServe
and Knative would (http://latest-<isvc>-predictor.<ns>.example.com ...); end-to-end tests pass a callback
that maps a revision (by its storage URI) to a real local model server.

The revision table (name, template hash, storage URI, creation time) is kept in
status.annotations["standin.modelrollout.io/revisions"], so a restarted stand-in carries on where it was.
Status is written through the status subresource by server-side apply as field manager "kserve-standin".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kubernetes import client

from controller.devstack.standin import Kind, WatchingStandIn

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
FIELD_MANAGER = "kserve-standin"
REVISIONS_KEY = "standin.modelrollout.io/revisions"
NEVER_READY_MARKER = "never-ready"
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
MODEL_KEYS = ("model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "pmml", "lightgbm",
              "paddle", "huggingface")
# Annotations KServe does not copy into the revision template (part of its disallowed list).
NOT_IN_TEMPLATE = ("kubectl.kubernetes.io/last-applied-configuration",)
# The conditions KServe's Ready depends on; the others are informational ("Info" severity in knative).
DEPENDENT_CONDITIONS = ("Ready", "PredictorReady", "IngressReady")

Obj = dict[str, Any]


@dataclass(frozen=True)
class UrlRequest:
    """kind: "isvc" (the top-level ingress URL), "predictor" (the predictor's route, which splits traffic),
    "address" (cluster-local), "tag" (one revision through its traffic tag), "canary" (a Standard-mode
    canary Deployment, `tag` is its name)."""

    namespace: str
    inference_service: str
    kind: str
    tag: str | None = None
    revision: str | None = None
    storage_uri: str | None = None


UrlFor = Callable[[UrlRequest], str]


def example_url(request: UrlRequest) -> str:
    """The URLs KServe and Knative write with the default example.com domain."""
    name, ns = request.inference_service, request.namespace
    if request.kind == "isvc":
        return f"http://{name}.{ns}.example.com"
    if request.kind == "address":
        return f"http://{name}-predictor.{ns}.svc.cluster.local"
    if request.kind == "tag":
        return f"http://{request.tag}-{name}-predictor.{ns}.example.com"
    if request.kind == "canary":
        return f"http://{name}-{request.tag}-predictor.{ns}.svc.cluster.local"
    return f"http://{name}-predictor.{ns}.example.com"


@dataclass
class Revision:
    name: str
    template: str  # hash of the revision template
    storage_uri: str | None
    created: float  # unix time
    never_ready: bool
    logger_url: str | None = None  # spec.predictor.logger.url when the revision was made: where its agent logs


def storage_uri_of(predictor: Obj) -> str | None:
    for key in MODEL_KEYS:
        if isinstance(predictor.get(key), dict):
            return predictor[key].get("storageUri")
    return None


def template_hash(obj: Obj) -> str:
    predictor = {k: v for k, v in obj["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
    meta = obj["metadata"]
    template = {"predictor": predictor, "labels": meta.get("labels") or {},
                "annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if k not in NOT_IN_TEMPLATE}}
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def knative_traffic_targets(canary_percent: int | None, rolled_out: str, tag_routing: bool) -> list[Obj]:
    """KServe's ksvc traffic (createKnativeService): what the route is asked for."""
    latest: Obj = {"latestRevision": True, "percent": 100}
    if tag_routing:
        latest["tag"] = "latest"
    if canary_percent is None or not rolled_out:
        return [latest]
    latest["percent"] = canary_percent
    targets = [latest]
    if canary_percent < 100:
        targets.append({"revisionName": rolled_out, "latestRevision": False, "percent": 100 - canary_percent,
                        "tag": "prev"})
    return targets


def propagate_rollout(traffic: list[Obj], rolled_out: str, previous: str, latest_ready: str,
                      latest_created: str) -> tuple[str, str]:
    """KServe's PropagateStatus: how latestRolledoutRevision and previousRolledoutRevision move."""
    per_revision: dict[str, int] = {}
    for target in traffic:
        per_revision[target["revisionName"]] = per_revision.get(target["revisionName"], 0) + target["percent"]
    for target in traffic:
        if target["revisionName"] != latest_ready or not target.get("latestRevision"):
            continue
        if rolled_out != latest_ready:
            if target["percent"] == 100:  # fully rolled out: the old one becomes previous
                previous, rolled_out = rolled_out, latest_ready
        elif latest_ready == latest_created and target["percent"] < 100 \
                and per_revision.get(target["revisionName"]) == 100 and previous:
            rolled_out = previous  # canary set on a rolled-out latest revision: back to the previous one
    return rolled_out, previous


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, state: str, reason: str = "", message: str = "") -> Obj:
    found: Obj = {"type": kind, "status": state}
    if reason:
        found["reason"] = reason
    if message:
        found["message"] = message
    if kind not in DEPENDENT_CONDITIONS:
        found["severity"] = "Info"
    return found


def _keep_transition_times(new: list[Obj], old: list[Obj]) -> list[Obj]:
    """lastTransitionTime changes only when a condition's status does, as knative does it."""
    before = {c.get("type"): c for c in old}
    now = _now()
    for found in new:
        previous = before.get(found["type"])
        same = previous is not None and previous.get("status") == found["status"]
        found["lastTransitionTime"] = previous.get("lastTransitionTime", now) if same and previous else now
    return sorted(new, key=lambda c: c["type"])


class KServeStandIn(WatchingStandIn):
    """Run with `start()` / `stop()` (or as a context manager); `reconcile()` does one pass synchronously."""

    kind = Kind(GROUP, VERSION, PLURAL, KIND)
    thread_name = "kserve-standin"

    def __init__(self, api_client: client.ApiClient, *, namespace: str | None = None,
                 url_for: UrlFor = example_url, never_ready_marker: str = NEVER_READY_MARKER,
                 ready_delay: float = 0.0, default_mode: str = "Knative", field_manager: str = FIELD_MANAGER,
                 watch_timeout: int = 1) -> None:
        super().__init__(api_client, namespace, field_manager, watch_timeout)
        self.url_for = url_for
        self.never_ready_marker = never_ready_marker
        self.ready_delay = ready_delay
        self.default_mode = default_mode
        # _pending: revisions waiting out ready_delay
        # Standard mode: (namespace, name) -> (reason, message) of an IngressReady False to report
        self._ingress_not_ready: dict[tuple[str, str], tuple[str, str]] = {}

    def set_ingress_not_ready(self, namespace: str, name: str, reason: str | None = "ParentStatusNotAvailable",
                              message: str = "Predictor HttpRouteNotReady") -> Obj | None:
        """Standard mode: report IngressReady False with KServe's reason and message (the defaults are what it
        writes while the Gateway has not reported on the HTTPRoute), or True again (reason None); the status
        written, as reconcile() gives it."""
        if reason is None:
            self._ingress_not_ready.pop((namespace, name), None)
        else:
            self._ingress_not_ready[(namespace, name)] = (reason, message)
        return self.reconcile(namespace, name)

    # -- one pass --

    def reconcile(self, namespace: str, name: str) -> Obj | None:
        """Compute and write the status of one InferenceService; the status written, or None if it is gone."""
        with self._lock:
            obj = self._get(namespace, name)
            if obj is None:
                return None
            existing = obj.get("status") or {}
            status = self._standard_status(obj) if self._mode(obj) == "Standard" else self._knative_status(obj)
            status["conditions"] = _keep_transition_times(status["conditions"], existing.get("conditions") or [])
            if status != existing:
                self._write_status(obj, status)
            return status

    def _mode(self, obj: Obj) -> str:
        value = (obj.get("status") or {}).get("deploymentMode") or \
            ((obj["metadata"].get("annotations") or {}).get(DEPLOYMENT_MODE)) or self.default_mode
        return "Standard" if value in ("Standard", "RawDeployment") else "Knative"

    def _url(self, obj: Obj, kind: str, **extra: Any) -> str:
        meta = obj["metadata"]
        return self.url_for(UrlRequest(namespace=meta["namespace"], inference_service=meta["name"], kind=kind,
                                       **extra))

    def _is_ready(self, revision: Revision) -> bool:
        return not revision.never_ready and time.time() - revision.created >= self.ready_delay

    # -- Knative mode --

    def _knative_status(self, obj: Obj) -> Obj:
        meta, spec = obj["metadata"], obj["spec"]
        existing = obj.get("status") or {}
        key = (meta["namespace"], meta["name"])
        try:
            table = [Revision(**r) for r in json.loads((existing.get("annotations") or {}).get(REVISIONS_KEY, "[]"))]
        except (ValueError, TypeError):
            table = []
        template = template_hash(obj)
        if not table or table[-1].template != template:
            uri = storage_uri_of(spec["predictor"])
            logger = spec["predictor"].get("logger") or {}
            table.append(Revision(name=f"{meta['name']}-predictor-{len(table) + 1:05d}", template=template,
                                  storage_uri=uri, created=time.time(),
                                  never_ready=bool(uri and self.never_ready_marker in uri),
                                  logger_url=logger.get("url") if isinstance(logger, dict) else None))
        by_name = {r.name: r for r in table}
        latest_created = table[-1].name
        ready = [r for r in table if self._is_ready(r)]
        latest_ready = ready[-1].name if ready else ""
        if any(not r.never_ready and not self._is_ready(r) for r in table):
            self._pending.add(key)
        else:
            self._pending.discard(key)

        previous_component = (existing.get("components") or {}).get("predictor") or {}
        rolled_out = previous_component.get("latestRolledoutRevision") or ""
        previous = previous_component.get("previousRolledoutRevision") or ""
        tag_routing = (meta.get("annotations") or {}).get(TAG_ROUTING) == "true"
        percent = spec["predictor"].get("canaryTrafficPercent")
        canary_percent = None if percent is None else int(percent)
        traffic: list[Obj] = []
        for _ in range(5):  # KServe reconciles again after each status change until nothing moves
            traffic = self._route(obj, knative_traffic_targets(canary_percent, rolled_out, tag_routing),
                                  latest_ready, by_name)
            moved = propagate_rollout(traffic, rolled_out, previous, latest_ready, latest_created)
            if moved == (rolled_out, previous):
                break
            rolled_out, previous = moved

        latest = by_name[latest_created]
        if self._is_ready(latest):
            configuration = _condition("PredictorConfigurationReady", "True")
        else:
            why = (f"the model server never became ready (storage URI contains {self.never_ready_marker!r})"
                   if latest.never_ready else "the model server is starting")
            configuration = _condition("PredictorConfigurationReady", "Unknown", "Deploying",
                                       f'Revision "{latest_created}" is not ready: {why}')
        route = _condition("PredictorRouteReady", "True") if traffic else \
            _condition("PredictorRouteReady", "Unknown", "RevisionMissing", "no revision is ready to serve traffic")
        predictor = _condition("PredictorReady", "True") if configuration["status"] == "True" and traffic else \
            _condition("PredictorReady", "Unknown", (configuration if traffic else route).get("reason", ""),
                       (configuration if traffic else route).get("message", ""))
        ingress = _condition("IngressReady", "True") if traffic else \
            _condition("IngressReady", "False", "PredictorIngressNotCreated", "the predictor has no ready route")
        overall = _condition("Ready", "True") if predictor["status"] == "True" and ingress["status"] == "True" else \
            _condition("Ready", predictor["status"] if predictor["status"] != "True" else ingress["status"],
                       predictor.get("reason") or ingress.get("reason", ""),
                       predictor.get("message") or ingress.get("message", ""))
        conditions = [configuration, route, predictor, ingress, overall,
                      {**configuration, "type": "LatestDeploymentReady"}, {**route, "type": "RoutesReady"}]

        component: Obj = {"latestCreatedRevision": latest_created, "traffic": traffic}
        if latest_ready:
            component["latestReadyRevision"] = latest_ready
        if rolled_out:
            component["latestRolledoutRevision"] = rolled_out
        if previous:
            component["previousRolledoutRevision"] = previous
        status: Obj = {"observedGeneration": meta.get("generation", 1), "deploymentMode": "Knative",
                       "conditions": conditions, "components": {"predictor": component},
                       "annotations": {REVISIONS_KEY: json.dumps([asdict(r) for r in table])},
                       "modelStatus": {"transitionStatus": "UpToDate" if self._is_ready(latest) else "InProgress",
                                       "states": {"activeModelState": "Loaded" if latest_ready else "Pending",
                                                  "targetModelState": "Loaded" if self._is_ready(latest)
                                                  else "Pending"}}}
        if traffic:
            component["url"] = self._url(obj, "predictor")
            component["address"] = {"url": self._url(obj, "address")}
            status["url"] = self._url(obj, "isvc")
            status["address"] = {"url": self._url(obj, "address")}
        return status

    def _route(self, obj: Obj, targets: list[Obj], latest_ready: str, revisions: dict[str, Revision]) -> list[Obj]:
        """Knative's route: `latestRevision` targets resolve to the latest *ready* revision."""
        traffic = []
        for target in targets:
            name = latest_ready if target.get("latestRevision") else target["revisionName"]
            if not name:
                continue  # nothing ready to send it to
            entry: Obj = {"latestRevision": bool(target.get("latestRevision")), "percent": target["percent"],
                          "revisionName": name}
            if target.get("tag"):
                entry["tag"] = target["tag"]
                entry["url"] = self._url(obj, "tag", tag=target["tag"], revision=name,
                                         storage_uri=revisions[name].storage_uri if name in revisions else None)
            traffic.append(entry)
        return traffic

    # -- Standard mode --

    def _standard_status(self, obj: Obj) -> Obj:
        meta, spec = obj["metadata"], obj["spec"]
        uri = storage_uri_of(spec["predictor"])
        stable_ready = not (uri and self.never_ready_marker in uri)
        predictor = _condition("PredictorReady", "True") if stable_ready else \
            _condition("PredictorReady", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum "
                       f"availability (storage URI contains {self.never_ready_marker!r})")
        not_ready = self._ingress_not_ready.get((meta["namespace"], meta["name"]))
        ingress = _condition("IngressReady", "False", *not_ready) if not_ready else _condition("IngressReady", "True")
        failing = predictor if predictor["status"] != "True" else ingress
        overall = _condition("Ready", failing["status"], failing.get("reason", ""), failing.get("message", ""))
        conditions = [predictor, ingress, overall]
        canaries = []
        for index, entry in enumerate(spec.get("canary") or []):
            canary_predictor = entry.get("predictor") or {}
            name = canary_predictor.get("name") or f"canary-{index}"
            canary_uri = storage_uri_of(canary_predictor)
            ready = not (canary_uri and self.never_ready_marker in canary_uri)
            canaries.append({"name": name, "ready": ready,
                             "trafficPercent": int(entry.get("trafficPercent") or 0) if ready else 0,
                             "modelStatus": {"transitionStatus": "UpToDate" if ready else "InProgress",
                                             "states": {"activeModelState": "Loaded" if ready else "Pending",
                                                        "targetModelState": ""}}})
        status: Obj = {"observedGeneration": meta.get("generation", 1), "deploymentMode": "Standard",
                       "url": self._url(obj, "isvc"), "address": {"url": self._url(obj, "address")},
                       "components": {"predictor": {"url": self._url(obj, "predictor"),
                                                    "address": {"url": self._url(obj, "address")}}},
                       "modelStatus": {"transitionStatus": "UpToDate" if stable_ready else "InProgress",
                                       "states": {"activeModelState": "Loaded" if stable_ready else "Pending",
                                                  "targetModelState": ""}}}
        if canaries:
            waiting = [c["name"] for c in canaries if not c["ready"]]
            conditions.append(_condition("CanaryPredictorReady", "True", "AllCanariesReady") if not waiting else
                              _condition("CanaryPredictorReady", "False", "CanaryNotReady",
                                         f"canary predictors not ready: {', '.join(waiting)}"))
            status["canaryStatuses"] = canaries
        status["conditions"] = conditions
        return status
