"""Metrics against hand-computed confusion matrices, and batch-wise accumulation against one-shot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.gate.metrics import (
    PairedCounts,
    accuracy,
    binomial_tail,
    class_counts,
    confusion_matrix,
    flip_list,
    summarize,
)

CLASSES = ("safe", "suggestive", "nsfw")
#                 samples: 0  1  2  3  4  5  6  7  8  9
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
CANDIDATE = np.array([0, 0, 2, 0, 1, 2, -1, 2, 2, 1])  # sample 6 unanswered
STABLE = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, -1])  # sample 9 unanswered


def test_confusion_matrix_by_hand() -> None:
    # rows: true class, columns: predicted; the unanswered sample 6 is not counted
    expected = [[3, 0, 1],
                [0, 1, 1],
                [0, 1, 2]]
    assert confusion_matrix(LABELS, CANDIDATE, 3).tolist() == expected
    assert accuracy(np.array(expected)) == pytest.approx(6 / 9)


def test_per_class_precision_recall_false_positive_rate_by_hand() -> None:
    confusion = confusion_matrix(LABELS, CANDIDATE, 3)
    nsfw = class_counts(confusion, 2)
    # tp: samples 7, 8; fp: samples 2 (safe) and 5 (suggestive); fn: sample 9; tn: the other 4 answered
    assert (nsfw.tp, nsfw.fp, nsfw.fn, nsfw.tn) == (2, 2, 1, 4)
    assert nsfw.precision == pytest.approx(2 / 4)
    assert nsfw.recall == pytest.approx(2 / 3)
    assert nsfw.false_positive_rate == pytest.approx(2 / 6)
    safe = class_counts(confusion, 0)
    assert (safe.tp, safe.fp, safe.fn, safe.tn) == (3, 0, 1, 5)
    assert safe.precision == 1.0 and safe.false_positive_rate == 0.0

    summary = summarize(confusion, CLASSES)
    assert summary["samples"] == 9 and summary["correct"] == 6
    assert summary["perClass"]["nsfw"]["support"] == 3 and summary["perClass"]["nsfw"]["predicted"] == 4
    assert summary["confusionMatrix"] == confusion.tolist()


def test_undefined_metrics_are_none_never_zero_or_one() -> None:
    confusion = confusion_matrix(np.array([0, 0]), np.array([0, 0]), 3)
    nsfw = class_counts(confusion, 2)
    assert nsfw.precision is None and nsfw.recall is None and nsfw.false_positive_rate == 0.0
    assert accuracy(np.zeros((3, 3), dtype=int)) is None
    assert summarize(np.zeros((3, 3), dtype=int), CLASSES)["perClass"]["safe"]["falsePositiveRate"] is None


def test_paired_counts_compare_on_samples_both_answered_and_record_flip_direction() -> None:
    counts = PairedCounts(3)
    counts.add(LABELS, CANDIDATE, STABLE)
    assert counts.samples == 10
    assert counts.paired == 8  # samples 6 and 9 each lack one answer
    # flips [stable -> candidate] on samples 0-5, 7, 8: 2 (safe->nsfw), 3 (suggestive->safe), 5 (suggestive->nsfw)
    assert counts.disagreements == 3 and counts.disagreement == pytest.approx(3 / 8)
    assert counts.flips.tolist() == [[2, 0, 1],
                                     [1, 1, 1],
                                     [0, 0, 2]]
    assert flip_list(counts.flips, CLASSES) == [
        {"from": "safe", "to": "nsfw", "count": 1}, {"from": "suggestive", "to": "safe", "count": 1},
        {"from": "suggestive", "to": "nsfw", "count": 1}]
    # on the 8 paired samples: stable right on 0,1,2,4,5,7,8 (7); candidate right on 0,1,3,4,7,8 (6)
    assert counts.accuracy_drop == pytest.approx(1 / 8)
    assert counts.candidate.sum() == 9 and counts.stable.sum() == 9
    comparison = counts.comparison(CLASSES)
    assert comparison["pairedSamples"] == 8 and comparison["flipMatrix"] == counts.flips.tolist()


def test_accuracy_drop_is_positive_when_the_candidate_is_worse() -> None:
    counts = PairedCounts(2)
    counts.add(np.array([0, 0, 1, 1]), np.array([1, 0, 0, 1]), np.array([0, 0, 1, 1]))
    assert counts.accuracy_drop == pytest.approx(0.5)
    empty = PairedCounts(2)
    assert empty.accuracy_drop is None and empty.disagreement is None


def test_without_stable_only_candidate_counts_move() -> None:
    counts = PairedCounts(3)
    counts.add(LABELS, CANDIDATE, None)
    assert counts.candidate.sum() == 9 and counts.stable.sum() == 0 and counts.paired == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-1, 3), st.integers(-1, 3)), min_size=1, max_size=80),
       st.integers(1, 9))
def test_batchwise_accumulation_equals_one_shot(samples: list[tuple[int, int, int]], batch: int) -> None:
    labels, candidate, stable = (np.array(column) for column in zip(*samples, strict=True))
    whole = PairedCounts(4)
    whole.add(labels, candidate, stable)
    pieces = PairedCounts(4)
    for start in range(0, len(samples), batch):
        part = slice(start, start + batch)
        pieces.add(labels[part], candidate[part], stable[part])
    for name in ("candidate", "stable", "paired_candidate", "paired_stable", "flips"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(pieces, name))
    assert whole.candidate.sum() == (candidate >= 0).sum()
    assert whole.paired == ((candidate >= 0) & (stable >= 0)).sum()
    assert whole.disagreements == ((candidate != stable) & (candidate >= 0) & (stable >= 0)).sum()


@pytest.mark.parametrize(("successes", "trials", "rate"), [
    (1, 25, 0.01), (5, 25, 0.01), (19, 19, 0.01), (3, 200, 0.005), (40, 1000, 0.02), (1, 1, 0.5)])
def test_the_binomial_tail_matches_the_exact_sum(successes: int, trials: int, rate: float) -> None:
    exact = sum(math.comb(trials, k) * rate ** k * (1 - rate) ** (trials - k) for k in range(successes, trials + 1))
    assert binomial_tail(successes, trials, rate) == pytest.approx(exact if successes > trials * rate else 1.0,
                                                                   rel=1e-9)


def test_the_binomial_tail_at_its_edges() -> None:
    assert binomial_tail(0, 10, 0.1) == 1.0 and binomial_tail(11, 10, 0.1) == 0.0
    assert binomial_tail(1, 10, 0.0) == 0.0 and binomial_tail(10, 10, 1.0) == 1.0
