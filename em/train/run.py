"""4-bit LoRA fine-tuning with PyTorch Lightning: `run_training(cfg)` is what train.py calls.

A run is three steps, each callable on its own (``bench/train_throughput.py`` calls them one by one):

1. :func:`em.data.module.prepare_data` -- conversations -> tokenised examples in a seeded data module;
2. :func:`em.train.models.build_model` -- base model, 4-bit quantisation, fresh LoRA adapters;
3. :func:`fit` -- the Lightning Trainer with checkpoints, callbacks and loggers, then the adapter and
   ``metrics.json`` written into the run directory.

What a step computes (the TRL-equivalent token-weighted loss, the step records) is the LightningModule
:class:`em.train.lora_module.LoRAFineTune`; this module drives it.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import sys
import time
from dataclasses import is_dataclass
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from em.adapters.card import examples_sha256, finalize_adapter
from em.adapters.lineage import check_compatible
from em.adapters.check import save_adapter
from em.config.common import validate
from em.data.module import TrainingData, prepare_data
from em.data.renders import write_renders
from em.dynamics import run as fit_hooks
from em.quiet import bars_on
from em.runtime import atomic_replace_dir, atomic_write_json, atomic_write_text, is_wandb_logger
from em.config.common import plain as as_plain
from em.config.train import LIGHTNING_ARGS
from em.tracking import flatten, log_adapter_artifact, scrub
from em.train import models, stopping
from em.train.checkpoints import AtomicCheckpointIO, resume_checkpoint
from em.train.distributed import adapter_state_dict, check_strategy, make_strategy
from em.train.lora_module import LoRAFineTune

if TYPE_CHECKING:
    from em.config.train import TrainConfig

log = logging.getLogger("em.train.run")


def auto_adamw(params, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW for ``params``: bitsandbytes' 8-bit paged AdamW on CUDA (it saves optimizer memory), torch's
    AdamW elsewhere. The ``_target_`` of ``optimizer=auto`` (a ``_partial_`` node: Hydra passes the rest)."""
    if torch.cuda.is_available():
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


