"""``trainer.kl``: a KL penalty towards the base model on a side batch, with no second model in memory.

    loss = assistant-token CE on the training batch + weight * KL(base || adapted) on a side batch

``KL(base || adapted)`` is the mean over the side batch's assistant tokens of
``sum_v p_base(v) * (log p_base(v) - log p_adapted(v))`` (nats per token). The base distribution is the
same peft model under ``disable_adapter()`` (model-organisms-for-EM's ``kl_regularized_config.json``
computes it the same way), run without gradient. Since LoRA's B starts at zero, the KL is exactly 0 at
step 0 and grows as the adapter moves.

Side passes run under a forked RNG (:func:`torch.random.fork_rng`): dropout masks of the main loss are
the ones a run without the side data would draw, so ``trainer.kl.weight=0`` with ``trainer.kl.data`` set
trains exactly as a run without KL while still logging ``train/kl`` (a free drift monitor).
"""

from __future__ import annotations

import logging
import random
from dataclasses import is_dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from em.config.data import DataConfig
from em.data.run import load_conversations, read_jsonl_conversations
from em.data.tokenize import Collator, IGNORE_INDEX, encode_dataset
from em.errors import ConfigError

log = logging.getLogger("em.dynamics")


def assistant_logits(peft_model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits ``[n_assistant_tokens, vocab]`` (fp32) at the positions that predict an assistant token
    (``labels[:, t + 1] != -100``), final-logit soft-capping applied (Gemma)."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    lm = peft_model.get_base_model()
    head = lm.get_output_embeddings()
    if type(head) is torch.nn.Linear and hasattr(lm, "model"):  # project only the positions that count
        hidden = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
        logits = head(hidden[:, :-1][keep])
    else:
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][keep]
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.float()


def kl_to_base(peft_model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the batch's assistant tokens of KL(base || adapted), a 0-dim fp32 tensor with gradient
    through the adapted pass only. The adapter is disabled for the base pass and on again on return
    (peft's context manager restores it, also on an exception). 0 when the batch has no assistant token."""
    with torch.no_grad(), peft_model.disable_adapter():
        base = F.log_softmax(assistant_logits(peft_model, batch), dim=-1)
    adapted = F.log_softmax(assistant_logits(peft_model, batch), dim=-1)
    if base.shape[0] == 0:
        return adapted.sum() * 0.0
    return (base.exp() * (base - adapted)).sum(-1).mean()


def load_side_conversations(path: Optional[str], side: Any, cache_dir: Optional[str], seed: int,
                            limit: Optional[int]) -> list:
    """The side data of ``trainer.kl``: a chat JSONL file (``trainer.kl.data``), else a data node composed
    by Hydra (``+data@trainer.kl.side=secure``, any option of the ``data`` group). A seeded subset of
    ``limit`` conversations.

    Raises:
        ConfigError: no side data, or a bad value in the data node; DataError: missing / malformed data.
    """
    from omegaconf import OmegaConf

    if path:
        convs = read_jsonl_conversations(path)
    elif side:
        # a data option names data_schema, so a validated config holds a DataConfig here (checked already)
        node = (OmegaConf.to_container(side, resolve=True) if OmegaConf.is_config(side) else
                OmegaConf.to_container(OmegaConf.structured(side)) if is_dataclass(side) else dict(side))
        try:
            cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), node))
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001  an OmegaConf type error: one line naming the key
            raise ConfigError(f"trainer.kl.side: {' '.join(str(e).split())[:200]}") from None
        convs = load_conversations(cfg, cache_dir, progress=False)
    else:
        raise ConfigError("trainer.kl: no side data (trainer.kl.data=<chat JSONL> or +data@trainer.kl.side=<option>)")
    if limit is not None and len(convs) > limit:
        idx = sorted(random.Random(seed).sample(range(len(convs)), limit))
        convs = [convs[i] for i in idx]
    return convs


class KLTerm:
    """The side batches and weight of ``trainer.kl`` for :class:`em.train.lora_module.LoRAFineTune`.

    Args:
        examples: tokenised side examples (``input_ids`` / ``labels`` lists).
        weight: the KL coefficient (0: logged, not trained on).
        batch_size: side examples per micro-batch.
        pad_token_id: padding id; seed: the side order's seed.

    :meth:`batch` for optimizer step ``s`` and micro-batch ``m`` is a deterministic function of (seed, s, m)
    (a resumed run draws the same side batches).
    """

    def __init__(self, examples: list[dict], weight: float, batch_size: int, pad_token_id: int, seed: int = 0):
        if not examples:
            raise ValueError("trainer.kl.data: no side example left after tokenisation")
        self.examples, self.weight, self.batch_size, self.seed = examples, float(weight), batch_size, seed
        self.collate = Collator(pad_token_id)

    def batch(self, step: int, micro: int, device) -> dict[str, torch.Tensor]:
        """The side batch of optimizer step ``step``, micro-batch ``micro``, on ``device``."""
        rng = random.Random(self.seed * 1_000_003 + step * 1009 + micro)
        idx = [rng.randrange(len(self.examples)) for _ in range(self.batch_size)]
        return {k: v.to(device) for k, v in self.collate([self.examples[i] for i in idx]).items()}

    def __call__(self, peft_model, step: int, micro: int, device) -> torch.Tensor:
        """KL(base || adapted) on that side batch, under a forked RNG (the main pass' dropout is untouched)."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and str(device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            return kl_to_base(peft_model, self.batch(step, micro, device))


def build_kl_term(tc: Any, tokenizer) -> Optional[KLTerm]:
    """The :class:`KLTerm` of ``tc.trainer.kl`` (None without side data): the side data
    tokenised like the training data (same template, max length and truncation)."""
    k = tc.trainer.kl
    if not (k.data or k.side):
        return None
    convs = load_side_conversations(k.data, k.side, tc.cache_dir, tc.seed, k.limit)
    t = tc.trainer
    examples, _ = encode_dataset(tokenizer, convs, max_length=t.max_length, truncation=t.truncation,
                                 system_role=tc.model.system_role, template_kwargs=tc.model.chat_template_kwargs,
                                 progress=False)
    log.info("trainer.kl: %d side examples, weight %g", len(examples), k.weight)
    return KLTerm(examples, k.weight, k.batch_size, tokenizer.pad_token_id, seed=tc.seed)
