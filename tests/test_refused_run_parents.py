"""A refused run started without ``hydra.run.dir`` leaves nothing behind: not its timestamped run directory and
not the empty ``outputs/<stage>/`` parents Hydra made for it; a parent that holds anything else stays."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.eval_helpers import subprocess_env


def refuse_in(cwd, name: str, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(REPO / name), *args], cwd=cwd, capture_output=True, text=True,
                       timeout=240, env=subprocess_env(EM_CACHE_DIR=str(cwd.parent / "cache")))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    return r


@pytest.mark.parametrize("name, args", [("evaluate.py", ["samples=-1"]),
                                        ("analyze.py", ["inputs=[/nonexistent/answers.csv]"])])
def test_a_refused_run_in_a_fresh_directory_leaves_no_empty_outputs_tree(tmp_path, name, args):
    work = tmp_path / "work"
    work.mkdir()
    refuse_in(work, name, *args)
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == []


def test_a_parent_with_earlier_results_is_kept(tmp_path):
    work = tmp_path / "work"
    earlier = work / "outputs" / "evaluate" / "earlier" / "summary.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}")
    refuse_in(work, "evaluate.py", "samples=-1")
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == [
        "outputs", "outputs/evaluate", "outputs/evaluate/earlier", "outputs/evaluate/earlier/summary.json"]
