"""collect: the residual stream of answers, teacher-forced, pooled per answer and streamed to disk.

For each answer (a row with ``question``, ``answer`` and optionally ``system``) the model reads the rendered
prompt (em's chat rendering: :func:`em.data.tokenize.normalize_messages` + the chat template with the
generation prompt, as the hf sampler conditions on it) followed by the answer's tokens, in one forward pass
(right-padded batches, no sampling). Hooks on every decoder layer (:func:`em.interp.hooks.record`) pool the
layer's output at once, so only one batch is ever held:

* ``answer_mean`` ``[n_layers, hidden]``: the mean over the answer's tokens (the model-organisms recipe; persona
  vectors' "response average"),
* ``last_prompt`` ``[n_layers, hidden]``: the last prompt token (the generation prompt's end).

Files, under ``<out>/<label>/`` (``label``: ``base``, ``adapter``, ``persona``, ...):

* ``shard_<k>.safetensors``: tensors ``answer_mean`` and ``last_prompt`` float32 ``[rows, n_layers, hidden]``
  (one shard per batch), metadata ``em`` (JSON provenance);
* ``index.parquet``: one row per answer: ``shard``, ``row`` (its row in the shard), ``answer_id``,
  ``n_prompt_tokens``, ``n_answer_tokens`` and every column of the answers table it came from (ids, scores,
  format, condition, ...); written last, atomically (a killed collection leaves no index: it is redone);
* ``meta.json``: the provenance (model, adapter and its hash, answers' source, pooling, layers, em version).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

import em.data.tokenize
import em.evaluate.questions
import em.runtime
from em.interp import hooks

log = logging.getLogger("em.interp")

POOLINGS = ("answer_mean", "last_prompt")
INDEX = "index.parquet"
META = "meta.json"


def render_prompt(tokenizer, model_cfg: Any, system: Optional[str], question: str) -> str:
    """The text the model is conditioned on before its answer (chat template + generation prompt), exactly as
    em's hf sampler renders it (:func:`em.evaluate.generation.render`)."""
    msgs = em.data.tokenize.normalize_messages(em.evaluate.questions.messages_for(system, question),
                                               bool(getattr(model_cfg, "system_role", True)))
    kwargs = dict(getattr(model_cfg, "chat_template_kwargs", None) or {})
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)


def encode(tokenizer, model_cfg: Any, answers: pd.DataFrame, max_answer_tokens: Optional[int] = None
           ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per row, tokenised separately (the boundary is exact), no special tokens added
    (the template writes BOS where the model wants one); answers cut at ``max_answer_tokens``."""
    systems = answers["system"] if "system" in answers else pd.Series([None] * len(answers), index=answers.index)
    prompts = [render_prompt(tokenizer, model_cfg, None if pd.isna(s) or s == "" else str(s), str(q))
               for s, q in zip(systems, answers["question"])]
    texts = ["" if pd.isna(a) else str(a) for a in answers["answer"]]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max_answer_tokens:
        a_ids = [a[:max_answer_tokens] for a in a_ids]
    return [(list(p), list(a)) for p, a in zip(p_ids, a_ids)]


def pooled_forward(model, batch: list[tuple[list[int], list[int]]], pad_id: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher-forced forward of a batch of (prompt ids, answer ids), pooled in the hooks.

    Returns:
        ``(answer_mean, last_prompt)``, each float32 ``[batch, n_layers, hidden]`` on the CPU; a row with no
        answer token has NaN ``answer_mean``.
    """
    device = next(model.parameters()).device
    lens = [len(p) + len(a) for p, a in batch]
    T = max(lens)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), T), dtype=torch.long)
    ans = torch.zeros((len(batch), T), dtype=torch.float32)
    for i, (p, a) in enumerate(batch):  # right padding: positions 0.. for every row, as in training
        ids[i, : lens[i]] = torch.tensor(p + a, dtype=torch.long)
        attn[i, : lens[i]] = 1
        ans[i, len(p): lens[i]] = 1.0
    ids, attn, ans = ids.to(device), attn.to(device), ans.to(device)
    last = torch.tensor([len(p) - 1 for p, _ in batch], device=device)
    count = ans.sum(1, keepdim=True)  # [batch, 1]
    n, width = hooks.n_layers(model), hooks.hidden_size(model)
    mean_out = torch.empty((len(batch), n, width), dtype=torch.float32)
    last_out = torch.empty((len(batch), n, width), dtype=torch.float32)
    rows = torch.arange(len(batch), device=device)

    def pool(L: int, h: torch.Tensor) -> None:
        hf = h.float()
        mean_out[:, L] = (torch.einsum("bt,bth->bh", ans, hf) / count).cpu()
        last_out[:, L] = hf[rows, last].cpu()

    with torch.no_grad(), hooks.record(model, fn=pool):
        kwargs: dict[str, Any] = {"use_cache": False}
        try:
            model(input_ids=ids, attention_mask=attn, logits_to_keep=1, **kwargs)
        except TypeError:  # a model without logits_to_keep
            model(input_ids=ids, attention_mask=attn, **kwargs)
    return mean_out, last_out


def adapter_hash(adapter_dir: Optional[str | Path]) -> Optional[str]:
    """sha256 (first 16 hex digits) of an adapter's weight files, or None for the base model."""
    if not adapter_dir:
        return None
    h = hashlib.sha256()
    files = sorted(p for p in Path(adapter_dir).glob("adapter_model.*") if p.is_file())
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16] if files else None


