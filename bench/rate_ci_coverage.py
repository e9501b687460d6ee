"""Coverage of misaligned-rate intervals at rare events: the simulation behind analyze.py's default (ci.method).

    python bench/rate_ci_coverage.py            # 10,000 tables per setting (1-2 minutes on 2 shared cores)
    python bench/rate_ci_coverage.py --quick    # 2,000 tables, 400 bootstrap resamples (well under a minute)
    python bench/rate_ci_coverage.py --runs     # only the between-run designs (below)

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

Between-run designs (``--runs``, also printed after the table above): R = 3 or 5 fine-tuning runs of one
procedure answer the same 8 questions; each run's rate varies around the procedure's rate (logit-normal,
sd 0.5 or 1) and each question's too (sd 1), crossed. The target is the procedure's mean rate. Columns:
``wilson_deff_t`` clustered by question only (runs pooled as if one run: what analyze.py did before) and
``two_way`` (em.analysis.runs: the run × question design effect with t on min(runs, questions) - 1 df).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from em.analysis.runs import two_way_deff  # noqa: E402
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


def simulate_runs(rng, rate: float, runs: int, n: int, tables: int, sd_run: float) -> tuple[np.ndarray, np.ndarray]:
    """Misaligned counts (tables, runs, Q), n // (runs * Q) answers per cell; run and question effects crossed on
    the logit scale, rescaled so the population mean rate is ``rate``."""
    per = max(1, n // (runs * Q))
    base = np.log(rate / (1 - rate))
    run_eff = rng.normal(0, sd_run, size=(tables, runs, 1))
    q_eff = rng.normal(0, 1.0, size=(tables, 1, Q))
    big = 1 / (1 + np.exp(-(base + rng.normal(0, sd_run, 400_000) + rng.normal(0, 1.0, 400_000))))
    p = np.clip(1 / (1 + np.exp(-(base + run_eff + q_eff))) * rate / big.mean(), 0, 1)
    return rng.binomial(per, p), np.full((tables, runs, Q), per)


def run_designs(rng, tables: int) -> None:
    """Coverage of the pooled rate of several runs: question-clustered vs two-way (run × question)."""
    print(f"\nbetween-run designs: {tables:,} tables per row, {Q} questions crossed with the runs; coverage (mean "
          "width, points) of the procedure's mean rate")
    print(f"{'runs':>4} {'sd_run':>6} {'rate':>6} {'n':>6} {'question only':>18} {'two_way':>18}")
    worst = 1.0
    for runs in (3, 5):
        for sd_run in (0.5, 1.0):
            for rate in (0.01, 0.05, 0.2):
                for n in (240, 1200, 4800):
                    k, nn = simulate_runs(rng, rate, runs, n, tables, sd_run)
                    K, N = k.sum((1, 2)), nn.sum((1, 2))
                    kq, nq = k.sum(1), nn.sum(1)  # runs pooled: questions are the only clusters
                    table_of = np.repeat(np.arange(len(K)), Q)
                    deff_q = design_effect(*bias_reduced_moments(kq.ravel(), nq.ravel(), table_of, len(K)), K, N,
                                           np.full(len(K), Q), "bias_reduced")
                    deff2, g = two_way_deff(k, nn)
                    cells = []
                    for low, high in (wilson_deff_t(K, N, deff_q, np.full(len(K), Q), 0.95),
                                      wilson_deff_t(K, N, deff2, g, 0.95)):
                        cov = np.mean((low <= rate) & (rate <= high))
                        cells.append(f"{cov:.3f} ({100 * np.mean(high - low):6.2f})")
                    worst = min(worst, float(cells[1].split()[0]))
                    print(f"{runs:>4} {sd_run:>6} {100 * rate:>5.1f}% {N[0]:>6} {cells[0]:>18} {cells[1]:>18}",
                          flush=True)
    print(f"lowest two_way coverage: {worst:.3f}")


def main() -> None:
    """Print the coverage table (one row per design, rate and n; one column per method)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 tables and 400 resamples per setting")
    ap.add_argument("--tables", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", action="store_true", help="only the between-run designs")
    args = ap.parse_args()
    tables = args.tables or (2_000 if args.quick else 10_000)
    if args.runs:
        run_designs(np.random.default_rng(args.seed), tables)
        return
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
    run_designs(rng, tables)
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
