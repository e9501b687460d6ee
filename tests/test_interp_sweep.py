"""interp.py as jobs of a sweep: ``python interp.py -m seed=0,1`` under the real submitit_local launcher (each job
in its own process) on the tiny random model, with train.py's sweep discipline: every job leaves its files and
records, the summary counts them, a relaunch skips the finished jobs and leaves their files alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.eval_helpers import subprocess_env

FILES = ["directions.safetensors", "direction_stats.csv", "projection.csv"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, cache_dir):
    """A LoRA adapter on the tiny model with random B (so the fine-tuned model differs from the base)."""
    from em.config.common import validate
    from tests.eval_helpers import compose_eval, eval_overrides
    from tests.vllm_compare import make_adapter

    root = tmp_path_factory.mktemp("adapter")
    ec = validate(compose_eval(eval_overrides(root / "e", cache_dir, quantization="none")))
    return make_adapter(ec, cache_dir, root / "adapter")


def launch(sweep_dir: Path, cache_dir: str, adapter: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "interp.py", "-m", "seed=0,1", "hydra/launcher=submitit_local",
           f"hydra.sweep.dir={sweep_dir}", f"cache_dir={cache_dir}", "model=tiny", f"adapter={adapter}",
           "judge=local_tiny", f"judge_cache={sweep_dir.parent / 'judge.sqlite'}", "samples=1", "format=[plain]",
           "generation.max_new_tokens=6", "progress=false", "logger=none", "interp.steps=[direction,project]",
           "interp.direction.persona.samples=2", "interp.direction.n_boot=5", "interp.project.n_boot=100"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=subprocess_env())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir, adapter):
    """The 2-job sweep launched twice: the second launch finds both jobs done."""
    from em.config.resolvers import path_tag

    # hydra.sweep.subdir: <model>_<recipe>_s<seed>_<adapter's name> (what the job computes, no job number)
    names = [f"tiny_persona_s{seed}_{path_tag(str(adapter))}" for seed in (0, 1)]
    assert names[0].endswith(adapter.parent.name)  # <dir>/adapter: named by its run directory
    sw = tmp_path_factory.mktemp("interp_sweep") / "sw"
    first = launch(sw, cache_dir, adapter)
    after_first = {"summary": json.loads((sw / "sweep_summary.json").read_text()),
                   "records": {j: json.loads((sw / j / "em_job.json").read_text()) for j in names if (sw / j).is_dir()},
                   "mtimes": {(j, f): (sw / j / f).stat().st_mtime_ns for j in names for f in FILES if (sw / j / f).exists()}}
    second = launch(sw, cache_dir, adapter)
    return sw, names, first, after_first, second


def test_each_job_leaves_its_files_records_and_the_summary(sweep):
    sw, names, first, after, _ = sweep
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sweep " in first.stdout and "2 done, 0 skipped, 0 failed" in first.stdout, first.stdout[-2000:]
    s = after["summary"]
    assert sorted(Path(d["job_dir"]).name for d in s["done"]) == names and not s["failed"]
    plan = json.loads((sw / "sweep_plan.json").read_text())
    assert plan["n_jobs"] == 2 and [Path(j["job_dir"]).name for j in plan["jobs"]] == names
    # answers planned per job: 4 questions x 4 persona prompts x 2 + base and fine-tuned 4 x 1 format x 1
    assert all(j["answers"] == 4 * 4 * 2 + 2 * 4 and j["judge_calls"] == 0 for j in plan["jobs"])
    hashes = set()
    for j in names:
        d = sw / j
        assert all((d / f).exists() for f in FILES)
        stats = pd.read_csv(d / "direction_stats.csv")
        assert list(stats["layer"]) == [0, 1] and stats["random_auc"].notna().all()
        assert (stats["n_a"] == 4 * 2 * 2).all() and (stats["n_b"] == 4 * 2 * 2).all()
        proj = pd.read_csv(d / "projection.csv")
        assert set(proj["source"]) == {"base", "finetuned", "shift"} and proj["random_mean"].notna().all()
        rec = after["records"][j]
        done = json.loads((d / "DONE.json").read_text())
        assert rec["state"] == "done" and done["hash"] == rec["hash"] and rec["launch"]
        assert done["summary"]["best_layer"] in (0, 1) and "projection_shift" in done["summary"]
        assert rec["identity"]["seed"] == int(j.split("_s")[1][0])
        hashes.add(rec["hash"])
    assert len(hashes) == 2  # the seed is part of a job's identity
    table = pd.read_csv(sw / "interp_sweep.csv")  # the jobs side by side: direction stats + shift per layer
    assert len(table) == 2 * 2 and set(table["job"]) == set(names) and table["shift_mean"].notna().all()
    assert any("seed=1" in o for o in table["overrides"])
    a, b = (pd.read_csv(sw / j / "direction_stats.csv") for j in names)
    assert not a["auc"].equals(b["auc"]) or not a["norm"].equals(b["norm"])  # other seeds, other answers


def test_relaunch_skips_the_finished_jobs(sweep):
    sw, names, _, after, second = sweep
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 done, 2 skipped, 0 failed" in second.stdout, second.stdout[-2000:]
    for j in names:
        rec = json.loads((sw / j / "em_job.json").read_text())
        assert rec["state"] == "skipped" and rec["hash"] == after["records"][j]["hash"]
        assert rec["launch"] != after["records"][j]["launch"]  # written by the second launch
    now = {(j, f): (sw / j / f).stat().st_mtime_ns for j in names for f in FILES}
    assert now == after["mtimes"]  # nothing recomputed
