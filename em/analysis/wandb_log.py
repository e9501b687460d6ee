"""Optional W&B logging of the tables, figures and headline numbers (`logger=wandb`)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import pandas as pd

from em.analysis.judge_name import judge_info
from em.analysis.pooling import per_format
from em.analysis.results import Results
from em.tracking import init_wandb

log = logging.getLogger(__name__)


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    # wandb.Table cannot serialise pandas' NA or nullable dtypes; None can.
    return df.astype(object).where(df.notna(), None)


def settings_dict(r: Results) -> dict:
    """The analysis settings as a plain nested dict (the W&B run's config)."""
    return dataclasses.asdict(r.settings)


def log_to_wandb(r: Results, frames: dict[str, pd.DataFrame]) -> Optional[Path]:
    """Log every table and figure to one run of job type "analysis"; return its local directory."""
    import wandb

    s = r.settings
    run = init_wandb(project=s.wandb.project, run_dir=str(s.run_dir), job_type="analysis", config=settings_dict(r),
                     group=s.wandb.group, mode=s.wandb.mode, entity=s.wandb.entity)
    if run is None:
        return None
    try:
        payload = {f"tables/{name}": wandb.Table(dataframe=_plain(df)) for name, df in frames.items()}
        payload.update({f"figures/{name}": wandb.Image(str(png)) for name, png in r.figures.items()})
        run.log(payload)

        for row in r.level("condition").itertuples():
            fmts = per_format(r.rates, row.condition)
            # pooled over formats only under a key that says so, the per-format rates beside (issue 21)
            key = "pooled_over_formats" if len(fmts) > 1 else "all"
            run.summary[f"misaligned_rate/{row.condition}/{key}"] = row.misaligned_rate
            run.summary[f"n_coherent/{row.condition}/{key}"] = int(row.n_coherent)
            for f in fmts.itertuples():
                run.summary[f"misaligned_rate/{row.condition}/{f.format}"] = f.misaligned_rate
                run.summary[f"n_coherent/{row.condition}/{f.format}"] = int(f.n_coherent)
        run.summary["definition"] = s.thresholds.describe()
        run.summary["judge"] = judge_info(r.responses.sources, r.responses.answers, s.judges.combine).label()
        local = Path(run.dir).parent
    finally:
        run.finish()
    log.info("logged the analysis to W&B (%s)", local)
    return local
