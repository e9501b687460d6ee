"""The default rate interval, wilson_deff_t: Wilson on the bias-reduced design-effect sample with Student's t on
(questions - 1) degrees of freedom. Expectations are computed here from Wilson's formula, scipy's t quantile and
statsmodels' cluster-robust fits (OLS ``cov_type="cluster"``, GEE ``cov_type="bias_reduced"``), not read back
from em."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from em.analysis.groups import Cells
from em.analysis.intervals import bias_reduced_moments, design_effect, proportion_ci, rate_ci, wilson_deff
from em.analysis.rates import rate_table
from em.measurement import Thresholds


def wilson_formula(k: float, n: float, crit: float) -> tuple[float, float]:
    """Wilson's score interval (Wilson 1927) with an arbitrary critical value; 0 as the lower bound at 0 events."""
    p = k / n
    denom = 1 + crit**2 / n
    centre = (p + crit**2 / (2 * n)) / denom
    half = crit * np.sqrt(p * (1 - p) / n + crit**2 / (4 * n * n)) / denom
    return (0.0 if k == 0 else centre - half), centre + half


def em_interval(k: np.ndarray, n: np.ndarray, method: str = "wilson_deff_t", confidence: float = 0.95):
    """em's interval for one group of questions with k_i events of n_i answers, as rate_table wires it."""
    if method == "wilson_deff_t":
        moments, small = bias_reduced_moments(k, n, np.zeros(len(k), dtype=int), 1), "bias_reduced"
    else:
        moments, small = ((k * k).sum(), (k * n).sum(), (n * n).sum()), "cr1"
    g = (n > 0).sum()
    deff = design_effect(*moments, k.sum(), n.sum(), g, small)
    low, high = rate_ci(k.sum(), n.sum(), deff, confidence, method, g)
    return float(low[0]), float(high[0]), float(deff[0])


