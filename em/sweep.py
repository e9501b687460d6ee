"""One job = the whole pipeline, and what makes a Hydra multirun of them reliable.

``run_job(cfg)`` (what train.py calls) trains (unless data=base), then, with ``evaluate.enabled=true``,
samples and judges answers into ``<job dir>/eval/`` (plus ``eval_epoch<e>/`` per adapter snapshot), and
writes ``DONE.json`` keyed by the hash of the job's resolved config. ``<job dir>/em_job.json`` records the
job's state on every launch (running / done / skipped / failed, with the error line).

Relaunching the same sweep: a job whose ``DONE.json`` hash matches is skipped before anything heavy is
imported; an interrupted one resumes (training from ``checkpoints/last.ckpt``, evaluation from the answers
already on disk, judging from the judge cache). In a multirun a failing job records its error and returns,
so the launcher runs the others; ``SweepCallback`` composes and checks every job before launch (bad
overrides, conflicting presets, job-directory collisions fail there, before any job starts), and prints
the done / skipped / failed summary (plus the sweep's analysis) at the end.

Light on purpose (no torch): imported when the callback is built, on every multirun.
"""

from __future__ import annotations

import atexit
import copy
import gc
import hashlib
import json
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from em.errors import ConfigError, EMError

log = logging.getLogger("em.sweep")

JOB_FILE = "em_job.json"
DONE_FILE = "DONE.json"
# Keys that say where or how a job runs, not what it computes: not part of the job's identity.
VOLATILE = ("run_dir", "cache_dir", "resume", "logger", "sweep", "experiment_name", "evaluate.progress",
            "evaluate.judge_cache")
TRAIN_KEYS = ("seed", "model", "data", "lora", "quantization", "trainer", "optimizer")
METRICS_PER_ANSWER = 2  # aligned + coherent


# --------------------------------------------------------------------------- identity
def _drop(d: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if isinstance(d.get(head), dict):
            _drop(d[head], rest)
    else:
        d.pop(head, None)


def job_identity(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus where/how it runs: equal identities compute the same thing."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("hydra", None)
    if not (c.get("evaluate") or {}).get("enabled"):
        for k in ("evaluate", "questions", "format", "generation", "judge"):
            c.pop(k, None)
    for k in VOLATILE:
        _drop(c, k)
    return c


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_hashes(cfg: DictConfig) -> tuple[str, str, dict[str, Any]]:
    """(hash of the whole job, hash of its training part, the identity they hash)."""
    ident = job_identity(cfg)
    train = {k: ident.get(k) for k in TRAIN_KEYS}
    return _digest(ident), _digest(train), ident


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


# --------------------------------------------------------------------------- job records
def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def models_loaded() -> int:
    """Model loads in this process so far (0 when em.models was never imported: a skipped job)."""
    m = sys.modules.get("em.models")
    return int(getattr(m, "LOADS", 0)) if m else 0


def check_job_dir(job_dir: Path, train_hash: str, ident: dict) -> None:
    """A job directory holding a different training run would be resumed with the wrong weights: refuse."""
    prev = _read(job_dir / JOB_FILE)
    if not prev or prev.get("train_hash") in (None, train_hash):
        return
    if not ((job_dir / "checkpoints").exists() or (job_dir / "adapter").exists()):
        return
    changed = _diff({k: prev.get("identity", {}).get(k) for k in TRAIN_KEYS}, {k: ident.get(k) for k in TRAIN_KEYS})
    raise ConfigError(
        f"{job_dir} holds a training run of another config ({'; '.join(changed[:3]) or 'hash differs'}); "
        f"use another hydra.sweep.dir (or experiment_name), add the swept key to hydra.sweep.subdir, "
        f"or delete that directory"
    )


# --------------------------------------------------------------------------- evaluation configs
def _quantization_node(name: str) -> dict:
    conf = Path(__file__).resolve().parents[1] / "conf" / "quantization" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(conf))


@dataclass
class EvalTarget:
    label: str  # "final" or "epoch_<e>"
    run_dir: Path
    adapter: str  # a training run dir, an adapter dir, or "none"
    condition: str


def eval_targets(cfg: DictConfig, job_dir: Path) -> list[EvalTarget]:
    data_name = cfg.evaluate.condition or cfg.data.name
    if cfg.data.source == "none":
        return [EvalTarget("final", job_dir / "eval", "none", "base")]
    snaps = list(cfg.trainer.adapter_snapshots) if cfg.evaluate.snapshots else []
    if not snaps:
        return [EvalTarget("final", job_dir / "eval", str(job_dir), data_name)]
    # Several training lengths of one run: each is its own condition in the analysis.
    out = [EvalTarget(f"epoch_{e:g}", job_dir / f"eval_epoch{e:g}", str(job_dir / "snapshots" / f"epoch_{e:g}"),
                      f"{data_name}_ep{e:g}") for e in sorted(snaps)]
    epochs = cfg.trainer.epochs
    out.append(EvalTarget("final", job_dir / "eval", str(job_dir), f"{data_name}_ep{epochs:g}"))
    return out


def eval_config(cfg: DictConfig, target: EvalTarget) -> DictConfig:
    """evaluate.py's config for one target of this job, from the job's own config (validated)."""
    from em.eval_config import EvalConfig, validate as validate_eval

    ev = cfg.evaluate
    logger = cfg.get("logger") or {}
    is_wandb = str(logger.get("_target_") or "").endswith("wandb_logger")
    quant = cfg.quantization if ev.quantization is None else _quantization_node(ev.quantization)
    node = {
        "seed": cfg.seed, "samples": ev.samples, "run_dir": str(target.run_dir), "cache_dir": cfg.cache_dir,
        "upstream": cfg.upstream, "model": cfg.model, "quantization": quant, "adapter": target.adapter,
        "train_dir": str(target.run_dir.parent), "condition": target.condition, "questions": cfg.questions,
        "format": cfg.format, "generation": cfg.generation, "judge": cfg.judge, "judge_cache": ev.judge_cache,
        "dry_run": False, "progress": ev.progress,
        "wandb": {"enabled": is_wandb, "project": logger.get("project") if is_wandb else None,
                  "group": logger.get("group") if is_wandb else None,
                  "mode": logger.get("mode", "auto") if is_wandb else "disabled",
                  # the training job's config (data, lora, ...) beside the eval config: runs line up in W&B
                  "extra_config": {k: cfg.get(k) for k in ("data", "lora", "trainer", "optimizer", "experiment_name")},
                  "tags": list(logger.get("tags") or []) if is_wandb else []},
    }
    c = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.create(OmegaConf.to_container(
        OmegaConf.create(node), resolve=True)))
    validate_eval(c)
    return c


