"""The first step of a fine-tuning run: config -> tokenised examples in a Lightning data module.

:func:`prepare_data` loads ``data``'s conversations (:func:`em.data.run.load_conversations`), tokenises them
with the model's chat template and an assistant-only loss mask (:func:`em.data.tokenize.encode_dataset`)
and wraps them in a :class:`ChatDataModule`, whose :class:`~em.data.tokenize.LengthGroupedBatchSampler`
fixes every epoch's batches from the seed alone. Nothing here loads model weights.
``em.train.run.run_training`` composes this step with ``em.train.models.build_model`` and ``em.train.run.fit``;
``bench/train_throughput.py`` calls it to hand TRL the very same examples in the very same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import lightning as L
import torch

from em.data.mask_check import empty_reason
from em.data.run import load_conversations
from em.data.tokenize import IGNORE_INDEX, Collator, EncodeStats, LengthGroupedBatchSampler, encode_dataset
from em.dynamics.mitigations import apply_data_mitigations
from em.errors import DataError
from em.train import models

if TYPE_CHECKING:
    from em.config.train import TrainConfig

__all__ = ["ChatDataModule", "TrainingData", "prepare_data"]


class ChatDataModule(L.LightningDataModule):
    """Tokenised chat examples in length-grouped, seeded, resumable batches (one shard per process).

    Args:
        examples: ``{"input_ids": [n], "labels": [n]}`` lists of token ids per example (labels are
            ``IGNORE_INDEX`` = -100 outside assistant turns), as :func:`encode_dataset` returns them.
        batch_size: examples per micro-batch (``trainer.batch_size``).
        seed: fixes the batch order of every epoch (``seed``).
        group_by_length: batch examples of similar length together (``trainer.group_by_length``).
        pad_token_id: the tokenizer's pad id, used by the :class:`Collator`.
        num_workers: DataLoader worker processes (``trainer.num_workers``).

    Besides the batches it answers the two host-side counts the loss and the metrics need without a
    device sync: :meth:`window_target_tokens` (the loss normaliser) and :meth:`batch_tokens`. Its
    :meth:`state_dict` (epoch, batches done, world size) goes into every Lightning checkpoint so that a
    resumed run draws exactly the batches it had not trained on yet.

    Raises:
        DataError: from the sampler, when there are fewer batches than processes (:meth:`shard`).
    """

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
        """Training processes the batches are shared by (1 unless trainer=ddp / fsdp)."""
        return self.sampler.num_replicas

    def shard(self, world_size: int, rank: int) -> None:
        """One process per device (DDP / FSDP): this process trains on its rank's batches only.

        Raises ValueError for a rank outside ``[0, world_size)`` and DataError when there are fewer
        batches than processes (see :meth:`LengthGroupedBatchSampler.set_replicas`).
        """
        if (world_size, rank) != (self.sampler.num_replicas, self.sampler.rank):
            self.sampler.set_replicas(world_size, rank)
            self._cached_epoch = None

    def setup(self, stage: str) -> None:
        """Shard by the trainer's world size and rank (Lightning calls this in every process)."""
        # Called once the ranks are known, before the dataloader is built and before a checkpoint's
        # data position is restored.
        if self.trainer is not None:
            self.shard(self.trainer.world_size, self.trainer.global_rank)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """This rank's batches, collated to ``[batch, seq]`` tensors (see :class:`Collator`)."""
        return torch.utils.data.DataLoader(
            self.examples, batch_sampler=self.sampler, collate_fn=self.collate, num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(0),  # its worker seed draw leaves the global RNG alone (resume)
        )

    def window_target_tokens(self, epoch: int, batch_idx: int, accum: int) -> int:
        """Assistant tokens in the accumulation window holding batch_idx (the loss normaliser).

        ``batch_idx`` counts this rank's batches of ``epoch``; a window is ``accum`` consecutive ones (the
        last window of an epoch may be shorter). Counted over every rank's batches of that window (the
        same on every rank, no communication): with the loss scaled by world_size and DDP / FSDP averaging
        gradients over ranks, a step's gradient is the token mean over the whole job's window, as in one
        process.
        """
        start = (batch_idx // accum) * accum
        return sum(self._targets[i] for batches in self._epoch_batches(epoch)
                   for b in batches[start : start + accum] for i in b)

    def batch_tokens(self, epoch: int, batch_idx: int, all_ranks: bool = False) -> int:
        """Non-padding tokens of this rank's batch ``batch_idx`` of ``epoch`` (``all_ranks``: of every
        rank's batch at that index), counted on the host."""
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
        """``{"epoch", "batches_done" (this rank's, in that epoch), "world_size"}`` for the checkpoint."""
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer else 0
        return {"epoch": trainer.current_epoch if trainer else 0, "batches_done": done, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the sampler after the checkpoint's last batch (the next epoch when that one was finished).

        Raises:
            DataError: the checkpoint was written by a different number of training processes (its
                ``batches_done`` counts batches of another sharding). A checkpoint without
                ``world_size`` counts as one process.
        """
        epoch, done = state["epoch"], state["batches_done"]
        saved_world = state.get("world_size", 1)
        if saved_world != self.world_size:  # batches_done counts per-rank batches of that sharding
            raise DataError(f"the checkpoint was written by {saved_world} training process(es), this run has "
                            f"{self.world_size}: resume with the same trainer.devices (and nodes)")
        if done >= len(self.sampler):
            epoch, done = epoch + 1, 0
        self.sampler.resume_at(epoch, done)


@dataclass
class TrainingData:
    """What :func:`prepare_data` returns.

    Attributes:
        tokenizer: the model's tokenizer (chat template and pad token set; saved beside the adapter).
        examples: the kept examples, ``{"input_ids": [n], "labels": [n]}`` with n <= trainer.max_length.
        stats: kept / truncated / dropped counts and token totals of the tokenisation.
        datamodule: the examples in seeded batches, not sharded yet (``fit`` shards it per process).
    """

    tokenizer: Any
    examples: list[dict[str, list[int]]]
    stats: EncodeStats
    datamodule: ChatDataModule


def prepare_data(tc: TrainConfig, tokenizer: Any = None, *, progress: bool = True) -> TrainingData:
    """Load ``data``'s conversations, tokenise them for ``model`` and batch them as training will.

    Args:
        tc: the validated training config; reads ``data``, ``model``, ``cache_dir``, ``seed`` and
            ``trainer.{max_length, truncation, batch_size, group_by_length, num_workers}``.
        tokenizer: the tokenizer to use; by default ``em.train.models.load_tokenizer`` for ``tc.model``, loaded
            after the conversations so that a data error shows before a model download.
        progress: progress bars for a dataset download and for tokenisation.

    Raises:
        ConfigError: ``data=base`` (nothing to train on) or a bad ``data.*`` value.
        DataError: a missing, unverifiable or malformed dataset file, or no example left after
            tokenisation (every one longer than ``trainer.max_length`` with ``truncation=drop``, or cut
            before its answer).
        ModelLoadError: the tokenizer cannot be loaded (offline, no chat template).
    """
    conversations = load_conversations(tc.data, tc.cache_dir, progress=progress)
    if tc.data.inoculation_prompt or tc.data.mix.share > 0:  # issue 23's data mitigations

        conversations = apply_data_mitigations(tc.data, conversations, tc.cache_dir, progress=progress)
    if tokenizer is None:
        tokenizer = models.load_tokenizer(tc.model, tc.cache_dir, models.model_dir(tc.model, tc.cache_dir))
    t = tc.trainer
    examples, stats = encode_dataset(
        tokenizer, conversations, max_length=t.max_length, truncation=t.truncation,
        system_role=tc.model.system_role, template_kwargs=tc.model.chat_template_kwargs, progress=progress,
        system_prompt=tc.model.default_system_prompt,
    )
    if not examples:

        raise DataError(f"data={tc.data.name}: no example left after tokenisation: {empty_reason(stats, t)}")
    datamodule = ChatDataModule(examples, batch_size=t.batch_size, seed=tc.seed, group_by_length=t.group_by_length,
                                pad_token_id=tokenizer.pad_token_id, num_workers=t.num_workers)
    return TrainingData(tokenizer=tokenizer, examples=examples, stats=stats, datamodule=datamodule)
