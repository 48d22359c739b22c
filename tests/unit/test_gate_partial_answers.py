"""Samples an endpoint left unanswered (a 503 batch, a timeout) never fail a check: it fails only if it fails even with
every one of them in the candidate's favour, and is inconclusive otherwise, naming how many. A golden set sorted by
class loses whole classes to a few 503 batches: the answered rest must not reject a good model (review s25gate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from test_gate_judge import SHA, by_name, tally
from test_gate_support import endpoint, http_server, run

from controller.api.spec import ClassThresholds, GoldenThresholds
from controller.gate import GateOptions, GateReport, evaluate_dataset_file
from controller.gate.formats import write_jsonl_dataset
from controller.gate.judge import JudgeSettings, judge
from controller.verdict import Outcome

CLASSES = ("safe", "suggestive", "nsfw")


def sorted_dataset(path: Path) -> str:
    """100 samples of each class, sorted by class; feature k is 1 for class k, feature 3 numbers the sample."""
    index = np.repeat(np.arange(3), 100)
    features = np.zeros((300, 4))
    features[np.arange(300), index] = 1.0
    features[:, 3] = np.arange(300)
    return write_jsonl_dataset(path, CLASSES, features, [CLASSES[i] for i in index])


def model(nsfw_missed: int, busy_on_safe: bool) -> Any:
    """Right on safe and suggestive; calls the first `nsfw_missed` of every 100 nsfw samples suggestive. Busy (503)
    for a batch of nothing but safe samples, when `busy_on_safe`."""
    async def handler(request: web.Request) -> web.Response:
        rows = np.asarray((await request.json())["inputs"][0]["data"]).reshape(-1, 4)
        predicted = rows[:, :3].argmax(axis=1)
        if busy_on_safe and (predicted == 0).all():
            return web.Response(status=503, text="overloaded")
        missed = (predicted == 2) & (rows[:, 3] % 100 < nsfw_missed)
        labels = [CLASSES[1] if miss else CLASSES[k] for k, miss in zip(predicted, missed, strict=True)]
        return web.json_response({"outputs": [{"name": "label", "shape": [len(labels)], "datatype": "BYTES",
                                               "data": labels}]})
    return handler


def gate(tmp_path: Path, thresholds: dict[str, Any], nsfw_missed: int, busy_on_safe: bool,
         with_stable: bool = False) -> GateReport:
    path = tmp_path / "sorted.jsonl"
    sha = sorted_dataset(path)

    async def scenario() -> GateReport:
        async with http_server(model(nsfw_missed, busy_on_safe)) as candidate, \
                http_server(model(nsfw_missed, False)) as stable:
            return await evaluate_dataset_file(
                path, {"uri": "configmap://golden/data", "sha256": sha, "thresholds": thresholds},
                endpoint(candidate), endpoint(stable) if with_stable else None,
                options=GateOptions(batch_size=50, retries=0))

    return run(scenario())


def test_a_good_model_is_not_failed_by_the_batches_that_never_reached_it(tmp_path: Path) -> None:
    # 268/300 = 89.33% over the whole set; without the 100 safe samples (503) 168/200 = 84% < 88%.
    for with_stable in (False, True):
        thresholds = {"minAccuracy": 0.88, **({"maxAccuracyDrop": 0.02} if with_stable else {})}
        whole = gate(tmp_path, thresholds, nsfw_missed=32, busy_on_safe=False, with_stable=with_stable)
        assert whole.outcome is Outcome.PASS, whole.reason
        report = gate(tmp_path, thresholds, nsfw_missed=32, busy_on_safe=True, with_stable=with_stable)
        verdicts = by_name(list(report.verdicts))
        assert report.outcome is Outcome.INCONCLUSIVE, report.reason  # not FAIL: the engine would reject it
        accuracy = verdicts["minAccuracy"]
        assert accuracy.outcome is Outcome.INCONCLUSIVE
        assert accuracy.reason == ("candidate accuracy (168/200) 84.00% below the minimum 88.00%, but 100 samples "
                                   "went unanswered: with them in the candidate's favour it is 89.33%, so they "
                                   "decide it")
        assert accuracy.evidence["bestCase"] == {"unanswered": 100, "count": 32, "samples": 300,
                                                 "value": 268 / 300}


def test_a_model_bad_even_with_every_unanswered_sample_right_still_fails(tmp_path: Path) -> None:
    # 100 of 100 nsfw missed: 100/200 answered right, and 200/300 = 66.67% even with the 100 safe ones right.
    report = gate(tmp_path, {"minAccuracy": 0.88}, nsfw_missed=100, busy_on_safe=True)
    accuracy = by_name(list(report.verdicts))["minAccuracy"]
    assert report.outcome is Outcome.FAIL and accuracy.outcome is Outcome.FAIL
    assert accuracy.reason == ("candidate accuracy (100/200) 50.00% below the minimum 88.00% (66.67% even with its "
                               "100 unanswered samples in the candidate's favour)")


def test_class_checks_count_the_unanswered_samples_of_their_class_in_the_candidates_favour() -> None:
    # 100 safe, 100 nsfw; 50 nsfw unanswered (-1). Recall 40/50 = 80% on the answered, 90/100 with them right.
    labels = [0] * 100 + [1] * 100
    candidate = [0] * 100 + [1] * 40 + [0] * 10 + [-1] * 50
    verdicts = by_name(judge(GoldenThresholds(classes={"nsfw": ClassThresholds(min_recall=0.9)}),
                             tally(labels, candidate), JudgeSettings(), SHA))
    recall = verdicts["nsfw.minRecall"]
    assert recall.outcome is Outcome.INCONCLUSIVE and "but 50 samples went unanswered" in recall.reason
    candidate = [0] * 100 + [1] * 30 + [0] * 20 + [-1] * 50  # 80/100 even with them right
    assert by_name(judge(GoldenThresholds(classes={"nsfw": ClassThresholds(min_recall=0.9)}),
                         tally(labels, candidate), JudgeSettings(), SHA))["nsfw.minRecall"].outcome is Outcome.FAIL

    # False positives: 10 of 50 answered safe samples flagged nsfw (20%); 50 safe unanswered: 10/100 = 10%.
    labels = [0] * 100 + [1] * 100
    candidate = [1] * 10 + [0] * 40 + [-1] * 50 + [1] * 100
    limit = GoldenThresholds(classes={"nsfw": ClassThresholds(max_false_positive_rate=0.1)})
    fpr = by_name(judge(limit, tally(labels, candidate), JudgeSettings(), SHA))["nsfw.maxFalsePositiveRate"]
    assert fpr.outcome is Outcome.INCONCLUSIVE and fpr.evidence["bestCase"]["samples"] == 100
    # Precision: 10 predicted nsfw wrongly of 60 (83%); the 50 unanswered nsfw right: 100/110 = 90.9%.
    labels = [0] * 100 + [1] * 100
    candidate = [1] * 10 + [0] * 90 + [1] * 50 + [-1] * 50
    precision = by_name(judge(GoldenThresholds(classes={"nsfw": ClassThresholds(min_precision=0.9)}),
                              tally(labels, candidate), JudgeSettings(), SHA))["nsfw.minPrecision"]
    assert precision.outcome is Outcome.INCONCLUSIVE


def test_only_the_candidates_own_unanswered_samples_are_credited_in_the_comparison() -> None:
    # Stable answered only the nsfw half (503 on the safe half), all right; the candidate answered all, right on safe
    # and 190/200 nsfw: a 5% drop on the samples both answered. Stable's missing half just leaves those pairs out:
    # counting stable wrong there (its best case before review s25r2gate) let one stable 503 batch hide a clearly
    # worse candidate, so the comparison fails.
    labels = [0] * 200 + [1] * 200
    candidate = [0] * 200 + [1] * 190 + [0] * 10
    stable = [-1] * 200 + [1] * 200
    thresholds = GoldenThresholds(max_accuracy_drop=0.02, max_disagreement=0.03)
    verdicts = by_name(judge(thresholds, tally(labels, candidate, stable), JudgeSettings(slice_checks=False), SHA))
    drop, disagreement = verdicts["maxAccuracyDrop"], verdicts["maxDisagreement"]
    assert drop.outcome is Outcome.FAIL, drop.reason
    assert drop.reason == ("accuracy drop (stable 200/200, candidate 190/200) 5.00% above the maximum 2.00%")
    assert disagreement.outcome is Outcome.FAIL and "bestCase" not in disagreement.evidence
    # The candidate's own unanswered samples are credited (right, agreeing with stable), stable's still are not:
    # the candidate leaves 100 nsfw unanswered (stable answered them), stable the safe half: 3 lost of the 100
    # paired (3%), 3 of the 200 stable answered (1.5%) with the candidate's 100 right; the safe half is left out.
    candidate = [0] * 200 + [1] * 97 + [0] * 3 + [-1] * 100
    verdicts = by_name(judge(thresholds, tally(labels, candidate, stable), JudgeSettings(slice_checks=False), SHA))
    drop, disagreement = verdicts["maxAccuracyDrop"], verdicts["maxDisagreement"]
    assert drop.outcome is Outcome.INCONCLUSIVE and "but 100 samples went unanswered" in drop.reason
    assert drop.evidence["bestCase"] == {"unanswered": 100, "count": 3, "samples": 200, "value": 3 / 200}
    assert disagreement.evidence["bestCase"]["value"] == 3 / 200
    # Every sample answered by both (stable right throughout): 10/400 = 2.5% lost fails the 2% drop.
    candidate = [0] * 200 + [1] * 190 + [0] * 10
    verdicts = by_name(judge(thresholds, tally(labels, candidate, list(labels)), JudgeSettings(slice_checks=False),
                             SHA))
    assert verdicts["maxAccuracyDrop"].outcome is Outcome.FAIL
    # Far beyond even in the candidate's favour: 100 of 200 paired flipped, 50 more unanswered by the candidate.
    candidate = [0] * 200 + [1] * 50 + [0] * 100 + [-1] * 50
    verdicts = by_name(judge(thresholds, tally(labels, candidate, stable), JudgeSettings(slice_checks=False), SHA))
    assert verdicts["maxDisagreement"].outcome is Outcome.FAIL
    assert "50.00% even with its 50 unanswered samples" in verdicts["maxDisagreement"].reason


def test_a_slice_the_candidate_answered_wrongly_fails_though_stable_left_it_unanswered() -> None:
    # Slice "logo": 30 safe samples, the candidate (a backdoor) calls every one nsfw; stable answered only the first
    # 5 (a 503 batch), all right. The candidate's 25 wrong answers where stable did not answer are not "unanswered in
    # its favour": the minAccuracy floor tests all 30 of its answers, and the comparisons the 5 pairs.
    labels = [0] * 30 + [0] * 1000 + [1] * 1000
    candidate = [1] * 30 + labels[30:]
    stable = [0] * 5 + [-1] * 25 + labels[30:]
    slices = {"logo": list(range(30))}
    thresholds = GoldenThresholds(min_accuracy=0.9, max_accuracy_drop=0.02, max_disagreement=0.05)
    verdicts = by_name(judge(thresholds, tally(labels, candidate, stable, slices), JudgeSettings(), SHA))
    floor = verdicts["slice logo.minAccuracy"]
    assert floor.outcome is Outcome.FAIL, floor.reason
    assert floor.reason.startswith("candidate accuracy on slice logo (0/30) 0.00% credibly below the minimum 90.00%")
    assert "bestCase" not in floor.evidence
    for name in ("slice logo.maxAccuracyDrop", "slice logo.maxDisagreement"):
        assert verdicts[name].outcome is Outcome.FAIL, verdicts[name].reason
        assert "bestCase" not in verdicts[name].evidence
    # Where stable's accuracy is the lower floor, the candidate is credited only where it left a pair unanswered:
    # stable right on 10 of 20 answered (50%), the candidate 0 of those 20 paired, 2 more of its own unanswered.
    labels = [0] * 30 + [0] * 1000 + [1] * 1000
    stable = [0] * 10 + [1] * 10 + [-1] * 10 + labels[30:]
    candidate = [1] * 18 + [-1] * 2 + [1] * 10 + labels[30:]
    verdicts = by_name(judge(thresholds, tally(labels, candidate, stable, slices), JudgeSettings(), SHA))
    floor = verdicts["slice logo.minAccuracy"]
    assert "stable's accuracy there" in floor.reason
    assert floor.evidence["bestCase"] == {"unanswered": 2, "count": 18, "samples": 20, "value": 2 / 20}
    assert floor.outcome is Outcome.FAIL, floor.reason


def test_a_slice_credibly_beyond_only_without_its_unanswered_samples_is_inconclusive() -> None:
    # Slice "logo": 220 safe samples; the candidate answered 20 of them (4 flipped to nsfw: credible at a 2% limit)
    # and left 200 unanswered; 2000 more samples answered alike. Counted in its favour: 4 of 220, chance.
    labels = [0] * 220 + [0] * 1000 + [1] * 1000
    stable = list(labels)
    candidate = [1] * 4 + [0] * 16 + [-1] * 200 + labels[220:]
    slices = {"logo": list(range(220))}
    thresholds = GoldenThresholds(max_disagreement=0.02)
    logo = by_name(judge(thresholds, tally(labels, candidate, stable, slices), JudgeSettings(), SHA))[
        "slice logo.maxDisagreement"]
    assert logo.outcome is Outcome.INCONCLUSIVE, logo
    assert "credibly above the maximum" in logo.reason and "but 200 samples went unanswered" in logo.reason
    assert logo.evidence["pValue"] < logo.evidence["alpha"] <= logo.evidence["pValueBestCase"]
    # All 20 flipped: credible even with the 200 counted as agreeing.
    candidate = [1] * 20 + [-1] * 200 + labels[220:]
    logo = by_name(judge(thresholds, tally(labels, candidate, stable, slices), JudgeSettings(), SHA))[
        "slice logo.maxDisagreement"]
    assert logo.outcome is Outcome.FAIL and "even with its 200 unanswered samples" in logo.reason
