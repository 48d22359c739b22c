"""The pure parts of dividing a bake's past days by their own copies (the Prometheus side:
tests/integration/test_bake_history_copies_live.py)."""

from __future__ import annotations

from controller.analysis.judges import baseline_judge
from controller.analysis.runner import _copies_of, _history_copies, _uneven_day


def test_copies_of_an_arm() -> None:
    assert _copies_of({"series": 4, "labelSets": 4}) == 1
    assert _copies_of({"series": 8, "labelSets": 4, "fewestCopies": 2, "fewestCopiesInWindow": 2}) == 2
    # A whole multiple with one label set read 3 times and another once, or a copy not held through the window.
    assert _copies_of({"series": 8, "labelSets": 4, "fewestCopiesInWindow": None}) is None
    assert _copies_of({"series": 8, "labelSets": 4, "fewestCopiesInWindow": 1}) is None
    assert _copies_of({"series": 7, "labelSets": 4}) is None


def test_a_day_left_out_for_its_copies_is_named_with_its_counts_not_as_no_traffic() -> None:
    days = [(50.0, 1000.0), (0.0, 0.0), (52.0, 1000.0), (49.0, 1000.0), (51.0, 1000.0)]
    ends = [f"2026-12-0{i + 1}T00:00:00+00:00" for i in range(5)]
    verdict = baseline_judge("nsfw", 100.0, 1000.0, days, history_at=ends)
    why = _uneven_day({"series": 6, "labelSets": 2, "fewestCopiesInWindow": 1})
    marked = _history_copies(verdict, [1, None, 1, 1, 1], {1: {"left_out": why, "events": 90.0, "total": 2000.0}})
    assert marked.outcome is verdict.outcome and marked.reason == verdict.reason
    assert [day["countsDividedBy"] for day in marked.evidence["history"]] == [1, None, 1, 1, 1]
    assert marked.evidence["history"][1] == {"events": 90.0, "total": 2000.0, "rate": 0.045, "no_traffic": False,
                                             "at": ends[1], "countsDividedBy": None, "left_out": why}
    assert why.startswith("uneven copies: 6 prediction series for 2 label sets") and "1 of some label set" in why
    assert marked.evidence["history_days"]["no_traffic"] == 0
    assert marked.evidence["history_days"]["uneven_copies"] == 1
    assert marked.evidence["history_days"]["kept"] == 4
    assert _uneven_day(None).startswith("copies unknown")
