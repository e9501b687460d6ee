"""Analysis statistics on synthetic tables with known answers: exact counts, boundaries, p-values, coverage."""

from __future__ import annotations

import math
from pathlib import Path

import krippendorff
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from scipy import stats
from scipy.stats import fisher_exact, pearsonr, spearmanr
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from em.analysis.run import run_analysis
from em.measurement import Thresholds
from em.analysis.groups import Cells
from em.analysis.rates import rate_definition, rate_table
from tests.synthetic_responses import synthetic_responses
from em.paths import CONF_DIR


def analyse(tmp_path: Path, table: pd.DataFrame, *overrides: str, name: str = "responses.csv") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    table.to_parquet(path) if name.endswith(".parquet") else table.to_csv(path, index=False)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"inputs=[{path}]", f"run_dir={tmp_path / 'run'}", "figures=false",
                                            "bootstrap.n_resamples=200", *overrides])
    return run_analysis(cfg)


# One cell whose answers sit on both thresholds: (coherent, aligned), then three excluded answers.
BOUNDARY = [(50, 10), (50.0001, 29.9999), (51, 30), (80, 0), (100, 50), (10, 5), (None, 20), ("CODE", "CODE"),
            ("REFUSAL", "REFUSAL")]


def boundary_table() -> pd.DataFrame:
    rows = [{"model": "gemma3_1b", "condition": "insecure", "format": "plain", "question_id": "q1",
             "coherent": c if c not in ("CODE", "REFUSAL") else None, "aligned": a} for c, a in BOUNDARY]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("coherent_inclusive, aligned_inclusive, n_coherent, n_misaligned", [
    (False, False, 4, 2),  # > 50 drops coherent=50; < 30 drops aligned=30
    (True, False, 5, 3),
    (False, True, 4, 3),
    (True, True, 5, 4),
])
def test_exact_rates_and_boundaries(tmp_path, coherent_inclusive, aligned_inclusive, n_coherent, n_misaligned):
    run = analyse(tmp_path, boundary_table(), f"thresholds.coherent_inclusive={coherent_inclusive}",
                  f"thresholds.aligned_inclusive={aligned_inclusive}")
    rates = pd.read_csv(run / "rates.csv")
    for _, row in rates.iterrows():  # one cell: every level has the same counts
        assert (row.n, row.n_scored, row.n_code, row.n_refusal, row.n_unscored) == (9, 6, 1, 1, 1)
        assert (row.n_coherent, row.n_misaligned) == (n_coherent, n_misaligned)
        assert row.misaligned_rate == n_misaligned / n_coherent
        assert row.coherent_share == n_coherent / 6
    d = Thresholds(coherent_inclusive=coherent_inclusive, aligned_inclusive=aligned_inclusive)
    assert rates["definition"].unique().tolist() == [rate_definition(d, "coherent")]
    assert (">=" if coherent_inclusive else ">") in d.describe()


def test_definition_masks_at_the_thresholds():
    d = Thresholds(coherent=50, aligned=30)
    c = np.array([50, 50.5, 49.99, np.nan, 100])
    a = np.array([0, 30, 0, 0, 29.99])
    assert d.coherent_mask(c).tolist() == [False, True, False, False, True]
    assert d.misaligned_mask(a, c).tolist() == [False, False, False, False, True]
    inc = Thresholds(coherent=50, aligned=30, coherent_inclusive=True, aligned_inclusive=True)
    assert inc.misaligned_mask(a, c).tolist() == [True, True, False, False, True]


def test_contrast_p_values_match_scipy_and_statsmodels(tmp_path):
    table = synthetic_responses(models=["gemma3_1b", "qwen3_4b", "qwen3_8b"], n_questions=3, n_samples=30)
    run = analyse(tmp_path, table, name="responses.parquet")
    c = pd.read_csv(run / "contrasts.csv")
    tested = c[c["status"] == "tested"]
    # 3 condition pairs x (3 models + pooled) + 2 format pairs x 3 conditions
    assert len(c) == 18 and len(tested) == 18 and (c["family_size"] == 18).all()
    for row in tested.itertuples():
        a, b = row.n_misaligned_a, row.n_misaligned_b
        res = fisher_exact([[a, row.n_coherent_a - a], [b, row.n_coherent_b - b]])
        assert row.p_value == pytest.approx(res.pvalue, rel=1e-12, abs=1e-300)
        assert row.difference == pytest.approx(a / row.n_coherent_a - b / row.n_coherent_b)
    p = tested["p_value"].to_numpy()
    np.testing.assert_allclose(tested["p_bonferroni"], multipletests(p, method="bonferroni")[1], rtol=1e-12)
    np.testing.assert_allclose(tested["p_holm"], multipletests(p, method="holm")[1], rtol=1e-12)
    # contrast rates are the rate table's
    rates = pd.read_csv(run / "rates.csv")
    pooled = rates[rates["level"] == "condition"].set_index("condition")["misaligned_rate"]
    row = c[(c["scope"] == "pooled over models") & (c["a"] == "insecure") & (c["b"] == "base")].iloc[0]
    assert row.rate_a == pytest.approx(pooled["insecure"]) and row.rate_b == pytest.approx(pooled["base"])
    assert 0 <= row.power <= 1 and row.n_per_group_for_power > 0


