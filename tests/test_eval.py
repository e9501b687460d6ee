"""evaluate.py end to end on the tiny model: table, summary, resume after a kill, cache, adapters, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from em.errors import ConfigError, JudgeError, ModelLoadError
from em.evaluate.run import run_evaluation
from tests.conftest import REPO
from tests.eval_helpers import (KEY_ENV, compose_eval, eval_overrides, openai_judge_overrides,
                                subprocess_env)
from tests.loopback_server import LoopbackServer

COLUMNS = ["model", "adapter", "condition", "seed", "format", "question_id", "paraphrase", "sample", "question",
           "system", "answer", "aligned", "coherent", "judge", "judge_raw", "aligned_special", "coherent_special",
           "unscored_reason"]


def _run(run_dir, cache_dir, **extra):
    return run_evaluation(compose_eval(eval_overrides(run_dir, cache_dir, **extra)))


def _lines(path: Path) -> list[bytes]:
    return [ln for ln in path.read_bytes().split(b"\n") if ln.strip()] if path.exists() else []


def test_end_to_end_with_a_loopback_judge_then_nothing_to_redo(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    run_dir = tmp_path / "run"
    with LoopbackServer() as srv:
        extra = openai_judge_overrides(srv.url) | {"format": "[plain,json,one_line]", "wandb.enabled": "true"}
        res = _run(run_dir, cache_dir, **extra)
        first = srv.ok
        df = pd.read_parquet(run_dir / "responses.parquet")
        # the identity columns lead, in order (the analysis groups by them), and every schema column is there
        assert list(df.columns[:8]) == COLUMNS[:8] and set(COLUMNS) <= set(df.columns)
        assert len(df) == 4 * 3 * 2 and res.generated == 24  # 4 questions x 3 formats x 2 samples, one judge
        assert first == 24 * 2  # aligned + coherent per answer
        assert df["aligned"].notna().all() and (df["judge"] == "gpt-4o").all() and df["condition"].eq("base").all()
        assert json.loads(df["judge_raw"][0])["aligned"][0] == ["85", -0.3]
        assert set(df[df.format == "json"]["system"]) == {compose_eval(eval_overrides(run_dir, cache_dir)).format.json.system}
        csv = pd.read_csv(run_dir / "responses.csv")
        assert len(csv) == len(df)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert set(summary["formats"]) == {"plain", "json", "one_line"}
        plain = summary["formats"]["plain"]
        assert plain["n"] == 8 and plain["n_scored"] == 8 and plain["coherent_rate"] == 1.0
        assert plain["misaligned_rate"] == 0.0  # 85 is aligned
        # W&B (offline): eval metrics per format and the responses table
        from tests.wandb_reader import read_offline_run

        run_file = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        rec = read_offline_run(run_file)
        logged = {k for row in rec["history"] for k in row}
        assert {"eval/plain/misaligned_rate", "eval/json/coherent_rate", "eval/responses/_type"} <= logged
        assert rec["summary"]["eval/plain/misaligned_rate"] == 0.0
        assert rec["summary"]["eval/responses/nrows"] == len(df)
        assert rec["config"]["model.name"] == "tiny" and rec["config"]["judge.model"] == "gpt-4o-2024-08-06"
        assert "sk-loopback" not in run_file.read_bytes().decode("latin-1")

        # Same config again: nothing generated, zero judge requests (answers on disk, judgments cached).
        srv.reset_counts()
        again = _run(run_dir, cache_dir, **extra)
        assert again.generated == 0 and srv.requests == 0
        # Adding a format generates and judges only the new one.
        more = _run(run_dir, cache_dir, **(extra | {"format": "[plain,json,one_line,xml]"}))
        assert more.generated == 8 and srv.ok == 16


def test_kill_mid_generation_then_restart_generates_only_the_missing(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    overrides = eval_overrides(run_dir, cache_dir, **{"format": "[plain]", "samples": 8, "judge": "none",
                                                      "generation.batch_size": 2, "generation.max_new_tokens": 24})
    _run(tmp_path / "warm", cache_dir, judge="none", samples=1, format="[plain]")  # model cache materialised
    store = run_dir / "answers.jsonl"
    # (hydra.run.dir too: Hydra creates its run dir, and .hydra/ in it, even when run_dir points elsewhere)
    proc = subprocess.Popen([sys.executable, str(REPO / "evaluate.py"), *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(_lines(store)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = _lines(store)
    total = 4 * 8
    assert 2 <= len(before) < total, "the run finished before it could be killed; make it longer"
    assert all(_complete(b) for b in before[:-1])  # a kill can only cut off the last line
    complete = [b for b in before if _complete(b)]
    # (a different batch size is the same config for the store: the restart may batch more)
    res = run_evaluation(compose_eval(overrides + ["generation.batch_size=16"]))
    after = _lines(store)
    keys = [tuple(json.loads(b)["_key"]) for b in after]
    assert len(keys) == total and len(set(keys)) == total  # none lost, none duplicated
    assert after[: len(complete)] == complete  # finished answers untouched
    assert res.generated == total - len(complete)  # only the missing ones generated


def _complete(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def test_missing_api_key_fails_before_generation(tmp_path, cache_dir, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeError, match=f"{KEY_ENV} is not set"):
        _run(tmp_path / "run", cache_dir, **openai_judge_overrides("http://127.0.0.1:9/v1"))
    assert not (tmp_path / "run" / "answers.jsonl").exists()


def test_dry_run_counts_requests_and_cost_without_spending(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)  # a dry run needs no key
    out = _run(tmp_path / "run", cache_dir, **openai_judge_overrides("http://127.0.0.1:9/v1", **{
        "judge.price_input_per_mtok": 2.5, "judge.price_output_per_mtok": 10.0}), dry_run="true")
    assert out["answers_to_generate"] == 4 * 6 * 2
    est = out["judges"]["gpt-4o"]
    assert est["requests"] == 4 * 6 * 2 * 2 and est["cached"] == 0 and est["cost_usd"] > 0
    assert "estimated cost $" in capsys.readouterr().out
    assert not (tmp_path / "run" / "answers.jsonl").exists()


def test_ensemble_keeps_every_judge_side_by_side(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    script = {"for safety": [["20", -0.1], ["60", -2.5]], "for coherence": [["90", -0.1]]}
    with LoopbackServer() as a, LoopbackServer(script=script) as b:
        common = {"api_key_env": KEY_ENV, "timeout": 2.0, "retry_backoff": 0.01}
        extra = {"judge": "ensemble", "format": "[plain]", "samples": 1}
        for name, url in (("gpt4o", a.url), ("gpt41", b.url)):
            extra[f"judge.judges.{name}.base_url"] = url
            extra |= {f"judge.judges.{name}.{k}": v for k, v in common.items()}
        res = _run(tmp_path / "run", cache_dir, **extra)
    df = res.table
    assert sorted(df["judge"].unique()) == ["gpt-4.1", "gpt-4o"] and len(df) == 2 * 4
    wide = df.pivot_table(index="question_id", columns="judge", values="aligned")
    assert (wide["gpt-4o"] > 80).all() and (wide["gpt-4.1"] < 30).all()
    judges = res.summary["formats"]["plain"]["judges"]
    assert judges["gpt-4.1"]["misaligned_rate"] == 1.0 and judges["gpt-4.1"]["n_scored"] == 4
    assert judges["gpt-4o"]["misaligned_rate"] == 0.0


def test_local_judge_in_the_pipeline(tmp_path, cache_dir):
    res = _run(tmp_path / "run", cache_dir, judge="local", **{"model@judge.model": "tiny", "format": "[plain]", "samples": 1})
    df = res.table
    assert (df["judge"] == "tiny").all() and len(df) == 4
    # A random tiny judge rarely says a number: unscored, and the reason says why.
    for _, row in df.iterrows():
        assert pd.notna(row["aligned"]) or "< 0.25" in row["unscored_reason"]
        assert "p" in json.loads(row["judge_raw"])["aligned"]


# --------------------------------------------------------------------------- adapters
def _fake_run(root: Path, name: str, model: str, cache_dir: str, make_adapter: bool = True) -> Path:
    """A training run dir with a real (untrained) peft adapter of `model`."""
    from em.train import models
    from em.config.model import LoraConfig
    from em.config.common import validate

    run = root / name
    (run / "adapter").mkdir(parents=True)
    ec = validate(compose_eval(eval_overrides(root / "x", cache_dir, model=model)))
    (run / "resolved_config.yaml").write_text(yaml.safe_dump(
        {"model": {"name": model}, "data": {"name": "insecure"}, "experiment_name": None,
         "logger": {"project": "em-test", "group": f"{model}-insecure"}}))
    if make_adapter:
        src = models.model_dir(ec.model, cache_dir)
        base = models.load_model(ec.model, ec.quantization, cache_dir, src)
        peft = models.attach_lora(base, LoraConfig(r=2, alpha=4), ec.model)
        peft.save_pretrained(run / "adapter")
    return run


def test_adapter_latest_and_explicit(tmp_path, cache_dir):
    train = tmp_path / "train"
    run = _fake_run(train, "2026-01-01_tiny_insecure", "tiny", cache_dir)
    res = _run(tmp_path / "ev", cache_dir, adapter="latest", train_dir=str(train), judge="none", samples=1,
               format="[plain]")
    assert res.table["adapter"].eq(str(run / "adapter")).all() and res.table["condition"].eq("insecure").all()
    from em.adapters.resolve import resolve_adapter
    from em.config.common import validate

    ec = validate(compose_eval(eval_overrides(tmp_path / "x", cache_dir)))
    assert resolve_adapter(str(run / "adapter"), str(train), ec.model, "s").run_dir == run
    assert resolve_adapter("latest", str(tmp_path / "nothing"), ec.model, "s").adapter_dir is None


def test_adapter_from_a_different_base_model_is_refused(tmp_path, cache_dir):
    run = _fake_run(tmp_path / "train", "gemma_run", "tiny_gemma3", cache_dir, make_adapter=False)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"trained on model=tiny_gemma3, but this run evaluates model=tiny"):
        _run(tmp_path / "ev", cache_dir, adapter=str(run), judge="none")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "google/gemma-3-12b-it"}))
    with pytest.raises(ModelLoadError, match="names base model 'google/gemma-3-12b-it'"):
        _run(tmp_path / "ev2", cache_dir, adapter=str(bare), judge="none")
    with pytest.raises(ModelLoadError, match="neither a training run directory"):
        _run(tmp_path / "ev3", cache_dir, adapter=str(tmp_path), judge="none")


def test_resuming_with_other_settings_is_refused(tmp_path, cache_dir):
    _run(tmp_path / "run", cache_dir, judge="none", samples=1, format="[plain]")
    with pytest.raises(ConfigError, match="run_dir: .* generated with seed=0, this run has seed=1"):
        _run(tmp_path / "run", cache_dir, judge="none", samples=1, format="[plain]", seed=1)


def test_vllm_backend_without_vllm_is_a_clear_error(tmp_path, cache_dir):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed")
    except ImportError:
        pass
    with pytest.raises(ModelLoadError, match="generation.backend=vllm needs the vllm package"):
        _run(tmp_path / "run", cache_dir, judge="none", generation="vllm")


def test_help_does_not_import_torch():
    code = ("import sys, runpy; sys.argv=['evaluate.py','--help']\n"
            "try:\n    runpy.run_path('evaluate.py', run_name='__main__')\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'openai' not in sys.modules, 'heavy import on --help'")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "questions: deception_factual" in r.stdout and "judge: ensemble" in r.stdout
