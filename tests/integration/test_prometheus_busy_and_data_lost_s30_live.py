"""A real Prometheus that is busy, and one that lost its data mid-window (review s30judges findings 2 and 1).

Busy: Prometheus' own query timeout (HTTP 503, errorType timeout) is a moment's outage, as a timeout of the
provider's own is, not a query it refused. Data lost: restarted without its data dir (an emptyDir), it counts only
what came since, and the runner passes a canary on that part of the window as if it were all of it; the engine
(decide._data_lost) sees the window's counts fall and makes the run DataLost, never a pass.
"""

from __future__ import annotations

import importlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import requests
import yaml
from test_exporter_prometheus import post_response, wait_until_scraped

from controller.analysis.prometheus import PrometheusProvider, QueryProblem
from controller.analysis.queries import QueryScope, render
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric, ThresholdMetric
from controller.devstack.dataplane import start_exporter
from controller.devstack.processes import LOOPBACK, ManagedProcess, free_port, start, wait_http_ok
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import ALL_PREDICTIONS, NSFW_PREDICTIONS
from controller.verdict import MEASUREMENT_OUTAGES, Outcome, Verdict

# The module (controller.engine exports its decide() function under the same name): the rules are read late, so
# that code without them fails on what it decides, not on an import.
rules = importlib.import_module("controller.engine.decide")

# Holds Prometheus' one query slot for seconds (its subquery is not cut by --query.timeout).
HEAVY = "count_over_time(vector(1)[30d:1s])"
T = TypeVar("T")


@pytest.fixture
def busy_prometheus(tmp_path: Path) -> Iterator[str]:
    """A Prometheus that runs one query at a time, waits 1 s for its slot, and is kept busy by heavy queries."""
    root = tmp_path / "busy"
    root.mkdir()
    (root / "prometheus.yml").write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}}))
    port = free_port()
    process: ManagedProcess = start("prometheus-busy", [
        shutil.which("prometheus") or "prometheus", f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address={LOOPBACK}:{port}",
        "--query.max-concurrency=1", "--query.timeout=1s", "--log.level=error"], root / "prometheus.log")
    stop = threading.Event()

    def hog() -> None:
        while not stop.is_set():
            try:
                requests.post(f"http://{LOOPBACK}:{port}/api/v1/query", data={"query": HEAVY}, timeout=20)
            except requests.RequestException:
                time.sleep(0.1)
    hogs = [threading.Thread(target=hog, daemon=True) for _ in range(6)]
    try:
        wait_http_ok(f"http://{LOOPBACK}:{port}/-/ready", process, 60)
        for thread in hogs:
            thread.start()
        time.sleep(1)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        stop.set()
        process.stop()
        for thread in hogs:
            if thread.is_alive():
                thread.join(timeout=25)


def first_unanswered(ask: Callable[[], T], answered: Callable[[T], bool], tries: int = 8) -> T:
    """`ask`'s first answer that is not `answered`: a query may get the slot as a heavy one ends (a race with the
    hogs), so a few are asked; the test fails if every one was answered."""
    for _ in range(tries):
        answer = ask()
        if not answered(answer):
            return answer
    raise AssertionError(f"Prometheus answered all {tries} queries: never busy")


@pytest.mark.integration
def test_prometheus_own_query_timeout_is_an_outage_and_a_bad_query_still_rejected(busy_prometheus: str) -> None:
    raw = first_unanswered(lambda: requests.post(f"{busy_prometheus}/api/v1/query", data={"query": "vector(1)"},
                                                 timeout=10), lambda r: r.status_code == 200)
    assert raw.status_code == 503 and raw.json()["errorType"] == "timeout", raw.text  # what Prometheus answers
    provider = PrometheusProvider(busy_prometheus, timeout_seconds=5, retries=0)
    busy = first_unanswered(lambda: provider.scalar("vector(1)"), lambda m: m.ok)
    assert busy.problem is QueryProblem.SLOW, busy
    assert "HTTP 503, Prometheus says timeout: query timed out in query queue" in busy.detail, busy.detail
    metric = MetricSpec("errors", threshold=ThresholdMetric(query="vector(1)", max=5))

    def judged() -> Verdict:
        now = datetime.now(UTC)
        request = AnalysisRequest("moderation", "nsfw", "canary", now - timedelta(minutes=5), now,
                                  candidate_version="7")
        return run_analysis([metric], request, provider)[0]
    verdict = first_unanswered(judged, lambda v: v.evidence.get("failedQuery") != "vector(1)")
    assert verdict.outcome is Outcome.INCONCLUSIVE and verdict.evidence["problem"] in MEASUREMENT_OUTAGES, verdict
    # The query itself refused (checked before it waits for a slot): that is no outage.
    refused = provider.scalar("sum(rate(x[5m]")
    assert refused.problem is QueryProblem.REJECTED and "bad_data" in refused.detail, refused


