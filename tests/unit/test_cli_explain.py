"""`explain`, `get`, `history` and the HTML page: true to the status, and never a traceback on an odd one.

The statuses come from the real engine (the engine tests' World), so each account is checked against what
the controller actually writes, including the rollbacks that have not (or could not) put traffic back.
"""

from __future__ import annotations

import copy
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_engine import _first_rollout_killed_after_its_alias_moved
from test_engine_support import World, verdict

from controller.analysis.judges import ProportionCriteria, proportion_judge
from controller.api import CommandAction
from controller.api.status import Phase
from controller.cli.oncall import OnCall
from controller.cli.report import _kind, render_html, weight_series
from controller.cli.shape import printable
from controller.engine import REJECTED_TAG
from controller.verdict import Outcome


@pytest.fixture()
def oncall(offline_kubeconfig: Path) -> OnCall:
    return OnCall(str(offline_kubeconfig), None, out=io.StringIO())


def wrapped(world: World) -> dict[str, Any]:
    return {"metadata": {"name": "nsfw-classifier", "namespace": "moderation", "resourceVersion": "7"},
            "spec": world.spec, "status": world.status.to_dict()}


def test_a_rollback_that_has_not_put_traffic_back_does_not_say_it_has(oncall: OnCall) -> None:
    world = World(judge=lambda _r: [verdict(Outcome.FAIL)])
    world.run_until(lambda w: bool(w.status.canary_weight))
    world.target.frozen = True  # the target stops taking patches: traffic cannot be confirmed back
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    for _ in range(3):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    text = oncall.explain(wrapped(world))
    assert "is being rolled back" in text
    assert "Traffic is NOT yet confirmed back on version 6" in text
    assert "went back" not in text and "Traffic is back" not in text


def test_a_first_rollout_that_kept_all_traffic_says_so(oncall: OnCall) -> None:
    world = _first_rollout_killed_after_its_alias_moved()
    world.send(CommandAction.ABORT)
    world.run_until(lambda w: w.status.phase in (Phase.ROLLED_BACK, Phase.FAILED), step=timedelta(seconds=2))
    obj = wrapped(world)
    assert obj["status"]["rollback"]["trafficKept"] is True
    text = oncall.explain(obj)
    assert "still serves all traffic" in text and "Next: deploy a fixed version" in text
    assert "went back" not in text and "Traffic is back" not in text
    status = obj["status"]
    assert weight_series(status, world.now)[-1][1] == 100  # the chart does not draw a return to 0%
    page = render_html(obj)
    assert 'class="decision fail" data-event="TrafficNotRestored"' in page
    assert "Stopped" in page and "kept all traffic" in page


def test_a_completed_rollback_names_each_confirmed_step_and_the_evidence(oncall: OnCall) -> None:
    runs = {"n": 0}

    def judge(_request: Any) -> list[Any]:
        runs["n"] += 1
        n = 400 * runs["n"]
        return [proportion_judge("nsfw-rate", n // 12, n, 40 * runs["n"], 20000 * runs["n"],
                                 ProportionCriteria(max_rate=0.05),
                                 queries={"canary_events": 'sum(increase(x{class="nsfw"}[2m]))'},
                                 window={"start": "2026-12-03T10:00:00+00:00", "end": "2026-12-03T10:02:00+00:00",
                                         "range": "2m"})]

    world = World(judge=judge)
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    obj = wrapped(world)
    text = oncall.explain(obj)
    assert "It was rolled back by modelrollout-controller because nsfw-rate canary" in text
    assert "Traffic is back on version 6" in text
    assert "@production is confirmed on version 6" in text
    assert "Version 7 is tagged rejected" in text
    assert 'query canary_events: sum(increase(x{class="nsfw"}[2m]))' in text
    assert "window 2026-12-03T10:00:00+00:00 to 2026-12-03T10:02:00+00:00 (range 2m)" in text
    assert '"e_value"' in text and '"boundary"' in text  # not the logarithms, unlabelled
    page = render_html(obj)
    assert "sum(increase(x{class=&quot;nsfw&quot;}[2m]))" in page and "(range 2m)" in page
    assert "e-value " in page and " vs boundary " in page


