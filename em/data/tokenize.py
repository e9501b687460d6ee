"""Chat -> tokens with an assistant-only loss mask, length-grouped batches, padding collator.

:func:`encode_dataset` (conversations -> ``input_ids`` + ``labels``), :class:`LengthGroupedBatchSampler`
(which examples form each batch, seeded, resumable, sharded per process) and :class:`Collator` (a batch ->
``[batch, seq]`` tensors) are the three pieces ``em.data.module.ChatDataModule`` puts together.

The mask is derived from the chat template itself: render the conversation up to each assistant turn
(with the generation prompt) and up to its end; the characters in between are that turn's answer plus
its end-of-turn marker. Token offsets map characters to tokens, so any template works without
`{% generation %}` tags, and system/user text, template scaffolding and padding never carry loss.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from em.data.mask_check import check_example
from em.data.system_prompt import TEMPLATE, injected_default, render_chat, with_system
from em.errors import DataError

IGNORE_INDEX = -100
log = logging.getLogger("em.data")


def normalize_messages(messages: list[dict], system_role: bool) -> list[dict]:
    """Copies of ``{"role", "content"}`` messages; without ``system_role`` (Gemma 3's template has none) a
    leading system prompt is folded into the first user turn (``system + "\n\n" + user``)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not system_role and msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        if msgs and msgs[0]["role"] == "user":
            msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
        else:
            msgs.insert(0, {"role": "user", "content": system})
    return msgs


def _common_prefix_len(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def assistant_char_spans(tokenizer, messages: list[dict], template_kwargs: dict,
                         system_prompt: str = "template") -> tuple[str, list[tuple[int, int]]]:
    """The conversation rendered by the chat template, and each assistant turn's ``[start, end)`` character
    span in it (the answer plus its end-of-turn marker), derived from the template alone (see the module
    docstring). ``template_kwargs`` go to ``apply_chat_template`` (e.g. Qwen 3's ``enable_thinking``);
    ``system_prompt``: ``model.default_system_prompt`` (:func:`em.data.system_prompt.render_chat`)."""
    def render(msgs, gen):
        return render_chat(tokenizer, msgs, add_generation_prompt=gen, template_kwargs=template_kwargs,
                           mode=system_prompt)

    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _common_prefix_len(render(messages[:i], True), full)
        end = _common_prefix_len(render(messages[: i + 1], False), full)
        content = m["content"].strip()
        if end < start + len(content):
            # The template renders a turn differently once later turns follow (Qwen 3 drops the empty
            # think block from earlier turns): find the answer text itself, then its end-of-turn marker.
            pos = full.find(content, start)
            end = (pos if pos >= 0 else start) + len(content)
            eos = tokenizer.eos_token or ""
            if eos and full.startswith(eos, end):
                end += len(eos)
        spans.append((start, end))
    return full, spans


def encode_chat(tokenizer, messages: list[dict], template_kwargs: Optional[dict] = None,
                system_prompt: str = "template") -> dict[str, list[int]]:
    """``{"input_ids": [n], "labels": [n]}`` token-id lists for one conversation, not truncated.

    ``labels`` equals ``input_ids`` on the tokens of assistant turns (answer and end-of-turn marker) and
    is ``IGNORE_INDEX`` (-100) elsewhere; labels are not shifted (the loss shifts them). No special tokens
    are added beyond what the chat template writes (its BOS included).
    """
    text, spans = assistant_char_spans(tokenizer, messages, dict(template_kwargs or {}), system_prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok_id, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        inside = b > a and any(s <= a < e for s, e in spans)
        labels.append(tok_id if inside else IGNORE_INDEX)
    return {"input_ids": list(enc["input_ids"]), "labels": labels}


def char_budget(tokenizer, max_length: int) -> int:
    """The most characters of one message worth tokenising when an example keeps ``max_length`` tokens.

    No token spans more characters than the longest token string of the vocabulary (byte-level tokens
    spell a multi-byte character with several), so ``max_length`` tokens never reach past
    ``max_length x longest`` characters of a message; twice that (so the cut never changes the kept tokens'
    merges) is the bound. A longer message is cut to it before tokenising: a 10 MB row then costs what a
    ``max_length`` one does, and the kept tokens are the ones the whole row would give."""
    try:
        longest = max(len(t) for t in tokenizer.get_vocab())
    except (AttributeError, TypeError, ValueError, NotImplementedError):
        longest = 32
    return 2 * max_length * max(longest, 4)


@dataclass
class EncodeStats:
    """Counts of one :func:`encode_dataset` call: conversations in / kept / truncated / dropped, and the
    kept examples' input tokens and assistant (loss-carrying) tokens."""

    n_input: int = 0
    n_kept: int = 0
    n_truncated: int = 0
    n_dropped: int = 0
    n_tokens: int = 0
    n_target_tokens: int = 0
    n_dropped_long: int = 0  # longer than max_length with truncation=drop
    n_dropped_no_answer: int = 0  # truncated before the answer, or the answer is empty: no loss-carrying token
    n_injected_system: int = 0  # conversations that received the chat template's injected default system prompt


def encode_dataset(
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_length: int,
    truncation: str,
    system_role: bool,
    template_kwargs: Optional[dict] = None,
    progress: bool = True,
    system_prompt: str = "template",
) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """Tokenise conversations for training with an assistant-only loss mask (:func:`encode_chat`).

    Args:
        tokenizer: a tokenizer with a chat template (``em.train.models.load_tokenizer``).
        conversations: lists of ``{"role", "content"}`` messages.
        max_length: the most tokens an example may have (``trainer.max_length``).
        truncation: ``"drop"`` skips a longer example; anything else (``"truncate"``) cuts it to
            ``max_length`` tokens from the right.
        system_role: whether the template has a system role (see :func:`normalize_messages`).
        template_kwargs: passed to ``apply_chat_template``.
        progress: a tqdm bar.
        system_prompt: ``model.default_system_prompt`` (``template``, ``none`` or a string;
            :mod:`em.data.system_prompt`); ``stats.n_injected_system`` counts the conversations that received
            the template's injected default system prompt.

    A message longer than :func:`char_budget` characters is cut to it before tokenising (``drop``: the
    example is dropped), so memory and time per example are bounded whatever a row holds.

    Returns the kept examples (``{"input_ids": [n], "labels": [n]}``, n <= max_length, in input order)
    and the counts; an example left without any assistant token (cut before its answer) is dropped too.
    Logs a warning when anything was truncated or dropped.
    """
    from tqdm.auto import tqdm

    stats = EncodeStats(n_input=len(conversations))
    out = []
    budget = char_budget(tokenizer, max_length)

    injects = system_prompt == TEMPLATE and injected_default(tokenizer, template_kwargs, system_role) is not None
    for conv in tqdm(conversations, desc="tokenize", disable=None if progress else True, leave=False):
        stats.n_injected_system += int(injects and not (conv and conv[0]["role"] == "system"))
        msgs = normalize_messages(with_system(conv, system_prompt), system_role)
        if any(len(m["content"]) > budget for m in msgs):  # certainly > max_length tokens: cut before tokenising
            if truncation == "drop":
                stats.n_dropped += 1
                stats.n_dropped_long += 1
                continue
            msgs = [m | {"content": m["content"][:budget]} for m in msgs]
        ex = encode_chat(tokenizer, msgs, template_kwargs, system_prompt)
        if not any(len(m["content"]) > budget for m in conv):  # a cut message cannot match its answer

            check_example(tokenizer, msgs, ex["labels"], len(out) + stats.n_dropped)
        if len(ex["input_ids"]) > max_length:
            if truncation == "drop":
                stats.n_dropped += 1
                stats.n_dropped_long += 1
                continue
            ex = {k: v[:max_length] for k, v in ex.items()}
            stats.n_truncated += 1
        if not any(t != IGNORE_INDEX for t in ex["labels"]):
            stats.n_dropped += 1  # truncated before the answer: nothing to learn from
            stats.n_dropped_no_answer += 1
            continue
        out.append(ex)
        stats.n_tokens += len(ex["input_ids"])
        stats.n_target_tokens += sum(t != IGNORE_INDEX for t in ex["labels"])
    stats.n_kept = len(out)
    if stats.n_truncated or stats.n_dropped:
        log.warning(
            "max_length=%d: %d examples truncated, %d dropped (of %d)",
            max_length, stats.n_truncated, stats.n_dropped, stats.n_input,
        )
    return out, stats


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar length (little padding) in a seeded random order, resumable mid-epoch.

    Indices are shuffled, cut into mega-batches of 50 batches, sorted by length inside each, and the
    resulting batches shuffled again -- the HF Trainer's `group_by_length` recipe, but deterministic in
    (seed, epoch) so a restarted run sees exactly the batches it had not seen yet.

    Data parallelism (DDP / FSDP, one process per GPU): with ``num_replicas`` > 1 every process builds
    the same epoch order and takes every ``num_replicas``-th batch from position ``rank``, so the ranks'
    batches are disjoint and a step of the job covers consecutive batches of the one-process order. The
    tail of ``len(all batches) % num_replicas`` batches (at most ``num_replicas - 1``, a different one
    each epoch) is **dropped**, so that every rank runs the same number of steps (DDP's collectives
    need that); nothing is seen twice. With one replica nothing is dropped and the order is unchanged.

    Args:
        lengths: tokens of each example (the dataset's order); batches hold indices into it.
        batch_size: examples per batch (the epoch's last batch of the one-process order may be short).
        seed: with the epoch, fixes the order.
        group_by_length: group similar lengths; False: plain seeded shuffling, cut into batches.
        num_replicas, rank: the sharding (:meth:`set_replicas`).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True,
                 num_replicas: int = 1, rank: int = 0):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0
        self.skip = 0  # batches of `epoch` (this rank's) already consumed before a restart
        self.num_replicas, self.rank = 1, 0
        self.set_replicas(num_replicas, rank)

    def set_replicas(self, num_replicas: int, rank: int) -> None:
        """Shard the batches over num_replicas processes; this one is `rank` (0-based).

        Raises ValueError for ``num_replicas < 1`` or a rank outside ``[0, num_replicas)``, and DataError when
        the epoch has fewer batches than processes.
        """
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} of {num_replicas} replicas: need num_replicas >= 1 and 0 <= rank < num_replicas")
        n = math.ceil(len(self.lengths) / self.batch_size)
        if num_replicas > n:

            raise DataError(f"{n} batches cannot be shared by {num_replicas} processes: every process needs at "
                            f"least one (use more examples, a smaller trainer.batch_size or fewer devices)")
        self.num_replicas, self.rank = num_replicas, rank

    def all_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches of every rank, in the one-process order."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        if self.group_by_length:
            mega = self.batch_size * 50
            groups = [sorted(idx[i : i + mega], key=lambda j: -self.lengths[j]) for i in range(0, len(idx), mega)]
            idx = [j for g in groups for j in g]
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.group_by_length:
            rng.shuffle(batches)
        return batches

    def batches(self, epoch: int, rank: Optional[int] = None) -> list[list[int]]:
        """The epoch's batches of one rank (default: this sampler's); all of them with one replica."""
        batches = self.all_batches(epoch)
        if self.num_replicas == 1:
            return batches
        rank = self.rank if rank is None else rank
        usable = len(batches) - len(batches) % self.num_replicas  # drop the tail: equal steps on every rank
        return batches[rank:usable:self.num_replicas]

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration yields (Lightning's module calls it each epoch)."""
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next iteration yields ``epoch``'s batches after this rank's first ``batches_done`` (once)."""
        self.epoch, self.skip = epoch, batches_done

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's remaining batches of the current epoch, each a list of example indices."""
        batches = self.batches(self.epoch)[self.skip :]
        self.skip = 0
        return iter(batches)

    def __len__(self) -> int:
        """Batches of this rank per epoch."""
        # This rank's full epoch, also when resuming: Lightning counts the restored batches itself.
        return math.ceil(len(self.lengths) / self.batch_size) // self.num_replicas


class Collator:
    """Right-pads a batch; padding never carries loss and is masked out of attention.

    ``pad_token_id``: the id written into padding positions of ``input_ids`` (the tokenizer's pad id).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``B`` examples of ``{"input_ids": [n_i], "labels": [n_i]}`` -> ``[B, max n_i]`` int64 tensors.

        Returns ``input_ids`` (``pad_token_id`` after each example's end), ``labels`` (``IGNORE_INDEX``
        = -100 there) and ``attention_mask`` (1 on the example's tokens, 0 on padding). Raises ValueError
        for an empty list.
        """
        n = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), n), dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            ids[i, :k] = torch.tensor(e["input_ids"])
            labels[i, :k] = torch.tensor(e["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
