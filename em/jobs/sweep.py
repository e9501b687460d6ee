"""What makes a Hydra multirun of jobs reliable: a checked plan before launch, a summary after.

``SweepCallback`` (``hydra.callbacks.em_sweep`` in conf/train.yaml and conf/interp.yaml) composes and checks every job before
launch -- bad overrides, conflicting presets, job-directory collisions fail there, before any job starts --
and prints the done / skipped / failed summary (plus the sweep's analysis, with the sweep's
``thresholds``) at the end. ``python -m em.jobs.sweep <overrides>`` prints the plan of a multirun without
launching it. One job is :func:`em.jobs.run.run_job`; job identity and records are :mod:`em.jobs`.

Light on purpose (no torch): imported when the callback is built, on every multirun.
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from em.analysis.run import run_analysis
import em.config  # noqa: F401  registers the schemas
from em.config.common import validate
from em.config.compose import hydra_error_line
from em.errors import ConfigError, EMError
from em.interp import job as interp_job
from em.jobs import records as jobs, sweep_summary
from em.jobs.records import METRICS_PER_ANSWER, PlannedJob, _n_judges
from em.jobs.sweep_summary import (exit_status, format_summary, from_launch, summarize,  # noqa: F401  (em.jobs.sweep's API)
                                   summary_exit_status)
from em.jobs.targets import eval_config, eval_targets
from em.judge.factory import build_judges
from em.paths import CONF_DIR
from em.runtime import atomic_write_json, is_wandb_logger
from em.train.distributed import check_strategy

log = logging.getLogger("em.jobs.sweep")

# --------------------------------------------------------------------------- planning a sweep
@dataclass
class Plan:
    """The jobs a multirun will launch, in launch order."""

    sweep_dir: Path
    jobs: list[PlannedJob]

    @property
    def n_jobs(self) -> int:
        """The number of jobs."""
        return len(self.jobs)

    def total(self, attr: str) -> Optional[int]:
        """The sum of ``attr`` (``answers``, ``judge_calls``) over the jobs; None when any job's is unknown."""
        vals = [getattr(j, attr) for j in self.jobs]
        return None if any(v is None for v in vals) else sum(vals)

    def describe(self) -> str:
        """One line: jobs, training jobs, answers, judge calls, jobs done already."""
        n_train = sum(j.trains for j in self.jobs)
        answers, calls = self.total("answers"), self.total("judge_calls")
        done = sum(j.done for j in self.jobs)
        fmt = lambda v: "?" if v is None else f"{v:,}"  # noqa: E731
        return (f"sweep {self.sweep_dir}: {self.n_jobs} jobs ({n_train} train), {fmt(answers)} answers, "
                f"{fmt(calls)} judge calls; {done} done already (skipped)")

    def to_json(self) -> dict:
        """The plan as written to ``<sweep dir>/sweep_plan.json``."""
        return {"sweep_dir": str(self.sweep_dir), "n_jobs": self.n_jobs, "answers": self.total("answers"),
                "judge_calls": self.total("judge_calls"),
                "jobs": [{"overrides": j.overrides, "job_dir": str(j.job_dir), "hash": j.hash, "trains": j.trains,
                          "answers": j.answers, "judge_calls": j.judge_calls, "done": j.done} for j in self.jobs]}


def sweep_overrides(cfg: DictConfig, task_overrides: list[str], config_loader=None) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper will make them (``hydra.sweeper.params`` + CLI)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(task_overrides)
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _n_questions(q: Any) -> Optional[int]:
    return len(q.ids) if q.get("ids") else q.get("n_questions")


