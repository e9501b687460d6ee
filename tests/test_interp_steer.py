"""Steering and directional ablation as evaluation conditions through em's own run_evaluation (hf sampler):
alpha = 0 gives the unsteered answers token for token, a large alpha changes them, the condition column names
the intervention, the multimodal-Gemma-shaped model and the 4-bit path sample under hooks, vLLM is refused."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from em.errors import ConfigError
from em.interp import intervene
from tests.eval_helpers import compose_eval, eval_overrides


def run(tmp_path, cache_dir, name, intervention=None, **extra):
    from em.evaluate.run import run_evaluation

    o = {"format": "[plain,json]", "samples": 3, "judge": "none", "generation.max_new_tokens": 12} | extra
    cfg = compose_eval(eval_overrides(tmp_path / name, cache_dir, **o))
    res = run_evaluation(cfg, intervention=intervention)
    return res.table.sort_values(["format", "question_id", "sample"]).reset_index(drop=True)


def unit(width: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(width, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


WIDTH = 64  # model=tiny's hidden size


def test_alpha_zero_is_the_unsteered_model_and_large_alpha_changes_answers(tmp_path, cache_dir):
    base = run(tmp_path, cache_dir, "base")
    zero = run(tmp_path, cache_dir, "zero", intervene.Steer(1, 0.0, unit(WIDTH), 3.0, "answer"))
    big = run(tmp_path, cache_dir, "big", intervene.Steer(0, 8.0, unit(WIDTH), 3.0, "all"))
    assert len(base) == 2 * 4 * 3 and list(zero["answer"]) == list(base["answer"])
    assert set(zero["condition"]) == {"steer[L1,0]"} and set(big["condition"]) == {"steer[L0,+8]"}
    changed = (big["answer"] != base["answer"]).mean()
    assert changed > 0.8


def test_grid_samples_alpha_zero_once_and_it_is_the_unsteered_model(tmp_path, cache_dir):
    """2 layers x alphas {0, a, b}: 1 + 2 x 2 conditions; the shared alpha 0 (steer[L*,0]) hooks nothing and
    gives the unsteered answers with the same seeds; each layer's curve starts from it in the report."""
    from em.interp.report import steering_rates

    tensors = {f"unit.{L}": unit(WIDTH, L) for L in range(2)} | {f"random.{L}": unit(WIDTH, 10 + L) for L in range(2)}
    meta = {"mean_norm": {"0": 3.0, "1": 5.0}}
    conds = intervene.steer_conditions(tensors, meta, [0, 1], [0, 2, -2])
    names = [c.name for c in conds]
    assert names == [intervene.UNSTEERED, "steer[L0,+2]", "steer[L0,-2]", "steer[L1,+2]", "steer[L1,-2]"]
    assert len(set(names)) == len(names) == 1 + 2 * 2
    with_random = intervene.steer_conditions(tensors, meta, [0, 1], [0, 2, -2], random_control=True)
    assert [c.name for c in with_random].count(intervene.UNSTEERED) == 1 and len(with_random) == 1 + 2 * 2 * 2
    assert intervene.slug(intervene.UNSTEERED) == "steer_Lall_0"
    shared = conds[0]
    base = run(tmp_path, cache_dir, "base")
    zero = run(tmp_path, cache_dir, "zero", shared)
    assert len(zero) == 2 * 4 * 3 and list(zero["answer"]) == list(base["answer"])
    assert set(zero["condition"]) == {"steer[L*,0]"}
    rates = tmp_path / "analysis"
    rates.mkdir()
    pd.DataFrame({"condition": names, "rate": [0.1, 0.2, 0.3, 0.4, 0.5]}).to_csv(rates / "rates.csv", index=False)
    curve = steering_rates(rates).sort_values(["layer", "alpha"])
    assert list(zip(curve["layer"], curve["alpha"], curve["rate"])) == [
        (0, -2.0, 0.3), (0, 0.0, 0.1), (0, 2.0, 0.2), (1, -2.0, 0.5), (1, 0.0, 0.1), (1, 2.0, 0.4)]


def test_ablation_condition_and_random_control_names(tmp_path, cache_dir):
    tensors = {f"unit.{L}": unit(WIDTH, L) for L in range(2)} | {f"random.{L}": unit(WIDTH, 10 + L) for L in range(2)}
    conds = intervene.ablate_conditions(tensors, 2, layer=1)
    assert [c.name for c in conds] == ["ablate[L1]", "ablate_random[L1]"]
    assert all(torch.equal(c.units[0], c.units[1]) for c in conds)  # one layer's direction at every layer
    per = intervene.ablate_conditions(tensors, 2, layer=None)
    assert [c.name for c in per] == ["ablate[per_layer]", "ablate_random[per_layer]"]
    table = run(tmp_path, cache_dir, "abl", conds[0], samples=2)
    assert set(table["condition"]) == {"ablate[L1]"} and table["answer"].notna().all()
    assert intervene.slug("steer[L12,+4]") == "steer_L12_+4"


def test_store_refuses_answers_of_another_intervention(tmp_path, cache_dir):
    """A steering run directory resumed with another alpha regenerates (the identity names the intervention)."""
    run(tmp_path, cache_dir, "same", intervene.Steer(0, 1.0, unit(WIDTH), 3.0), samples=1)
    with pytest.raises(ConfigError, match="holds answers generated with intervention"):
        run(tmp_path, cache_dir, "same", intervene.Steer(0, 2.0, unit(WIDTH), 3.0), samples=1)


def test_vllm_backend_refused_in_one_line(tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="hf backend only"):
        run(tmp_path, cache_dir, "v", intervene.Steer(0, 1.0, unit(WIDTH), 1.0), **{"generation": "vllm"})
    assert not (tmp_path / "v" / "answers.jsonl").exists()


def test_multimodal_gemma_and_4bit_sample_under_hooks(tmp_path, cache_dir):
    from tests.vllm_compare import ARCH, multimodal_dir

    mm = multimodal_dir(tmp_path)
    o = {"model": "tiny_gemma3", "model.path": str(mm), "model.multimodal": "true", "samples": 2}
    base = run(tmp_path, cache_dir, "mm_base", **o)
    steer = run(tmp_path, cache_dir, "mm_zero", intervene.Steer(0, 0.0, unit(ARCH["hidden_size"]), 1.0, "answer"),
                **o)
    assert list(steer["answer"]) == list(base["answer"])
    q = {"quantization": "nf4", "samples": 2}
    b4 = run(tmp_path, cache_dir, "q_base", **q)
    s4 = run(tmp_path, cache_dir, "q_big", intervene.Steer(0, 10.0, unit(WIDTH), 3.0), **q)
    assert (s4["answer"] != b4["answer"]).mean() > 0.5
