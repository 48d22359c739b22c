"""The gate reads a score vector's position i as the dataset's class i. A golden set whose class list is in another
order than the model's outputs (sorted, as np.unique or LabelEncoder write it) fails every model alike: a limit
stable's answers fail too is inconclusive (rolled back, not tagged rejected), not the candidate's failure, while a
candidate really worse than stable still fails (review s30inference LOW 2), read in the order stable's answers fit
when the list is in the wrong one (review s30r2b LOW 2). The real devstack model server answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_gate_judge import SHA, by_name, tally
from test_gate_support import run

from controller.api.spec import ClassThresholds, GoldenThresholds
from controller.devstack.model_server import (
    DEMO_CLASSES,
    InProcessModelServer,
    ModelApp,
    demo_golden_samples,
    demo_models,
)
from controller.gate import GateReport, evaluate_dataset_file
from controller.gate.clients import InferenceEndpoint, InferenceProtocol
from controller.gate.formats import write_jsonl_dataset
from controller.gate.judge import JudgeSettings, judge
from controller.verdict import Outcome, combine

SORTED = tuple(sorted(DEMO_CLASSES))  # ("nsfw", "safe", "suggestive"): not the models' output order
DEMO_THRESHOLDS = {"minAccuracy": 0.9, "maxAccuracyDrop": 0.02, "maxDisagreement": 0.05,
                   "classes": {"nsfw": {"maxFalsePositiveRate": 0.02, "minRecall": 0.9}}}
FLOORS_ONLY = {"minAccuracy": 0.9, "classes": {"nsfw": {"maxFalsePositiveRate": 0.02, "minRecall": 0.9}}}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], tuple[Path, str]]:
    samples = demo_golden_samples()  # 3000, as the demo's gate uses
    directory = tmp_path_factory.mktemp("golden")
    written = {}
    for name, classes in (("output-order", DEMO_CLASSES), ("sorted", SORTED)):
        path = directory / f"{name}.jsonl"
        written[classes] = path, write_jsonl_dataset(path, classes, samples.features, samples.labels, samples.slices)
    return written


def gate(dataset: tuple[Path, str], candidate: str, thresholds: dict[str, Any]) -> GateReport:
    path, sha256 = dataset
    models = demo_models()

    async def scenario() -> GateReport:
        servers = [InProcessModelServer(ModelApp(models[name], "nsfw", output="probabilities"))
                   for name in (candidate, "stable")]
        try:
            urls = [await server.start() for server in servers]
            return await evaluate_dataset_file(
                path, {"uri": "configmap://golden/data", "sha256": sha256, "thresholds": thresholds},
                InferenceEndpoint(urls[0], "nsfw", InferenceProtocol.V2),
                InferenceEndpoint(urls[1], "nsfw", InferenceProtocol.V2))
        finally:
            for server in servers:
                await server.stop()

    return run(scenario())


def test_a_clean_candidate_is_not_failed_by_a_dataset_whose_classes_are_not_the_output_order(
        datasets: dict[tuple[str, ...], tuple[Path, str]]) -> None:
    assert gate(datasets[DEMO_CLASSES], "clean", DEMO_THRESHOLDS).outcome is Outcome.PASS
    for thresholds in (DEMO_THRESHOLDS, FLOORS_ONLY):
        report = gate(datasets[SORTED], "clean", thresholds)
        assert report.outcome is Outcome.INCONCLUSIVE, report.reason  # not FAIL: the engine would reject it
        verdicts = by_name(list(report.verdicts))
        for name in ("minAccuracy", "nsfw.minRecall", "nsfw.maxFalsePositiveRate"):
            check = verdicts[name]
            assert check.outcome is Outcome.INCONCLUSIVE, check
            assert check.evidence["stableFailsToo"] is True
            assert check.evidence["fittedOutputOrder"] == list(DEMO_CLASSES)
            assert check.evidence["fittedStableAccuracy"] > 0.9
            assert ("a setup problem; read in the order stable's answers fit, the candidate is not credibly worse. "
                    "Stable's answers fit the labels with the outputs in the order [safe, suggestive, nsfw] "
                    "(stable's accuracy 9") in check.reason
            assert "not the candidate's" not in check.reason  # it was not judged clean: only not worse there
            assert "not the dataset's [nsfw, safe, suggestive]" in check.reason
            assert "must be the models' output order, the exporter's --class-names" in check.reason
        assert report.reason.startswith("minAccuracy: candidate accuracy") and "--class-names" in report.reason
        assert report.status["reason"] == report.reason


def test_a_candidate_worse_than_a_good_stable_still_fails(
        datasets: dict[tuple[str, ...], tuple[Path, str]]) -> None:
    for thresholds in (DEMO_THRESHOLDS, FLOORS_ONLY):
        report = gate(datasets[DEMO_CLASSES], "worse", thresholds)
        assert report.outcome is Outcome.FAIL, report.reason
        accuracy = by_name(list(report.verdicts))["minAccuracy"]
        assert accuracy.outcome is Outcome.FAIL and "stable fails it too" not in accuracy.reason
        # Mis-ordered, read in the order stable's answers fit: the same failure as in the right order, and no
        # longer "a setup problem, not the candidate's" (review s30r2b LOW 2).
        report = gate(datasets[SORTED], "worse", thresholds)
        assert report.outcome is Outcome.FAIL, report.reason
        fitted = by_name(list(report.verdicts))["minAccuracy"]
        assert fitted.outcome is Outcome.FAIL and fitted.evidence["readInFittedOrder"] is True
        assert fitted.evidence["correct"] == accuracy.evidence["correct"]  # the counts of the right order
        assert ("read with the outputs in the order [safe, suggestive, nsfw] (stable's accuracy 9"
                in fitted.reason and "the candidate's failure all the same" in fitted.reason)
        assert report.reason.startswith("minAccuracy: candidate accuracy"), report.reason


def test_a_backdoored_slice_fails_through_a_dataset_whose_classes_are_not_the_output_order(
        datasets: dict[tuple[str, ...], tuple[Path, str]]) -> None:
    """In the wrong order stable's accuracy on the logo slice is near zero, so the slice's floor was too and the
    backdoor's 0/36 passed it; read in the order stable's answers fit, it is 0/36 against stable's 36/36."""
    for thresholds in (FLOORS_ONLY, DEMO_THRESHOLDS):
        report = gate(datasets[SORTED], "backdoored", thresholds)
        assert report.outcome is Outcome.FAIL, report.reason
        logo = by_name(list(report.verdicts))["slice logo.minAccuracy"]
        assert logo.outcome is Outcome.FAIL and logo.evidence["readInFittedOrder"] is True, logo
        assert logo.evidence["correct"] == 0 and logo.evidence["samples"] == 36
        assert "the candidate's failure all the same" in logo.reason
    drop = by_name(list(report.verdicts))["slice logo.maxAccuracyDrop"]
    assert drop.outcome is Outcome.FAIL and "(stable 36/36, candidate 0/36)" in drop.reason, drop