# --------------------------------------------------------------------------- the job
@dataclass
class JobResult:
    state: str  # done | skipped | failed
    job_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


def release_memory() -> None:
    """Free what a finished stage left (jobs run one after another in one process under some launchers)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_job(cfg: DictConfig, isolate_failures: Optional[bool] = None) -> JobResult:
    """Train -> evaluate -> judge for one grid point; see the module docstring.

    isolate_failures (default: in a multirun) records an error in em_job.json and returns instead of
    raising, so one bad job does not stop the launcher's other jobs.
    """
    from em.config import validate

    isolate = _multirun() if isolate_failures is None else isolate_failures
    loads0 = models_loaded()  # (several jobs may share this process)
    tc = validate(cfg)  # every check before anything is loaded (also for evaluation, below)
    job_dir = Path(tc.run_dir)
    full_hash, train_hash, ident = job_hashes(cfg)
    # each evaluation's config, built (and checked) once, before anything runs
    evals = [(t, eval_config(cfg, t)) for t in (eval_targets(cfg, job_dir) if tc.evaluate.enabled else [])]
    check_job_dir(job_dir, train_hash, ident)

    record = {"hash": full_hash, "train_hash": train_hash, "identity": ident, "host": socket.gethostname(),
              "pid": os.getpid(), "started": time.time(), "job_dir": str(job_dir)}
    done = _read(job_dir / DONE_FILE)
    if tc.sweep.skip_done and done and done.get("hash") == full_hash:
        _write(job_dir / JOB_FILE, record | {"state": "skipped", "ended": time.time(), "models_loaded": models_loaded() - loads0})
        print(f"{job_dir}: done already (config hash {full_hash}); skipped")
        return JobResult("skipped", job_dir, done.get("summary", {}))

    if done:  # an older result of another config: it no longer describes this directory
        (job_dir / DONE_FILE).unlink()
    stage = "train"
    _write(job_dir / JOB_FILE, record | {"state": "running", "stage": stage})
    try:
        summary: dict[str, Any] = {}
        if tc.data.source == "none":
            print(f"data={tc.data.name}: no fine-tuning; evaluation uses the base model {tc.model.name}.")
        else:
            prev = _read(job_dir / "metrics.json")
            if prev and prev.get("train_hash") == train_hash and (job_dir / "adapter").is_dir():
                print(f"{job_dir}: trained already (training hash {train_hash}); evaluating")
            else:
                from em.training import run_training

                result = run_training(cfg)
                if not result.is_global_zero:  # DDP / FSDP: rank 0 writes, evaluates and judges
                    return JobResult("done", job_dir)
                prev = result.metrics
                del result
                release_memory()
                # which training config produced adapter/: a relaunch with other eval settings reuses it
                _write(job_dir / "metrics.json", prev | {"train_hash": train_hash})
            summary["train/final_loss"] = prev.get("final_loss")
        if evals:
            from em.evaluation.report import eval_metrics
            from em.evaluation.run import run_evaluation
        for t, ec in evals:
            stage = f"evaluate:{t.label}"
            _write(job_dir / JOB_FILE, record | {"state": "running", "stage": stage})
            res = run_evaluation(ec)
            prefix = "" if t.label == "final" else f"{t.label}/"
            summary.update({f"{prefix}{k}": v for k, v in eval_metrics(res.summary).items()})
            del res
            release_memory()
    except KeyboardInterrupt:
        _write(job_dir / JOB_FILE, record | {"state": "interrupted", "stage": stage, "ended": time.time()})
        raise
    except Exception as e:
        line = str(e).splitlines()[0] if str(e) else type(e).__name__
        error = line if isinstance(e, EMError) else f"{type(e).__name__}: {line}"
        (job_dir / "error.log").write_text(traceback.format_exc())
        _write(job_dir / JOB_FILE, record | {"state": "failed", "stage": stage, "error": error, "ended": time.time(),
                                             "models_loaded": models_loaded() - loads0})
        if not isolate:
            raise
        log.error("job %s failed in %s: %s (traceback: %s)", job_dir, stage, error, job_dir / "error.log")
        print(f"error: {job_dir}: {stage}: {error}", file=sys.stderr)
        return JobResult("failed", job_dir, error=error)
    finally:
        release_memory()

    _write(job_dir / DONE_FILE, {"hash": full_hash, "train_hash": train_hash, "finished": time.time(),
                                 "summary": summary})
    _write(job_dir / JOB_FILE, record | {"state": "done", "ended": time.time(), "models_loaded": models_loaded() - loads0})
    return JobResult("done", job_dir, summary)


# --------------------------------------------------------------------------- planning a sweep
@dataclass
class PlannedJob:
    overrides: list[str]
    job_dir: Path
    hash: str
    train_hash: str
    trains: bool
    answers: Optional[int]
    judge_calls: Optional[int]
    done: bool  # DONE.json matches: a launch will skip it


@dataclass
class Plan:
    sweep_dir: Path
    jobs: list[PlannedJob]

    @property
    def n_jobs(self) -> int:
        return len(self.jobs)

    def total(self, attr: str) -> Optional[int]:
        vals = [getattr(j, attr) for j in self.jobs]
        return None if any(v is None for v in vals) else sum(vals)

    def describe(self) -> str:
        n_train = sum(j.trains for j in self.jobs)
        answers, calls = self.total("answers"), self.total("judge_calls")
        done = sum(j.done for j in self.jobs)
        fmt = lambda v: "?" if v is None else f"{v:,}"  # noqa: E731
        return (f"sweep {self.sweep_dir}: {self.n_jobs} jobs ({n_train} train), {fmt(answers)} answers, "
                f"{fmt(calls)} judge calls; {done} done already (skipped)")

    def to_json(self) -> dict:
        return {"sweep_dir": str(self.sweep_dir), "n_jobs": self.n_jobs, "answers": self.total("answers"),
                "judge_calls": self.total("judge_calls"),
                "jobs": [{"overrides": j.overrides, "job_dir": str(j.job_dir), "hash": j.hash, "trains": j.trains,
                          "answers": j.answers, "judge_calls": j.judge_calls, "done": j.done} for j in self.jobs]}


def sweep_overrides(cfg: DictConfig, task_overrides: list[str], config_loader=None) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper will make them (hydra.sweeper.params + CLI)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(task_overrides)
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _n_questions(q: Any) -> Optional[int]:
    if q.get("ids"):
        return len(q.ids)
    return q.get("n_questions")


def _n_judges(judge: Any) -> int:
    if not judge or judge.get("_target_") is None:
        return 0
    members = judge.get("judges")
    return len([m for m in members.values() if m]) if members else 1


def plan_job(job_cfg: DictConfig, overrides: list[str], check: bool = True) -> PlannedJob:
    """One job's directory, hashes and counts from its composed config (with the hydra node); checks it."""
    from hydra.core.hydra_config import HydraConfig

    from em.config import validate

    HydraConfig.instance().set_config(job_cfg)
    job_dir = Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)
    cfg = copy.deepcopy(job_cfg)  # (keeps the structured schema: validate() runs its checks)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.run_dir = str(job_dir)
    full_hash, train_hash, ident = job_hashes(cfg)
    answers = calls = 0
    if check:
        from em.distributed import check_strategy

        check_strategy(validate(cfg))
        check_job_dir(job_dir, train_hash, ident)
    if cfg.evaluate.enabled:
        targets = eval_targets(cfg, job_dir)
        if check:
            for t in targets:
                eval_config(cfg, t)
            _check_judge(cfg)
        nq = _n_questions(cfg.questions)
        answers = None if nq is None else nq * len(cfg.format) * cfg.evaluate.samples * len(targets)
        calls = None if answers is None else answers * METRICS_PER_ANSWER * _n_judges(cfg.judge)
    done = _read(job_dir / DONE_FILE)
    return PlannedJob(overrides=overrides, job_dir=job_dir, hash=full_hash, train_hash=train_hash,
                      trains=cfg.data.source != "none", answers=answers, judge_calls=calls,
                      done=bool(done and done.get("hash") == full_hash and cfg.sweep.skip_done))


