"""experiment=demo samples Betley et al.'s first-plot set when its file is already where em looks for upstream
files ($EM_DATA_DIR or the download cache), the project's smoke set otherwise; one line says which; an explicit
questions=... wins; either way a model gets about the same number of answers (composition only: no run)."""

from __future__ import annotations

import shutil

import pytest

from em.config import resolvers
from tests.conftest import compose_train

FILE = "evaluation/first_plot_questions.yaml"


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No $EM_DATA_DIR, an empty download cache, and the once-per-process line not said yet."""
    monkeypatch.delenv("EM_DATA_DIR", raising=False)
    monkeypatch.setenv("EM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(resolvers, "_said", set())
    return tmp_path


def _answers_per_model(cfg) -> int:
    return cfg.questions.n_questions * len(cfg.format) * cfg.evaluate.samples


def test_without_the_upstream_file_the_demo_uses_the_smoke_set(clean_env, capsys):
    cfg = compose_train(["experiment=demo"])
    assert cfg.questions.name == cfg.evaluate.questions.name == "smoke"
    assert cfg.evaluate.samples == 4 and _answers_per_model(cfg) == 48
    line = capsys.readouterr().out.strip()
    assert line.startswith("questions=smoke: the project's own set") and "\n" not in line
    assert str(clean_env / "cache" / "upstream") in line and "questions=first_plot downloads it" in line


def test_with_the_file_in_em_data_dir_the_demo_uses_first_plot(clean_env, upstream, monkeypatch, capsys):
    if not (upstream / FILE).is_file():
        pytest.skip(f"{upstream / FILE} not present")
    monkeypatch.setenv("EM_DATA_DIR", str(upstream))
    cfg = compose_train(["experiment=demo"])
    assert cfg.questions.name == cfg.evaluate.questions.name == "first_plot"
    assert cfg.evaluate.samples == 2 and _answers_per_model(cfg) == 48
    assert cfg.evaluate.generation.max_new_tokens == 64  # the smoke set's cap, for the same cost
    line = capsys.readouterr().out.strip()
    assert line == f"questions=first_plot: Betley et al.'s {FILE} found at {upstream / FILE} (questions=... overrides)"
    # an explicit choice wins, and the demo's samples follow the chosen set
    cfg = compose_train(["experiment=demo", "questions=smoke"])
    assert cfg.questions.name == "smoke" and cfg.evaluate.samples == 4
    cfg = compose_train(["experiment=demo", "evaluate.samples=3"])
    assert cfg.questions.name == "first_plot" and cfg.evaluate.samples == 3


def test_a_cached_download_counts_as_present(clean_env, upstream, capsys):
    if not (upstream / FILE).is_file():
        pytest.skip(f"{upstream / FILE} not present")
    cached = clean_env / "cache" / "upstream" / FILE
    cached.parent.mkdir(parents=True)
    shutil.copyfile(upstream / FILE, cached)  # under tmp_path, as a download would leave it
    cfg = compose_train(["experiment=demo"])
    assert cfg.questions.name == "first_plot" and str(cached) in capsys.readouterr().out
    # a directory of that name is not the file
    cached.unlink()
    cached.mkdir()
    resolvers._said.clear()
    assert compose_train(["experiment=demo"]).questions.name == "smoke"


def test_samples_for_counts_ids_then_n_questions():
    assert resolvers.samples_for(48, {"ids": ["a", "b"], "n_questions": 8}, ["plain", "json"]) == 12
    assert resolvers.samples_for(48, {"n_questions": 48}, ["plain", "json", "template"]) == 1
    assert resolvers.samples_for(48, {}, ["plain"]) == 12  # unknown size: counted as the smoke set's 4