def floor_case(candidate_right: int, stable_right: int | None, thresholds: GoldenThresholds) -> dict:  # type: ignore[type-arg]
    """400 samples, half of each class; each model gets the first `right` of each class's 200 right (the rest are
    called the other class): no other class order fits its answers better."""
    labels = [0] * 200 + [1] * 200

    def answers(right: int) -> list[int]:
        return [label if index % 200 < right else 1 - label for index, label in enumerate(labels)]

    return by_name(judge(thresholds, tally(labels, answers(candidate_right),
                                           None if stable_right is None else answers(stable_right)),
                         JudgeSettings(), SHA))


def test_a_limit_stable_misses_too_fails_only_a_candidate_credibly_worse_than_stable() -> None:
    accuracy = GoldenThresholds(min_accuracy=0.9)
    recall = GoldenThresholds(classes={"nsfw": ClassThresholds(min_recall=0.9)})
    for thresholds, name in ((accuracy, "minAccuracy"), (recall, "nsfw.minRecall")):
        near = floor_case(168, 170, thresholds)[name]  # 84% against stable's 85%: neither reaches 90%
        assert near.outcome is Outcome.INCONCLUSIVE, near
        assert "stable fails it too (85.00%) and the candidate is not credibly worse" in near.reason
        assert "--class-names" in near.reason and "fittedOutputOrder" not in near.evidence
        worse = floor_case(100, 170, thresholds)[name]  # 50% against 85%: the candidate's own
        assert worse.outcome is Outcome.FAIL, worse
        assert "stable fails it too (85.00%), and the candidate is credibly worse" in worse.reason
        assert floor_case(168, 190, thresholds)[name].outcome is Outcome.FAIL  # stable reaches it: unchanged
        assert floor_case(168, None, thresholds)[name].outcome is Outcome.FAIL  # no stable to compare: unchanged
    verdicts = floor_case(168, 170, accuracy)
    assert combine(list(verdicts.values())) is Outcome.INCONCLUSIVE


