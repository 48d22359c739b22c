"""The real kube-apiserver stops under a running operator, then starts again (review s30runtime LOW 2): liveness stays
200 throughout, and its kubeApi entry and /metrics say that the API server cannot be reached, and when it is back.

A control plane of its own: stopping the session's API server would stop every other test's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.devstack.controlplane import ControlPlane
from controller.devstack.processes import free_port, start, wait_http_ok
from controller.devstack.stack import install_crds
from tests.conftest import run_kubectl
from tests.integration.operator_process import OperatorProcess, wait_for

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
LAST_SUCCESS = "modelrollout_kube_api_last_success_timestamp_seconds"


class ProbedOperator(OperatorProcess):
    """The operator with its liveness endpoint and /metrics on known loopback ports."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        super().__init__(kubeconfig, log)
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        self.metrics = f"http://127.0.0.1:{free_port()}/metrics"

    def start(self) -> ProbedOperator:
        with open(self.log, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli.main", "operator", "run", "--kubeconfig", str(self.kubeconfig),
                 "--metrics-port", self.metrics.rsplit(":", 1)[1].split("/")[0], "--liveness", self.liveness,
                 "--gate-hosts", "127.0.0.1", "--scrape-interval", "1s"],
                stdout=log_file, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return self

    def health(self) -> tuple[int, dict[str, Any]]:
        with urllib.request.urlopen(self.liveness, timeout=5) as answer:  # noqa: S310 - loopback URL we built
            return answer.status, json.loads(answer.read())

    def series(self) -> dict[str, float]:
        with urllib.request.urlopen(self.metrics, timeout=5) as answer:  # noqa: S310
            text = answer.read().decode()
        return {m[1]: float(m[2]) for m in re.finditer(r"^(modelrollout_kube_api_\S+) (\S+)$", text, re.M)}


@pytest.fixture()
def own_control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "controlplane")
    try:
        plane.start()
        install_crds(plane.admin_kubeconfig)
        yield plane
    finally:
        plane.stop()


def until(what: Callable[[], Any], timeout: float, why: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"not within {timeout:.0f}s: {why}")


@pytest.mark.integration
def test_probe_and_metrics_say_the_api_server_is_down_and_liveness_stays_200(
        own_control_plane: ControlPlane, tmp_path: Path) -> None:
    kubeconfig = own_control_plane.admin_kubeconfig
    assert run_kubectl(kubeconfig, "create", "namespace", "outage").returncode == 0
    # No registry, no InferenceService: Pending, and looked at again and again (each time a read and a write).
    applied = run_kubectl(kubeconfig, "apply", "-n", "outage", "-f", "-",
                          input_text=json.dumps(yaml.safe_load(SAMPLE.read_text())))
    assert applied.returncode == 0, applied.stderr
    log = tmp_path / "operator.log"
    seen: list[tuple[float, int, dict[str, Any]]] = []  # every liveness answer during the outage

    def probe() -> dict[str, Any]:
        code, body = operator.health()
        seen.append((time.time(), code, body))
        return body.get("kubeApi") or {}

    with ProbedOperator(kubeconfig, log) as operator:
        wait_for(kubeconfig, "outage", "nsfw-classifier",
                 lambda obj: (obj.get("status") or {}).get("observedGeneration") == 1, log=log)
        until(lambda: probe().get("lastSuccessAgeSeconds") is not None, 30, "a success on the probe")
        assert operator.series()[LAST_SUCCESS] > 0

        apiserver = own_control_plane.processes[-1]
        assert apiserver.name == "kube-apiserver"
        argv = [a.decode() for a in Path(f"/proc/{apiserver.pid}/cmdline").read_bytes().split(b"\0")[:-1]]
        apiserver.stop()
        stopped = time.time()

        down = until(lambda: (p := probe()).get("failuresSinceLastSuccess") and p, 60, "a failure on the probe")
        assert down["lastFailure"]["kind"] == "connect", down
        assert down["lastSuccessAgeSeconds"] >= time.time() - stopped - 10, down  # the probe caches 10 s
        series = operator.series()
        assert series[LAST_SUCCESS] <= stopped, series
        assert series['modelrollout_kube_api_failures_total{kind="connect"}'] >= 1, series
        time.sleep(12)  # the outage goes on: liveness still 200, the last success only older
        later = probe()
        assert later["lastSuccessAgeSeconds"] > down["lastSuccessAgeSeconds"], (down, later)
        assert all(code == 200 for _, code, _ in seen), seen
        token = own_control_plane.tokens["modelrollout-admin"]
        assert not any(token in json.dumps(body) or own_control_plane.url in json.dumps(body) for *_, body in seen)

        restarted = start("kube-apiserver", argv, apiserver.log)
        own_control_plane.processes[-1] = restarted
        wait_http_ok(f"{own_control_plane.url}/readyz", restarted, 90, token=token, insecure_tls=True)
        back = time.time()
        until(lambda: probe().get("failuresSinceLastSuccess") == 0, 90, "a success again on the probe")
        assert operator.series()[LAST_SUCCESS] >= back
        assert operator.proc is not None and operator.proc.poll() is None
    assert all(code == 200 for _, code, _ in seen), seen
    text = log.read_text()
    assert "Activity 'kubeApi' failed" not in text
    assert "Activity 'kubeApi' succeeded" not in text  # not one line per probe: failures only
    print("during the outage:", json.dumps(down), "\nlater:", json.dumps(later))
