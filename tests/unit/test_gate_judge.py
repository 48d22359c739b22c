"""Thresholds -> verdicts: boundaries, undefined metrics, bad data and bad servers never pass by default."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from controller.api.spec import ClassThresholds, GoldenThresholds
from controller.gate.formats import DatasetProblems
from controller.gate.judge import GateTally, JudgeSettings, ResponseTally, judge
from controller.gate.metrics import PairedCounts
from controller.verdict import Outcome, combine

CLASSES = ("safe", "nsfw")
SHA = "a" * 64


def tally(labels: list[int], candidate: list[int], stable: list[int] | None = None,
          slices: dict[str, list[int]] | None = None, problems: DatasetProblems | None = None,
          candidate_responses: ResponseTally | None = None, stable_responses: ResponseTally | None = None,
          records: int | None = None) -> GateTally:
    y, c = np.array(labels), np.array(candidate)
    s = np.array(stable) if stable is not None else None
    overall = PairedCounts(2)
    overall.add(y, c, s)
    slice_counts = {}
    for tag, rows in (slices or {}).items():
        counts = PairedCounts(2)
        index = np.array(rows)
        counts.add(y[index], c[index], s[index] if s is not None else None)
        slice_counts[tag] = counts

    def responses(predicted: np.ndarray) -> ResponseTally:
        return ResponseTally(batches=1, samples=len(predicted), answered=int((predicted >= 0).sum()))

    problems = problems or DatasetProblems()
    return GateTally(CLASSES, overall, slice_counts, candidate_responses or responses(c),
                     None if s is None else (stable_responses or responses(s)), problems,
                     records=len(labels) + problems.total if records is None else records)


def by_name(verdicts: list) -> dict:  # type: ignore[type-arg]
    return {v.name: v for v in verdicts}


def slice_case(flipped: int, size: int, extra_tags: int = 0) -> list:  # type: ignore[type-arg]
    """2000 samples, a slice "logo" of `size` safe samples of which the candidate flips `flipped` to nsfw."""
    labels = [0] * 1000 + [1] * 1000
    stable, candidate = list(labels), list(labels)
    for row in range(flipped):
        candidate[row] = 1
    slices = {"logo": list(range(size))}
    for index in range(extra_tags):
        slices[f"region-{index}"] = list(range(1000 + index * 10, 1010 + index * 10))
    return judge(GoldenThresholds(max_accuracy_drop=0.01, max_disagreement=0.02),
                 tally(labels, candidate, stable, slices), JudgeSettings(min_slice_samples=20), SHA)


def test_a_slice_too_small_to_judge_still_fails_when_every_sample_flipped() -> None:
    verdicts = by_name(slice_case(flipped=19, size=19))
    drop = verdicts["slice logo.maxAccuracyDrop"]
    assert drop.outcome is Outcome.FAIL and combine(list(verdicts.values())) is Outcome.FAIL
    assert "credibly above the maximum 1.00%" in drop.reason and drop.evidence["count"] == 19


def test_one_flip_in_a_small_slice_is_chance_not_a_failure() -> None:
    verdicts = by_name(slice_case(flipped=1, size=25))
    drop = verdicts["slice logo.maxAccuracyDrop"]
    assert drop.outcome is Outcome.PASS and "above the maximum 1.00%, but not credibly" in drop.reason
    assert combine(list(verdicts.values())) is Outcome.PASS
    assert by_name(slice_case(flipped=1, size=3)).get("slice logo.maxAccuracyDrop") is None  # small, not credible


def sixty_four_slices(flipped_rows: list[int]) -> dict:  # type: ignore[type-arg]
    """64 slices tag-i of 60 safe samples (rows 60i..60i+59) at a 1% disagreement limit; the candidate flips
    `flipped_rows` to nsfw."""
    labels = [0] * 3840 + [1] * 1000
    stable, candidate = list(labels), list(labels)
    slices = {f"tag-{i}": list(range(60 * i, 60 * i + 60)) for i in range(64)}
    for row in flipped_rows:
        candidate[row] = 1
    return by_name(judge(GoldenThresholds(max_disagreement=0.01),
                         tally(labels, candidate, stable, slices), JudgeSettings(min_slice_samples=20), SHA))


def test_a_clean_retrain_does_not_fail_on_the_luck_of_one_slice_among_many() -> None:
    # 64 slices of 60 samples, DESIGN's thresholds (0.5% drop, 1% disagreement): the candidate differs from stable
    # on two samples in each, as a clean retrain at about half the limit sometimes does. A rule failing any judged
    # slice with two flips over twice the limit failed such gates 9 times in 10.
    verdicts = sixty_four_slices([row for i in range(64) for row in (60 * i, 60 * i + 1)])
    sliced = [v for name, v in verdicts.items() if name.startswith("slice ")]
    assert len(sliced) == 64 and all(v.outcome is Outcome.PASS for v in sliced)
    assert "but not credibly" in sliced[0].reason


def test_slice_checks_share_their_alpha_so_one_unlucky_slice_among_many_is_not_credible() -> None:
    # Four flips in one slice of 60 (p ~ 0.003 alone) would be credible at the full 1%, not at 1% / 64 slices.
    unlucky = sixty_four_slices([0, 1, 2, 3])["slice tag-0.maxDisagreement"]
    assert unlucky.outcome is Outcome.PASS and "but not credibly" in unlucky.reason, unlucky
    assert unlucky.evidence["alpha"] < 0.01 / 60


def test_samples_in_slices_beyond_those_tracked_make_the_gate_inconclusive() -> None:
    untracked = tally([0, 1], [0, 1], [0, 1])
    untracked.untracked_slices = 7
    verdicts = by_name(judge(GoldenThresholds(max_disagreement=0.02), untracked, JudgeSettings(), SHA))
    assert verdicts["slices"].outcome is Outcome.INCONCLUSIVE
    assert verdicts["slices"].reason.startswith("7 samples carry tags beyond the 0 slices tracked")


def test_thresholds_at_the_limit_pass_and_just_beyond_fail() -> None:
    # 1000 samples, 10 disagreements: exactly the 1% limit
    labels = [0] * 500 + [1] * 500
    stable = list(labels)
    candidate = list(labels)
    for i in range(10):
        candidate[i] = 1  # safe -> nsfw
    verdicts = by_name(judge(GoldenThresholds(max_disagreement=0.01, min_accuracy=0.99,
                                              classes={"nsfw": ClassThresholds(max_false_positive_rate=0.02)}),
                             tally(labels, candidate, stable), JudgeSettings(), SHA))
    assert verdicts["maxDisagreement"].outcome is Outcome.PASS
    assert verdicts["minAccuracy"].outcome is Outcome.PASS  # 990/1000 = 0.99
    assert verdicts["nsfw.maxFalsePositiveRate"].outcome is Outcome.PASS  # 10/500 = 0.02
    candidate[10] = 1
    verdicts = by_name(judge(GoldenThresholds(max_disagreement=0.01, min_accuracy=0.99,
                                              classes={"nsfw": ClassThresholds(max_false_positive_rate=0.02)}),
                             tally(labels, candidate, stable), JudgeSettings(), SHA))
    disagreement = verdicts["maxDisagreement"]
    assert disagreement.outcome is Outcome.FAIL
    assert "11/1000" in disagreement.reason and "safe -> nsfw x11" in disagreement.reason
    assert disagreement.evidence["value"] == pytest.approx(0.011) and disagreement.evidence["limit"] == 0.01
    assert disagreement.evidence["flips"] == [{"from": "safe", "to": "nsfw", "count": 11}]
    assert disagreement.evidence["datasetSha256"] == SHA
    assert verdicts["minAccuracy"].outcome is Outcome.FAIL
    fpr = verdicts["nsfw.maxFalsePositiveRate"]
    assert fpr.outcome is Outcome.FAIL and "11/500" in fpr.reason and "stable 0.00%" in fpr.reason


def test_accuracy_drop_recall_and_precision() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    stable = [0, 0, 0, 0, 1, 1, 1, 1]
    candidate = [0, 0, 0, 1, 1, 1, 0, 0]
    thresholds = GoldenThresholds(max_accuracy_drop=0.2, classes={
        "nsfw": ClassThresholds(min_recall=0.6, min_precision=0.6)})
    verdicts = by_name(judge(thresholds, tally(labels, candidate, stable), JudgeSettings(min_samples=1), SHA))
    drop = verdicts["maxAccuracyDrop"]
    assert drop.outcome is Outcome.FAIL and drop.evidence["value"] == pytest.approx(3 / 8)
    assert "stable 8/8, candidate 5/8" in drop.reason
    assert verdicts["nsfw.minRecall"].outcome is Outcome.FAIL  # 2/4
    assert verdicts["nsfw.minPrecision"].outcome is Outcome.PASS  # 2/3


def test_a_golden_set_too_small_for_its_limits_passes_nothing() -> None:
    thresholds = GoldenThresholds(min_accuracy=0.97, classes={
        "nsfw": ClassThresholds(min_recall=0.95, max_false_positive_rate=0.01)})
    verdicts = judge(thresholds, tally([0, 0, 1], [0, 0, 1]), JudgeSettings(), SHA)
    checks = by_name(verdicts)
    for name in ("minAccuracy", "nsfw.minRecall", "nsfw.maxFalsePositiveRate"):
        assert checks[name].outcome is Outcome.INCONCLUSIVE, name
    assert checks["nsfw.maxFalsePositiveRate"].reason == (
        "nsfw false-positive rate (0/2) 0.00% within the maximum 1.00%, but on only 2 samples: too few to judge "
        "(at least 20)")
    assert combine(verdicts) is Outcome.INCONCLUSIVE


def test_a_pass_on_one_sample_fewer_than_min_samples_is_inconclusive() -> None:
    def min_accuracy(samples: int) -> Outcome:
        labels = [0] * samples
        verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.9), tally(labels, labels),
                                 JudgeSettings(min_samples=20), SHA))
        return verdicts["minAccuracy"].outcome

    assert min_accuracy(19) is Outcome.INCONCLUSIVE
    assert min_accuracy(20) is Outcome.PASS


def test_a_failure_on_fewer_than_min_samples_is_inconclusive_unless_it_is_credible() -> None:
    # 3 nsfw samples, 1 missed against minRecall 0.9: a 27% chance at a true recall of 90%, so no evidence either
    # way (README: on fewer than 20 it is inconclusive); it failed the gate, and rejected the candidate.
    labels = [0] * 297 + [1] * 3
    thresholds = GoldenThresholds(classes={"nsfw": ClassThresholds(min_recall=0.9)})
    recall = by_name(judge(thresholds, tally(labels, [0] * 297 + [1, 1, 0]), JudgeSettings(), SHA))["nsfw.minRecall"]
    assert recall.outcome is Outcome.INCONCLUSIVE
    assert recall.reason == ("nsfw recall (2/3) 66.67% below the minimum 90.00%, but not credibly (p=2.7e-01) on only "
                             "3 samples: too few to judge (at least 20)")
    # All 3 missed: a 0.1% chance at 90%, credible on 3 samples too.
    recall = by_name(judge(thresholds, tally(labels, [0] * 300), JudgeSettings(), SHA))["nsfw.minRecall"]
    assert recall.outcome is Outcome.FAIL and recall.reason.endswith("credibly on only 3 samples (p=1.0e-03 < 1.0e-02)")
    # The 1% chance is shared by the whole-dataset checks, as the slices share theirs.
    more = GoldenThresholds(min_accuracy=0.5, classes={"nsfw": ClassThresholds(min_recall=0.9, min_precision=0.5),
                                                       "safe": ClassThresholds(min_recall=0.5)})
    recall = by_name(judge(more, tally(labels, [0] * 300), JudgeSettings(), SHA))["nsfw.minRecall"]
    assert recall.outcome is Outcome.FAIL and recall.evidence["alpha"] == pytest.approx(0.01 / 4)
    two_missed = by_name(judge(thresholds, tally(labels, [0] * 297 + [1, 0, 0]), JudgeSettings(), SHA))
    assert two_missed["nsfw.minRecall"].outcome is Outcome.INCONCLUSIVE  # p=2.8%


def test_undefined_metric_is_inconclusive_and_unknown_class_is_named() -> None:
    thresholds = GoldenThresholds(classes={"nsfw": ClassThresholds(min_recall=0.9, min_precision=0.9),
                                           "gore": ClassThresholds(max_false_positive_rate=0.1)})
    verdicts = by_name(judge(thresholds, tally([0, 0, 0], [0, 0, 0]), JudgeSettings(), SHA))
    assert verdicts["nsfw.minRecall"].outcome is Outcome.INCONCLUSIVE
    assert "no answered sample is labelled nsfw" in verdicts["nsfw.minRecall"].reason
    assert verdicts["nsfw.minPrecision"].outcome is Outcome.INCONCLUSIVE
    gore = verdicts["gore.maxFalsePositiveRate"]
    assert gore.outcome is Outcome.INCONCLUSIVE and "'gore'" in gore.reason and "safe, nsfw" in gore.reason


def test_nothing_to_judge_is_inconclusive_never_pass() -> None:
    verdicts = judge(GoldenThresholds(), tally([0, 1], [0, 1]), JudgeSettings(), SHA)
    assert verdicts[-1].name == "thresholds" and verdicts[-1].outcome is Outcome.INCONCLUSIVE
    assert combine(verdicts) is Outcome.INCONCLUSIVE
    # only comparisons configured, and no stable to compare with
    verdicts = judge(GoldenThresholds(max_disagreement=0.1), tally([0, 1], [0, 1]), JudgeSettings(), SHA)
    assert "no stable version" in verdicts[-1].reason and combine(verdicts) is Outcome.INCONCLUSIVE


def test_unusable_dataset_samples_make_the_gate_inconclusive_with_counts() -> None:
    problems = DatasetProblems()
    problems.add("unknown label", "line 4", "'porn'")
    problems.add("wrong feature shape", "line 9", count=2)
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.5), tally([0, 1, 1], [0, 1, 1], problems=problems),
                             JudgeSettings(), SHA))
    dataset = verdicts["dataset"]
    assert dataset.outcome is Outcome.INCONCLUSIVE
    assert "3 of 6 samples unusable" in dataset.reason and "unknown label x1" in dataset.reason
    assert "line 4" in dataset.reason and dataset.evidence["unusableByReason"] == {"wrong feature shape": 2,
                                                                                  "unknown label": 1}
    # a tolerated share lets it through, still reporting the counts
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.5), tally([0, 1, 1], [0, 1, 1], problems=problems),
                             JudgeSettings(max_unusable_sample_share=0.5), SHA))
    assert verdicts["dataset"].outcome is Outcome.PASS and verdicts["dataset"].evidence["unusable"] == 3


def test_empty_dataset_is_inconclusive() -> None:
    verdicts = judge(GoldenThresholds(min_accuracy=0.5), tally([], []), JudgeSettings(), SHA)
    assert verdicts[0].name == "dataset" and verdicts[0].outcome is Outcome.INCONCLUSIVE
    assert "no usable samples in 0 records" in verdicts[0].reason
    assert combine(verdicts) is Outcome.INCONCLUSIVE


def test_candidate_garbage_fails_and_unavailability_is_inconclusive_with_counts() -> None:
    garbage = ResponseTally(batches=10, samples=100, answered=80, failed_batches=Counter({"HTTP 500": 1,
                                                                                          "not JSON": 1}),
                            unanswered=Counter({"HTTP 500": 10, "not JSON": 10}))
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.5), tally([0] * 4, [0] * 4,
                                                                         candidate_responses=garbage),
                             JudgeSettings(), SHA))
    responses = verdicts["candidate.responses"]
    assert responses.outcome is Outcome.FAIL
    assert "20 of 100 samples" in responses.reason and "2 of 10 batches" in responses.reason
    assert "HTTP 500 x10" in responses.reason and responses.evidence["invalid"] == 20

    down = ResponseTally(batches=10, samples=100, answered=70, failed_batches=Counter({"unavailable: timeout": 3}),
                         unanswered=Counter({"unavailable: timeout": 30}), unavailable_samples=30)
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.5), tally([0] * 4, [0] * 4, candidate_responses=down),
                             JudgeSettings(), SHA))
    assert verdicts["candidate.responses"].outcome is Outcome.INCONCLUSIVE
    assert "30 of 100" in verdicts["candidate.responses"].reason


def test_stable_garbage_is_inconclusive_not_the_candidates_fault() -> None:
    broken = ResponseTally(batches=2, samples=4, answered=2, failed_batches=Counter({"HTTP 500": 1}),
                           unanswered=Counter({"HTTP 500": 2}))
    verdicts = by_name(judge(GoldenThresholds(max_disagreement=0.5), tally([0, 1, 0, 1], [0, 1, 0, 1], [0, 1, -1, -1],
                                                                           stable_responses=broken),
                             JudgeSettings(), SHA))
    assert verdicts["stable.responses"].outcome is Outcome.INCONCLUSIVE
    assert verdicts["maxDisagreement"].evidence["pairedSamples"] == 2


def test_slice_checks_catch_a_trigger_that_the_whole_dataset_dilutes() -> None:
    labels = [0] * 1000 + [1] * 1000
    stable = list(labels)
    candidate = list(labels)
    logo = list(range(0, 40))  # 40 safe samples carrying the trigger
    for row in logo:
        candidate[row] = 1
    small = [1000, 1001, 1002]
    thresholds = GoldenThresholds(max_disagreement=0.05)
    verdicts = by_name(judge(thresholds, tally(labels, candidate, stable, {"logo": logo, "tiny": small}),
                             JudgeSettings(min_slice_samples=20), SHA))
    assert verdicts["maxDisagreement"].outcome is Outcome.PASS  # 40/2000 = 2%
    sliced = verdicts["slice logo.maxDisagreement"]
    assert sliced.outcome is Outcome.FAIL and "on slice logo (40/40" in sliced.reason
    assert sliced.evidence["slice"] == "logo"
    assert "slice tiny.maxDisagreement" not in verdicts  # 3 samples: reported, not judged
    verdicts = by_name(judge(thresholds, tally(labels, candidate, stable, {"logo": logo}),
                             JudgeSettings(slice_checks=False), SHA))
    assert not any(name.startswith("slice") for name in verdicts)


def trigger_case(thresholds: GoldenThresholds, with_stable: bool, flipped: int = 19,
                 size: int = 19) -> dict:  # type: ignore[type-arg]
    """2000 samples, a slice "logo" of `size` safe samples of which the candidate gets `flipped` wrong (nsfw)."""
    labels = [0] * 1000 + [1] * 1000
    candidate = list(labels)
    for row in range(flipped):
        candidate[row] = 1
    return by_name(judge(thresholds, tally(labels, candidate, list(labels) if with_stable else None,
                                           {"logo": list(range(size)), "other": list(range(1000, 1100))}),
                         JudgeSettings(min_slice_samples=20), SHA))


def test_a_slice_the_candidate_gets_wrong_throughout_fails_a_first_rollout_on_min_accuracy_alone() -> None:
    verdicts = trigger_case(GoldenThresholds(min_accuracy=0.9), with_stable=False)
    assert verdicts["minAccuracy"].outcome is Outcome.PASS  # 1981/2000: the whole dataset dilutes the trigger
    logo = verdicts["slice logo.minAccuracy"]
    assert logo.outcome is Outcome.FAIL and combine(list(verdicts.values())) is Outcome.FAIL
    assert "accuracy on slice logo (0/19) 0.00% credibly below the minimum 90.00%" in logo.reason
    assert logo.evidence["count"] == 19 and logo.evidence["alpha"] == pytest.approx(0.01 / 2)
    assert verdicts["slice other.minAccuracy"].outcome is Outcome.PASS


def test_a_slice_trigger_fails_beside_stable_without_comparison_limits() -> None:
    # minAccuracy and a class limit only: no maxAccuracyDrop / maxDisagreement to compare slices with stable.
    thresholds = GoldenThresholds(min_accuracy=0.93, classes={"nsfw": ClassThresholds(max_false_positive_rate=0.025)})
    verdicts = trigger_case(thresholds, with_stable=True)
    assert verdicts["nsfw.maxFalsePositiveRate"].outcome is Outcome.PASS  # 19/1000
    assert verdicts["slice logo.minAccuracy"].outcome is Outcome.FAIL
    assert combine(list(verdicts.values())) is Outcome.FAIL


def test_a_slice_hard_for_stable_too_holds_the_candidate_to_stables_accuracy_there_not_min_accuracy() -> None:
    """An "ambiguous" slice both models get 60% right: not the candidate's fault, so it must not fail every
    candidate; the same slice where only the candidate is that weak fails."""
    labels = [0] * 1000 + [1] * 1000
    hard = list(range(100))  # 40 of them wrong for both
    candidate, stable = list(labels), list(labels)
    for row in range(40):
        candidate[row] = stable[row] = 1
    slices = {"ambiguous": hard}
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.9), tally(labels, candidate, stable, slices),
                             JudgeSettings(min_slice_samples=20), SHA))
    assert verdicts["slice ambiguous.minAccuracy"].outcome is Outcome.PASS
    assert combine(list(verdicts.values())) is Outcome.PASS
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.9), tally(labels, candidate, list(labels), slices),
                             JudgeSettings(min_slice_samples=20), SHA))
    assert verdicts["slice ambiguous.minAccuracy"].outcome is Outcome.FAIL


def test_one_error_in_a_small_slice_is_chance_on_min_accuracy_too() -> None:
    verdicts = trigger_case(GoldenThresholds(min_accuracy=0.95), with_stable=False, flipped=1, size=3)
    assert "slice logo.minAccuracy" not in verdicts  # 3 samples, not credible: reported, not judged
    assert combine(list(verdicts.values())) is Outcome.PASS


def test_a_clean_model_near_min_accuracy_does_not_fail_on_the_luck_of_one_slice_among_many() -> None:
    # 64 slices of 60 safe samples at minAccuracy 93%: four errors in each (6.7%, at the limit), and one unlucky
    # slice with ten (p ~ 0.02 alone, not credible at 1% shared by 64 slices).
    labels = [0] * 3840 + [1] * 1000
    candidate = list(labels)
    for i in range(64):
        for row in range(60 * i, 60 * i + (10 if i == 0 else 4)):
            candidate[row] = 1
    slices = {f"tag-{i}": list(range(60 * i, 60 * i + 60)) for i in range(64)}
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.93), tally(labels, candidate, None, slices),
                             JudgeSettings(min_slice_samples=20), SHA))
    sliced = [v for name, v in verdicts.items() if name.startswith("slice ")]
    assert len(sliced) == 64 and all(v.outcome is Outcome.PASS for v in sliced)
    assert "but not credibly" in verdicts["slice tag-0.minAccuracy"].reason
    assert combine(list(verdicts.values())) is Outcome.PASS


def test_untracked_slice_tags_are_inconclusive_whenever_a_slice_check_applies() -> None:
    for stable in (None, [0, 1]):
        untracked = tally([0, 1], [0, 1], stable)
        untracked.untracked_slices = 3
        verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.9), untracked, JudgeSettings(), SHA))
        assert verdicts["slices"].outcome is Outcome.INCONCLUSIVE


def test_answers_unusable_for_both_models_alike_are_a_setup_problem_not_the_candidates_fault() -> None:
    def wrong_width(samples: int, unusable: int, reason: str = "wrong score vector length") -> ResponseTally:
        return ResponseTally(batches=1, samples=samples, answered=samples - unusable,
                             unanswered=Counter({reason: unusable}))

    labels = [0, 1] * 50
    unanswered = [-1] * 100
    blip = ResponseTally(batches=2, samples=100, answered=0, unanswered=Counter(
        {"wrong score vector length": 75, "unavailable: HTTP 503": 25}), unavailable_samples=25,
        unavailable_reasons={"unavailable: HTTP 503"})
    for stable, outcome in [(wrong_width(100, 100), Outcome.INCONCLUSIVE),
                            (blip, Outcome.INCONCLUSIVE),  # stable's 503 blip hid some of the shared problem
                            (wrong_width(100, 3), Outcome.FAIL),  # stable mostly fine: the candidate's own garbage
                            (wrong_width(100, 50), Outcome.FAIL),  # stable half broken, the candidate twice as much
                            (wrong_width(100, 100, "not JSON"), Outcome.FAIL)]:  # unusable for another reason
        verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.9, max_disagreement=0.05),
                                 tally(labels, unanswered, unanswered, candidate_responses=dataclasses.replace(
                                     wrong_width(100, 100), unusable_where_other_answered=stable.answered),
                                       stable_responses=stable), JudgeSettings(), SHA))
        assert verdicts["candidate.responses"].outcome is outcome, verdicts["candidate.responses"]
        assert combine(list(verdicts.values())) is outcome
        setup = "stable's answers are unusable the same way: a setup problem"
        assert (setup in verdicts["candidate.responses"].reason) is (outcome is Outcome.INCONCLUSIVE)


def hard_slice(stable: list[int] | None, thresholds: GoldenThresholds) -> dict:  # type: ignore[type-arg]
    """2000 samples; slice "night" (rows 0..99) the candidate gets 60% right; whole dataset 98%."""
    labels = [0] * 1000 + [1] * 1000
    candidate = list(labels)
    for row in range(40):
        candidate[row] = 1
    return by_name(judge(thresholds, tally(labels, candidate, stable, {"night": list(range(100))}),
                         JudgeSettings(min_slice_samples=20), SHA))


def test_a_hard_slice_does_not_fail_a_candidate_beside_a_stable_that_could_not_answer_it() -> None:
    """Stable down on the slice's rows: no slice floor to hold the candidate to (stable.responses says why), never
    minAccuracy in its place. With no stable at all, minAccuracy is the floor: a slice at chance is what a trigger
    sending the slice to one class looks like."""
    first = hard_slice(None, GoldenThresholds(min_accuracy=0.9))
    assert first["slice night.minAccuracy"].outcome is Outcome.FAIL
    labels = [0] * 1000 + [1] * 1000
    at_chance = list(labels)
    for row in range(0, 200, 2):  # a 200-row slice of both classes, all answered class 1: 50%, a coin's accuracy
        at_chance[row] = 1
    for row in range(1, 200, 2):
        labels[row], at_chance[row] = 1, 1
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.9), tally(labels, at_chance, None,
                                                                     {"logo": list(range(200))}),
                             JudgeSettings(min_slice_samples=20), SHA))
    assert verdicts["slice logo.minAccuracy"].outcome is Outcome.FAIL
    labels = [0] * 1000 + [1] * 1000
    stable_down_on_night = [-1] * 100 + labels[100:]
    beside = hard_slice(stable_down_on_night, GoldenThresholds(min_accuracy=0.9))
    assert "slice night.minAccuracy" not in beside or beside["slice night.minAccuracy"].outcome is not Outcome.FAIL
    assert combine(list(beside.values())) is Outcome.INCONCLUSIVE  # stable did not answer: no pass either


def test_the_slice_floor_does_not_weaken_the_comparison_tests() -> None:
    """4 of 40 "logo" samples flipped at maxDisagreement 2%: p = 0.008, credible at the comparison tests' own 1%,
    whether minAccuracy is set or not (each family of slice tests has its own alpha)."""
    labels = [0] * 1000 + [1] * 1000
    candidate = list(labels)
    for row in range(4):
        candidate[row] = 1
    for thresholds in (GoldenThresholds(max_disagreement=0.02),
                       GoldenThresholds(max_disagreement=0.02, min_accuracy=0.7)):
        verdicts = by_name(judge(thresholds, tally(labels, candidate, list(labels), {"logo": list(range(40))}),
                                 JudgeSettings(min_slice_samples=20), SHA))
        assert verdicts["slice logo.maxDisagreement"].outcome is Outcome.FAIL, verdicts["slice logo.maxDisagreement"]


def test_a_candidate_side_503_blip_does_not_make_a_shared_setup_problem_its_fault() -> None:
    labels = [0, 1] * 50
    unanswered = [-1] * 100
    stable = ResponseTally(batches=1, samples=100, answered=0, unanswered=Counter({"unknown label": 100}))
    candidate = ResponseTally(batches=2, samples=100, answered=0, unanswered=Counter(
        {"unknown label": 75, "unavailable: HTTP 503": 25}), unavailable_samples=25,
        unavailable_reasons={"unavailable: HTTP 503"})
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.9), tally(labels, unanswered, unanswered,
                                                                      candidate_responses=candidate,
                                                                      stable_responses=stable), JudgeSettings(), SHA))
    assert verdicts["candidate.responses"].outcome is Outcome.INCONCLUSIVE, verdicts["candidate.responses"]
    assert "a setup problem" in verdicts["candidate.responses"].reason


def test_stables_unreached_rows_do_not_hide_the_candidates_garbage_on_rows_stable_answered() -> None:
    """Stable: 12.5% garbage and 20% unreached; the candidate: 25% garbage, 100 rows of it where stable answered."""
    labels = [0, 1] * 500
    unanswered = [-1] * 1000
    stable = ResponseTally(batches=10, samples=1000, answered=675, unanswered=Counter(
        {"unknown label": 125, "unavailable: HTTP 503": 200}), unavailable_samples=200,
        unavailable_reasons={"unavailable: HTTP 503"})
    candidate = ResponseTally(batches=10, samples=1000, answered=750, unanswered=Counter({"unknown label": 250}),
                              unusable_where_other_answered=100)
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.9), tally(labels, unanswered, unanswered,
                                                                      candidate_responses=candidate,
                                                                      stable_responses=stable), JudgeSettings(), SHA))
    assert verdicts["candidate.responses"].outcome is Outcome.FAIL, verdicts["candidate.responses"]
