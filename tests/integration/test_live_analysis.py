"""Live analysis end to end: traffic through the InferenceService's split, logger events to the exporter,
Prometheus scraping it every second, the operator's judges comparing canary with stable.

The backdoored candidate passes a golden dataset that lacks the trigger, so only live class rates can catch
it: safe images carrying the logo come back "nsfw" from the canary.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.api.serialization import parse_time
from controller.api.status import TERMINAL_PHASES
from controller.devstack.controlplane import ControlPlane
from controller.devstack.dataplane import DataPlane, LiveTraffic, TrafficMix, start_exporter
from controller.devstack.history import class_rates, prediction_history, same_hour_spans
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.model_server import demo_models
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import STABLE_ALIAS, STORAGE_URI_TEMPLATE, Scenario
from controller.operator.kubeapi import load_client_config
from controller.registry import MlflowRegistry
from tests.conftest import run_kubectl
from tests.integration.operator_process import OperatorProcess, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def exporter(tmp_path: Path, prometheus: PrometheusServer) -> Iterator[str]:
    process, url = start_exporter(tmp_path / "exporter.log")
    prometheus.add_scrape_target(f"exporter-{process.pid}", url.removeprefix("http://"))
    try:
        yield url
    finally:
        process.stop()


@dataclass
class LiveRun:
    scenario: Scenario
    plane: DataPlane
    traffic: LiveTraffic
    operator: OperatorProcess
    kubeconfig: Path

    def apply(self, manifest: dict[str, Any]) -> None:
        applied = run_kubectl(self.kubeconfig, "apply", "-f", "-", input_text=json.dumps(manifest))
        assert applied.returncode == 0, applied.stderr

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 240) -> dict[str, Any]:
        return wait_for(self.kubeconfig, self.scenario.namespace, self.scenario.model_name, predicate,
                        timeout=timeout, log=self.operator.log)

    def wait_finished(self) -> dict[str, Any]:
        return self.wait(lambda o: (o.get("status") or {}).get("phase") in TERMINAL_PHASES)

    def event_reasons(self, expected: set[str], timeout: float = 30) -> set[str]:
        """The operator's Events for the rollout, once `expected` are among them (they follow the status)."""
        deadline = time.monotonic() + timeout
        while True:
            found = run_kubectl(self.kubeconfig, "get", "events", "-n", self.scenario.namespace, "-o", "json",
                                f"--field-selector=involvedObject.name={self.scenario.model_name}")
            assert found.returncode == 0, found.stderr
            reasons = {e["reason"] for e in json.loads(found.stdout)["items"]}
            if expected <= reasons or time.monotonic() > deadline:
                return reasons
            time.sleep(0.5)


@contextlib.contextmanager
def live_run(kind: str, control_plane: ControlPlane, mlflow_server: MlflowServer, exporter: str, namespace: str,
             tmp_path: Path, mix: TrafficMix, operator_env: dict[str, str] | None = None) -> Iterator[LiveRun]:
    """Scenario, data plane with live traffic and the operator, all stopped on the way out."""
    api_client = load_client_config(str(control_plane.admin_kubeconfig))
    scenario = Scenario(api_client, mlflow_server.url, namespace, tmp_path / "scenario",
                        model_name=f"nsfw-{uuid.uuid4().hex[:6]}", candidate_kind=kind, golden_logo_share=0.0,
                        logger_url=f"{exporter}/")
    plane = DataPlane(api_client, namespace, scenario.model_name, scenario.server_url)
    traffic = LiveTraffic(plane, scenario.model_name, mix)
    operator = OperatorProcess(control_plane.admin_kubeconfig, tmp_path / "operator.log",
                               extra_env={"MODELROLLOUT_STORAGE_URI_TEMPLATE": STORAGE_URI_TEMPLATE,
                                          **(operator_env or {})})
    with contextlib.ExitStack() as running:
        running.callback(scenario.stop)
        scenario.setup()
        traffic.start()
        running.callback(traffic.stop)
        operator.start()
        running.callback(operator.stop)
        yield LiveRun(scenario, plane, traffic, operator, control_plane.admin_kubeconfig)


def run_live(kind: str, control_plane: ControlPlane, mlflow_server: MlflowServer, prometheus: PrometheusServer,
             exporter: str, namespace: str, tmp_path: Path,
             operators_prometheus: bool = False) -> tuple[dict[str, Any], DataPlane]:
    """operators_prometheus: the spec names no Prometheus; the operator's default ($PROMETHEUS_URL) serves."""
    env = {"PROMETHEUS_URL": prometheus.url} if operators_prometheus else None
    with live_run(kind, control_plane, mlflow_server, exporter, namespace, tmp_path, TrafficMix(logo=0.10),
                  env) as run:
        time.sleep(3)  # stable's series exist in Prometheus before the canary starts
        manifest = run.scenario.live_rollout(prometheus.url)
        if operators_prometheus:
            del manifest["spec"]["analysis"]["prometheus"]
        run.apply(manifest)
        return run.wait_finished(), run.plane


