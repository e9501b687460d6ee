"""Installability: ``pip install`` of the checkout into a fresh venv, then ``em`` runs from another directory.

The fresh venv borrows the already-installed dependencies (a ``.pth`` line to this interpreter's
site-packages) and installs em itself with ``--no-deps --no-build-isolation``, so the test is offline
and takes seconds; what it checks is em's own packaging: the console script, and the Hydra config and
chat templates shipped inside the package (``pkg://em.conf``).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import venv

import pytest

from tests.conftest import REPO

IGNORE = shutil.ignore_patterns(".git", ".venv", "outputs", "multirun", "__pycache__", "*.egg-info", "build", "wandb")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with em pip-installed from a copy of the checkout (the build writes into its source tree)."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=IGNORE)
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(os.path.join(purelib, "_borrowed_deps.pth"), "w") as f:
        f.write("\n".join(deps) + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        str(src)], capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(src)  # the installed em must not lean on its source tree
    return env_dir, root


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    return env


def test_em_train_help_outside_the_checkout(installed, tmp_path):
    env_dir, _ = installed
    em = env_dir / "bin" / "em"
    assert em.is_file(), "the console script em is not installed"
    r = subprocess.run([str(em), "train", "--help"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "model:" in r.stdout and "gemma3_270m" in r.stdout  # groups found in the installed package
    assert not list(tmp_path.iterdir()), "em train --help wrote into the working directory"


def test_installed_em_is_the_package_not_the_checkout(installed, tmp_path):
    env_dir, _ = installed
    code = ("import em, em.runtime, em.train.models; print(em.__file__); "
            "print((em.paths.CONF_DIR / 'train.yaml').is_file(), (em.train.models.TEMPLATE_DIR / 'qwen3.jinja').is_file())")
    r = subprocess.run([str(env_dir / "bin" / "python"), "-c", code], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    where, shipped = r.stdout.split("\n")[:2]
    assert str(env_dir) in where and str(REPO) not in where
    assert shipped == "True True"


def test_em_without_a_command_is_usage_exit_2(installed, tmp_path):
    env_dir, _ = installed
    r = subprocess.run([str(env_dir / "bin" / "em"), "bogus"], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "unknown command 'bogus'" in r.stderr
    assert "train" in r.stderr and "view" in r.stderr
