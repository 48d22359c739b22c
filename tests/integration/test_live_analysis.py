"""Live analysis end to end: traffic through the InferenceService's split, logger events to the exporter,
Prometheus scraping it every second, the operator's judges comparing canary with stable.

The backdoored candidate passes a golden dataset that lacks the trigger, so only live class rates can catch
it: safe images carrying the logo come back "nsfw" from the canary.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from controller.devstack.controlplane import ControlPlane
from controller.devstack.dataplane import DataPlane, TrafficMix, generate_traffic
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.processes import LOOPBACK, free_port, wait_http_ok
from controller.devstack.processes import start as start_process
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import STORAGE_URI_TEMPLATE, Scenario
from controller.operator.kubeapi import load_client_config
from tests.conftest import run_kubectl
from tests.integration.operator_process import OperatorProcess, wait_for

pytestmark = pytest.mark.integration
NSFW = 'sum(increase(modelrollout_predictions_total{class="nsfw", {{selector}}}[{{window}}]))'
ALL = "sum(increase(modelrollout_predictions_total{{{selector}}}[{{window}}]))"


class LiveTraffic:
    """Data plane + traffic generator on their own event loop thread."""

    def __init__(self, plane: DataPlane, model: str, mix: TrafficMix) -> None:
        self.plane = plane
        self.model = model
        self.mix = mix
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> LiveTraffic:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.plane.start(), self.loop).result(30)
        self.generator = asyncio.run_coroutine_threadsafe(
            generate_traffic(self.plane.url, self.model, lambda: self.mix, requests_per_second=15, batch=10,
                             stop=self.stop_event), self.loop)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.generator.result(30)
        asyncio.run_coroutine_threadsafe(self.plane.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def exporter(tmp_path: Path, prometheus: PrometheusServer) -> Iterator[str]:
    port = free_port()
    process = start_process("exporter", [sys.executable, "-m", "controller.cli.main", "exporter", "run", "--port",
                                         str(port), "--class-names", "safe,suggestive,nsfw"], tmp_path / "exporter.log")
    wait_http_ok(f"http://{LOOPBACK}:{port}/healthz", process, 30)
    prometheus.add_scrape_target(f"exporter-{port}", f"{LOOPBACK}:{port}")
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        process.stop()


def live_rollout(scenario: Scenario, prometheus_url: str) -> dict[str, Any]:
    manifest = scenario.rollout(steps=[{"setWeight": 10}, {"analysis": {"duration": "60s"}},
                                       {"setWeight": 50}, {"analysis": {"duration": "15s"}}])
    manifest["spec"]["analysis"] = {
        "prometheus": {"address": prometheus_url}, "interval": "2s", "onInconclusive": "rollback",
        "metrics": [{"name": "nsfw-rate", "proportion": {"events": NSFW, "total": ALL, "maxRelativeIncrease": 0.5,
                                                         "confidence": 0.99, "minSamples": 200}}]}
    return manifest


def run_live(kind: str, control_plane: ControlPlane, mlflow_server: MlflowServer, prometheus: PrometheusServer,
             exporter: str, namespace: str, tmp_path: Path) -> tuple[dict[str, Any], DataPlane]:
    api_client = load_client_config(str(control_plane.admin_kubeconfig))
    scenario = Scenario(api_client, mlflow_server.url, namespace, tmp_path / "scenario",
                        model_name=f"nsfw-{uuid.uuid4().hex[:6]}", candidate_kind=kind, golden_logo_share=0.0)
    scenario.setup()
    plane = DataPlane(api_client, namespace, scenario.model_name, exporter,
                      lambda uri: scenario.servers[uri].url if uri in scenario.servers else None)
    traffic = LiveTraffic(plane, scenario.model_name, TrafficMix(logo=0.10)).start()
    kubeconfig = control_plane.admin_kubeconfig
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log",
                               extra_env={"MODELROLLOUT_STORAGE_URI_TEMPLATE": STORAGE_URI_TEMPLATE}).start()
    try:
        time.sleep(3)  # stable's series exist in Prometheus before the canary starts
        applied = run_kubectl(kubeconfig, "apply", "-f", "-",
                              input_text=json.dumps(live_rollout(scenario, prometheus.url)))
        assert applied.returncode == 0, applied.stderr
        obj = wait_for(kubeconfig, namespace, scenario.model_name,
                       lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "RolledBack", "Failed"),
                       timeout=240, log=operator.log)
    finally:
        operator.stop()
        traffic.stop()
        scenario.stop()
    return obj, plane


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
    detected = datetime.fromisoformat(rollback["verdictAt"].replace("Z", "+00:00")).timestamp()
    assert plane.first_canary_at is not None
    time_to_detect = detected - plane.first_canary_at
    print(f"time to detect {time_to_detect:.1f}s, time to recover {rollback['timeToRecoverSeconds']:.2f}s, "
          f"requests {plane.counts}")
    assert 0 < time_to_detect < 60


def test_clean_candidate_passes_live_analysis_and_is_promoted(
        control_plane: ControlPlane, mlflow_server: MlflowServer, prometheus: PrometheusServer, exporter: str,
        namespace: str, tmp_path: Path) -> None:
    obj, _ = run_live("clean", control_plane, mlflow_server, prometheus, exporter, namespace, tmp_path)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status["message"]
    assert [h["event"] for h in status["history"]].count("AnalysisPassed") == 2
