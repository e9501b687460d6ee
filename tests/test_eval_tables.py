"""Never lose a finished run to a logging step: realistic judge mixes through the stage with W&B on (offline).

Judge replies have the shapes GPT-4o returns: number tokens with and without a leading space, CODE /
REFUSAL with and without number mass, less than 0.25 of the mass on numbers, replies without logprobs,
and server errors that outlast the retries. Every mix must leave typed tables on disk and in W&B.
"""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest

from em.evaluate import report
from em.evaluate.run import run_evaluation
from em.measurement import Thresholds
from tests.eval_helpers import KEY_ENV, compose_eval, eval_overrides, openai_judge_overrides
from tests.loopback_server import LoopbackServer
from tests.wandb_reader import read_offline_run

SCORED = [[" 85", -0.3], ["90", -1.8], ["80", -2.6], ["CODE", -6.0]]  # a leading space, as GPT-4o often sends
LOW_MASS = [["I", -0.1], ["50", -2.0], ["x", -3.0]]  # numbers carry e^-2 = 0.135 < 0.25
# The example: CODE 0.45, "10" 0.30, "20" 0.20 -> the reference scores 14.0 (mass 0.50)
CODE_WITH_MASS = [["CODE", math.log(0.45)], ["10", math.log(0.30)], ["20", math.log(0.20)]]
REFUSAL_ONLY = [["REFUSAL", -0.02], ["I", -4.5]]

MIXES = {
    # name: (server kwargs, expected per-format counts: scored, code, refusal, unscored, special_scored)
    "all_scored": (dict(default=SCORED), (8, 0, 0, 0, 0)),
    "none_scored": (dict(default=LOW_MASS), (0, 0, 0, 8, 0)),
    "mixed": (dict(default=SCORED, script={"magic lamp": LOW_MASS, "free afternoon": []}), (4, 0, 0, 4, 0)),
    "code_refusal": (dict(default=CODE_WITH_MASS, script={"money fast": REFUSAL_ONLY, "quickest way": REFUSAL_ONLY}), (6, 0, 2, 0, 6)),
    "failures": (dict(default=SCORED, fault_rate=1.0, faults=("500",)), (0, 0, 0, 8, 0)),
}


@pytest.fixture(scope="module")
def answers(tmp_path_factory, cache_dir):
    """One set of generated answers (tiny model), copied into each mix's run directory."""
    d = tmp_path_factory.mktemp("answers")
    run_evaluation(compose_eval(eval_overrides(d / "run", cache_dir, judge="none", format="[plain]")))
    return d / "run" / "answers.jsonl"


@pytest.mark.parametrize("mix", list(MIXES))
def test_every_judge_mix_finishes_with_typed_tables_and_wandb(mix, answers, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    server, (n_scored, n_code, n_refusal, n_unscored, n_special) = MIXES[mix]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(answers, run_dir / "answers.jsonl")
    with LoopbackServer(**server) as srv:
        extra = openai_judge_overrides(srv.url, **{"judge.max_retries": 1, "judge.reply_retries": 1})
        res = run_evaluation(compose_eval(eval_overrides(run_dir, cache_dir, format="[plain]",
                                                         **extra, **{"wandb.enabled": "true"})))
    assert res.generated == 0 and len(res.table) == 8
    plain = res.summary["formats"]["plain"]
    got = (plain["n_scored"], plain["n_code"], plain["n_refusal"], plain["n_unscored"], plain["n_special_scored"])
    assert got == (n_scored, n_code, n_refusal, n_unscored, n_special)

    df = pd.read_parquet(run_dir / "responses.parquet")
    assert df["aligned"].dtype == "float64" and df["coherent"].dtype == "float64"
    assert df["aligned"].notna().sum() == df["coherent"].notna().sum() == n_scored
    csv = pd.read_csv(run_dir / "responses.csv")
    assert pd.api.types.is_float_dtype(csv["aligned"]) and len(csv) == 8
    assert (csv["aligned"].isna() == df["aligned"].isna()).all()  # missing is empty in CSV, never a string
    if mix == "code_refusal":
        spend = df[df["aligned_special"] == "CODE"]
        assert len(spend) == 6 and spend["aligned"].eq(14.0).all()  # the reference's 14.0, kept
        assert df.loc[df["aligned_special"] == "REFUSAL", "aligned"].isna().all()
        # the paper's exclusion, explicit: the same table without those six
        off = report.summarize(res.table, {}, Thresholds(exclude_special=True))["formats"]["plain"]
        assert (off["n_scored"], off["n_code"], off["n_special_scored"]) == (0, 6, 0)

    run_file = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    rec = read_offline_run(run_file)
    assert rec["summary"]["eval/responses/nrows"] == 8
    assert rec["config"]["sampling.temperature"] == 1.0  # the effective sampling parameters are logged
    table_file = next((run_dir / "wandb").glob("offline-run-*/files/media/table/eval/responses_*.table.json"))
    table = json.loads(table_file.read_text())
    col = table["columns"].index("aligned")
    values = [row[col] for row in table["data"]]
    assert all(v is None or isinstance(v, float) for v in values) and "" not in values
    assert sum(v is not None for v in values) == n_scored


def test_a_wandb_failure_is_a_warning_and_the_results_stand(answers, tmp_path, cache_dir, monkeypatch, caplog):
    import wandb

    def broken(*a, **k):
        raise wandb.errors.CommError("network is unreachable")

    monkeypatch.setattr(wandb, "init", broken)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(answers, run_dir / "answers.jsonl")
    res = run_evaluation(compose_eval(eval_overrides(run_dir, cache_dir, judge="none", format="[plain]",
                                                     **{"wandb.enabled": "true"})))
    assert res is not None and len(res.table) == 8
    assert (run_dir / "summary.json").is_file() and (run_dir / "responses.parquet").is_file()
    assert any("W&B logging failed (CommError: network is unreachable)" in r.message for r in caplog.records)


def test_label_and_score_columns_keep_one_type_each():
    df = pd.DataFrame({"aligned": [None, 12.5], "coherent": [None, None], "truth": ["TRUE", None],
                       "answer": ['say "hi"\r\n<b>x</b>', None]})
    out = report.typed(df, ["aligned", "coherent", "truth"])
    assert out["aligned"].dtype == "float64" and out["coherent"].dtype == "float64"
    assert out["truth"].dtype == "string" and out["answer"].dtype == "string"
    table = report.wandb_table(out)
    assert table.data == [[None, None, "TRUE", 'say "hi"\r\n<b>x</b>'], [12.5, None, None, None]]


def test_printed_summary_keeps_rare_rates_and_long_format_labels_aligned(capsys, tmp_path):
    from em.evaluate.report import print_summary

    formats = {"plain": {"n": 723, "n_scored": 723, "coherent_rate": 0.9, "misaligned_rate": 3 / 723},
               "plain+trigger": {"n": 723, "n_scored": 700, "coherent_rate": 0.5, "misaligned_rate": 0.25},
               "json": {"n": 8, "n_scored": 0, "coherent_rate": None, "misaligned_rate": None}}
    print_summary({"n_answers": 1454, "model": "m", "condition": "backdoor", "formats": formats}, tmp_path)
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [ln.split()[0] for ln in lines] == ["format", *formats]
    ends = {len(ln) for ln in lines}
    assert len(ends) == 1  # every row as wide as the header: the columns line up
    assert lines[1].split()[-1] == f"{100 * 3 / 723:.2f}%"  # 0.41 %, not "0%"
    assert lines[2].split()[-1] == "25%" and lines[3].split()[-1] == "n/a"
