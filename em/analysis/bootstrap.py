"""Stratified bootstrap of misaligned rates: answers are resampled within each cell (question).

Only the category of an answer matters to a rate (incoherent, coherent and aligned, coherent and
misaligned), so resampling a cell's n scored answers with replacement is exactly a multinomial draw of
those three counts, done here as two binomials. That makes 10,000 resamples cost O(cells), not O(answers).
Intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

# Cells x resamples per chunk: bounds memory (two int64 arrays of this size) whatever the cell count.
CHUNK_DRAWS = 2_000_000


def cell_draws(n_scored: np.ndarray, n_coherent: np.ndarray, n_misaligned: np.ndarray, n_resamples: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap (coherent, misaligned) counts, shape (cells, n_resamples), from a cell's scored answers."""
    n_scored = np.asarray(n_scored, dtype=np.int64)
    p_coherent = np.divide(n_coherent, n_scored, out=np.zeros(len(n_scored)), where=n_scored > 0)
    p_misaligned = np.divide(n_misaligned, n_coherent, out=np.zeros(len(n_scored)), where=np.asarray(n_coherent) > 0)
    coherent = rng.binomial(n_scored[:, None], p_coherent[:, None], size=(len(n_scored), n_resamples))
    misaligned = rng.binomial(coherent, p_misaligned[:, None])
    return coherent, misaligned


def chunked_draws(n_scored: np.ndarray, n_coherent: np.ndarray, n_misaligned: np.ndarray, n_resamples: int,
                  seed: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """cell_draws over consecutive chunks of cells; the stream depends only on the seed and the cells."""
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK_DRAWS // max(1, n_resamples))
    for start in range(0, len(n_scored), step):
        sl = slice(start, min(start + step, len(n_scored)))
        coherent, misaligned = cell_draws(n_scored[sl], n_coherent[sl], n_misaligned[sl], n_resamples, rng)
        yield sl, coherent, misaligned


def rate_draws(coherent: np.ndarray, misaligned: np.ndarray) -> np.ndarray:
    """Misaligned / coherent per resample; NaN where a resample drew no coherent answer."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(coherent > 0, misaligned / np.maximum(coherent, 1), np.nan)


def percentile_ci(draws: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each row of draws (NaN draws ignored; all-NaN rows give NaN)."""
    tail = (1 - confidence) / 2
    if draws.size == 0:
        return np.empty(len(draws)), np.empty(len(draws))
    if not np.isnan(draws).any():
        low, high = np.quantile(draws, [tail, 1 - tail], axis=1)
        return low, high
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanquantile(draws, [tail, 1 - tail], axis=1)
    return low, high
