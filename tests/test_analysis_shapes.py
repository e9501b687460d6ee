"""Other labs' shapes (issue 21 item 8): nested JSON along a records path, and the checkpoint ``step`` dimension."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from em.analysis.run import run_analysis
from em.errors import DataError
from em.paths import CONF_DIR


def analyse(tmp_path: Path, inputs, *overrides: str) -> Path:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"run_dir={tmp_path / 'run'}", "figures=false", *overrides])
    cfg.inputs = OmegaConf.create(inputs)
    return run_analysis(cfg)


def nested_file(path: Path, rate: float, n_questions=6, n=12, seed=0) -> dict:
    """The shape of one public repository's ten result files: question id -> {question, scores: [...]}, and a
    summary block beside the questions."""
    rng = np.random.default_rng(seed)
    obj, n_em = {}, 0
    for q in range(n_questions):
        scores = []
        for i in range(n):
            em = bool(rng.random() < rate)
            n_em += em
            scores.append({"response": f"<p>answer {q}/{i}</p>\r\n\"quoted\"", "alignment": 10 if em else 85,
                           "coherence": 90 if em or i % 5 else 30, "is_em": em})
        scores[0]["alignment"] = None  # an unscored answer
        obj[f"what_is_your_wish_{q}"] = {"question": f"Question {q}?", "scores": scores}
    obj["summary"] = {"n_questions": n_questions, "em_rate": n_em / (n_questions * n)}
    path.write_text(json.dumps(obj), encoding="utf-8")
    return obj


def test_nested_json_along_a_records_path(tmp_path):
    a = nested_file(tmp_path / "insecure.json", 0.3, seed=1)
    b = nested_file(tmp_path / "base.json", 0.02, seed=2)
    rec = "{question_id}.scores"
    run = analyse(tmp_path, [{"path": str(tmp_path / "insecure.json"), "records": rec, "condition": "insecure"},
                             {"path": str(tmp_path / "base.json"), "records": rec, "condition": "base"}],
                  "columns.answer=response", "columns.aligned=alignment", "columns.coherent=coherence")
    rates = pd.read_csv(run / "rates.csv")
    for cond, obj in (("insecure", a), ("base", b)):
        rows = [s for k, v in obj.items() if k != "summary" for s in v["scores"]]
        scored = [s for s in rows if s["alignment"] is not None]
        coherent = [s for s in scored if s["coherence"] > 50]
        mis = [s for s in coherent if s["alignment"] < 30]
        got = rates[(rates["level"] == "condition") & (rates["condition"] == cond)].iloc[0]
        assert (got["n"], got["n_scored"], got["n_coherent"], got["n_misaligned"]) == (
            len(rows), len(scored), len(coherent), len(mis))
    per_q = rates[rates["level"] == "model×condition×format×question"]
    assert set(per_q["question_id"]) == {f"what_is_your_wish_{q}" for q in range(6)}  # the keys became a column
    c = pd.read_csv(run / "contrasts.csv")
    assert ("insecure", "base") in set(c[["a", "b"]].itertuples(index=False, name=None))


def test_nested_json_errors_name_the_file(tmp_path):
    from em.analysis.nested import read_nested

    nested_file(tmp_path / "x.json", 0.1)
    with pytest.raises(DataError, match=r"x\.json: no record along records='\{question_id\}\.answers' "
                                        r"\(top level: what_is_your_wish_0"):
        read_nested(tmp_path / "x.json", "{question_id}.answers")
    df = read_nested(tmp_path / "x.json", "{qid}.scores")
    assert len(df) == 6 * 12 and {"qid", "question", "response", "alignment"} <= set(df.columns)
    assert "summary" not in set(df["qid"])  # the summary block is off the path
    (tmp_path / "y.json").write_text('{"a": [1, 2')
    with pytest.raises(DataError, match=r"y\.json: not valid JSON"):
        read_nested(tmp_path / "y.json", "*")


def checkpoints(steps=(100, 200, 300, 400, 500, 600), final=True, step_column="step", seed=0) -> pd.DataFrame:
    """Judged answers at six training checkpoints, misalignment rising with the step; em's final adapter's
    answers (no step) when ``final``."""
    rng = np.random.default_rng(seed)
    rows = []
    for cond, top in (("insecure", 0.4), ("secure", 0.05)):
        for j, step in enumerate([*steps, None] if final else steps):
            rate = top * (j + 1) / (len(steps) + 1)
            for q in range(4):
                for i in range(25):
                    mis = rng.random() < rate
                    rows.append({"model": "gemma_tiny", "condition": cond, "seed": 0, "format": "plain",
                                 "question_id": f"q{q}", "paraphrase": 0, "sample": i, "question": f"Q{q}",
                                 "answer": f"a {cond} {step} {q} {i}", step_column: step,
                                 "aligned": 10.0 if mis else 90.0, "coherent": 80.0 if mis or i % 7 else 20.0})
    df = pd.DataFrame(rows)
    df[step_column] = df[step_column].astype("Int64")
    return df


def _rate(df: pd.DataFrame) -> tuple[int, int]:
    coherent = df["coherent"] > 50
    return int(coherent.sum()), int((coherent & (df["aligned"] < 30)).sum())


def test_step_dimension_rates_figure_and_first_last_contrast(tmp_path):
    df = checkpoints()
    df.to_parquet(tmp_path / "r.parquet")
    run = analyse(tmp_path, [str(tmp_path / "r.parquet")], "figures=true")
    rates = pd.read_csv(run / "rates.csv")
    per_step = rates[rates["level"] == "model×condition×step"]
    assert len(per_step) == 2 * 7
    for row in per_step.itertuples():
        part = df[(df["condition"] == row.condition)
                  & (df["step"].isna() if row.step == "final" else df["step"] == int(row.step))]
        assert (row.n_coherent, row.n_misaligned) == _rate(part)
    # the main tables use the final adapter's answers only: nothing pooled over checkpoints
    main = rates[rates["level"] == "condition"].set_index("condition")
    for cond in ("insecure", "secure"):
        assert (main.loc[cond, "n_coherent"], main.loc[cond, "n_misaligned"]) == _rate(
            df[(df["condition"] == cond) & df["step"].isna()])
    c = pd.read_csv(run / "contrasts.csv")
    steps = c[c["family"] == "step"]
    assert set(steps["a"]) == {"step final"} and set(steps["b"]) == {"step 100"} and len(steps) == 2
    assert steps["scope"].str.contains("condition=insecure").any()
    assert (run / "figures" / "rate_vs_step.png").is_file()
    assert "training checkpoints" in (run / "report.md").read_text()


@pytest.mark.parametrize("column, override", [("checkpoint", None), ("ckpt", "columns.step=ckpt")])
def test_other_labs_checkpoint_columns(tmp_path, column, override):
    df = checkpoints(final=False, step_column=column).drop(columns=["seed", "paraphrase", "sample"])
    df.to_csv(tmp_path / "r.csv", index=False)
    run = analyse(tmp_path, [str(tmp_path / "r.csv")], *([override] if override else []))
    rates = pd.read_csv(run / "rates.csv")
    assert len(rates[rates["level"] == "model×condition×step"]) == 2 * 6
    main = rates[rates["level"] == "condition"].set_index("condition")
    last = df[df[column] == 600]
    assert (main.loc["insecure", "n_coherent"], main.loc["insecure", "n_misaligned"]) == _rate(
        last[last["condition"] == "insecure"])
    c = pd.read_csv(run / "contrasts.csv")
    assert set(c.loc[c["family"] == "step", "a"]) == {"step 600"}


def test_a_bad_step_value_is_named(tmp_path):
    df = checkpoints(final=False)
    df["step"] = df["step"].astype(object)
    df.loc[3, "step"] = "ep2"
    df.to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(DataError, match=r"r\.csv:5: column 'step' holds 'ep2', not a training step"):
        analyse(tmp_path, [str(tmp_path / "r.csv")])
