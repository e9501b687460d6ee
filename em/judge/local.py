"""A judge run in-process with transformers: exact probabilities of the answers 0..100.

GPT-4o has one token per integer up to 100, so the reference reads the score off one position's top
logprobs. Open tokenizers (Gemma, Qwen) write "87" as "8" "7", so one position does not hold it. This judge
computes, for every n in 0..100, the exact probability that the judge's reply starts with the number n:

    P(n) = sum over token paths spelling n of P(path) * P(next token does not continue the digits)
         + sum over tokens like "87." whose digits end inside the token

(numbers are canonical decimals: "7", not "07"; whitespace is allowed before the first digit). The paths
form a digit trie (for single-digit tokenizers: 10 + 90 + 1 nodes). All trie nodes are appended to the
prompt and evaluated in ONE forward pass with a tree attention mask: each node attends to the whole prompt
and to its own ancestors only, at the position it would have in its own sequence. So the prompt is
encoded once and shared by every branch (the job a KV cache does), and the cost is one forward over
prompt + ~100 tokens, not ~100 forwards. Then the reference math: the expectation over 0..100 and no score
when the integers carry < 0.25 of the probability.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from em.errors import ConfigError
from em.judge.base import Judge, OnResult
from em.judge.scoring import MIN_NUMBER_MASS, SPECIALS, Judgment, JudgeRequest, expectation

log = logging.getLogger("em.judge")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
METHOD = "integer-tree-v1"  # part of the cache identity: change it when the scoring changes


# --------------------------------------------------------------------------- the digit trie
def _split_digits(text: str) -> tuple[str, str]:
    i = 0
    while i < len(text) and text[i] in "0123456789":
        i += 1
    return text[:i], text[i:]


@dataclass
class DigitTree:
    """Token paths that spell the integers 0..max_value, for one tokenizer (built once, static)."""

    parent: list[int]  # node -> parent node (-1: the root, i.e. the prompt's last position)
    token: list[int]  # node -> token id
    depth: list[int]  # node -> number of tokens on its path
    string: list[str]  # node -> the digits spelled so far
    root_digit_ids: list[int]  # first tokens (after optional whitespace) that start with a digit
    inner_digit_ids: list[int]  # tokens that start with a digit (continuation of a digit run)
    # (from node or -1, token id, integer) for tokens whose digits end inside them ("87." / "5 ")
    direct: list[tuple[int, int, int]]
    max_value: int

    @classmethod
    def build(cls, tokenizer, max_value: int = 100) -> "DigitTree":
        valid = {str(n) for n in range(max_value + 1)}
        root: dict[int, tuple[str, str]] = {}
        inner: dict[int, tuple[str, str]] = {}
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(tokenizer.all_special_ids)
        # A token's text as it reads after other text: sentencepiece decoders drop the leading space of a
        # sequence's first token ("▁" + "5" -> "5"), which would make "4 5" read as 45.
        anchor = tokenizer("a", add_special_tokens=False)["input_ids"][-1:]
        lead = tokenizer.decode(anchor)
        for tid, raw in enumerate(vocab):
            # Decoding all ~260k ids one by one is slow: only tokens whose raw form holds a digit can matter.
            if raw is None or tid in special or not any(c in "0123456789" for c in raw):
                continue
            text = tokenizer.decode(anchor + [tid])
            text = text[len(lead):] if text.startswith(lead) else tokenizer.decode([tid])
            d, rest = _split_digits(text)
            if d:
                inner[tid] = (d, rest)
            d, rest = _split_digits(text.lstrip())
            if d:
                root[tid] = (d, rest)
        parent, token, depth, string, direct = [], [], [], [], []
        frontier = [(-1, "")]
        while frontier:
            nxt = []
            for node, s in frontier:
                for tid, (d, rest) in (root if node == -1 else inner).items():
                    q = s + d
                    if q not in valid:
                        continue  # "07", "101", "1000": not a canonical 0..100 (mass counted as overflow)
                    if rest:
                        direct.append((node, tid, int(q)))
                    else:
                        parent.append(node)
                        token.append(tid)
                        depth.append(1 if node == -1 else depth[node] + 1)
                        string.append(q)
                        nxt.append((len(token) - 1, q))
            frontier = nxt
        return cls(parent, token, depth, string, sorted(root), sorted(inner), direct, max_value)

    def __len__(self) -> int:
        return len(self.token)


def combine(tree: DigitTree, logprobs) -> tuple[dict[int, float], float]:
    """({n: P(n)}, P(reply starts with a digit)) from log-softmax rows: row 0 = root, row 1+i = node i."""
    import torch

    lp = logprobs.double()
    probs = lp.exp()
    root_digit = torch.tensor(tree.root_digit_ids, dtype=torch.long)
    inner_digit = torch.tensor(tree.inner_digit_ids, dtype=torch.long)
    continue_mass = probs[1:, inner_digit].sum(-1) if len(inner_digit) else torch.zeros(len(tree))
    path_lp = [0.0] * len(tree)
    dist: dict[int, float] = {n: 0.0 for n in range(tree.max_value + 1)}
    for i in range(len(tree)):  # parents come before children (breadth-first build)
        par = tree.parent[i]
        path_lp[i] = (0.0 if par == -1 else path_lp[par]) + float(lp[par + 1, tree.token[i]])
        end = max(0.0, 1.0 - float(continue_mass[i]))
        dist[int(tree.string[i])] += math.exp(path_lp[i]) * end
    for node, tid, n in tree.direct:
        dist[n] += math.exp((0.0 if node == -1 else path_lp[node]) + float(lp[node + 1, tid]))
    starts_with_digit = float(probs[0, root_digit].sum()) if len(root_digit) else 0.0
    return dist, starts_with_digit


def tree_inputs(tree: DigitTree, prompt_len: int, sliding_window: Optional[int] = None):
    """Node token ids, position ids and the boolean tree mask [L, L] (True = may attend) for prompt + nodes."""
    import torch

    n = len(tree)
    L = prompt_len + n
    allowed = torch.zeros(L, L, dtype=torch.bool)
    allowed[:prompt_len, :prompt_len] = torch.ones(prompt_len, prompt_len, dtype=torch.bool).tril()
    allowed[prompt_len:, :prompt_len] = True
    for i in range(n):
        j = i
        while j != -1:  # the node itself and its ancestors
            allowed[prompt_len + i, prompt_len + j] = True
            j = tree.parent[j]
    pos = torch.cat([torch.arange(prompt_len), prompt_len - 1 + torch.tensor(tree.depth, dtype=torch.long)])
    if sliding_window:
        allowed = allowed & ((pos[:, None] - pos[None, :]) < sliding_window)
    return torch.tensor(tree.token, dtype=torch.long), pos, allowed


def _additive(mask, dtype):
    import torch

    out = torch.zeros(mask.shape, dtype=dtype)
    out.masked_fill_(~mask, torch.finfo(dtype).min)
    return out[None, None]


def tree_logprobs(model, prompt_ids: list[int], tree: DigitTree):
    """log-softmax rows [root, node 0, node 1, ...] from one forward pass over prompt + trie nodes."""
    import torch

    cfg = model.config
    P = len(prompt_ids)
    node_ids, pos, allowed = tree_inputs(tree, P)
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    layer_types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    device = model.device
    if layer_types:
        masks = {}
        for lt in set(layer_types):
            m = allowed if lt != "sliding_attention" or not window else tree_inputs(tree, P, window)[2]
            masks[lt] = _additive(m, dtype).to(device)
        attention_mask: Any = masks
    else:
        attention_mask = _additive(allowed, dtype).to(device)
    ids = torch.cat([torch.tensor(prompt_ids, dtype=torch.long), node_ids])[None].to(device)
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=pos[None].to(device), attention_mask=attention_mask,
                    use_cache=False, logits_to_keep=len(tree) + 1)
    return torch.log_softmax(out.logits[0].float(), dim=-1).cpu()


def bruteforce_logprobs(model, prompt_ids: list[int], tree: DigitTree):
    """The same rows, each from its own plain causal forward over prompt + path (the test's reference)."""
    import torch

    rows = []
    paths = [[]]
    for i in range(len(tree)):
        path, j = [], i
        while j != -1:
            path.append(tree.token[j])
            j = tree.parent[j]
        paths.append(path[::-1])
    with torch.no_grad():
        for path in paths:
            ids = torch.tensor([prompt_ids + path], dtype=torch.long, device=model.device)
            logits = model(input_ids=ids, use_cache=False).logits[0, -1].float()
            rows.append(torch.log_softmax(logits, dim=-1).cpu())
    return torch.stack(rows)


# --------------------------------------------------------------------------- the judge
def load_model_config(name: str, path: Optional[str] = None):
    """A ModelConfig from conf/model/<name>.yaml (the judge names a model the way model=... does)."""
    from omegaconf import OmegaConf

    from em.config import ModelConfig

    file = CONF_DIR / "model" / f"{name}.yaml"
    if not file.is_file():
        choices = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise ConfigError(f"judge.model: no model config {name!r}; choices: {', '.join(choices)}")
    node = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(file))
    if path:
        node.path = path
    return OmegaConf.to_object(node)


