"""maxRate is bounded to [0.000001, 0.999999] by the CRD and the parser alike: closer to 0 or 1 the sequential
test's null odds overflow, and every judgement was INCONCLUSIVE ("the analysis could not run"), so a real
regression was never failed."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_engine_support import spec_dict

from controller.analysis.judges import ProportionCriteria, proportion_judge
from controller.api import SpecError, parse_spec
from controller.api.spec import MAX_CONFIDENCE, MAX_RATE_RANGE
from controller.verdict import Outcome

REPO = Path(__file__).resolve().parents[2]


def with_max_rate(value: float) -> dict[str, object]:
    spec = spec_dict()
    spec["analysis"]["metrics"][0]["proportion"]["maxRate"] = value
    return spec


@pytest.mark.parametrize("value", [1e-7, 1e-307, 0.9999999, 0.9999999999999999])
def test_a_max_rate_the_test_cannot_calibrate_is_refused_naming_the_field(value: float) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(with_max_rate(value))
    assert "maxRate" in str(refused.value) and "0.000001 to 0.999999" in str(refused.value)


@pytest.mark.parametrize("value", MAX_RATE_RANGE)
def test_a_regression_is_failed_at_either_end_of_the_range(value: float) -> None:
    parse_spec(with_max_rate(value))
    verdict = proportion_judge("nsfw-rate", 50, 1000, 5, 1000, ProportionCriteria(max_rate=value))
    assert verdict.outcome is Outcome.FAIL, verdict.reason


def test_the_crd_states_the_same_range() -> None:
    crd = (REPO / "crds" / "modelrollout.io_modelrollouts.yaml").read_text()
    assert crd.count("rule: self >= 0.000001 && self <= 0.999999") == 2
    assert MAX_RATE_RANGE == (0.000001, 0.999999)


def test_the_crd_states_the_parsers_confidence_range() -> None:
    """In both places, as a CEL rule: minimum/maximum are cut to integers for a whole number (0 was accepted)."""
    crd = (REPO / "crds" / "modelrollout.io_modelrollouts.yaml").read_text()
    assert crd.count(f"rule: self >= 0.5 && self <= {MAX_CONFIDENCE}") == 2
    assert crd.count(f"confidence must be from 0.5 to {MAX_CONFIDENCE}\n") == 2
