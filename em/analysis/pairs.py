"""Which contrasts are made, from the data: no condition or format name is written in code.

By default (``contrasts.condition`` / ``contrasts.format`` null) every condition present is compared with
the reference condition (``contrasts.reference``, ``base`` by default) when that is present, and each pair
of the other (fine-tuned) conditions with each other; every format with ``contrasts.format_reference``
(``plain``) when present, else each pair of formats. A pair is oriented by ``ordering.condition`` (the one
expected to be more misaligned is ``a``), then alphabetically, so "a vs b" reads "a minus b".
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence


def _rank(order: Sequence[str]):
    pos = {v: i for i, v in enumerate(order)}
    return lambda v: (pos.get(v, len(pos)), v)


def _pairs(values: Sequence[str], reference: str, order: Sequence[str],
           among_others: bool = True) -> list[tuple[str, str]]:
    present = sorted(set(values), key=_rank(order))
    others = [v for v in present if v != reference]
    out = [(v, reference) for v in others] if reference in present else []
    if out and not among_others:
        return out
    for x, y in itertools.combinations(others, 2):  # x ranks before y: y is expected higher, so y - x
        out.append((y, x))
    return out


def condition_pairs(conditions: Sequence[str], configured: Optional[list], reference: str,
                    order: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The condition pairs (a, b) compared: ``configured`` when given, else every condition vs ``reference``
    (when present) and each pair of the others, ``a`` the later one in ``order`` (then alphabetical)."""
    if configured is not None:
        return [(str(a), str(b)) for a, b in configured]
    return _pairs(conditions, reference, [reference, *order])


def format_pairs(formats: Sequence[str], configured: Optional[list], reference: str,
                 order: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The format pairs: ``configured`` when given, else every format vs ``reference`` when present, else each
    pair of formats (the same orientation rule as :func:`condition_pairs`)."""
    if configured is not None:
        return [(str(a), str(b)) for a, b in configured]
    return _pairs(formats, reference, [reference, *order], among_others=False)


__all__ = ["condition_pairs", "format_pairs"]
