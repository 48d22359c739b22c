"""Each `dev up` starts MLflow and Prometheus empty, as the control plane (README: "the stack's MLflow starts
empty"). Was: a second `dev up` in the same state dir kept the registered models (the demo's versions climbed, the
example no longer ended as README says), Prometheus's series and a previous demo's scrape targets."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from controller.devstack.stack import Stack

pytestmark = pytest.mark.integration
OLD_TARGET = "127.0.0.1:9"  # discard: nothing listens, so each scrape records up == 0


def series_count(prometheus_url: str, query: str) -> int:
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the stack's Prometheus, loopback
        return len(json.load(answer)["data"]["result"])


def test_a_second_dev_up_in_the_same_state_dir_starts_mlflow_and_prometheus_empty(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    old_series = f'up{{instance="{OLD_TARGET}"}}[1h]'
    first = Stack(root=root)
    try:
        MlflowClient(first.start_mlflow().url).create_registered_model("left-over")
        prometheus = first.start_prometheus()
        prometheus.add_scrape_target("demo-exporter", OLD_TARGET)
        deadline = time.monotonic() + 60
        while series_count(prometheus.url, old_series) == 0:  # scraped at least once
            assert time.monotonic() < deadline, "the first Prometheus never scraped its target"
            time.sleep(0.5)
    finally:
        first.down()

    second = Stack(root=root)
    try:
        models = MlflowClient(second.start_mlflow().url).search_registered_models()
        assert [m.name for m in models] == []
        prometheus = second.start_prometheus()
        assert list(prometheus.targets_dir.glob("*.json")) == []
        assert series_count(prometheus.url, old_series) == 0
    finally:
        second.down()
