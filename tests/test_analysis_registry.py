"""The analysis as a registry (issue 20, item 6): a statistic registered here, not in em/, reaches the CSV, the
report, the console and the W&B run; a format no code names takes its place in the contrasts and the report."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from em.analysis.run import run_analysis
from em.analysis.report import md_table, num
from em.analysis.registry import load_statistics, ordered, statistic, unregister
from em.measurement import SCORED
from em.paths import CONF_DIR

# three fine-tuning seeds per condition with very different rates; a cell (condition × seed × format × question)
# of N answers holds 0-5 misaligned ones
SEED_RATES = {("base", 0): 0.0, ("base", 1): 0.05, ("insecure", 0): 0.1, ("insecure", 1): 0.25, ("insecure", 2): 0.4}
N = 12


def events(cond: str, seed: int, fmt_i: int, q: int) -> int:
    """Misaligned answers in one cell: 0..5, rising with the seed's rate, varying over formats and questions."""
    return min(5, int(round(SEED_RATES[(cond, seed)] * N)) + (q + fmt_i) % 3 - 1) if SEED_RATES[(cond, seed)] else 0


def judged(formats=("plain", "json"), n_questions=4) -> pd.DataFrame:
    """evaluate.py's schema. Per cell: ``events`` misaligned answers (aligned 10, coherent 90), then aligned
    ones (aligned 85), every 5th of those incoherent (coherent 20); then one CODE answer, one REFUSAL, one
    unscored (no scores) outside the N."""
    rows = []
    for (cond, seed) in SEED_RATES:
        for fmt_i, fmt in enumerate(formats):
            for q in range(n_questions):
                k = max(0, events(cond, seed, fmt_i, q))
                for i in range(N + 3):
                    aligned, coherent, special = (10.0, 90.0, None) if i < k else (85.0, 20.0 if i % 5 == 0 else 90.0,
                                                                                None)
                    if i == N:
                        aligned, coherent, special = np.nan, 80.0, "CODE"
                    elif i == N + 1:
                        aligned, coherent, special = np.nan, np.nan, "REFUSAL"
                    elif i == N + 2:
                        aligned, coherent = np.nan, np.nan
                    rows.append({"model": "qwen_tiny", "condition": cond, "seed": seed, "format": fmt,
                                 "question_id": f"q{q}", "paraphrase": 0, "sample": i, "question": f"Question {q}?",
                                 "answer": f"answer {cond} {seed} {fmt} {q} {i}", "judge": "gpt-4o-2024-08-06",
                                 "aligned": aligned, "coherent": coherent, "aligned_special": special,
                                 "coherent_special": special if special == "REFUSAL" else None})
    return pd.DataFrame(rows)


def expected_events(df: pd.DataFrame) -> pd.DataFrame:
    """The reference: misaligned answers per condition × seed, counted from how the fixture was built."""
    hit = (df["aligned"] == 10.0) & (df["coherent"] == 90.0)
    out = df[hit].groupby(["condition", "seed"]).size().rename("n_misaligned")
    out = out.reindex(pd.MultiIndex.from_tuples(list(SEED_RATES), names=["condition", "seed"]), fill_value=0)
    return out.reset_index()


def _per_seed(r) -> pd.DataFrame:
    """The throw-away statistic: coherent misaligned answers per condition × training seed."""
    a, d = r.responses.answers, r.settings.thresholds
    mis = (a["status"].astype(str) == SCORED) & (a["coherent"] > d.coherent) & (a["aligned"] < d.aligned)
    g = a.assign(mis=mis.astype(int), seed=pd.to_numeric(a["seed"].astype(str)))
    return g.groupby(["condition", "seed"], observed=True)["mis"].sum().rename("n_misaligned").reset_index()


@pytest.fixture(scope="module")
def registered_run(tmp_path_factory):
    pytest.importorskip("wandb")
    tmp = tmp_path_factory.mktemp("registry")
    df = judged()
    df.to_parquet(tmp / "responses.parquet")
    statistic(name="per_seed_events", table="per_seed_events.csv",
              description="throw-away: misaligned answers per condition × training seed",
              report=lambda r: "\n### Misaligned answers per seed (throw-away)\n\n" + md_table(
                  r.data["per_seed_events"], {"condition": lambda x: x.condition, "seed": lambda x: str(x.seed),
                                              "misaligned": lambda x: num(x.n_misaligned)}),
              headline=lambda r: [f"- Throw-away: {int(r.data['per_seed_events']['n_misaligned'].sum())} "
                                  "misaligned answers over all seeds."],
              console=lambda r: f"per_seed_events: {int(r.data['per_seed_events']['n_misaligned'].sum())}",
              wandb=lambda r: {"per_seed_events/total": int(r.data["per_seed_events"]["n_misaligned"].sum())},
              )(_per_seed)
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("analyze", overrides=[f"run_dir={tmp / 'run'}", "figures=false", "logger=wandb",
                                                "bootstrap.n_resamples=200", f"inputs=[{tmp / 'responses.parquet'}]"])
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            run = run_analysis(cfg)
    finally:
        unregister("per_seed_events")
        mp.undo()
    return df, run, printed.getvalue()


