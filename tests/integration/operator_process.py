"""Run `modelrollout operator run` as a real process, and kill it like a node would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import run_kubectl


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path, extra_env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.env = {**os.environ, **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        with open(self.log, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli.main", "operator", "run", "--kubeconfig", str(self.kubeconfig),
                 # The local stack's model servers listen on loopback; a cluster admin allows such hosts the same way.
                 "--metrics-port", "0", "--gate-hosts", "127.0.0.1",
                 # The stack's Prometheus scrapes every 1s: so counts are scaled and the gate's wait timed.
                 "--scrape-interval", "1s"],
                stdout=log_file, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a node dies."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def get_rollout(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    result = run_kubectl(kubeconfig, "get", "mro", name, "-n", namespace, "-o", "json", "--show-managed-fields")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(kubeconfig: Path, namespace: str, name: str, predicate: Callable[[dict[str, Any]], bool],
             timeout: float = 60.0, log: Path | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = get_rollout(kubeconfig, namespace, name)
        if predicate(obj):
            return obj
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out; last status: {json.dumps(obj.get('status'), indent=1)}\n{tail}")


def send_command(kubeconfig: Path, namespace: str, name: str, action: str, actor: str, command_id: str,
                 full: bool = False, extra_annotations: dict[str, str] | None = None) -> str:
    """What on-call runs: the command annotation (never the spec), so Argo CD sees no drift.

    Returns the annotation's value, so a test can write the very same value again.
    """
    body: dict[str, Any] = {"action": action, "id": command_id, "actor": actor}
    if full:
        body["full"] = True
    value = json.dumps(body, sort_keys=True)
    extra = [f"{key}={text}" for key, text in (extra_annotations or {}).items()]
    result = run_kubectl(kubeconfig, "annotate", "--overwrite", "mro", name, "-n", namespace,
                         f"modelrollout.io/command={value}", *extra)
    assert result.returncode == 0, result.stderr
    return value
