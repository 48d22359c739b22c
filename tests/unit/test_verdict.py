"""combine(): how the gate, the analysis and the bake fold their verdicts into one outcome."""

from __future__ import annotations

import pytest

from controller.verdict import Outcome, Verdict, combine

PASS, FAIL, INCONCLUSIVE = Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE


def case_id(value: object) -> str:
    return ("+".join(map(str, value)) or "none") if isinstance(value, tuple) else str(value)


# The expected outcomes are written out, not computed, so that the table cannot share a bug with combine().
@pytest.mark.parametrize(("outcomes", "combined"), [
    ((), INCONCLUSIVE),  # nothing judged is no evidence, never a pass
    ((PASS,), PASS),
    ((PASS, PASS), PASS),
    ((INCONCLUSIVE,), INCONCLUSIVE),
    ((PASS, INCONCLUSIVE), INCONCLUSIVE),
    ((FAIL,), FAIL),
    ((PASS, FAIL), FAIL),
    ((INCONCLUSIVE, FAIL), FAIL),  # one check still waiting for data does not hide another's failure
    ((FAIL, INCONCLUSIVE), FAIL),
    ((PASS, INCONCLUSIVE, FAIL), FAIL),
], ids=case_id)
def test_any_failure_fails_otherwise_any_inconclusive_is_inconclusive_and_no_verdicts_is_not_a_pass(
        outcomes: tuple[Outcome, ...], combined: Outcome) -> None:
    assert combine([Verdict(f"check-{i}", outcome, "") for i, outcome in enumerate(outcomes)]) is combined
