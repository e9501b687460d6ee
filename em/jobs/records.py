"""A job's identity and its records: what makes a relaunched sweep skip, resume or refuse a job.

* identity -- the resolved config minus where / how it runs (:data:`VOLATILE`); equal identities compute
  the same thing. Its hash keys ``DONE.json``; the hash of its training part (:data:`TRAIN_KEYS`) keys
  the trained adapter (``metrics.json``'s ``train_hash``), so an evaluation-only change retrains nothing.
* ``<job dir>/em_job.json`` -- the job's state on every launch (running / done / skipped / failed /
  interrupted, the stage, the error line, models loaded).
* ``<job dir>/DONE.json`` -- written last, when every stage finished: hash, training hash, summary.

Light on purpose (stdlib + omegaconf): read by the sweep callback before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from em.adapters import lineage
from em.errors import ConfigError
from em.runtime import atomic_write_json, atomic_write_text, read_json

JOB_FILE = "em_job.json"
LAUNCH_ENV = "EM_SWEEP_LAUNCH"  # the id of the multirun launch a job belongs to (set by em.jobs.sweep.SweepCallback)
DONE_FILE = "DONE.json"
# Keys that say where or how a job runs, not what it computes: not part of the job's identity.
VOLATILE = ("run_dir", "cache_dir", "resume", "logger", "sweep", "experiment_name", "chain", "push_to_hub",
            "evaluate.progress", "evaluate.judge_cache", "evaluate.run_dir", "evaluate.cache_dir",
            "evaluate.adapter", "evaluate.train_dir", "evaluate.dry_run", "evaluate.wandb")
# What the evaluation alone reads: dropped from the identity of a job that does not evaluate.
EVAL_KEYS = ("evaluate", "questions", "format", "generation", "judge", "thresholds")
TRAIN_KEYS = ("seed", "model", "data", "lora", "quantization", "trainer", "optimizer")


def _drop(d: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if isinstance(d.get(head), dict):
            _drop(d[head], rest)
    else:
        d.pop(head, None)


def job_identity(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config (a plain dict) minus the ``hydra`` node and the :data:`VOLATILE` keys.

    Without ``evaluate.enabled`` the evaluation's keys (:data:`EVAL_KEYS`) are dropped too: they change
    nothing such a job computes.
    """
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("hydra", None)
    if not (c.get("evaluate") or {}).get("enabled"):
        for k in EVAL_KEYS:
            c.pop(k, None)
    if not (c.get("capability") or {}).get("enabled"):
        c.pop("capability", None)  # a job without the capability step computes nothing from it
    for k in VOLATILE:
        _drop(c, k)
    lineage.identity_of(c.get("trainer") or {})  # a parent adapter counts by its content, not its path
    return c


