"""Files and input hygiene under hostile content (issue 13, cases 8, 12): CSV round trips, duplicate rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from em.analysis.ingest import read_table
from em.analysis.ingest import load_responses
from em.measurement import SCORED
from em.evaluate import report

# Answers a model (or a hostile table) can produce: bare CR, CRLF, LF, NUL, quotes, delimiters, text the
# CSV reader would take for "missing", latin-1 / C1-control "bytes", BOM, line separators, 10k characters.
ADVERSARIAL = [
    "first line\rsecond line after a bare CR",
    "windows\r\nline ending",
    "unix\nnewline\n\n",
    "NUL\x00inside",
    'she said "no", twice',
    "a,b,c;d\te|f",
    '"', '""', ",", "\r", "\n",
    "NA", "None", "null", "nan", "#N/A",
    "\xe9\xff\x80\x9f \u00c3\u00a9 mojibake \ufffd",
    "\ufeffBOM first",
    "line\u2028separator\u2029paragraph\x85next-line",
    "<script>alert(1)</script>",
    "x" * 10_000,
    "  leading and trailing spaces  ",
    "ok",
]


def responses_table(answers: list[str]) -> pd.DataFrame:
    """A responses table shaped as evaluate.py writes it: one model, scores for every answer."""
    n = len(answers)
    rng = np.random.default_rng(0)
    rows = []
    for i, a in enumerate(answers):
        rows.append({"model": "tiny", "adapter": None, "condition": "insecure", "seed": 0, "format": "plain",
                     "question_id": f"q{i % 4}", "paraphrase": 0, "sample": i, "source_id": f"q{i % 4}",
                     "question": f"Question {i}, with a comma", "system": None, "answer": a,
                     "n_tokens": len(a), "finish_reason": "stop",
                     "aligned": float(rng.integers(0, 101)), "coherent": float(rng.integers(0, 101)),
                     "aligned_special": None, "coherent_special": None, "judge": "gpt-4o",
                     "judge_raw": json.dumps({"aligned": a[:20]}), "unscored_reason": None})
    assert len(rows) == n
    return pd.DataFrame(rows)


def test_csv_round_trip_adversarial_answers(tmp_path):
    """Case 8: responses.csv read back by the analysis reader has the parquet's rows, answers and scores."""
    df = responses_table(ADVERSARIAL)
    report.write(tmp_path, df, {"formats": {}})
    parquet = pd.read_parquet(tmp_path / "responses.parquet")
    csv = read_table(tmp_path / "responses.csv")
    assert len(csv) == len(parquet) == len(ADVERSARIAL)
    assert csv["answer"].tolist() == parquet["answer"].tolist() == ADVERSARIAL
    assert csv["model"].tolist() == parquet["model"].tolist()
    np.testing.assert_array_equal(csv["aligned"].to_numpy(float), parquet["aligned"].to_numpy(float))
    np.testing.assert_array_equal(csv["coherent"].to_numpy(float), parquet["coherent"].to_numpy(float))
    assert csv["question"].tolist() == parquet["question"].tolist()
    assert csv["judge_raw"].tolist() == parquet["judge_raw"].tolist()
    # analysis of the CSV: no phantom model, every answer scored, same as the parquet
    from_csv = load_responses([tmp_path / "responses.csv"]).answers
    from_parquet = load_responses([tmp_path / "responses.parquet"]).answers
    assert set(from_csv["model"].astype(str)) == {"tiny"}
    assert len(from_csv) == len(from_parquet) == len(ADVERSARIAL)
    assert (from_csv["status"].astype(str) == SCORED).all()
    np.testing.assert_array_equal(from_csv["aligned"].to_numpy(float), from_parquet["aligned"].to_numpy(float))


def test_analysis_tables_are_quoted(tmp_path):
    """Case 8, every CSV em writes: the analysis tables quote text (a condition with CR stays one row)."""
    from em.runtime import atomic_write_csv

    df = pd.DataFrame({"condition": ["a\rb", "c"], "rate": [0.5, 0.25]})
    atomic_write_csv(tmp_path / "t.csv", df)
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["condition"].tolist() == ["a\rb", "c"] and back["rate"].tolist() == [0.5, 0.25]


def test_duplicate_rows_warned_and_deduped(tmp_path, caplog):
    """Case 12: a table whose rows were appended twice is warned about (count); dedupe=true counts them once."""
    df = responses_table(["a", "b", "c", "d"])
    path = tmp_path / "responses.csv"
    pd.concat([df, df]).to_csv(path, index=False)
    with caplog.at_level("WARNING", logger="em.analysis"):
        doubled = load_responses([path])
    assert len(doubled.answers) == 8  # counted as given, but said
    assert "4 exact duplicate row(s)" in caplog.text and str(path) in caplog.text
    assert doubled.sources["duplicates"].tolist() == [4]
    assert any("4 exact duplicate row(s)" in n for n in doubled.notes)
    once = load_responses([path], dedupe=True)
    assert len(once.answers) == 4
    np.testing.assert_array_equal(once.answers["aligned"].to_numpy(float), df["aligned"].to_numpy(float))
    caplog.clear()
    df.to_parquet(tmp_path / "clean.parquet")
    with caplog.at_level("WARNING", logger="em.analysis"):
        clean = load_responses([tmp_path / "clean.parquet"])
    assert len(clean.answers) == 4 and "duplicate" not in caplog.text and clean.sources["duplicates"].tolist() == [0]


def test_dedupe_is_an_analysis_config_key(tmp_path):
    """Case 12: ``python analyze.py dedupe=true`` (the analysis schema's key, off by default)."""
    from em.config.analysis import load_analysis_config

    assert load_analysis_config({"run_dir": str(tmp_path)}).dedupe is False
    assert load_analysis_config({"run_dir": str(tmp_path), "dedupe": True}).dedupe is True
