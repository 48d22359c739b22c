"""Classification metrics with numpy, accumulated batch by batch in fixed-size count matrices.

Confusion matrices are indexed [true class, predicted class]. Candidate-vs-stable flips are indexed
[stable's prediction, candidate's prediction]: the off-diagonal cells say which way predictions moved.
Nothing per sample is kept, so memory depends on the number of classes and slices, not on the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, class_count: int) -> np.ndarray:
    """Counts of (true, predicted) pairs over samples with a prediction (predicted >= 0)."""
    usable = predicted >= 0
    pairs = (labels[usable] * class_count + predicted[usable]).astype(np.int64, copy=False)
    return np.bincount(pairs, minlength=class_count * class_count).reshape(class_count, class_count)


def binomial_tail(successes: int, trials: int, rate: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, rate): how surprising that many is if the true rate were `rate`.
    Above the mean it is summed from `successes` up until the terms no longer count; at or below it, 1."""
    if successes <= 0:
        return 1.0
    if successes > trials:
        return 0.0
    if rate <= 0.0:
        return 0.0
    if rate >= 1.0 or successes <= trials * rate:
        return 1.0  # not above the mean: no evidence of more (and the exact value is never needed)
    log_rate, log_rest = math.log(rate), math.log1p(-rate)
    total = 0.0
    for k in range(successes, trials + 1):
        term = math.exp(math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                        + k * log_rate + (trials - k) * log_rest)
        total += term
        if term < total * 1e-15:  # the terms fall ever faster past the mean
            break
    return min(1.0, total)


def ratio(numerator: int, denominator: int) -> float | None:
    """None when the denominator is zero: an undefined metric is never reported as 0 or 1."""
    return numerator / denominator if denominator else None


@dataclass
class ClassCounts:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def support(self) -> int:  # samples truly of this class
        return self.tp + self.fn

    @property
    def precision(self) -> float | None:
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return ratio(self.tp, self.tp + self.fn)

    @property
    def false_positive_rate(self) -> float | None:
        return ratio(self.fp, self.fp + self.tn)


def class_counts(confusion: np.ndarray, class_index: int) -> ClassCounts:
    total = int(confusion.sum())
    tp = int(confusion[class_index, class_index])
    fp = int(confusion[:, class_index].sum()) - tp
    fn = int(confusion[class_index, :].sum()) - tp
    return ClassCounts(tp=tp, fp=fp, fn=fn, tn=total - tp - fp - fn)


def accuracy(confusion: np.ndarray) -> float | None:
    return ratio(int(np.trace(confusion)), int(confusion.sum()))


def matrix_json(matrix: np.ndarray, sparse: bool = False) -> Any:
    """A class x class matrix for JSON: rows of every cell, or (sparse) {"shape", "cells": [[row, column, count]]}
    for the non-zero cells only, so that its size follows the samples rather than the classes squared (1000 classes
    make a million cells, nearly all zero)."""
    if not sparse:
        return matrix.astype(int).tolist()
    rows, columns = np.nonzero(matrix)
    cells = np.stack([rows, columns, matrix[rows, columns]], axis=1).astype(int).tolist()
    return {"shape": list(matrix.shape), "cells": cells}


def summarize(confusion: np.ndarray, classes: Sequence[str], include_matrix: bool = True,
              sparse: bool = False) -> dict[str, Any]:
    """JSON-able metrics for one model on one set of samples (sparse: the matrix as matrix_json's cells)."""
    total = int(confusion.sum())
    per_class = {}
    for index, name in enumerate(classes):
        counts = class_counts(confusion, index)
        per_class[name] = {
            "support": counts.support, "predicted": counts.tp + counts.fp,
            "truePositives": counts.tp, "falsePositives": counts.fp, "falseNegatives": counts.fn,
            "trueNegatives": counts.tn, "precision": counts.precision, "recall": counts.recall,
            "falsePositiveRate": counts.false_positive_rate,
        }
    summary: dict[str, Any] = {"samples": total, "correct": int(np.trace(confusion)), "accuracy": accuracy(confusion),
                               "perClass": per_class}
    if include_matrix:
        summary["confusionMatrix"] = matrix_json(confusion, sparse)
    return summary


