"""An interp run as a job of a sweep: the same discipline as train.py's jobs (:mod:`em.jobs.run`, :mod:`em.jobs`).

``python interp.py -m seed=0,1 adapter=<a>,<b> [hydra/launcher=submitit_local|slurm]`` is a Hydra multirun whose
jobs are interp runs. Each job

* has an identity: the resolved config minus where / how it runs (:data:`VOLATILE`); its hash keys
  ``DONE.json``, so a relaunch skips a finished job (``sweep.skip_done``) and redoes one whose config changed;
* holds its directory's lock (a second writer is refused in one line; in a multirun that job fails, the others run);
* records its state in ``em_job.json`` (running with the step: direction / project / steer / ablate / report;
  done / skipped / failed with the error line / interrupted with the signal); a failure is isolated in a
  multirun (``error.log`` keeps the traceback) and makes the sweep exit 1 after the other jobs ran;
* writes ``DONE.json`` last (hash + the headline numbers of ``interp_summary.json``).

The sweep callback (:class:`em.jobs.sweep.SweepCallback`, ``hydra.callbacks.em_sweep`` in conf/interp.yaml) plans and
checks every job before launch (:func:`plan`) and ends with the done / skipped / failed summary and, with
``sweep.analyze``, ``<sweep dir>/interp_sweep.csv`` (:func:`sweep_table`: one row per job and layer).

Light on purpose (stdlib + omegaconf + pandas for the table): imported by the sweep callback before anything heavy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from em.config.common import validate
from em.jobs import records as jobs
from em.jobs.records import METRICS_PER_ANSWER, PlannedJob, _n_judges
from em.judge.factory import build_judges
from em.runtime import read_json

# Keys that say where or how an interp job runs, not what it computes: not part of its identity.
VOLATILE = ("run_dir", "cache_dir", "logger", "sweep", "progress", "quiet", "verbose", "judge_cache", "wandb",
            "train_if_missing", "train_args")
NO_TRAIN = ""  # an interp job trains nothing: its records' training hash
SUMMARY_KEYS = ("best_layer", "projection_shift", "adapter", "adapter_hash", "rule", "steer", "ablate")


def is_interp(cfg: DictConfig) -> bool:
    """Is ``cfg`` a composed ``interp`` config (interp.py's root), not a ``train`` one?"""
    return "interp" in cfg and "evaluate" not in cfg


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config (a plain dict) minus the ``hydra`` node and :data:`VOLATILE` keys. The adapter counts
    as its spec (a path, ``latest``): an adapter retrained in place under the same path is the same job."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("hydra", None)
    for k in VOLATILE:
        c.pop(k, None)
    return c


def hashes(cfg: DictConfig) -> tuple[str, str, dict[str, Any]]:
    """(hash of the job, :data:`NO_TRAIN`, the identity hashed), shaped as :func:`em.jobs.records.job_hashes`."""
    ident = identity(cfg)
    return jobs.digest(ident), NO_TRAIN, ident


def judge_failures(job_dir: Path) -> Optional[dict[str, Any]]:
    """Failed (retryable) judgments of the job's steering / ablation conditions (their ``summary.json``), as
    :func:`em.jobs.records.judge_failures`; None when there are none."""
    count = 0
    for f in sorted(Path(job_dir).glob("steer/*/summary.json")) + sorted(Path(job_dir).glob("ablate/*/summary.json")):
        for st in ((read_json(f) or {}).get("judges") or {}).values():
            count += int(st.get("failures") or 0)
    return {"count": count, "reason": "see the conditions' summary.json", "top_count": count} if count else None


def is_done(job_dir: Path, full_hash: str) -> bool:
    """``DONE.json`` records this exact job and no judgment of its conditions failed."""
    done = jobs.read_done(job_dir)
    return bool(done and done.get("hash") == full_hash) and not judge_failures(job_dir)


def done_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """What ``DONE.json`` keeps of ``interp_summary.json``: the headline numbers."""
    return {k: summary.get(k) for k in SUMMARY_KEYS if summary.get(k) is not None}


def n_answers(cfg: DictConfig) -> tuple[Optional[int], Optional[int]]:
    """(answers sampled, judged answers) by one job from its composed config; None where the question count is
    unknown. Persona answers + base and fine-tuned (project) + one run per steering / ablation condition."""
    q = cfg.questions
    nq = len(q.ids) if q.get("ids") else q.get("n_questions")
    if nq is None:
        return None, None
    ic, nf = cfg.interp, len(cfg.format)
    steps = set(ic.steps)
    on = lambda s: s in steps and bool(OmegaConf.select(ic, f"{s}.enabled", default=True))  # noqa: E731
    total = judged = 0
    if "direction" in steps and not ic.direction.file and ic.direction.rule == "persona":
        p = ic.direction.persona
        total += nq * (len(p.a) + len(p.b)) * p.samples
    if on("project"):
        total += 2 * nq * nf * cfg.samples
    if on("steer"):
        layers = len(ic.steer.layers) or ic.steer.top_layers
        alphas = [a for a in ic.steer.alphas if a != 0]
        n_cond = layers * len(alphas) * (2 if ic.steer.random_control else 1) + (len(alphas) < len(ic.steer.alphas))
        judged += n_cond * nq * nf * (ic.steer.samples or cfg.samples)
    if on("ablate"):
        judged += 3 * nq * nf * cfg.samples  # unablated, ablated, random control
    return total + judged, judged


def plan(job_cfg: DictConfig, overrides: list[str], check: bool = True):
    """One interp job of a sweep as a :class:`em.jobs.records.PlannedJob` (its composed config with the ``hydra`` node).

    With ``check``: the schema's checks and the judge's pre-flight check (an API key) when a step judges.

    Raises:
        ConfigError / JudgeError: the first failing check, one line.
    """
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(job_cfg)
    job_dir = Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)
    cfg = copy.deepcopy(job_cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.run_dir = str(job_dir)
    full_hash, train_hash, _ = hashes(cfg)
    answers, judged = n_answers(cfg)
    if check:
        validate(cfg)
        if judged and cfg.judge is not None:

            for judge in build_judges(cfg.judge):
                judge.check()
    calls = None if judged is None else judged * METRICS_PER_ANSWER * _n_judges(cfg.judge)
    return PlannedJob(overrides=overrides, job_dir=job_dir, hash=full_hash, train_hash=train_hash, trains=False,
                      answers=answers, judge_calls=calls, done=is_done(job_dir, full_hash) and cfg.sweep.skip_done)


def sweep_table(sweep_dir: Path, job_dirs: list[Path]) -> str:
    """``<sweep dir>/interp_sweep.csv``: per job and layer the direction's separation (AUC, random AUC, split-half
    cosine) and the projection shift (``all`` answers) with intervals, the job's overrides beside; returns its
    path, or why there is none."""
    import pandas as pd

    rows = []
    for d in job_dirs:
        d = Path(d)
        st = d / "direction_stats.csv"
        if not st.exists():
            continue
        t = pd.read_csv(st)
        ov = d / ".hydra" / "overrides.yaml"
        t.insert(0, "job", d.name)
        t.insert(1, "overrides", " ".join(OmegaConf.to_container(OmegaConf.load(ov))) if ov.exists() else "")
        pj = d / "projection.csv"
        if pj.exists():
            p = pd.read_csv(pj)
            p = p[(p["group"] == "all") & (p["source"] == "shift")]
            p = p[["layer", "mean", "ci_low", "ci_high", "random_mean", "random_ci_low", "random_ci_high"]]
            t = t.merge(p.rename(columns=lambda c: c if c == "layer" else f"shift_{c}"), on="layer", how="left")
        rows.append(t)
    if not rows:
        return "skipped (no direction_stats.csv)"
    out = Path(sweep_dir) / "interp_sweep.csv"
    pd.concat(rows, ignore_index=True).to_csv(out, index=False)
    return str(out)


__all__ = ["identity", "hashes", "is_done", "is_interp", "judge_failures", "plan", "sweep_table", "n_answers"]
