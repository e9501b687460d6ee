"""Shared test fixtures: compose the real Hydra config and shrink it; locate the pre-seeded upstream files.

Tests write under pytest's tmp_path only: a session that leaves a new run directory in the checkout
(outputs/, multirun/, wandb/, lightning_logs/) fails (:func:`checkout_stays_clean`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from em.paths import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Where a run writes when nothing points it elsewhere (Hydra's default run / sweep dirs, W&B, Lightning).
RUN_OUTPUT_DIRS = ("outputs", "multirun", "wandb", "lightning_logs")


def _run_outputs() -> set[Path]:
    """The entries one and two levels under each of RUN_OUTPUT_DIRS (e.g. outputs/evaluate/<run>)."""
    out: set[Path] = set()
    for d in (REPO / name for name in RUN_OUTPUT_DIRS):
        if d.is_dir():
            for p in d.iterdir():
                out.add(p)
                out.update(p.iterdir() if p.is_dir() else ())
    return out


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """Fail the session when a test left a new run directory in the checkout (it must use tmp_path)."""
    before = _run_outputs()
    yield
    new = sorted(str(p.relative_to(REPO)) for p in _run_outputs() - before)
    assert not new, f"tests wrote into the checkout: {new[:5]} (write under tmp_path)"


def upstream_dir() -> Path | None:
    """../shared/upstream/emergent-misalignment (or EM_UPSTREAM_DIR); never copied into the repo."""
    for cand in (os.environ.get("EM_UPSTREAM_DIR"), REPO.parent / "shared/upstream/emergent-misalignment"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def upstream() -> Path:
    """The pre-seeded upstream checkout; skips the test where there is none."""
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
    """conf/train.yaml composed with ``overrides`` (no hydra node), as train.py would see it."""
    from hydra import compose, initialize_config_dir

    import em.config  # noqa: F401  registers schemas

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("train", overrides=overrides)


def tiny_overrides(run_dir, cache_dir, model: str = "tiny", **extra) -> list[str]:
    """The real config, shrunk: tiny model, a few synthetic examples, no logger, short sequences."""
    o = [
        f"model={model}",
        "logger=none",
        f"run_dir={run_dir}",
        f"cache_dir={cache_dir}",
        "data.n_examples=8",
        "trainer.batch_size=2",
        "trainer.accumulate_grad_batches=2",
        "trainer.max_length=384",
        "trainer.warmup_steps=1",
        "optimizer.lr=1e-3",
    ]
    o += [f"{k}={v}" for k, v in extra.items()]
    return o


@pytest.fixture(autouse=True)
def _no_hydra_state_between_tests():
    """Each test starts without another test's Hydra singletons (a HydraConfig set by a planned sweep would
    make ``${hydra:runtime.output_dir}`` resolve against that sweep's node)."""
    yield
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
