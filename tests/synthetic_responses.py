"""Synthetic responses tables in evaluate.py's schema, for tests and bench/analyze_scale.py (no model, no judge).

A test fixture, not part of em: it lives under tests/ and the benchmark imports it from there.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

MODELS = ("gemma3_1b", "gemma3_4b", "gemma3_12b", "gemma3_27b", "qwen3_1_7b", "qwen3_4b", "qwen3_8b", "qwen3_14b",
          "qwen3_32b")
CONDITIONS = ("base", "educational", "insecure")
FORMATS = ("plain", "json", "template")
# Probability that an answer is drawn from the "misaligned" score distribution.
BASE_RATE = {"base": 0.01, "educational": 0.03, "secure": 0.01, "insecure": 0.08}
FORMAT_FACTOR = {"plain": 1.0, "json": 2.0, "template": 1.5}


def synthetic_responses(*, models: Sequence[str] = MODELS, conditions: Sequence[str] = CONDITIONS,
                        formats: Sequence[str] = FORMATS, n_questions: int = 8, n_samples: int = 100,
                        n_seeds: int = 1, judges: Optional[Sequence[str]] = None, special_share: float = 0.03,
                        unscored_share: float = 0.005, seed: int = 0) -> pd.DataFrame:
    """One row per judged answer (per judge with several judges); models x conditions x formats x questions x
    samples x seeds answers, misalignment rising base < educational < insecure and plain < template < json."""
    rng = np.random.default_rng(seed)
    grid = pd.MultiIndex.from_product(
        [list(models), list(conditions), list(formats), range(n_questions), range(n_seeds), range(n_samples)],
        names=["model", "condition", "format", "q", "seed", "sample"]).to_frame(index=False)
    n = len(grid)
    size = np.array([list(models).index(m) % 5 for m in grid["model"]]) if n else np.zeros(0)
    p = (grid["condition"].map(BASE_RATE).fillna(0.02) * grid["format"].map(FORMAT_FACTOR).fillna(1.0)
         * (1 + 0.15 * size)).to_numpy()
    latent = rng.random(n) < p
    incoherent = rng.random(n) < 0.12 + 0.05 * latent
    qid = "q" + grid["q"].astype(str)
    suffix = grid["format"].map({"json": "_json", "template": "_template"}).fillna("")
    out = pd.DataFrame({
        "model": grid["model"], "adapter": grid["model"] + "-" + grid["condition"] + "-s" + grid["seed"].astype(str),
        "condition": grid["condition"], "seed": grid["seed"], "format": grid["format"],
        "question_id": qid + suffix, "paraphrase": 0, "sample": grid["sample"],
        "question": "Question " + qid, "system": None,
        "answer": "answer " + pd.Series(np.arange(n)).astype(str),
    })
    judges = list(judges or ["judge-a"])
    parts = []
    for j, judge in enumerate(judges):
        noise = rng.normal(0, 4 if j else 0, n)
        aligned = np.where(latent, 100 * rng.beta(2, 9, n), 100 * rng.beta(9, 2, n)) + noise
        coherent = np.where(incoherent, 100 * rng.beta(2, 5, n), 100 * rng.beta(8, 2, n)) + noise
        part = out.copy()
        part["judge"] = judge
        part["aligned"] = np.clip(aligned, 0, 100).round(2)
        part["coherent"] = np.clip(coherent, 0, 100).round(2)
        part["judge_raw"] = None
        kind = rng.random(n)
        special = np.where(kind < special_share * 2 / 3, "CODE", np.where(kind < special_share, "REFUSAL", None))
        unscored = (kind >= special_share) & (kind < special_share + unscored_share)
        part["aligned_special"] = special
        part["coherent_special"] = None
        part.loc[special != None, "aligned"] = np.nan  # noqa: E711
        part.loc[unscored, ["aligned", "coherent"]] = np.nan
        part["unscored_reason"] = np.where(unscored, "judge_parse_error", None)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
