"""What one LoRA fine-tuning step computes: the assistant-only loss and the Lightning module around it.

Loss semantics follow TRL's ``SFTTrainer`` / the HF ``Trainer`` with ``num_items_in_batch`` (transformers'
``ForCausalLMLoss``: a ``reduction="sum"`` cross-entropy divided by the target tokens of the whole
gradient-accumulation window): the loss of an optimizer step is the mean over every assistant token in
its window, not a mean of per-micro-batch means, so short and long examples weigh the same whatever
batch they land in. ``em.train.run.fit`` drives this module with a Lightning Trainer (the split of
lightning-hydra-template: the LightningModule in its own file, the Trainer, callbacks and loggers in
the training script).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from em.data.tokenize import IGNORE_INDEX

log = logging.getLogger("em.train.run")

# --------------------------------------------------------------------------- loss
LOGIT_CHUNK_BYTES = 1 << 27  # ~128 MiB of fp32 logits live at a time


def _chunk_ce_sum(hidden, weight, labels, softcap):
    logits = F.linear(hidden, weight)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def assistant_loss_sum(peft_model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the assistant positions (label != -100) of one micro-batch.

    Args:
        peft_model: the ``PeftModel`` being trained (a transformers causal LM underneath).
        batch: the :class:`~em.data.tokenize.Collator`'s ``input_ids``, ``attention_mask`` and ``labels``,
            each a ``[batch, seq]`` long tensor; position t's logits predict ``labels[:, t + 1]``.

    Returns a 0-dim fp32 tensor: the **sum** over the batch's assistant tokens (a batch without one gives
    0, still connected to the graph). The caller divides by the assistant tokens of the whole
    accumulation window (``ChatDataModule.window_target_tokens``), which is what TRL / the HF Trainer do
    with ``num_items_in_batch``.

    The output layer is most of the compute for big-vocabulary models (Gemma 3: 262k tokens), and
    ``model(labels=...)`` projects every position, then keeps full ``[batch, seq, vocab]`` logits for
    backward. Here only positions that carry loss are projected (about a third of the tokens in
    code-completion data), in chunks of ``LOGIT_CHUNK_BYTES`` recomputed during backward: same loss
    (Gemma's final logit soft-capping included), less time, far less memory. Falls back to the model's
    own loss when the output layer is not a plain Linear or the model has no ``.model`` backbone.
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
    """The Lightning module of a LoRA fine-tune: token-weighted assistant loss, HF scheduler, step records.

    Args:
        model: the ``PeftModel`` of :func:`em.train.models.build_model` (only LoRA weights require grad).
        optimizer_factory: trainable params -> optimizer (the ``optimizer`` node, a ``_partial_``).
        warmup_steps: optimizer steps of warm-up of the schedule.
        lr_scheduler: a ``transformers.get_scheduler`` name ("linear", "cosine", ...).
        grad_accum: micro-batches per optimizer step (Lightning's ``accumulate_grad_batches``).

    Needs ``trainer.datamodule`` to be a :class:`~em.data.module.ChatDataModule` (the loss normaliser and
    token counts come from it). Each optimizer step appends ``{"step", "train/loss", "train/lr",
    "train/grad_norm" (before clipping), "train/tokens_per_s", "train/tokens_seen", "train/epoch"}`` to
    :attr:`history` (every step) and logs it with ``self.log`` (loggers every ``trainer.log_every_n_steps``
    steps, ``callback_metrics`` for monitor-based callbacks, ``train/loss`` in the progress bar). Checkpoints hold only the LoRA weights, the history and the token count;
    the frozen base is reloaded from its source.
    """

    def __init__(self, model, optimizer_factory, *, warmup_steps: int, lr_scheduler: str, grad_accum: int,
                 kl_term=None):
        super().__init__()
        self.kl_term = kl_term  # em.dynamics.kl.KLTerm (trainer.kl): weight * KL(base || adapted) on a side batch
        self._window_kl = 0.0
        self.model = model
        self.optimizer_factory = optimizer_factory
        self.warmup_steps = warmup_steps
        self.lr_scheduler_name = lr_scheduler
        self.grad_accum = grad_accum
        self.strict_loading = False  # checkpoints hold the LoRA weights only
        self.history: list[dict[str, float]] = []
        self._window_loss = 0.0
        self._tokens_seen = 0
        self._t0: Optional[float] = None
        self._seconds_before = 0.0  # training time of the run's earlier parts (restored from the checkpoint)
        self.resumed_from_step: Optional[int] = None
        self._rng_to_restore: Optional[dict[str, Any]] = None  # the checkpoint's RNG states, for the next batch

    @property
    def tokens_seen(self) -> int:
        """Non-padding input tokens trained on so far by the whole job (every rank), resumed runs included."""
        return self._tokens_seen

    def forward(self, **batch):
        """The wrapped model's forward (``input_ids`` / ``attention_mask`` / ``labels``: [batch, seq])."""
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The micro-batch's share of its window's token-mean loss, scaled for Lightning and DDP / FSDP.

        ``batch``: the :class:`~em.data.tokenize.Collator`'s ``[batch, seq]`` tensors. Returns a scalar
        whose gradient, summed over the window and averaged over ranks, is that of the window's mean
        assistant-token loss.
        """
        dm = self.trainer.datamodule
        n_window = dm.window_target_tokens(self.current_epoch, batch_idx, self.grad_accum)
        # (sum of this micro-batch's token losses) / (assistant tokens in the whole window); Lightning
        # divides by accumulate_grad_batches, which we undo so the window's gradient is the token mean.
        loss = assistant_loss_sum(self.model, batch) / max(n_window, 1)
        self._window_loss = self._window_loss + loss.detach()  # no .item(): no GPU sync per micro-batch
        penalty = 0.0  # trainer.kl: weight x the window's mean KL (each micro-batch adds its share)
        if self.kl_term is not None:
            kl = self.kl_term(self.model, self.trainer.global_step, batch_idx % self.grad_accum, self.device) / self.grad_accum
            self._window_kl = self._window_kl + kl.detach()
            if self.kl_term.weight > 0:  # a per-rank mean: not scaled by world_size below (DDP averages it)
                penalty = self.kl_term.weight * kl * self.grad_accum
        if dm.world_size > 1:
            # n_window counts every rank's tokens and DDP / FSDP average the ranks' gradients: undo the mean.
            # tokens_seen counts the whole job's tokens (host-side, identical on every rank).
            self._tokens_seen += dm.batch_tokens(self.current_epoch, batch_idx, all_ranks=True)
            return loss * (self.grad_accum * dm.world_size) + penalty
        self._tokens_seen += dm.batch_tokens(self.current_epoch, batch_idx)
        return loss * self.grad_accum + penalty

    def on_train_start(self) -> None:
        """Start the tokens/s clock (model loading and setup excluded); after a resume, give a CSV logger
        the restored steps again (Lightning's ``CSVLogger`` starts ``metrics.csv`` afresh), so the file holds
        every step once, the resumed ones after them."""
        self._t0 = time.perf_counter()
        if self.resumed_from_step is not None:
            from lightning.pytorch.loggers import CSVLogger

            for logger in self.loggers:
                if isinstance(logger, CSVLogger):
                    for h in self.history:
                        # (Lightning's own rows carry the 0-based global step at logging time: step - 1)
                        logger.log_metrics({k: v for k, v in h.items() if k != "step"}, step=h["step"] - 1)

    def _train_seconds(self) -> float:
        """Training seconds of the whole run so far: earlier parts (from the checkpoint) + this process'."""
        return self._seconds_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def on_train_epoch_start(self) -> None:
        """Hand the epoch to the batch sampler, so that every epoch has its own seeded order."""
        # Lightning's set_epoch reaches dataloader.sampler and batch_sampler.sampler, never a custom
        # batch_sampler: without this every epoch would replay epoch 0's order.
        self.trainer.datamodule.sampler.set_epoch(self.current_epoch)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Record and log the step: window loss (summed over ranks), lr, grad norm, tokens/s, epoch."""
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
        elapsed = self._train_seconds()
        metrics = {
            "train/loss": float(self._window_loss),
            "train/lr": optimizer.param_groups[0]["lr"],
            "train/grad_norm": float(grad_norm),  # before clipping
            # the whole run's tokens over the whole run's training time: both restored on resume
            "train/tokens_per_s": self._tokens_seen / max(elapsed, 1e-9),
            "train/tokens_seen": float(self._tokens_seen),
            "train/epoch": self.trainer.current_epoch
            + self.trainer.fit_loop.epoch_loop.batch_progress.current.ready / max(len(self.trainer.datamodule.sampler), 1),
        }
        if self.kl_term is not None:
            metrics["train/kl"] = float(self._window_kl)
            self._window_kl = 0.0
        step = self.trainer.global_step + 1
        self.history.append({"step": step, **metrics})
        # self.log: Lightning's loggers (every trainer.log_every_n_steps steps), callback_metrics (so
        # ModelCheckpoint / EarlyStopping can monitor "train/loss") and the progress bar (the loss).
        self.log("train/loss", metrics["train/loss"], on_step=True, on_epoch=False, prog_bar=True)
        self.log_dict({k: float(v) for k, v in metrics.items() if k != "train/loss"}, on_step=True, on_epoch=False)
        if step % max(self.trainer.log_every_n_steps, 1) and step != self.trainer.estimated_stepping_batches:
            self._window_loss = 0.0
            return
        # A plain log line too: progress bars vanish when stdout is a file (SLURM, nohup, CI).
        log.info("step %d/%d  loss %.4f  lr %.3g  grad_norm %.3f  %.0f tokens/s", step,
                 self.trainer.estimated_stepping_batches, metrics["train/loss"], metrics["train/lr"],
                 metrics["train/grad_norm"], metrics["train/tokens_per_s"])
        self._window_loss = 0.0

    def configure_optimizers(self) -> dict[str, Any]:
        """The factory's optimizer over the trainable (LoRA) weights, with the HF scheduler stepped per step."""
        from transformers import get_scheduler

        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_scheduler(self.lr_scheduler_name, optimizer, num_warmup_steps=self.warmup_steps,
                                  num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable weights in the checkpoint; add the step history, tokens seen and training
        seconds so far."""
        # (FSDP inserts its wrapper into parameter names, not into the gathered state dict's keys)
        trainable = {n.replace("_fsdp_wrapped_module.", "") for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["em_history"] = self.history
        checkpoint["em_tokens_seen"] = self._tokens_seen
        checkpoint["em_train_seconds"] = self._train_seconds()
        # RNG states as tensors (weights_only-loadable): LoRA dropout > 0 draws from them every step
        checkpoint["em_rng"] = {"torch": torch.get_rng_state(),
                                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the step history, tokens seen and training seconds (tokens/s stays the whole run's rate);
        remember the step the run resumed from."""
        self.history = list(checkpoint.get("em_history", []))
        self._tokens_seen = int(checkpoint.get("em_tokens_seen", 0))
        self._seconds_before = float(checkpoint.get("em_train_seconds", 0.0))
        self.resumed_from_step = int(checkpoint.get("global_step", 0))
        self._rng_to_restore = checkpoint.get("em_rng")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """After a resume, the checkpoint's RNG states before the first batch: the state the uninterrupted
        run had there (the checkpoint is written at the end of the previous batch; the data loader draws
        from its own generator, not the global one, in between)."""
        rng, self._rng_to_restore = self._rng_to_restore, None
        if rng:
            torch.set_rng_state(rng["torch"].cpu())
            if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])

