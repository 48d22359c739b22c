"""How much can any valid test catch at the first look of the detection benchmark's hardest cell?

benchmarks/detection.py's worst ours/oracle cell is stable 5% x ratio 10: the oracle (told both rates) stops
at the first look, 10 canary and 90 stable samples, in most rollouts; ours stops at the second. This computes,
as a linear programme over every test of those counts (randomised ones too), the largest probability of
failing such a canary at the first look for a test whose false-rollback probability at the margin (canary =
1.5 x stable) stays below alpha at every stable rate of a fine grid (a relaxation of "every rate", so the
result is an upper bound), and the smallest alpha at which that probability reaches one half (searched up to
alpha 0.5; null when even that is not enough).

A sequential test can reject at the first look only inside a region of this kind whose size it pays out of
its whole alpha, so these are bounds on what any valid judge can do in that cell. Needs scipy (installed with
the `server` extra, which mlflow brings). About 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import numpy as np
from scipy.optimize import linprog
from scipy.stats import binom

MARGIN_RATIO = 1.5
ALPHA_SEARCH_MAX = 0.5  # alpha_for looks no further: a test failing half the rollouts at the margin is none


@functools.cache  # alpha_for re-checks the alpha main() already reports
def first_look_power(stable_rate: float, ratio: float, alpha: float, canary: int = 10, stable: int = 90,
                     grid: int = 1500) -> float:
    xs, ys = np.arange(canary + 1), np.arange(stable + 1)
    power = np.outer(binom.pmf(xs, canary, min(1.0, ratio * stable_rate)), binom.pmf(ys, stable, stable_rate))
    qs = np.unique(np.concatenate([np.linspace(1e-5, 1 / MARGIN_RATIO - 1e-6, grid),
                                   np.geomspace(1e-6, 1 / MARGIN_RATIO - 1e-6, grid)]))
    size = np.array([np.outer(binom.pmf(xs, canary, MARGIN_RATIO * q), binom.pmf(ys, stable, q)).ravel()
                     for q in qs])
    result = linprog(-power.ravel(), A_ub=size, b_ub=np.full(len(qs), alpha), bounds=(0, 1), method="highs")
    if not result.success:
        raise RuntimeError(result.message)
    return float(-result.fun)


def alpha_for(stable_rate: float, ratio: float, target: float = 0.5, steps: int = 7) -> float | None:
    """Smallest alpha (to within the bisection) at which the first-look power reaches `target`, or None when
    even ALPHA_SEARCH_MAX does not. The power only grows with alpha: double the bracket until it holds the answer."""
    lo, hi = 0.0, 0.01
    while first_look_power(stable_rate, ratio, hi) < target:
        if hi >= ALPHA_SEARCH_MAX:
            return None
        lo, hi = hi, min(2 * hi, ALPHA_SEARCH_MAX)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if first_look_power(stable_rate, ratio, mid) >= target else (mid, hi)
    return hi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stable-rate", type=float, default=0.05)
    parser.add_argument("--ratio", type=float, default=10.0)
    args = parser.parse_args(argv)
    result = {"stable_rate": args.stable_rate, "ratio": args.ratio,
              "first_look_power_at_alpha_0.01": first_look_power(args.stable_rate, args.ratio, 0.01),
              "alpha_for_half_at_first_look": alpha_for(args.stable_rate, args.ratio),
              "alpha_searched_up_to": ALPHA_SEARCH_MAX}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
