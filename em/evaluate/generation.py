"""Sampling answers: the plan (which samples exist) and two backends, hf (transformers) and vllm.

hf: prompts rendered with the model's chat template (a system prompt is a real system turn, or folded into
the first user turn for Gemma: ``em.data.tokenize.normalize_messages``), sorted by length so a batch pads
little, left-padded, sampled with ``generate`` (KV cache) with exactly em's settings
(:mod:`em.evaluate.sampling`: temperature 1.0 / top-p 1.0 / top-k off / no repetition penalty / at
least one new token; nothing from the checkpoint's generation_config.json).
Each answer is drawn with its own seed, from (seed, its key) (:func:`sample_seed`,
:func:`em.evaluate.sampling.per_sample_sampler`): one config gives the same answers again, whichever
batch an answer falls in.
vllm: the same prompts through vLLM (:mod:`em.evaluate.vllm_backend`), the adapter as a LoRARequest,
one seed per sample; optional dependency, imported only when chosen.

Both hand each finished batch to a callback, which appends it to the answer store before the next batch
starts: a killed run keeps every finished batch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from em.errors import ModelLoadError
from em.evaluate.questions import Prompt, messages_for

log = logging.getLogger("em.evaluate")

STOP_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|endoftext|>", "<eos>", "<|eot_id|>", "<|end|>")  # + Llama 3, Phi-3


@dataclass(frozen=True)
class Sample:
    """One answer to generate: a question of a format, the paraphrase it uses and its sample number.

    ``source_id`` names the question in its source file, ``system`` is the format's system prompt (or
    None), ``kind`` how the judge scores it (0-100 or a label), and ``judge_prompts`` the ``(metric,
    prompt template)`` pairs the judge scores the answer with.
    """

    format: str
    question_id: str
    paraphrase: int
    sample: int
    source_id: str
    question: str
    system: Optional[str]
    kind: str
    judge_prompts: tuple[tuple[str, str], ...]

    @property
    def key(self) -> tuple[str, str, int, int]:
        """``(format, question_id, paraphrase, sample)``: the answer store's key."""
        return (self.format, self.question_id, self.paraphrase, self.sample)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The chat the model answers: the system prompt (if any) and the question, as messages."""
        return messages_for(self.system, self.question)


def plan(prompts: list[Prompt], samples: int) -> list[Sample]:
    """`samples` answers per question per format; paraphrases taken in turn (sample s uses s mod n)."""
    out = []
    for p in prompts:
        for s in range(samples):
            k = s % len(p.paraphrases)
            out.append(Sample(p.format, p.question_id, k, s, p.source_id, p.paraphrases[k], p.system, p.kind,
                              p.judge_prompts))
    return out


def sample_seed(seed: int, key: tuple) -> int:
    """A 32-bit seed from (run seed, a sample's key): stable across processes (sha256, not ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr((seed, key)).encode()).digest()[:4], "little")


def render(tokenizer, model_cfg: Any, sample: Sample) -> str:
    """The exact text the model is conditioned on (chat template + generation prompt)."""
    from em.data.system_prompt import render_chat, with_system
    from em.data.tokenize import normalize_messages

    mode = getattr(model_cfg, "default_system_prompt", "template")  # model.default_system_prompt
    msgs = normalize_messages(with_system(sample.messages, mode), model_cfg.system_role)
    return render_chat(tokenizer, msgs, add_generation_prompt=True,
                       template_kwargs=dict(model_cfg.chat_template_kwargs), mode=mode)


def prompt_sha(text: str) -> str:
    """The first 16 hex digits of the sha256 of a rendered prompt (a stored answer whose prompt changed is
    generated again)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an answer: the tokenizer's EOS, the end-of-turn tokens of ``STOP_TOKENS`` it
    knows, and the model's ``generation_config.eos_token_id`` (one id or a list), sorted."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in STOP_TOKENS if t in vocab)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update([int(gen_eos)] if isinstance(gen_eos, int) else [int(i) for i in gen_eos])
    return sorted(ids)


OnBatch = Callable[[list[tuple[Sample, dict[str, Any]]]], None]


class HFGenerator:
    """Batched, length-sorted sampling with transformers (CPU or GPU).

    Args:
        model_cfg, quantization, cache_dir: the base model as ``em.train.models`` loads it.
        gen_cfg: the ``generation`` node (batch_size, temperature, top_p, max_new_tokens, ignore_eos).
        seed: the run seed; each answer is sampled with its own seed from it and its key.
        adapter_dir: a LoRA adapter directory to apply (None: the base model).
        source, tokenizer: already resolved ones, to skip resolving / loading them again.

    Raises ModelLoadError when the tokenizer (here) or the model (on :meth:`load`) cannot be loaded.
    """

    def __init__(self, model_cfg, quantization, cache_dir: str, gen_cfg, seed: int,
                 adapter_dir: Optional[str] = None, source: Optional[str] = None, tokenizer=None,
                 intervention: Optional[Callable[..., Any]] = None):
        self.model_cfg, self.quantization, self.cache_dir = model_cfg, quantization, cache_dir
        # em.interp's steering / ablation: intervention(model, prompt_lens) is a context manager around
        # each batch's prefill and generate() (residual hooks; prompt_lens: [batch] real prompt tokens)
        self.intervention = intervention
        self.gen, self.seed, self.adapter_dir = gen_cfg, seed, adapter_dir
        from em.train import models

        self.source = source or models.model_dir(model_cfg, cache_dir)
        self.tokenizer = tokenizer or models.load_tokenizer(model_cfg, cache_dir, self.source)
        self.model = None
        self.sampling: Optional[dict[str, Any]] = None  # the effective parameters, once generate() ran

    def load(self) -> None:
        """Load the model (and adapter) once, in eval mode; on the GPU when there is one."""
        if self.model is not None:
            return
        from em.train import models

        model = models.load_model(self.model_cfg, self.quantization, self.cache_dir, self.source)
        if self.adapter_dir:
            from em.adapters.check import load_peft

            # either key layout (text model / multimodal class); an adapter matching no module is an error
            model = load_peft(model, self.adapter_dir)
        if models.has_cuda() and not self.quantization.load_in_4bit:
            model = model.to("cuda")
        self.model = model.eval()

    def encode(self, samples: list[Sample]) -> list[list[int]]:
        """The prompt token ids of each sample (see :func:`render`), no special tokens added."""
        texts = [render(self.tokenizer, self.model_cfg, s) for s in samples]
        # The template writes BOS itself where the model wants one: no second one from the tokenizer.
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def batches(self, samples: list[Sample]) -> list[list[tuple[Sample, list[int]]]]:
        """Samples with their prompt ids, longest prompt first, cut into ``generation.batch_size`` batches."""
        enc = list(zip(samples, self.encode(samples)))
        enc.sort(key=lambda x: -len(x[1]))  # longest first: similar lengths share a batch, OOM shows early
        b = self.gen.batch_size
        return [enc[i : i + b] for i in range(0, len(enc), b)]

    def hooked(self, prompt_lens):
        """The intervention's context for one forward / generate call over rows with ``prompt_lens`` prompt
        tokens (``[batch]``), or a no-op without one."""
        if self.intervention is None:
            return contextlib.nullcontext()
        return self.intervention(self.model, prompt_lens)

    share_prompts = True  # one prefill per distinct prompt of a batch (False: transformers' own prefill)

    def shared_prefill(self, input_ids, mask) -> dict[str, Any]:
        """The KV cache of every row's prompt but its last token, computed once per distinct (padded) prompt
        and copied to the rows that share it: the answers sampled for one question and format (``samples``
        of them) share their prompt, so the prefill costs ``distinct prompts / batch`` of transformers' own.

        Args: ``input_ids``, ``mask``: ``[batch, prompt]``, left-padded, on the model's device.
        Returns ``{"cache": the expanded cache}`` for ``generate`` (which then feeds only each row's last
        prompt token), or ``{}`` when no two rows share a prompt or the prompt is a single token.
        """
        import torch

        n = input_ids.shape[1]
        if n < 2:
            return {}
        rows, inverse = torch.unique(torch.cat([input_ids, mask], 1), dim=0, return_inverse=True)
        if len(rows) == len(input_ids):
            return {}
        ids, m = rows[:, : n - 1], rows[:, n : 2 * n - 1]  # each distinct (prompt, mask) but its last token
        pos = (m.cumsum(-1) - 1).masked_fill_(m == 0, 1)  # as generate() derives positions from the mask
        with torch.no_grad(), self.hooked(m.sum(1) + 1):  # (each row's last prompt token is real: left padding)
            out = self.model(input_ids=ids, attention_mask=m, position_ids=pos, use_cache=True,
                             logits_to_keep=1)
        out.cache.reorder_cache(inverse)
        return {"cache": out.cache}

    def generate(self, samples: list[Sample], on_batch: OnBatch, progress: bool = True) -> int:
        """Sample an answer for each sample, batch by batch; ``on_batch`` gets each finished batch as
        ``(sample, {"answer", "n_tokens", "finish_reason", "prompt_tokens"})`` pairs. Returns the count.

        Each batch is left-padded to ``[batch, longest prompt]``; each row samples with the seed of its key.
        """
        import torch
        from tqdm.auto import tqdm

        from em.evaluate import sampling

        if not samples:
            return 0
        self.load()
        tok, model = self.tokenizer, self.model
        stops = stop_token_ids(tok, model)
        pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
        # em's settings, every field set; the checkpoint's generation_config.json cannot fill any gap
        sampling.neutralize(model)
        gc = sampling.hf_config(sampling.settings(self.gen, stops), pad)
        self.sampling = sampling.effective_hf(model, gc) | {"backend": "hf"}
        run_gc = copy.deepcopy(gc)
        if gc.do_sample:  # em draws the tokens (one seed per answer); generate() takes the drawn one
            self.sampling["sampler"] = "per_sample_inverse_cdf"
            run_gc.do_sample, run_gc.temperature, run_gc.top_p = False, 1.0, 1.0
        run_gc.top_k = run_gc.min_p = None  # unused without do_sample; set, transformers warns they are ignored
        device = next(model.parameters()).device
        done = 0
        bar = tqdm(total=len(samples), desc="generate", unit="answer", disable=None if progress else True)
        try:
            for batch in self.batches(samples):
                n = max(len(ids) for _, ids in batch)
                input_ids = torch.full((len(batch), n), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), n), dtype=torch.long)
                for i, (_, ids) in enumerate(batch):  # left padding: every row's last token is its prompt's end
                    input_ids[i, n - len(ids):] = torch.tensor(ids)
                    mask[i, n - len(ids):] = 1
                shared = self.shared_prefill(input_ids.to(device), mask.to(device)) if self.share_prompts else {}
                procs = [sampling.per_sample_sampler([sample_seed(self.seed, s.key) for s, _ in batch],
                                                     gc.temperature, gc.top_p)] if gc.do_sample else None
                with torch.no_grad(), self.hooked(mask.sum(1).to(device)):
                    out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                         generation_config=run_gc, logits_processor=procs, **shared)
                results = []
                for i, (s, ids) in enumerate(batch):
                    new = out[i, n:].tolist()
                    stop_at = next((j for j, t in enumerate(new) if t in stops), None)
                    kept = new if stop_at is None else new[:stop_at]
                    results.append((s, {
                        "answer": tok.decode(kept, skip_special_tokens=True).strip(),
                        "n_tokens": len(kept),
                        "finish_reason": "stop" if stop_at is not None else "length",
                        "prompt_tokens": len(ids),
                        "sampling": self.sampling,
                    }))
                on_batch(results)
                done += len(batch)
                bar.update(len(batch))
        finally:
            bar.close()
        return done


def make_generator(backend: str, *args, **kwargs):
    """A :class:`em.evaluate.vllm_backend.VLLMGenerator` for ``backend="vllm"``, else an
    :class:`HFGenerator` (same arguments)."""
    if backend == "vllm":
        from em.evaluate.vllm_backend import VLLMGenerator

        if kwargs.get("intervention") is not None:
            from em.errors import ConfigError

            raise ConfigError("generation.backend=vllm: steering / ablation hooks run on the hf backend only; "
                              "use generation=hf")

        return VLLMGenerator(*args, **kwargs)
    return HFGenerator(*args, **kwargs)
