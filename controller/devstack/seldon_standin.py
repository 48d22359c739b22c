"""Stand-ins for Seldon Core's controllers on the local stack, where Seldon cannot run.

Each watches its resource and writes status the way Seldon's own controller does (from its source, not
from what the routers expect), so the operator meets the behaviour it will meet on a cluster.

Seldon Core v1, SeldonDeployment (SeldonDeploymentStandIn), as operator/controllers/ of v1.17 does it:
  - one Deployment per component spec that has containers, named <sdep>-<predictor>-<index>-<containers>
    (or the component's metadata.name), plus one per prepackaged model server (a graph node with an
    `implementation` and no container of its name), names over 63 characters as "seldon-" + md5;
  - a Deployment whose pod template is new or changed takes `ready_delay` seconds to become available (a
    new one reports availableReplicas 0 meanwhile; a rolling update keeps its old pods available); a model
    URI containing "never-ready" never becomes available;
  - status.state "Available" when every Deployment is available, else "Creating" (Seldon says "Failed"
    only once a Deployment's progress deadline, ten minutes by default, has passed; the stand-in never
    does); status.deploymentStatus {name: {replicas, availableReplicas}}, entries of removed predictors
    kept until the current Deployments are available (Seldon deletes the old ones only then);
  - status.serviceStatus: the predictor's Service (<sdep>-<predictor>, or the seldon.io/svc-name
    annotation) on the executor's ports 8000/5001, and one Service per model container on 9000+i/9500+i;
    status.address.url for the first predictor with the protocol's path; status.replicas;
  - conditions DeploymentsReady, ServicesReady, HpasReady, KedaReady, PdbsReady, istioVirtualServicesReady
    and the knative living set's Ready;
  - no status.observedGeneration: Seldon Core v1 never writes it.
  The httpEndpoint written for a predictor's Service comes from endpoint_for(EndpointRequest): by default
  the cluster address Seldon writes ("<svc>.<ns>:8000"); end-to-end tests map a predictor (by its model
  URI) to a real local model server ("127.0.0.1:<port>").

Seldon Core v2, Experiment (SeldonExperimentStandIn), as its scheduler and operator do it:
  - Model resources are deployed by whoever builds the model; here `models(namespace, name)` says which
    Models are loaded and which server has each (None: no such Model, or not available);
  - an experiment its scheduler refuses (validate.go: `default` not a candidate, neither candidates nor a
    mirror, a name twice among the candidates and the mirror) is not started: the one last started keeps
    serving and its conditions stay, Ready included; the error goes to a ModelReady condition, outside the
    living set (the operator's updateStatusFromError), which stays after a later spec is started (the status
    updates keep the conditions they do not set);
  - the experiment is active when every candidate (and the mirror) is an available Model (until then the
    mesh serves its default Model alone, and "<experiment>.experiment" not at all, as the scheduler's
    IncrementalProcessor routes it, also after it was active once); conditions
    ExperimentReady (reason "experiment active" or why not), CandidatesReady ("Candidates ready" /
    "Candidates not ready"), MirrorReady and the living set's Ready; no observedGeneration (Seldon Core v2
    writes conditions only);
  - the data plane: one seldon-mesh per namespace, a small HTTP proxy playing Seldon's envoy. It routes
    /v2/models/<model>/... by the seldon-model header, or by the model name in the path when the header
    is absent (as envoy's Lua filter does); "<experiment>.experiment" and the default model of an active
    experiment are split among the candidates by weight (x-seldon-route reports the choice); the request
    reaches the model's server under the name that server knows it by (Seldon's agent does that rename).
    The stand-in also creates the seldon-mesh Service (type LoadBalancer, port "data") and writes its load
    balancer ingress, 127.0.0.1, as a cloud's load balancer controller would; the port is the proxy's,
    where Seldon's is 80.

Status is written through the status subresource by server-side apply as field manager "seldon-standin".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import logging
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client

from controller.devstack.processes import LOOPBACK
from controller.devstack.standin import Kind, WatchingStandIn
from controller.operator.kubeapi import APPLY_PATCH

log = logging.getLogger(__name__)

Obj = dict[str, Any]

FIELD_MANAGER = "seldon-standin"
NEVER_READY_MARKER = "never-ready"
DEPLOYMENTS_KEY = "standin.modelrollout.io/deployments"
ENGINE_HTTP_PORT, ENGINE_GRPC_PORT = 8000, 5001
UNIT_HTTP_PORT, UNIT_GRPC_PORT = 9000, 9500
ANN_SERVICE_NAME = "seldon.io/svc-name"
MESH_SERVICE = "seldon-mesh"
MESH_TARGET_PORT = 9000
MODEL_HEADER, ROUTE_HEADER = "seldon-model", "x-seldon-route"
# The conditions Ready depends on in Seldon Core v1's living condition set, in the order Seldon sets them.
V1_CONDITIONS = (("ServicesReady", "All services created"), ("HpasReady", "No HPAs defined"),
                 ("KedaReady", "No KEDA resources defined"), ("PdbsReady", "No PDBs defined"),
                 ("istioVirtualServicesReady", "No VirtualServices defined"))


SELDON_DEPLOYMENT = Kind("machinelearning.seldon.io", "v1", "seldondeployments", "SeldonDeployment")
EXPERIMENT = Kind("mlops.seldon.io", "v1alpha1", "experiments", "Experiment")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, state: bool, reason: str = "", message: str = "") -> Obj:
    found: Obj = {"type": kind, "status": "True" if state else "False"}
    if reason:
        found["reason"] = reason
    if message:
        found["message"] = message
    return found


def _living_set(dependents: list[Obj]) -> list[Obj]:
    """knative's living condition set: Ready is True when every dependent is, else False with the reason
    of the last dependent marked False (the order the controller marks them in)."""
    failed = [c for c in dependents if c["status"] != "True"]
    ready = _condition("Ready", True) if not failed else \
        _condition("Ready", False, failed[-1].get("reason", ""), failed[-1].get("message", ""))
    return [*dependents, ready]


def _keep_transition_times(new: list[Obj], old: list[Obj]) -> list[Obj]:
    """lastTransitionTime changes only when a condition's status does."""
    before = {c.get("type"): c for c in old}
    now = _now()
    for found in new:
        previous = before.get(found["type"])
        same = previous is not None and previous.get("status") == found["status"]
        found["lastTransitionTime"] = previous.get("lastTransitionTime", now) if same and previous else now
    return sorted(new, key=lambda c: c["type"])