def answer_table(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0/1 misaligned flags of every answer and its question (cluster) id."""
    y = np.concatenate([np.r_[np.ones(int(ki)), np.zeros(int(ni - ki))] for ki, ni in zip(k, n)])
    return y, np.repeat(np.arange(len(n)), n.astype(int))


def gee_bias_reduced_deff(k: np.ndarray, n: np.ndarray) -> float:
    """Mancl-DeRouen variance of the pooled rate (statsmodels GEE, logit link, delta method) over the binomial one."""
    y, groups = answer_table(k, n)
    fit = sm.GEE(y, np.ones((len(y), 1)), groups=groups, family=sm.families.Binomial(),
                 cov_struct=sm.cov_struct.Independence()).fit(cov_type="bias_reduced")
    p = k.sum() / n.sum()
    assert 1 / (1 + np.exp(-fit.params[0])) == pytest.approx(p)
    return (fit.bse[0] * p * (1 - p)) ** 2 / (p * (1 - p) / n.sum())


@pytest.mark.parametrize("questions", [2, 3, 8, 20])
@pytest.mark.parametrize("per_question", [(0, 5), (1, 50), (2, 300), (12, 40)])
def test_equal_questions_give_wilson_with_the_t_quantile(questions, per_question):
    # every question has the same counts: no between-question variance, deff 1, only the quantile changes
    k = np.full(questions, per_question[0], dtype=float)
    n = np.full(questions, per_question[1], dtype=float)
    low, high, deff = em_interval(k, n)
    t = stats.t.ppf(0.975, questions - 1)
    assert deff == 1.0
    assert (low, high) == pytest.approx(wilson_formula(k.sum(), n.sum(), t), rel=1e-9, abs=1e-15)
    z_low, z_high = proportion_confint(k.sum(), n.sum(), alpha=0.05, method="wilson")
    assert low <= max(z_low, 0) and high >= z_high  # contains Wilson
    if per_question[0] == 12 and questions >= 8:  # away from 0, with t^2 << n, the width grows by about t / z
        ratio = (high - low) / (z_high - z_low)
        assert ratio == pytest.approx(t / stats.norm.ppf(0.975), rel=0.02)


def test_heterogeneous_questions_match_statsmodels_cluster_robust_fits():
    # unequal question sizes and rates
    k = np.array([0, 12, 1, 3, 9, 0], dtype=float)
    n = np.array([30, 50, 40, 60, 45, 25], dtype=float)
    y, groups = answer_table(k, n)
    p, big_n = k.sum() / n.sum(), n.sum()
    # the former default: CR1 design effect (intercept-only OLS, cov_type="cluster") and z
    ols = sm.OLS(y, np.ones((len(y), 1))).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    old_low, old_high, old_deff = em_interval(k, n, "wilson_deff")
    assert ols.params[0] == pytest.approx(p)
    assert old_deff == pytest.approx(ols.bse[0] ** 2 / (p * (1 - p) / big_n), rel=1e-9)
    assert (old_low, old_high) == pytest.approx(
        wilson_formula(k.sum() / old_deff, big_n / old_deff, stats.norm.ppf(0.975)), rel=1e-9)
    # the default: bias-reduced design effect (GEE cov_type="bias_reduced") and t on G - 1 df, the quantile
    # statsmodels' cluster fit uses with use_t
    ci_ols = ols.conf_int(alpha=0.05)[0]
    crit = (ci_ols[1] - ci_ols[0]) / (2 * ols.bse[0])
    assert crit == pytest.approx(stats.t.ppf(0.975, len(n) - 1))
    low, high, deff = em_interval(k, n)
    assert deff == pytest.approx(gee_bias_reduced_deff(k, n), rel=1e-9) and deff > old_deff > 2
    assert (low, high) == pytest.approx(wilson_formula(k.sum() / deff, big_n / deff, crit), rel=1e-9)
    w_low, w_high = proportion_confint(k.sum(), big_n, alpha=0.05, method="wilson")
    assert low < old_low < w_low and high > old_high > w_high  # wider than the old default, wider than Wilson


def test_rate_table_uses_the_bias_reduced_design_effect_per_group():
    # two conditions with their own unequal questions: the per-group leverages (n_i / N) must use each group's N
    spec = {"a": ([0, 12, 1, 3, 9], [30, 50, 40, 60, 45]), "b": ([2, 2, 7], [100, 20, 35])}
    rows = []
    for cond, (ks, ns) in spec.items():
        for q, (kq, nq) in enumerate(zip(ks, ns)):
            rows.append(pd.DataFrame({"model": "m", "condition": cond, "format": "plain", "question_id": f"q{q}",
                                      "coherent": 90.0, "aligned": np.where(np.arange(nq) < kq, 5.0, 90.0),
                                      "status": "scored"}))
    answers = pd.concat(rows, ignore_index=True)
    for col in ("model", "condition", "format", "question_id", "status"):
        answers[col] = answers[col].astype("category")
    table = rate_table(Cells.from_answers(answers), Thresholds(), confidence=0.95, min_group_n=10).table
    rows = table[table["level"] == "model×condition"].set_index("condition")
    for cond, (ks, ns) in spec.items():
        k, n = np.array(ks, dtype=float), np.array(ns, dtype=float)
        deff = gee_bias_reduced_deff(k, n)
        row = rows.loc[cond]
        assert row.design_effect == pytest.approx(deff, rel=1e-9)
        assert (row.ci_low, row.ci_high) == pytest.approx(
            wilson_formula(k.sum() / deff, n.sum() / deff, stats.t.ppf(0.975, len(k) - 1)), rel=1e-9)


@pytest.mark.parametrize("questions, n_each", [(8, 5), (8, 300), (3, 100), (56, 40)])
def test_zero_events_keep_an_exact_zero_and_a_conservative_upper_bound(questions, n_each):
    k, n = np.zeros(questions), np.full(questions, float(n_each))
    low, high, deff = em_interval(k, n)
    t = stats.t.ppf(0.975, questions - 1)
    assert low == 0.0 and deff == 1.0
    assert high == pytest.approx(t**2 / (n.sum() + t**2))  # Wilson's upper bound at 0 events, with t for z
    assert high > proportion_confint(0, n.sum(), alpha=0.05, method="wilson")[1]
    assert high >= proportion_confint(0, n.sum(), alpha=0.05, method="beta")[1]  # Clopper-Pearson


@pytest.mark.parametrize("events", [1, 2, 3, 5])
def test_one_to_five_events_contain_the_old_default_and_wilson(events):
    k = np.zeros(8)
    k[:events] = 1.0  # one event in each of the first questions
    n = np.full(8, 300.0)
    low, high, _ = em_interval(k, n)
    old_low, old_high, _ = em_interval(k, n, "wilson_deff")
    w_low, w_high = proportion_confint(events, 2400, alpha=0.05, method="wilson")
    assert 0 < low < old_low <= w_low + 1e-15 and high > old_high >= w_high - 1e-15


def test_one_question_is_plain_wilson_and_clusters_are_required():
    low, high = rate_ci(np.array([3.0, 0.0]), np.array([40.0, 40.0]), np.ones(2), 0.95, "wilson_deff_t",
                        np.ones(2))
    ref = proportion_ci([3, 0], [40, 40], 0.95, "wilson")
    np.testing.assert_allclose(low, ref[0])
    np.testing.assert_allclose(high, ref[1])
    assert low[1] == 0.0
    # the old default stays available and is the z version
    np.testing.assert_allclose(wilson_deff([3.0], [40.0], [1.0], 0.95), proportion_ci([3], [40], 0.95, "wilson"))
    with pytest.raises(ValueError, match="number of clusters"):
        rate_ci([3.0], [40.0], [1.0], 0.95, "wilson_deff_t")
