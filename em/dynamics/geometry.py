"""LoRA geometry over a run's step snapshots -> ``lora_geometry.csv``; change points -> ``lora_changepoints.json``.

For each snapshot (step) and each adapted module (a peft LoRA pair ``A`` [r, in], ``B`` [out, r]):

* ``norm_A``, ``norm_B``: Frobenius norms;
* ``cos_A_prev``, ``cos_B_prev``: cosine between this snapshot's and the previous snapshot's flattened
  ``A`` (``B``); for rank-1 adapters this is the cosine of the A (B) *vectors*, the phase-transition
  signal of model-organisms-for-EM (``phase_transitions.py``: a local drop in the cosine of consecutive
  B vectors marks the step where misalignment appears). Empty for the first snapshot, and where either
  matrix is all zero;
* ``pc1``, ``pc2``, ``pc1_share``: the PCA trajectory of the whole flattened adapter (every module's A
  and B concatenated): snapshot coordinates on the first two principal components of the centred
  snapshot matrix, and the share of variance PC1 explains. Same value on every module row of a
  snapshot. Sign convention: each component is flipped so that the last snapshot's coordinate is >= 0.

The PCA is computed from the snapshots' Gram matrix, accumulated module by module (one module of every
snapshot in memory at a time), so a 27B model's adapters need not be stacked.

Change points: on the per-step series ``cos_B_prev_mean`` (mean over modules), ``norm_B_total`` (root of
the summed squared B norms) and ``pc1``, the single most likely break (``ruptures.Dynp``, least-squares
cost, one breakpoint: the exact optimum of a two-segment piecewise-constant fit). The change point is
reported as the first step of the second segment. Series shorter than 4 points get none.

Files read are safetensors (no code runs on load).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from em.dynamics.snapshots import step_snapshots
from em.runtime import atomic_write_csv, atomic_write_json

log = logging.getLogger("em.dynamics")

GEOMETRY_FILE = "lora_geometry.csv"
CHANGEPOINTS_FILE = "lora_changepoints.json"
COLUMNS = ["step", "module", "rank", "norm_A", "norm_B", "cos_A_prev", "cos_B_prev", "pc1", "pc2", "pc1_share"]
SERIES = ("cos_B_prev_mean", "norm_B_total", "pc1")
MIN_POINTS = 4


def _pairs(keys: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Module name -> (A key, B key) from peft's saved keys (``<module>.lora_A.weight``)."""
    out = {}
    for k in keys:
        if k.endswith(".lora_A.weight"):
            mod = k[: -len(".lora_A.weight")]
            b = mod + ".lora_B.weight"
            if b in keys:
                out[mod] = (k, b)
    return dict(sorted(out.items()))


def _cos(x, y) -> Optional[float]:
    import torch

    nx, ny = float(torch.linalg.vector_norm(x)), float(torch.linalg.vector_norm(y))
    if nx == 0 or ny == 0:
        return None
    return float(torch.dot(x, y) / (nx * ny))


def adapter_geometry(snapshots: Sequence[tuple[int, Path]]):
    """The geometry table of ``snapshots`` (``[(step, adapter dir)]``, sorted by step): one row per
    snapshot and module, columns :data:`COLUMNS`. Empty DataFrame for no snapshot.

    Raises:
        ValueError: snapshots whose adapters hold different modules or shapes (not one run).
    """
    import pandas as pd
    import torch
    from safetensors import safe_open

    if not snapshots:
        return pd.DataFrame(columns=COLUMNS)
    handles = [safe_open(str(Path(d) / "adapter_model.safetensors"), framework="pt") for _, d in snapshots]
    pairs = _pairs(list(handles[0].keys()))
    for (step, d), h in zip(snapshots, handles):
        if _pairs(list(h.keys())) != pairs:
            raise ValueError(f"{d}: its LoRA modules differ from the first snapshot's ({snapshots[0][1]})")
    n = len(snapshots)
    gram = torch.zeros(n, n, dtype=torch.float64)
    rows: list[dict[str, Any]] = []
    for mod, (ka, kb) in pairs.items():
        a = torch.stack([h.get_tensor(ka).double().flatten() for h in handles])  # [n, r*in]
        b = torch.stack([h.get_tensor(kb).double().flatten() for h in handles])  # [n, out*r]
        gram += a @ a.T + b @ b.T
        rank = int(handles[0].get_slice(ka).get_shape()[0])
        for i, (step, _) in enumerate(snapshots):
            rows.append({"step": step, "module": mod, "rank": rank,
                         "norm_A": float(torch.linalg.vector_norm(a[i])),
                         "norm_B": float(torch.linalg.vector_norm(b[i])),
                         "cos_A_prev": _cos(a[i], a[i - 1]) if i else None,
                         "cos_B_prev": _cos(b[i], b[i - 1]) if i else None})
    coords, share = pca_from_gram(gram)
    for r in rows:
        i = [s for s, _ in snapshots].index(r["step"])
        r["pc1"], r["pc2"], r["pc1_share"] = float(coords[i, 0]), float(coords[i, 1]), share
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["step", "module"], kind="stable").reset_index(drop=True)