# --- Seldon Core v1 ----------------------------------------------------------------------------------


def seldon_name(name: str) -> str:
    """Seldon Core v1's rule for generated names: longer than 63 characters, "seldon-" + md5 of it."""
    return name if len(name) <= 63 else "seldon-" + hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()


def predictor_service(deployment: str, predictor: Obj) -> str:
    custom = (predictor.get("annotations") or {}).get(ANN_SERVICE_NAME)
    return custom or seldon_name(f"{deployment}-{predictor['name']}")


def graph_units(unit: Obj) -> list[Obj]:
    """The graph's nodes, root first then children depth first (Seldon's GetPredictiveUnitList)."""
    return [unit, *(u for child in unit.get("children") or [] for u in graph_units(child))]


def first_model_uri(predictor: Obj) -> str | None:
    return next((u["modelUri"] for u in graph_units(predictor.get("graph") or {}) if u.get("modelUri")), None)


def prediction_path(protocol: str | None, graph_name: str) -> str:
    """Seldon's GetPredictionPath: the path status.address.url carries."""
    if protocol == "tensorflow":
        return f"/v1/models/{graph_name}:predict"
    if protocol in ("v2", "kfserving"):
        return f"/v2/models/{graph_name}/infer"
    return "/api/v1.0/predictions"


@dataclass(frozen=True)
class PlannedDeployment:
    name: str
    predictor: str
    replicas: int
    template: str  # hash of what goes into the pod template
    never_ready: bool


