"""Debian's Prometheus started by the stack itself: own config, own data dir, loopback only, 1 s scrapes."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from controller.devstack.processes import LOOPBACK, ManagedProcess, StackError, free_port, start, wait_http_ok


@dataclass
class PrometheusServer:
    root: Path
    port: int = 0
    scrape_interval: str = "1s"
    processes: list[ManagedProcess] = field(default_factory=list)
    on_start: Callable[[], None] = field(default=lambda: None, repr=False)  # as ControlPlane.on_start

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def targets_dir(self) -> Path:
        return self.root / "targets"

    def start(self, timeout: float = 60.0) -> None:
        binary = shutil.which("prometheus")
        if not binary:
            raise StackError("prometheus not found: apt-get install --no-install-recommends prometheus")
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{
                "job_name": "modelrollout",
                "file_sd_configs": [{"files": [str(self.targets_dir / "*.json")], "refresh_interval": "1s"}],
            }],
        }
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        process = start("prometheus", [
            binary, f"--config.file={self.root / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.root / 'data'}", f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-lifecycle", "--web.enable-remote-write-receiver", "--log.level=warn",
        ], self.root / "prometheus.log")
        self.processes.append(process)
        self.on_start()
        wait_http_ok(f"{self.url}/-/ready", process, timeout)

    def backfill(self, openmetrics: str) -> None:
        """Write past samples into the data dir as TSDB blocks (promtool's backfill), before start().

        A running Prometheus would only notice new blocks at its next reload (up to a minute later).
        """
        if self.processes:
            raise StackError("backfill before starting Prometheus: a running one picks new blocks up only later")
        promtool = shutil.which("promtool")
        if not promtool:
            raise StackError("promtool not found: it ships with Debian's prometheus package")
        self.root.mkdir(parents=True, exist_ok=True)
        source = self.root / "backfill.om"
        source.write_text(openmetrics)
        try:
            done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source),
                                   str(self.root / "data")], capture_output=True, text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"promtool backfill did not finish within {exc.timeout:g}s") from None
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise StackError(f"promtool backfill failed (exit {done.returncode}): {last}")

    def add_scrape_target(self, name: str, address: str, labels: dict[str, str] | None = None) -> None:
        """Scrape http://address/metrics from now on (file service discovery, picked up within a second)."""
        entry = [{"targets": [address], "labels": labels or {}}]
        tmp = self.targets_dir / f".{name}.json.tmp"
        tmp.write_text(json.dumps(entry))
        tmp.replace(self.targets_dir / f"{name}.json")

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes.clear()
