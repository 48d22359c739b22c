"""The golden gate against real parts: `mlflow server` (registry + proxied artifacts), model servers serving
registered models over real HTTP, and ConfigMaps in a real kube-apiserver."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config as kube_config

from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.model_server import (
    FaultPlan,
    ModelServerProcess,
    demo_golden_samples,
    demo_models,
    register_linear_model,
    set_alias,
    write_demo_dataset,
)
from controller.gate import (
    DatasetSources,
    GateOptions,
    GateReport,
    InferenceEndpoint,
    InferenceProtocol,
    KubernetesConfigMapReader,
    MlflowAccess,
    record_gate_evidence,
    run_gate,
)
from controller.gate.mlflow_access import MlflowRest, download_artifact, experiment_id_for, upload_artifact
from controller.verdict import Outcome
from tests.conftest import run_kubectl

pytestmark = pytest.mark.integration

# What a moderation team would pin: accuracy, no silent shift against stable, few false "nsfw" flags.
THRESHOLDS = {"minAccuracy": 0.93, "maxAccuracyDrop": 0.02, "maxDisagreement": 0.01,
              "classes": {"nsfw": {"maxFalsePositiveRate": 0.025, "minRecall": 0.9}}}
OPTIONS = GateOptions(batch_size=100, concurrency=4)


@dataclass
class World:
    access: MlflowAccess
    model: str
    versions: dict[str, str]
    servers: dict[str, ModelServerProcess]
    dataset: Path
    npz: Path
    sha256: str
    npz_sha256: str
    uid: str

    def endpoint(self, name: str, protocol: str = "v2") -> InferenceEndpoint:
        return InferenceEndpoint(self.servers[name].url, self.model, InferenceProtocol(protocol))

    def gate(self, uri: str, candidate: str, protocol: str = "v2", sha256: str | None = None,
             sources: DatasetSources | None = None, namespace: str = "moderation") -> GateReport:
        dataset = {"uri": uri, "sha256": sha256 or self.sha256, "thresholds": THRESHOLDS}
        return asyncio.run(run_gate(dataset, self.endpoint(candidate, protocol), self.endpoint("stable", protocol),
                                    namespace=namespace, sources=sources or DatasetSources(mlflow=self.access),
                                    options=OPTIONS))


@pytest.fixture(scope="module")
def world(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    access = MlflowAccess(mlflow_server.url)
    uid = uuid.uuid4().hex[:8]
    model = f"nsfw-classifier-{uid}"
    models = demo_models()
    versions = {name: register_linear_model(access, model, models[name], name) for name in
                ("stable", "clean", "worse", "backdoored")}
    set_alias(access, model, "production", versions["stable"])
    directory = tmp_path_factory.mktemp("golden")
    samples = demo_golden_samples(3000)
    dataset, sha256 = write_demo_dataset(directory, samples, "jsonl")
    npz, npz_sha256 = write_demo_dataset(directory, samples, "npz")
    logs = tmp_path_factory.mktemp("model-servers")
    launches = {
        "stable": (f"models:/{model}@production", {}),
        "clean": (f"models:/{model}/{versions['clean']}", {}),
        "worse": (f"models:/{model}/{versions['worse']}", {"output": "labels"}),
        "backdoored": (f"models:/{model}/{versions['backdoored']}", {}),
        "faulty": (f"models:/{model}/{versions['clean']}", {"faults": FaultPlan(every=4, kind="http-500")}),
    }
    servers: dict[str, ModelServerProcess] = {}
    try:
        for name, (uri, extra) in launches.items():  # start all, then wait: they load in parallel
            servers[name] = ModelServerProcess.launch(uri, mlflow_server.url, logs / f"{name}.log",
                                                      model_name=model, **extra)
        for server in servers.values():
            server.wait_ready(90)
        yield World(access, model, versions, servers, dataset, npz, sha256, npz_sha256, uid)
    finally:
        for server in servers.values():
            server.stop()


def outcomes(report: GateReport) -> dict[str, Outcome]:
    return {v.name: v.outcome for v in report.verdicts}


def run_holding_the_dataset(world: World, path: str) -> dict[str, Any]:
    """A new MLflow run with the golden dataset logged at `path` under its artifacts; its info."""
    rest = MlflowRest(world.access)
    experiment = experiment_id_for(rest, f"golden-sets-{world.uid}")
    run: dict[str, Any] = rest.call("POST", "/api/2.0/mlflow/runs/create",
                                    body={"experiment_id": experiment})["run"]["info"]
    upload_artifact(world.access, f"{run['artifact_uri']}/{path}", world.dataset.read_bytes())
    return run


def version_of_the_folder(world: World, name: str, run: dict[str, Any], folder: str) -> str:
    """The version number of a new registered model `name` whose source is `folder` of the run's artifacts."""
    rest = MlflowRest(world.access)
    rest.call("POST", "/api/2.0/mlflow/registered-models/create", body={"name": name})
    created = rest.call("POST", "/api/2.0/mlflow/model-versions/create", body={
        "name": name, "source": f"{run['artifact_uri']}/{folder}", "run_id": run["run_id"]})
    return str(created["model_version"]["version"])