def test_warning_events_are_not_drawn_as_recoveries() -> None:
    assert _kind("TrafficNotRestored", "modelrollout-controller") == "fail"
    assert _kind("StatusReset", "modelrollout-controller") == "warn"
    assert _kind("TrafficRestored", "modelrollout-controller") == "pass"


GARBAGE: list[tuple[str, Any]] = [
    ("metrics", [{"outcome": "fail"}]),  # a verdict without name, reason or evidence
    ("metrics", "nsfw"),
    ("metrics", [{"name": "x", "outcome": "fail", "reason": "r", "evidence": ["a"]}]),
    ("gate", "passed"),
    ("rollback", ["x"]),
    ("candidate", "7"),
    ("history", [{"event": "X"}, "junk", {"time": "0001-01-01T00:00:00+01:00", "event": "Y", "detail": None}]),
    ("history", [{"time": "9999-12-31T23:59:59Z", "event": "Z"}, {"time": "0001-01-01T00:00:01Z", "event": "A"}]),
    ("rates", {"canary": {"rate": 1e307, "events": 1, "total": 2}, "stable": {"rate": float("inf")}}),
    ("rates_text", "nsfw-rate canary 1e999% (1/2) x stable 5% (1/20)"),
    ("rollback_evidence", ["x"]),
    ("conditions", [{"type": "Ready"}, 3]),
]


@pytest.mark.parametrize(("field", "value"), GARBAGE, ids=[f"{f}-{i}" for i, (f, _) in enumerate(GARBAGE)])
def test_a_status_of_an_unexpected_shape_is_still_shown(oncall: OnCall, field: str, value: Any) -> None:
    world = World(judge=lambda _r: [verdict(Outcome.FAIL)])
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    obj = copy.deepcopy(wrapped(world))
    status = obj["status"]
    if field == "metrics":
        status["analysis"] = {"lastRunAt": "2026-12-03T10:00:00Z", "metrics": value}
    elif field == "rates":
        status["analysis"] = {"lastRunAt": "2026-12-03T10:00:00Z",
                              "metrics": [{"name": "m", "outcome": "fail", "reason": "r", "evidence": value}]}
    elif field == "rates_text":
        status["history"].append({"time": "2026-12-03T10:00:00Z", "event": "AnalysisFailed", "detail": value})
    elif field == "rollback_evidence":
        status["rollback"]["evidence"] = value
    else:
        status[field] = value
    oncall.print_list([obj], all_namespaces=True)
    oncall.print_rollout(obj)
    oncall.print_history(obj)
    assert "nsfw-classifier" in oncall.explain(obj)
    assert "<svg" in render_html(obj, oncall.explain(obj))


def test_the_page_escapes_bidi_overrides_as_the_terminal_does() -> None:
    world = World(judge=lambda _r: [verdict(Outcome.FAIL)])
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    obj = wrapped(world)
    obj["status"]["message"] = "evil\u202etxt.exe"
    obj["status"]["history"][-1]["actor"] = "mallory\u2066"
    page = render_html(obj)
    assert "\u202e" not in page and "\u2066" not in page
    assert "evil\\u202etxt.exe" in page


def test_explain_escapes_a_query_roles_name_as_it_does_the_query(oncall: OnCall) -> None:
    """Evidence map keys are printed too (`query <role>: ...`): a terminal escape there must not reach the screen."""
    world = World(judge=lambda _r: [verdict(Outcome.FAIL)])
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    obj = wrapped(world)
    hostile = "canary\x1b]0;PWNED\x07\x1b[2J\u202e"
    obj["status"]["analysis"]["metrics"][0]["evidence"]["queries"] = {hostile: "sum(x) \x1b[31m"}
    for shown in (oncall.explain(obj), render_html(obj, oncall.explain(obj))):
        assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "  query canary\\x1b]0;PWNED\\x07\\x1b[2J\\u202e: sum(x) \\x1b[31m" in oncall.explain(obj).splitlines()
    assert printable({hostile: [{hostile: 1}]}) == {printable(hostile): [{printable(hostile): 1}]}


