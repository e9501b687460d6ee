"""Benchmark: the full analysis (every statistic, 10,000 bootstrap resamples, every figure) at two sizes.

    python bench/analyze_scale.py                 # 64,800 and 648,000 answers
    python bench/analyze_scale.py --sizes 64800   # one size

Targets: <= 10 s for 64,800 answers on 2 cores, and <= 12x that for 10x the rows. The synthetic tables
(9 models x 3 conditions x 3 formats x 8 questions; 100 samples, x10 seeds for the large one) are
written to parquet first; the time measured is run_analysis alone, reading the parquet included.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from em.analysis.run import run_analysis  # noqa: E402
from em.paths import CONF_DIR  # noqa: E402
from tests.synthetic_responses import synthetic_responses  # noqa: E402  (a test fixture)

BASE = 64_800  # 9 x 3 x 3 x 8 x 100


def run_once(n_answers: int, workdir: Path, n_resamples: int, judges: int) -> float:
    """Seconds run_analysis takes on ``n_answers`` synthetic answers (a multiple of BASE) written to parquet."""
    n_seeds, rest = divmod(n_answers, BASE)
    if rest:
        raise SystemExit(f"--sizes: {n_answers} is not a multiple of {BASE}")
    table = synthetic_responses(n_seeds=n_seeds, judges=[f"judge-{i}" for i in range(judges)], seed=n_seeds)
    path = workdir / f"responses_{n_answers}.parquet"
    table.to_parquet(path)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"inputs=[{path}]", f"run_dir={workdir / f'run_{n_answers}'}",
                                            f"bootstrap.n_resamples={n_resamples}"])
    start = time.perf_counter()
    run_analysis(cfg)
    return time.perf_counter() - start


def main() -> None:
    """Time each size in a fresh process and print the times and their ratio against the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[BASE, 10 * BASE])
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--judges", type=int, default=1, help="judges per answer (rows = answers x judges)")
    parser.add_argument("--keep", type=Path, default=None, help="write the runs here instead of a temp dir")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(f"TIME {run_once(args.child, args.keep, args.resamples, args.judges):.4f}")
        return
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for n in args.sizes:
            # A fresh process per size: each pays the same lazy imports (statsmodels, matplotlib, seaborn)
            # inside run_analysis, as a real `python analyze.py` does, so the two times compare like for like.
            cmd = [sys.executable, __file__, "--child", str(n), "--keep", str(workdir), "--resamples",
                   str(args.resamples), "--judges", str(args.judges)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            times[n] = float(out.rsplit("TIME ", 1)[1].split()[0])
            print(f"{n:>9,} answers x {args.judges} judge(s): {times[n]:6.2f} s", flush=True)
    if len(times) >= 2:
        small, large = min(times), max(times)
        print(f"64.8k time: {times[small]:.2f} s (target <= 10 s)" if small == BASE else
              f"{small:,} time: {times[small]:.2f} s")
        print(f"ratio {large:,}/{small:,} answers: {times[large] / times[small]:.2f}x "
              f"(target <= {12 * (large // small) / 10:g}x)")


if __name__ == "__main__":
    main()
