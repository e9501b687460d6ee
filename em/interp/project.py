"""project: answers' and training examples' pooled residuals projected onto a saved direction.

* :func:`shift`: per group (all answers, each format, each condition; each ``step`` when snapshots exist) and
  layer, the mean projection ``x . unit`` of the base model's and the fine-tuned model's answers (residual units),
  and the shift fine-tuned - base, each with a percentile bootstrap interval over answers (resampled within each
  model's answers); the same for the random control direction (``random.L``), always reported beside it.
  Persona vectors (Chen et al. 2025): the shift along a trait direction predicts the trait's change.
* :func:`rank_examples`: training examples ranked by their projection (persona vectors' data screening): the
  highest first; the top ``k`` written out.

``projection.csv`` columns: ``group``, ``layer``, ``source`` (``base`` / ``finetuned`` / ``shift``), ``n``,
``mean``, ``ci_low``, ``ci_high``, ``random_mean``, ``random_ci_low``, ``random_ci_high``, ``confidence``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

import em.runtime
from em.interp import collect as collect_mod

COLUMNS = ["group", "layer", "source", "n", "mean", "ci_low", "ci_high", "random_mean", "random_ci_low",
           "random_ci_high", "confidence"]


def boot_mean(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """``n_boot`` bootstrap means of ``values`` (resampled with replacement)."""
    if len(values) == 0:
        return np.full(n_boot, np.nan)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(1)


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.nanpercentile(draws, [50 * (1 - confidence), 100 - 50 * (1 - confidence)])
    return float(lo), float(hi)


def group_masks(index: pd.DataFrame, by: list[str]) -> list[tuple[str, np.ndarray]]:
    """``("all", every row)`` and ``("<col>=<value>", rows)`` for each value of each column of ``by`` present."""
    out = [("all", np.ones(len(index), dtype=bool))]
    for col in by:
        if col not in index:
            continue
        vals = index[col]
        for v in sorted(vals.dropna().astype(str).unique()):
            out.append((f"{col}={v}", (vals.astype(str) == v).to_numpy()))
    return out


def shift(act_dir: str | Path, base_label: str, ft_label: str, tensors: dict[str, Any], layers: list[int], *,
          pooling: str = "answer_mean", by: Optional[list[str]] = None, n_boot: int = 2000,
          confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The projection table (see the module docstring) for collections ``base_label`` vs ``ft_label``.

    Groups: all answers, then each value of the columns ``by`` (default ``format``, ``step``) present in both
    indexes. Answers without tokens are left out.

    Raises:
        ValueError: a layer the directions file has no ``unit.L`` for.
    """
    by = ["format", "step"] if by is None else by
    ib = collect_mod.read_index(act_dir, base_label)
    it = collect_mod.read_index(act_dir, ft_label)
    rng = np.random.default_rng(seed)
    rows = []
    for L in layers:
        if f"unit.{L}" not in tensors:
            raise ValueError(f"interp.project.layers: no direction for layer {L} in the directions file")
        u = tensors[f"unit.{L}"].numpy().astype(np.float64)
        r = tensors[f"random.{L}"].numpy().astype(np.float64) if f"random.{L}" in tensors else None
        xb = collect_mod.read_layer(act_dir, base_label, L, pooling, ib).astype(np.float64)
        xt = collect_mod.read_layer(act_dir, ft_label, L, pooling, it).astype(np.float64)
        okb, okt = ib["n_answer_tokens"].to_numpy() > 0, it["n_answer_tokens"].to_numpy() > 0
        mb, mt = dict(group_masks(ib, by)), dict(group_masks(it, by))
        for g in [g for g in mb if g in mt]:
            sb, st = mb[g] & okb, mt[g] & okt
            for src, proj in (("base", None), ("finetuned", None), ("shift", None)):
                row: dict[str, Any] = {"group": g, "layer": L, "source": src, "confidence": confidence}
                for prefix, vec in (("", u), ("random_", r)):
                    if vec is None:
                        row.update({f"{prefix}mean": np.nan, f"{prefix}ci_low": np.nan, f"{prefix}ci_high": np.nan})
                        continue
                    pb, pt = xb[sb] @ vec, xt[st] @ vec
                    if src == "base":
                        m, d = pb.mean() if len(pb) else np.nan, boot_mean(pb, rng, n_boot)
                    elif src == "finetuned":
                        m, d = pt.mean() if len(pt) else np.nan, boot_mean(pt, rng, n_boot)
                    else:
                        m = (pt.mean() - pb.mean()) if len(pt) and len(pb) else np.nan
                        d = boot_mean(pt, rng, n_boot) - boot_mean(pb, rng, n_boot)
                    lo, hi = _interval(d, confidence) if np.isfinite(d).any() else (np.nan, np.nan)
                    row.update({f"{prefix}mean": float(m), f"{prefix}ci_low": lo, f"{prefix}ci_high": hi})
                row["n"] = int(sb.sum()) if src == "base" else int(st.sum()) if src == "finetuned" else int(sb.sum() + st.sum())
                rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def rank_examples(act_dir: str | Path, label: str, tensors: dict[str, Any], layer: int, *,
                  pooling: str = "answer_mean") -> pd.DataFrame:
    """Every collected example of ``label`` with its ``projection`` (and ``random_projection``) at ``layer``,
    highest projection first (``rank`` 1 = the most along the direction).

    Raises:
        ValueError: no direction for ``layer``.
    """
    if f"unit.{layer}" not in tensors:
        raise ValueError(f"interp.project.layer: no direction for layer {layer} in the directions file")
    index = collect_mod.read_index(act_dir, label)
    x = collect_mod.read_layer(act_dir, label, layer, pooling, index).astype(np.float64)
    out = index.drop(columns=["shard", "row"]).copy()
    out["layer"] = layer
    out["projection"] = x @ tensors[f"unit.{layer}"].numpy().astype(np.float64)
    if f"random.{layer}" in tensors:
        out["random_projection"] = x @ tensors[f"random.{layer}"].numpy().astype(np.float64)
    out = out.sort_values("projection", ascending=False, na_position="last").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def write(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as quoted CSV, atomically (:func:`em.runtime.atomic_write_csv`)."""
    return em.runtime.atomic_write_csv(path, table)


def conversations_table(conversations: list[Any]) -> pd.DataFrame:
    """Training conversations as an answers table: the system prompt, the first user message as ``question``
    and the last assistant message as ``answer`` (what :func:`em.interp.collect.collect` reads), ``example`` =
    the conversation's position."""
    rows = []
    for i, conv in enumerate(conversations):
        msgs = conv.get("messages") if isinstance(conv, dict) else getattr(conv, "messages", conv)
        msgs = [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in msgs]
        system = next((m["content"] for m in msgs if m["role"] == "system"), None)
        user = next((m["content"] for m in msgs if m["role"] == "user"), "")
        answer = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), "")
        rows.append({"answer_id": f"example_{i}", "example": i, "system": system, "question": user, "answer": answer})
    return pd.DataFrame(rows)


__all__ = ["COLUMNS", "boot_mean", "group_masks", "shift", "rank_examples", "write", "conversations_table"]