def test_a_max_rate_failure_shows_the_max_rate_tests_numbers(oncall: OnCall) -> None:
    judged = proportion_judge("nsfw-rate", 3000, 10000, 2900, 10000, ProportionCriteria(max_rate=0.05))
    assert judged.outcome is Outcome.FAIL and "maxRate" in judged.reason
    world = World(judge=lambda _r: [judged])
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    obj = wrapped(world)
    deciding = judged.evidence["max_rate_test"]
    text = oncall.explain(obj)
    assert f'"e_value": {deciding["e_value"]}' in text and f'"boundary": {deciding["boundary"]}' in text
    assert '"test": "maxRate test"' in text
    assert (f"maxRate test: e-value {deciding['e_value']:.4g} vs boundary {deciding['boundary']:.4g}"
            in render_html(obj))


def test_a_pass_shows_the_relative_test_its_reason_quotes(oncall: OnCall) -> None:
    """Neither test crossed: the reason quotes the relative test's e-value, so the numbers beside it are its own."""
    judged = proportion_judge("nsfw-rate", 20, 1000, 2000, 100000, ProportionCriteria(max_rate=0.05))
    assert judged.outcome is Outcome.PASS and "max_rate_test" in judged.evidence
    relative = judged.evidence["relative"]
    obj = {"metadata": {"name": "r", "namespace": "ns"}, "spec": {"model": {"name": "m"}},
           "status": {"phase": "Progressing", "analysis": {"metrics": [
               {"name": judged.name, "outcome": "pass", "reason": judged.reason, "evidence": judged.evidence}]}}}
    assert f"e-value {relative['e_value']:.3g} < boundary {relative['boundary']:.3g}" in judged.reason
    text = oncall.explain(obj)
    assert f'"test": "relative test", "e_value": {relative["e_value"]}, "boundary": {relative["boundary"]}' in text
    assert (f"relative test: e-value {relative['e_value']:.4g} vs boundary {relative['boundary']:.4g}"
            in render_html(obj))


def test_get_shows_a_failing_gate_check_first_however_many_passed(oncall: OnCall) -> None:
    verdicts = [{"name": f"recall-class-{i}", "outcome": "pass", "reason": "ok"} for i in range(12)]
    verdicts.append({"name": "recall-blue-sparrow", "outcome": "fail", "reason": "0.12 < 0.9"})
    oncall.print_rollout({"metadata": {"name": "r", "namespace": "ns"}, "spec": {}, "status": {
        "phase": "Failed", "gate": {"outcome": "fail", "reason": "1 of 13 checks failed", "verdicts": verdicts}}})
    lines = oncall.out.getvalue().splitlines()
    gate = lines.index(next(line for line in lines if line.startswith("Gate:")))
    assert lines[gate + 1].strip() == "1 of 13 checks failed"
    assert lines[gate + 2].split() == ["fail", "recall-blue-sparrow:", "0.12", "<", "0.9"]
    assert lines[gate + 3].split()[:2] == ["pass", "recall-class-0:"]
    assert lines[gate + 12].strip() == "… and 3 more (`-o yaml` shows them all)"


def test_an_alias_left_where_a_human_moved_it_is_told_as_such(oncall: OnCall) -> None:
    world = World(judge=lambda _r: [verdict(Outcome.FAIL)])
    world.registry.versions["5"] = {}
    world.run_until(lambda w: bool(w.status.canary_weight))
    world.registry.aliases["production"] = "5"
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    text = oncall.explain(wrapped(world))
    assert "@production was left on version 5, where it was moved outside this rollout" in text
    assert "confirmed on version 6" not in text and "Traffic is back on version 6" in text