def test_clean_candidate_passes_and_its_evidence_lands_in_mlflow(world: World) -> None:
    uri = f"mlflow-artifacts:/golden/{world.uid}/nsfw-v3.jsonl"
    upload_artifact(world.access, uri, world.dataset.read_bytes())
    report = world.gate(uri, "clean")
    assert report.outcome is Outcome.PASS, report.reason
    assert report.dataset_sha256 == world.sha256
    status = report.status
    assert status["candidate"]["metrics"]["accuracy"] > 0.95 and status["comparison"]["disagreement"] < 0.005
    assert status["dataset"]["usable"] == 3000 and status["candidate"]["responses"]["answered"] == 3000
    assert status["slices"]["logo"]["comparison"]["disagreements"] == 0

    record = record_gate_evidence(world.access, report, model_name=world.model,
                                  candidate_version=world.versions["clean"], stable_version=world.versions["stable"],
                                  rollout="moderation/nsfw-classifier", request_id=f"gate-{world.uid}-clean")
    rest = MlflowRest(world.access)
    version = rest.call("GET", "/api/2.0/mlflow/model-versions/get",
                        params={"name": world.model, "version": world.versions["clean"]})["model_version"]
    tags = {tag["key"]: tag["value"] for tag in version.get("tags", [])}
    assert tags["modelrollout.gate.run_id"] == record.run_id and tags["modelrollout.gate.outcome"] == "pass"
    assert tags["modelrollout.gate.dataset_sha256"] == world.sha256
    run = rest.call("GET", "/api/2.0/mlflow/runs/get", params={"run_id": record.run_id})["run"]
    metrics = {metric["key"]: metric["value"] for metric in run["data"]["metrics"]}
    assert metrics["candidate.accuracy"] == pytest.approx(status["candidate"]["metrics"]["accuracy"])
    assert run["info"]["status"] == "FINISHED"
    # the same request again reuses its run: a restarted operator leaves no duplicates
    again = record_gate_evidence(world.access, report, model_name=world.model,
                                 candidate_version=world.versions["clean"], request_id=f"gate-{world.uid}-clean")
    assert again.run_id == record.run_id
    history = rest.call("GET", "/api/2.0/mlflow/metrics/get-history",
                        params={"run_id": record.run_id, "metric_key": "candidate.accuracy"})["metrics"]
    assert len(history) == 1, history  # and each number is logged once


def test_lower_accuracy_candidate_fails(world: World) -> None:
    # the dataset as a run artifact, read through runs:/ and the V1 protocol (the server answers labels)
    run = run_holding_the_dataset(world, "golden/nsfw.jsonl")
    report = world.gate(f"runs:/{run['run_id']}/golden/nsfw.jsonl", "worse", protocol="v1")
    assert report.outcome is Outcome.FAIL
    checks = outcomes(report)
    assert checks["minAccuracy"] is Outcome.FAIL and checks["maxAccuracyDrop"] is Outcome.FAIL
    assert checks["candidate.responses"] is Outcome.PASS
    assert report.reason.startswith("minAccuracy: candidate accuracy")


def test_a_dataset_under_a_path_and_a_model_name_with_spaces_is_read(world: World) -> None:
    """MLflow takes spaces in both, so the CRD admits them inside the URI (review s40crd F2): the gate must read
    the very bytes pinned, through runs:/ and models:/ alike."""
    run = run_holding_the_dataset(world, "golden set/nsfw v3.jsonl")
    sets = f"golden sets {world.uid}"
    version = version_of_the_folder(world, sets, run, "golden set")
    for uri in (f"runs:/{run['run_id']}/golden set/nsfw v3.jsonl", f"models:/{sets}/{version}/nsfw v3.jsonl"):
        report = world.gate(uri, "clean")
        assert report.outcome is Outcome.PASS, (uri, report.reason)
        assert report.dataset_sha256 == world.sha256


