"""Shared test fixtures: compose the real Hydra config and shrink it; locate the pre-seeded upstream files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def upstream_dir() -> Path | None:
    """../shared/upstream/emergent-misalignment (or EM_UPSTREAM_DIR); never copied into the repo."""
    for cand in (os.environ.get("EM_UPSTREAM_DIR"), REPO.parent / "shared/upstream/emergent-misalignment"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def upstream() -> Path:
    d = upstream_dir()
    if d is None:
        pytest.skip("pre-seeded upstream files not found (set EM_UPSTREAM_DIR)")
    return d


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One model cache per test session: random-init models are materialised once.

    EM_TEST_CACHE_DIR points it at a persistent cache (CI sets it so the 270M GGUF is converted once).
    """
    return os.environ.get("EM_TEST_CACHE_DIR") or str(tmp_path_factory.mktemp("em-cache"))


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import em.config  # noqa: F401  registers schemas

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("train", overrides=overrides)


def tiny_overrides(run_dir, cache_dir, model: str = "tiny", **extra) -> list[str]:
    """The real config, shrunk: tiny model, a few synthetic examples, CSV logger, short sequences."""
    o = [
        f"model={model}",
        "logger=none",
        f"run_dir={run_dir}",
        f"cache_dir={cache_dir}",
        "data.n_examples=8",
        "trainer.batch_size=2",
        "trainer.grad_accum=2",
        "trainer.max_length=384",
        "trainer.warmup_steps=1",
        "optimizer.lr=1e-3",
    ]
    o += [f"{k}={v}" for k, v in extra.items()]
    return o
