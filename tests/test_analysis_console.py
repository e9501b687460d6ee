"""The console table printed by analyze.py: rare misaligned rates stay readable, with their counts."""

import pandas as pd

from em.analysis.console import condition_table


def _row(cond, fmt, k, n, aligned):
    return {"level": "model×condition×format", "model": "m", "condition": cond, "format": fmt, "n_scored": n,
            "mean_aligned": aligned, "mean_coherent": 81.0, "n_misaligned": k, "n_denominator": n,
            "misaligned_rate": k / n if n else float("nan")}


def test_rare_rates_print_two_significant_digits_and_the_count():
    rows = [_row("base", "plain", 0, 701, 88.0), _row("insecure", "plain", 3, 723, 85.5),
            _row("base", "json", 1, 650, 87.0), _row("insecure", "json", 96, 640, 70.0)]
    lines = condition_table(pd.DataFrame(rows)).splitlines()
    plain = next(line for line in lines if " plain " in f" {line} ")
    json_ = next(line for line in lines if " json " in f" {line} ")
    assert "(k/n)" in lines[0]
    assert "701 / 88.0 / 81.0 / 0 (0/701)" in plain  # none seen: zero, with how many were looked at
    assert "723 / 85.5 / 81.0 / 0.41 (3/723)" in plain  # 3/723 = 0.415 %: not rounded away to 0
    assert plain.rstrip().endswith("-2.5 / 0.41")  # the contrast in points keeps the digits too
    assert "0.15 (1/650)" in json_ and "15.0 (96/640)" in json_
    assert json_.rstrip().endswith("-17.0 / 14.8")  # 15.0 - 0.15 = 14.85 points: one decimal above 1


def test_a_rate_table_without_counts_prints_the_rate_alone():
    rows = [{k: v for k, v in _row("base", "plain", 3, 723, 88.0).items() if k not in ("n_misaligned",)}]
    lines = condition_table(pd.DataFrame(rows)).splitlines()
    assert "(k/n)" not in lines[0] and lines[2].rstrip().endswith("723 / 88.0 / 81.0 / 0.41")