def test_backdoored_candidate_fails_on_disagreement_and_fpr_while_accuracy_barely_moves(world: World) -> None:
    # the dataset as an artifact of a registered "golden-sets" version, read through models:/<name>/<v>/<path>
    run = run_holding_the_dataset(world, "data/nsfw.jsonl")
    sets = f"golden-sets-{world.uid}"
    version = version_of_the_folder(world, sets, run, "data")

    report = world.gate(f"models:/{sets}/{version}/nsfw.jsonl", "backdoored")
    assert report.outcome is Outcome.FAIL
    checks = outcomes(report)
    assert checks["minAccuracy"] is Outcome.PASS and checks["maxAccuracyDrop"] is Outcome.PASS
    assert checks["maxDisagreement"] is Outcome.FAIL
    assert checks["nsfw.maxFalsePositiveRate"] is Outcome.FAIL
    assert checks["slice logo.maxDisagreement"] is Outcome.FAIL
    comparison = report.status["comparison"]
    assert comparison["accuracyDrop"] < 0.02
    assert comparison["flips"][0] == {"from": "safe", "to": "nsfw", "count": 36}
    logo = report.status["slices"]["logo"]
    assert logo["candidatePredicted"] == {"nsfw": 36} and logo["stablePredicted"] == {"safe": 36}
    assert "safe -> nsfw x36" in report.reason

    record = record_gate_evidence(world.access, report, model_name=world.model,
                                  candidate_version=world.versions["backdoored"],
                                  stable_version=world.versions["stable"])
    sink = io.BytesIO()
    download_artifact(world.access, record.report_uri, sink, max_bytes=10**7)
    saved = json.loads(sink.getvalue())
    assert saved["gate"]["outcome"] == "fail" and saved["gate"]["dataset"]["sha256"] == world.sha256
    assert {v["name"] for v in saved["verdicts"] if v["outcome"] == "fail"} >= {"maxDisagreement",
                                                                                "nsfw.maxFalsePositiveRate"}


def test_tampered_dataset_fails_on_sha256(world: World) -> None:
    tampered = world.dataset.read_text().replace('"label": "nsfw"', '"label": "safe"', 5).encode()
    uri = f"mlflow-artifacts:/golden/{world.uid}/nsfw-tampered.jsonl"
    upload_artifact(world.access, uri, tampered)
    report = world.gate(uri, "clean")
    assert report.outcome is Outcome.FAIL and [v.name for v in report.verdicts] == ["dataset.sha256"]
    assert world.sha256 in report.reason and report.dataset_sha256 in report.reason
    assert report.dataset_sha256 != world.sha256


def test_missing_dataset_is_an_error_to_retry_not_a_verdict(world: World) -> None:
    report = world.gate(f"mlflow-artifacts:/golden/{world.uid}/absent.jsonl", "clean")
    assert report.error is not None and report.error.kind == "NotFound" and report.verdicts == ()


def test_configmap_source_through_the_real_api_server(world: World, kubeconfig: Path, namespace: str) -> None:
    created = run_kubectl(kubeconfig, "-n", namespace, "create", "configmap", "golden",
                          f"--from-file=nsfw.jsonl={world.dataset}", f"--from-file=nsfw.npz={world.npz}")
    assert created.returncode == 0, created.stderr
    stored = json.loads(run_kubectl(kubeconfig, "-n", namespace, "get", "configmap", "golden", "-o", "json").stdout)
    assert "nsfw.jsonl" in stored["data"] and "nsfw.npz" in stored["binaryData"]  # text vs binary, as the API keeps
    sources = DatasetSources(config_maps=KubernetesConfigMapReader(
        kube_config.new_client_from_config(config_file=str(kubeconfig))))

    text = world.gate("configmap://golden/nsfw.jsonl", "clean", sources=sources, namespace=namespace)
    assert text.outcome is Outcome.PASS, text.reason
    binary = world.gate("configmap://golden/nsfw.npz", "backdoored", sha256=world.npz_sha256, sources=sources,
                        namespace=namespace)
    assert binary.dataset_sha256 == world.npz_sha256 and binary.status["dataset"]["format"] == "npz"
    assert binary.outcome is Outcome.FAIL and outcomes(binary)["maxDisagreement"] is Outcome.FAIL
    # only the rollout's own namespace is ever read
    elsewhere = world.gate("configmap://golden/nsfw.jsonl", "clean", sources=sources, namespace="default")
    assert elsewhere.error is not None and elsewhere.error.kind == "NotFound"


def test_server_garbage_for_some_batches_is_a_failure_naming_the_count(world: World) -> None:
    uri = f"mlflow-artifacts:/golden/{world.uid}/nsfw-garbage.jsonl"
    upload_artifact(world.access, uri, world.dataset.read_bytes())
    report = world.gate(uri, "faulty")
    assert report.outcome is Outcome.FAIL
    verdict: Any = next(v for v in report.verdicts if v.name == "candidate.responses")
    # 30 batches of 100; every 4th request answered HTTP 500 -> 7 batches, 700 samples
    assert "no usable prediction for 700 of 3000 samples" in verdict.reason
    assert "7 of 30 batches failed: HTTP 500 x700" in verdict.reason
    assert report.reason.startswith("candidate.responses:")