def flip_list(flips: np.ndarray, classes: Sequence[str], limit: int | None = None) -> list[dict[str, Any]]:
    """Off-diagonal flip counts, largest first: [{"from": stable's class, "to": candidate's, "count"}]."""
    off = flips.copy()
    np.fill_diagonal(off, 0)
    cells = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off), strict=True)]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    if limit is not None:
        cells = cells[:limit]
    return [{"from": classes[i], "to": classes[j], "count": count} for count, i, j in cells]


@dataclass
class PairedCounts:
    """Counts for one scope (the whole dataset or one slice), candidate and optionally stable."""

    class_count: int
    samples: int = 0  # valid dataset samples in scope
    candidate: np.ndarray = field(init=False)
    stable: np.ndarray = field(init=False)
    # On samples both answered: the like-for-like comparison behind accuracy drop and disagreement.
    paired_candidate: np.ndarray = field(init=False)
    paired_stable: np.ndarray = field(init=False)
    flips: np.ndarray = field(init=False)
    # Every sample's true class, answered or not: what a check's unanswered samples would be.
    labels: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.labels = np.zeros(self.class_count, dtype=np.int64)
        shape = (self.class_count, self.class_count)
        self.candidate = np.zeros(shape, dtype=np.int64)
        self.stable = np.zeros(shape, dtype=np.int64)
        self.paired_candidate = np.zeros(shape, dtype=np.int64)
        self.paired_stable = np.zeros(shape, dtype=np.int64)
        self.flips = np.zeros(shape, dtype=np.int64)

    @staticmethod
    def bytes_for(class_count: int) -> int:
        """Memory the counts of one scope take: five class x class int64 matrices."""
        return 5 * 8 * class_count * class_count

    def add(self, labels: np.ndarray, candidate: np.ndarray, stable: np.ndarray | None) -> None:
        k = self.class_count
        self.samples += int(labels.shape[0])
        self.labels += np.bincount(labels.astype(np.int64, copy=False), minlength=k)
        self.candidate += confusion_matrix(labels, candidate, k)
        if stable is None:
            return
        self.stable += confusion_matrix(labels, stable, k)
        both = (candidate >= 0) & (stable >= 0)
        self.paired_candidate += confusion_matrix(labels[both], candidate[both], k)
        self.paired_stable += confusion_matrix(labels[both], stable[both], k)
        self.flips += confusion_matrix(stable[both], candidate[both], k)

    @property
    def paired(self) -> int:
        return int(self.flips.sum())

    @property
    def disagreements(self) -> int:
        return self.paired - int(np.trace(self.flips))

    @property
    def disagreement(self) -> float | None:
        return ratio(self.disagreements, self.paired)

    @property
    def accuracy_drop(self) -> float | None:
        """Stable's accuracy minus the candidate's, on the same samples (positive: the candidate is worse)."""
        if not self.paired:
            return None
        return (int(np.trace(self.paired_stable)) - int(np.trace(self.paired_candidate))) / self.paired

    def comparison(self, classes: Sequence[str], include_matrix: bool = True,
                   flip_limit: int | None = 10, sparse: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = {
            "pairedSamples": self.paired, "disagreements": self.disagreements, "disagreement": self.disagreement,
            "candidateAccuracy": accuracy(self.paired_candidate), "stableAccuracy": accuracy(self.paired_stable),
            "accuracyDrop": self.accuracy_drop, "flips": flip_list(self.flips, classes, flip_limit),
        }
        if include_matrix:
            result["flipMatrix"] = matrix_json(self.flips, sparse)
        return result
