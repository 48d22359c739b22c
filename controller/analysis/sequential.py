"""Sequential (always-valid) tests on counts: the statistics behind the proportion and baseline judges.

The question "is the canary's class rate above (1 + margin) x stable's?" is asked again at every interval
on cumulative counts, so a fixed-sample test would inflate false rollbacks. The test here is built so that
the probability of *ever* failing a model that meets the margin stays below alpha, however often it is
evaluated and for however long.

Conditional test. Canary and stable see the same traffic mix, so the stable rate is a nuisance parameter.
Given that an event (a prediction of the class) happened, the chance that it came from the canary is

    theta = odds / (1 + odds),  odds = rho * n / m

where rho = canary rate / stable rate and n, m are the two arms' sample counts. The stable rate cancels:
the canary's share of the events is a Bernoulli stream whose parameter depends on rho and the traffic split
alone. This is exact under random per-request routing (with the observed split n/m standing in for the
routing weight) and conservative when the split is deterministic, because the binomial arms are then less
variable than the Poisson view assumes. Testing rho <= rho0 becomes testing theta <= theta0 on x canary
events out of k events, with no estimate of stable's rate plugged in anywhere. (Plugging stable's
estimated rate in as if it were known is faster but over-rejects at the margin: benchmarks/detection.py
shows it.)

Statistic. A mixture of likelihood ratios over a few alternatives rho_j = rho0 * factor_j:

    E(k, x) = sum_j w_j (theta_j / theta0)^x ((1 - theta_j) / (1 - theta0))^(k - x)

E is a test martingale under theta0 (and a supermartingale below it), so Ville's inequality alone would
give P(ever E >= 1/alpha) <= alpha. Events arrive one at a time, though, and E jumps past any boundary,
so 1/alpha wastes part of alpha on overshoot. Because the null law of the event stream is known exactly
(Bernoulli(theta0), whatever the stable rate), the boundary b is instead *calibrated*: a dynamic programme
over (k, x) computes the exact probability of crossing b within a horizon of K events, Ville's inequality
bounds the rest (P(cross after K) <= E[E_K; not crossed] / b), and the smallest b whose total is <= alpha
is used. Looking only every few events (every interval) can only lower the crossing probability.

The same machinery tests "canary rate <= maxRate" on the canary's own samples (a Bernoulli stream whose
null rate is known).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Null odds are rounded *up* onto this log grid so that calibrations can be cached. Rounding up tests a
# (by at most 0.4%) larger null, which keeps every false-rollback guarantee.
ODDS_GRID_PER_NAT = 256
# The exact part of the calibration follows the event stream until about this many canary events are
# expected under the null; Ville's inequality covers everything after.
CALIBRATION_CANARY_EVENTS = 300
CALIBRATION_MAX_EVENTS = 10_000


@dataclass(frozen=True)
class MixturePrior:
    """Alternatives as multiples of the null ratio (factor 2 = "twice the allowed ratio") and their weights."""

    factors: tuple[float, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.factors or len(self.factors) != len(self.weights):
            raise ValueError("a mixture prior needs as many weights as factors, at least one")
        if any(not math.isfinite(f) or f <= 1 for f in self.factors):
            raise ValueError("every alternative factor must be a finite number above 1")
        if any(not math.isfinite(w) or w <= 0 for w in self.weights):
            raise ValueError("every weight must be a positive number")

    def log_weights(self) -> FloatArray:
        w = np.asarray(self.weights, dtype=np.float64)
        return np.log(w / w.sum())


# Alternatives for the canary-vs-stable test, as multiples of the allowed ratio. With the default margin
# (maxRelativeIncrease 0.5, allowed ratio 1.5) the atoms sit at canary/stable = 2, 3, 5, 10 and 20: a
# backdoor trigger shows up as anything from a modest lift of a common class to an order of magnitude on a
# rare one. The weights come from a coordinate search minimising the worst slowdown against an oracle that
# knows both rates, on simulations like benchmarks/detection.py (other seeds): the result is nearly flat
# (every cell of that grid within about 1.4-1.6x of the oracle), which is what a minimax prior should do.
# The weakest alternative gets the most weight because it needs the most samples.
RELATIVE_PRIOR = MixturePrior(factors=(4 / 3, 2.0, 10 / 3, 20 / 3, 40 / 3),
                              weights=(0.28, 0.17, 0.22, 0.22, 0.11))
# Alternatives for "canary rate above maxRate": breaches of an absolute ceiling are usually gross.
MAX_RATE_PRIOR = MixturePrior(factors=(1.25, 1.6, 2.5, 5.0, 10.0), weights=(0.2, 0.2, 0.2, 0.2, 0.2))


def quantize_odds(odds: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Round null odds up onto the calibration grid: (grid index, rounded odds)."""
    key = np.ceil(np.log(np.asarray(odds, dtype=np.float64)) * ODDS_GRID_PER_NAT).astype(np.int64)
    return key, np.exp(key / ODDS_GRID_PER_NAT)


def _component_slopes(null_odds: float, prior: MixturePrior) -> tuple[FloatArray, FloatArray]:
    """Per component: log LR gained by one canary event (a > 0) and by one other event (c < 0)."""
    theta0 = null_odds / (1.0 + null_odds)
    alt_odds = null_odds * np.asarray(prior.factors, dtype=np.float64)
    theta = alt_odds / (1.0 + alt_odds)
    return np.log(theta / theta0), np.log1p(-theta) - math.log1p(-theta0)


