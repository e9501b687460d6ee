"""The resume line of a script started from another directory (``python ../em/evaluate.py ...``) names the
script as typed, so pasting it in the same shell resumes; started beside the script it stays ``python x.py``."""

from __future__ import annotations

import shlex
import sys

from em.evaluate.record import resume_command
from em.train.stopping import resume_line
from tests.conftest import REPO


def test_a_script_outside_the_working_directory_keeps_its_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    script = str(REPO / "evaluate.py")
    monkeypatch.setattr(sys, "argv", [script, "samples=8"])
    run, job = tmp_path / "run", tmp_path / "j"
    line = resume_command(run, False)
    assert line == "resume: " + shlex.join(["python", script, "samples=8", f"hydra.run.dir={run}"])
    monkeypatch.setattr(sys, "argv", ["../em/train.py", "seed=1"])
    assert resume_line(job, False) == f"resume: python ../em/train.py seed=1 hydra.run.dir={job}"


def test_a_script_in_the_working_directory_is_named_as_usual(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [str(REPO / "evaluate.py"), "run_dir=/x"])
    assert resume_command(None, False) == "resume: python evaluate.py run_dir=/x"
    monkeypatch.setattr(sys, "argv", ["train.py", "seed=1"])
    assert resume_line(None, False) == "resume: python train.py seed=1"