def digest(obj: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``obj`` as sorted-key JSON (``str`` for other values)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_hashes(cfg: DictConfig) -> tuple[str, str, dict[str, Any]]:
    """(hash of the whole job, hash of its training part, the identity they hash) of a composed train config."""
    ident = job_identity(cfg)
    train = {k: ident.get(k) for k in TRAIN_KEYS}
    return digest(ident), digest(train), ident


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """``["lora.r: 32 -> 8", ...]``: the dotted keys whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def check_job_dir(job_dir: Path, train_hash: str, ident: dict) -> None:
    """Refuse a job directory that holds a training run of another config (it would resume the wrong weights).

    Raises:
        ConfigError: ``job_dir`` has ``checkpoints/`` or ``adapter/`` and its ``em_job.json`` names another
            training hash; the message lists up to three differing keys and the ways out.
    """
    prev = read_job(job_dir)
    if not prev or prev.get("train_hash") in (None, train_hash):
        return
    if not ((job_dir / "checkpoints").exists() or (job_dir / "adapter").exists()):
        return
    changed = diff({k: prev.get("identity", {}).get(k) for k in TRAIN_KEYS}, {k: ident.get(k) for k in TRAIN_KEYS})
    raise ConfigError(
        f"{job_dir} holds a training run of another config ({'; '.join(changed[:3]) or 'hash differs'}); "
        f"use another hydra.sweep.dir (or experiment_name), add the swept key to hydra.sweep.subdir, "
        f"or delete that directory"
    )


def read_job(job_dir: Path) -> Optional[dict]:
    """``<job_dir>/em_job.json``, or None (missing or torn)."""
    return read_json(Path(job_dir) / JOB_FILE)


def read_done(job_dir: Path) -> Optional[dict]:
    """``<job_dir>/DONE.json`` (``hash``, ``train_hash``, ``finished`` (unix s), ``summary``), or None."""
    return read_json(Path(job_dir) / DONE_FILE)


def is_done(job_dir: Path, full_hash: str) -> bool:
    """Does ``<job_dir>/DONE.json`` record this exact job (the hash of its identity), with no failed judgment
    in its evaluation summaries (an older version wrote DONE.json over failed judgments)?"""
    done = read_done(job_dir)
    return bool(done and done.get("hash") == full_hash) and not judge_failures(job_dir)


class JobRecord:
    """Writes ``<job dir>/em_job.json`` (atomically) as a job moves through its stages.

    Every write is the launch's fixed fields (hashes, identity, host, pid, ``started`` in unix seconds,
    job dir, ``launch``: the multirun launch's id or None) plus the state of the moment; ``models_loaded`` counts the models this job loaded.
    """

    def __init__(self, job_dir: Path, full_hash: str, train_hash: str, ident: dict, loads_before: int = 0):
        self.job_dir = Path(job_dir)
        self.loads_before = loads_before
        self.base = {"hash": full_hash, "train_hash": train_hash, "identity": ident, "host": socket.gethostname(),
                     "pid": os.getpid(), "started": time.time(), "job_dir": str(job_dir),
                     "launch": os.environ.get(LAUNCH_ENV)}

    def write(self, state: str, **fields: Any) -> None:
        """Record ``state`` (running / done / skipped / failed / interrupted) with ``fields`` (stage, error, ...)."""
        atomic_write_json(self.job_dir / JOB_FILE, self.base | {"state": state, **fields})

    def end(self, state: str, models_loaded: Optional[int] = None, **fields: Any) -> None:
        """Record a final ``state`` with its end time (unix s) and, when given, the models this job loaded."""
        extra = {} if models_loaded is None else {"models_loaded": models_loaded - self.loads_before}
        self.write(state, ended=time.time(), **fields, **extra)


def judge_failures(job_dir: Path) -> Optional[dict[str, Any]]:
    """The failed (retryable) judgments recorded in the job's evaluation summaries (``eval*/summary.json``,
    ``judges.<name>.failures``), or None when there are none.

    Returns:
        ``{"count": n, "reason": the most common reason, "top_count": how often}``.
    """
    count, top = 0, None
    for f in sorted(Path(job_dir).glob("eval*/summary.json")):
        for st in ((read_json(f) or {}).get("judges") or {}).values():
            n = int(st.get("failures") or 0)
            count += n
            t = (st.get("extra") or {}).get("top_failure")
            if n and t and (top is None or t.get("count", 0) > top.get("count", 0)):
                top = t
    if not count:
        return None
    return {"count": count, "reason": (top or {}).get("reason", "unknown"), "top_count": (top or {}).get("count", count)}


def write_done(job_dir: Path, full_hash: str, train_hash: str, summary: dict[str, Any]) -> None:
    """Write ``<job_dir>/DONE.json``: the job finished every stage; ``summary`` holds its final metrics."""
    atomic_write_json(Path(job_dir) / DONE_FILE, {"hash": full_hash, "train_hash": train_hash,
                                                  "finished": time.time(), "summary": summary})


def clear_done(job_dir: Path) -> None:
    """Remove a ``DONE.json`` of another config: it no longer describes this directory."""
    (Path(job_dir) / DONE_FILE).unlink(missing_ok=True)


def write_config_records(run_dir: str | Path, cfg: Any) -> None:
    """The config records of an accepted run: ``resolved_config.yaml`` and, in the Hydra job whose output
    directory ``run_dir`` is, ``.hydra/{config,hydra,overrides}.yaml`` (as Hydra writes them).

    conf/train.yaml and conf/evaluate.yaml set ``hydra.output_subdir: null`` so that Hydra itself writes
    nothing: a rerun refused (another seed into a directory of answers) leaves the records describing
    what is on disk. Call it only once every check of the run has passed. Each file is written atomically.
    """
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001  outside a Hydra app: no Hydra records
        hc = None
    if hc is None or Path(str(hc.runtime.output_dir)).resolve() != run_dir.resolve():
        return
    records = run_dir / ".hydra"
    atomic_write_text(records / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(records / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})))
    atomic_write_text(records / "overrides.yaml", OmegaConf.to_yaml(hc.overrides.task))


# --------------------------------------------------------------------------- a planned job (sweeps: train and interp)
METRICS_PER_ANSWER = 2  # aligned + coherent


@dataclass
class PlannedJob:
    """One job of a plan: its overrides, directory, hashes and what it will cost (None: unknown)."""

    overrides: list[str]
    job_dir: Path
    hash: str
    train_hash: str
    trains: bool
    answers: Optional[int]
    judge_calls: Optional[int]
    done: bool  # DONE.json matches: a launch will skip it


def _n_judges(judge: Any) -> int:
    """Judges of a judge node, counted without building them: an ensemble counts its members."""
    if not judge or judge.get("_target_") is None:
        return 0
    members = judge.get("judges")
    return len([m for m in members.values() if m]) if members else 1