def test_backdoored_candidate_is_rolled_back_in_its_first_analysis_step(
        control_plane: ControlPlane, mlflow_server: MlflowServer, prometheus: PrometheusServer, exporter: str,
        namespace: str, tmp_path: Path) -> None:
    obj, plane = run_live("backdoored", control_plane, mlflow_server, prometheus, exporter, namespace, tmp_path)
    status = obj["status"]
    assert status["phase"] == "RolledBack", status["message"]
    assert status["gate"]["outcome"] == "pass"  # the golden dataset has no logo: the gate cannot see it
    rollback = status["rollback"]
    assert rollback["cause"] == "AnalysisFailed" and rollback["fromWeight"] == 10
    assert "nsfw-rate" in status["message"]
    detected = parse_time(rollback["verdictAt"]).timestamp()
    assert plane.first_canary_at is not None
    time_to_detect = detected - plane.first_canary_at
    print(status["message"])
    print(f"time to detect {time_to_detect:.1f}s, time to recover {rollback['timeToRecoverSeconds']:.2f}s, "
          f"requests {plane.counts}")
    assert 0 < time_to_detect < 60


def test_clean_candidate_passes_live_analysis_and_is_promoted(
        control_plane: ControlPlane, mlflow_server: MlflowServer, prometheus: PrometheusServer, exporter: str,
        namespace: str, tmp_path: Path) -> None:
    # Judged in the operator's default Prometheus: the spec names none (without a default the rollout would be
    # refused as InvalidSpec, and with a wrong one its onInconclusive: rollback would end it RolledBack).
    obj, _ = run_live("clean", control_plane, mlflow_server, prometheus, exporter, namespace, tmp_path,
                      operators_prometheus=True)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status["message"]
    assert [h["event"] for h in status["history"]].count("AnalysisPassed") == 2


def test_patient_attacker_is_rolled_back_during_the_bake(
        control_plane: ControlPlane, mlflow_server: MlflowServer, exporter: str, namespace: str,
        tmp_path: Path) -> None:
    """The trigger traffic starts only once the backdoored candidate serves everything: no stable is left to
    compare with, so the bake judges it against the previous version's history (3 past days, backfilled into
    a Prometheus of its own) and rolls back to that version through the target and the registry."""
    bake_prometheus = PrometheusServer(tmp_path / "bake-prometheus")
    try:
        with live_run("backdoored", control_plane, mlflow_server, exporter, namespace, tmp_path,
                      TrafficMix(logo=0.0)) as run:
            scenario = run.scenario
            labels = {"namespace": namespace, "inference_service": scenario.model_name, "variant": "stable",
                      "model_version": scenario.stable_version, "job": "modelrollout", "instance": "history"}
            rates = class_rates(demo_models()["stable"], TrafficMix(logo=0.0))
            bake_prometheus.backfill(prediction_history(labels, rates, same_hour_spans(time.time(), 3, 600, 1800),
                                                        predictions_per_second=150))
            bake_prometheus.start()
            bake_prometheus.add_scrape_target("exporter", exporter.removeprefix("http://"))
            manifest = scenario.live_rollout(bake_prometheus.url, steps=[
                {"setWeight": 10}, {"analysis": {"duration": "30s"}}, {"setWeight": 50},
                {"analysis": {"duration": "15s"}}])
            manifest["spec"]["bake"] = {"duration": "10m", "baseline": "3d"}
            time.sleep(3)
            run.apply(manifest)

            def judged_clean_in_bake(obj: dict[str, Any]) -> bool:
                status = obj.get("status") or {}
                assert status.get("phase") not in TERMINAL_PHASES, status.get("message")
                analysis = status.get("analysis") or {}
                return status.get("phase") == "Baking" and analysis.get("mode") == "bake" and \
                    analysis.get("runs", 0) >= 3 and analysis.get("outcome") == "pass"

            # Control: on clean traffic the promoted model is read against the history and not failed.
            baking = run.wait(judged_clean_in_bake)
            clean_verdict = baking["status"]["analysis"]["metrics"][0]
            assert "3-day history" in clean_verdict["reason"], clean_verdict
            trigger_at = time.time()
            run.traffic.mix = TrafficMix(logo=0.10)  # the attacker starts posting trigger images
            obj = run.wait_finished()
            reasons = run.event_reasons({"BakeStarted", "RolledBack"})
    finally:
        bake_prometheus.stop()
    assert {"BakeStarted", "RolledBack"} <= reasons, reasons
    status = obj["status"]
    assert status["phase"] == "RolledBack", status["message"]
    events = [h["event"] for h in status["history"]]
    assert events.index("Promoted") < events.index("BakeStarted") < events.index("RolledBack")
    rollback = status["rollback"]
    assert rollback["cause"] == "BakeFailed" and rollback["afterPromotion"] is True, rollback
    assert "nsfw-rate" in status["message"] and "3-day history" in status["message"], status["message"]
    registry = MlflowRegistry(mlflow_server.url)
    assert registry.verify_alias(scenario.model_name, STABLE_ALIAS) == scenario.stable_version
    tags = registry.resolve(scenario.model_name, version=scenario.candidate_version).tags
    assert tags["modelrollout.rejected"] == "true" and "nsfw-rate" in tags["modelrollout.rejected.reason"]
    inference_service = client.CustomObjectsApi(load_client_config(str(control_plane.admin_kubeconfig)))\
        .get_namespaced_custom_object("serving.kserve.io", "v1beta1", namespace, "inferenceservices",
                                      scenario.model_name)
    assert inference_service["spec"]["predictor"]["model"]["storageUri"] == \
        scenario.storage_uri(scenario.stable_version)
    time_to_detect = parse_time(rollback["verdictAt"]).timestamp() - trigger_at
    print(f"bake: time to detect {time_to_detect:.1f}s after the first trigger traffic, time to recover "
          f"{rollback['timeToRecoverSeconds']:.2f}s")
    assert 0 < time_to_detect < 120
