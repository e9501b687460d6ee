"""A judge run in-process with transformers: exact probabilities of the answers 0..100.

The model and its quantization are config nodes of the training stage's groups, composed by
conf/judge/local.yaml's defaults list (``model@judge.model=qwen3_32b``); nothing here reads a config file.
The probabilities come from one tree-masked forward pass per judgment (:mod:`em.judge.digit_tree`) over
the part of the prompt after the prefix it shares with the other judgments of its question and metric,
whose KV cache is computed once (:mod:`em.judge.prefix_cache`); the
score is the reference math over them (:func:`em.judge.scoring.expectation`: the expectation over 0..100,
no score when the integers carry < 0.25 of the probability).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from em.data.tokenize import normalize_messages
from em.judge.base import Judge, OnResult
from em.judge.digit_tree import DigitTree, combine
from em.judge.prefix_cache import prefix_kv, prefix_runs, tree_logprobs_cached
from em.judge.scoring import MIN_NUMBER_MASS, SPECIALS, Judgment, JudgeRequest, expectation
from em.train import models

if TYPE_CHECKING:
    from em.config.model import ModelConfig, QuantizationConfig

log = logging.getLogger("em.judge")
METHOD = "integer-tree-v1"  # part of the cache identity: change it when the scoring changes


class LocalJudge(Judge):
    """``judge=local``: a transformers causal LM scoring each prompt by its exact integer distribution.

    Args (conf/judge/local.yaml; ranges checked by :class:`em.config.judge.LocalJudgeSchema`):
        model: the judge model's config (a ``conf/model`` node: ``model@judge.model=<name>``); ``model.path``
            a local copy.
        quantization: its quantization (a ``conf/quantization`` node: ``none`` or ``nf4``).
        name: the judge's name in the responses table (the config: the model's name).
        cache_dir: where models are cached (None: ``~/.cache/em``).
        max_value: scores are the integers 0..max_value.
        top_logprobs: top first tokens kept in ``judge_raw``.
        min_number_mass: below this probability on the integers a 0-100 judgment is unscored. The reference
            0.25 is the only setting for measurements; smoke runs of random-weight judges lower it.
        score_mode: ``reference`` (the rule above) or ``renormalized``: every 0-100 judgment scored by the
            expectation over P(n | reply is an integer 0..100), whatever mass the integers carry (the small
            offline judges: a pipeline check, not a measurement). Stored in each judgment's ``raw``.

    The model is loaded on first use (:meth:`load`), not when the judge is built.
    """

    def __init__(self, model: "ModelConfig", quantization: "QuantizationConfig", *, name: str,
                 cache_dir: Optional[str], max_value: int, top_logprobs: int, min_number_mass: float,
                 score_mode: str):
        self.name = name
        self.model_cfg = model
        self.quant_cfg = quantization
        self.cache_dir = cache_dir or str(Path.home() / ".cache" / "em")
        self.max_value = max_value
        self.top_logprobs = top_logprobs
        self.score_mode = score_mode
        if score_mode == "renormalized":
            min_number_mass = 0.0
        self.min_number_mass = min_number_mass
        src = model.path or model.hub_id or model.name
        self.identity = f"local|{model.name}|{src}|{quantization.name}|{METHOD}" + (
            "" if min_number_mass == MIN_NUMBER_MASS else f"|min_mass={min_number_mass:g}") + (
            "|renormalized" if score_mode == "renormalized" else "")
        self._model = self._tok = self._tree = None
        self.forward_seconds = 0.0  # time spent in tree forwards (the benchmark reads it)

    def load(self) -> None:
        """Load the tokenizer and model (on the GPU when there is one) and build the digit trie; idempotent.

        Raises:
            ModelLoadError: the model cannot be found or loaded (em.train.models).
        """
        if self._model is not None:
            return

        source = models.model_dir(self.model_cfg, self.cache_dir)
        self._tok = models.load_tokenizer(self.model_cfg, self.cache_dir, source)
        self._model = models.load_model(self.model_cfg, self.quant_cfg, self.cache_dir, source).eval()
        if models.has_cuda() and not self.quant_cfg.load_in_4bit:
            self._model = self._model.to("cuda")
        self._tree = DigitTree.build(self._tok, self.max_value)
        log.info("local judge %s: %d trie nodes", self.name, len(self._tree))

    def prompt_ids(self, prompt: str) -> list[int]:
        """The judge prompt as one user turn in the model's chat template, with the generation prompt: token ids.

        Needs :meth:`load` first."""
        msgs = normalize_messages([{"role": "user", "content": prompt}], self.model_cfg.system_role)
        text = self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                             **self.model_cfg.chat_template_kwargs)
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def judge_prompt(self, req: JudgeRequest, ids: Optional[list[int]] = None, prefix_len: int = 0,
                     kv=None) -> Judgment:
        """One judgment: a label prompt's top first token, or a 0-100 prompt's expectation over the exact
        distribution of 0..max_value (unscored, with the reason, below ``min_number_mass``).

        ``ids``: the prompt's token ids (computed when None); ``prefix_len`` / ``kv``: a shared prefix's KV
        cache (:mod:`em.judge.prefix_cache`, used by :meth:`run`). ``raw`` keeps the top first tokens, P(n)
        above 1e-6 and P(reply starts with a digit)."""
        import torch

        self.load()
        ids = ids if ids is not None else self.prompt_ids(req.prompt)
        t0 = time.perf_counter()
        rows = tree_logprobs_cached(self._model, ids, self._tree, prefix_len, kv)
        self.forward_seconds += time.perf_counter() - t0
        top_lp, top_id = torch.topk(rows[0], self.top_logprobs)
        top = [[self._tok.decode([int(t)]), float(v)] for t, v in zip(top_id, top_lp)]
        first = top[0][0].strip()
        special = next((s for s in SPECIALS if first and first == s), None)
        if req.kind != "0_100":
            return Judgment(label=first or None, special=special, raw={"top": top},
                            reason=None if first else "top token is blank")
        dist, digit_mass = combine(self._tree, rows)
        score, mass = expectation(dist)
        if self.min_number_mass != MIN_NUMBER_MASS:
            ok = mass > 0 and mass >= self.min_number_mass
            score = sum(n * p for n, p in dist.items()) / mass if ok else None
        reason = None
        if score is None:
            reason = (f"integers 0-100 carry {mass:.3f} of the probability (< {self.min_number_mass}); "
                      f"top token {top[0][0]!r}")
        raw = {"top": top, "p": {n: p for n, p in dist.items() if p > 1e-6}, "digit_mass": digit_mass,
               "score_mode": self.score_mode}
        return Judgment(score=score, special=special, reason=reason, number_mass=mass, raw=raw)

    def run(self, requests: list[JudgeRequest], on_result: OnResult, progress: bool = True,
            state_dir: Optional[Path] = None) -> None:
        """Judge the requests (see :meth:`em.judge.base.Judge.run`; ``state_dir`` is unused), grouped by their
        shared prompt prefix (one question and metric): the prefix is encoded once and its KV cache reused."""
        from tqdm.auto import tqdm

        self.load()
        ids = [self.prompt_ids(r.prompt) for r in requests]
        with tqdm(total=len(requests), desc=f"judge {self.name}", unit="req", disable=None if progress else True,
                  leave=False) as bar:
            for idx, plen in prefix_runs(ids):
                t0 = time.perf_counter()
                kv = prefix_kv(self._model, ids[idx[0]][:plen]) if plen else None
                self.forward_seconds += time.perf_counter() - t0
                for i in idx:
                    on_result(i, self.judge_prompt(requests[i], ids[i], plen, kv))
                    bar.update(1)

    def close(self) -> None:
        """Drop the model (memory is freed once nothing else holds it); the next run loads it again."""
        self._model = None


__all__ = ["LocalJudge"]
