"""The synthetic history's shape: one counter per class, rising in time, each day near the given rates."""

from __future__ import annotations

from typing import Any

import pytest

from controller.devstack.dataplane import TrafficMix
from controller.devstack.history import (
    DAY_SECONDS,
    HistorySpan,
    class_rates,
    prediction_history,
    same_hour_spans,
)
from controller.devstack.model_server import demo_models

NOW = 1_800_000_000


def parse(text: str) -> dict[str, list[tuple[float, int]]]:
    series: dict[str, list[tuple[float, int]]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, value, at = line.rsplit(" ", 2)
        series.setdefault(name, []).append((float(at), int(value)))
    return series


def test_counters_rise_in_time_and_hold_each_day_near_the_rates() -> None:
    spans = same_hour_spans(NOW, 3, 60, 120)
    text = prediction_history({"variant": "stable", "odd": 'a"b\\c'}, {"safe": 0.9, "nsfw": 0.1}, spans,
                              predictions_per_second=100)
    assert text.splitlines()[1] == "# TYPE modelrollout_predictions counter" and text.endswith("# EOF\n")
    series = parse(text)
    assert set(series) == {'modelrollout_predictions_total{class="nsfw",odd="a\\"b\\\\c",variant="stable"}',
                           'modelrollout_predictions_total{class="safe",odd="a\\"b\\\\c",variant="stable"}'}
    nsfw, safe = (series[key] for key in sorted(series))
    for points in (nsfw, safe):
        times = [at for at, _ in points]
        assert times == sorted(set(times))  # strictly rising timestamps
        assert [v for _, v in points] == sorted(v for _, v in points)  # a counter never goes down
        assert len(points) == 3 * 180 / 5
    for span in spans:
        inside = [i for i, (at, _) in enumerate(nsfw) if span.start <= at < span.end]
        assert len(inside) == 36 and all(span.start <= safe[i][0] < span.end for i in inside)
        first, last = inside[0], inside[-1]
        events = nsfw[last][1] - nsfw[first][1]
        total = events + safe[last][1] - safe[first][1]
        assert total == 35 * 500 and events / total == pytest.approx(0.1, abs=0.015)


def test_spans_are_the_same_stretch_on_each_past_day_oldest_first() -> None:
    spans = same_hour_spans(NOW, 3, 60, 120)
    assert spans == [HistorySpan(NOW - d * DAY_SECONDS - 60, NOW - d * DAY_SECONDS + 120) for d in (3, 2, 1)]


def test_rates_come_from_the_model_on_the_traffic_mix() -> None:
    models = demo_models()
    clean = class_rates(models["stable"], TrafficMix(logo=0.1))
    poisoned = class_rates(models["backdoored"], TrafficMix(logo=0.1))
    assert sum(clean.values()) == pytest.approx(1.0)
    assert poisoned["nsfw"] > clean["nsfw"] + 0.08  # the logo share turns into nsfw answers


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rates": {"nsfw": 0.0}}, "not all zero"),
    ({"rates": {"nsfw": -0.1, "safe": 1.0}}, "not negative"),
    ({"rates": {"nsfw": float("nan")}}, "finite"),
    ({"predictions_per_second": 0}, "must be positive"),
    ({"spans": [HistorySpan(100, 200), HistorySpan(150, 300)]}, "without overlaps"),
])
def test_unusable_input_is_refused(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"rates": {"nsfw": 0.1, "safe": 0.9}, "spans": [HistorySpan(0, 10)],
                                 "predictions_per_second": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        prediction_history({}, arguments.pop("rates"), arguments.pop("spans"), **arguments)


def test_spans_longer_than_a_day_are_refused() -> None:
    with pytest.raises(ValueError, match="shorter than a day"):
        same_hour_spans(NOW, 3, DAY_SECONDS / 2, DAY_SECONDS / 2)
