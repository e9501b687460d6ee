"""Multi-GPU training: rank-sharded batches, the trainer=ddp / trainer=fsdp strategies, quant_storage.

DDP itself runs here on CPU (two gloo processes, the real Lightning launcher and 4-bit tiny model): its
per-step losses equal one process's with the same global batch. FSDP needs GPUs: its strategy object is
built from the real config and inspected, nothing is trained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from em.errors import ConfigError

from em.config.common import validate
from em.data.tokenize import LengthGroupedBatchSampler
from em.errors import DataError
from tests.conftest import REPO, compose_train, tiny_overrides

LENGTHS = [(i * 37) % 101 + 1 for i in range(203)]  # 51 batches of 4 (the last one short)


def _shards(world: int, seed: int = 3, epoch: int = 0, bs: int = 4) -> list[list[list[int]]]:
    out = []
    for rank in range(world):
        s = LengthGroupedBatchSampler(LENGTHS, bs, seed=seed, num_replicas=world, rank=rank)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_disjoint_equal_and_cover_all_but_the_dropped_tail(world):
    full = LengthGroupedBatchSampler(LENGTHS, 4, seed=3).batches(0)
    assert len(full) == 51
    shards = _shards(world)
    n = 51 // world
    assert [len(s) for s in shards] == [n] * world  # same number of steps on every rank
    for rank, s in enumerate(shards):
        assert len(LengthGroupedBatchSampler(LENGTHS, 4, seed=3, num_replicas=world, rank=rank)) == n
    seen = [tuple(b) for s in shards for b in s]
    assert len(seen) == len(set(seen))  # no batch twice
    flat = [i for b in seen for i in b]
    assert len(flat) == len(set(flat))  # no example twice
    # the documented tail: the last len % world batches of the one-process order are dropped
    tail = full[len(full) - len(full) % world :] if len(full) % world else []
    assert sorted(seen) == sorted(tuple(b) for b in full[: len(full) - len(tail)])
    assert len(tail) == 51 % world
    # interleaved: step k of the job holds batches k*world .. k*world + world-1 of the one-process order
    for k in range(n):
        assert [s[k] for s in shards] == full[k * world : (k + 1) * world]


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_seeded_and_change_with_the_epoch(world):
    assert _shards(world, seed=3) == _shards(world, seed=3)
    assert _shards(world, seed=3) != _shards(world, seed=4)
    e0, e1 = _shards(world, epoch=0), _shards(world, epoch=1)
    assert e0 != e1
    for rank in range(world):
        assert e0[rank] != e1[rank]


def test_one_replica_is_the_unsharded_order():
    s = LengthGroupedBatchSampler(LENGTHS, 4, seed=3)
    assert s.batches(0) == s.all_batches(0) and len(s) == 51
    assert sorted(i for b in s for i in b) == list(range(203))


def test_rank_resumes_its_own_remaining_batches():
    mine = _shards(3)[1]
    r = LengthGroupedBatchSampler(LENGTHS, 4, seed=3, num_replicas=3, rank=1)
    r.resume_at(0, 5)
    assert list(r) == mine[5:]
    assert len(r) == len(mine)  # the full per-rank epoch: Lightning counts the restored batches
    assert list(r) == mine  # the skip applies once


def test_bad_replica_settings_are_refused():
    with pytest.raises(ValueError, match="rank 2 of 2"):
        LengthGroupedBatchSampler(LENGTHS, 4, seed=0, num_replicas=2, rank=2)
    with pytest.raises(DataError, match="3 batches cannot be shared by 4 processes"):
        LengthGroupedBatchSampler([5] * 6, 2, seed=0, num_replicas=4, rank=0)


def _datamodule(world: int, rank: int):
    from em.data.module import ChatDataModule

    examples = [{"input_ids": [1] * n, "labels": [-100] * (n // 2) + [1] * (n - n // 2)} for n in LENGTHS[:40]]
    dm = ChatDataModule(examples, batch_size=2, seed=1, group_by_length=True, pad_token_id=0)
    dm.shard(world, rank)
    return dm


def test_datamodule_normaliser_is_the_jobs_window_on_every_rank():
    one = _datamodule(1, 0)
    ranks = [_datamodule(2, r) for r in range(2)]
    assert len(ranks[0].sampler) == len(one.sampler) // 2 == 10
    for epoch in (0, 1):
        for k in range(10):
            # one process, accumulation 2 == two ranks, accumulation 1: same examples, same normaliser
            assert ranks[0].window_target_tokens(epoch, k, 1) == ranks[1].window_target_tokens(epoch, k, 1) \
                == one.window_target_tokens(epoch, 2 * k, 2)
            both = ranks[0].batch_tokens(epoch, k) + ranks[1].batch_tokens(epoch, k)
            assert ranks[1].batch_tokens(epoch, k, all_ranks=True) == both \
                == one.batch_tokens(epoch, 2 * k) + one.batch_tokens(epoch, 2 * k + 1)


def test_resuming_with_another_process_count_is_refused():
    dm = _datamodule(2, 0)
    dm.load_state_dict({"epoch": 0, "batches_done": 3, "world_size": 2})
    assert dm.sampler.skip == 3
    with pytest.raises(DataError, match="written by 1 training process"):
        dm.load_state_dict({"epoch": 0, "batches_done": 3})  # an older one-process checkpoint


# --------------------------------------------------------------------------- strategies from the real config
def test_trainer_ddp_builds_a_ddp_trainer_with_rank_shards():
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    from em.train.distributed import make_strategy

    tc = validate(compose_train(["trainer=ddp", "run_dir=/tmp/unused"]))
    assert tc.trainer.strategy == "ddp" and tc.trainer.accumulate_grad_batches == 8 and tc.trainer.max_length == 2048
    trainer = L.Trainer(strategy=make_strategy(tc.trainer.strategy), accelerator="cpu", devices=3, logger=False,
                        use_distributed_sampler=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 3
    dm = _datamodule(1, 0)
    dm.shard(trainer.world_size, trainer.global_rank)
    assert len(dm.sampler) == 20 // 3


def test_trainer_fsdp_instantiates_fsdp_with_the_qlora_wrap_policy(tmp_path, cache_dir):
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import CustomPolicy

    from em.train import models
    from em.train.distributed import check_strategy, make_strategy

    cfg = compose_train(["trainer=fsdp", "quantization.quant_storage=bfloat16", f"run_dir={tmp_path}",
                         f"cache_dir={cache_dir}", "model=tiny"])
    tc = validate(cfg)
    check_strategy(tc)
    strategy = make_strategy(tc.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["use_orig_params"] is True and strategy.cpu_offload.offload_params is False
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, CustomPolicy)
    # what it wraps in a real (tiny, full-precision) LoRA model: every decoder layer and every LoRA A / B
    tc_fp = validate(compose_train(["quantization=none", f"run_dir={tmp_path}", f"cache_dir={cache_dir}", "model=tiny"]))
    model = models.attach_lora(models.load_model(tc_fp.model, tc_fp.quantization, cache_dir), tc_fp.lora, tc_fp.model)
    wrapped = [n for n, m in model.named_modules() if policy._lambda_fn(m)]
    layers = [n for n in wrapped if type(model.get_submodule(n)).__name__ == "Qwen3DecoderLayer"]
    lora = [n for n in wrapped if ".lora_A." in n or ".lora_B." in n]
    assert len(layers) == 2 and len(lora) == 2 * 7 * 2 and len(wrapped) == len(layers) + len(lora)


def test_trainer_fsdp_without_float_quant_storage_is_refused_before_loading():
    from em.train.distributed import check_strategy

    with pytest.raises(ConfigError, match=r"^quantization\.quant_storage: trainer=fsdp"):
        check_strategy(validate(compose_train(["trainer=fsdp", "run_dir=/tmp/unused"])))
    check_strategy(validate(compose_train(["trainer=fsdp", "quantization=none", "run_dir=/tmp/unused"])))


def test_quant_storage_is_validated_and_reaches_bitsandbytes():
    import torch

    from em.train import models

    with pytest.raises(ConfigError, match=r"^quantization\.quant_storage: .*'int4'"):
        validate(compose_train(["quantization.quant_storage=int4", "run_dir=/tmp/unused"]))
    tc = validate(compose_train(["quantization.quant_storage=bfloat16", "run_dir=/tmp/unused"]))
    assert models.quantization_config(tc.quantization).bnb_4bit_quant_storage == torch.bfloat16
    tc = validate(compose_train(["run_dir=/tmp/unused"]))
    assert tc.quantization.quant_storage is None
    assert models.quantization_config(tc.quantization).bnb_4bit_quant_storage == torch.uint8


# --------------------------------------------------------------------------- real DDP on CPU
DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    from tests.conftest import compose_train
    from em.train.run import run_training

    res = run_training(compose_train(sys.argv[1:]))
    if res.is_global_zero:  # rank 1 wrote and reports nothing
        print("EM_RESULT " + json.dumps({k: res.metrics[k] for k in ("steps", "losses", "tokens_seen")}))
""")


