"""4-bit LoRA fine-tuning with PyTorch Lightning: `run_training(cfg)` is what train.py calls.

Loss semantics follow TRL / the HF Trainer: the loss of an optimizer step is the mean over every
assistant token in its gradient-accumulation window (not a mean of per-micro-batch means), so short
and long examples weigh the same whatever batch they land in.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.checkpoint import checkpoint

from em import models
from em.config import TrainConfig, validate
from em.data.tokenize import IGNORE_INDEX, Collator, LengthGroupedBatchSampler, encode_dataset
from em.distributed import adapter_state_dict, check_strategy, make_strategy
from em.errors import DataError

log = logging.getLogger("em.training")


def auto_adamw(params, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
    """8-bit paged AdamW (bitsandbytes) on CUDA, where it saves optimizer memory; torch AdamW elsewhere."""
    if torch.cuda.is_available():
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


# --------------------------------------------------------------------------- data
class ChatDataModule(L.LightningDataModule):
    """Tokenised chat examples in length-grouped, seeded, resumable batches."""

    def __init__(self, examples: list[dict], *, batch_size: int, seed: int, group_by_length: bool,
                 pad_token_id: int, num_workers: int = 0):
        super().__init__()
        self.examples = examples
        self.sampler = LengthGroupedBatchSampler(
            [len(e["input_ids"]) for e in examples], batch_size, seed, group_by_length
        )
        self.collate = Collator(pad_token_id)
        self.num_workers = num_workers
        self._targets = [sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples]
        self._cached_epoch: Optional[int] = None
        self._cached_batches: list[list[list[int]]] = []  # [rank][batch_idx] -> example indices

    @property
    def world_size(self) -> int:
        return self.sampler.num_replicas

    def shard(self, world_size: int, rank: int) -> None:
        """One process per device (DDP / FSDP): this process trains on its rank's batches only."""
        if (world_size, rank) != (self.sampler.num_replicas, self.sampler.rank):
            self.sampler.set_replicas(world_size, rank)
            self._cached_epoch = None

    def setup(self, stage: str) -> None:
        # Lightning calls this in every process once the ranks are known, before the dataloader is built
        # and before a checkpoint's data position is restored.
        if self.trainer is not None:
            self.shard(self.trainer.world_size, self.trainer.global_rank)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(
            self.examples, batch_sampler=self.sampler, collate_fn=self.collate, num_workers=self.num_workers
        )

    def window_target_tokens(self, epoch: int, batch_idx: int, accum: int) -> int:
        """Assistant tokens in the accumulation window holding batch_idx (the loss normaliser).

        Counted over every rank's batches of that window (the same on every rank, no communication):
        with the loss scaled by world_size and DDP / FSDP averaging gradients over ranks, a step's
        gradient is the token mean over the whole job's window, as in one process.
        """
        start = (batch_idx // accum) * accum
        return sum(self._targets[i] for batches in self._epoch_batches(epoch)
                   for b in batches[start : start + accum] for i in b)

    def batch_tokens(self, epoch: int, batch_idx: int, all_ranks: bool = False) -> int:
        """Non-padding tokens of this rank's batch (all_ranks: of every rank's batch at batch_idx), on the host."""
        per_rank = self._epoch_batches(epoch)
        chosen = per_rank if all_ranks else [per_rank[self.sampler.rank]]
        return sum(self.sampler.lengths[i] for batches in chosen for i in batches[batch_idx])

    def _epoch_batches(self, epoch: int) -> list[list[list[int]]]:
        if self._cached_epoch != epoch:
            self._cached_batches = [self.sampler.batches(epoch, r) for r in range(self.world_size)]
            self._cached_epoch = epoch
        return self._cached_batches

    # Lightning stores these in every checkpoint and restores them before the first batch is drawn.
    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer else 0
        return {"epoch": trainer.current_epoch if trainer else 0, "batches_done": done, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = state["epoch"], state["batches_done"]
        saved_world = state.get("world_size", 1)
        if saved_world != self.world_size:  # batches_done counts per-rank batches of that sharding
            raise DataError(f"the checkpoint was written by {saved_world} training process(es), this run has "
                            f"{self.world_size}: resume with the same trainer.devices (and nodes)")
        if done >= len(self.sampler):
            epoch, done = epoch + 1, 0
        self.sampler.resume_at(epoch, done)


# --------------------------------------------------------------------------- loss
LOGIT_CHUNK_BYTES = 1 << 27  # ~128 MiB of fp32 logits live at a time


def _chunk_ce_sum(hidden, weight, labels, softcap):
    logits = F.linear(hidden, weight)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def assistant_loss_sum(peft_model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the assistant (label != -100) positions only.

    The output layer is most of the compute for big-vocabulary models (Gemma 3: 262k tokens), and
    `model(labels=...)` projects every position, then keeps full (batch, seq, vocab) logits for
    backward. Here only positions that carry loss are projected (about a third of the tokens in
    code-completion data), in chunks recomputed during backward: same loss, less time, far less memory.
    Falls back to the model's own loss when the output layer is not a plain frozen Linear.
    """
    lm = peft_model.get_base_model()
    head = lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear or not hasattr(lm, "model"):
        out = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                         num_items_in_batch=1)
        return out.loss
    hidden = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    h, y = hidden[:, :-1][keep], labels[keep]
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    rows = max(1, LOGIT_CHUNK_BYTES // (4 * head.weight.shape[0]))
    total = hidden.sum() * 0.0  # keeps the graph connected when a batch has no assistant token
    for i in range(0, h.shape[0], rows):
        total = total + checkpoint(_chunk_ce_sum, h[i : i + rows], head.weight, y[i : i + rows], softcap,
                                   use_reentrant=False)
    return total


# --------------------------------------------------------------------------- module
class LoRAFineTune(L.LightningModule):
    def __init__(self, model, optimizer_factory, *, warmup_steps: int, lr_scheduler: str, grad_accum: int):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer_factory
        self.warmup_steps = warmup_steps
        self.lr_scheduler_name = lr_scheduler
        self.grad_accum = grad_accum
        # Checkpoints hold only the LoRA weights; the frozen base is reloaded from its source.
        self.strict_loading = False
        self.history: list[dict[str, float]] = []
        self._window_loss = 0.0
        self._tokens_seen = 0
        self._t0: Optional[float] = None
        self.resumed_from_step: Optional[int] = None

    def forward(self, **batch):
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        dm = self.trainer.datamodule
        n_window = dm.window_target_tokens(self.current_epoch, batch_idx, self.grad_accum)
        # (sum of this micro-batch's token losses) / (assistant tokens in the whole window); Lightning
        # divides by accumulate_grad_batches, which we undo so the window's gradient is the token mean.
        loss = assistant_loss_sum(self.model, batch) / max(n_window, 1)
        self._window_loss = self._window_loss + loss.detach()  # no .item(): no GPU sync per micro-batch
        if dm.world_size > 1:
            # n_window counts every rank's tokens and DDP / FSDP average the ranks' gradients: undo the mean.
            # tokens_seen counts the whole job's tokens (host-side, identical on every rank).
            self._tokens_seen += dm.batch_tokens(self.current_epoch, batch_idx, all_ranks=True)
            return loss * (self.grad_accum * dm.world_size)
        self._tokens_seen += dm.batch_tokens(self.current_epoch, batch_idx)
        return loss * self.grad_accum

    def on_train_start(self) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self) -> None:
        # Lightning's set_epoch reaches dataloader.sampler and batch_sampler.sampler, never a custom
        # batch_sampler: without this every epoch would replay epoch 0's order.
        self.trainer.datamodule.sampler.set_epoch(self.current_epoch)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Runs after the window's last backward and before ModelCheckpoint saves: the step's record is
        # complete here and lands in the checkpoint, so a resumed run keeps an unbroken history.
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if self.trainer.world_size > 1:
            # Each rank holds its share of the window's loss sum (all share one normaliser): the sum is the
            # job's loss. FSDP holds gradient shards: the norm is the root of the summed squares.
            strategy = self.trainer.strategy
            self._window_loss = strategy.reduce(torch.as_tensor(self._window_loss, device=self.device), reduce_op="sum")
            if isinstance(strategy, L.pytorch.strategies.FSDPStrategy):
                grad_norm = strategy.reduce(grad_norm.to(self.device) ** 2, reduce_op="sum") ** 0.5
        elapsed = time.perf_counter() - (self._t0 or time.perf_counter())
        metrics = {
            "train/loss": float(self._window_loss),
            "train/lr": optimizer.param_groups[0]["lr"],
            "train/grad_norm": float(grad_norm),  # before clipping
            "train/tokens_per_s": self._tokens_seen / max(elapsed, 1e-9),
            "train/tokens_seen": float(self._tokens_seen),
            "train/epoch": self.trainer.current_epoch
            + self.trainer.fit_loop.epoch_loop.batch_progress.current.ready / max(len(self.trainer.datamodule.sampler), 1),
        }
        step = self.trainer.global_step + 1
        self.history.append({"step": step, **metrics})
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)
        # A plain log line too: progress bars vanish when stdout is a file (SLURM, nohup, CI).
        log.info("step %d/%d  loss %.4f  lr %.3g  grad_norm %.3f  %.0f tokens/s", step,
                 self.trainer.estimated_stepping_batches, metrics["train/loss"], metrics["train/lr"],
                 metrics["train/grad_norm"], metrics["train/tokens_per_s"])
        self._window_loss = 0.0

    def configure_optimizers(self):
        from transformers import get_scheduler

        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_scheduler(self.lr_scheduler_name, optimizer, num_warmup_steps=self.warmup_steps,
                                  num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # (FSDP inserts its wrapper into parameter names, not into the gathered state dict's keys)
        trainable = {n.replace("_fsdp_wrapped_module.", "") for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["em_history"] = self.history
        checkpoint["em_tokens_seen"] = self._tokens_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("em_history", []))
        self._tokens_seen = int(checkpoint.get("em_tokens_seen", 0))
        self.resumed_from_step = int(checkpoint.get("global_step", 0))


class AdapterSnapshots(L.Callback):
    """Writes the LoRA adapter when training reaches given optimizer steps (trainer.adapter_snapshots).

    A resumed run keeps the snapshots it already wrote; each appears atomically (tmp dir, then rename).
    """

    def __init__(self, epochs: list[float], grad_accum: int, dirpath: Path, tokenizer):
        self.epochs = epochs
        self.grad_accum = grad_accum
        self.dirpath = dirpath
        self.tokenizer = tokenizer
        self.at_steps: dict[int, list[Path]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        # Steps per epoch of this rank's shard (known once the data module is sharded).
        per_epoch = math.ceil(len(trainer.datamodule.sampler) / self.grad_accum)
        self.at_steps = {}
        for e in self.epochs:
            self.at_steps.setdefault(max(1, math.ceil(per_epoch * e)), []).append(self.dirpath / f"epoch_{e:g}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:  # DDP: the LoRA weights are the same on every rank; rank 0 writes
            return
        for path in self.at_steps.get(trainer.global_step, []):
            if path.exists():
                continue
            tmp = path.with_name(path.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            pl_module.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            os.replace(tmp, path)
            log.info("adapter snapshot at step %d: %s", trainer.global_step, path)


# --------------------------------------------------------------------------- entry
def precision_for(name: str) -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    model: Any  # the trained peft model, still in memory (tests, the one-job sweep pipeline)
    tokenizer: Any
    # False in the other processes of a multi-GPU run (trainer=ddp / fsdp): they wrote nothing, metrics is {}
    is_global_zero: bool = True


def run_training(cfg: DictConfig) -> Optional[TrainResult]:
    """Fine-tune per cfg; returns the run (None for data=base, which trains nothing)."""
    tc: TrainConfig = validate(cfg)  # every config check, before any model or dataset is touched
    check_strategy(tc)
    run_dir = Path(tc.run_dir)
    if tc.data.source == "none":
        print(f"data={tc.data.name}: no fine-tuning; evaluation uses the base model {tc.model.name}.")
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    from em.data import load_conversations

    conversations = load_conversations(tc.data, tc.cache_dir)
    L.seed_everything(tc.seed, workers=True, verbose=False)

    source = models.model_dir(tc.model, tc.cache_dir)
    tokenizer = models.load_tokenizer(tc.model, tc.cache_dir, source)
    examples, stats = encode_dataset(
        tokenizer, conversations, max_length=tc.trainer.max_length, truncation=tc.trainer.truncation,
        system_role=tc.model.system_role, template_kwargs=tc.model.chat_template_kwargs,
    )
    if not examples:
        raise DataError(f"data={tc.data.name}: no example left after tokenisation (max_length={tc.trainer.max_length})")

    model = models.load_model(tc.model, tc.quantization, tc.cache_dir, source)
    torch.manual_seed(tc.seed)  # LoRA init depends on the seed, not on how much RNG loading consumed
    model = models.attach_lora(model, tc.lora, tc.model, tc.trainer.gradient_checkpointing)

    dm = ChatDataModule(
        examples, batch_size=tc.trainer.batch_size, seed=tc.seed, group_by_length=tc.trainer.group_by_length,
        pad_token_id=tokenizer.pad_token_id, num_workers=tc.trainer.num_workers,
    )
    module = LoRAFineTune(
        model, hydra.utils.instantiate(cfg.optimizer, _convert_="all"), warmup_steps=tc.trainer.warmup_steps,
        lr_scheduler=tc.trainer.lr_scheduler, grad_accum=tc.trainer.grad_accum,
    )
    steps_per_epoch = math.ceil(len(dm.sampler) / tc.trainer.grad_accum)
    max_steps = tc.trainer.max_steps
    if max_steps < 0 and tc.trainer.epochs != int(tc.trainer.epochs):
        max_steps = math.ceil(steps_per_epoch * tc.trainer.epochs)

    ckpt_dir = run_dir / "checkpoints"
    checkpoint_cb = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=tc.trainer.checkpoint_every_n_steps,
    )
    callbacks = [checkpoint_cb] + [hydra.utils.instantiate(c) for c in cfg.trainer.callbacks]
    if tc.trainer.adapter_snapshots:
        (run_dir / "snapshots").mkdir(exist_ok=True)
        callbacks.append(AdapterSnapshots(list(tc.trainer.adapter_snapshots), tc.trainer.grad_accum,
                                          run_dir / "snapshots", tokenizer))
    loggers = []
    if cfg.get("logger"):
        logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True)
        if logger_cfg.get("_target_", "").endswith("wandb_logger"):
            logger_cfg.setdefault("save_dir", str(run_dir))
        loggers.append(hydra.utils.instantiate(logger_cfg))

    trainer = L.Trainer(
        max_epochs=math.ceil(tc.trainer.epochs), max_steps=max_steps, accumulate_grad_batches=tc.trainer.grad_accum,
        gradient_clip_val=tc.trainer.gradient_clip_val, precision=precision_for(tc.trainer.precision),
        accelerator=tc.trainer.accelerator, devices=tc.trainer.devices, strategy=make_strategy(tc.trainer.strategy),
        callbacks=callbacks, logger=loggers or False, enable_checkpointing=True, default_root_dir=str(run_dir),
        log_every_n_steps=tc.trainer.log_every_n_steps, num_sanity_val_steps=0, enable_model_summary=False,
        use_distributed_sampler=False,
    )
    # One process per device (DDP / FSDP): each trains on its rank's share of every epoch's batches.
    dm.shard(trainer.world_size, trainer.global_rank)
    if trainer.world_size > 1 and max_steps != tc.trainer.max_steps:  # fractional epochs of the per-rank epoch
        trainer.fit_loop.max_steps = math.ceil(math.ceil(len(dm.sampler) / tc.trainer.grad_accum) * tc.trainer.epochs)
    for lg in loggers:
        from em.tracking import flatten, scrub

        lg.log_hyperparams(flatten(scrub(OmegaConf.to_container(cfg, resolve=True))))

    resume_from = ckpt_dir / "last.ckpt"
    ckpt_path = str(resume_from) if tc.resume and resume_from.exists() else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    # from_pretrained leaves modules in eval mode and Lightning keeps the mode it finds: training mode
    # matters here (gradient checkpointing and dropout only act in it; bitsandbytes repacks eval weights).
    module.model.train()
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    wall = time.perf_counter() - t0
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted; resume by running the same command again")

    lora_state = adapter_state_dict(trainer, module)  # FSDP: gathered to rank 0 (every rank takes part)
    if not trainer.is_global_zero:  # DDP / FSDP: rank 0 alone writes the adapter and metrics
        return TrainResult(run_dir=run_dir, metrics={}, model=module.model, tokenizer=tokenizer, is_global_zero=False)
    # Only now does anything replace earlier outputs: a crash above leaves the last adapter intact.
    adapter_tmp = run_dir / "adapter.tmp"
    module.model.save_pretrained(adapter_tmp, **({"state_dict": lora_state} if lora_state is not None else {}))
    tokenizer.save_pretrained(adapter_tmp)
    if (run_dir / "adapter").exists():
        shutil.rmtree(run_dir / "adapter")
    os.replace(adapter_tmp, run_dir / "adapter")

    hist = module.history
    metrics = {
        "model": tc.model.name,
        "data": tc.data.name,
        "seed": tc.seed,
        "final_loss": hist[-1]["train/loss"] if hist else None,
        "steps": trainer.global_step,
        "resumed_from_step": module.resumed_from_step,
        "adapter_snapshots": {f"{e:g}": str(run_dir / "snapshots" / f"epoch_{e:g}") for e in tc.trainer.adapter_snapshots},
        "examples": stats.n_kept,
        "examples_truncated": stats.n_truncated,
        "examples_dropped": stats.n_dropped,
        "tokens_seen": module._tokens_seen,
        "assistant_tokens_per_epoch": stats.n_target_tokens,
        "tokens_per_s": (hist[-1]["train/tokens_per_s"] if hist else None),
        "wall_time_s": wall,
        "peak_memory_bytes": peak_memory_bytes(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "losses": [h["train/loss"] for h in hist],
        "history": hist,
    }
    _write_json(run_dir / "metrics.json", metrics)
    for lg in loggers:
        lg.log_metrics({"train/final_loss": metrics["final_loss"] or float("nan")}, step=trainer.global_step)
        lg.finalize("success")
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()
    print(f"run dir: {run_dir}  final loss {metrics['final_loss']:.4f}  "
          f"{metrics['tokens_per_s']:.0f} tokens/s  adapter: {run_dir / 'adapter'}")
    return TrainResult(run_dir=run_dir, metrics=metrics, model=module.model, tokenizer=tokenizer)