def test_a_status_for_an_older_spec_or_none_at_all_says_so(oncall: OnCall) -> None:
    """The operator down or behind: the views must not pass an old outcome, or no status, off as the current one."""
    behind = {"metadata": {"name": "r", "namespace": "ns", "generation": 2}, "spec": {"model": {"name": "m"}},
              "status": {"phase": "RolledBack", "observedGeneration": 1, "message": "rolled back version 7",
                         "history": [{"time": "t", "event": "RolledBack", "detail": "d"}]}}
    oncall.print_rollout(behind)
    assert ("Note:       this status is for generation 1 of the spec; the operator has not acted on the current one "
            "(2) yet") in oncall.out.getvalue()
    assert oncall.explain(behind).splitlines()[1].startswith("This status is for generation 1")
    fresh = {"metadata": {"name": "r", "namespace": "ns", "generation": 1}, "spec": {"model": {"name": "m"}}}
    oncall.out = io.StringIO()
    oncall.print_rollout(fresh)
    oncall.print_history(fresh)
    shown = oncall.out.getvalue()
    assert "Note:       no status yet: the operator has not taken this rollout (is it running, and watching " \
           "namespace ns?)" in shown
    assert "no history yet; no status yet" in shown
    current = {**behind, "status": {**behind["status"], "observedGeneration": 2}}
    oncall.out = io.StringIO()
    oncall.print_rollout(current)
    assert "Note:" not in oncall.out.getvalue()


def test_an_already_stable_version_says_so_with_the_attempts_warnings(oncall: OnCall) -> None:
    # @production was moved by hand onto version 7, which a verdict had rejected: production runs it.
    world = World()
    world.registry.aliases["production"] = world.target.stable_version = "7"
    world.registry.versions["7"][REJECTED_TAG] = "true"
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    assert [e.event for e in world.status.history] == ["AlreadyStable", "PreviouslyRejected", "Succeeded"]
    lines = oncall.explain(wrapped(world)).splitlines()
    assert "Version 7 of nsfw-classifier was already the stable version: this attempt rolled nothing out." in lines
    assert not [line for line in lines if "in place of version 7" in line]
    at = lines.index("Warnings in this attempt:")
    assert lines[at + 1] == ("  PreviouslyRejected at 2026-01-05T09:00:00Z: version 7 carries modelrollout.rejected: "
                             "true")
    assert lines[at + 2].startswith("Last event: Succeeded")


def test_get_of_a_rollout_sent_back_to_the_stable_version_mid_canary_claims_no_step_set_its_weight(
        oncall: OnCall) -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and bool(w.status.canary_weight))
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "6"}}  # the version in production
    world.generation += 1
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    assert world.status.current_step is None
    oncall.print_rollout(wrapped(world))
    lines = oncall.out.getvalue().splitlines()
    assert next(line for line in lines if line.startswith("Weight:")) == \
        f"Weight:     {world.status.canary_weight}%"
    assert "  condition GatePassed=Unknown (GateNotRun)" in lines
    assert "  condition AnalysisHealthy=Unknown (AnalysisNotRun)" in lines


def test_explain_lists_only_the_current_attempts_warnings(oncall: OnCall) -> None:
    world = World(judge=lambda _r: [verdict(Outcome.FAIL)])
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)  # attempt 1: AnalysisFailed, RollbackStarted...
    world.judge = lambda _r: [verdict(Outcome.PASS)]
    world.target.stable_version = "5"  # the target serves another version than @production names
    world.send(CommandAction.RETRY)
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and bool(w.status.canary_weight))
    text = oncall.explain(wrapped(world))
    warnings = text.split("Warnings in this attempt:\n")[1].split("\nLast event:")[0].splitlines()
    # Not attempt 1's AnalysisFailed, RollbackStarted or RolledBack; the retried version carries its rejection.
    assert [line.split()[0] for line in warnings] == ["StableMismatch", "PreviouslyRejected"], warnings
    assert "serves version 5 as stable while @production names 6" in warnings[0]


