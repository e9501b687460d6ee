"""Training runs as clusters: which run (adapter / training seed) each answer came from, per-run rates, pooled
intervals that carry the between-run variance, and contrasts with the run as the unit.

Why: a paper's claim is about the training *procedure* (model x data x recipe), and seeds of one procedure
differ a lot in emergent misalignment, so an interval that treats the answers of three seeds as one sample
of answers is too narrow for that claim. Answers are crossed by two factors that each correlate them: the
run that produced them and the question they answer (every run answers the same questions).

Interval (``ci.runs=two_way``, the default): Wilson's interval on the effective sample size
N / deff * (z / t_{G-1})^2 (as :func:`em.analysis.intervals.wilson_deff_t`), with a *two-way* design effect
deff = (V_run + V_question - V_run×question) / V_binomial, the multiway cluster-robust variance of Cameron,
Gelbach & Miller (2011, "Robust inference with multiway clustering", JBES 29(2)), each term the
bias-reduced (Mancl & DeRouen 2001) cluster variance of the ratio estimator K / N, and, where the
difference is smaller than the larger one-way term (not positive semi-definite), that larger term instead
(their suggested fix). Degrees of freedom: G = min(runs, questions) (runs for a single question), so t_{G-1};
with 3 runs t_2 = 4.30,
which is what three seeds buy. Coverage: ``bench/rate_ci_coverage.py`` (the ``runs`` designs).

Contrast with the run as the unit (:func:`run_test`): a score-type Wald test of p_a = p_b whose variance is
p0 (1 - p0) (deff_a / N_a + deff_b / N_b) at the pooled rate p0 (each side's two-way design effect; a side
with one run keeps its question design effect), referred to Student's t on the between-run degrees of
freedom (runs_a - 1) + (runs_b - 1) (cluster-robust inference with few clusters, Cameron & Miller 2015);
beside it, when both sides have >= 2 runs, the exact permutation p over the runs (every split of the
pooled runs into two groups of the observed sizes; the statistic: the difference of the pooled rates).
With 3 runs a side, 20 splits: the smallest permutation p is 0.1, which is the honest answer to "do these
six seeds differ"; the t-test makes the normal-approximation assumption to say more.

A run is identified by the ``adapter`` and training ``seed`` columns (whichever are present; a sampling seed
is not a run: :func:`em.analysis.ingest.prepare`). Answers without either form one run per table cell.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional

import numpy as np
import pandas as pd

from em.analysis.groups import ALL, LEVELS, Cells, level_name
from em.analysis.intervals import bias_reduced_moments, wilson_deff_t
from em.analysis.ingest import UNSPECIFIED
from em.analysis.rates import DENOMINATOR_COLUMN, RateResult, rate_table
from em.measurement import Thresholds

RUN_COLUMNS = ("adapter", "seed")
RUN_LEVEL = "model×condition×run"
TWO_WAY_METHOD = ("Wilson, two-way (run × question) bias-reduced design effect (Cameron, Gelbach & Miller 2011), "
                  "t(min(runs, questions) - 1)")
MAX_PERMUTATIONS = 20_000


def run_labels(answers: pd.DataFrame) -> pd.Series:
    """Each answer's run: ``adapter`` and ``seed`` joined (``seed=3``, ``<adapter> seed=3``); "(one run)" when
    the table has neither column (or only unspecified values)."""
    parts = []
    for col in RUN_COLUMNS:
        if col in answers:
            v = answers[col].astype(str)
            if (v != UNSPECIFIED).any():
                parts.append(v if col == "adapter" else "seed=" + v)
    if not parts:
        return pd.Series("(one run)", index=answers.index, dtype=object)
    out = parts[0]
    for p in parts[1:]:
        out = out + " " + p
    return out.astype(object)


def runs_per_cell(answers: pd.DataFrame) -> pd.DataFrame:
    """model, condition, n_runs: distinct runs per model × condition."""
    runs = run_labels(answers)
    d = pd.DataFrame({"model": answers["model"].astype(str), "condition": answers["condition"].astype(str),
                      "run": runs})
    return d.groupby(["model", "condition"], sort=True)["run"].nunique().rename("n_runs").reset_index()


def _cluster_v(k: np.ndarray, n: np.ndarray, index: np.ndarray, n_groups: int, p: np.ndarray,
               total: np.ndarray) -> np.ndarray:
    """Bias-reduced cluster variance of K/N per group from per-cluster (k, n) and each cluster's group."""
    k2, kn, n2 = bias_reduced_moments(k, n, index, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (k2 - 2 * p * kn + p * p * n2) / (total * total)


def two_way(answers: pd.DataFrame, group_of: np.ndarray, n_groups: int, events: np.ndarray,
            units: np.ndarray) -> pd.DataFrame:
    """Two-way (run × question) design effect per group.

    Args:
        answers: needs ``question_id`` and the run columns; one row per answer.
        group_of: int array (answers,): each answer's group in [0, n_groups), -1 to leave it out.
        events, units: float arrays (answers,): 1 where the answer is misaligned / in the denominator.

    Returns:
        One row per group: ``n_runs``, ``n_questions``, ``deff`` (>= 1; 1 where p is 0 or 1 or no variance is
        estimated), ``g`` = min(runs, questions) (the clusters behind the t quantile), ``between_run_share``
        (V_run / (V_run + V_question), NaN without variance).
    """
    keep = group_of >= 0
    # a run is one fine-tuning of one model on one condition: seed 0 of two models are two runs
    run = (answers["model"].astype(str) + "\x1f" + answers["condition"].astype(str) + "\x1f"
           + run_labels(answers).astype(str)).to_numpy()
    d = pd.DataFrame({"g": group_of[keep], "run": run[keep],
                      "q": answers["question_id"].astype(str).to_numpy()[keep], "k": events[keep],
                      "n": units[keep]})
    cells = d.groupby(["g", "run", "q"], sort=False, observed=True)[["k", "n"]].sum().reset_index()
    cells = cells[cells["n"] > 0]
    g = cells["g"].to_numpy()
    K = np.bincount(g, weights=cells["k"], minlength=n_groups)
    N = np.bincount(g, weights=cells["n"], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = K / N
    out = {}
    v = {}
    for name, keys in (("run", ["g", "run"]), ("q", ["g", "q"]), ("cell", ["g", "run", "q"])):
        c = cells.groupby(keys, sort=False)[["k", "n"]].sum().reset_index()
        gi = c["g"].to_numpy()
        out[name] = np.bincount(gi, minlength=n_groups)
        v[name] = _cluster_v(c["k"].to_numpy(float), c["n"].to_numpy(float), gi, n_groups, p, N)
    v_two = v["run"] + v["q"] - v["cell"]
    v_two = np.where(v_two < np.maximum(v["run"], v["q"]), np.maximum(v["run"], v["q"]), v_two)
    with np.errstate(invalid="ignore", divide="ignore"):
        deff = v_two / (p * (1 - p) / N)
        share = v["run"] / (v["run"] + v["q"])
    ok = (out["run"] >= 2) & (out["q"] >= 1) & (K > 0) & (K < N) & np.isfinite(deff)
    return pd.DataFrame({"n_runs": out["run"], "n_questions": out["q"], "deff": np.where(ok, np.maximum(deff, 1), 1.0),
                         # one question: the runs are the only clusters, t on runs - 1
                         "g": np.where(out["q"] >= 2, np.minimum(out["run"], out["q"]), out["run"]),
                         "between_run_share": np.where(ok, share, np.nan)})


def two_way_deff(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two-way design effect of :func:`two_way` for balanced arrays: k, n of shape (tables, runs, questions)
    (events and units per run × question cell); returns (deff (tables,), G = min(runs, questions) (tables,)).
    The simulation in ``bench/rate_ci_coverage.py`` uses this; :func:`two_way` is the same for a table of
    answers."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    K, N = k.sum((1, 2)), n.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = K / N

        def v(kc, nc):  # clusters on the last axis
            w = 1.0 / (1.0 - nc / N[:, None]) ** 2
            w[~np.isfinite(w)] = 0.0
            return (w * (kc - p[:, None] * nc) ** 2).sum(1) / (N * N)

        v_run, v_q = v(k.sum(2), n.sum(2)), v(k.sum(1), n.sum(1))
        v_cell = v(k.reshape(len(k), -1), n.reshape(len(n), -1))
        big = np.maximum(v_run, v_q)
        v_two = np.where(v_run + v_q - v_cell < big, big, v_run + v_q - v_cell)
        deff = v_two / (p * (1 - p) / N)
    runs = (n.sum(2) > 0).sum(1)
    qs = (n.sum(1) > 0).sum(1)
    ok = (runs >= 2) & (K > 0) & (K < N) & np.isfinite(deff)
    return np.where(ok, np.maximum(deff, 1.0), 1.0), np.where(qs >= 2, np.minimum(runs, qs), runs)


def _answer_flags(cells: Cells, definition: Thresholds, denominator: str) -> tuple[np.ndarray, np.ndarray]:
    misaligned = definition.misaligned_mask(cells.aligned, cells.coherent).astype(float)
    if denominator == "coherent":
        units = definition.coherent_mask(cells.coherent).astype(float)
    elif denominator == "scored":
        units = (~np.isnan(cells.aligned)).astype(float)
    else:
        units = np.ones(len(cells.code))
    return misaligned, units


def apply_runs(rates: RateResult, cells: Cells, answers: pd.DataFrame, definition: Thresholds,
               confidence: float) -> RateResult:
    """Add ``n_runs`` and ``between_run_share`` to every row; where a group pools >= 2 runs, replace its
    intervals under each denominator (and the headline's) with the two-way interval (module docstring).

    Rows at question level keep their interval (one question: the run is the only cluster; the two-way
    formula with one question reduces to the run-clustered one, so it is applied there too).
    """
    t = rates.table
    t["n_runs"] = 1
    t["between_run_share"] = np.nan
    cell_keys = cells.keys
    for level, rows in rates.row_of.items():
        if level not in {level_name(lv) for lv in LEVELS}:  # the run / step levels: one run or pooled steps
            continue
        dims = [c for c in ("model", "condition", "format", "question_id")
                if c in level.replace("question", "question_id").split("×")]
        sub = t.iloc[rows]
        keys = sub[dims].astype(str).apply(tuple, axis=1) if dims else pd.Series([()] * len(sub))
        if dims:
            pos = pd.DataFrame(list(keys), columns=dims).assign(_g=np.arange(len(sub)))
            cell_group = cell_keys[dims].astype(str).merge(pos, on=dims, how="left")["_g"].fillna(-1)
            cell_group = cell_group.to_numpy(dtype=np.int64)
        else:
            cell_group = np.zeros(len(cell_keys), dtype=np.int64)
        group_of = cell_group[cells.code]
        for den, col in DENOMINATOR_COLUMN.items():
            events, units = _answer_flags(cells, definition, den)
            tw = two_way(answers, group_of, len(sub), events, units)
            if den == "coherent":
                t.loc[t.index[rows], "n_runs"] = tw["n_runs"].to_numpy()
            multi = tw["n_runs"].to_numpy() >= 2
            if not multi.any():
                continue
            idx = t.index[rows][multi]
            k, n = t.loc[idx, "n_misaligned"].to_numpy(float), t.loc[idx, col].to_numpy(float)
            low, high = wilson_deff_t(k, n, tw["deff"].to_numpy()[multi], tw["g"].to_numpy()[multi], confidence)
            low[n == 0] = np.nan
            high[n == 0] = np.nan
            t.loc[idx, f"misaligned_of_{den}_low"], t.loc[idx, f"misaligned_of_{den}_high"] = low, high
            t.loc[idx, f"deff_{den}"] = tw["deff"].to_numpy()[multi]
            if den == rates.denominator:
                t.loc[idx, "ci_low"], t.loc[idx, "ci_high"] = low, high
                t.loc[idx, "design_effect"] = tw["deff"].to_numpy()[multi]
                t.loc[idx, "between_run_share"] = tw["between_run_share"].to_numpy()[multi]
                t.loc[idx, "ci_method"] = np.where(n == 0, t.loc[idx, "ci_method"], TWO_WAY_METHOD)
    return rates


def run_level(answers: pd.DataFrame, definition: Thresholds, *, confidence: float, min_group_n: int,
              denominator: str) -> pd.DataFrame:
    """Per-run rates: one row per model × condition × run (level ``model×condition×run``, column ``run``), with
    the question-clustered interval of that run's answers (:func:`em.analysis.rates.rate_table`)."""
    per_run = answers.copy()
    per_run["format"] = run_labels(answers).to_numpy()  # the run takes the format's place in the cell key
    for col in ("format",):
        per_run[col] = per_run[col].astype("category")
    rr = rate_table(Cells.from_answers(per_run), definition, confidence=confidence, min_group_n=min_group_n,
                    denominator=denominator)
    t = rr.table.iloc[rr.row_of[level_name(("model", "condition", "format"))]].copy()
    t["run"] = t["format"]
    t["format"] = ALL
    t["level"] = RUN_LEVEL
    t["n_runs"] = 1
    return t.reset_index(drop=True)


def permutation_p(k: np.ndarray, n: np.ndarray, n_a: int) -> tuple[float, int]:
    """Exact two-sided permutation p of the difference of pooled rates between the first ``n_a`` runs and the
    rest, over every split of the runs (k events of n units each); (p, number of splits). Capped at
    MAX_PERMUTATIONS splits (then a seeded random subset, the observed split included)."""
    runs = len(k)
    total = math.comb(runs, n_a)

    def diff(idx: tuple[int, ...]) -> float:
        m = np.zeros(runs, bool)
        m[list(idx)] = True
        na, nb = n[m].sum(), n[~m].sum()
        if na == 0 or nb == 0:
            return math.nan
        return k[m].sum() / na - k[~m].sum() / nb

    obs = diff(tuple(range(n_a)))
    if total <= MAX_PERMUTATIONS:
        splits = itertools.combinations(range(runs), n_a)
    else:
        rng = np.random.default_rng(0)
        splits = [tuple(range(n_a))] + [tuple(sorted(rng.choice(runs, n_a, replace=False)))
                                        for _ in range(MAX_PERMUTATIONS - 1)]
    ds = np.array([diff(s) for s in splits])
    ds = ds[np.isfinite(ds)]
    if not np.isfinite(obs) or not len(ds):
        return math.nan, int(len(ds))
    return float(np.mean(np.abs(ds) >= abs(obs) - 1e-12)), int(len(ds))


def run_test(ka: float, na: float, deff_a: float, runs_a: int, kb: float, nb: float, deff_b: float,
             runs_b: int) -> tuple[float, float]:
    """(statistic, two-sided p) of the run-level Wald test of equal rates (module docstring); NaN when
    neither side has 2 runs, a side is empty, or no side has an event."""
    df = max(runs_a - 1, 0) + max(runs_b - 1, 0)
    if df < 1 or na <= 0 or nb <= 0:
        return math.nan, math.nan
    p0 = (ka + kb) / (na + nb)
    var = p0 * (1 - p0) * (deff_a / na + deff_b / nb)
    if var <= 0:
        return math.nan, math.nan
    from scipy import stats

    stat = (ka / na - kb / nb) / math.sqrt(var)
    return float(stat), float(2 * stats.t.sf(abs(stat), df))


def run_summary(answers: pd.DataFrame) -> Optional[str]:
    """One sentence for the report: how many runs each model × condition has, or that run-to-run variance
    is not estimated (one run per model × condition)."""
    counts = runs_per_cell(answers)
    if counts.empty:
        return None
    multi = counts[counts["n_runs"] >= 2]
    if multi.empty:
        return ("One training run (adapter / seed) per model × condition: run-to-run variance is not estimated; "
                "the intervals describe these runs' answers, not the training procedure (Betley et al. 2025 "
                "plot every seed; a multi-seed study found emergent misalignment consistent across seeds in "
                "only 2 of 12 open models).")
    cells = ", ".join(f"{r.model} × {r.condition}: {r.n_runs}" for r in counts.itertuples())
    return (f"Runs per model × condition (adapter / training seed): {cells}. Where a group pools >= 2 runs its "
            "interval carries the between-run variance (two-way run × question design effect, Cameron, Gelbach & "
            "Miller 2011, bias-reduced, t on min(runs, questions) - 1 degrees of freedom), and contrasts between "
            "such groups take the run as the unit (`run_p`: t-test on the between-run degrees of freedom; "
            "`permutation_p`: exact permutation over runs). Per-run rates: level `model×condition×run` in "
            "rates.csv and the figure runs.")


__all__ = ["run_labels", "runs_per_cell", "two_way", "two_way_deff", "apply_runs", "run_level", "permutation_p", "run_test",
           "run_summary", "RUN_LEVEL", "TWO_WAY_METHOD"]
