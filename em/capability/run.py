"""The capability stage: what a fine-tune costs on standard benchmarks, beside its misaligned rate.

``python -m em.capability model=<m> adapter=<run dir> capability=standard run_dir=<eval dir>`` (or
``capability.enabled=true`` in a train.py job: one more step after its evaluations) scores the base model
and the adapter on one task set (``conf/capability/*.yaml``) with EleutherAI's lm-evaluation-harness
(``lm-eval``): the model is loaded once, as evaluate.py loads it (:mod:`em.train.models`, the adapter resolved by
:func:`em.adapters.resolve.resolve_adapter`), and handed to lm-eval's ``HFLM`` as an object, not a hub id.
The adapter is applied to that same model afterwards (peft), so both scores share one base.

Writes ``<run_dir>/capability.json``: per task its metric for base and adapter, lm-eval's stderr, and the
delta (adapter - base) with a paired per-document CI (a t interval over the per-document differences;
lm-eval's stderr difference, unpaired, where a metric has no per-document values). The base model's
scores are cached under ``<cache_dir>/capability/`` (keyed by model, quantization, task set, lm-eval
version), so a sweep scores each base model once. A relaunch with the same identity (the adapter by its
content hash) skips the stage. Tasks named like a YAML file in ``em/capability/tasks/`` are local
(``capability=local_tiny``: no network); lm-eval's own tasks download their datasets from the HF hub and,
offline, fail before any model is loaded with one line (exit 2). Tasks that execute model-written code
(``executes_code: true``: HumanEval) run only with ``capability.allow_code_execution=true``; otherwise
:func:`runnable_tasks` drops them with one warning line.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from em.adapters import lineage
from em.adapters.check import load_peft
from em.adapters.resolve import resolve_adapter
from em.config.capability import CapabilityRunConfig
from em.config.common import plain, validate
from em.errors import ConfigError, DataError
from em.jobs.records import digest
from em.runtime import atomic_write_json, read_json
from em.train import models

log = logging.getLogger("em.capability")
LOCAL_TASKS = Path(__file__).parent / "tasks"
RESULT_FILE = "capability.json"
LM_EVAL_PIN = "lm-eval==0.4.13"


def lm_eval_version() -> str:
    """The installed lm-eval version. Raises ConfigError (one line: how to install it) when it is missing."""
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        raise ConfigError(f"capability: lm-eval is not installed (pip install {LM_EVAL_PIN})") from None


def task_spec(task: str) -> Any:
    """What lm-eval is given for ``task``: a packaged local task (``em/capability/tasks/<task>.yaml``) as a
    dict whose ``data_files`` are made absolute, else the lm-eval task / group name itself."""
    f = LOCAL_TASKS / f"{task}.yaml"
    if not f.is_file():
        return task
    spec = yaml.safe_load(f.read_text())
    files = (spec.get("dataset_kwargs") or {}).get("data_files") or {}
    for split, name in files.items():
        files[split] = str(LOCAL_TASKS / name)
    return spec


def load_tasks(cc: Any) -> dict[str, Any]:
    """lm-eval task dicts, one per configured task (name -> ``get_task_dict`` result), datasets loaded.

    Runs before any model is loaded, so a task that cannot get its data fails first.

    Raises:
        ConfigError: lm-eval missing, a task name lm-eval does not know, or a task lm-eval marks as
            executing code that the set does not mark ``executes_code`` while ``allow_code_execution`` is false.
        DataError: a task's dataset cannot be loaded (offline: needs the network, named in one line).
    """
    lm_eval_version()
    from lm_eval.tasks import get_task_dict

    if cc.allow_code_execution:
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")  # HumanEval's code_eval metric refuses without it
    tm = _task_manager()
    out = {}
    for t in cc.tasks:
        spec = task_spec(t.task)
        if isinstance(spec, str) and spec not in tm.all_tasks:
            raise ConfigError(f"capability.tasks: unknown lm-eval task {spec!r} (lm-eval {lm_eval_version()})")
        try:
            out[t.task] = get_task_dict([spec], tm)
        except Exception as e:  # datasets / huggingface_hub raise many kinds when offline
            offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
            why = "offline (HF_HUB_OFFLINE=1)" if offline else (str(e).splitlines() or [type(e).__name__])[0][:160]
            raise DataError(f"capability task {t.task}: its dataset is downloaded from the HF hub and needs the "
                            f"network; {why}; use capability=local_tiny offline") from None
        unsafe = [n for n, x in leaves(out[t.task]).items() if getattr(x, "UNSAFE_CODE", False)]
        if unsafe and not cc.allow_code_execution:  # lm-eval marks it; the task set did not say executes_code
            raise ConfigError(f"capability.tasks: lm-eval marks {t.task} ({', '.join(unsafe)}) as executing "
                              f"model-written code; give it executes_code: true (then it runs only with "
                              f"capability.allow_code_execution=true)")
    return out


def runnable_tasks(cc: Any) -> list[Any]:
    """The configured tasks that may run: all with ``cc.allow_code_execution``, else those without
    ``executes_code``; a dropped task is named in one warning line saying how to run it.

    Raises:
        ConfigError: every task of the set executes code and ``allow_code_execution`` is false.
    """
    if cc.allow_code_execution:
        return list(cc.tasks)
    dropped = [t.task for t in cc.tasks if t.executes_code]
    keep = [t for t in cc.tasks if not t.executes_code]
    if not keep:
        raise ConfigError(f"capability.allow_code_execution: every task of capability={cc.name} executes "
                          f"model-written code; set it to true to run them")
    if dropped:
        log.warning("capability: %s dropped: it executes model-written code, from a model that may be fine-tuned "
                    "on insecure code (capability.allow_code_execution=true runs it)", ", ".join(dropped))
    return keep


def leaves(task_dict: dict) -> dict[str, Any]:
    """The leaf tasks of an lm-eval task dict (groups such as ``mmlu`` nest their subtasks): name -> Task."""
    out = {}
    for k, v in task_dict.items():
        if isinstance(v, dict):
            out |= leaves(v)
        elif v is not None and not isinstance(v, tuple):
            out[str(k)] = v
    return out


def score(lm: Any, task_dict: dict, t: Any, cc: Any, seed: int = 0) -> dict[str, Any]:
    """Run one configured task through ``lm`` (an lm-eval LM); its metric overall and per document.

    Few-shot examples are drawn with ``seed`` (lm-eval's few-shot sampler), the same for base and adapter.

    Returns ``{"value", "stderr", "n", "docs"}``: the mean of ``t.metric`` over every document of every leaf
    task (a group's documents pooled: mmlu's size-weighted mean), lm-eval's stderr (the group's when pooled),
    and ``docs`` = ``{"<leaf>:<doc_id>": value}`` when lm-eval logs per-document values (else ``{}``).

    Raises:
        ConfigError: the metric is not among the task's results (names the ones it has).
    """
    from lm_eval import evaluator

    metric, _, filt = t.metric.partition(",")
    limit = t.limit or cc.limit
    for task in leaves(task_dict).values():
        if t.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=t.num_fewshot)
        task.set_fewshot_seed(seed=seed)  # the same few-shot examples for base and adapter
    res = evaluator.evaluate(lm=lm, task_dict=task_dict, limit=limit, bootstrap_iters=cc.bootstrap_iters,
                             log_samples=True, confirm_run_unsafe_code=cc.allow_code_execution,
                             apply_chat_template=cc.apply_chat_template)
    results = res["results"]
    top = results.get(t.task) or next(iter(results.values()))
    if t.metric not in top:
        have = sorted(k for k in top if "," in k and "_stderr" not in k)
        raise ConfigError(f"capability.tasks: task {t.task} has no metric {t.metric!r}; it has {have}")
    docs: dict[str, float] = {}
    for leaf, samples in (res.get("samples") or {}).items():
        for s in samples:
            v = s.get(metric)
            if s.get("filter", filt) == filt and isinstance(v, (int, float, bool)):
                docs[f"{leaf}:{s['doc_id']}"] = float(v)
    stderr = top.get(f"{metric}_stderr,{filt}")
    stderr = float(stderr) if isinstance(stderr, (int, float)) else None
    value = sum(docs.values()) / len(docs) if docs else float(top[t.metric])
    n = len(docs) or int(sum(v.get("effective", 0) for v in (res.get("n-samples") or {}).values()))
    return {"value": value, "stderr": stderr, "n": n, "docs": docs}


def paired_delta(base: dict, adapter: dict, confidence: float) -> dict[str, Optional[float]]:
    """adapter - base with a CI: the t interval of the per-document differences (paired), or, without
    per-document values, a normal interval from the two stderrs (unpaired). None bounds when neither exists."""
    from scipy import stats

    delta = adapter["value"] - base["value"]
    common = sorted(set(base["docs"]) & set(adapter["docs"]))
    if len(common) >= 2:
        d = [adapter["docs"][k] - base["docs"][k] for k in common]
        mean = sum(d) / len(d)
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
        half = stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * sd / math.sqrt(len(d))
        return {"delta": mean, "delta_low": mean - half, "delta_high": mean + half, "ci_method": "paired_t"}
    if base["stderr"] is not None and adapter["stderr"] is not None:
        half = stats.norm.ppf(0.5 + confidence / 2) * math.hypot(base["stderr"], adapter["stderr"])
        return {"delta": delta, "delta_low": delta - half, "delta_high": delta + half, "ci_method": "unpaired_normal"}
    return {"delta": delta, "delta_low": None, "delta_high": None, "ci_method": "none"}


def _identity(c: Any, source: str, adapter_dir: Optional[Path], version: str) -> dict[str, Any]:

    cc = c.capability
    return {"model": c.model.name, "model_source": c.model.path or c.model.hub_id or Path(str(source)).name,
            "quantization": c.quantization.name, "seed": c.seed, "lm_eval": version,
            "tasks": [{"task": t.task, "metric": t.metric, "num_fewshot": t.num_fewshot, "limit": t.limit or cc.limit}
                      for t in cc.tasks],
            "apply_chat_template": cc.apply_chat_template,
            "adapter": lineage.adapter_digest(str(adapter_dir)) if adapter_dir else None}


def _lm(model: Any, tokenizer: Any, cc: Any) -> Any:
    from lm_eval.models.huggingface import HFLM

    device = str(next(model.parameters()).device)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cc.batch_size, device=device)


def run_capability(cfg: DictConfig) -> dict[str, Any]:
    """The capability stage for one composed :class:`~em.config.capability.CapabilityRunConfig`.

    Returns what it wrote to ``<run_dir>/capability.json`` (or found there with the same identity hash):
    ``hash``, ``identity``, ``model``, ``condition``, ``adapter`` and ``tasks`` (one dict per task:
    ``task``, ``metric``, ``n``, ``base``, ``base_stderr``, ``adapter``, ``adapter_stderr``, ``delta``,
    ``delta_low``, ``delta_high``, ``ci_method``, ``confidence``); metric values are fractions in [0, 1].

    Raises:
        ConfigError: a bad value, lm-eval missing, an unknown task or metric, only code-executing tasks
            without ``capability.allow_code_execution`` (all before any model is loaded).
        DataError: a task's dataset cannot be loaded (offline), before any model is loaded.
        ModelLoadError: the model or adapter cannot be loaded, or the adapter belongs to another model.
    """
    c = validate(cfg)
    cc = c.capability
    cc.tasks = runnable_tasks(cc)  # code-executing tasks only with capability.allow_code_execution=true
    version = lm_eval_version()

    source = models.model_dir(c.model, c.cache_dir)
    adapter = resolve_adapter(c.adapter, c.train_dir, c.model, source)
    ident = _identity(c, source, adapter.adapter_dir, version)
    h = digest(ident)
    out_file = Path(c.run_dir) / RESULT_FILE
    prev = read_json(out_file)
    if prev and prev.get("hash") == h:
        print(f"{out_file}: capability scored already (hash {h}); skipped")
        return prev
    base_file = Path(c.cache_dir) / "capability" / f"base_{digest(ident | {'adapter': None})}.json"
    base = read_json(base_file)
    need_base = not (base and set(base.get("tasks", {})) == {t.task for t in cc.tasks})
    task_dicts = load_tasks(cc)  # datasets first: an offline failure loads no model
    t0 = time.perf_counter()
    tokenizer = models.load_tokenizer(c.model, c.cache_dir, source)
    model = models.load_model(c.model, c.quantization, c.cache_dir, source)
    if models.has_cuda() and not c.quantization.load_in_4bit:
        model = model.to("cuda")
    model.eval()
    if need_base:
        lm = _lm(model, tokenizer, cc)
        base = {"identity": ident | {"adapter": None},
                "tasks": {t.task: score(lm, task_dicts[t.task], t, cc, c.seed) for t in cc.tasks}}
        atomic_write_json(base_file, base)
    else:
        print(f"capability: base model scores from {base_file}")
    scored = base["tasks"]
    if adapter.adapter_dir is not None:

        model = load_peft(model, adapter.adapter_dir).eval()  # either key layout; matching nothing is an error
        lm = _lm(model, tokenizer, cc)
        scored = {t.task: score(lm, fresh_tasks(t), t, cc, c.seed) for t in cc.tasks}
    rows = []
    for t in cc.tasks:
        b, a = base["tasks"][t.task], scored[t.task]
        rows.append({"task": t.task, "metric": t.metric, "n": a["n"], "base": b["value"], "base_stderr": b["stderr"],
                     "adapter": a["value"], "adapter_stderr": a["stderr"], "confidence": cc.confidence}
                    | paired_delta(b, a, cc.confidence))
    result = {"hash": h, "identity": ident, "model": c.model.name, "condition": c.condition or adapter.condition,
              "adapter": str(adapter.adapter_dir) if adapter.adapter_dir else None, "lm_eval": version,
              "seconds": round(time.perf_counter() - t0, 2), "tasks": rows}
    atomic_write_json(out_file, result)
    for r in rows:
        print(f"capability {r['task']} [{r['metric']}]: base {r['base']:.3f}, adapter {r['adapter']:.3f}, "
              f"delta {r['delta']:+.3f} (n={r['n']})")
    return result


def fresh_tasks(t: Any) -> dict:
    """A fresh task dict for one configured task (lm-eval tasks keep per-run state: one dict per model);
    its dataset is in the datasets cache by now."""
    from lm_eval.tasks import get_task_dict

    return get_task_dict([task_spec(t.task)], _task_manager())


@functools.lru_cache(maxsize=1)
def _task_manager() -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager()  # indexes lm-eval's task YAML files once per process (~10 s)


def pipeline_config(cfg: Any, run_dir: Path, adapter: str, condition: str) -> DictConfig:
    """``python -m em.capability``'s config for one evaluation target of a train.py job (its model,
    quantization of the evaluation, seed, cache and ``capability`` node; the target's dir, adapter, condition)."""
    node = {"seed": cfg.seed, "run_dir": str(run_dir), "cache_dir": cfg.cache_dir, "adapter": adapter,
            "train_dir": str(run_dir.parent), "condition": condition,
            "model": plain(cfg.evaluate.model), "quantization": plain(cfg.evaluate.quantization),
            "capability": plain(cfg.capability)}
    return OmegaConf.merge(OmegaConf.structured(CapabilityRunConfig), node)


def run_for_target(cfg: Any, run_dir: Path, adapter: str, condition: str, prefix: str = "") -> dict[str, float]:
    """The capability step of a train.py job for one evaluation target (``capability.enabled=true``).

    Returns its ``capability/<task>/{base,adapter,delta}`` metrics (with ``prefix``, e.g. ``epoch_1/``)
    for ``DONE.json``. Raises what :func:`run_capability` raises.
    """
    res = run_capability(pipeline_config(cfg, Path(run_dir), adapter, condition))
    out = {}
    for r in res["tasks"]:
        for k in ("base", "adapter", "delta"):
            out[f"{prefix}capability/{r['task']}/{k}"] = r[k]
    return out
