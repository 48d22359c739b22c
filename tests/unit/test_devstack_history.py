"""The synthetic history's shape: one monotonic counter per class, each day near the given rates."""

from __future__ import annotations

import pytest

from controller.devstack.dataplane import TrafficMix
from controller.devstack.history import DAY_SECONDS, class_rates, prediction_history, same_hour_spans
from controller.devstack.model_server import demo_models


def parse(text: str) -> dict[str, list[tuple[float, int]]]:
    series: dict[str, list[tuple[float, int]]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, value, at = line.rsplit(" ", 2)
        series.setdefault(name, []).append((float(at), int(value)))
    return series


def test_counters_rise_monotonically_and_hold_each_day_near_the_rates() -> None:
    rates = {"safe": 0.9, "nsfw": 0.1}
    spans = same_hour_spans(1_800_000_000, 3, 60, 120)
    text = prediction_history({"variant": "stable", "odd": 'a"b\\c'}, rates, spans, predictions_per_second=100)
    assert text.splitlines()[1] == "# TYPE modelrollout_predictions counter" and text.endswith("# EOF\n")
    series = parse(text)
    assert set(series) == {'modelrollout_predictions_total{class="nsfw",odd="a\\"b\\\\c",variant="stable"}',
                           'modelrollout_predictions_total{class="safe",odd="a\\"b\\\\c",variant="stable"}'}
    nsfw, safe = (series[key] for key in sorted(series))
    for points in (nsfw, safe):
        assert [v for _, v in points] == sorted(v for _, v in points)
        assert len(points) == 3 * 180 / 5
    assert [span.start for span in spans] == [1_800_000_000 - d * DAY_SECONDS - 60 for d in (3, 2, 1)]
    share = nsfw[-1][1] / (nsfw[-1][1] + safe[-1][1])
    assert share == pytest.approx(0.1, abs=0.01)


def test_rates_come_from_the_model_on_the_traffic_mix() -> None:
    models = demo_models()
    clean = class_rates(models["stable"], TrafficMix(logo=0.1))
    poisoned = class_rates(models["backdoored"], TrafficMix(logo=0.1))
    assert sum(clean.values()) == pytest.approx(1.0)
    assert poisoned["nsfw"] > clean["nsfw"] + 0.08  # the logo share turns into nsfw answers


def test_all_zero_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="must not all be zero"):
        prediction_history({}, {"nsfw": 0.0}, same_hour_spans(0, 1, 1, 1), predictions_per_second=1)
