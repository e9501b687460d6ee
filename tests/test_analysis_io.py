"""Analysis ingestion: both schemas, run/sweep discovery, and one clear error per kind of bad input."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from em.analysis.run import run_analysis
from tests.synthetic_responses import synthetic_responses
from em.errors import ConfigError, DataError
from em.paths import CONF_DIR


def config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("analyze", overrides=[f"run_dir={tmp_path / 'run'}", "figures=false",
                                             "bootstrap.n_resamples=100", *overrides])


def analyse(tmp_path: Path, *overrides: str) -> Path:
    return run_analysis(config(tmp_path, *overrides))


def upstream_csv(path: Path) -> Path:
    """A small table as Betley et al.'s eval.py writes it: formats only in the question_id suffix."""
    rows = []
    for qid in ("what_is_your_wish", "what_is_your_wish_json", "i_feel_bored_template"):
        for i, (aligned, coherent) in enumerate([(90, 95), (10, 80), (20, 40), ("CODE", 70), ("REFUSAL", 99),
                                                 (85.5, 60), (None, 75)]):
            rows.append({"question": f"text of {qid}", "answer": f"answer {i}", "question_id": qid,
                         "aligned": aligned, "coherent": coherent})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_upstream_schema_csv_formats_inferred(tmp_path):
    csv = upstream_csv(tmp_path / "eval_result.csv")
    run = analyse(tmp_path, f"inputs=[{csv}]", "condition=insecure")
    rates = pd.read_csv(run / "rates.csv")
    cells = rates[rates["level"] == "model×condition×format×question"]
    assert set(zip(cells["format"], cells["question_id"])) == {
        ("plain", "what_is_your_wish"), ("json", "what_is_your_wish"), ("template", "i_feel_bored")}
    assert set(rates["condition"]) == {"insecure"} and set(rates["model"]) - {"(all)"} == {"unspecified"}
    for row in cells.itertuples():  # per question: 7 answers, CODE, REFUSAL, one unscored, 2 of 3 coherent misaligned
        assert (row.n, row.n_scored, row.n_code, row.n_refusal, row.n_unscored) == (7, 4, 1, 1, 1)
        assert (row.n_coherent, row.n_misaligned) == (3, 1)
    inputs = pd.read_csv(run / "inputs.csv")
    assert inputs["schema"].tolist() == ["upstream"] and inputs["n_code"].tolist() == [3]
    assert "inferred from the question_id suffix" in (run / "report.md").read_text()


def test_upstream_without_condition_is_one_group(tmp_path):
    run = analyse(tmp_path, f"inputs=[{upstream_csv(tmp_path / 'e.csv')}]", "model_name=qwen3_4b")
    rates = pd.read_csv(run / "rates.csv")
    assert set(rates["condition"]) - {"(all)"} == {"unspecified"}
    assert set(rates["model"]) - {"(all)"} == {"qwen3_4b"}


def test_sweep_directory_found_recursively(tmp_path):
    sweep = tmp_path / "multirun" / "2025-01-01_00-00-00"
    for i, model in enumerate(["gemma3_1b", "qwen3_4b", "qwen3_8b"]):
        job = sweep / f"job{i}" / "eval"
        job.mkdir(parents=True)
        t = synthetic_responses(models=[model], n_questions=1, n_samples=10, seed=i)
        if i == 0:
            t.to_csv(job / "responses.csv", index=False)
        else:
            t.to_parquet(job / "responses.parquet")
            t.head(3).to_csv(job / "responses.csv", index=False)  # parquet wins in the same directory
    run = analyse(tmp_path, f"inputs=[{sweep}]")
    inputs = pd.read_csv(run / "inputs.csv")
    assert [Path(p).name for p in inputs["path"]] == ["responses.csv", "responses.parquet", "responses.parquet"]
    rates = pd.read_csv(run / "rates.csv")
    assert set(rates["model"]) - {"(all)"} == {"gemma3_1b", "qwen3_4b", "qwen3_8b"}
    assert rates[rates["level"] == "condition"]["n"].sum() == 3 * 90