def planned_deployments(obj: Obj, never_ready_marker: str = NEVER_READY_MARKER) -> list[PlannedDeployment]:
    """The Deployments Seldon Core v1 makes for a SeldonDeployment (GetDeploymentName and the prepackaged
    model servers it adds as extra component specs)."""
    sdep, spec = obj["metadata"]["name"], obj["spec"]
    planned = []
    for predictor in spec.get("predictors") or []:
        components = [c for c in predictor.get("componentSpecs") or [] if c]
        container_names = {c.get("name") for comp in components
                           for c in (comp.get("spec") or {}).get("containers") or []}
        servers = [u for u in graph_units(predictor.get("graph") or {})
                   if u.get("implementation") and u.get("implementation") != "UNKNOWN_IMPLEMENTATION"
                   and u.get("name") not in container_names]
        pods: list[tuple[int, str, Obj]] = []
        for index, component in enumerate(components):
            containers = (component.get("spec") or {}).get("containers") or []
            if containers:
                suffix = (component.get("metadata") or {}).get("name") or "-".join(c["name"] for c in containers)
                pods.append((index, suffix, component))
        for offset, unit in enumerate(servers):
            pods.append((len(components) + offset, unit["name"], {"unit": unit}))
        replicas = predictor.get("replicas", spec.get("replicas", 1))
        graph = predictor.get("graph") or {}
        uris = " ".join(u.get("modelUri") or "" for u in graph_units(graph))
        for index, suffix, component in pods:
            template = {"component": component, "graph": graph, "labels": predictor.get("labels") or {},
                        "annotations": predictor.get("annotations") or {}}
            planned.append(PlannedDeployment(
                name=seldon_name(f"{sdep}-{predictor['name']}-{index}-{suffix}"), predictor=predictor["name"],
                replicas=int(component.get("replicas", replicas) if isinstance(component, dict) else replicas),
                template=hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16],
                never_ready=never_ready_marker in uris))
    return planned


@dataclass(frozen=True)
class EndpointRequest:
    """A Service Seldon makes for a predictor: where its httpEndpoint should point."""

    namespace: str
    seldon_deployment: str
    predictor: str
    service: str
    port: int
    model_uri: str | None  # the predictor's first model URI (root first, then children)


EndpointFor = Callable[[EndpointRequest], str]


def cluster_endpoint(request: EndpointRequest) -> str:
    """What Seldon writes: "<service>.<namespace>:<port>"."""
    return f"{request.service}.{request.namespace}:{request.port}"