def test_a_passed_gate_is_told_by_its_count_not_its_first_check(oncall: OnCall) -> None:
    world = World(gate_verdicts=[verdict(Outcome.PASS, "dataset.sha256", "matches the pinned sha256"),
                                 verdict(Outcome.PASS, "accuracy", "0.98"), verdict(Outcome.PASS, "recall", "0.97")])
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING)
    obj = wrapped(world)
    assert obj["status"]["gate"]["reason"] == "3 checks passed"  # as the GatePassed entry words it
    assert next(e.detail for e in world.status.history if e.event == "GatePassed").startswith("3 checks passed")
    assert oncall.explain(obj).splitlines()[2].endswith(": 3 checks passed")
    oncall.print_rollout(obj)
    lines = oncall.out.getvalue().splitlines()
    assert lines[lines.index(next(line for line in lines if line.startswith("Gate:"))) + 1].strip() == \
        "3 checks passed"


def test_explain_lists_every_failed_gate_check_as_get_caps_them(oncall: OnCall) -> None:
    verdicts = [{"name": f"slice logo-{i}", "outcome": "fail", "reason": "0.1 < 0.9"} for i in range(12)]
    verdicts += [{"name": "accuracy", "outcome": "pass", "reason": "0.98"},
                 {"name": "recall-cat", "outcome": "inconclusive", "reason": "only 3 samples"}]
    lines = oncall.explain({"metadata": {"name": "r", "namespace": "ns"}, "spec": {"model": {"name": "m"}}, "status": {
        "phase": "RolledBack", "gate": {"outcome": "fail", "datasetSha256": "ab", "reason": "golden gate slice logo-0: "
                                        "0.1 < 0.9", "verdicts": verdicts}}}).splitlines()
    at = lines.index("The golden gate said fail on the dataset with sha256 ab: golden gate slice logo-0: 0.1 < 0.9")
    assert [line.split()[:3] for line in lines[at + 1:at + 11]] == [["fail", "slice", f"logo-{i}:"] for i in range(10)]
    assert lines[at + 11] == "  … and 3 more (`modelrollout get -o yaml` shows them all)"
    assert not [line for line in lines if "accuracy" in line]  # a pass is not why it failed


def test_a_compacted_gate_points_to_the_evidence_run_not_to_yaml(oncall: OnCall) -> None:
    # Status keeps at most 50 verdicts per outcome other than pass: `-o yaml` shows no more than get does, the rest
    # are only in the MLflow evidence run (review s25r2gate finding 4).
    verdicts = [{"name": f"slice logo-{i}", "outcome": "fail", "reason": "0.1 < 0.9"} for i in range(50)]
    verdicts += [{"name": "more checks failed", "outcome": "fail", "reason": "1950 more checks failed: ..."},
                 {"name": "accuracy", "outcome": "pass", "reason": "0.98"}]
    obj = {"metadata": {"name": "r", "namespace": "ns"}, "spec": {"model": {"name": "m"}}, "status": {
        "phase": "RolledBack", "gate": {"outcome": "fail", "datasetSha256": "ab", "reason": "slice logo-0: 0.1 < 0.9",
                                        "verdicts": verdicts}}}
    evidence = ("the gate's MLflow evidence run has every check in gate-report.json (the candidate version's "
                "`modelrollout.gate.run_id` tag names the run)")
    assert f"  … and 41 more ({evidence})" in oncall.explain(obj).splitlines()
    oncall.print_rollout(obj)
    assert f"  … and 42 more ({evidence})" in oncall.out.getvalue().splitlines()
    assert "shows them all" not in oncall.out.getvalue()


def test_history_aligns_its_columns_past_the_longest_event(oncall: OnCall) -> None:
    events = ["Resolved", "ProgressDeadlineExceeded", "RolledBackForNewCandidate", "GatePassed"]
    oncall.print_history({"metadata": {"name": "r", "namespace": "ns"}, "spec": {}, "status": {"history": [
        {"time": "2026-01-05T09:00:00Z", "event": event, "actor": "modelrollout-controller", "detail": "d"}
        for event in events]}})
    lines = oncall.out.getvalue().splitlines()
    assert len({line.index("modelrollout-controller") for line in lines}) == 1, lines
    assert len({line.rindex(" d") for line in lines}) == 1, lines
