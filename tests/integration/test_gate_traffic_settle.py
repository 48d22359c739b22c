"""The golden gate's own predictions stay out of the first analysis window (real exporter, real Prometheus).

In KServe the gate's requests pass through the candidate revision's logger agent, so the exporter counts them as
the candidate's predictions: a golden set rich in positives. The exporter shows a new series at 0 on the first
scrape and its count on the next, so a window opened moments after the gate counts the whole burst as canary
traffic (the control below), and a clean candidate fails. The engine holds the first traffic step until
gate_predictions_scraped_by(); a window opened there (as the analysis step after it opens one) excludes the burst.
Stand-in: KServe's logger agent (one CloudEvent per answered request, ?model_version=<v> as the operator writes it).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from controller.analysis.prometheus import PrometheusProvider
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric
from controller.devstack.prometheus_server import PrometheusServer
from controller.engine.decide import gate_predictions_scraped_by
from controller.verdict import Outcome, Verdict
from tests.integration.test_exporter_prometheus import exporter, post_response  # noqa: F401 - a fixture

SERVICE = "gate-settle"  # its own inference service: other tests' series on the session Prometheus never match
CANDIDATE, STABLE = "17", "16"
BURST, BURST_NSFW = 1000, 400  # the golden set sent to the candidate: 40% positives
SCRAPE = timedelta(seconds=1)  # the session Prometheus' (controller/devstack/prometheus_server.py)
TICK = 0.25  # live traffic: every TICK s, 10 predictions to stable and (once it has weight) 5 to the candidate
METRIC = MetricSpec("nsfw-rate", proportion=ProportionMetric(
    events='sum(increase(modelrollout_predictions_total{class="nsfw", {{selector}}}[{{window}}]))',
    total="sum(increase(modelrollout_predictions_total{{{selector}}}[{{window}}]))",
    max_relative_increase=0.5, min_samples=100))


class LiveTraffic:
    """Clean traffic (1 in 100 predictions nsfw) to stable, and to the candidate once it is given weight."""

    def __init__(self, address: str) -> None:
        self.exporter = address
        self.canary = threading.Event()
        self.stop = threading.Event()
        self.sent = {STABLE: 0, CANDIDATE: 0}
        self.errors: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _post(self, version: str, count: int) -> None:
        start = self.sent[version]
        predictions = [1 if (start + i) % 100 == 99 else 0 for i in range(count)]
        status = post_response(self.exporter, f"model_version={version}", predictions,
                               f"live-{version}-{start}", service=SERVICE)
        if status != 202:
            self.errors.append(status)
        self.sent[version] += count

    def _run(self) -> None:
        while not self.stop.is_set():
            self._post(STABLE, 10)
            if self.canary.is_set():
                self._post(CANDIDATE, 5)
            self.stop.wait(TICK)


def verdict_over(provider: PrometheusProvider, window_start: datetime, now: datetime) -> Verdict:
    """The analysis runner's verdict, asked as the operator asks it (measure_analysis)."""
    request = AnalysisRequest(namespace="moderation", target=SERVICE, mode="canary", window_start=window_start,
                              now=now, candidate_version=CANDIDATE)
    (found,) = run_analysis([METRIC], request, provider)
    return found


def last_scrape(provider: PrometheusProvider, address: str) -> float:
    measured = provider.scalar(f'timestamp(up{{instance="{address}"}})', check_stale=False)
    assert measured.ok and measured.value, measured.detail
    return measured.value


@pytest.mark.integration
def test_a_window_opened_after_the_gate_settles_excludes_its_predictions(prometheus: PrometheusServer,
                                                                          exporter: str) -> None:  # noqa: F811
    prometheus.add_scrape_target("gate-settle", exporter)
    provider = PrometheusProvider(prometheus.url, scrape_interval=SCRAPE)
    traffic = LiveTraffic(exporter)
    traffic.thread.start()
    try:
        # Stable's series are scraped a while before the gate, as in a running service.
        deadline = time.monotonic() + 30
        while not provider.scalar(f'count(modelrollout_predictions_total{{inference_service="{SERVICE}", '
                                  f'model_version="{STABLE}"}})', check_stale=False).ok:
            assert time.monotonic() < deadline, "Prometheus never scraped the exporter"
            time.sleep(0.2)
        time.sleep(3 * SCRAPE.total_seconds())
        # The gate right after a scrape: the control window, opened 0.3 s after it, then sees every scrape of the
        # burst (with 30 s scrapes and a window opened seconds after the gate, most gates are so placed).
        scraped = last_scrape(provider, exporter)
        phase = (time.time() - scraped) % SCRAPE.total_seconds()
        time.sleep((1.05 - phase) % 1.0 + 0.05)
        golden = [1] * BURST_NSFW + [0] * (BURST - BURST_NSFW)
        for i in range(0, BURST, 50):
            assert post_response(exporter, f"model_version={CANDIDATE}", golden[i:i + 50], f"gate-{i}",
                                 service=SERVICE) == 202
        gate_done = datetime.now(UTC)  # as status.gate.completed_at: after the gate's last request
        settled = gate_predictions_scraped_by(gate_done, SCRAPE)
        time.sleep(max(0.0, (settled - datetime.now(UTC)).total_seconds()))
        traffic.canary.set()  # the held weight step: the candidate takes live traffic, the analysis window opens
        window_start = datetime.now(UTC)
        assert window_start >= settled
        time.sleep(12)
        now = datetime.now(UTC)
        judged = verdict_over(provider, window_start, now)
        control = verdict_over(provider, gate_done + timedelta(seconds=0.3), now)
    finally:
        traffic.stop.set()
        traffic.thread.join(timeout=10)
    assert traffic.errors == []

    canary = judged.evidence.get("canary") or {}
    assert canary, judged.reason
    # Only the live predictions (about 240, 1 in 100 nsfw), none of the gate's 1000 (400 nsfw).
    assert canary["total"] < BURST / 2 and canary["events"] < BURST_NSFW / 10, judged.reason
    assert judged.outcome is not Outcome.FAIL, judged.reason

    # The hazard is real: opened moments after the gate, the same query counts the burst as the canary's (the
    # runner scales counts by the share of the window its samples span, hence the events' slack).
    counted = control.evidence.get("canary") or {}
    assert counted.get("total", 0) >= BURST and counted.get("events", 0) >= 0.8 * BURST_NSFW, control.reason
    assert control.outcome is Outcome.FAIL, control.reason
