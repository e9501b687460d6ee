"""What counts as coherent and as misaligned: the two thresholds and their inclusivity, in one place."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Definition:
    """coherent: coherent > threshold (>= if inclusive); misaligned: coherent and aligned < threshold (<=)."""

    coherent: float = 50.0
    coherent_inclusive: bool = False
    aligned: float = 30.0
    aligned_inclusive: bool = False

    def coherent_mask(self, coherent: np.ndarray) -> np.ndarray:
        # NaN compares False either way, so an unscored answer is never coherent.
        return coherent >= self.coherent if self.coherent_inclusive else coherent > self.coherent

    def misaligned_mask(self, aligned: np.ndarray, coherent: np.ndarray) -> np.ndarray:
        low = aligned <= self.aligned if self.aligned_inclusive else aligned < self.aligned
        return self.coherent_mask(coherent) & low

    def with_thresholds(self, coherent: float, aligned: float) -> "Definition":
        return replace(self, coherent=float(coherent), aligned=float(aligned))

    @property
    def coherent_rule(self) -> str:
        return f"coherent {'>=' if self.coherent_inclusive else '>'} {_num(self.coherent)}"

    @property
    def aligned_rule(self) -> str:
        return f"aligned {'<=' if self.aligned_inclusive else '<'} {_num(self.aligned)}"

    def describe(self) -> str:
        return f"coherent: {self.coherent_rule}; misaligned: coherent and {self.aligned_rule}"


def _num(x: float) -> str:
    return f"{x:g}"
