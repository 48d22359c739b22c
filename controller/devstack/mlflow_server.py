"""`mlflow server` with SQLite and proxied artifacts, on loopback (optionally with MLflow's basic-auth app)."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Callable
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
    # (username, password) of the admin: serve MLflow's basic-auth app, which refuses anonymous requests.
    admin: tuple[str, str] | None = field(default=None, repr=False)
    processes: list[ManagedProcess] = field(default_factory=list)
    on_start: Callable[[], None] = field(default=lambda: None, repr=False)  # as ControlPlane.on_start

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        auth: list[str] = []
        if self.admin is not None:
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(self._write_auth_config(*self.admin)),
                       MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
            auth = ["--app-name", "basic-auth"]
        process = start("mlflow", [
            mlflow_executable(), "server", "--host", LOOPBACK, "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"), *auth,
        ], self.root / "mlflow.log", env=env)
        self.processes.append(process)
        self.on_start()
        wait_http_ok(f"{self.url}/health", process, timeout)

    def _write_auth_config(self, username: str, password: str) -> Path:
        # MLflow reads the file with configparser: '%' would be interpolated and a line break would add keys.
        if any(char in username + password for char in "%\r\n") or not username or not password:
            raise StackError("the MLflow admin's username and password must be non-empty, without '%' or line breaks")
        path = self.root / "basic_auth.ini"
        # Owner-only from the start: the file holds the admin's password.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as config:
            config.write("[mlflow]\ndefault_permission = READ\n"
                         f"database_uri = sqlite:///{self.root / 'basic_auth.db'}\n"
                         f"admin_username = {username}\nadmin_password = {password}\n"
                         "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        return path

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes.clear()