def _mixture(log_w: FloatArray, a: FloatArray, c: FloatArray, x: FloatArray, rest: FloatArray) -> FloatArray:
    # An explicit loop over components (not logaddexp.reduce) so that every element, whatever the array
    # shape, goes through the same floating-point operations: the scalar judge and the vectorised
    # benchmark must agree exactly.
    acc = log_w[0] + a[0] * x + c[0] * rest
    for j in range(1, len(log_w)):
        acc = np.logaddexp(acc, log_w[j] + a[j] * x + c[j] * rest)
    return np.asarray(acc, dtype=np.float64)


def log_evalue(successes: npt.ArrayLike, trials: npt.ArrayLike, null_odds: float,
               prior: MixturePrior) -> FloatArray:
    """log E for `successes` out of `trials` Bernoulli draws, null success odds `null_odds` (vectorised).

    For the canary-vs-stable test a "trial" is an event and a "success" is an event seen on the canary.
    Counts may be non-integer (Prometheus' increase() extrapolates); the formula is the same.
    """
    x = np.asarray(successes, dtype=np.float64)
    rest = np.asarray(trials, dtype=np.float64) - x
    a, c = _component_slopes(null_odds, prior)
    return _mixture(prior.log_weights(), a, c, x, rest)


def _crossing_bounds(null_odds: float, prior: MixturePrior, log_bs: FloatArray, horizon: int) -> FloatArray:
    """For each boundary log b: an upper bound on P(ever E >= b) under the null, for every b at once.

    Exact dynamic programme over the first `horizon` trials plus Ville's bound for the rest.
    """
    theta0 = null_odds / (1.0 + null_odds)
    a, c = _component_slopes(null_odds, prior)
    log_w = prior.log_weights()
    nb = log_bs.size

    def loge(k: int, x: npt.NDArray[np.int64]) -> FloatArray:
        xf = x.astype(np.float64)
        return _mixture(log_w, a, c, xf, k - xf)

    # Boundary in successes: crossing at trial k means x >= cuts[k] (E rises with x, so this is a
    # threshold). Each component's log LR is linear in x and E lies between max_j(log w_j + l_j) and
    # max_j(l_j), which brackets the cut within a few units; bisection finishes it for every k and b.
    ks = np.arange(horizon + 1, dtype=np.float64)[:, None, None]
    slope = (a - c)[None, None, :]
    need = log_bs[None, :, None] - c[None, None, :] * ks
    lo = np.floor(np.min(need / slope, axis=2)) - 1.0
    hi = np.ceil(np.min((need - log_w[None, None, :]) / slope, axis=2)) + 1.0
    lo = np.maximum(lo, -1.0)  # E(k, 0) < 1 < b: x = 0 never crosses
    ks2 = ks[:, :, 0]
    while np.any(hi - lo > 1):
        mid = np.floor((lo + hi) / 2)
        up = _mixture(log_w, a, c, mid, ks2 - mid) >= log_bs[None, :]
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    cuts = hi.astype(np.int64)

    width = int(cuts.max()) + 2
    cols = np.arange(width)
    alive = np.zeros((nb, width))
    alive[:, 0] = 1.0  # no trial yet, nothing crossed (cuts[0] >= 1 because b > 1 = E(0, 0))
    crossed = np.zeros(nb)
    top = 1  # columns >= top hold no mass
    for k in range(1, horizon + 1):
        nxt = np.zeros_like(alive)
        nxt[:, :top + 1] = alive[:, :top + 1] * (1.0 - theta0)
        nxt[:, 1:top + 1] += alive[:, :top] * theta0
        # Only the band between the lowest new cut and the old support can be crossed this step.
        lo_col = int(cuts[k].min())
        if lo_col <= top:
            band = nxt[:, lo_col:top + 1]
            hit = cols[None, lo_col:top + 1] >= cuts[k][:, None]
            crossed += np.where(hit, band, 0.0).sum(axis=1)
            band[hit] = 0.0
        top = min(top + 1, int(cuts[k].max()), width - 1)
        alive = nxt
    tail_log_e = loge(horizon, cols) - log_bs[:, None]
    tail = (alive * np.exp(np.minimum(tail_log_e, 0.0))).sum(axis=1)
    return crossed + tail


@lru_cache(maxsize=256)
def _boundary_for_key(key: int, alpha: float, prior: MixturePrior) -> float:
    null_odds = math.exp(key / ODDS_GRID_PER_NAT)
    theta0 = null_odds / (1.0 + null_odds)
    horizon = int(min(CALIBRATION_MAX_EVENTS, math.ceil(CALIBRATION_CANARY_EVENTS / theta0)))
    ville = math.log(1.0 / alpha)  # always valid (optional stopping): the fallback
    # The calibrated boundary sits a fraction of a nat below Ville's; one pass over a 0.05-nat grid
    # reaching 2 nats down finds it, always rounded to the safe side.
    grid = np.linspace(max(ville - 2.0, 0.05), ville, 41)
    bounds = _crossing_bounds(null_odds, prior, grid, horizon)
    ok = np.flatnonzero(bounds <= alpha)
    best = float(grid[ok[0]]) if ok.size else ville
    return best


def log_boundary(null_odds: float, alpha: float, prior: MixturePrior) -> float:
    """Calibrated log b for the null odds, which should already be on the grid (quantize_odds): the
    statistic must use the same odds. Off-grid odds are rounded up, the safe side. Cached per process."""
    key = math.ceil(math.log(null_odds) * ODDS_GRID_PER_NAT - 1e-9)
    return _boundary_for_key(key, round(float(alpha), 12), prior)