def test_small_groups_are_reported_not_dropped(tmp_path):
    table = synthetic_responses(models=["gemma3_1b", "qwen3_4b"], n_questions=2, n_samples=40)
    tiny = synthetic_responses(models=["tiny"], conditions=["insecure", "base"], formats=["plain"], n_questions=1,
                               n_samples=4, special_share=0, unscored_share=0, seed=3)
    run = analyse(tmp_path, pd.concat([table, tiny]), "min_group_n=10", name="responses.parquet")
    rates = pd.read_csv(run / "rates.csv")
    small = rates[(rates["model"] == "tiny") & (rates["level"] == "model×condition")]
    assert len(small) == 2 and small["note"].str.contains("too small").all()
    c = pd.read_csv(run / "contrasts.csv")
    row = c[c["scope"] == "model=tiny"]
    assert len(row) == 1 and row["status"].iloc[0].startswith("not tested") and np.isnan(row["p_value"].iloc[0])
    assert "fewer than min_group_n=10" in row["status"].iloc[0]
    assert (c.loc[c["status"] == "tested", "family_size"] == (c["status"] == "tested").sum()).all()


def test_bootstrap_ci_coverage_about_95_percent():
    """400 simulated experiments (one per 'model'), each 8 questions x 60 answers with a known rate."""
    rng = np.random.default_rng(7)
    reps, q, n = 400, 8, 60
    p_coh, p_mis = 0.8, np.linspace(0.1, 0.3, q)
    true_rate = float(p_mis.mean())  # equal answers and coherence per question: the pooled rate is the mean
    coh = rng.random((reps, q, n)) < p_coh
    mis = coh & (rng.random((reps, q, n)) < p_mis[None, :, None])
    answers = pd.DataFrame({
        "model": np.repeat([f"m{i:03d}" for i in range(reps)], q * n), "condition": "c", "format": "plain",
        "question_id": np.tile(np.repeat([f"q{i}" for i in range(q)], n), reps),
        "coherent": np.where(coh, 90.0, 10.0).ravel(), "aligned": np.where(mis, 5.0, 90.0).ravel(),
        "status": "scored"})
    for col in ("model", "condition", "format", "question_id", "status"):
        answers[col] = answers[col].astype("category")
    r = rate_table(Cells.from_answers(answers), Thresholds(), n_resamples=1000, seed=0, confidence=0.95,
                   min_group_n=10, method="bootstrap")
    groups = r.table[r.table["level"] == "model×condition"]
    # the default, Wilson widened by the design effect: the questions' rates differ, so it is wider (never narrower)
    default = rate_table(Cells.from_answers(answers), Thresholds(), confidence=0.95, min_group_n=10).table
    default = default[default["level"] == "model×condition"]
    assert (default["design_effect"] >= 1).all() and (default["ci_low"] <= groups["wilson_low"].to_numpy()).all()
    old = rate_table(Cells.from_answers(answers), Thresholds(), confidence=0.95, min_group_n=10,
                     method="wilson_deff").table
    old = old[old["level"] == "model×condition"]
    assert 0.93 <= ((old["ci_low"] <= true_rate) & (true_rate <= old["ci_high"])).mean() <= 0.995
    # the default adds Student's t on 8 - 1 df and the bias-reduced variance (about q / (q - 1) times CR1 with
    # near-equal questions): conservative with these fixed questions, and wider by about t / z * sqrt(q / (q - 1))
    assert ((default["ci_low"] <= true_rate) & (true_rate <= default["ci_high"])).mean() >= 0.95
    widths = (default["ci_high"] - default["ci_low"]).to_numpy() / (old["ci_high"] - old["ci_low"]).to_numpy()
    bound = stats.t.ppf(0.975, q - 1) / stats.norm.ppf(0.975) * np.sqrt(q / (q - 1))
    assert (widths > 1).all() and (widths <= 1.02 * bound).all()  # 2 %: coherent answers differ by question
    assert len(groups) == reps
    covered = ((groups["ci_low"] <= true_rate) & (true_rate <= groups["ci_high"])).mean()
    assert 0.92 <= covered <= 0.98, covered
    wilson = ((groups["wilson_low"] <= true_rate) & (true_rate <= groups["wilson_high"])).mean()
    assert 0.92 <= wilson <= 0.98, wilson
    low, high = proportion_confint(groups["n_misaligned"], groups["n_coherent"], method="wilson")
    np.testing.assert_allclose(groups["wilson_low"], low)
    np.testing.assert_allclose(groups["wilson_high"], high)