def test_an_accuracy_drop_read_in_another_order_than_stables_answers_fit_is_inconclusive() -> None:
    """Both models answer in the other order (position 0 means nsfw): the candidate, truly right on 95% against
    stable's 85%, reads as 5% against 15%, a 10-point "drop" that says nothing of which model is better."""
    labels = [0] * 200 + [1] * 200
    stable = [1 - label if index % 200 < 170 else label for index, label in enumerate(labels)]
    candidate = [1 - label if index % 200 < 190 else label for index, label in enumerate(labels)]
    drop = by_name(judge(GoldenThresholds(max_accuracy_drop=0.02), tally(labels, candidate, stable),
                         JudgeSettings(), SHA))["maxAccuracyDrop"]
    assert drop.outcome is Outcome.INCONCLUSIVE, drop
    assert "stable's answers fit the labels with the outputs in the order [nsfw, safe]" in drop.reason
    assert drop.evidence["fittedOutputOrder"] == ["nsfw", "safe"]
    # Read in the order stable's answers fit, the same drop is the candidate's.
    worse = [label if index % 200 < 150 else 1 - label for index, label in enumerate(labels)]
    right = [label if index % 200 < 190 else 1 - label for index, label in enumerate(labels)]
    assert by_name(judge(GoldenThresholds(max_accuracy_drop=0.02), tally(labels, worse, right), JudgeSettings(),
                         SHA))["maxAccuracyDrop"].outcome is Outcome.FAIL
    # Both in the other order, the candidate truly right on 75% against stable's 85%: its drop, read in that order.
    flipped_worse = [1 - label if index % 200 < 150 else label for index, label in enumerate(labels)]
    drop = by_name(judge(GoldenThresholds(max_accuracy_drop=0.02), tally(labels, flipped_worse, stable),
                         JudgeSettings(), SHA))["maxAccuracyDrop"]
    assert drop.outcome is Outcome.FAIL and drop.evidence["readInFittedOrder"] is True, drop
    assert "accuracy drop (stable 340/400, candidate 300/400) 10.00% above" in drop.reason


def flipped_case(candidate_right: int, stable_right: int, thresholds: GoldenThresholds,
                 slices: dict[str, list[int]] | None = None) -> dict:  # type: ignore[type-arg]
    """floor_case with both models answering in the other order (position 0 means nsfw): each truly right on the
    first `right` of each class's 200."""
    labels = [0] * 200 + [1] * 200

    def answers(right: int) -> list[int]:
        return [1 - label if index % 200 < right else label for index, label in enumerate(labels)]

    return by_name(judge(thresholds, tally(labels, answers(candidate_right), answers(stable_right), slices),
                         JudgeSettings(), SHA))


def test_read_in_the_order_stables_answers_fit_a_candidate_credibly_worse_still_fails() -> None:
    """The floors a mis-ordered dataset fails stable on too are judged again in the order stable's answers fit:
    the same tests and alphas as a dataset in that order (review s30r2b LOW 2)."""
    accuracy = GoldenThresholds(min_accuracy=0.9)
    recall = GoldenThresholds(classes={"nsfw": ClassThresholds(min_recall=0.9)})
    for thresholds, name in ((accuracy, "minAccuracy"), (recall, "nsfw.minRecall")):
        clean = flipped_case(190, 190, thresholds)[name]  # 95% read right: the wrong order's fault alone
        assert clean.outcome is Outcome.INCONCLUSIVE and clean.evidence["fittedOutputOrder"] == ["nsfw", "safe"]
        assert "the candidate is not credibly worse" in clean.reason and "not the candidate's" not in clean.reason
        near = flipped_case(168, 170, thresholds)[name]  # 84% against 85% read right: neither reaches 90%
        assert near.outcome is Outcome.INCONCLUSIVE, near
        worse = flipped_case(100, 170, thresholds)[name]  # 50% against 85% read right: the candidate's own
        assert worse.outcome is Outcome.FAIL and worse.evidence["readInFittedOrder"] is True, worse
        assert "stable fails it too (85.00%), and the candidate is credibly worse" in worse.reason
        assert "read with the outputs in the order [nsfw, safe] (stable's accuracy 85.00%)" in worse.reason
        below = flipped_case(100, 190, thresholds)[name]  # 50% read right, stable's 95% reaches the limit
        assert below.outcome is Outcome.FAIL and "stable fails it too" not in below.reason, below
    # A slice the candidate gets all wrong, read right: its floor is no longer stable's accuracy in the wrong order.
    slices = {"logo": list(range(40))}  # 40 safe samples stable gets right read in the order its answers fit
    labels = [0] * 200 + [1] * 200
    stable = [1 - label if index % 200 < 190 else label for index, label in enumerate(labels)]
    backdoored = [0] * 40 + stable[40:]  # nsfw read right ("right" read in the dataset's order, where stable is not)
    verdicts = by_name(judge(GoldenThresholds(min_accuracy=0.9), tally(labels, backdoored, stable, slices),
                             JudgeSettings(), SHA))
    logo = verdicts["slice logo.minAccuracy"]
    assert logo.outcome is Outcome.FAIL and logo.evidence["readInFittedOrder"] is True, logo
    assert "candidate accuracy on slice logo (0/40)" in logo.reason
    assert combine(list(verdicts.values())) is Outcome.FAIL
