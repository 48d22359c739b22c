"""`explain --html`: the page from a rollout the real engine and the real analysis judge went through.

Rendering in a browser is checked in tests/integration/test_explain_html.py (headless Chromium).
"""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from test_engine_support import World, spec_dict

from controller.analysis.judges import ProportionCriteria, proportion_judge, threshold_judge
from controller.api import CommandAction
from controller.api.status import Phase
from controller.cli.report import decisions, rate_points, render_html, weight_series
from controller.verdict import Outcome


def judged_rollout() -> dict[str, Any]:
    """A canary that looks fine for a while at 1%, then predicts nsfw far more often than stable."""
    runs = {"n": 0}

    def judge(_request: Any) -> list[Any]:
        runs["n"] += 1
        n = 400 * runs["n"]
        events = n // 500 if runs["n"] <= 3 else n // 12
        return [proportion_judge("nsfw-rate", events, n, 40 * runs["n"], 20000 * runs["n"],
                                 ProportionCriteria(max_rate=0.05))]

    world = World(judge=judge)
    world.run_until(lambda w: w.status.phase == Phase.ROLLED_BACK)
    return {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
            "metadata": {"name": "nsfw-classifier", "namespace": "moderation", "resourceVersion": "7"},
            "spec": world.spec, "status": world.status.to_dict()}


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parsed(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def test_weight_rates_and_decisions_come_from_the_status() -> None:
    obj = judged_rollout()
    status = obj["status"]
    marks = decisions(status)
    assert [m.event for m in marks][:4] == ["Resolved", "CandidateStaged", "GateStarted", "GatePassed"]
    assert {m.kind for m in marks if m.event in ("AnalysisFailed", "RollbackStarted", "RolledBack")} == {"fail"}
    weights = [w for _, w in weight_series(status, marks[-1].time)]
    assert weights[0] == 0 and 1 in weights and weights[-1] == 0  # staged at 0, 1% at step 1, back to 0
    points = rate_points(status)
    failing = [p for p in points if p.outcome == "fail"]
    assert failing and failing[0].metric == "nsfw-rate"
    assert failing[0].canary is not None and failing[0].stable is not None
    assert failing[0].canary > 5 * failing[0].stable  # 8.3% against 0.2%
    assert re.fullmatch(r"\d+/\d+", failing[0].canary_counts)


def test_page_is_self_contained_and_draws_every_decision() -> None:
    obj = judged_rollout()
    page = render_html(obj, "moderation/nsfw-classifier is RolledBack")
    tags = parsed(page)
    names = [tag for tag, _ in tags]
    # Nothing to fetch: no scripts, stylesheets, images or frames; no URL anywhere but the SVG namespace.
    assert not {"script", "link", "img", "iframe", "object", "embed", "audio", "video", "base"} & set(names)
    assert not [attrs for _, attrs in tags if {"src", "href", "srcset", "action"} & set(attrs)]
    assert "url(" not in page and "@import" not in page
    assert re.findall(r"https?://[^\s\"'<]+", page) == ["http://www.w3.org/2000/svg"]
    history = obj["status"]["history"]
    groups = [attrs for tag, attrs in tags if tag == "g" and "decision" in (attrs.get("class") or "")]
    assert [g["data-event"] for g in groups] == [h["event"] for h in history]
    assert any(tag == "path" and attrs.get("class") == "weight-line" for tag, attrs in tags)
    canary = [a for t, a in tags if t == "g" and a.get("class") == "rate-point canary"]
    stable = [a for t, a in tags if t == "g" and a.get("class") == "rate-point stable"]
    assert canary and len(canary) == len(stable)
    assert "Decision points" in page and "The verdicts the rollback was decided on" in page


def test_text_from_the_cluster_is_escaped() -> None:
    obj = judged_rollout()
    obj["status"]["history"][-1]["detail"] = '<script>alert("x")</script>'
    obj["status"]["message"] = "<img src=x onerror=alert(1)>"
    page = render_html(obj)
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;" in page


def test_a_rollout_without_history_still_renders() -> None:
    page = render_html({"metadata": {"name": "new", "namespace": "ns"}, "spec": {}, "status": {}})
    assert "<svg" in page and "Pending" in page and "No class rates" in page


def test_a_long_rollout_gets_readable_time_ticks() -> None:
    obj = judged_rollout()
    status = obj["status"]
    start = decisions(status)[0].time
    status["completedAt"] = (start + timedelta(hours=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ticks = re.findall(r'text-anchor="middle">(\d\d:\d\d:\d\d)</text>', render_html(obj))
    assert 3 <= len(ticks) <= 8


@pytest.mark.parametrize("first", ["0001-01-01T00:00:00Z", "1990-06-01T00:00:00Z", "2025-11-05T09:00:00Z",
                                   "2026-01-01T09:00:00Z"])
def test_any_span_gets_a_handful_of_dated_ticks(first: str) -> None:
    """history[].time is a free string: one entry dated year 1 drew a tick a day, 739,621 of them (a 98 MB page)."""
    obj = judged_rollout()
    obj["status"]["history"].insert(0, {"time": first, "event": "Resolved", "detail": "attempt 1",
                                        "actor": "modelrollout-controller"})
    page = render_html(obj)
    ticks = re.findall(r'class="tick"/><text [^>]*>([^<]*)</text>', page)
    assert 2 <= len(ticks) <= 7, len(ticks)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", tick) for tick in ticks), ticks  # a day apart or more: dates
    assert len(page) < 200_000


def test_a_bake_reason_names_its_rates_in_the_text_fallback() -> None:
    """A bake's verdict speaks of the new version and its history; the report still reads its two rates."""
    from controller.analysis.judges import baseline_judge
    from controller.cli.report import RATES_IN_TEXT

    verdict = baseline_judge("nsfw-rate", 90, 1000, [(30, 1000)] * 7)
    match = RATES_IN_TEXT.search(f"{verdict.name} {verdict.reason}")
    assert match is not None, verdict.reason
    assert (match.group("c"), match.group("cn"), match.group("ct")) == ("9", "90", "1000")
    assert (match.group("sn"), match.group("st")) == ("210", "7000")


def test_a_rollback_of_a_success_tells_each_confirmed_step_and_no_earlier_completion() -> None:
    # A success rolled back on request while the target takes no patches: the alias is back, traffic is not.
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}]}))
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    world.target.frozen = True
    world.send(CommandAction.ROLLBACK)
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    for _ in range(3):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    status = world.status.to_dict()
    assert status["completedAt"] and status["rollback"]["aliasConfirmedAt"]  # the success's completion
    assert "trafficConfirmedAt" not in status["rollback"] and "recoveredAt" not in status["rollback"]
    page = render_html({"metadata": {"name": "nsfw-classifier", "namespace": "moderation"}, "spec": world.spec,
                        "status": status})
    assert "<b>Completed</b>-</div>" in page
    assert "rolling back, traffic not yet confirmed back, alias confirmed</div>" in page
    assert "traffic and alias not yet confirmed" not in page


def test_a_failed_threshold_analysis_is_not_told_as_no_analysis() -> None:
    err = threshold_judge("err-rate", 5, maximum=1)
    assert err.outcome is Outcome.FAIL
    world = World(judge=lambda _r: [err])
    world.run_until(lambda w: w.status.phase == Phase.ROLLED_BACK)
    page = render_html({"metadata": {"name": "r", "namespace": "ns"}, "spec": world.spec,
                        "status": world.status.to_dict()})
    assert "No class rates in this rollout's evidence (no analysis verdict measured one)." in page
    assert "no canary analysis has run" not in page
    fresh = render_html({"metadata": {"name": "new", "namespace": "ns"}, "spec": {}, "status": {}})
    assert "No class rates in this rollout's evidence (no canary analysis has run)." in fresh
