"""Misaligned rate against parameter count, per model family, with a rank correlation."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pandas as pd
import yaml

from em.config.compose import compose_group

MIN_MODELS = 3
EXACT_PERMUTATIONS = 40320  # 8!: up to 8 models per family every ordering is enumerated


def model_meta(directory: Optional[str | Path] = None) -> pd.DataFrame:
    """One row per known model: ``model`` (its name), ``family``, ``params`` (parameter count).

    Args:
        directory: a directory of model YAMLs (``name`` / ``family`` / ``params`` keys, as in the ``model``
            config group); None: the ``model`` config group itself, composed through Hydra.

    Models without a numeric ``params`` are left out (the report lists them as unknown); a YAML that does
    not parse is skipped.
    """
    nodes = _yaml_models(Path(directory)) if directory is not None else model_group()
    rows = []
    for stem, node in nodes:
        try:
            params = float(node.get("params"))
        except (TypeError, ValueError):
            continue
        rows.append({"model": str(node.get("name") or stem), "family": str(node.get("family") or "unknown"),
                     "params": params})
    return pd.DataFrame(rows, columns=["model", "family", "params"]).drop_duplicates("model")


def model_group() -> list[tuple[str, Mapping]]:
    """(option name, config node) of every option of the ``model`` config group (:func:`em.config.compose.compose_group`)."""
    return compose_group("model")


def _yaml_models(directory: Path) -> list[tuple[str, Mapping]]:
    """A user's directory of model YAMLs (outside ``conf/``): (file stem, mapping) per readable file."""
    out = []
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        if isinstance(data, dict):
            out.append((path.stem, data))
    return out


def attach_params(rates: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """``rates`` with ``family`` and ``params`` columns looked up by model name in ``meta`` (NaN when unknown)."""
    lookup = meta.set_index("model")
    out = rates.copy()
    out["family"] = out["model"].map(lookup["family"])
    out["params"] = out["model"].map(lookup["params"])
    return out


def _spearman(params: np.ndarray, rates: np.ndarray) -> tuple[float, float, str]:
    """Spearman rho with a permutation p-value: a handful of models is far too few for the t approximation."""
    from scipy.stats import permutation_test, spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(spearmanr(params, rates).statistic)
        exact = math.factorial(len(params)) <= EXACT_PERMUTATIONS
        res = permutation_test((params,), lambda x: spearmanr(x, rates).statistic, permutation_type="pairings",
                               n_resamples=np.inf if exact else EXACT_PERMUTATIONS, alternative="two-sided",
                               rng=np.random.default_rng(0))
    what = "exact" if exact else f"{EXACT_PERMUTATIONS} random"
    return rho, float(res.pvalue), f"p from {what} permutations"


def scaling_table(rates: pd.DataFrame, definition: str) -> tuple[pd.DataFrame, list[str]]:
    """(one row per family x condition with Spearman rho of rate vs params, models without a param count)."""
    groups = rates[rates["level"] == "model×condition"]
    unknown = sorted(groups.loc[groups["params"].isna(), "model"].unique())
    known = groups[groups["params"].notna() & groups["misaligned_rate"].notna()]
    rows = []
    for (family, condition), g in known.groupby(["family", "condition"], sort=True):
        g = g.sort_values("params")
        row = {"family": family, "condition": condition, "n_models": len(g),
               "models": ", ".join(g["model"]), "params": ", ".join(f"{p:.3g}" for p in g["params"]),
               "rates": ", ".join(f"{r:.4f}" for r in g["misaligned_rate"]),
               "spearman_rho": math.nan, "p_value": math.nan, "note": ""}
        if len(g) < MIN_MODELS:
            row["note"] = f"too few models for a rank correlation (n={len(g)} < {MIN_MODELS})"
        elif g["misaligned_rate"].nunique() == 1 or g["params"].nunique() == 1:
            row["note"] = "constant rate or parameter count: rank correlation undefined"
        else:
            row["spearman_rho"], row["p_value"], row["note"] = _spearman(g["params"].to_numpy(),
                                                                         g["misaligned_rate"].to_numpy())
        rows.append(row)
    table = pd.DataFrame(rows, columns=["family", "condition", "n_models", "models", "params", "rates",
                                        "spearman_rho", "p_value", "note"])
    table["definition"] = definition
    return table, unknown