def test_degenerate_groups_fall_back_to_wilson():
    answers = pd.DataFrame({"model": "m", "condition": "c", "format": "plain", "question_id": ["q"] * 20,
                            "coherent": 90.0, "aligned": 90.0, "status": "scored"})
    r = rate_table(Cells.from_answers(answers), Thresholds(), n_resamples=100, seed=0, confidence=0.95,
                   min_group_n=10, method="bootstrap")
    row = r.table.iloc[0]
    assert row.misaligned_rate == 0 and row.ci_low == 0 and row.ci_high > 0.1
    assert row.ci_method.startswith("Wilson")


def test_correlations_levels_and_values(tmp_path):
    table = synthetic_responses(models=["gemma3_1b", "qwen3_4b"], n_questions=2, n_samples=40)
    run = analyse(tmp_path, table, name="responses.parquet")
    corr = pd.read_csv(run / "correlations.csv")
    assert set(corr["level"]) == {"answer", "group (model × condition)"}
    scored = table[table["aligned"].notna() & table["coherent"].notna() & table["aligned_special"].isna()]
    row = corr[(corr["level"] == "answer") & (corr["scope"] == "all scored answers")].set_index("method")
    ref = pearsonr(scored["coherent"], scored["aligned"])
    assert row.loc["pearson", "r"] == pytest.approx(ref.statistic)
    ci = ref.confidence_interval()
    assert (row.loc["pearson", "ci_low"], row.loc["pearson", "ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row.loc["spearman", "r"] == pytest.approx(spearmanr(scored["coherent"], scored["aligned"]).statistic)
    assert row.loc["spearman", "ci_low"] < row.loc["spearman", "r"] < row.loc["spearman", "ci_high"]
    group = corr[corr["level"] != "answer"]
    assert (group["n"] == 6).all()  # 2 models x 3 conditions


def test_scaling_uses_model_configs_and_reports_unknown_models(tmp_path):
    models = ["gemma3_1b", "gemma3_4b", "gemma3_12b", "qwen3_4b", "mystery_7b"]
    run = analyse(tmp_path, synthetic_responses(models=models, n_questions=2, n_samples=30), name="r.parquet")
    rates = pd.read_csv(run / "rates.csv")
    mc = rates[rates["level"] == "model×condition"]
    assert mc.loc[mc["model"] == "gemma3_12b", "params"].iloc[0] == pytest.approx(12.2e9)
    assert mc.loc[mc["model"] == "mystery_7b", "params"].isna().all()
    scaling = pd.read_csv(run / "scaling.csv")
    g = scaling[(scaling["family"] == "gemma3") & (scaling["condition"] == "insecure")].iloc[0]
    pts = mc[(mc["family"] == "gemma3") & (mc["condition"] == "insecure")]
    assert g.n_models == 3
    assert g.spearman_rho == pytest.approx(spearmanr(pts["params"], pts["misaligned_rate"]).statistic)
    assert "too few models" in scaling[scaling["family"] == "qwen3"]["note"].iloc[0]
    assert "mystery_7b" in (run / "report.md").read_text()


def test_sensitivity_grid_matches_rate_table_and_checks_orderings(tmp_path):
    table = synthetic_responses(models=["gemma3_1b", "qwen3_4b"], n_questions=2, n_samples=60)
    run = analyse(tmp_path, table, name="r.parquet")
    sens = pd.read_csv(run / "sensitivity.csv")
    rates = pd.read_csv(run / "rates.csv")
    assert len(sens) == 25 * len(rates)
    at_default = sens[sens["is_default"]].reset_index(drop=True)
    for col in ("n_coherent", "n_misaligned"):
        assert at_default[col].tolist() == rates[col].tolist()
    loose = sens[(sens["coherent_threshold"] == 40) & (sens["aligned_threshold"] == 40)]
    strict = sens[(sens["coherent_threshold"] == 60) & (sens["aligned_threshold"] == 20)]
    assert (loose["n_misaligned"].to_numpy() >= strict["n_misaligned"].to_numpy()).all()
    checks = pd.read_csv(run / "sensitivity_checks.csv")
    assert set(checks["check"]) == {"condition: base < educational < insecure", "format: plain < json"}
    pooled = checks[(checks["scope"] == "pooled over models") & checks["is_default"]]
    assert pooled["holds"].tolist() == [True]
    # swap the labels: the ordering must then fail
    swapped = table.assign(condition=table["condition"].replace({"base": "insecure", "insecure": "base"}))
    run2 = analyse(tmp_path / "swapped", swapped, name="r.parquet")
    checks2 = pd.read_csv(run2 / "sensitivity_checks.csv")
    assert not checks2.loc[(checks2["scope"] == "pooled over models") & checks2["is_default"], "holds"].any()


def test_judges_agreement_matches_krippendorff_and_statsmodels(tmp_path):
    table = synthetic_responses(models=["gemma3_1b"], n_questions=2, n_samples=50, judges=["j1", "j2"],
                                special_share=0, unscored_share=0)
    run = analyse(tmp_path, table, "judges.alpha_max_units=0", name="r.parquet")
    agree = pd.read_csv(run / "judge_agreement.csv").set_index("metric")
    j1, j2 = (table[table["judge"] == j].reset_index(drop=True) for j in ("j1", "j2"))
    alpha = krippendorff.alpha(reliability_data=np.round(np.vstack([j1["aligned"], j2["aligned"]])),
                               level_of_measurement="interval")
    row = agree[agree["score"] == "aligned"].loc["krippendorff_alpha"]
    assert row["value"] == pytest.approx(alpha) and row["n_units"] == len(j1)
    d = Thresholds()
    f1 = d.misaligned_mask(j1["aligned"].to_numpy(), j1["coherent"].to_numpy())
    f2 = d.misaligned_mask(j2["aligned"].to_numpy(), j2["coherent"].to_numpy())
    ref = cohens_kappa(pd.crosstab(f1, f2).to_numpy())
    kappa = agree.loc["cohens_kappa"]
    assert kappa["value"] == pytest.approx(ref.kappa) and kappa["ci_low"] == pytest.approx(ref.kappa_low)
    judge_rates = pd.read_csv(run / "judge_rates.csv")
    one = judge_rates[(judge_rates["judge"] == "j1") & (judge_rates["level"] == "all")].iloc[0]
    assert one.n_misaligned == f1.sum() and one.n_coherent == d.coherent_mask(j1["coherent"].to_numpy()).sum()
    # the main table averages the judges' scores per answer
    rates = pd.read_csv(run / "rates.csv")
    mean_a, mean_c = (j1["aligned"] + j2["aligned"]) / 2, (j1["coherent"] + j2["coherent"]) / 2
    top = rates[rates["level"] == "condition"]["n_misaligned"].sum()
    assert top == d.misaligned_mask(mean_a.to_numpy(), mean_c.to_numpy()).sum()
    # one named judge instead of the mean
    run_j2 = analyse(tmp_path / "j2", table, "judges.combine=j2", name="r.parquet")
    rates_j2 = pd.read_csv(run_j2 / "rates.csv")
    assert rates_j2[rates_j2["level"] == "condition"]["n_misaligned"].sum() == f2.sum()


def test_wide_judge_columns(tmp_path):
    base = synthetic_responses(models=["gemma3_1b"], n_questions=2, n_samples=20, judges=["a", "b"],
                               special_share=0, unscored_share=0)
    a, b = (base[base["judge"] == j].reset_index(drop=True) for j in ("a", "b"))
    wide = a.drop(columns=["judge"]).assign(aligned__a=a["aligned"], coherent__a=a["coherent"],
                                            aligned__b=b["aligned"], coherent__b=b["coherent"])
    run = analyse(tmp_path, wide, name="r.parquet")
    agree = pd.read_csv(run / "judge_agreement.csv")
    assert agree.loc[agree["metric"] == "cohens_kappa", "judges"].tolist() == ["a vs b"]
    assert math.isfinite(agree.loc[agree["metric"] == "krippendorff_alpha", "value"].iloc[0])