def _check_judge(cfg: DictConfig) -> None:
    """The judge's own pre-flight check (an API key in the environment) once, before any job starts."""
    from em.judge.factory import build_judges

    for judge in build_judges(cfg.judge):
        judge.check()


def plan_jobs(compose_job: Callable[[list[str]], DictConfig], jobs: list[list[str]], sweep_dir: Path,
              check: bool = True) -> Plan:
    planned = []
    for i, ov in enumerate(jobs):
        try:
            planned.append(plan_job(compose_job(ov), ov, check=check))
        except EMError as e:
            raise type(e)(f"job #{i} ({' '.join(ov) or 'no overrides'}): {e}") from None
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


def plan_sweep(overrides: list[str], config_dir: Optional[str] = None, check: bool = True) -> Plan:
    """The jobs `python train.py -m <overrides>` would launch (outside a running Hydra app)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    import em.config  # noqa: F401  schemas

    conf = config_dir or str(Path(__file__).resolve().parents[1] / "conf")
    GlobalHydra.instance().clear()
    try:
        return _plan_sweep(overrides, conf, check)
    except HydraException as e:  # an override that matches nothing: Hydra's own words, on one line
        raise ConfigError(" ".join(str(e).split())) from None
    finally:
        GlobalHydra.instance().clear()


def _plan_sweep(overrides: list[str], conf: str, check: bool) -> Plan:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(version_base="1.3", config_dir=conf):
        gh = GlobalHydra.instance()
        master = gh.hydra.compose_config("train", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        task = list(master.hydra.overrides.task)
        jobs = sweep_overrides(master, task, gh.config_loader())

        def compose_job(ov: list[str]) -> DictConfig:
            return compose("train", overrides=ov, return_hydra_config=True)

        sweep_dir = Path(str(master.hydra.sweep.dir))
        return plan_jobs(compose_job, jobs, sweep_dir, check=check)


# --------------------------------------------------------------------------- the summary
def summarize(sweep_dir: Path, job_dirs: list[Path], since: float) -> dict[str, Any]:
    """done / skipped / failed of this launch (records written after `since`), from the job directories."""
    out: dict[str, Any] = {"sweep_dir": str(sweep_dir), "done": [], "skipped": [], "failed": []}
    for d in job_dirs:
        rec = _read(d / JOB_FILE)
        if rec is None or rec.get("started", 0) < since - 1:
            out["failed"].append({"job_dir": str(d), "error": "did not start (no em_job.json from this launch)"})
            continue
        state = rec.get("state")
        if state in ("done", "skipped"):
            out[state].append({"job_dir": str(d), "models_loaded": rec.get("models_loaded")})
        else:
            error = rec.get("error") or (f"ended while {state} in {rec.get('stage')} (killed? see the launcher's "
                                         f"log under {sweep_dir}/.submitit/)")
            out["failed"].append({"job_dir": str(d), "stage": rec.get("stage"), "error": error})
    return out


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"sweep {s['sweep_dir']}: {len(s['done'])} done, {len(s['skipped'])} skipped, {len(s['failed'])} failed"]
    for f in s["failed"]:
        lines.append(f"  FAILED {f['job_dir']}: {f.get('stage') or ''}{': ' if f.get('stage') else ''}{f['error']}")
    if s.get("analysis"):
        lines.append(f"  analysis: {s['analysis']}")
    return "\n".join(lines)


class SweepCallback(Callback):
    """Hydra callback (hydra.callbacks.em_sweep): plan and check every job before launch, summarise after."""

    def __init__(self) -> None:
        self.plan: Optional[Plan] = None
        self.started = 0.0
        self.reported = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig

        self.started = time.time()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not str(OmegaConf.select(config, "hydra.sweeper._target_") or "").endswith("BasicSweeper"):
            log.info("not the basic sweeper: jobs are checked when they start")
            return
        loader = GlobalHydra.instance().config_loader()
        jobs = sweep_overrides(config, list(config.hydra.overrides.task), loader)
        try:
            self.plan = plan_jobs(lambda ov: loader.load_sweep_config(config, ov), jobs, sweep_dir)
        except EMError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        finally:
            HydraConfig.instance().set_config(config)
        print(self.plan.describe())
        _write(sweep_dir / "sweep_plan.json", self.plan.to_json())
        atexit.register(self._report, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summary = self._report(config)
        if summary and summary["failed"]:
            sys.exit(1)

    def _report(self, config: DictConfig) -> Optional[dict]:
        if self.reported or self.plan is None:
            return None
        self.reported = True
        sweep_dir = self.plan.sweep_dir
        summary = summarize(sweep_dir, [j.job_dir for j in self.plan.jobs], self.started)
        if OmegaConf.select(config, "sweep.analyze") and (summary["done"] or summary["skipped"]):
            summary["analysis"] = _analyze(config, sweep_dir)
        _write(sweep_dir / "sweep_summary.json", summary)
        print(format_summary(summary), flush=True)
        return summary


def _analyze(config: DictConfig, sweep_dir: Path) -> str:
    """analyze.py over the whole sweep, into <sweep dir>/analysis; a failure is reported, not raised."""
    if not any(sweep_dir.rglob("responses.parquet")):
        return "skipped (no judged responses)"
    from hydra import compose

    from em.analysis import run_analysis

    logger = config.get("logger") or {}
    overrides = [f"inputs=[{sweep_dir}]", f"run_dir={sweep_dir / 'analysis'}"]
    if str(logger.get("_target_") or "").endswith("wandb_logger"):
        overrides += ["logger=wandb", f"wandb.group={logger.get('group')}", f"wandb.project={logger.get('project')}"]
    try:
        cfg = compose("analyze", overrides=overrides)
        run_analysis(cfg)
    except Exception as e:  # noqa: BLE001  the jobs' results stay; the summary says what went wrong
        return f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return str(sweep_dir / "analysis" / "report.md")


def main(argv: list[str]) -> None:
    """python -m em.sweep [--no-check] [overrides]: the jobs, answers and judge calls a multirun would make."""
    plan = plan_sweep([a for a in argv if a != "--no-check"], check="--no-check" not in argv)
    print(plan.describe())
    for j in plan.jobs:
        print(f"  {j.job_dir.name:<40} {'train+' if j.trains else ''}eval  {j.answers or 0:>7,} answers"
              f"{'  (done)' if j.done else ''}")


if __name__ == "__main__":
    from em.cli import run_main

    run_main(main, sys.argv[1:])