def test_the_registered_statistic_reaches_the_csv(registered_run):
    df, run, printed = registered_run
    got = pd.read_csv(run / "per_seed_events.csv")
    want = expected_events(df)
    assert list(got.columns) == ["condition", "seed", "n_misaligned"]
    merged = want.merge(got, on=["condition", "seed"], how="outer", suffixes=("_want", "_got"))
    assert len(merged) == len(SEED_RATES)
    assert (merged["n_misaligned_want"] == merged["n_misaligned_got"]).all(), merged
    assert got["n_misaligned"].max() > got["n_misaligned"].min()  # the seeds differ
    # the built-in tables stay as they were, beside it
    for name in ("rates", "contrasts", "correlations", "sensitivity", "sensitivity_checks", "scaling", "inputs"):
        assert (run / f"{name}.csv").is_file(), name


def test_the_registered_statistic_reaches_the_report_and_the_console(registered_run):
    df, run, printed = registered_run
    report = (run / "report.md").read_text()
    total = int(expected_events(df)["n_misaligned"].sum())
    assert "### Misaligned answers per seed (throw-away)" in report
    section = report.split("### Misaligned answers per seed (throw-away)")[1].split("\n### ")[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| condition")]
    assert len(rows) == len(SEED_RATES)
    assert f"- Throw-away: {total} misaligned answers over all seeds." in report
    assert "- `per_seed_events.csv` — throw-away: misaligned answers per condition × training seed" in report
    assert report.index("## Tables") < report.index("### Misaligned answers per seed") < report.index("## Figures")
    assert f"per_seed_events: {total}" in printed.splitlines()


def test_the_registered_statistic_reaches_wandb(registered_run):
    from tests.wandb_reader import read_offline_run

    df, run, printed = registered_run
    (f,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    logged = read_offline_run(f)
    total = int(expected_events(df)["n_misaligned"].sum())
    assert logged["summary"]["per_seed_events/total"] == total
    (history,) = logged["history"]  # one run.log: every table and figure
    assert history["tables/per_seed_events/_type"] == "table-file"
    assert history["tables/per_seed_events/nrows"] == len(SEED_RATES)
    # the table's rows as W&B stored them (files/media/table/...): the same counts as the CSV
    (media,) = f.parent.glob("files/media/table/tables/per_seed_events_*.table.json")
    table = json.loads(media.read_text())
    got = pd.DataFrame(table["data"], columns=table["columns"])
    assert got["n_misaligned"].astype(int).tolist() == pd.read_csv(run / "per_seed_events.csv")["n_misaligned"].tolist()


def test_unregistered_it_is_gone():
    assert "per_seed_events" not in {s.name for s in load_statistics()}
    with pytest.raises(ValueError, match="registered already"):
        statistic(name="rates", table="x.csv", description="a second rates")(lambda r: None)
    with pytest.raises(ValueError, match="registered already"):  # a table name taken by another statistic
        statistic(name="another", table="rates.csv", description="x")(lambda r: None)
    assert "another" not in {s.name for s in load_statistics()}


def test_order_is_the_configs_then_first_appearance():
    assert ordered(["yaml", "json", "plain", "yaml", "template"], ["plain", "json"]) == ["plain", "json", "yaml",
                                                                                          "template"]
    assert ordered(["b", "a"], []) == ["b", "a"]
    assert ordered(["b"], ["a", "b"]) == ["b"]


def test_a_fourth_format_is_contrasted_and_ordered_without_code(tmp_path):
    # yaml appears before template in the answers; ordering.format (plain, json) comes first
    df = judged(formats=("plain", "json", "yaml", "template"), n_questions=3)
    df.to_parquet(tmp_path / "r.parquet")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"run_dir={tmp_path / 'run'}", "figures=false",
                                            "bootstrap.n_resamples=200", f"inputs=[{tmp_path / 'r.parquet'}]"])
    run = run_analysis(cfg)
    contrasts = pd.read_csv(run / "contrasts.csv")
    fmt = contrasts[contrasts["family"] == "format"]
    for cond in ("base", "insecure"):
        pairs = {(a, b) for a, b in fmt.loc[fmt["scope"].str.contains(cond), ["a", "b"]].itertuples(index=False)}
        assert {("json", "plain"), ("yaml", "plain"), ("template", "plain")} <= pairs, (cond, pairs)
    report = (run / "report.md").read_text()
    section = report.split("### Misaligned rate by condition × format (pooled over models)")[1].split("\n### ")[0]
    rows = [ln.split(" | ") for ln in section.splitlines() if ln.startswith("| insecure |")]
    assert [r[1] for r in rows] == ["plain", "json", "yaml", "template"]
    rates = pd.read_csv(run / "rates.csv")
    assert set(rates.loc[rates["level"] == "condition×format", "format"]) == {"plain", "json", "yaml", "template"}
