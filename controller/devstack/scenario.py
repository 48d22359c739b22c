"""The content-moderation scenario on the local stack, shared by the demo and the end-to-end tests.

It registers a stable model and a candidate in MLflow, serves each registered version from a real model
server, lets the KServe stand-in route each revision's tag URL to the server of its storage URI, pins a
golden dataset in a ConfigMap, and writes the ModelRollout that rolls the candidate out.
"""

from __future__ import annotations

import json
import tempfile
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
from controller.gate.mlflow_access import MlflowAccess

STABLE_ALIAS = "production"
# What the operator writes as a revision's storageUri, and what the model servers load.
STORAGE_URI_TEMPLATE = "models:/{name}/{version}"


@dataclass
class Scenario:
    """One model on one InferenceService in one namespace; `candidate_kind` picks the demo model."""

    api_client: client.ApiClient
    tracking_uri: str
    namespace: str
    workdir: Path
    model_name: str = "nsfw-classifier"
    candidate_kind: str = "clean"  # clean | worse | backdoored
    golden_samples: int = 900
    servers: dict[str, ModelServerProcess] = field(default_factory=dict)
    standin: KServeStandIn | None = None
    stable_version: str = ""
    candidate_version: str = ""
    dataset_sha256: str = ""

    @property
    def access(self) -> MlflowAccess:
        return MlflowAccess(self.tracking_uri)

    @property
    def golden_config_map(self) -> str:
        return f"{self.model_name}-golden"

    def storage_uri(self, version: str) -> str:
        return STORAGE_URI_TEMPLATE.format(name=self.model_name, version=version)

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
            server.wait_ready()
        self.standin = KServeStandIn(self.api_client, namespace=self.namespace, url_for=self.url_for).start()

    def create_objects(self) -> None:
        core = client.CoreV1Api(self.api_client)
        with tempfile.TemporaryDirectory() as scratch:
            path, self.dataset_sha256 = write_demo_dataset(Path(scratch), demo_golden_samples(self.golden_samples))
            core.create_namespaced_config_map(self.namespace, client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=self.golden_config_map), data={"golden.jsonl": path.read_text()}))
        client.CustomObjectsApi(self.api_client).create_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", self.namespace, "inferenceservices", {
                "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                "metadata": {"name": self.model_name, "namespace": self.namespace},
                "spec": {"predictor": {"model": {"modelFormat": {"name": "mlflow"},
                                                 "protocolVersion": "v2",
                                                 "storageUri": self.storage_uri(self.stable_version)}}}})

    def rollout(self, steps: list[dict[str, Any]] | None = None, **spec_overrides: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "model": {"name": self.model_name, "version": self.candidate_version, "stableAlias": STABLE_ALIAS},
            "registry": {"trackingUri": self.tracking_uri},
            "target": {"kserve": {"inferenceService": self.model_name}},
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
