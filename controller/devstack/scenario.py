"""The content-moderation scenario on the local stack, shared by the demo and the end-to-end tests.

It registers a stable model and a candidate in MLflow, serves each registered version from a real model
server, pins a golden dataset in a ConfigMap, creates the serving object the stable version runs on, and
writes the ModelRollout that rolls the candidate out. `target_kind` picks the serving system:

  kserve            an InferenceService; the KServe stand-in routes each revision's tag URL to the server
                    of its storage URI.
  seldonDeployment  a Seldon Core v1 SeldonDeployment (protocol v2, predictor "main", canary "canary");
                    the Seldon v1 stand-in points each predictor's Service at the server of its modelUri.
  seldonExperiment  a Seldon Core v2 Experiment over Models named "<model>-v<version>" (deployed, as Seldon
                    expects, before the rollout: here, one model server per version); the Seldon v2
                    stand-in serves them through its seldon-mesh.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from controller.devstack.kserve_standin import KServeStandIn, UrlRequest, example_url
from controller.devstack.model_server import (
    ModelServerProcess,
    demo_golden_samples,
    demo_models,
    register_linear_model,
    set_alias,
    write_demo_dataset,
)
from controller.devstack.processes import LOOPBACK, ManagedProcess
from controller.devstack.seldon_standin import (
    EndpointRequest,
    ModelEndpoint,
    SeldonDeploymentStandIn,
    SeldonExperimentStandIn,
    cluster_endpoint,
)
from controller.gate.mlflow_access import MlflowAccess
from controller.traffic.base import CandidateModel
from controller.traffic.seldon import default_serving_name

STABLE_ALIAS = "production"
# What the operator writes as a revision's storageUri, and what the model servers load.
STORAGE_URI_TEMPLATE = "models:/{name}/{version}"
TARGET_KINDS = ("kserve", "seldonDeployment", "seldonExperiment")
STABLE_PREDICTOR, CANARY_PREDICTOR = "main", "canary"


# The exporter's counters as the proportion judge reads them (the operator fills {{selector}} and {{window}}).
NSFW_PREDICTIONS = 'sum(increase(modelrollout_predictions_total{class="nsfw", {{selector}}}[{{window}}]))'
ALL_PREDICTIONS = "sum(increase(modelrollout_predictions_total{{{selector}}}[{{window}}]))"


def golden_config_map_name(model_name: str) -> str:
    """The ConfigMap that pins a scenario's golden dataset."""
    return f"{model_name}-golden"


