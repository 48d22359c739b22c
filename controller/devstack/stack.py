"""The whole local stack: control plane, CRDs, MLflow and Prometheus, with its state in one JSON file."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.devstack.controlplane import REPO_ROOT, ControlPlane
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.processes import ManagedProcess, StackError, pid_alive, stop_pid
from controller.devstack.prometheus_server import PrometheusServer

PROJECT_CRDS = REPO_ROOT / "crds"
# The real serving-system CRDs, read from the shared folder beside the checkout (never copied in).
UPSTREAM_CRDS = Path(os.environ.get("MODELROLLOUT_UPSTREAM_CRDS", REPO_ROOT.parent / "shared" / "upstream-crds"))
FALLBACK_CRDS = REPO_ROOT / "crds" / "devstack"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(os.environ.get("MODELROLLOUT_STATE_DIR", Path(base) / "modelrollout" / "devstack"))


def crd_files() -> list[Path]:
    """The project's CRD, then the upstream serving CRDs when present, else the project's minimal stand-ins."""
    files = sorted(PROJECT_CRDS.glob("*.yaml"))
    upstream = sorted(UPSTREAM_CRDS.glob("*.yaml")) if UPSTREAM_CRDS.is_dir() else []
    return files + (upstream or sorted(FALLBACK_CRDS.glob("*.yaml")))


def kubectl(kubeconfig: Path, *args: str, input_text: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], input=input_text,
                            capture_output=True, text=True, check=False, timeout=timeout)
    if check and result.returncode != 0:
        raise StackError(f"kubectl {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def install_crds(kubeconfig: Path) -> list[str]:
    names = []
    for path in crd_files():
        kubectl(kubeconfig, "apply", "--server-side", "--field-manager=modelrollout-devstack", "-f", str(path))
        names.append(kubectl(kubeconfig, "get", "-f", str(path), "-o", "name").stdout.strip())
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", *names)
    return names


@dataclass
class Stack:
    root: Path = field(default_factory=default_state_dir)
    control_plane: ControlPlane | None = None
    mlflow: MlflowServer | None = None
    prometheus: PrometheusServer | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def up(self, with_mlflow: bool = True, with_prometheus: bool = True) -> None:
        if self.state_file.exists() and any(pid_alive(p) for p in self._recorded_pids()):
            raise StackError(f"a stack is already running from {self.root}: run `modelrollout dev down` first")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._timed("controlPlane", self._start_control_plane)
            if with_mlflow:
                self.mlflow = MlflowServer(self.root / "mlflow")
                self._timed("mlflow", self.mlflow.start)
            if with_prometheus:
                self.prometheus = PrometheusServer(self.root / "prometheus")
                self._timed("prometheus", self.prometheus.start)
        except BaseException:
            self.down()
            raise
        self._save()

    def _start_control_plane(self) -> None:
        self.control_plane = ControlPlane(self.root / "controlplane")
        self.control_plane.start()
        install_crds(self.control_plane.admin_kubeconfig)

    def _timed(self, name: str, step: Any) -> None:
        started = time.monotonic()
        step()
        self.timings[name] = round(time.monotonic() - started, 2)

    def processes(self) -> list[ManagedProcess]:
        servers = [s for s in (self.prometheus, self.mlflow, self.control_plane) if s is not None]
        return [p for server in servers for p in server.processes]

    def environment(self) -> dict[str, str]:
        env = {}
        if self.control_plane:
            env["KUBECONFIG"] = str(self.control_plane.admin_kubeconfig)
        if self.mlflow:
            env["MLFLOW_TRACKING_URI"] = self.mlflow.url
        if self.prometheus:
            env["PROMETHEUS_URL"] = self.prometheus.url
        return env

    def _save(self) -> None:
        state = {"env": self.environment(), "timings": self.timings,
                 "processes": [{"name": p.name, "pid": p.pid, "log": str(p.log)} for p in self.processes()]}
        self.state_file.write_text(json.dumps(state, indent=2))

    def _recorded_pids(self) -> list[int]:
        try:
            return [int(p["pid"]) for p in json.loads(self.state_file.read_text())["processes"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def down(self) -> list[int]:
        """Stop what this object started and what the state file records, by PID. Returns the PIDs stopped."""
        stopped = []
        for process in self.processes():
            process.stop()
            stopped.append(process.pid)
        for pid in self._recorded_pids():
            if pid not in stopped:
                stop_pid(pid)
                stopped.append(pid)
        self.state_file.unlink(missing_ok=True)
        return stopped


def load_state(root: Path | None = None) -> dict[str, Any]:
    state_file = (root or default_state_dir()) / "state.json"
    if not state_file.exists():
        raise StackError(f"no local stack is running (no {state_file}): run `modelrollout dev up`")
    return json.loads(state_file.read_text())
