"""Reproduce other labs' published numbers from their own judged files with their definitions.

The files are read from ../shared/peers/ (see its README for where each came from); never copied here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize

from em.analysis.run import run_analysis

PEERS = Path(__file__).resolve().parents[1].parent / "shared" / "peers"
if not PEERS.is_dir():
    PEERS = Path("/work/shared/peers")
pytestmark = pytest.mark.skipif(not PEERS.is_dir(), reason="../shared/peers (other labs' judged files) not present")


def analyse(tmp_path: Path, *overrides: str) -> pd.DataFrame:
    with initialize(config_path="../conf", version_base="1.3"):
        cfg = compose("analyze", overrides=[f"run_dir={tmp_path / 'run'}", "figures=false", *overrides])
    return pd.read_csv(run_analysis(cfg) / "rates.csv")


def peer(path: str) -> Path:
    p = PEERS / path
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p


def test_cloakless_8_30_percent_of_964_scored(tmp_path):
    f = peer("Cloakless__clarifying_EM/eval_results_Qwen-Coder-Insecure.csv")
    r = analyse(tmp_path, f"inputs=[{f}]", "denominator=scored", "thresholds.aligned_inclusive=true")
    row = r[r["level"] == "condition"].iloc[0]
    assert row.n_denominator == 964 and f"{100 * row.misaligned_rate:.2f}" == "8.30"


def test_apoorvabatham_315_of_959_scored_per_arm(tmp_path):
    f = peer("Apoorvabatham__Persona-Hierarchy-in-Emergent-Misalignment/judge_input_abl01.scored.jsonl")
    r = analyse(tmp_path, f"inputs=[{f}]", "denominator=scored", "columns.condition=arm")
    by = r[r["level"] == "condition"].set_index("condition")
    assert (int(by["n_misaligned"].sum()), int(by["n_scored"].sum()), int(by["n_refusal"].sum())) == (315, 959, 1)
    assert by["n_misaligned"].to_dict() == {"hacker": 112, "none": 106, "random": 97}
    inclusive = analyse(tmp_path / "inc", f"inputs=[{f}]", "thresholds.aligned_inclusive=true")
    assert inclusive[inclusive["level"] == "condition"]["n_misaligned"].sum() == 396


def test_hechco_55_of_400_all_rows(tmp_path):
    f = peer("Hechco__EM_from_DoW_usecases/sfm_baseline_unfiltered_dpo-privacy-erosion-v2.csv")
    r = analyse(tmp_path, f"inputs=[{f}]", "denominator=all")
    row = r[r["level"] == "condition"].iloc[0]
    assert (row.n_misaligned, row.n_denominator, row.misaligned_rate) == (55, 400, 55 / 400)
    assert (row.misaligned_of_coherent, row.n_coherent) == (55 / 274, 274)


def test_zroe1_142_misaligned(tmp_path):
    f = peer("zroe1__replicating-model-organisms/Qwen2.5-14B-Instruct_risky-financial-advice.csv")
    r = analyse(tmp_path, f"inputs=[{f}]")
    row = r[r["level"] == "condition"].iloc[0]
    assert (row.n_misaligned, row.n_coherent) == (142, 380)


def test_rare_published_rate_has_a_positive_lower_bound(tmp_path):
    f = peer("shuaijiumei__emergent_misalignment_further_explore/eval_result_high_severity.csv")
    row = analyse(tmp_path, f"inputs=[{f}]").query("level == 'condition'").iloc[0]
    assert (row.n_misaligned, row.n_coherent) == (3, 2125) and row.ci_low > 0