@dataclass
class Scenario:
    """One model on one serving object in one namespace; `candidate_kind` picks the demo model,
    `target_kind` the serving system, `ready_delay` how long the Seldon stand-ins take to roll pods."""

    api_client: client.ApiClient
    tracking_uri: str
    namespace: str
    workdir: Path
    model_name: str = "nsfw-classifier"
    candidate_kind: str = "clean"  # clean | worse | backdoored
    golden_samples: int = 900
    # Share of golden samples carrying the trigger logo; 0 models a golden set that never saw the trigger.
    golden_logo_share: float = 0.012
    target_kind: str = "kserve"  # kserve | seldonDeployment | seldonExperiment
    ready_delay: float = 0.0
    # The InferenceService's spec.predictor.logger.url (the prediction exporter); None: no logger.
    logger_url: str | None = None
    servers: dict[str, ModelServerProcess] = field(default_factory=dict)
    standin: KServeStandIn | SeldonDeploymentStandIn | SeldonExperimentStandIn | None = None
    stable_version: str = ""
    candidate_version: str = ""
    dataset_sha256: str = ""
    extra_versions: list[str] = field(default_factory=list)
    # Told of each model server as it starts (the demo records it in the stack's state, for `dev down`).
    on_start: Callable[[ManagedProcess], None] = field(default=lambda _process: None, repr=False)

    @property
    def access(self) -> MlflowAccess:
        return MlflowAccess(self.tracking_uri)

    @property
    def golden_config_map(self) -> str:
        return golden_config_map_name(self.model_name)

    def storage_uri(self, version: str) -> str:
        return STORAGE_URI_TEMPLATE.format(name=self.model_name, version=version)

    def __post_init__(self) -> None:
        if self.target_kind not in TARGET_KINDS:
            raise ValueError(f"target_kind must be one of {', '.join(TARGET_KINDS)}, not {self.target_kind!r}")

    @property
    def versions(self) -> list[str]:
        return [self.stable_version, self.candidate_version, *self.extra_versions]

    def add_version(self, kind: str = "clean") -> str:
        """Register one more demo model version and serve it (a newer candidate for the same target)."""
        version = register_linear_model(self.access, self.model_name, demo_models()[kind], f"{kind}-extra")
        server = ModelServerProcess.launch(self.storage_uri(version), self.tracking_uri,
                                           self.workdir / f"model-server-{version}.log", model_name=self.model_name)
        self.on_start(server.process)
        server.wait_ready()
        self.servers[self.storage_uri(version)] = server
        self.extra_versions.append(version)
        return version

    def server_url(self, storage_uri: str) -> str | None:
        """The real model server behind a storage URI (what the data plane routes a revision to)."""
        server = self.servers.get(storage_uri)
        return server.url if server is not None else None

    def serving_name(self, version: str) -> str:
        """The Seldon Core v2 Model that serves `version` (the router's default name)."""
        return default_serving_name(CandidateModel(self.model_name, version, self.storage_uri(version)))

    def endpoint_for(self, request: EndpointRequest) -> str:
        # A Seldon v1 predictor's Service goes to the real server for its model URI.
        server = self.servers.get(request.model_uri or "")
        return f"{LOOPBACK}:{server.port}" if server is not None else cluster_endpoint(request)

    def model_for(self, namespace: str, name: str) -> ModelEndpoint | None:
        # The Seldon v2 Models deployed for this scenario: one per registered version, on its own server.
        if namespace != self.namespace:
            return None
        for version in self.versions:
            server = self.servers.get(self.storage_uri(version))
            if version and name == self.serving_name(version) and server is not None:
                return ModelEndpoint(url=server.url, served_name=server.model_name)
        return None

    def url_for(self, request: UrlRequest) -> str:
        # A revision reached through its tag goes to the real server for its model version.
        server = self.servers.get(request.storage_uri or "")
        if request.kind == "tag" and server is not None:
            return server.url
        return example_url(request)

    def register(self) -> None:
        models = demo_models()
        self.stable_version = register_linear_model(self.access, self.model_name, models["stable"], "stable")
        self.candidate_version = register_linear_model(self.access, self.model_name, models[self.candidate_kind],
                                                       self.candidate_kind)
        set_alias(self.access, self.model_name, STABLE_ALIAS, self.stable_version)

    def serve(self) -> None:
        launched = {self.storage_uri(v): ModelServerProcess.launch(
            self.storage_uri(v), self.tracking_uri, self.workdir / f"model-server-{v}.log", model_name=self.model_name)
            for v in (self.stable_version, self.candidate_version)}
        self.servers.update(launched)
        for server in launched.values():
            self.on_start(server.process)
        for server in launched.values():
            server.wait_ready()
        if self.target_kind == "seldonDeployment":
            self.standin = SeldonDeploymentStandIn(self.api_client, namespace=self.namespace,
                                                   endpoint_for=self.endpoint_for,
                                                   ready_delay=self.ready_delay).start()
        elif self.target_kind == "seldonExperiment":
            self.standin = SeldonExperimentStandIn(self.api_client, namespace=self.namespace,
                                                   models=self.model_for).start()
        else:
            self.standin = KServeStandIn(self.api_client, namespace=self.namespace, url_for=self.url_for).start()

    def create_objects(self) -> None:
        core = client.CoreV1Api(self.api_client)
        with tempfile.TemporaryDirectory() as scratch:
            path, self.dataset_sha256 = write_demo_dataset(Path(scratch), demo_golden_samples(
                self.golden_samples, logo_share=self.golden_logo_share))
            core.create_namespaced_config_map(self.namespace, client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=self.golden_config_map), data={"golden.jsonl": path.read_text()}))
        custom = client.CustomObjectsApi(self.api_client)
        metadata = {"name": self.model_name, "namespace": self.namespace}
        if self.target_kind == "seldonDeployment":
            custom.create_namespaced_custom_object(
                "machinelearning.seldon.io", "v1", self.namespace, "seldondeployments", {
                    "apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment", "metadata": metadata,
                    "spec": {"protocol": "v2", "predictors": [{
                        "name": STABLE_PREDICTOR, "replicas": 1, "traffic": 100,
                        "graph": {"name": self.model_name, "type": "MODEL", "implementation": "MLFLOW_SERVER",
                                  "modelUri": self.storage_uri(self.stable_version)}}]}})
        elif self.target_kind == "seldonExperiment":
            stable_model = self.serving_name(self.stable_version)
            custom.create_namespaced_custom_object(
                "mlops.seldon.io", "v1alpha1", self.namespace, "experiments", {
                    "apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Experiment", "metadata": metadata,
                    "spec": {"default": stable_model, "candidates": [{"name": stable_model, "weight": 100}]}})
        else:
            predictor: dict[str, Any] = {"model": {"modelFormat": {"name": "mlflow"}, "protocolVersion": "v2",
                                                   "storageUri": self.storage_uri(self.stable_version)}}
            if self.logger_url:
                predictor["logger"] = {"mode": "all", "url": self.logger_url}
            custom.create_namespaced_custom_object(
                "serving.kserve.io", "v1beta1", self.namespace, "inferenceservices", {
                    "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": metadata,
                    "spec": {"predictor": predictor}})

    def target(self) -> dict[str, Any]:
        """spec.target of the ModelRollout."""
        if self.target_kind == "seldonDeployment":
            return {"seldonDeployment": {"name": self.model_name, "stablePredictor": STABLE_PREDICTOR,
                                         "canaryPredictor": CANARY_PREDICTOR}}
        if self.target_kind == "seldonExperiment":
            return {"seldonExperiment": {"name": self.model_name}}
        return {"kserve": {"inferenceService": self.model_name}}

    def rollout(self, steps: list[dict[str, Any]] | None = None, **spec_overrides: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "model": {"name": self.model_name, "version": self.candidate_version, "stableAlias": STABLE_ALIAS},
            "registry": {"trackingUri": self.tracking_uri},
            "target": self.target(),
            "goldenDataset": {
                "uri": f"configmap://{self.golden_config_map}/golden.jsonl", "sha256": self.dataset_sha256,
                "thresholds": {"minAccuracy": 0.9, "maxAccuracyDrop": 0.02, "maxDisagreement": 0.05,
                               "classes": {"nsfw": {"maxFalsePositiveRate": 0.02, "minRecall": 0.9}}}},
            "canary": {"steps": steps or [{"setWeight": 10}, {"pause": {"duration": "1s"}},
                                          {"setWeight": 50}, {"pause": {"duration": "1s"}}]},
            "progressDeadline": "2m",
        }
        spec.update(spec_overrides)
        return {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
                "metadata": {"name": self.model_name, "namespace": self.namespace}, "spec": spec}

    def live_rollout(self, prometheus_url: str, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A rollout whose analysis steps judge the nsfw class rate, canary against stable, in Prometheus."""
        manifest = self.rollout(steps=steps or [{"setWeight": 10}, {"analysis": {"duration": "60s"}},
                                                {"setWeight": 50}, {"analysis": {"duration": "15s"}}])
        manifest["spec"]["analysis"] = {
            "prometheus": {"address": prometheus_url}, "interval": "2s", "onInconclusive": "rollback",
            "metrics": [{"name": "nsfw-rate", "proportion": {
                "events": NSFW_PREDICTIONS, "total": ALL_PREDICTIONS, "maxRelativeIncrease": 0.5, "confidence": 0.99,
                "minSamples": 200}}]}
        return manifest

    def setup(self) -> Scenario:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.register()
        self.serve()
        self.create_objects()
        return self

    def stop(self) -> None:
        if self.standin is not None:
            self.standin.stop()
        for server in self.servers.values():
            server.stop()

    def manifest_json(self, **kwargs: Any) -> str:
        return json.dumps(self.rollout(**kwargs))
