"""Sequential fine-tuning chains: ``python -m em.jobs.chain experiment=sequential [overrides]``.

A chain is a list of stages (``chain.stages`` of the composed train config, e.g. secure -> insecure ->
educational). Stage *i* is one ordinary job (:func:`em.jobs.run.run_job`: train, evaluate, judge) in
``<chain.dir>/<i>_<name>``, composed from the command line's overrides plus the stage's own, with
``trainer.init_adapter`` = the previous training stage's directory and ``evaluate.condition`` =
``<i>_<name>``. A stage with ``data=base`` trains nothing (it evaluates the base model, condition
``base``) and passes no adapter on.

Resumable like a sweep: a relaunch skips finished stages (their ``DONE.json`` hash, which holds the
parent adapter's content hash) and resumes an interrupted one from its checkpoint. After the last stage
``<chain.dir>/chain.json`` lists the stages and ``<chain.dir>/analysis/chain_rates.{csv,png}`` show the
misaligned rate after each stage (:func:`em.analysis.views.chain_view`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from em.analysis.views import answers_of, chain_view
from em.commands import run_main
import em.config  # noqa: F401  registers the schemas
from em.config.compose import hydra_error_line
from em.errors import ConfigError
from em.jobs.run import run_job
from em.jobs.targets import eval_targets
from em.measurement import Thresholds
from em.paths import CONF_DIR
from em.runtime import atomic_write_json


def compose(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` as train.py would (no hydra node).

    Raises:
        ConfigError: an unknown option or key (Hydra's message, one line).
    """
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        try:
            return hydra_compose("train", overrides=overrides)
        except HydraException as e:
            raise ConfigError(hydra_error_line(e)) from None


def plan(overrides: list[str]) -> tuple[Path, list[tuple[str, str, DictConfig]]]:
    """(chain dir, [(stage label, stage name, composed stage config)]) -- every stage checked, nothing run.

    ``trainer.init_adapter`` is left for :func:`run_chain` (the parent may not exist yet).

    Raises:
        ConfigError: no ``chain.stages``, a stage without ``name``, a duplicate name, or a stage config error.
    """
    base = compose(overrides)
    chain = OmegaConf.to_container(base.chain, resolve=True) if base.get("chain") else None
    if not chain or not chain.get("stages"):
        raise ConfigError("chain.stages: no stages (use experiment=sequential or set chain.stages)")
    out_dir = Path(chain.get("dir") or f"multirun/{base.experiment_name or 'chain'}")
    stages, seen = [], set()
    for i, st in enumerate(chain["stages"], 1):
        name = (st or {}).get("name")
        if not name or name in seen:
            raise ConfigError(f"chain.stages[{i - 1}].name: {'missing' if not name else f'duplicate {name!r}'}")
        seen.add(name)
        cfg = compose(overrides + [str(o) for o in st.get("overrides") or []])
        label = f"{i}_{name}"
        OmegaConf.update(cfg, "run_dir", str(out_dir / label))
        OmegaConf.update(cfg, "evaluate.condition", label)
        OmegaConf.update(cfg, "evaluate.enabled", True)
        stages.append((label, name, cfg))
    return out_dir, stages


def run_chain(overrides: list[str]) -> Path:
    """Run (or resume) every stage in order, then write ``chain.json`` and the chain view; returns the chain dir.

    Raises:
        ConfigError: see :func:`plan`; any stage's error stops the chain (the next stages need its adapter).
    """
    out_dir, stages = plan(overrides)
    parent: Optional[Path] = None
    rows: list[dict[str, Any]] = []
    for i, (label, name, cfg) in enumerate(stages, 1):
        trains = cfg.data.source != "none"
        if trains and parent is not None:
            OmegaConf.update(cfg, "trainer.init_adapter", str(parent))
        print(f"chain stage {i}/{len(stages)}: {label} (data={cfg.data.name}, parent={parent if trains else None})")
        res = run_job(cfg, isolate_failures=False)
        condition = eval_targets(cfg, Path(cfg.run_dir))[-1].condition  # data=base: "base"
        rows.append({"stage": i, "name": name, "condition": condition, "job_dir": str(res.job_dir), "state": res.state,
                     "data": cfg.data.name, "parent": str(parent) if trains and parent else None,
                     "summary": res.summary})
        if trains:
            parent = Path(res.job_dir)
    atomic_write_json(out_dir / "chain.json", {"stages": rows})
    analyze_chain(out_dir, rows, stages[0][2])
    return out_dir


def analyze_chain(out_dir: Path, rows: list[dict[str, Any]], cfg: DictConfig) -> Path:
    """``<out_dir>/analysis/chain_rates.{csv,png}`` from each stage's ``eval/responses.parquet``."""
    import pandas as pd

    tables = [Path(r["job_dir"]) / "eval" / "responses.parquet" for r in rows]
    answers = answers_of([t for t in tables if t.exists()])
    thresholds = Thresholds(**OmegaConf.to_container(cfg.thresholds, resolve=True))
    table, png = chain_view(pd.DataFrame(rows), answers, out_dir / "analysis", thresholds)
    print(table[table["format"] == "all"][["stage", "name", "n_coherent", "misaligned_rate", "ci_low", "ci_high"]]
          .to_string(index=False))
    print(f"chain view: {png}")
    return png


def main(argv: Optional[list[str]] = None) -> None:
    """Command line: the overrides of ``python train.py`` (``experiment=sequential`` and any others)."""
    run_main(run_chain, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