def pca_from_gram(gram):
    """PCA coordinates of n points from their Gram matrix ``G = X X^T`` ([n, n], float64).

    Returns ``(coords [n, 2], pc1_share)``: the first two principal-component scores of the centred X (the
    ``U S`` of its SVD), each component's sign chosen so that the last point's score is >= 0, and PC1's
    share of the total variance (NaN when every point is the same). Fewer than 2 components: zeros.
    """
    import torch

    n = gram.shape[0]
    j = torch.eye(n, dtype=gram.dtype) - 1.0 / n
    gc = j @ gram @ j  # Gram matrix of the centred points
    evals, evecs = torch.linalg.eigh(gc)  # ascending
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    coords = torch.zeros(n, 2, dtype=gram.dtype)
    for k in range(min(2, n)):
        c = evecs[:, k] * evals[k].sqrt()
        if c[-1] < 0:
            c = -c
        coords[:, k] = c
    total = float(evals.sum())
    return coords, (float(evals[0]) / total if total > 0 else math.nan)


def step_series(geometry) -> "Any":
    """Per-step series of a geometry table: DataFrame indexed by step with :data:`SERIES` columns."""
    import numpy as np

    g = geometry.groupby("step", sort=True)
    out = g.agg(cos_B_prev_mean=("cos_B_prev", "mean"), pc1=("pc1", "first"))
    out["norm_B_total"] = g["norm_B"].apply(lambda s: float(np.sqrt((s.astype(float) ** 2).sum())))
    return out[list(SERIES)]


def change_point(steps: Sequence[int], values: Sequence[float]) -> Optional[int]:
    """The step where the series breaks most (one breakpoint, least squares; ``ruptures.Dynp``).

    ``steps`` and ``values`` align; NaN values are dropped first. Returns the first step of the second
    segment, or None with fewer than :data:`MIN_POINTS` finite points or a constant series.
    """
    import numpy as np
    import ruptures as rpt

    pts = [(s, float(v)) for s, v in zip(steps, values) if v is not None and math.isfinite(float(v))]
    if len(pts) < MIN_POINTS:
        return None
    sig = np.array([v for _, v in pts], dtype=float).reshape(-1, 1)
    if np.ptp(sig) == 0:
        return None
    bkp = rpt.Dynp(model="l2", min_size=1, jump=1).fit(sig).predict(n_bkps=1)[0]
    return int(pts[bkp][0])


def change_points(geometry) -> dict[str, Any]:
    """``{series: step or None}`` for each of :data:`SERIES`, plus ``method``."""
    s = step_series(geometry) if len(geometry) else None
    out: dict[str, Any] = {"method": "ruptures.Dynp(model='l2', n_bkps=1); first step after the break"}
    for name in SERIES:
        out[name] = None if s is None else change_point(list(s.index), list(s[name]))
    return out


def write_geometry(run_dir: Path) -> Optional[Path]:
    """Compute the geometry of ``<run_dir>/snapshots/step_*`` and write ``lora_geometry.csv`` and
    ``lora_changepoints.json`` into ``run_dir`` (atomically, recomputed from the snapshots on disk: a
    resumed run gets each step once). Returns the CSV path, or None when the run has no step snapshot."""
    snaps = step_snapshots(run_dir)
    if not snaps:
        return None
    geo = adapter_geometry(snaps)
    path = atomic_write_csv(Path(run_dir) / GEOMETRY_FILE, geo)
    atomic_write_json(Path(run_dir) / CHANGEPOINTS_FILE, change_points(geo))
    log.info("LoRA geometry of %d step snapshots: %s", len(snaps), path)
    return path


def read_geometry(path: Path):
    """``lora_geometry.csv`` as a DataFrame (step int, numbers float)."""
    import pandas as pd

    df = pd.read_csv(path)
    df["step"] = df["step"].astype(int)
    return df


__all__ = ["COLUMNS", "GEOMETRY_FILE", "CHANGEPOINTS_FILE", "adapter_geometry", "change_point", "change_points",
           "pca_from_gram", "read_geometry", "step_series", "write_geometry"]


def log_geometry(loggers, run_dir: Path) -> None:
    """Log the per-step geometry series (``dynamics/<series>``, at each snapshot's step) and the change
    points (``dynamics/changepoint/<series>``) to the Lightning ``loggers``. A logger that fails is
    skipped with a warning (the CSV on disk is the record)."""
    path = Path(run_dir) / GEOMETRY_FILE
    if not loggers or not path.is_file():
        return
    series = step_series(read_geometry(path))
    cps = json.loads((Path(run_dir) / CHANGEPOINTS_FILE).read_text())
    for lg in loggers:
        try:
            for step, row in series.iterrows():
                lg.log_metrics({f"dynamics/{k}": float(v) for k, v in row.items() if v == v}, step=int(step) - 1)
            lg.log_metrics({f"dynamics/changepoint/{k}": float(v) for k, v in cps.items()
                            if k in SERIES and v is not None}, step=int(series.index[-1]) - 1)
        except Exception as e:  # noqa: BLE001  logging never loses the result on disk
            log.warning("could not log the LoRA geometry to %s: %s", type(lg).__name__, e)