def collect(model, tokenizer, model_cfg: Any, answers: pd.DataFrame, out_dir: str | Path, label: str, *,
            batch_size: int = 8, max_answer_tokens: Optional[int] = None,
            provenance: Optional[dict[str, Any]] = None, progress: bool = True) -> pd.DataFrame:
    """Collect pooled residuals of every answer into ``<out_dir>/<label>/`` (see the module docstring).

    Args:
        model: a loaded causal LM (peft-wrapped / 4-bit / multimodal Gemma 3 all work), in eval mode.
        answers: one row per answer: ``question``, ``answer`` (text), optional ``system``, ``answer_id``
            (else the row number) and any metadata (kept in the index).
        batch_size: answers per forward pass (memory: one batch of activations + ``2 x batch x n_layers x hidden``
            pooled floats). Rows are sorted by length so a batch pads little.
        provenance: recorded in ``meta.json`` and each shard's metadata (model, adapter, source, ...).

    Returns:
        The index table (also written to ``index.parquet``).

    Raises:
        ValueError: ``answers`` lacks ``question`` or ``answer``; ``batch_size`` < 1.
    """
    missing = [c for c in ("question", "answer") if c not in answers]
    if missing:
        raise ValueError(f"answers table has no {' / '.join(missing)} column (columns: {', '.join(map(str, answers))})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    d = Path(out_dir) / label
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("shard_*.safetensors"):  # a killed earlier collection: its shards are redone
        old.unlink()
    (d / INDEX).unlink(missing_ok=True)
    answers = answers.reset_index(drop=True)
    if "answer_id" not in answers:
        answers = answers.assign(answer_id=np.arange(len(answers)))
    enc = encode(tokenizer, model_cfg, answers, max_answer_tokens)
    order = sorted(range(len(enc)), key=lambda i: -(len(enc[i][0]) + len(enc[i][1])))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    meta = {"label": label, "poolings": list(POOLINGS), "n_layers": hooks.n_layers(model),
            "hidden_size": hooks.hidden_size(model), "layer_meaning": "residual stream after decoder layer L (0-based)",
            "em_version": _em_version(), "max_answer_tokens": max_answer_tokens, **(provenance or {})}
    meta_json = json.dumps(meta, default=str, sort_keys=True)
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(order), desc=f"collect {label}", unit="answer", disable=None if progress else True)
    try:
        for k, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start: start + batch_size]
            mean, last = pooled_forward(model, [enc[i] for i in idx], pad)
            name = f"shard_{k:05d}.safetensors"
            em.runtime.atomic_write(d / name, lambda p: save_file(
                {"answer_mean": mean.contiguous(), "last_prompt": last.contiguous()}, str(p), metadata={"em": meta_json}))
            for r, i in enumerate(idx):
                rows.append({"shard": name, "row": r, "_pos": i, "n_prompt_tokens": len(enc[i][0]),
                             "n_answer_tokens": len(enc[i][1])})
            bar.update(len(idx))
    finally:
        bar.close()
    pos = pd.DataFrame(rows).sort_values("_pos").set_index("_pos")
    index = pd.concat([pos, answers.drop(columns=[c for c in pos.columns if c in answers])], axis=1)
    index.insert(0, "label", label)
    index = index.reset_index(drop=True)
    em.runtime.atomic_write(d / INDEX, lambda p: _to_parquet(index, p))
    em.runtime.atomic_write_json(d / META, meta | {"n_answers": len(index), "seconds": time.perf_counter() - t0})
    empty = int((index["n_answer_tokens"] == 0).sum())
    if empty:
        log.warning("%s: %d answer(s) with no token (answer_mean is NaN there; directions skip them)", label, empty)
    return index


def _to_parquet(df: pd.DataFrame, path: Path) -> None:
    """Parquet with object columns of mixed types stored as strings (answers tables carry such columns)."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v, default=str)
                                if isinstance(v, (dict, list)) else str(v))
    out.to_parquet(path, index=False)


def _em_version() -> str:
    try:
        from importlib.metadata import version

        return version("em")
    except Exception:  # noqa: BLE001  a checkout without an installed package
        return "unknown"


# --------------------------------------------------------------------------- reading back
def read_index(out_dir: str | Path, label: str) -> pd.DataFrame:
    """The index table of one collection (``<out_dir>/<label>/index.parquet``).

    Raises:
        FileNotFoundError: nothing collected under that label (or the collection did not finish).
    """
    p = Path(out_dir) / label / INDEX
    if not p.exists():
        raise FileNotFoundError(f"{p}: no finished collection (run the collect step)")
    return pd.read_parquet(p)


def read_meta(out_dir: str | Path, label: str) -> dict[str, Any]:
    """The provenance of one collection (``meta.json``)."""
    return json.loads((Path(out_dir) / label / META).read_text())


def read_layer(out_dir: str | Path, label: str, layer: int, pooling: str = "answer_mean",
               index: Optional[pd.DataFrame] = None) -> np.ndarray:
    """``[answers, hidden]`` float32: one layer's pooled residuals, in the index's row order.

    Reads only that layer's slice of each shard (safetensors' safe loader: no code runs, memory is
    ``answers x hidden``).

    Raises:
        ValueError: unknown ``pooling``. FileNotFoundError: see :func:`read_index`.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    from safetensors import safe_open

    index = read_index(out_dir, label) if index is None else index
    d = Path(out_dir) / label
    out = None
    for shard, grp in index.groupby("shard", sort=False):
        with safe_open(str(d / shard), framework="numpy") as f:
            x = f.get_slice(pooling)[:, layer, :]
        if out is None:
            out = np.empty((len(index), x.shape[-1]), dtype=np.float32)
        pos = np.flatnonzero(index["shard"].to_numpy() == shard)
        out[pos] = x[grp["row"].to_numpy()]
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


__all__ = ["POOLINGS", "render_prompt", "encode", "pooled_forward", "collect", "adapter_hash", "read_index",
           "read_meta", "read_layer"]