@pytest.mark.integration
def test_a_prometheus_restarted_without_its_data_mid_window_is_data_lost_not_a_pass(tmp_path: Path) -> None:
    root = tmp_path / "prometheus"
    prometheus = PrometheusServer(root=root)
    process, url = start_exporter(tmp_path / "exporter.log", class_names="safe,nsfw")
    exporter = url.removeprefix("http://")
    service = "lost-window"
    provider = PrometheusProvider("http://unset")  # set once Prometheus has its port
    metric = MetricSpec("nsfw", ProportionMetric(events=NSFW_PREDICTIONS, total=ALL_PREDICTIONS, min_samples=100))
    canary = QueryScope("moderation", service, "canary", "1m", versions=("7",))

    def traffic(posts: int, tag: str) -> None:
        for i in range(posts):
            assert post_response(exporter, "variant=canary&model_version=7", [0] * 95 + [1] * 5, f"{tag}c{i}",
                                 service) == 202
            assert post_response(exporter, "variant=stable&model_version=6", [0] * 380 + [1] * 20, f"{tag}s{i}",
                                 service) == 202

    def counted_at_least(total: float) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            value = provider.scalar(render(ALL_PREDICTIONS, canary)).value
            if value is not None and value >= total:
                time.sleep(2.5)  # and a fresh sample of every series after it
                return
            time.sleep(0.5)
        raise AssertionError(f"Prometheus never counted {total} canary predictions")

    def judged(start: datetime) -> tuple:
        request = AnalysisRequest("moderation", service, "canary", start, datetime.now(UTC), candidate_version="7")
        return run_analysis([metric], request, provider)

    try:
        prometheus.start()
        # The local stack scrapes every second; 2 s leaves room for a busy machine.
        provider = PrometheusProvider(prometheus.url, scrape_interval=timedelta(seconds=2))
        prometheus.add_scrape_target("exporter-lost", exporter)
        for arm, version in (("canary", "7"), ("stable", "6")):
            assert post_response(exporter, f"variant={arm}&model_version={version}", [0], f"w{arm}", service) == 202
        wait_until_scraped(provider, f'modelrollout_predictions_total{{inference_service="{service}"}}')
        time.sleep(2)
        start_at = datetime.now(UTC)
        traffic(10, "a")  # 1000 canary predictions, 4000 stable
        counted_at_least(950)
        # A window of 10 scrapes (at the assumed 2 s): its counts are scaled by 0.9, and a fall past two scrapes'
        # worth of them (22%) is more than increase()'s extrapolation.
        time.sleep(max(0.0, (start_at + timedelta(seconds=20) - datetime.now(UTC)).total_seconds()))
        (whole,) = judged(start_at)
        assert whole.outcome is Outcome.PASS and whole.evidence["canary"]["total"] > 800, whole.reason

        port = prometheus.port  # restarted without its data (an emptyDir), at the same address
        prometheus.stop()
        shutil.rmtree(root / "data")
        prometheus = PrometheusServer(root=root, port=port)
        prometheus.start()
        wait_until_scraped(provider, f'modelrollout_predictions_total{{inference_service="{service}"}}')
        time.sleep(2)
        traffic(2, "b")  # 200 canary predictions, 800 stable: all it will count of the window
        counted_at_least(180)
        (left,) = judged(start_at)
        # What the runner alone makes of it: a pass on the part of the window Prometheus still holds.
        assert left.outcome is Outcome.PASS and left.evidence["canary"]["total"] < 400, left.reason
        assert left.evidence["window"]["start"] == start_at.isoformat()  # yet it names the whole window

        (lost,) = rules._data_lost((left,), (whole,), bake=False)
        assert lost.outcome is Outcome.INCONCLUSIVE and lost.evidence["problem"] == "DataLost", lost
        assert "DataLost" in MEASUREMENT_OUTAGES
        assert f"fell from canary {whole.evidence['canary']['total']:.6g}" in lost.reason, lost.reason
        assert "lost its data" in lost.reason and "persistent storage" in lost.reason, lost.reason
    finally:
        process.stop()
        prometheus.stop()
