"""The local judge's digit trie: exact probabilities of the replies 0..100 from one forward pass.

GPT-4o has one token per integer up to 100, so the reference reads the score off one position's top
logprobs. Open tokenizers (Gemma, Qwen) write "87" as "8" "7", so one position does not hold it. This module
computes, for every n in 0..100, the exact probability that the judge's reply starts with the number n:

    P(n) = sum over token paths spelling n of P(path) * P(next token does not continue the digits)
         + sum over tokens like "87." whose digits end inside the token

(numbers are canonical decimals: "7", not "07"; whitespace is allowed before the first digit). The paths
form a digit trie (for single-digit tokenizers: 10 + 90 + 1 nodes). All trie nodes are appended to the
prompt and evaluated in ONE forward pass with a tree attention mask: each node attends to the whole prompt
and to its own ancestors only, at the position it would have in its own sequence. So the prompt is
encoded once and shared by every branch (the job a KV cache does), and the cost is one forward over
prompt + ~100 tokens, not ~100 forwards. torch is imported inside the functions (this module is imported
when the judge is built from config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional


def _split_digits(text: str) -> tuple[str, str]:
    """(the leading run of ASCII digits, the rest)."""
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
        """The trie of every token path spelling a canonical integer 0..max_value for ``tokenizer``.

        Args:
            tokenizer: a transformers tokenizer (its vocabulary is scanned once: tokens holding a digit).
            max_value: the largest integer (the reference scale: 100).
        """
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
        """The number of trie nodes (tokens appended to the prompt in the tree forward)."""
        return len(self.token)


def combine(tree: DigitTree, logprobs) -> tuple[dict[int, float], float]:
    """The exact integer distribution from the tree forward's rows.

    Args:
        tree: the digit trie.
        logprobs: float tensor [1 + len(tree), vocab] of log-softmax rows: row 0 = the next token after the
            prompt (the root), row 1 + i = the next token after node i's path.

    Returns:
        ({n: P(reply is the number n)} for n in 0..max_value, P(reply starts with a digit)). P(n) sums the
        paths spelling n, each times P(no further digit), plus tokens whose digits end inside them ("87.").
    """
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
    """The tree forward's inputs for a prompt of ``prompt_len`` tokens followed by every trie node.

    Returns:
        (node token ids [N], position ids [L], boolean mask [L, L], True = may attend), L = prompt_len + N.
        Prompt tokens attend causally; each node attends to the whole prompt and its own ancestors, at the
        position it would have in its own sequence. ``sliding_window`` (tokens) also hides keys that far back.
    """
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
    """A boolean mask [L, L] as the additive float mask [1, 1, L, L] transformers takes (0 or dtype's min)."""
    import torch

    out = torch.zeros(mask.shape, dtype=dtype)
    out.masked_fill_(~mask, torch.finfo(dtype).min)
    return out[None, None]


def tree_logprobs(model, prompt_ids: list[int], tree: DigitTree):
    """log-softmax rows [1 + len(tree), vocab] (float32, CPU) = [root, node 0, node 1, ...] from ONE forward
    pass over the prompt + every trie node with the tree attention mask (per layer type for models with
    sliding-window layers, e.g. Gemma 3).

    Args:
        model: a transformers causal LM (its ``config.layer_types`` / ``sliding_window`` are honoured).
        prompt_ids: the chat-formatted prompt's token ids.
        tree: the digit trie for the model's tokenizer.
    """
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
    """The same rows as :func:`tree_logprobs`, each from its own plain causal forward over prompt + path
    (1 + len(tree) forwards: the test's and the benchmark's reference)."""
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


__all__ = ["DigitTree", "bruteforce_logprobs", "combine", "tree_inputs", "tree_logprobs"]
