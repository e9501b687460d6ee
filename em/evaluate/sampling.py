"""Sampling exactly as configured, on every backend: the settings em samples with, built from its own
``generation`` node and never from the checkpoint's ``generation_config.json``.

A Qwen2.5-Instruct checkpoint ships ``repetition_penalty: 1.05``, ``top_k: 20``, ``top_p: 0.8``,
``temperature: 0.7``; transformers' ``generate`` fills every field a passed config leaves ``None`` from the
model's own generation config, so a partial config inherits them. Here every sampling field is set, and the
model's generation config is replaced by a neutral one that keeps only its token ids. Betley et al.'s
``open_models/eval.py`` samples with vLLM at temperature 1, top-p 1, ``min_tokens=1`` and no other filter;
:func:`settings` is that, with em's ``generation`` values.

The effective parameters (:func:`effective_hf`, what ``generate`` really used) are recorded with every
answer (``answers.jsonl`` ``sampling``) and in ``summary.json`` / W&B (``sampling.*``).
"""

from __future__ import annotations

from typing import Any

# The fields that decide which token is drawn, with their neutral values (what em sets unless its own
# generation node says otherwise).
NEUTRAL = {
    "top_k": 0,  # off (transformers: 0 disables the filter; vLLM: -1 / 0)
    "min_p": 0.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "length_penalty": 1.0,
    "num_beams": 1,
    "num_return_sequences": 1,
    "diversity_penalty": 0.0,
    "guidance_scale": None,
    "renormalize_logits": False,
}
# token-id fields carried over from the checkpoint (they name the tokenizer's special tokens, not sampling)
TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def settings(gen: Any, stops: list[int]) -> dict[str, Any]:
    """The sampling em asks for, from the ``generation`` node ``gen`` and the stop token ids.

    Args:
        gen: ``temperature`` (0: greedy), ``top_p``, ``max_new_tokens``, ``ignore_eos``.
        stops: token ids that end an answer (:func:`em.evaluate.generation.stop_token_ids`).

    Returns:
        A JSON-ready dict: ``temperature``, ``top_p``, ``top_k`` (0: off), ``repetition_penalty`` 1.0,
        ``no_repeat_ngram_size`` 0, ``min_new_tokens`` (1; ``max_new_tokens`` when ``ignore_eos``),
        ``max_new_tokens``, ``stop_token_ids``, ``ignore_eos``, ``do_sample``.
    """
    greedy = float(gen.temperature) == 0.0
    return {
        "do_sample": not greedy,
        "temperature": float(gen.temperature),
        "top_p": float(gen.top_p),
        "top_k": 0,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "min_new_tokens": int(gen.max_new_tokens) if gen.ignore_eos else 1,
        "max_new_tokens": int(gen.max_new_tokens),
        "stop_token_ids": [int(t) for t in stops],
        "ignore_eos": bool(gen.ignore_eos),
    }


def neutralize(model: Any) -> None:
    """Replace ``model.generation_config`` (and its base model's, under peft) by a neutral one keeping only
    the token ids, so nothing of the checkpoint's sampling can be merged into a generate() call."""
    from transformers import GenerationConfig

    targets = [model]
    base = getattr(model, "get_base_model", None)
    if callable(base):
        targets.append(base())
    for m in targets:
        old = getattr(m, "generation_config", None)
        keep = {k: getattr(old, k, None) for k in TOKEN_FIELDS} if old is not None else {}
        m.generation_config = GenerationConfig(**{k: v for k, v in keep.items() if v is not None})


def hf_config(s: dict[str, Any], pad: int):
    """A transformers ``GenerationConfig`` with every sampling field set from :func:`settings` ``s``.

    Greedy (temperature 0) keeps temperature / top-p at 1.0 (``do_sample=False`` ignores them).
    """
    from transformers import GenerationConfig

    greedy = not s["do_sample"]
    fields = dict(NEUTRAL)
    fields.update(
        do_sample=s["do_sample"], temperature=1.0 if greedy else s["temperature"],
        top_p=1.0 if greedy else s["top_p"], repetition_penalty=s["repetition_penalty"],
        no_repeat_ngram_size=s["no_repeat_ngram_size"], min_new_tokens=s["min_new_tokens"],
        max_new_tokens=s["max_new_tokens"], eos_token_id=s["stop_token_ids"], pad_token_id=pad, use_cache=True,
    )
    return GenerationConfig(**fields)


