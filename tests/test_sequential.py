"""Sequential fine-tuning: trainer.init_adapter (LoRA weights loaded, identity = the parent's content) and
the chain driver (python -m em.jobs.chain experiment=sequential) run end to end on the tiny model, twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import compose_train, tiny_overrides
from em.jobs import records as jobs
from em.adapters import lineage
from em.errors import ConfigError


@pytest.fixture(scope="module")
def parent(tmp_path_factory, cache_dir) -> Path:
    """A trained tiny run directory (adapter/ inside): the first stage of a chain."""
    from em.train.run import run_training

    run = tmp_path_factory.mktemp("parent")
    run_training(compose_train(tiny_overrides(run, cache_dir, **{"trainer.max_steps": 2, "trainer.warmup_steps": 0,
                                                                 "trainer.max_length": 1024})))
    return run


def test_child_starts_from_the_parents_lora_weights(parent, tmp_path, cache_dir):
    from safetensors.torch import load_file

    from em.train.models import build_model
    from em.config.common import validate

    saved = load_file(parent / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in saved.items())  # trained, not init
    tc = validate(compose_train(tiny_overrides(tmp_path, cache_dir, **{"trainer.init_adapter": str(parent)})))
    model = build_model(tc)
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert set(saved) <= set(state)
    for k, v in saved.items():
        torch.testing.assert_close(state[k].float(), v.float())
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    fresh = build_model(validate(compose_train(tiny_overrides(tmp_path, cache_dir))))
    b = next(v for k, v in fresh.state_dict().items() if "lora_B" in k)
    assert b.abs().sum() == 0  # without init_adapter: fresh LoRA (B at zero)


def test_identity_holds_the_parents_content_not_its_path(parent, tmp_path, cache_dir):
    def hashes(spec):
        return jobs.job_hashes(compose_train(tiny_overrides(tmp_path / "c", cache_dir,
                                                            **{"trainer.init_adapter": spec})))

    full, train, ident = hashes(str(parent))
    assert ident["trainer"]["init_adapter"] == lineage.adapter_digest(str(parent / "adapter"))
    moved = tmp_path / "moved"
    shutil.copytree(parent / "adapter", moved)
    assert hashes(str(moved))[:2] == (full, train)  # same bytes elsewhere: same job
    w = moved / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + bytes([w.read_bytes()[-1] ^ 1]))  # the parent retrained: other weights
    assert hashes(str(moved))[1] != train
    no_parent = jobs.job_hashes(compose_train(tiny_overrides(tmp_path / "c", cache_dir)))
    assert no_parent[1] != train


def test_bad_parent_is_one_line_before_loading(parent, tmp_path, cache_dir):
    from em.train.run import run_training

    with pytest.raises(ConfigError, match=r"trainer.init_adapter: no LoRA adapter at .*nowhere"):
        jobs.job_hashes(compose_train(tiny_overrides(tmp_path, cache_dir,
                                                     **{"trainer.init_adapter": str(tmp_path / "nowhere")})))
    cfg = compose_train(tiny_overrides(tmp_path, cache_dir, lora="r8", **{"trainer.init_adapter": str(parent)}))
    with pytest.raises(ConfigError, match=r"trainer.init_adapter: .* r=32, alpha=64.*lora.r=8"):
        run_training(cfg)
    assert not (tmp_path / "adapter").exists()


def _chain_overrides(chain_dir: Path, cache_dir: str) -> list[str]:
    return ["experiment=sequential", f"chain.dir={chain_dir}", f"cache_dir={cache_dir}", "data.n_examples=8",
            "trainer.max_steps=2", "trainer.warmup_steps=0", "format=[plain,json]", "evaluate.samples=1",
            "evaluate.progress=false", "generation.max_new_tokens=8", f"evaluate.judge_cache={chain_dir}/jc.sqlite"]


def test_three_stage_chain_runs_evaluates_and_resumes(tmp_path, cache_dir, capsys):
    from em.jobs.chain import run_chain

    chain_dir = tmp_path / "chain"
    out = run_chain(_chain_overrides(chain_dir, cache_dir))
    assert out == chain_dir
    stages = json.loads((chain_dir / "chain.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["base", "secure", "insecure", "educational"]
    assert [s["state"] for s in stages] == ["done"] * 4
    # each training stage continues from the previous training stage (the base stage passes nothing on)
    assert [s["parent"] for s in stages] == [None, None, str(chain_dir / "2_secure"), str(chain_dir / "3_insecure")]
    for prev, s in zip(stages[1:], stages[2:]):
        ident = jobs.read_job(Path(s["job_dir"]))["identity"]
        assert ident["trainer"]["init_adapter"] == lineage.adapter_digest(prev["job_dir"])
    assert [s["condition"] for s in stages] == ["base", "2_secure", "3_insecure", "4_educational"]
    for s in stages:
        df = pd.read_parquet(Path(s["job_dir"]) / "eval" / "responses.parquet")
        assert set(df["condition"]) == {s["condition"]}
    table = pd.read_csv(chain_dir / "analysis" / "chain_rates.csv")
    allf = table[table["format"] == "all"].sort_values("stage")
    assert list(allf["name"]) == ["base", "secure", "insecure", "educational"]
    assert set(table["format"]) == {"all", "plain", "json"}
    ok = allf["n_coherent"] > 0
    assert ((allf["ci_low"] <= allf["misaligned_rate"]) & (allf["misaligned_rate"] <= allf["ci_high"]))[ok].all()
    assert (allf["n_misaligned"] <= allf["n_coherent"]).all()
    assert (chain_dir / "analysis" / "chain_rates.png").stat().st_size > 0

    # relaunch: every stage is skipped (same identities, parents unchanged), the view is rebuilt
    capsys.readouterr()
    run_chain(_chain_overrides(chain_dir, cache_dir))
    again = json.loads((chain_dir / "chain.json").read_text())["stages"]
    assert [s["state"] for s in again] == ["skipped"] * 4
    assert "done already" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(chain_dir / "analysis" / "chain_rates.csv"), table)


def test_chain_without_stages_is_one_line(tmp_path, cache_dir):
    from em.jobs.chain import plan

    with pytest.raises(ConfigError, match="chain.stages: no stages"):
        plan([f"cache_dir={cache_dir}", f"run_dir={tmp_path}"])
