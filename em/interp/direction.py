"""direction: per layer, the mean difference between two groups of answers' residuals, with its statistics.

Groups (``interp.direction.rule``):

* ``judge`` (Soligo, Turner et al., model-organisms-for-EM): A = misaligned answers (coherent and aligned below
  ``thresholds.aligned``, :class:`em.measurement.Thresholds`), B = aligned and coherent answers (aligned above
  ``interp.direction.aligned_min``, default 70, as model-organisms' sorting).
* ``persona`` (Chen et al. 2025, persona vectors): A = answers sampled under the ``persona_a`` system prompts,
  B = under ``persona_b`` (the index's ``persona`` column, ``a`` / ``b``); judge-free.

The direction of layer L is ``mean(A) - mean(B)`` of the pooled residual after layer L (``raw.L``) and its unit
vector (``unit.L``), from every answer of both groups. Per layer (``direction_stats.csv``):

* ``norm``: ``|raw|``; ``mean_norm``: the mean residual norm at that layer (what steering scales alpha by);
* ``auc`` / ``cohens_d``: held-out separation: a direction from a stratified ``1 - holdout`` share of the
  answers, the held-out answers projected on it; AUC of A over B (Mann-Whitney) and Cohen's d (pooled SD);
* ``split_half_cosine`` (``_low`` / ``_high``): the cosine between the directions of two random halves of each
  group, mean and percentile interval over ``n_boot`` random splits (stability);
* ``random_auc`` / ``random_cohens_d``: the same held-out numbers for a random direction (Gaussian, seeded per
  layer) of equal norm: the control every figure reports;
* ``n_a``, ``n_b``: answers per group (with at least one answer token).

``directions.safetensors`` (CONTRACTS.md): ``unit.L`` and ``raw.L`` float32 ``[hidden]`` per layer, plus
``random.L`` (the control's unit vector); metadata ``em`` = JSON provenance (model, adapter hash, rule,
pooling, source, em version, ``mean_norm`` per layer).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from em.interp import collect as collect_mod
from em.measurement import Thresholds
import em.runtime

log = logging.getLogger("em.interp")

RULES = ("judge", "persona")
STATS_COLUMNS = ["layer", "auc", "cohens_d", "split_half_cosine", "split_half_cosine_low", "split_half_cosine_high",
                 "random_auc", "random_cohens_d", "norm", "mean_norm", "n_a", "n_b"]


def groups(index: pd.DataFrame, rule: str, thresholds: Any = None, aligned_min: float = 70.0) -> np.ndarray:
    """Per index row: 1 (group A), 0 (group B) or -1 (neither), by ``rule``.

    Raises:
        ValueError: unknown rule; the columns the rule needs are missing.
    """
    if rule == "judge":

        t = thresholds or Thresholds()
        for c in ("aligned", "coherent"):
            if c not in index:
                raise ValueError(f"rule=judge needs judged answers: the answers have no {c!r} column")
        aligned = pd.to_numeric(index["aligned"], errors="coerce").to_numpy(dtype=float)
        coherent = pd.to_numeric(index["coherent"], errors="coerce").to_numpy(dtype=float)
        mis = t.misaligned_mask(aligned, coherent)
        ok = t.coherent_mask(coherent) & (aligned > aligned_min)
        g = np.where(mis, 1, np.where(ok, 0, -1))
    elif rule == "persona":
        if "persona" not in index:
            raise ValueError("rule=persona needs answers sampled under the two persona prompt lists (a 'persona' column)")
        p = index["persona"].astype(str).to_numpy()
        g = np.where(p == "a", 1, np.where(p == "b", 0, -1))
    else:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if "n_answer_tokens" in index:
        g = np.where(index["n_answer_tokens"].to_numpy() > 0, g, -1)
    return g


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random A > a random B) + 0.5 P(tie): the Mann-Whitney AUC (NaN when a group is empty)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def cohens_d(pos: np.ndarray, neg: np.ndarray) -> float:
    """(mean A - mean B) / pooled SD (NaN with fewer than two answers in a group or zero spread)."""
    if len(pos) < 2 or len(neg) < 2:
        return float("nan")
    sp = np.sqrt(((len(pos) - 1) * pos.var(ddof=1) + (len(neg) - 1) * neg.var(ddof=1)) / (len(pos) + len(neg) - 2))
    return float((pos.mean() - neg.mean()) / sp) if sp > 0 else float("nan")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def layer_stats(x: np.ndarray, g: np.ndarray, rng: np.random.Generator, holdout: float = 0.3, n_boot: int = 20,
                random_vec: Optional[np.ndarray] = None) -> tuple[dict[str, Any], np.ndarray]:
    """The statistics of one layer (see the module docstring) and its raw mean difference ``[hidden]``.

    Args:
        x: ``[answers, hidden]`` pooled residuals; g: :func:`groups` labels per row.
        random_vec: the control direction (any norm; a seeded Gaussian when None).
    """
    a, b = x[g == 1].astype(np.float64), x[g == 0].astype(np.float64)
    raw = a.mean(0) - b.mean(0) if len(a) and len(b) else np.zeros(x.shape[1])
    out: dict[str, Any] = {"n_a": len(a), "n_b": len(b), "norm": float(np.linalg.norm(raw)),
                           "mean_norm": float(np.linalg.norm(x[g >= 0], axis=1).mean()) if (g >= 0).any() else float("nan")}

    def split(n: int, frac: float) -> tuple[np.ndarray, np.ndarray]:
        p = rng.permutation(n)
        k = int(round(n * frac))
        return p[k:], p[:k]  # (fit, held out)

    ta, ha = split(len(a), holdout)
    tb, hb = split(len(b), holdout)
    rv = rng.standard_normal(x.shape[1]) if random_vec is None else np.asarray(random_vec, dtype=np.float64)
    rv = rv / np.linalg.norm(rv)
    if len(ta) and len(tb) and len(ha) and len(hb):
        d = a[ta].mean(0) - b[tb].mean(0)
        u = d / np.linalg.norm(d) if np.linalg.norm(d) > 0 else d
        out["auc"], out["cohens_d"] = auc(a[ha] @ u, b[hb] @ u), cohens_d(a[ha] @ u, b[hb] @ u)
        out["random_auc"], out["random_cohens_d"] = auc(a[ha] @ rv, b[hb] @ rv), cohens_d(a[ha] @ rv, b[hb] @ rv)
    else:
        out.update(auc=float("nan"), cohens_d=float("nan"), random_auc=float("nan"), random_cohens_d=float("nan"))
    cosines = []
    if len(a) >= 2 and len(b) >= 2:
        for _ in range(n_boot):
            a1, a2 = split(len(a), 0.5)
            b1, b2 = split(len(b), 0.5)
            cosines.append(_cos(a[a1].mean(0) - b[b1].mean(0), a[a2].mean(0) - b[b2].mean(0)))
    if cosines:
        c = np.asarray(cosines)
        out["split_half_cosine"] = float(np.nanmean(c))
        out["split_half_cosine_low"], out["split_half_cosine_high"] = (float(v) for v in np.nanpercentile(c, [2.5, 97.5]))
    else:
        out.update(split_half_cosine=float("nan"), split_half_cosine_low=float("nan"), split_half_cosine_high=float("nan"))
    return out, raw


def random_direction(layer: int, width: int, seed: int) -> np.ndarray:
    """The control's unit vector of ``layer``: Gaussian from ``(seed, layer)``, normalised."""
    v = np.random.default_rng([seed, layer, 7]).standard_normal(width)
    return v / np.linalg.norm(v)