def plan_job(job_cfg: DictConfig, overrides: list[str], check: bool = True) -> PlannedJob:
    """One job's directory, hashes and counts from its composed config (with the ``hydra`` node).

    With ``check``, runs every check a launch would (schema ranges, strategy, job directory, each
    evaluation's config, the judges' pre-flight check such as an API key in the environment).

    Raises:
        ConfigError / JudgeError: the first failing check, one line.
    """
    from hydra.core.hydra_config import HydraConfig

    if interp_job.is_interp(job_cfg):  # an interp.py job: its own identity and counts
        return interp_job.plan(job_cfg, overrides, check=check)

    HydraConfig.instance().set_config(job_cfg)
    job_dir = Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)
    cfg = copy.deepcopy(job_cfg)  # (keeps the structured schema: validate() runs its checks)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.run_dir = str(job_dir)
    full_hash, train_hash, ident = jobs.job_hashes(cfg)
    answers = calls = 0
    if check:

        check_strategy(validate(cfg))
        jobs.check_job_dir(job_dir, train_hash, ident)
    if cfg.evaluate.enabled:
        targets = eval_targets(cfg, job_dir)
        if check:

            for t in targets:
                eval_config(cfg, t)
            for judge in build_judges(cfg.evaluate.judge):  # its pre-flight check (an API key), once
                judge.check()
        nq = _n_questions(cfg.evaluate.questions)
        answers = None if nq is None else nq * len(cfg.evaluate.format) * cfg.evaluate.samples * len(targets)
        calls = None if answers is None else answers * METRICS_PER_ANSWER * _n_judges(cfg.evaluate.judge)
    return PlannedJob(overrides=overrides, job_dir=job_dir, hash=full_hash, train_hash=train_hash,
                      trains=cfg.data.source != "none", answers=answers, judge_calls=calls,
                      done=jobs.is_done(job_dir, full_hash) and cfg.sweep.skip_done)


def plan_jobs(compose_job: Callable[[list[str]], DictConfig], jobs_: list[list[str]], sweep_dir: Path,
              check: bool = True) -> Plan:
    """Plan (and with ``check``, check) each job; ``compose_job(overrides)`` composes one with its hydra node.

    Raises:
        ConfigError (or the check's EMError): ``job #<i> (<overrides>): <the one line>``, or two jobs that
            would write the same directory.
    """
    from hydra.errors import HydraException

    planned = []
    for i, ov in enumerate(jobs_):
        try:
            planned.append(plan_job(compose_job(ov), ov, check=check))
        except EMError as e:
            raise type(e)(f"job #{i} ({' '.join(ov) or 'no overrides'}): {e}") from None
        except HydraException as e:

            raise ConfigError(f"job #{i} ({' '.join(ov) or 'no overrides'}): {hydra_error_line(e)}") from None
    seen: dict[Path, int] = {}
    for i, j in enumerate(planned):
        if j.job_dir in seen:
            a = seen[j.job_dir]
            raise ConfigError(
                f"jobs #{a} ({' '.join(planned[a].overrides)}) and #{i} ({' '.join(j.overrides)}) both write "
                f"{j.job_dir}: add the swept key to hydra.sweep.subdir"
            )
        seen[j.job_dir] = i
    return Plan(sweep_dir=sweep_dir, jobs=planned)


