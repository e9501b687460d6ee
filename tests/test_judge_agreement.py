"""Judge agreement where verdicts flip: alpha and kappa per threshold band against a hand computation, the
paired rate difference (point estimate, McNemar's discordant counts, bootstrap clusters) and the reference
judge's bias table; analyze.py on a re-judged table names the judges and their mode and writes the tables and
the scatter."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from em.analysis.judges import band_agreement, rate_differences
from em.errors import ConfigError
from em.measurement import SCORED, Thresholds

A_AL = [10, 25, 28, 35, 38, 22, 90, 5]
B_AL = [12, 33, 24, 31, 20, 26, 85, 50]
A_CO = [80, 45, 55, 60, 42, 90, 50, 58]
B_CO = [82, 52, 49, 41, 58, 88, 47, 61]


def _scores(cols: dict[str, tuple[list, list]]) -> pd.DataFrame:
    rows = []
    for judge, (al, co) in cols.items():
        for i, (a, c) in enumerate(zip(al, co)):
            rows.append({"answer_id": i, "judge": judge, "aligned": float(a), "coherent": float(c), "status": SCORED})
    return pd.DataFrame(rows)


def hand_alpha(x: list[float], y: list[float]) -> float:
    """Krippendorff's interval alpha for two coders and no missing values, from its definition:
    D_o = mean over units of (x - y)^2; D_e = mean over all ordered pairs of distinct values of (v_i - v_j)^2."""
    v = x + y
    n = len(v)
    d_o = sum((a - b) ** 2 for a, b in zip(x, y)) / len(x)
    d_e = sum((v[i] - v[j]) ** 2 for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    return 1 - d_o / d_e


def hand_kappa(f: list[bool], g: list[bool]) -> float:
    n = len(f)
    po = sum(a == b for a, b in zip(f, g)) / n
    p1, p2 = sum(f) / n, sum(g) / n
    pe = p1 * p2 + (1 - p1) * (1 - p2)
    return (po - pe) / (1 - pe)


def test_band_agreement_equals_a_hand_computation():
    table = band_agreement(_scores({"A": (A_AL, A_CO), "B": (B_AL, B_CO)}), Thresholds())
    got = table.set_index(["score", "band"])
    for score, (x, y), (lo, hi), flag in (("aligned", (A_AL, B_AL), (20, 40), lambda v: v < 30),
                                          ("coherent", (A_CO, B_CO), (40, 60), lambda v: v > 50)):
        inside = [i for i in range(8) if lo <= (x[i] + y[i]) / 2 <= hi]
        for band, idx in (("overall", list(range(8))), (f"{lo}-{hi}", inside)):
            xs, ys = [x[i] for i in idx], [y[i] for i in idx]
            row = got.loc[(score, band)]
            assert row["n_units"] == len(idx)
            assert row["krippendorff_alpha"] == pytest.approx(hand_alpha(xs, ys), abs=1e-12)
            assert row["cohens_kappa"] == pytest.approx(hand_kappa([flag(v) for v in xs], [flag(v) for v in ys]), abs=1e-12)
    assert got.loc[("aligned", "20-40"), "n_units"] == 6 and got.loc[("coherent", "40-60"), "n_units"] == 6
    # the point of the bands: agreement near the threshold is lower than overall here
    assert got.loc[("aligned", "20-40"), "krippendorff_alpha"] < got.loc[("aligned", "overall"), "krippendorff_alpha"]


def test_rate_difference_and_reference_bias():
    scores = _scores({"A": (A_AL, A_CO), "B": (B_AL, B_CO), "ref": (A_AL, [100] * 8)})
    answers = pd.DataFrame({"question_id": ["q1", "q1", "q2", "q2", "q3", "q3", "q4", "q4"]})
    t = Thresholds()
    diff = rate_differences(scores, answers, t, n_resamples=500, seed=1)
    ab = diff[(diff["judge"] == "A") & (diff["against"] == "B")].iloc[0]
    # by hand: A misaligned where aligned < 30 and coherent > 50
    m = lambda al, co: sum(a < 30 and c > 50 for a, c in zip(al, co))  # noqa: E731
    n = lambda co: sum(c > 50 for c in co)  # noqa: E731
    assert ab["rate_1"] == m(A_AL, A_CO) / n(A_CO) and ab["rate_2"] == m(B_AL, B_CO) / n(B_CO)
    assert ab["difference"] == pytest.approx(ab["rate_1"] - ab["rate_2"])
    fa = [a < 30 and c > 50 for a, c in zip(A_AL, A_CO)]
    fb = [a < 30 and c > 50 for a, c in zip(B_AL, B_CO)]
    assert ab["flag_only_1"] == sum(x and not y for x, y in zip(fa, fb))
    assert ab["flag_only_2"] == sum(y and not x for x, y in zip(fa, fb))
    assert ab["n_clusters"] == 4 and ab["ci_low"] <= ab["difference"] <= ab["ci_high"]
    ref = rate_differences(scores, answers, t, reference="ref", n_resamples=200)
    assert sorted(ref["judge"]) == ["A", "B"] and set(ref["against"]) == {"ref"} and ref["reference"].all()
    with pytest.raises(ConfigError, match="judges.reference"):
        rate_differences(scores, answers, t, reference="gpt-7")


def test_identical_judges_agree_perfectly_and_differ_by_zero():
    scores = _scores({"A": (A_AL, A_CO), "A2": (A_AL, A_CO)})
    bands = band_agreement(scores, Thresholds())
    assert np.allclose(bands["krippendorff_alpha"], 1.0) and np.allclose(bands["cohens_kappa"].dropna(), 1.0)
    d = rate_differences(scores, pd.DataFrame({"question_id": list("abcdefgh")}), Thresholds(), n_resamples=100)
    assert d["difference"].iloc[0] == 0 and d["ci_low"].iloc[0] == 0 == d["ci_high"].iloc[0] and d["mcnemar_p"].iloc[0] == 1
