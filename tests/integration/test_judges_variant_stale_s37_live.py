"""Review s37judges: a proportion written with {{variant}} (not {{selector}}) skipped the freshness and duplicate-series
checks, so a stable arm whose exporter series stopped early in the window was judged on its first seconds' counts and
a canary with twice stable's nsfw rate passed. Real Prometheus (Debian's), history backfilled."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_freshness_rules_s33_live import STABLE_STOPS_AFTER, WINDOW_SECONDS, judging_history

from controller.analysis.runner import run_analysis
from controller.api.spec import MetricSpec, ProportionMetric
from controller.verdict import Outcome

pytestmark = pytest.mark.integration
BY_VARIANT = "namespace={{namespace}}, inference_service={{target}}, variant={{variant}}"
EVENTS = f'sum(increase(modelrollout_predictions_total{{class="nsfw", {BY_VARIANT}}}[{{{{window}}}}]))'
TOTAL = f"sum(increase(modelrollout_predictions_total{{{BY_VARIANT}}}[{{{{window}}}}]))"


def test_a_variant_proportion_with_a_stale_stable_arm_is_stale(tmp_path: Path) -> None:
    assert STABLE_STOPS_AFTER < WINDOW_SECONDS  # the fixture's stable arm stops well inside the window
    with judging_history(tmp_path) as (request, provider):
        metric = MetricSpec("nsfw", ProportionMetric(events=EVENTS, total=TOTAL, min_samples=30))
        (verdict,) = run_analysis([metric], request, provider)
        assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
        assert verdict.reason.startswith("StaleSeries: the stable arm:"), verdict.reason
        # Checked by the variant label the templates select by, not by model version.
        assert 'variant="stable"' in verdict.evidence["queries"]["stable_freshness"], verdict.evidence["queries"]
        assert "model_version" not in verdict.evidence["queries"]["stable_freshness"], verdict.evidence["queries"]
        assert verdict.evidence["window"]["freshSeries"] == {"canary": 2.0}, verdict.evidence["window"]
