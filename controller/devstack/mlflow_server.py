"""`mlflow server` with SQLite and proxied artifacts, on loopback."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from controller.devstack.processes import LOOPBACK, ManagedProcess, StackError, free_port, start, wait_http_ok


def mlflow_executable() -> str:
    beside_python = Path(sys.executable).with_name("mlflow")
    found = str(beside_python) if beside_python.is_file() else shutil.which("mlflow")
    if not found:
        raise StackError("mlflow server not found: install the full package (pip install 'modelrollout[server]')")
    return found


@dataclass
class MlflowServer:
    root: Path
    port: int = 0
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        process = start("mlflow", [
            mlflow_executable(), "server", "--host", LOOPBACK, "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
        ], self.root / "mlflow.log", env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        self.processes.append(process)
        wait_http_ok(f"{self.url}/health", process, timeout)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes.clear()
