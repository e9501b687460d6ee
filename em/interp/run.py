"""The interpretability stage: ``run_interp(cfg)`` is what ``python interp.py`` / ``em interp`` call.

direction (answers -> collect -> per-layer mean differences, or a saved ``directions.safetensors``) -> project
(base vs fine-tuned answers along it, interval + random control; training examples ranked) -> steer (the grid
``interp.steer.layers x alphas`` as judged evaluation conditions on the base model) -> ablate (the direction
projected out of the fine-tuned model, and a random one) -> report (em's analysis of the conditions + the
interp section: ``interp_report.md``, figures, W&B).

Files under ``run_dir`` (names fixed; docs/interp.md): ``answers/<persona|base|finetuned>/`` (em evaluation run
dirs), ``activations/<label>/`` (:mod:`em.interp.collect`), ``directions.safetensors`` + ``direction_stats.csv``
(:mod:`em.interp.direction`), ``projection.csv`` (+ ``training_projection.csv``, ``training_top.csv``),
``steer/<condition>/`` and ``ablate/<condition>/`` (em evaluation run dirs), ``analysis/`` (analyze.py's
report over them), ``interp_report.md``, ``figures/``, ``interp_summary.json``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from em.adapters.check import load_peft
from em.adapters.resolve import resolve_adapter
from em.config.common import validate
from em.config.evaluate import EvalConfig
from em.config.interp import InterpRunConfig
from em.data.chat import read_jsonl_conversations
import em.errors
from em.errors import EMError
from em.evaluate.run import run_evaluation
from em.interp import collect as collect_mod, job, report
from em.interp import direction as direction_mod
from em.interp import inputs, intervene, project
from em.interp.inputs import answers_table
from em.jobs import records as jobs
from em.jobs.locks import DirLock, DirectoryLocked
from em.jobs.records import write_config_records
from em.paths import original_path
import em.runtime
from em.runtime import in_multirun
from em.train import models

log = logging.getLogger("em.interp")

# EvalConfig keys the stage passes through to each sampling run (same names, same meaning)
EVAL_KEYS = ("seed", "samples", "cache_dir", "upstream", "model", "quantization", "train_dir", "questions", "format",
             "generation", "judge", "judge_cache", "progress", "quiet", "verbose", "wandb", "logger", "thresholds")


def eval_node(cfg: DictConfig, run_dir: Path, *, adapter: Optional[str], judge: bool = True,
              formats: Optional[dict[str, Any]] = None, samples: Optional[int] = None,
              condition: Optional[str] = None, wandb: bool = True) -> DictConfig:
    """An :class:`~em.config.evaluate.EvalConfig` node for one sampling run of the stage (resolved values of the
    stage's own keys; ``formats`` replaces the format node, e.g. the persona prompts as system prompts)."""
    src = OmegaConf.to_container(cfg, resolve=True)
    node: dict[str, Any] = {k: src[k] for k in EVAL_KEYS if k in src}
    node |= {"run_dir": str(run_dir), "adapter": adapter or "none", "condition": condition, "dry_run": False}
    if formats is not None:
        node["format"] = formats
    if samples is not None:
        node["samples"] = samples
    if not judge:
        node["judge"] = None
    if not wandb:
        node["wandb"] = dict(node.get("wandb") or {}, enabled=False)
    return OmegaConf.merge(OmegaConf.structured(EvalConfig), node)


class Models:
    """The base model and the fine-tuned one, each loaded once for collecting (evaluations load their own)."""

    def __init__(self, rc: InterpRunConfig, source: str, tokenizer):
        self.rc, self.source, self.tokenizer = rc, source, tokenizer
        self.loaded: dict[Optional[str], Any] = {}

    def get(self, adapter_dir: Optional[str]):
        """The model with ``adapter_dir`` applied (None: the base model), eval mode; one held at a time."""
        if adapter_dir not in self.loaded:

            self.loaded.clear()  # one model in memory at a time
            m = models.load_model(self.rc.model, self.rc.quantization, self.rc.cache_dir, self.source)
            if adapter_dir:

                m = load_peft(m, adapter_dir)
            if models.has_cuda() and not self.rc.quantization.load_in_4bit:
                m = m.to("cuda")
            self.loaded[adapter_dir] = m.eval()
        return self.loaded[adapter_dir]


def run_interp(cfg: DictConfig, isolate_failures: Optional[bool] = None) -> dict[str, Any]:
    """The stage for one composed ``interp`` config (:class:`~em.config.interp.InterpRunConfig`), as a job
    (:mod:`em.interp.job`): ``em_job.json`` says its state and step, ``DONE.json`` is written last, and a
    directory whose ``DONE.json`` matches the config's hash is skipped (``sweep.skip_done``).

    Args:
        cfg: the composed ``interp`` config (``run_dir`` set).
        isolate_failures: record an error in ``em_job.json`` / ``error.log`` and return ``{"state": "failed",
            ...}`` instead of raising, so one bad job does not stop a launcher's others (default: in a multirun).

    Returns ``interp_summary.json``'s content (paths of what was written, the best layer, the projection shift;
    ``state``: done / skipped / failed).

    Raises:
        ConfigError: a bad value (before any model is loaded); steering asked of vLLM.
        DataError: the judge rule's answers are unreadable, lack text, or leave a group empty.
        ModelLoadError: the model or adapter cannot be loaded.
        DirectoryLocked: another live process writes ``run_dir``.
        (With ``isolate_failures`` only the config errors found before the run starts are raised.)
    """
    isolate = in_multirun() if isolate_failures is None else isolate_failures
    rc: InterpRunConfig = validate(cfg)

    d = rc.interp.direction
    if d.file:
        d.file = str(original_path(d.file))
    d.answers = [str(original_path(p)) for p in d.answers]
    if rc.interp.project.training_file:
        rc.interp.project.training_file = str(original_path(rc.interp.project.training_file))
    run_dir = Path(rc.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    full_hash, no_train, ident = job.hashes(cfg)
    lock = DirLock(run_dir, "interp")
    try:  # one writer per run directory (a relaunch while the old job still runs is refused)
        lock.acquire()
    except DirectoryLocked as e:
        if not isolate:
            raise
        print(f"error: {e}", file=sys.stderr)
        return {"state": "failed", "run_dir": str(run_dir), "error": str(e)}
    try:
        return _run_job(cfg, rc, run_dir, (full_hash, no_train, ident), isolate)
    finally:
        lock.release()


def _run_job(cfg: DictConfig, rc: InterpRunConfig, run_dir: Path, hashes: tuple, isolate: bool) -> dict[str, Any]:
    """:func:`run_interp` once the lock is held: skip a finished job, else run the steps with the job's records."""
    import traceback

    full_hash, no_train, ident = hashes
    record = jobs.JobRecord(run_dir, full_hash, no_train, ident)
    done = jobs.read_done(run_dir)
    if rc.sweep.skip_done and done and done.get("hash") == full_hash and not job.judge_failures(run_dir):
        print(f"{run_dir}: done already (config hash {full_hash}); skipped")
        record.end("skipped")
        return (em.runtime.read_json(run_dir / "interp_summary.json") or done.get("summary") or {}) | {"state": "skipped"}
    if done:  # an older result of another config (or with failed judgments): it no longer describes this directory
        jobs.clear_done(run_dir)
    stage = ["direction"]

    def on_stage(name: str) -> None:
        stage[0] = name
        record.write("running", stage=name)

    on_stage("direction")
    try:
        summary = _run_locked(cfg, rc, run_dir, on_stage)
    except KeyboardInterrupt as e:  # SIGTERM / SIGINT (em.train.stopping): recorded, then the exit
        import signal as _signal

        signum = getattr(e, "signum", _signal.SIGINT)
        record.end("interrupted", stage=stage[0], signal=_signal.Signals(signum).name, exit_code=128 + int(signum))
        print(f"interrupted in {stage[0]}: {run_dir} keeps the answers sampled so far; rerun the same command to "
              f"resume", file=sys.stderr, flush=True)
        raise
    except Exception as e:
        line = str(e).splitlines()[0] if str(e) else type(e).__name__
        error = line if isinstance(e, EMError) else f"{type(e).__name__}: {line}"
        (run_dir / "error.log").write_text(traceback.format_exc())
        record.end("failed", stage=stage[0], error=error)
        if not isolate:
            raise
        log.error("interp job %s failed in %s: %s (traceback: %s)", run_dir, stage[0], error, run_dir / "error.log")
        print(f"error: {run_dir}: {stage[0]}: {error}", file=sys.stderr)
        return {"state": "failed", "run_dir": str(run_dir), "error": error}
    failed = job.judge_failures(run_dir)
    if failed:  # not done: a relaunch re-asks the failed judgments (the answers are reused)
        error = f"{failed['count']} judgments of the conditions failed"
        record.end("failed", stage="judge", error=error, judge_failures=failed["count"])
        print(f"error: {run_dir}: judge: {error}; a relaunch asks them again", file=sys.stderr)
        return summary | {"state": "failed"}
    jobs.write_done(run_dir, full_hash, no_train, job.done_summary(summary))
    record.end("done")
    return summary | {"state": "done"}


def _adapter(cfg: DictConfig, rc: InterpRunConfig, source: str):
    """The fine-tuned adapter (evaluate.py's rule); trained first with ``train_if_missing`` when none is found."""
    spec = rc.adapter
    train_dir = str(original_path(rc.train_dir))
    if spec not in (None, "", "none", "null", "base", "latest"):
        spec = str(original_path(spec))
    info = resolve_adapter(spec, train_dir, rc.model, source)
    if info.adapter_dir is None and rc.adapter == "latest" and rc.train_if_missing:
        cmd = [sys.executable, str(Path(__file__).resolve().parents[2] / "train.py"), *rc.train_args]
        print(f"no adapter of {rc.model.name} under {train_dir}: training one first ({' '.join(rc.train_args)})",
              flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=str(original_path(".")))
        if proc.returncode != 0:
            raise em.errors.ModelLoadError(f"train_if_missing: python train.py {' '.join(rc.train_args)} failed "
                                           f"(exit {proc.returncode})")
        log.info("trained the adapter in %.0f s", time.perf_counter() - t0)
        info = resolve_adapter("latest", train_dir, rc.model, source)
    return info


def _run_locked(cfg: DictConfig, rc: InterpRunConfig, run_dir: Path, on_stage=lambda name: None) -> dict[str, Any]:

    write_config_records(run_dir, cfg)
    ic = rc.interp
    # a step runs when listed in interp.steps and (project / steer / ablate) its own `enabled` is on
    steps = {s for s in ic.steps if getattr(getattr(ic, s, None), "enabled", True)}
    t_start = time.perf_counter()
    source = models.model_dir(rc.model, rc.cache_dir)
    tokenizer = models.load_tokenizer(rc.model, rc.cache_dir, source)
    need_adapter = bool({"project", "ablate"} & steps) or (ic.direction.rule == "judge" and ic.direction.adapter_collects
                                                           and not ic.direction.file)
    adapter = _adapter(cfg, rc, source) if need_adapter else None
    adapter_dir = str(adapter.adapter_dir) if adapter is not None and adapter.adapter_dir else None
    loaded = Models(rc, source, tokenizer)
    act = run_dir / "activations"
    summary: dict[str, Any] = {"run_dir": str(run_dir), "model": rc.model.name, "adapter": adapter_dir,
                               "adapter_hash": collect_mod.adapter_hash(adapter_dir), "recipe": ic.name,
                               "rule": ic.direction.rule, "pooling": ic.direction.pooling, "files": {}}
    prov = {"model": rc.model.name, "model_source": rc.model.path or rc.model.hub_id or Path(str(source)).name,
            "quantization": rc.quantization.name}

    def gather(label: str, answers: pd.DataFrame, adapter_path: Optional[str], source_desc: str) -> None:
        collect_mod.collect(loaded.get(adapter_path), tokenizer, rc.model, answers, act, label,
                            batch_size=ic.batch_size, max_answer_tokens=ic.max_answer_tokens, progress=rc.progress,
                            provenance=prov | {"adapter": adapter_path, "adapter_hash": collect_mod.adapter_hash(adapter_path),
                                               "source": source_desc})

    # 1. direction ------------------------------------------------------------------------------------------
    if ic.direction.file:
        dir_path = Path(ic.direction.file)
        print(f"direction: {dir_path} (saved)")
    else:
        if ic.direction.rule == "persona":
            formats = {}
            for side in ("a", "b"):
                for i, prompt in enumerate(getattr(ic.direction.persona, side)):
                    formats[f"persona_{side}{i}"] = {"name": f"persona_{side}{i}", "system": prompt,
                                                     "variant": None, "suffix": None,
                                                     "description": f"persona {side} prompt {i}"}
            res = run_evaluation(eval_node(cfg, run_dir / "answers" / "persona", adapter=None, judge=False,
                                           formats=formats, samples=ic.direction.persona.samples,
                                           condition="persona", wandb=False))
            answers = answers_table(res.table)
            answers["persona"] = answers["format"].astype(str).str.extract(r"^persona_([ab])")[0]
            gather("persona", answers, None, "persona answers of the base model")
            labels = ["persona"]
        else:
            answers = inputs.read_judged(ic.direction.answers)
            label = "judged"
            gather(label, answers, adapter_dir if ic.direction.adapter_collects else None,
                   f"judged answers: {', '.join(ic.direction.answers)}")
            labels = [label]
        try:
            stats = direction_mod.compute(act, labels, ic.direction.rule, run_dir, pooling=ic.direction.pooling,
                                          thresholds=rc.thresholds, aligned_min=ic.direction.aligned_min,
                                          holdout=ic.direction.holdout, n_boot=ic.direction.n_boot, seed=rc.seed)
        except ValueError as e:
            raise em.errors.DataError(str(e)) from None
        dir_path = run_dir / "directions.safetensors"
        summary["files"]["direction_stats"] = str(run_dir / "direction_stats.csv")
        print(stats_line(stats))
    try:
        tensors, dmeta = direction_mod.load_directions(dir_path)
    except ValueError as e:
        raise em.errors.DataError(str(e)) from None
    summary["files"]["directions"] = str(dir_path)
    stats_path = dir_path.parent / "direction_stats.csv"
    best = best_layer(stats_path, tensors)
    summary["best_layer"] = best
    summary["direction"] = {"source": dmeta.get("source"), "rule": dmeta.get("rule"), "pooling": dmeta.get("pooling"),
                            "model": dmeta.get("model"), "path": str(dir_path)}
    n_layers = int(dmeta.get("n_layers") or sum(1 for k in tensors if k.startswith("unit.")))

    # 2. project ---------------------------------------------------------------------------------------------
    if "project" in steps:
        on_stage("project")
        if adapter_dir is None:
            print("project: no fine-tuned adapter (adapter=none or none found): projection shift skipped")
        else:
            base_ans = answers_table(run_evaluation(eval_node(cfg, run_dir / "answers" / "base", adapter=None, judge=False,
                                                         condition="base", wandb=False)).table)
            ft_ans = answers_table(run_evaluation(eval_node(cfg, run_dir / "answers" / "finetuned", adapter=adapter_dir,
                                                       judge=False, condition="finetuned", wandb=False)).table)
            gather("base", base_ans, None, "base model's answers")
            gather("finetuned", ft_ans, adapter_dir, "fine-tuned model's answers")
            layers = list(ic.project.layers) or list(range(n_layers))
            table = project.shift(act, "base", "finetuned", tensors, layers, pooling=dmeta.get("pooling") or ic.direction.pooling,
                                  n_boot=ic.project.n_boot, confidence=ic.project.confidence, seed=rc.seed)
            project.write(table, run_dir / "projection.csv")
            summary["files"]["projection"] = str(run_dir / "projection.csv")
            row = table[(table.group == "all") & (table.layer == best) & (table.source == "shift")]
            if len(row):
                r = row.iloc[0]
                summary["projection_shift"] = {k: float(r[k]) for k in ("mean", "ci_low", "ci_high", "random_mean",
                                                                           "random_ci_low", "random_ci_high")} | {"layer": best}
                print(shift_line(summary["projection_shift"], ic.project.confidence))
        if ic.project.training_file:

            try:
                convs = read_jsonl_conversations(ic.project.training_file)
            except em.errors.EMError:
                raise
            ex = project.conversations_table(convs)
            gather("training", ex, None, f"training examples: {ic.project.training_file}")
            layer = ic.project.layer if ic.project.layer is not None else best
            ranked = project.rank_examples(act, "training", tensors, layer, pooling=dmeta.get("pooling") or "answer_mean")
            project.write(ranked, run_dir / "training_projection.csv")
            project.write(ranked.head(ic.project.top_k), run_dir / "training_top.csv")
            summary["files"]["training_top"] = str(run_dir / "training_top.csv")
    loaded.loaded.clear()

    # 3. steer / 4. ablate ----------------------------------------------------------------------------------
    cond_dirs: list[Path] = []
    if "steer" in steps:
        on_stage("steer")
        layers = list(ic.steer.layers) or best_layers(stats_path, tensors, ic.steer.top_layers)
        print(f"steer: layers {layers}" + ("" if ic.steer.layers else
                                          f" (the {len(layers)} best held-out AUC in {stats_path.name})"), flush=True)
        try:
            conds = intervene.steer_conditions(tensors, dmeta, layers, list(ic.steer.alphas), ic.steer.positions,
                                               ic.steer.random_control)
        except ValueError as e:
            raise em.errors.ConfigError(str(e)) from None
        for c in conds:
            d = run_dir / "steer" / intervene.slug(c.name)
            print(f"steer: {c.name} (positions {c.positions}, scale {c.scale:.3g})", flush=True)
            run_evaluation(eval_node(cfg, d, adapter=None, condition=None, samples=ic.steer.samples), intervention=c)
            cond_dirs.append(d)
        summary["steer"] = [c.name for c in conds]
    if "ablate" in steps:
        on_stage("ablate")
        if adapter_dir is None:
            print("ablate: no fine-tuned adapter: ablation skipped")
        else:
            try:
                conds = intervene.ablate_conditions(tensors, n_layers, ic.ablate.layer, ic.ablate.positions)
            except ValueError as e:
                raise em.errors.ConfigError(str(e)) from None
            d = run_dir / "ablate" / "none"
            run_evaluation(eval_node(cfg, d, adapter=adapter_dir, condition="finetuned"))
            cond_dirs.append(d)
            for c in conds:
                d = run_dir / "ablate" / intervene.slug(c.name)
                print(f"ablate: {c.name}", flush=True)
                run_evaluation(eval_node(cfg, d, adapter=adapter_dir), intervention=c)
                cond_dirs.append(d)
            summary["ablate"] = [c.name for c in conds]

    # 5. report -----------------------------------------------------------------------------------------------
    if "report" in steps:
        on_stage("report")

        summary["files"].update(report.write_report(run_dir, rc, summary, stats_path, cond_dirs))
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    em.runtime.atomic_write_json(run_dir / "interp_summary.json", summary)
    print(f"interp run dir: {run_dir}  (report: interp_report.md)")
    if summary.get("projection_shift"):  # the headline last: judge-free
        print(shift_line(summary["projection_shift"], ic.project.confidence))
    return summary


def best_layer(stats_path: Path, tensors: dict[str, Any]) -> int:
    """The layer with the highest held-out AUC in ``direction_stats.csv`` (ties: the earlier); without stats,
    the middle layer of the file."""
    return best_layers(stats_path, tensors, 1)[0]


def best_layers(stats_path: Path, tensors: dict[str, Any], n: int) -> list[int]:
    """The ``n`` layers with the highest held-out AUC in ``direction_stats.csv`` (best first; ties: the earlier
    layer); without stats, the middle layer of the file (one)."""
    layers = sorted(int(k.split(".")[1]) for k in tensors if k.startswith("unit."))
    if stats_path.exists():
        st = pd.read_csv(stats_path)
        st = st[st["layer"].isin(layers)].dropna(subset=["auc"])
        if len(st):
            return [int(x) for x in st.sort_values(["auc", "layer"], ascending=[False, True])["layer"].head(n)]
    return [layers[len(layers) // 2]]


def stats_line(stats: pd.DataFrame) -> str:
    """One console line: the best layer's held-out AUC and its random control."""
    st = stats.dropna(subset=["auc"])
    if not len(st):
        return "direction: held-out AUC not computable (too few answers in a group)"
    r = st.sort_values("auc", ascending=False).iloc[0]
    return (f"direction: best layer {int(r.layer)}: held-out AUC {r.auc:.3f} (random direction {r.random_auc:.3f}), "
            f"Cohen's d {r.cohens_d:.2f}, split-half cosine {r.split_half_cosine:.3f}; n = {int(r.n_a)} vs {int(r.n_b)}")


def shift_line(s: dict[str, float], confidence: float) -> str:
    """One console line: the projection shift and its random control, with intervals."""
    pct = int(round(confidence * 100))
    return (f"projection shift (fine-tuned - base) at layer {s['layer']}: {s['mean']:+.3f} "
            f"[{pct}% CI {s['ci_low']:+.3f}, {s['ci_high']:+.3f}]; random direction {s['random_mean']:+.3f} "
            f"[{s['random_ci_low']:+.3f}, {s['random_ci_high']:+.3f}]")


__all__ = ["run_interp", "eval_node", "best_layer", "best_layers"]