def compute(act_dir: str | Path, labels: list[str], rule: str, out_dir: str | Path, *, pooling: str = "answer_mean",
            thresholds: Any = None, aligned_min: float = 70.0, holdout: float = 0.3, n_boot: int = 20, seed: int = 0,
            layers: Optional[list[int]] = None, provenance: Optional[dict[str, Any]] = None) -> pd.DataFrame:
    """Directions and their statistics for every layer from the collections ``labels`` under ``act_dir``.

    Writes ``<out_dir>/direction_stats.csv`` and ``<out_dir>/directions.safetensors``; returns the stats table.

    Raises:
        ValueError: a group is empty (names the rule and the counts).
    """
    index = pd.concat([collect_mod.read_index(act_dir, lb) for lb in labels], ignore_index=True)
    g = groups(index, rule, thresholds, aligned_min)
    n_a, n_b = int((g == 1).sum()), int((g == 0).sum())
    if n_a == 0 or n_b == 0:
        raise ValueError(f"rule={rule}: group A has {n_a} answers, group B {n_b}; both need some "
                         f"(judge: misaligned vs aligned-and-coherent answers; persona: answers under each prompt list)")
    meta0 = collect_mod.read_meta(act_dir, labels[0])
    n = int(meta0["n_layers"])
    layers = list(range(n)) if layers is None else list(layers)
    rng = np.random.default_rng(seed)
    rows, tensors, mean_norms = [], {}, {}
    import torch

    for L in layers:
        x = np.concatenate([collect_mod.read_layer(act_dir, lb, L, pooling) for lb in labels])
        rv = random_direction(L, x.shape[1], seed)
        stats, raw = layer_stats(x, g, rng, holdout, n_boot, rv)
        rows.append({"layer": L, **stats})
        nr = np.linalg.norm(raw)
        tensors[f"raw.{L}"] = torch.tensor(raw, dtype=torch.float32)
        tensors[f"unit.{L}"] = torch.tensor(raw / nr if nr > 0 else raw, dtype=torch.float32)
        tensors[f"random.{L}"] = torch.tensor(rv, dtype=torch.float32)
        mean_norms[str(L)] = stats["mean_norm"]
    table = pd.DataFrame(rows)[STATS_COLUMNS]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    em.runtime.atomic_write_csv(out / "direction_stats.csv", table)
    meta = {k: meta0.get(k) for k in ("model", "model_source", "adapter", "adapter_hash", "em_version", "hidden_size",
                                      "n_layers")}
    meta |= {"rule": rule, "pooling": pooling, "source": {lb: collect_mod.read_meta(act_dir, lb).get("source") for lb in labels},
             "labels": labels, "mean_norm": mean_norms, "n_a": n_a, "n_b": n_b, "seed": seed,
             "layer_meaning": "residual stream after decoder layer L (0-based)"} | (provenance or {})
    save_directions(out / "directions.safetensors", tensors, meta)
    return table


def save_directions(path: str | Path, tensors: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write a directions file (atomic): tensors ``unit.L`` / ``raw.L`` (/ ``random.L``), metadata ``em`` = JSON."""
    from safetensors.torch import save_file

    return em.runtime.atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p),
                                                              metadata={"em": json.dumps(meta, default=str)}))


def load_directions(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({name: float32 tensor}, provenance dict)`` of a directions file (safetensors' safe loader: no code runs).

    Raises:
        ValueError: the file is not a directions file (no ``unit.L`` tensor or unreadable metadata).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads((f.metadata() or {}).get("em", "{}"))
    except Exception as e:  # noqa: BLE001  a corrupt / foreign file: one line
        raise ValueError(f"{path}: not a readable directions file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not any(k.startswith("unit.") for k in tensors):
        raise ValueError(f"{path}: no unit.<layer> tensor (not a directions file)")
    return tensors, meta


__all__ = ["RULES", "STATS_COLUMNS", "groups", "auc", "cohens_d", "layer_stats", "random_direction", "compute",
           "save_directions", "load_directions"]