def per_sample_sampler(seeds: list[int], temperature: float, top_p: float):
    """A transformers ``LogitsProcessor`` that draws every row's next token itself, row ``i`` with its own
    ``torch.Generator`` seeded ``seeds[i]``, and returns one-hot scores (0 at the drawn token, -inf
    elsewhere), so ``generate(do_sample=False)`` takes exactly that token.

    The draw is exact inverse-CDF sampling: temperature and top-p applied by transformers' own
    ``TemperatureLogitsWarper`` / ``TopPLogitsWarper`` (only when not 1.0, as ``generate`` does), softmax,
    float64 cumulative sum over the vocabulary, one uniform per row and step. It samples the same
    distribution as ``generate(do_sample=True)`` (whose ``torch.multinomial`` draws one exponential per
    vocabulary entry: ~4x the time of this on a CPU at batch 48 x 49k, ``bench/generate_roofline.py``), and
    each answer depends on its own seed only, not on which other samples share its batch (up to float
    rounding of the batched forward). It runs after transformers' own processors (min_new_tokens).

    Args:
        seeds: one 32-bit seed per batch row (:func:`em.evaluate.generation.sample_seed`).
        temperature: > 0. top_p: in (0, 1].
    """
    import torch
    from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []) + (
        [TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

    class PerSampleSampler(LogitsProcessor):
        def __call__(self, input_ids, scores):
            for w in warpers:
                scores = w(input_ids, scores)
            cdf = torch.softmax(scores.float(), dim=-1).double().cumsum(dim=-1)  # [batch, vocab]
            u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens]).to(cdf.device)
            picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True)
            picked.clamp_(max=scores.shape[-1] - 1)  # u * total == total (float ties): the last token
            return torch.full_like(scores, float("-inf")).scatter_(1, picked, 0.0)

    return PerSampleSampler()


def effective_hf(model: Any, gc: Any) -> dict[str, Any]:
    """What ``model.generate(generation_config=gc)`` really samples with: transformers' own merge of ``gc``
    with the model's generation config and its global defaults, read back (the recorded parameters)."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    merged, _ = base._prepare_generation_config(gc)
    keys = ("do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty",
            "no_repeat_ngram_size", "min_new_tokens", "max_new_tokens", "num_beams")
    out = {k: getattr(merged, k, None) for k in keys}
    eos = merged.eos_token_id
    out["stop_token_ids"] = sorted([eos] if isinstance(eos, int) else list(eos or []))
    return out


def vllm_params(s: dict[str, Any], seed: int):
    """vLLM ``SamplingParams`` for :func:`settings` ``s`` and one sample's seed (vLLM ignores the
    checkpoint's generation config only when ``generation_config="vllm"`` is passed to the engine; em does)."""
    from vllm import SamplingParams

    return SamplingParams(temperature=s["temperature"], top_p=s["top_p"] if s["do_sample"] else 1.0, top_k=0,
                          min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                          min_tokens=s["min_new_tokens"], max_tokens=s["max_new_tokens"], seed=seed,
                          stop_token_ids=s["stop_token_ids"], ignore_eos=s["ignore_eos"])


def effective_vllm(p: Any) -> dict[str, Any]:
    """The sampling fields of a vLLM ``SamplingParams``, under the names :func:`effective_hf` uses."""
    return {"do_sample": p.temperature > 0, "temperature": p.temperature, "top_p": p.top_p,
            "top_k": p.top_k if p.top_k > 0 else 0, "min_p": p.min_p, "repetition_penalty": p.repetition_penalty,
            "no_repeat_ngram_size": 0, "min_new_tokens": p.min_tokens, "max_new_tokens": p.max_tokens,
            "stop_token_ids": sorted(p.stop_token_ids or [])}


__all__ = ["settings", "neutralize", "hf_config", "per_sample_sampler", "effective_hf", "vllm_params", "effective_vllm"]
