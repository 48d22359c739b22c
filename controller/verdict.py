"""The verdict every judge returns: the gate, the live analysis judges and the bake judges alike."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# The gate's check of the golden dataset against its pinned sha256. Its failure stops the rollout, but it says
# nothing about the model: the engine rolls back without rejecting the candidate.
DATASET_INTEGRITY = "dataset.sha256"
# The query problems (controller.analysis.prometheus.QueryProblem values, in an unmeasured verdict's
# evidence["problem"]) that say the measuring failed, not what was measured: Prometheus or the exporter away for a
# moment (a restart, an upgrade). StaleSeries too: the exporter or its scrape stopped reporting, which an exporter
# restart does, and DuplicateSeries once the window was measured without it: an exporter's rolling update
# overlaps two pods for a moment (a second scrape job from the window's start is never measured, so not waited
# for). PrometheusTooSlow includes Prometheus' own query timeout (a busy Prometheus is the same moment, whichever
# timer fires first). DataLost (the engine's, decide._data_lost): a window's counts fell from one run to the next,
# so Prometheus lost part of it (restarted without its data, or another HA replica answered). Not QueryRejected:
# Prometheus refused the query itself (its syntax, its sample limit), which the next run asks again.
DATA_LOST = "DataLost"
MEASUREMENT_OUTAGES = frozenset({"PrometheusUnreachable", "PrometheusTooSlow", "PartialData", "MalformedResponse",
                                 "StaleSeries", "DuplicateSeries", DATA_LOST})


class Outcome(StrEnum):
    PASS = "pass"  # noqa: S105 - an outcome, not a password
    FAIL = "fail"
    # Not enough evidence yet (too few samples, no stable traffic, missing data). Never a pass.
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Verdict:
    """One judge's decision with everything that decided it, as plain JSON-able data."""

    name: str
    outcome: Outcome
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "outcome": str(self.outcome), "reason": self.reason,
                "evidence": dict(self.evidence)}


def combine(verdicts: list[Verdict]) -> Outcome:
    """Any failure fails; otherwise any inconclusive is inconclusive; no verdicts is inconclusive."""
    if not verdicts:
        return Outcome.INCONCLUSIVE
    outcomes = {v.outcome for v in verdicts}
    if Outcome.FAIL in outcomes:
        return Outcome.FAIL
    if Outcome.INCONCLUSIVE in outcomes:
        return Outcome.INCONCLUSIVE
    return Outcome.PASS