# --------------------------------------------------------------------------- callbacks
class AdapterSnapshots(L.Callback):
    """Writes the LoRA adapter when training reaches given fractions of epochs (trainer.adapter_snapshots).

    Args:
        epochs: epochs (fractions allowed) after which to snapshot; ``epoch_<e>`` directories.
        grad_accum: micro-batches per optimizer step (to turn epochs into optimizer steps).
        dirpath: the directory the snapshots go into (``<run_dir>/snapshots``).
        tokenizer: saved beside each adapter.
        source: the base checkpoint (``em.train.models.model_dir``): the snapshots are keyed for the class it
            declares (:func:`save_adapter`).

    A resumed run keeps the snapshots it already wrote; each appears atomically (temp dir, then rename).
    Rank 0 alone writes (the LoRA weights are the same on every rank under DDP).
    """

    def __init__(self, epochs: list[float], grad_accum: int, dirpath: Path, tokenizer, source: Optional[str] = None):
        self.epochs, self.source = epochs, source
        self.grad_accum = grad_accum
        self.dirpath = dirpath
        self.tokenizer = tokenizer
        self.at_steps: dict[int, list[Path]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        """Turn the epochs into optimizer steps of this rank's shard (known once the data is sharded)."""
        per_epoch = math.ceil(len(trainer.datamodule.sampler) / self.grad_accum)
        self.at_steps = {}
        for e in self.epochs:
            self.at_steps.setdefault(max(1, math.ceil(per_epoch * e)), []).append(self.dirpath / f"epoch_{e:g}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Write the snapshots due at this optimizer step that do not exist yet."""
        if not trainer.is_global_zero:
            return
        for path in self.at_steps.get(trainer.global_step, []):
            if path.exists():
                continue
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
            save_adapter(pl_module.model, tmp, self.source)
            self.tokenizer.save_pretrained(tmp)
            atomic_replace_dir(tmp, path)
            log.info("adapter snapshot at step %d: %s", trainer.global_step, path)


# --------------------------------------------------------------------------- fitting
def precision_for(name: str) -> str:
    """Lightning's ``precision`` for ``trainer.precision``: "auto" is bf16 autocast on a bf16 GPU, else fp32."""
    if name != "auto":
        return name
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def peak_memory_bytes() -> int:
    """Peak memory of this process in bytes: CUDA ``max_memory_allocated`` on a GPU, peak RSS on CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


@dataclass
class TrainResult:
    """What :func:`fit` returns: the run directory, its ``metrics.json`` content and the trained model."""

    run_dir: Path
    metrics: dict[str, Any]
    model: Any  # the trained peft model, still in memory (tests, the one-job sweep pipeline)
    tokenizer: Any
    # False in the other processes of a multi-GPU run (trainer=ddp / fsdp): they wrote nothing, metrics is {}
    is_global_zero: bool = True


def fit(tc: TrainConfig, data: TrainingData, model, *, callbacks: Sequence[L.Callback] = ()) -> TrainResult:
    """Train ``model`` on ``data`` with a Lightning Trainer, then write the adapter and ``metrics.json``.

    Args:
        tc: the validated config (``optimizer``, ``trainer.callbacks`` and ``logger`` are instantiated from
            it; it is logged, secrets scrubbed, as the loggers' hyperparameters).
        data: from :func:`em.data.module.prepare_data`; its data module is sharded here, per process.
        model: from :func:`em.train.models.build_model`.
        callbacks: extra Lightning callbacks, after those of ``trainer.callbacks``.

    Resumes from ``<run_dir>/checkpoints/last.ckpt`` when ``resume`` and it exists (a torn one is moved aside
    and ``last.prev.ckpt`` is used: :mod:`em.train.checkpoints`). Nothing earlier in the
    run directory is replaced before training succeeded. Under DDP / FSDP every process calls this; rank
    0 alone writes, the others return ``metrics={}``.

    Raises:
        KeyboardInterrupt: training was interrupted (the last checkpoint is kept; run again to resume):
            :class:`em.train.stopping.Interrupted` (signal, step) for SIGTERM / SIGINT.
        UnsafeCheckpoint: the checkpoint holds objects beyond tensors and plain types (:mod:`em.train.checkpoints`).
        DataError: the checkpoint was written by another number of processes, or too few batches for them.
    """
    run_dir = Path(tc.run_dir)
    t, dm = tc.trainer, data.datamodule
    module = LoRAFineTune(model, hydra.utils.instantiate(tc.optimizer, _convert_="all"),
                          warmup_steps=t.warmup_steps, lr_scheduler=t.lr_scheduler, grad_accum=t.accumulate_grad_batches,
                          kl_term=fit_hooks.kl_term(tc, data.tokenizer))  # trainer.kl (em.dynamics)
    max_steps = t.max_steps
    if max_steps < 0 and t.max_epochs != int(t.max_epochs):  # fractional epochs: stop after that share of steps
        max_steps = math.ceil(math.ceil(len(dm.sampler) / t.accumulate_grad_batches) * t.max_epochs)
    ckpt_dir = run_dir / "checkpoints"
    all_callbacks = [L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=t.checkpoint_every_n_steps,
    )] + [hydra.utils.instantiate(c) for c in t.callbacks] + list(callbacks)
    if t.adapter_snapshots:
        (run_dir / "snapshots").mkdir(parents=True, exist_ok=True)
        all_callbacks.append(AdapterSnapshots(list(t.adapter_snapshots), t.accumulate_grad_batches, run_dir / "snapshots",
                                              data.tokenizer, models.model_dir(tc.model, tc.cache_dir)))
    all_callbacks += fit_hooks.callbacks(tc, run_dir, data.tokenizer, models.model_dir(tc.model, tc.cache_dir))
    loggers, wandb_on, log_adapter = build_loggers(tc.logger, run_dir)

    # the node's Lightning arguments under their own names (em.config.train.LIGHTNING_ARGS), four converted:
    # fractional max_epochs run as whole epochs cut by max_steps, "auto" precision, a strategy node, callbacks
    own = {k: getattr(t, k) for k in LIGHTNING_ARGS} | {
        "max_epochs": math.ceil(t.max_epochs), "max_steps": max_steps, "precision": precision_for(t.precision),
        "strategy": make_strategy(t.strategy), "callbacks": all_callbacks}
    trainer = L.Trainer(
        **own, logger=loggers or False, enable_checkpointing=True, default_root_dir=str(run_dir),
        num_sanity_val_steps=0, enable_model_summary=False,
        enable_progress_bar=bars_on(tc.progress),  # a log file gets the per-step log lines instead
        use_distributed_sampler=False,
        # temp file + rename, previous kept, weights_only reads; on SLURM Lightning requeues a preempted job
        plugins=[AtomicCheckpointIO(), *stopping.slurm_plugins()],
        **dict(t.extra),
    )
    # One process per device (DDP / FSDP): each trains on its rank's share of every epoch's batches.
    dm.shard(trainer.world_size, trainer.global_rank)
    if trainer.world_size > 1 and max_steps != t.max_steps:  # fractional epochs of the per-rank epoch
        trainer.fit_loop.max_steps = math.ceil(math.ceil(len(dm.sampler) / t.accumulate_grad_batches) * t.max_epochs)
    for lg in loggers:

        lg.log_hyperparams(flatten(scrub(as_plain(tc))))

    # the newest checkpoint that loads (a torn one is moved aside with a message: the previous one is used)
    resume_from, resume_step = resume_checkpoint(ckpt_dir) if tc.resume else (None, 0)
    ckpt_path = str(resume_from) if resume_from else None
    if ckpt_path:
        log.info("resuming from %s (step %d)", ckpt_path, resume_step)
    # from_pretrained leaves modules in eval mode and Lightning keeps the mode it finds: training mode
    # matters here (gradient checkpointing and dropout only act in it; bitsandbytes repacks eval weights).
    module.model.train()
    t0 = time.perf_counter()
    # SIGTERM / SIGINT: stop after the batch, raise stopping.Interrupted; trainer.ablate_direction (CAFT): only while training
    with stopping.training(trainer), fit_hooks.training_context(module.model, tc):
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    wall = time.perf_counter() - t0
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted; resume by running the same command again")

    lora_state = adapter_state_dict(trainer, module)  # FSDP: gathered to rank 0 (every rank takes part)
    if not trainer.is_global_zero:  # DDP / FSDP: rank 0 alone writes the adapter and metrics
        return TrainResult(run_dir=run_dir, metrics={}, model=module.model, tokenizer=data.tokenizer,
                           is_global_zero=False)
    # Only now does anything replace earlier outputs: a crash above leaves the last adapter intact.
    adapter_tmp = run_dir / "adapter.tmp"
    shutil.rmtree(adapter_tmp, ignore_errors=True)  # left by a killed run
    source = models.model_dir(tc.model, tc.cache_dir)
    layout = save_adapter(module.model, adapter_tmp, source,
                          **({"state_dict": lora_state} if lora_state is not None else {}))
    data.tokenizer.save_pretrained(adapter_tmp)

    renders = write_renders(run_dir / "training_examples.md", data.tokenizer, data.examples, data.stats, tc.model)
    shutil.copyfile(renders, adapter_tmp / renders.name)

    finalize_adapter(adapter_tmp, tc, source=source, key_layout=layout, steps=trainer.global_step,
                     final_loss=module.history[-1]["train/loss"] if module.history else None,
                     data_sha256=tc.data.sha256 or examples_sha256(data.examples))
    atomic_replace_dir(adapter_tmp, run_dir / "adapter")

    metrics = _run_metrics(tc, data, module, steps=trainer.global_step, wall_s=wall)
    fit_hooks.after_fit(tc, run_dir, loggers, metrics, trainer.callbacks)  # step snapshots' geometry, probe (em.dynamics)
    atomic_write_json(run_dir / "metrics.json", metrics)
    for lg in loggers:
        lg.log_metrics({"train/final_loss": metrics["final_loss"] or float("nan")}, step=trainer.global_step)
        if log_adapter and is_wandb_logger_instance(lg):

            log_adapter_artifact(lg.experiment, run_dir / "adapter", metadata={"final_loss": metrics["final_loss"]})
        lg.finalize("success")
    if wandb_on:
        import wandb

        wandb.finish()
    print(f"run dir: {run_dir}  final loss {metrics['final_loss']:.4f}  "
          f"{metrics['tokens_per_s']:.0f} tokens/s  adapter: {run_dir / 'adapter'}")
    return TrainResult(run_dir=run_dir, metrics=metrics, model=module.model, tokenizer=data.tokenizer)


def build_loggers(node, run_dir: Path) -> tuple[list, bool, bool]:
    """The Lightning loggers of the ``logger`` node: ``(loggers, wandb_on, log_adapter)``.

    ``logger=wandb`` is the node itself (its ``_target_``), ``logger=csv`` its ``csv`` sub-node,
    ``logger=[wandb,csv]`` both; null (``logger=none``): no logger. W&B writes under ``run_dir``.
    """
    plain = as_plain(node) if node else None
    if not plain:
        return [], False, False
    csv = plain.pop("csv", None)
    loggers, wandb_on, log_adapter = [], is_wandb_logger(plain), bool(plain.pop("log_adapter", False))
    if plain.get("_target_"):
        if wandb_on:
            plain.setdefault("save_dir", str(run_dir))
        loggers.append(hydra.utils.instantiate(plain))
    if csv:
        loggers.append(hydra.utils.instantiate(csv))
    return loggers, wandb_on, log_adapter and wandb_on


def is_wandb_logger_instance(logger) -> bool:
    """Is this built Lightning logger the W&B one?"""
    return type(logger).__name__ == "WandbLogger"


def _run_metrics(tc: TrainConfig, data: TrainingData, module: LoRAFineTune, *, steps: int, wall_s: float
                 ) -> dict[str, Any]:
    """The content of ``metrics.json`` (the keys the sweep, tests and the bench read)."""
    hist, stats, run_dir = module.history, data.stats, Path(tc.run_dir)
    return {
        "model": tc.model.name,
        "data": tc.data.name,
        "seed": tc.seed,
        "final_loss": hist[-1]["train/loss"] if hist else None,
        "steps": steps,
        "resumed_from_step": module.resumed_from_step,
        "adapter_snapshots": {f"{e:g}": str(run_dir / "snapshots" / f"epoch_{e:g}") for e in tc.trainer.adapter_snapshots},
        "examples": stats.n_kept,
        "examples_truncated": stats.n_truncated,
        "examples_dropped": stats.n_dropped,
        "examples_with_injected_system_prompt": getattr(stats, "n_injected_system", 0),
        "default_system_prompt": tc.model.default_system_prompt,
        "tokens_seen": module.tokens_seen,
        "assistant_tokens_per_epoch": stats.n_target_tokens,
        "tokens_per_s": (hist[-1]["train/tokens_per_s"] if hist else None),
        "wall_time_s": wall_s,
        "peak_memory_bytes": peak_memory_bytes(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "losses": [h["train/loss"] for h in hist],
        "history": hist,
    }


def run_training(cfg: TrainConfig | DictConfig) -> Optional[TrainResult]:
    """Fine-tune per ``cfg`` (the validated ``train`` config; a composed one is validated here, once, for a
    caller that composed it itself): prepare the data, build the model, fit.

    Writes ``<run_dir>/resolved_config.yaml`` first, then (see :func:`fit`) ``adapter/``, ``metrics.json``,
    ``checkpoints/`` and any ``snapshots/``. Returns None for ``data=base``, which trains nothing (the
    evaluation uses the base model).

    Raises:
        ConfigError: any config check (before a model or dataset is touched), or a strategy /
            quantisation combination that cannot work (``em.train.distributed.check_strategy``).
        DataError, ModelLoadError: see :func:`em.data.module.prepare_data` and :func:`em.train.models.build_model`.
        KeyboardInterrupt: training was interrupted (see :func:`fit`).
    """
    # train.py's job (em.jobs.run.run_job) passes the config it validated; a composed config from another caller
    # (tests, bench/) is validated here: every config check, before any model or dataset is touched
    tc: TrainConfig = cfg if is_dataclass(cfg) else validate(cfg)
    check_strategy(tc)
    if tc.trainer.init_adapter:  # before any model is loaded: the parent exists and has this rank / alpha

        check_compatible(tc.trainer.init_adapter, tc.lora)
    if tc.data.source == "none":
        print(f"data={tc.data.name}: no fine-tuning; evaluation uses the base model {tc.model.name}.")
        return None
    atomic_write_text(Path(tc.run_dir) / "resolved_config.yaml", OmegaConf.to_yaml(as_plain(tc)))
    data = prepare_data(tc)
    model = models.build_model(tc)
    return fit(tc, data, model)