class SeldonDeploymentStandIn(WatchingStandIn):
    """Seldon Core v1's operator for SeldonDeployments; `start()` / `stop()`, `reconcile()` for one pass."""

    kind = SELDON_DEPLOYMENT
    thread_name = "seldon-v1-standin"

    def __init__(self, api_client: client.ApiClient, *, namespace: str | None = None,
                 endpoint_for: EndpointFor = cluster_endpoint, ready_delay: float = 0.0,
                 never_ready_marker: str = NEVER_READY_MARKER, field_manager: str = FIELD_MANAGER,
                 watch_timeout: int = 1) -> None:
        super().__init__(api_client, namespace, field_manager, watch_timeout)
        self.endpoint_for = endpoint_for
        self.ready_delay = ready_delay
        self.never_ready_marker = never_ready_marker

    def reconcile(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            obj = self._get(namespace, name)
            if obj is None:
                return None
            existing = obj.get("status") or {}
            status = self._status(obj, existing)
            status["conditions"] = _keep_transition_times(status["conditions"], existing.get("conditions") or [])
            if status != existing:
                self._write_status(obj, status)
            return status

    def _status(self, obj: Obj, existing: Obj) -> Obj:
        meta, spec = obj["metadata"], obj["spec"]
        key = (meta["namespace"], meta["name"])
        try:
            table: dict[str, Obj] = json.loads((existing.get("annotations") or {}).get(DEPLOYMENTS_KEY, "{}"))
        except ValueError:
            table = {}
        now = time.time()
        planned = planned_deployments(obj, self.never_ready_marker)
        rows: dict[str, Obj] = {}
        deployments: dict[str, Obj] = {}
        all_ready = True
        waiting = False
        for d in planned:
            previous = table.get(d.name)
            since = previous["since"] if previous and previous.get("template") == d.template else now
            rows[d.name] = {"template": d.template, "since": since, "created": (previous or {}).get("created", now)}
            ready = not d.never_ready and now - since >= self.ready_delay
            old_pods = rows[d.name]["created"] < since  # a rolling update: the old pods still serve
            entry: Obj = {"replicas": d.replicas}
            if ready or old_pods:
                entry["availableReplicas"] = d.replicas
            deployments[d.name] = entry
            all_ready = all_ready and ready
            waiting = waiting or (not ready and not d.never_ready)
        if waiting:
            self._pending.add(key)
        else:
            self._pending.discard(key)
        services = self._services(obj)
        if not all_ready:  # Seldon removes what belongs to removed predictors only once the rest is available
            for name, entry in (existing.get("deploymentStatus") or {}).items():
                deployments.setdefault(name, entry)
            for name, entry in (existing.get("serviceStatus") or {}).items():
                services.setdefault(name, entry)
        deployments_ready = _condition("DeploymentsReady", True, "MinimumReplicasAvailable",
                                       "Deployment has minimum availability.") if all_ready else \
            _condition("DeploymentsReady", False, "MinimumReplicasUnavailable",
                       "Deployment does not have minimum availability.")
        others = [_condition(kind, True, reason) for kind, reason in V1_CONDITIONS]
        status: Obj = {"state": "Available" if all_ready else "Creating",
                       "deploymentStatus": deployments, "serviceStatus": services,
                       "conditions": _living_set([*others, deployments_ready]),
                       "annotations": {DEPLOYMENTS_KEY: json.dumps(rows, sort_keys=True)}}
        if planned:  # the first predictor's first Deployment is the "default" one
            status["replicas"] = planned[0].replicas
        predictors = spec.get("predictors") or []
        if predictors:
            first_predictor = predictors[0]
            host = f"{predictor_service(meta['name'], first_predictor)}.{meta['namespace']}.svc.cluster.local"
            status["address"] = {"url": f"http://{host}:{ENGINE_HTTP_PORT}"
                                        + prediction_path(spec.get("protocol"), first_predictor["graph"]["name"])}
        return status

    def _services(self, obj: Obj) -> dict[str, Obj]:
        meta = obj["metadata"]
        sdep, namespace = meta["name"], meta["namespace"]
        services: dict[str, Obj] = {}
        for predictor in obj["spec"].get("predictors") or []:
            for index, unit in enumerate(u for u in graph_units(predictor.get("graph") or {}) if u.get("name")):
                name = seldon_name(f"{sdep}-{predictor['name']}-{unit['name']}")
                services[name] = {"svcName": name, "httpEndpoint": f"{name}.{namespace}:{UNIT_HTTP_PORT + index}",
                                  "grpcEndpoint": f"{name}.{namespace}:{UNIT_GRPC_PORT + index}"}
            name = predictor_service(sdep, predictor)
            request = EndpointRequest(namespace=namespace, seldon_deployment=sdep, predictor=predictor["name"],
                                      service=name, port=ENGINE_HTTP_PORT, model_uri=first_model_uri(predictor))
            services[name] = {"svcName": name, "httpEndpoint": self.endpoint_for(request),
                              "grpcEndpoint": f"{name}.{namespace}:{ENGINE_GRPC_PORT}"}
        return services


# --- Seldon Core v2 ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEndpoint:
    """Where a loaded Seldon Model is served: the server's base URL and the name the server knows it by
    (Seldon's agent loads Model m as "m_<version>" and rewrites requests to that name)."""

    url: str
    served_name: str


ModelLookup = Callable[[str, str], ModelEndpoint | None]  # (namespace, Model name) -> None when not available


@dataclass
class _Route:
    default: str | None
    candidates: list[tuple[str, int]]
    active: bool


@dataclass
class SeldonMesh:
    """Seldon Core v2's envoy for one namespace: one address for every Model, routed by model name."""

    namespace: str
    models: ModelLookup
    port: int = 0
    experiments: dict[str, _Route] = field(default_factory=dict)
    served: Counter[str] = field(default_factory=Counter)  # requests forwarded, by the Model they reached
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> SeldonMesh:
        mesh = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                mesh._forward(self)

            def do_POST(self) -> None:
                mesh._forward(self)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("seldon-mesh %s: " + format, mesh.namespace, *args)

        # Bound here (port 0: the kernel picks): a port picked earlier could be taken before the bind.
        self._server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self.port = int(self._server.server_address[1])
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"seldon-mesh-{self.namespace}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set_experiment(self, name: str, route: _Route | None) -> None:
        with self._lock:
            if route is None:
                self.experiments.pop(name, None)
            else:
                self.experiments[name] = route

    def choose(self, requested: str) -> str:
        """The Model a request for `requested` (a model name or "<experiment>.experiment") reaches."""
        with self._lock:
            routes = dict(self.experiments)
        route: _Route | None = None
        if requested.endswith(".experiment"):
            route = routes.get(requested.removesuffix(".experiment"))
        else:
            route = next((r for r in routes.values() if r.active and r.default == requested), None)
        if route is None or not route.active:
            return requested
        weighted = [(name, weight) for name, weight in route.candidates if weight > 0]
        if not weighted:
            return route.default or requested
        return random.choices([n for n, _ in weighted], weights=[w for _, w in weighted])[0]

    def _forward(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        path = request.path
        requested = request.headers.get(MODEL_HEADER) or ""
        if not requested and path.startswith("/v2/models/"):
            requested = path.removeprefix("/v2/models/").split("/", 1)[0].split("?", 1)[0]
        chosen = self.choose(requested) if requested else ""
        endpoint = self.models(self.namespace, chosen) if chosen else None
        if endpoint is None:  # envoy has no route for it
            self._answer(request, 404, b"", {})
            return
        prefix = f"/v2/models/{requested}"
        if path == prefix or path.startswith(prefix + "/"):
            path = f"/v2/models/{endpoint.served_name}" + path[len(prefix):]
        target = urllib.parse.urlsplit(endpoint.url)
        connection = http.client.HTTPConnection(target.hostname or LOOPBACK, target.port or 80, timeout=60)
        try:
            headers = {"Content-Type": request.headers.get("Content-Type") or "application/json"}
            connection.request(request.command, path, body=body or None, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            with self._lock:
                self.served[chosen] += 1
            self._answer(request, answer.status, data,
                         {"Content-Type": answer.getheader("Content-Type") or "application/json",
                          ROUTE_HEADER: f":{chosen}_1:"})
        except OSError:
            self._answer(request, 503, b"upstream connect error", {})
        finally:
            connection.close()

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str]) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


def experiment_refusal(name: str, spec: Obj) -> str:
    """Why Seldon Core v2's scheduler refuses to start an experiment, in its words ("" when it does not): the
    checks of validate.go (but validateNoExistingDefault, another experiment's default) in its order."""
    candidates = [c.get("name") for c in spec.get("candidates") or []]
    default = spec.get("default")
    if default is not None and default not in candidates:
        return f"default model/pipeline {default} not found in experiment {name} candidates"
    mirror = spec.get("mirror")
    if not candidates and mirror is None:
        return f"experiment {name} has no candidates or mirror"
    names = [*candidates, *([mirror.get("name")] if mirror is not None else [])]
    duplicated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if duplicated is not None:
        return (f"each candidate and mirror must be unique but found resource {duplicated} duplicated in "
                f"experiment {name}")
    return ""


class SeldonExperimentStandIn(WatchingStandIn):
    """Seldon Core v2's scheduler and operator for Experiments, with its data plane (seldon-mesh)."""

    kind = EXPERIMENT
    thread_name = "seldon-v2-standin"

    def __init__(self, api_client: client.ApiClient, *, models: ModelLookup, namespace: str | None = None,
                 field_manager: str = FIELD_MANAGER, watch_timeout: int = 1) -> None:
        super().__init__(api_client, namespace, field_manager, watch_timeout)
        self.models = models
        self.core = client.CoreV1Api(api_client)
        self.meshes: dict[str, SeldonMesh] = {}

    def start(self) -> SeldonExperimentStandIn:
        if self.namespace:
            self.mesh(self.namespace)  # the runtime's data plane is there before any experiment
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        for mesh in self.meshes.values():
            mesh.stop()
        self.meshes.clear()

    def mesh(self, namespace: str) -> SeldonMesh:
        """The namespace's seldon-mesh, started (and its Service written) the first time it is asked for."""
        if namespace not in self.meshes:
            mesh = SeldonMesh(namespace, self.models).start()
            self._publish(mesh)
            self.meshes[namespace] = mesh
        return self.meshes[namespace]

    def _publish(self, mesh: SeldonMesh) -> None:
        service = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": MESH_SERVICE, "namespace": mesh.namespace,
                                "labels": {"app.kubernetes.io/name": MESH_SERVICE,
                                           "app.kubernetes.io/managed-by": "seldon-core"}},
                   "spec": {"type": "LoadBalancer", "selector": {"app": "seldon-envoy"},
                            "ports": [{"name": "data", "port": mesh.port, "targetPort": MESH_TARGET_PORT,
                                       "protocol": "TCP"}]}}
        self.core.patch_namespaced_service(MESH_SERVICE, mesh.namespace, service, field_manager=self.field_manager,
                                           force=True, _content_type=APPLY_PATCH)
        status = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": MESH_SERVICE,
                                                                      "namespace": mesh.namespace},
                  "status": {"loadBalancer": {"ingress": [{"ip": LOOPBACK}]}}}
        self.core.patch_namespaced_service_status(MESH_SERVICE, mesh.namespace, status,
                                                  field_manager=self.field_manager, force=True,
                                                  _content_type=APPLY_PATCH)

    def reconcile(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            obj = self._get(namespace, name)
            mesh = self.mesh(namespace)
            if obj is None:
                mesh.set_experiment(name, None)
                return None
            spec = obj["spec"]
            existing = obj.get("status") or {}
            if refused := experiment_refusal(name, spec):
                # The route as last started stays, and so do the conditions (Ready too); only ModelReady changes.
                kept = [dict(c) for c in existing.get("conditions") or [] if c.get("type") != "ModelReady"]
                status: Obj = {"conditions": _keep_transition_times([*kept, _condition("ModelReady", False, refused)],
                                                                    existing.get("conditions") or [])}
                if status != existing:
                    self._write_status(obj, status)
                return status
            candidates = [(c["name"], int(c.get("weight") or 0)) for c in spec.get("candidates") or []]
            missing = [n for n, _ in candidates if self.models(namespace, n) is None]
            mirror = (spec.get("mirror") or {}).get("name")
            mirror_ready = not mirror or self.models(namespace, mirror) is not None
            active = not missing and mirror_ready
            if active:
                description = "experiment active"
            elif missing:
                description = "candidate models not available: " + ", ".join(missing)
            else:
                description = "mirror model not available"
            dependents = [_condition("ExperimentReady", active, description),
                          _condition("CandidatesReady", not missing,
                                     "Candidates ready" if not missing else "Candidates not ready"),
                          _condition("MirrorReady", mirror_ready,
                                     "Mirror ready" if mirror_ready else "Mirror not ready")]
            # Its operator writes ModelReady on a refusal only, and its status updates keep the conditions they do
            # not set: a refusal's ModelReady stays after a later spec is started.
            refusal = [dict(c) for c in existing.get("conditions") or [] if c.get("type") == "ModelReady"]
            status = {"conditions": _keep_transition_times([*_living_set(dependents), *refusal],
                                                           existing.get("conditions") or [])}
            # Started, it is routed at once, active or not: while a candidate (or the mirror) cannot take traffic
            # the scheduler's envoy sends the default model's requests to that Model alone (addModel reverts to
            # it) and has no <experiment>.experiment route (addExperiment removed it, then failed).
            mesh.set_experiment(name, _Route(spec.get("default"), candidates, active))
            if status != existing:
                self._write_status(obj, status)
            return status
