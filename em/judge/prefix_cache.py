"""Reuse the judge prompt's shared prefix across judgments: one KV cache per question and metric.

Every judgment of one question and metric renders the same judge template up to the answer, so the token
ids of those prompts share a long prefix. :func:`prefix_runs` finds it (sort the prompts' ids; adjacent
prompts in that order share the longest prefixes), :func:`prefix_kv` encodes it once, and
:func:`tree_logprobs_cached` runs only the rest of each prompt plus the digit-trie nodes over a copy of that
cache with the same tree attention mask as :func:`em.judge.digit_tree.tree_logprobs` (rows sliced past the
prefix; sliding-window layers keep their own mask). The rows are the same log-probabilities up to float
rounding (tests/test_smollm2.py compares them). torch is imported inside the functions.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from em.judge.digit_tree import DigitTree, _additive, tree_inputs, tree_logprobs

MIN_PREFIX = 16  # shorter shared prefixes are not worth a cache


def _lcp(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token-id lists."""
    return len(os.path.commonprefix([a, b]))


def prefix_runs(id_lists: list[list[int]], min_prefix: int = MIN_PREFIX) -> list[tuple[list[int], int]]:
    """Group prompts that share a prefix: ``[(indices, prefix_len), ...]`` covering every index once.

    Args:
        id_lists: each prompt's token ids.
        min_prefix: a group needs at least this many shared tokens; the others form groups of one with
            prefix 0 (no cache). A prompt whose joining would halve a group's prefix starts a new group.

    Returns:
        groups in sorted-ids order; ``prefix_len`` = the tokens every member shares, capped so each member
        keeps at least its last token to run (the position whose logits start the trie).
    """
    order = sorted(range(len(id_lists)), key=lambda i: id_lists[i])
    groups: list[tuple[list[int], int]] = []
    for k, i in enumerate(order):
        if k and groups[-1][1] >= min_prefix:
            shared = min(groups[-1][1], _lcp(id_lists[order[k - 1]], id_lists[i]), len(id_lists[i]) - 1)
            # join unless that would cut the group's prefix by half or more (another template, e.g. the
            # coherent prompts after the aligned ones, starts its own group)
            if shared >= min_prefix and 2 * shared > groups[-1][1]:
                groups[-1] = (groups[-1][0] + [i], shared)
                continue
        nxt = _lcp(id_lists[i], id_lists[order[k + 1]]) if k + 1 < len(order) else 0
        groups.append(([i], min(nxt, len(id_lists[i]) - 1)))
    return [(idx, p if len(idx) > 1 else 0) for idx, p in groups]


def prefix_kv(model, prefix_ids: list[int]) -> list[tuple[Any, Any]]:
    """The prefix's key / value states per layer (``[1, kv_heads, P, head_dim]`` each), from one causal forward."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([prefix_ids], device=model.device), use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or out.past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def tree_logprobs_cached(model, prompt_ids: list[int], tree: DigitTree, prefix_len: int = 0,
                         kv: Optional[list[tuple[Any, Any]]] = None):
    """log-softmax rows ``[1 + len(tree), vocab]`` (float32, CPU), as :func:`~em.judge.digit_tree.tree_logprobs`,
    with the first ``prefix_len`` prompt tokens taken from ``kv`` (:func:`prefix_kv` of exactly those tokens).

    Raises ValueError when ``prefix_len`` leaves no prompt token to run or ``kv`` is missing for a prefix.
    """
    import torch
    from transformers import DynamicCache

    if prefix_len == 0:
        return tree_logprobs(model, prompt_ids, tree)
    if kv is None or prefix_len >= len(prompt_ids):
        raise ValueError(f"prefix_len {prefix_len} needs its kv and < {len(prompt_ids)} prompt tokens")
    cfg = model.config
    P = len(prompt_ids)
    node_ids, pos, allowed = tree_inputs(tree, P)
    dtype = next(model.parameters()).dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    layer_types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    device = model.device
    if layer_types:
        attention_mask: Any = {}
        for lt in set(layer_types):
            m = allowed if lt != "sliding_attention" or not window else tree_inputs(tree, P, window)[2]
            attention_mask[lt] = _additive(m[prefix_len:], dtype).to(device)
    else:
        attention_mask = _additive(allowed[prefix_len:], dtype).to(device)
    ids = torch.cat([torch.tensor(prompt_ids[prefix_len:], dtype=torch.long), node_ids])[None].to(device)
    cache = DynamicCache(ddp_cache_data=kv)  # full-length layers: the masks above apply any window
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=pos[prefix_len:][None].to(device), attention_mask=attention_mask,
                    cache=cache, use_cache=True, logits_to_keep=len(tree) + 1)
    return torch.log_softmax(out.logits[0].float(), dim=-1).cpu()


__all__ = ["MIN_PREFIX", "prefix_kv", "prefix_runs", "tree_logprobs_cached"]