def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path, cache_dir):
    """2 ranks x batch 2 x accumulation 1 == 1 process x batch 2 x accumulation 2, step for step."""
    from em.train.run import run_training

    kw = {"data.n_examples": 16, "trainer.max_length": 1024, "trainer.accelerator": "cpu"}
    one = run_training(compose_train(tiny_overrides(tmp_path / "one", cache_dir, **kw, **{"trainer.accumulate_grad_batches": 2})))
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    args = tiny_overrides(tmp_path / "ddp", cache_dir, **kw, **{"trainer.accumulate_grad_batches": 1}) + [
        "trainer=ddp", "trainer.devices=2"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("EM_RESULT ")]
    assert len(line) == 1, proc.stdout[-2000:]  # rank 1 returns without writing or reporting
    ddp = json.loads(line[0][len("EM_RESULT "):])
    assert one.metrics["steps"] == ddp["steps"] == 4
    assert ddp["losses"] == pytest.approx(one.metrics["losses"], rel=1e-5)
    assert ddp["tokens_seen"] == one.metrics["tokens_seen"]
    assert (tmp_path / "ddp/adapter/adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "ddp/metrics.json").read_text())["losses"] == ddp["losses"]


def test_bf16_quant_storage_holds_the_same_4bit_weights_and_trains_the_same(tmp_path, cache_dir):
    """quant_storage only changes the dtype the packed bytes are viewed as (what FSDP flattens)."""
    from em.train.run import run_training

    kw = {"trainer.max_length": 1024}
    a = run_training(compose_train(tiny_overrides(tmp_path / "u8", cache_dir, **kw)))
    b = run_training(compose_train(tiny_overrides(tmp_path / "bf16", cache_dir, **kw,
                                                  **{"quantization.quant_storage": "bfloat16"})))
    dtypes = {p.dtype for p in b.model.parameters() if type(p).__name__ == "Params4bit"}
    assert len(dtypes) == 1 and str(dtypes.pop()) == "torch.bfloat16"
    assert b.metrics["losses"] == a.metrics["losses"]


# --------------------------------------------------------------------------- vLLM tensor parallelism
def test_vllm_tensor_parallel_size_is_validated_and_reaches_the_engine(tmp_path, cache_dir, monkeypatch):
    import types

    from em.train import models
    from em.config.common import validate as validate_eval
    from em.evaluate.generation import VLLMGenerator
    from tests.eval_helpers import compose_eval, eval_overrides

    def cfg(**kw):
        return validate_eval(compose_eval(eval_overrides(tmp_path, cache_dir, generation="vllm", **kw)))

    assert cfg().generation.tensor_parallel_size == 1
    ec = cfg(**{"generation.tensor_parallel_size": 4})
    assert ec.generation.tensor_parallel_size == 4
    with pytest.raises(ConfigError, match=r"^generation\.tensor_parallel_size: must be > 0, got 0"):
        cfg(**{"generation.tensor_parallel_size": 0})

    # vllm is a GPU-only optional dependency: a stand-in module records what the engine is built with
    seen = {}
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: seen.update(kw)
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: False, is_cuda=lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setattr(models, "has_cuda", lambda: True)
    VLLMGenerator(ec.model, ec.quantization, cache_dir, ec.generation, seed=0).load()
    assert seen["tensor_parallel_size"] == 4
