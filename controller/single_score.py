"""A row of one score (a sigmoid: V2 shape [n, 1], V1 [[0.93], ...]) read one way by both the golden-dataset gate
and the prediction exporter, so a model is judged on the same classes its traffic is counted in."""

from __future__ import annotations

# The one score is the probability of the second of exactly two classes, which it picks at this value or above.
SINGLE_SCORE_THRESHOLD = 0.5
# V2 datatypes whose values are scores, never class indexes: a sigmoid's FP16 score saturates to exactly 1.0.
SCORE_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})


def single_score_position(score: float, class_count: int) -> int | None:
    """The class position (0 or 1) a binary classifier's one score picks; None when that reading does not apply:
    other than exactly two classes, or a score outside [0, 1] (NaN included), which is no probability."""
    if class_count != 2 or not 0.0 <= score <= 1.0:
        return None
    return 1 if score >= SINGLE_SCORE_THRESHOLD else 0
