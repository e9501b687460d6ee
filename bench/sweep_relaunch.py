"""What a relaunch of a finished sweep costs, against its first launch, in one command.

    python bench/sweep_relaunch.py                            # smoke sweep (4 jobs), basic launcher
    python bench/sweep_relaunch.py --launcher submitit_local  # each job in its own process

Launches `train.py -m experiment=<preset>` into a fresh sweep directory, then the identical command again,
and prints both wall times, their ratio (target: far below 1 — finished jobs are skipped before any model
or heavy library is loaded) and how many models each launch loaded (from the jobs' em_job.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def launch(sweep_dir: Path, args: argparse.Namespace) -> tuple[float, int, str]:
    cmd = [sys.executable, "train.py", "-m", f"experiment={args.preset}", f"hydra.sweep.dir={sweep_dir}",
           f"hydra/launcher={args.launcher}", "evaluate.progress=false", *args.overrides]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"launch failed ({r.returncode}):\n{r.stderr[-3000:]}")
    loads = sum(json.loads(p.read_text()).get("models_loaded") or 0 for p in sweep_dir.glob("*/em_job.json"))
    summary = next((ln for ln in r.stdout.splitlines() if ln.startswith("sweep ") and "done," in ln), "")
    return wall, loads, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--launcher", default="basic", help="basic | submitit_local | joblib")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for both launches")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = Path(tmp) / "sweep"
        first = launch(sweep_dir, args)
        again = launch(sweep_dir, args)
    for name, (wall, loads, summary) in (("first launch", first), ("relaunch", again)):
        print(f"{name:<13} {wall:7.1f} s  models loaded: {loads:3d}   {summary}")
    print(f"ratio relaunch / first launch = {again[0] / first[0]:.2f}   (models loaded on relaunch: {again[1]})")


if __name__ == "__main__":
    main()