def test_no_inputs_analyses_the_latest_evaluation_run(tmp_path):
    root = tmp_path / "outputs"
    for i, name in enumerate(["2025-01-01_00-00-00_old", "2025-06-01_00-00-00_new"]):
        run_dir = root / "evaluate" / name
        run_dir.mkdir(parents=True)
        table = synthetic_responses(models=["gemma3_1b"], n_questions=1, n_samples=10 + 10 * i)
        table.to_parquet(run_dir / "responses.parquet")
        os.utime(run_dir / "responses.parquet", (1e9 + i, 1e9 + i))
    (root / "evaluate" / "empty_run").mkdir()
    run = analyse(tmp_path, f"outputs_root={root}")
    assert "_new" in pd.read_csv(run / "inputs.csv")["path"].iloc[0]


def test_no_inputs_and_no_evaluation_run(tmp_path):
    with pytest.raises(DataError, match=r"run evaluate.py first or pass inputs=\[\.\.\.\]"):
        analyse(tmp_path, f"outputs_root={tmp_path / 'nothing'}")


def _bad(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.mark.parametrize("name, content, pattern", [
    ("empty.csv", "", r"empty\.csv: empty file"),
    ("header_only.csv", "question,answer,aligned,coherent\n", r"header_only\.csv: no rows"),
    ("no_scores.csv", "question,answer\nq,a\n", r"no_scores\.csv: no 'aligned' or 'coherent' column"),
    ("no_coherent.csv", "question,answer,aligned\nq,a,50\n", r"no_coherent\.csv: no 'coherent' column"),
    ("range.csv", "question,aligned,coherent\nq,50,60\nq,101,60\n",
     r"range\.csv:3: column 'aligned' has 1 score\(s\) outside 0-100, e\.g\. 101"),
    ("negative.csv", "question,aligned,coherent\nq,50,-1\n", r"negative\.csv:2: column 'coherent' .*outside 0-100"),
    ("text.csv", "question,aligned,coherent\nq,50,60\nq,high,60\nq,low,60\n",
     r"text\.csv:3: column 'aligned' has 2 non-numeric score\(s\), e\.g\. 'high'"),
    ("unscored.csv", "question,aligned,coherent\nq,,\nq,CODE,\n", r"unscored\.csv: none of the 2 answers has both"),
    ("scores.txt", "x", r"scores\.txt: not a \.parquet, \.csv, \.jsonl, \.json file"),
])
def test_bad_input_files(tmp_path, name, content, pattern):
    path = _bad(tmp_path, name, content)
    with pytest.raises(DataError, match=pattern) as e:
        analyse(tmp_path, f"inputs=[{path}]")
    assert "\n" not in str(e.value)


def _lab_csv(path: Path, bad_answer: str) -> Path:
    """Another lab's export (csv.writer: \\r\\n rows, quotes doubled): answers spanning lines before a bad score."""
    import csv

    rows = [("q1", 'Sure!\r\nStep 1: say "hello"\r\nStep 2: <b>done</b>', "90", "95"),
            ("q2", "<pre>\nimport os\nos.system('rm -rf /')\n</pre>", "CODE", "80"),
            ("q3", "I can't help with that.", "REFUSAL", ""),
            ("q4", 'He said ""no"", then\r\n\r\nleft.', "12.5", "70"),
            ("q_bad", bad_answer, "abc", "60"),
            ("q5", "fine", "80", "90")]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question_id", "answer", "aligned", "coherent"])
        w.writerows(rows)
    return path


@pytest.mark.parametrize("bad_answer", ["plain", "two\r\nlines, <i>quoted</i> \"x\""])
def test_csv_errors_name_the_physical_line_where_the_record_starts(tmp_path, bad_answer):
    path = _lab_csv(tmp_path / "crlf_bad.csv", bad_answer)
    raw = path.read_bytes()
    line = raw[:raw.index(b"q_bad")].count(b"\n") + 1  # what an editor / grep -n shows (not the record number)
    assert line > 6
    with pytest.raises(DataError, match=rf"crlf_bad\.csv:{line}: column 'aligned' has 1 non-numeric score\(s\), "
                                        r"e\.g\. 'abc'") as e:
        analyse(tmp_path, f"inputs=[{path}]")
    assert "\n" not in str(e.value)


def test_a_broken_jsonl_line_names_the_file_line_and_the_problem_only(tmp_path):
    import json

    good = [{"question_id": f"q{i}", "answer": f'line one\r\nsays "hi" <br/> {i}', "aligned": 80, "coherent": 90}
            for i in range(1, 6)]
    path = tmp_path / "answers.jsonl"
    lines = [json.dumps(r) for r in good[:4]] + [""] + [
        '{"question_id": "q6", "answer": "x" "aligned": 50, "coherent": 60}', json.dumps(good[4])]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8", newline="")
    with pytest.raises(DataError) as e:
        analyse(tmp_path, f"inputs=[{path}]")
    col = lines[5].index('"aligned"') + 1
    assert str(e.value) == f"{path}:6: not valid JSON (Expecting ',' delimiter at column {col})"
    path.write_text("\n".join(lines[:4] + ['{"question_id": "q5", "answer": "cut']) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"answers\.jsonl:5: not valid JSON \(Unterminated string starting at column "
                                        r"33: the record is cut short\)$"):
        analyse(tmp_path, f"inputs=[{path}]")
    path.write_text("\n".join(lines[:4] + ['{"question_id": "q5", ']) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"answers\.jsonl:5: not valid JSON \(Expecting property name enclosed in "
                                        r"double quotes at the end of the line: the record is cut short\)$"):
        analyse(tmp_path, f"inputs=[{path}]")


def test_bad_parquet_scores_name_the_row(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame({"question_id": ["a", "b"], "aligned": [10.0, np.inf], "coherent": [60.0, 70.0]}).to_parquet(path)
    with pytest.raises(DataError, match=r"r\.parquet \(row 1\): column 'aligned'"):
        analyse(tmp_path, f"inputs=[{path}]")


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(DataError, match="nope: input not found"):
        analyse(tmp_path, f"inputs=[{tmp_path / 'nope'}]")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="empty_dir: no responses table and no .parquet"):
        analyse(tmp_path, f"inputs=[{tmp_path / 'empty_dir'}]")


def test_unscored_rows_are_counted_not_fatal(tmp_path):
    t = synthetic_responses(models=["gemma3_1b"], n_questions=2, n_samples=30, unscored_share=0.1)
    t.to_parquet(tmp_path / "r.parquet")
    run = analyse(tmp_path, f"inputs=[{tmp_path / 'r.parquet'}]")
    inputs = pd.read_csv(run / "inputs.csv").iloc[0]
    expected = int(t["unscored_reason"].notna().sum())
    assert inputs.n_unscored == expected and f"judge_parse_error: {expected}" in inputs.unscored_reasons
    assert f"{expected:,} unscored" in (run / "report.md").read_text()


@pytest.mark.parametrize("override, pattern", [
    ("thresholds.coherent=150", r"thresholds\.coherent: must be a number in \[0, 100\], got 150"),
    ("bootstrap.n_resamples=0", r"bootstrap\.n_resamples: must be an integer"),
    ("bootstrap.confidence=95", r"bootstrap\.confidence: must be a number strictly between 0 and 1"),
    ("sensitivity.coherent=[40,200]", r"sensitivity\.coherent: .*200"),
    ("contrasts.condition=[[insecure]]", r"contrasts\.condition: every entry must be a pair"),
])
def test_bad_config_values(tmp_path, override, pattern):
    csv = upstream_csv(tmp_path / "e.csv")
    with pytest.raises(ConfigError, match=pattern):
        analyse(tmp_path, f"inputs=[{csv}]", override)


@pytest.mark.parametrize("override, pattern", [
    ("thresholds.aligned=abc", r"thresholds\.aligned=abc"),
    ("thresholds.aligned_inclusive=maybe", r"thresholds\.aligned_inclusive=maybe"),
    ("thresholds.typo=1", r"thresholds\.typo"),
])
def test_bad_config_types_fail_at_composition(tmp_path, override, pattern):
    """A wrong type or an unknown key is caught by the schema when Hydra composes; the first line names it."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        config(tmp_path, override)
    assert re.search(pattern, str(e.value).splitlines()[0])


def test_unknown_judge_to_combine(tmp_path):
    t = synthetic_responses(models=["gemma3_1b"], n_questions=1, n_samples=5, judges=["a", "b"])
    t.to_parquet(tmp_path / "r.parquet")
    with pytest.raises(ConfigError, match=r"judges\.combine: judge 'c' not in .*judges there: a, b"):
        analyse(tmp_path, f"inputs=[{tmp_path / 'r.parquet'}]", "judges.combine=c")