def plan_sweep(overrides: list[str], check: bool = True) -> Plan:
    """The jobs ``python train.py -m <overrides>`` would launch (outside a running Hydra app).

    Raises:
        ConfigError: an override that matches nothing (one line), or any job's failing check.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            gh = GlobalHydra.instance()
            try:
                master = gh.hydra.compose_config("train", overrides, run_mode=RunMode.MULTIRUN,
                                                 with_log_configuration=False)
            except HydraException as e:  # an override that matches nothing: one line
                raise ConfigError(hydra_error_line(e)) from None
            jobs_ = sweep_overrides(master, list(master.hydra.overrides.task), gh.config_loader())
            return plan_jobs(lambda ov: compose("train", overrides=ov, return_hydra_config=True), jobs_,
                             Path(str(master.hydra.sweep.dir)), check=check)
    finally:
        GlobalHydra.instance().clear()


# --------------------------------------------------------------------------- the summary
class SweepCallback(Callback):
    """Hydra callback (``hydra.callbacks.em_sweep``): plan and check every job before launch, summarise after.

    A failing check prints ``error: job #<i> (...): ...`` and exits 2 before any job starts; a failed job
    makes the multirun exit 1 after the others ran.
    """

    def __init__(self) -> None:
        self.plan: Optional[Plan] = None
        self.launch: Optional[str] = None  # this launch's id: the jobs' em_job.json carry it (EM_SWEEP_LAUNCH)
        self.before: dict[Path, Optional[dict]] = {}  # each job's em_job.json before the launch
        self.reported = False
        self.summary: Optional[dict] = None
        self._config: Optional[DictConfig] = None
        sweep_summary.CALLBACKS.append(self)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Plan and check every job (basic sweeper only); write ``<sweep dir>/sweep_plan.json``."""
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig

        import uuid

        self.launch = uuid.uuid4().hex  # (the jobs inherit it: in this process, submitit's or SLURM's)
        os.environ[jobs.LAUNCH_ENV] = self.launch
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not str(OmegaConf.select(config, "hydra.sweeper._target_") or "").endswith("BasicSweeper"):
            log.info("not the basic sweeper: jobs are checked when they start")
            return
        loader = GlobalHydra.instance().config_loader()
        jobs_ = sweep_overrides(config, list(config.hydra.overrides.task), loader)
        try:
            self.plan = plan_jobs(lambda ov: loader.load_sweep_config(config, ov), jobs_, sweep_dir)
        except EMError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        finally:
            HydraConfig.instance().set_config(config)
        print(self.plan.describe())
        atomic_write_json(sweep_dir / "sweep_plan.json", self.plan.to_json())
        self.before = {j.job_dir: jobs.read_job(j.job_dir) for j in self.plan.jobs}
        self._config = config
        atexit.register(self._report, config)  # (a last resort: train.py's cli() reports and sets the exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Print the summary (and analyse the sweep); exit 1 when a job failed, 128 + signal when one was
        interrupted."""
        summary = self._report(config)
        code = summary_exit_status(summary)
        if code:
            sys.exit(code)

    def _report(self, config: DictConfig) -> Optional[dict]:
        if self.reported or self.plan is None:
            return None
        self.reported = True
        sweep_dir = self.plan.sweep_dir
        summary = summarize(sweep_dir, [j.job_dir for j in self.plan.jobs], launch=self.launch, before=self.before)
        self.summary = summary
        if OmegaConf.select(config, "sweep.analyze") and (summary["done"] or summary["skipped"]):

            if interp_job.is_interp(config):  # interp jobs: their directions and shifts side by side
                summary["analysis"] = interp_job.sweep_table(sweep_dir, [j.job_dir for j in self.plan.jobs])
            else:
                summary["analysis"] = analyze_sweep(config, sweep_dir)
        atomic_write_json(sweep_dir / "sweep_summary.json", summary)
        print(format_summary(summary), flush=True)
        return summary


def analysis_overrides(config: DictConfig, sweep_dir: Path) -> list[str]:
    """analyze.py's overrides for a sweep: its inputs and run dir, the sweep's ``thresholds``, its W&B logger."""
    overrides = [f"inputs=[{sweep_dir}]", f"run_dir={sweep_dir / 'analysis'}"]
    thresholds = OmegaConf.select(config, "thresholds")
    if thresholds is not None:
        overrides += [f"thresholds.{k}={v}" for k, v in OmegaConf.to_container(thresholds, resolve=True).items()]
    logger = config.get("logger")
    if is_wandb_logger(logger):
        overrides += ["logger=wandb", f"logger.group={logger.get('group')}", f"logger.project={logger.get('project')}"]
        if logger.get("entity"):
            overrides.append(f"logger.entity={logger.get('entity')}")
    return overrides


def analyze_sweep(config: DictConfig, sweep_dir: Path) -> str:
    """analyze.py over the whole sweep, into ``<sweep dir>/analysis``; returns the report path or what went wrong.

    A failure is reported in the returned line, not raised: the jobs' results stay.
    """
    if not any(sweep_dir.rglob("responses.parquet")):
        return "skipped (no judged responses)"
    from hydra import compose

    try:
        run_analysis(compose("analyze", overrides=analysis_overrides(config, sweep_dir)))
    except Exception as e:  # noqa: BLE001  the jobs' results stay; the summary says what went wrong
        return f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return str(sweep_dir / "analysis" / "report.md")


def main(argv: list[str]) -> None:
    """``python -m em.jobs.sweep [--no-check] [overrides]``: the jobs, answers and judge calls a multirun would make."""
    plan = plan_sweep([a for a in argv if a != "--no-check"], check="--no-check" not in argv)
    print(plan.describe())
    for j in plan.jobs:
        print(f"  {j.job_dir.name:<40} {'train+' if j.trains else ''}eval  {j.answers or 0:>7,} answers"
              f"{'  (done)' if j.done else ''}")


if __name__ == "__main__":
    from em.commands import run_main

    run_main(main, sys.argv[1:])
