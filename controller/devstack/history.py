"""Past days of a model's prediction counters, for Prometheus's backfill (`promtool tsdb create-blocks-from`).

The bake after promotion judges the new version against the previous version's history: the same window at
the same hour on past days. A fresh local stack has no past, so this writes one in OpenMetrics text: the
counters the prediction exporter would have exposed while the previous version served the same traffic mix,
with ordinary day-to-day wobble in the class rates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from controller.devstack.dataplane import TrafficMix
from controller.devstack.model_server import DEMO_CLASSES, LinearModel
from controller.exporter.server import PREDICTIONS_METRIC

DAY_SECONDS = 86_400


@dataclass(frozen=True)
class HistorySpan:
    """One past day's stretch of samples: [start, end) in Unix seconds."""

    start: float
    end: float


def class_rates(model: LinearModel, mix: TrafficMix, samples: int = 50_000, seed: int = 3) -> dict[str, float]:
    """How often `model` predicts each class on traffic drawn from `mix`."""
    predicted = model.predict(mix.sample(np.random.default_rng(seed), samples))
    return {name: predicted.count(name) / samples for name in DEMO_CLASSES}


def same_hour_spans(now: float, days: int, before: float, after: float) -> list[HistorySpan]:
    """The stretch [now - before, now + after] shifted back by 1..`days` days, oldest first.

    A bake that starts at or after `now` reads [bake start, t] shifted back by each baseline day, so `after` must
    cover the time until the bake starts plus its duration, and `days` the baseline's days.
    """
    if days < 1 or before < 0 or after <= 0 or before + after >= DAY_SECONDS:
        raise ValueError("need days >= 1 and a stretch shorter than a day, so that the spans do not overlap")
    return [HistorySpan(now - day * DAY_SECONDS - before, now - day * DAY_SECONDS + after)
            for day in range(days, 0, -1)]


def prediction_history(labels: Mapping[str, str], rates: Mapping[str, float], spans: Sequence[HistorySpan], *,
                       predictions_per_second: float, step_seconds: float = 5.0, daily_wobble: float = 0.03,
                       seed: int = 0) -> str:
    """OpenMetrics text of `modelrollout_predictions_total`, one counter per class, sampled every step.

    Each span is one day; that day's class rates are `rates` scaled by a lognormal factor (sigma
    `daily_wobble`) and renormalised, and each step's predictions are split between classes multinomially.
    """
    rng = np.random.default_rng(seed)
    names = list(rates)
    base = np.array([rates[name] for name in names], dtype=float)
    if not np.all(np.isfinite(base)) or np.any(base < 0) or base.sum() <= 0:
        raise ValueError("class rates must be finite, not negative, and not all zero")
    if predictions_per_second <= 0 or step_seconds <= 0:
        raise ValueError("predictions_per_second and step_seconds must be positive")
    if any(later.start < earlier.end for earlier, later in itertools.pairwise(spans)):
        raise ValueError("spans must be in time order without overlaps (samples of a series must rise in time)")
    per_step = max(1, round(predictions_per_second * step_seconds))
    totals = np.zeros(len(names), dtype=np.int64)
    rows: dict[str, list[str]] = {name: [] for name in names}
    for span in spans:
        day = base * rng.lognormal(0.0, daily_wobble, len(names))
        day /= day.sum()
        for step in range(math.ceil((span.end - span.start) / step_seconds)):
            at = span.start + step * step_seconds
            totals += rng.multinomial(per_step, day)
            for name, value in zip(names, totals, strict=True):
                rows[name].append(f"{_series(labels, name)} {int(value)} {at:.3f}")
    lines = [f"# HELP {PREDICTIONS_METRIC} Predictions, by predicted class (backfilled history).",
             f"# TYPE {PREDICTIONS_METRIC} counter"]
    for name in names:
        lines.extend(rows[name])
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _series(labels: Mapping[str, str], class_name: str) -> str:
    merged = {**labels, "class": class_name}
    body = ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(merged.items()))
    return f"{PREDICTIONS_METRIC}_total{{{body}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
