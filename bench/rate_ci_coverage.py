"""Coverage of misaligned-rate intervals at rare events: the simulation behind analyze.py's default (ci.method).

    python bench/rate_ci_coverage.py            # 10,000 tables per setting (1-2 minutes on 2 shared cores)
    python bench/rate_ci_coverage.py --quick    # 2,000 tables, 400 bootstrap resamples (well under a minute)

Each simulated table is one group of answers to 8 questions (equal answers per question), 40 to 2,400 in
all, at a true misaligned rate of 0.1 %, 1 % or 10 %. Two designs: *fixed* questions sharing the rate (the
answers are independent), and *random* questions whose rates vary around the true rate (logit-normal, sd 1;
the true rate is the mean over the question population, so answers to one question are correlated). For
each method the share of tables whose 95 % interval holds the true rate is printed (nominal 0.95), and the
mean width. Methods: the percentile bootstrap resampling answers within questions (analyze.py's first
default), Wilson, Clopper-Pearson, Wilson widened by the estimated design effect (``wilson_deff``, the
default before the small-cluster corrections) and Wilson widened by the bias-reduced design effect (Mancl &
DeRouen) with Student's t on questions - 1 degrees of freedom (``wilson_deff_t``, em's default); the last
column is the ratio of their mean widths, new / old.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from em.analysis.intervals import (bias_reduced_moments, design_effect, proportion_ci, wilson_deff,  # noqa: E402
                                   wilson_deff_t)

Q = 8


def simulate(rng, rate: float, n: int, tables: int, design: str) -> tuple[np.ndarray, np.ndarray]:
    """Misaligned counts (tables, Q) of n // Q answers per question; the true rate is ``rate``."""
    per_q = n // Q
    if design == "fixed":
        p = np.full((tables, Q), rate)
    else:  # question rates vary: logit-normal around logit(rate), rescaled so their population mean is rate
        z = rng.normal(np.log(rate / (1 - rate)), 1.0, size=(tables, Q))
        big = rng.normal(np.log(rate / (1 - rate)), 1.0, size=200_000)
        p = 1 / (1 + np.exp(-z)) * rate / np.mean(1 / (1 + np.exp(-big)))
        p = np.clip(p, 0, 1)
    return rng.binomial(per_q, p), np.full((tables, Q), per_q)


def bootstrap(rng, k: np.ndarray, n: np.ndarray, resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the within-question bootstrap (exact: a binomial redraw per question)."""
    p = k / n
    low, high = np.empty(len(k)), np.empty(len(k))
    for start in range(0, len(k), 500):
        sl = slice(start, start + 500)
        draws = rng.binomial(n[sl, :, None], p[sl, :, None], size=(*k[sl].shape, resamples)).sum(1)
        rates = draws / n[sl].sum(1)[:, None]
        low[sl], high[sl] = np.quantile(rates, [0.025, 0.975], axis=1)
    return low, high


def main() -> None:
    """Print the coverage table (one row per design, rate and n; one column per method)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 tables and 400 resamples per setting")
    ap.add_argument("--tables", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tables = args.tables or (2_000 if args.quick else 10_000)
    resamples = 400 if args.quick else 1_000
    rng = np.random.default_rng(args.seed)
    methods = ("bootstrap", "wilson", "clopper_pearson", "wilson_deff", "wilson_deff_t")
    print(f"{tables:,} tables per row, {Q} questions, 95 % intervals; coverage (mean width, percentage points)")
    print(f"{'design':<7} {'rate':>6} {'n':>6} " + " ".join(f"{m:>18}" for m in methods) + "  new/old")
    start = time.perf_counter()
    for design in ("fixed", "random"):
        for rate in (0.001, 0.01, 0.1):
            for n in (40, 200, 800, 2400):
                k, nq = simulate(rng, rate, n, tables, design)
                K, N = k.sum(1), nq.sum(1)
                G = np.full(len(K), Q)
                deff = design_effect((k * k).sum(1), (k * nq).sum(1), (nq * nq).sum(1), K, N, G)
                table_of = np.repeat(np.arange(len(K)), Q)  # every question cell's table
                deff_br = design_effect(*bias_reduced_moments(k.ravel(), nq.ravel(), table_of, len(K)), K, N, G,
                                        "bias_reduced")
                ci = {"bootstrap": bootstrap(rng, k, nq, resamples),
                      "wilson": proportion_ci(K, N, 0.95, "wilson"),
                      "clopper_pearson": proportion_ci(K, N, 0.95, "clopper_pearson"),
                      "wilson_deff": wilson_deff(K, N, deff, 0.95),
                      "wilson_deff_t": wilson_deff_t(K, N, deff_br, G, 0.95)}
                cells, width = [], {}
                for m in methods:
                    low, high = ci[m]
                    cov = np.mean((low <= rate) & (rate <= high))
                    width[m] = np.mean(high - low)
                    cells.append(f"{cov:.3f} ({100 * width[m]:6.2f})")
                ratio = width["wilson_deff_t"] / width["wilson_deff"]
                print(f"{design:<7} {100 * rate:>5.1f}% {n:>6} " + " ".join(f"{c:>18}" for c in cells)
                      + f"  {ratio:7.2f}", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