class LocalJudge(Judge):
    def __init__(self, name: str = "local", model: str = "gemma3_270m", path: Optional[str] = None,
                 quantization: str = "none", cache_dir: Optional[str] = None, max_value: int = 100,
                 top_logprobs: int = 20, min_number_mass: float = MIN_NUMBER_MASS):
        if quantization not in ("none", "nf4"):
            raise ConfigError(f"judge.quantization: none or nf4, got {quantization!r}")
        self.name = name
        self.model_cfg = load_model_config(model, path)
        self.quantization = quantization
        self.cache_dir = cache_dir or str(Path.home() / ".cache" / "em")
        self.max_value = max_value
        self.top_logprobs = top_logprobs
        src = path or self.model_cfg.hub_id or self.model_cfg.name
        if not 0.0 <= min_number_mass <= 1.0:
            raise ConfigError(f"judge.min_number_mass: must be in [0, 1], got {min_number_mass}")
        # Below this share of probability on the integers the answer is unscored. The reference 0.25 is the
        # only setting for measurements; smoke runs of random-weight judges lower it to exercise the pipeline.
        self.min_number_mass = min_number_mass
        self.identity = f"local|{self.model_cfg.name}|{src}|{quantization}|{METHOD}" + (
            "" if min_number_mass == MIN_NUMBER_MASS else f"|min_mass={min_number_mass:g}")
        self._model = self._tok = self._tree = None
        self.forward_seconds = 0.0

    def load(self) -> None:
        if self._model is not None:
            return
        from em import models
        from em.config import QuantizationConfig

        q = QuantizationConfig(name=self.quantization, load_in_4bit=self.quantization == "nf4")
        source = models.model_dir(self.model_cfg, self.cache_dir)
        self._tok = models.load_tokenizer(self.model_cfg, self.cache_dir, source)
        self._model = models.load_model(self.model_cfg, q, self.cache_dir, source).eval()
        if models.has_cuda() and not q.load_in_4bit:
            self._model = self._model.to("cuda")
        self._tree = DigitTree.build(self._tok, self.max_value)
        log.info("local judge %s: %d trie nodes", self.name, len(self._tree))

    def prompt_ids(self, prompt: str) -> list[int]:
        from em.data.tokenize import normalize_messages

        msgs = normalize_messages([{"role": "user", "content": prompt}], self.model_cfg.system_role)
        text = self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                             **self.model_cfg.chat_template_kwargs)
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def judge_prompt(self, req: JudgeRequest) -> Judgment:
        import time

        import torch

        self.load()
        ids = self.prompt_ids(req.prompt)
        t0 = time.perf_counter()
        rows = tree_logprobs(self._model, ids, self._tree)
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
        raw = {"top": top, "p": {n: p for n, p in dist.items() if p > 1e-6}, "digit_mass": digit_mass}
        return Judgment(score=score, special=special, reason=reason, number_mass=mass, raw=raw)

    def run(self, requests: list[JudgeRequest], on_result: OnResult, progress: bool = True) -> None:
        from tqdm.auto import tqdm

        self.load()
        for i, req in enumerate(tqdm(requests, desc=f"judge {self.name}", unit="req", disable=not progress,
                                     leave=False)):
            on_result(i, self.judge_prompt(req))

    def close(self) -> None:
        self._model = None
