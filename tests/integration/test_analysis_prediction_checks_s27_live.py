"""The runner's own checks of the exporter's series, against a real Prometheus scraping real exporters (review s27prom,
findings 2 and 3): an exporter scraped twice is never counted as it reads, and a canary threshold's pass needs canary
traffic. Review s27r3, findings 1 and 2: neither hides a failure (a canary whose every request errors, a poisoned
canary read twice)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controller.analysis.prometheus import PrometheusProvider
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric, ThresholdMetric
from controller.devstack.dataplane import start_exporter
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import ALL_PREDICTIONS, NSFW_PREDICTIONS
from controller.verdict import Outcome, Verdict

pytestmark = pytest.mark.integration

NAMESPACE = "moderation"
PROPORTION = MetricSpec("nsfw", ProportionMetric(events=NSFW_PREDICTIONS, total=ALL_PREDICTIONS, min_samples=30))
# A count of the canary's nsfw answers, as a threshold: it reads 0 when the canary served nothing.
NSFW_COUNT = MetricSpec("nsfw-count", threshold=ThresholdMetric(query=NSFW_PREDICTIONS, max=1000))
# The serving runtime's own request errors, labelled as the exporter's series are: a model whose every request fails
# answers no prediction, so its errors grow while its predictions stay flat.
ERRORS = MetricSpec("errors", threshold=ThresholdMetric(
    query="sum(increase(app_request_errors_total{ {{selector}} }[{{window}}]))", max=0))


class RequestErrors:
    """A /metrics endpoint of request errors by service, the canary's (version 7) only."""

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rows = ["# TYPE app_request_errors_total counter"] + [
                    f'app_request_errors_total{{namespace="{NAMESPACE}",inference_service="{service}",'
                    f'variant="canary",model_version="7"}} {count}' for service, count in dict(owner.errors).items()]
                body = ("\n".join(rows) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def post(exporter: str, service: str, query: str, predictions: list[int]) -> None:
    headers = {"Ce-Id": uuid.uuid4().hex, "Ce-Type": "org.kubeflow.serving.inference.response",
               "Ce-Specversion": "1.0", "Ce-Source": "test", "Ce-Namespace": NAMESPACE,
               "Ce-Inferenceservicename": service, "Content-Type": "application/json"}
    body = json.dumps({"predictions": predictions}).encode()
    request = urllib.request.Request(f"http://{exporter}/?{query}", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
        assert response.status == 202


def wait_for(provider: PrometheusProvider, query: str, count: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        measured = provider.scalar(query, check_stale=False)
        if measured.ok and measured.value is not None and measured.value >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus never answered {query} with {count} or more")


@dataclass(frozen=True)
class Window:
    start: datetime
    now: datetime
    twice: str  # the service whose exporter is scraped by two targets
    once: str  # the same traffic, its exporter scraped once
    idle: str  # scraped once; its canary served only the gate's predictions, before the window; its requests error
    poisoned: str  # scraped twice: canary 40% nsfw, stable 10%
    absent: str  # no prediction series at all; its canary's requests error
    quiet: str  # no prediction series at all; no errors


@pytest.fixture(scope="module")
def window(prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Window]:
    """One window of traffic: canary (version 7) and stable (6) at the same 25% nsfw rate on `twice` and `once`,
    at 40% and 10% on `poisoned`, stable only on `idle`; request errors of the canaries of `idle` and `absent`.
    Service names of their own: the session's Prometheus scrapes other tests' exporters."""
    logs = tmp_path_factory.mktemp("s27-exporters")
    suffix = uuid.uuid4().hex[:8]
    twice, once, idle = f"twice-{suffix}", f"once-{suffix}", f"idle-{suffix}"
    poisoned, absent, quiet = f"poisoned-{suffix}", f"absent-{suffix}", f"quiet-{suffix}"
    doubled, doubled_url = start_exporter(logs / "doubled.log", class_names="safe,nsfw")
    single, single_url = start_exporter(logs / "single.log", class_names="safe,nsfw")
    errors = RequestErrors()
    errors.errors.update({idle: 0, absent: 0, quiet: 0})
    doubled_address, single_address = doubled_url.removeprefix("http://"), single_url.removeprefix("http://")
    # The same exporter as two targets apart only in a label, as two scrape jobs or an HA pair read without dedup.
    targets = {f"s27-{suffix}-a": (doubled_address, {"replica": "a"}),
               f"s27-{suffix}-b": (doubled_address, {"replica": "b"}), f"s27-{suffix}-once": (single_address, {}),
               f"s27-{suffix}-errors": (errors.address, {})}
    try:
        for name, (address, labels) in targets.items():
            prometheus.add_scrape_target(name, address, labels)
        provider = PrometheusProvider(prometheus.url)
        for exporter, service in ((doubled_address, twice), (single_address, once), (single_address, idle),
                                  (doubled_address, poisoned)):
            post(exporter, service, "variant=canary&model_version=7", [0, 1])  # the gate's, before the window
            post(exporter, service, "variant=stable&model_version=6", [0, 1])
        wait_for(provider, f'count(modelrollout_predictions_total{{inference_service=~"{twice}|{poisoned}"}})', 16)
        wait_for(provider, f'count(modelrollout_predictions_total{{inference_service=~"{once}|{idle}"}})', 8)
        wait_for(provider, f'count(app_request_errors_total{{inference_service=~"{idle}|{absent}|{quiet}"}})', 3)
        time.sleep(2)  # every series scraped at least twice before the window: increase() counts from there
        start = datetime.now(UTC)
        for _ in range(20):
            for exporter, service in ((doubled_address, twice), (single_address, once)):
                post(exporter, service, "variant=canary&model_version=7", [0, 0, 0, 1])
                post(exporter, service, "variant=stable&model_version=6", [0, 0, 0, 1] * 10)
            post(single_address, idle, "variant=stable&model_version=6", [0, 0, 0, 1] * 10)
            post(doubled_address, poisoned, "variant=canary&model_version=7", [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
            post(doubled_address, poisoned, "variant=stable&model_version=6", [1] * 10 + [0] * 90)
            errors.errors[idle] += 5
            errors.errors[absent] += 5
            time.sleep(0.5)
        time.sleep(3)  # the last predictions scraped
        yield Window(start, datetime.now(UTC), twice, once, idle, poisoned, absent, quiet)
    finally:
        doubled.stop()
        single.stop()
        errors.stop()
        for name in targets:
            (prometheus.targets_dir / f"{name}.json").unlink(missing_ok=True)


def judge(prometheus: PrometheusServer, window: Window, service: str, metric: MetricSpec) -> Verdict:
    request = AnalysisRequest(NAMESPACE, service, "canary", window.start, window.now, candidate_version="7")
    # The stack scrapes every second; 2 s leaves room for a busy machine (a sample over 4 s old is stale).
    provider = PrometheusProvider(prometheus.url, scrape_interval=timedelta(seconds=2))
    (verdict,) = run_analysis([metric], request, provider)
    return verdict


def test_an_exporter_scraped_twice_is_never_counted(prometheus: PrometheusServer, window: Window) -> None:
    """Read twice, the canary's 80 predictions count as 160: minSamples passes on half of them."""
    doubled = judge(prometheus, window, window.twice, PROPORTION)
    assert doubled.outcome is Outcome.INCONCLUSIVE, doubled
    assert doubled.reason.startswith("DuplicateSeries: the canary arm: 4 series of modelrollout_predictions_total "
                                     "for 2 of the exporter's label sets"), doubled.reason
    assert doubled.evidence["problem"] == "DuplicateSeries"
    # Every arm is checked, and even: judged on counts divided by 2, the clean canary passes, which is not kept.
    copies = {"series": 4, "labelSets": 2, "fewestCopies": 2, "fewestCopiesInWindow": 2}  # both copies all along
    assert doubled.evidence["window"]["predictionSeries"] == {"canary": copies, "stable": copies}
    assert "on the counts divided by 2 it did not fail (no credible increase" in doubled.reason, doubled.reason
    assert 'replica' not in doubled.evidence["queries"]["canary_labelSets"]  # the exporter's labels only
    threshold = judge(prometheus, window, window.twice, NSFW_COUNT)  # a threshold reads the doubled count too
    assert threshold.outcome is Outcome.INCONCLUSIVE and threshold.reason.startswith("DuplicateSeries"), threshold
    # The control: the same traffic, its exporter scraped once, is judged.
    single = judge(prometheus, window, window.once, PROPORTION)
    assert single.outcome is Outcome.PASS, single
    assert single.evidence["window"]["predictionSeries"] == {"canary": {"series": 2, "labelSets": 2},
                                                             "stable": {"series": 2, "labelSets": 2}}
    assert 30 <= single.evidence["canary"]["total"] <= 100, single.evidence["canary"]  # 80 sent, not 160


def test_a_canary_threshold_without_canary_traffic_is_not_passed(prometheus: PrometheusServer,
                                                                 window: Window) -> None:
    """The canary's series stay exported (and fresh) from the gate's predictions: its nsfw count reads 0."""
    idle = judge(prometheus, window, window.idle, NSFW_COUNT)
    assert idle.outcome is Outcome.INCONCLUSIVE, idle
    assert idle.reason.startswith("no canary traffic in the window: the candidate's predictions "
                                  "(modelrollout_predictions_total) did not increase"), idle.reason
    assert idle.evidence["value"] == 0 and idle.evidence["canaryPredictions"] == 0, idle.evidence
    assert idle.evidence["window"]["freshSeries"]["canary"] > 0  # fresh: freshness alone let it pass
    # The control: a canary that served is judged on its value.
    served = judge(prometheus, window, window.once, NSFW_COUNT)
    assert served.outcome is Outcome.PASS and 10 <= served.evidence["value"] <= 40, served


def test_a_poisoned_canary_read_twice_fails_on_its_counts_divided(prometheus: PrometheusServer,
                                                                 window: Window) -> None:
    """Halved, 40% against 10% is still far past 1.5x: DuplicateSeries must not hide it."""
    poisoned = judge(prometheus, window, window.poisoned, PROPORTION)
    assert poisoned.outcome is Outcome.FAIL, poisoned
    assert poisoned.reason.endswith("(on counts divided by 2: every prediction series is read 2 times, "
                                    "DuplicateSeries)"), poisoned.reason
    assert "problem" not in poisoned.evidence and poisoned.evidence["window"]["countsDividedBy"] == 2
    assert 60 <= poisoned.evidence["canary"]["total"] <= 250, poisoned.evidence["canary"]  # 200 sent, not 400
    assert 0.3 <= poisoned.evidence["canary"]["rate"] <= 0.5 and 0.05 <= poisoned.evidence["stable"]["rate"] <= 0.15


def test_a_canary_threshold_failing_without_traffic_fails(prometheus: PrometheusServer, window: Window) -> None:
    """Every canary request errors, so its predictions stay flat (`idle`) or it has none (`absent`): the errors are
    the failure. Without prediction series nothing says whether it served: a 0 is judged as it reads (`quiet`)."""
    for service in (window.idle, window.absent):
        failed = judge(prometheus, window, service, ERRORS)
        assert failed.outcome is Outcome.FAIL and "is above the maximum 0" in failed.reason, failed
        assert failed.evidence["value"] >= 50, failed.evidence  # 100 errors in the window
    quiet = judge(prometheus, window, window.quiet, ERRORS)
    assert quiet.outcome is Outcome.PASS and quiet.evidence["value"] == 0, quiet
    assert "canary_predictions" not in quiet.evidence.get("queries", {}), quiet.evidence
