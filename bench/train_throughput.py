"""Benchmark: em's Lightning 4-bit LoRA trainer against TRL's SFTTrainer, same model, data, order and settings.

    python bench/train_throughput.py                        # real Gemma 3 270M, 32 examples (a few minutes on 2 cores)
    python bench/train_throughput.py --model tiny           # tiny random Qwen3 model (about a minute)
    python bench/train_throughput.py --steps 4 --json out.json -o trainer.gradient_checkpointing=true
    python bench/train_throughput.py --threads 1 --repeat 2  # steadier on a machine shared with other jobs

Each trainer runs in its own subprocess, one after the other, so its peak memory is its own. Targets:
em's tokens/s >= TRL's, em's peak memory <= TRL's, and per-step losses within 2 % of each other.

What is held equal
  * model / 4-bit / LoRA: both children build the model from the same composed em config with em's own
    em.train.models.build_model (what run_training calls: seed, load_model, attach_lora), and the initial LoRA
    weights are hashed in each child right after it and at the start of training (the hashes must match). TRL
    casts the adapter weights of a quantised model to bf16 in SFTTrainer.__init__; the bench restores the fp32
    initial weights right after.
  * data and order: prepared once per child with em's own em.data.module.prepare_data (what run_training
    calls: load_conversations, encode_dataset, the seeded LengthGroupedBatchSampler); TRL receives the
    pre-tokenised examples (input_ids + labels, dataset_kwargs={"skip_prepare_dataset": True}) laid out in the
    order em's sampler yields them, and iterates them with a SequentialSampler (override of
    Trainer._get_train_sampler), so both see identical batches and accumulation windows. The em child trains
    through em.train.run.fit, the third step of run_training.
  * optimisation: the optimizer is the one em's config instantiates (torch AdamW on CPU, paged 8-bit AdamW on
    CUDA), handed to TRL via `optimizers=`; HF's scheduler (same name / warm-up / total steps), same clipping,
    batch size, accumulation, seed; fp32 on CPU, bf16 autocast on a bf16 GPU; no packing, no padding-free, no
    gradient checkpointing unless the em config asks for it; logging every step, no saving, report_to none.
  * loss: both normalise by the assistant tokens of the whole accumulation window (num_items_in_batch).

What is measured
  * tokens/s = non-pad input tokens of the batches trained on / seconds from the trainer's train-start hook
    (Lightning on_train_start, HF on_train_begin) to the end of the last optimizer step (device synchronised).
    Model loading, tokenisation and trainer construction are excluded. The whole fit (start hook to
    on_train_end, which for em includes its end-of-training checkpoint) is reported as well.
  * peak memory: CUDA: torch.cuda.max_memory_allocated, reset at train start. CPU: the process' peak RSS
    (VmHWM) during training, reset at train start via /proc/self/clear_refs; the process-lifetime peak (model
    loading included) is reported next to it.
  * losses: em's metrics["losses"] against TRL's per-step `loss` logs (logging_steps=1: the step's loss).

On a shared CPU machine wall-clock figures swing by several x: with torch's default of one OpenMP thread per
core, any other busy process stalls every parallel region (seen: tiny model 20x slower with 2 threads than with
1). The bench prints how many cores other processes used during each run; use --threads 1 (steady) and/or
--repeat N (alternating runs, best time counts) when that is not ~0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from em.paths import CONF_DIR  # noqa: E402

for _k, _v in {
    "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}.items():
    os.environ.setdefault(_k, _v)

TARGET_SPEED = 1.0  # em tokens/s / TRL tokens/s >= this
TARGET_MEMORY = 1.0  # em peak / TRL peak <= this
TARGET_LOSS = 0.02  # max |loss_em - loss_trl| / loss_trl <= this
MiB = 2**20


# --------------------------------------------------------------------------- config and plan
def compose(overrides: list[str]):
    """The `train` config composed from conf/ with these Hydra overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import em.config  # noqa: F401  registers the schemas

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return hydra_compose("train", overrides=overrides)


def base_overrides(args) -> list[str]:
    """The overrides both trainers share, from the command line (plus -o extras)."""
    o = [
        f"model={args.model}",
        f"lora={args.lora}",
        f"data={args.data}",
        "logger=none",
        f"seed={args.seed}",
        f"trainer.max_length={args.max_length}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.accumulate_grad_batches={args.grad_accum}",
        f"trainer.warmup_steps={args.warmup_steps}",
        f"optimizer.lr={args.lr}",
        "resume=false",
    ]
    if args.cache_dir:
        o.append(f"cache_dir={args.cache_dir}")
    return o + list(args.override)


def prepare(tc):
    """em's own data step, the one run_training takes first (em.data.module.prepare_data)."""
    from em.data.module import prepare_data

    return prepare_data(tc, progress=False)


def make_plan(tc, data, steps: Optional[int]) -> dict[str, Any]:
    """The batches em will train on, in order, for `steps` optimizer steps (default: one epoch).

    `data` is prepare()'s result: its examples, and the very sampler em's data module iterates.
    """
    from em.data.tokenize import IGNORE_INDEX

    bs, ga = tc.trainer.batch_size, tc.trainer.accumulate_grad_batches
    examples, sampler = data.examples, data.datamodule.sampler
    n_batches = len(sampler)
    steps_per_epoch = math.ceil(n_batches / ga)
    steps = steps or steps_per_epoch
    epochs = math.ceil(steps / steps_per_epoch)
    if len(examples) % bs:
        raise SystemExit(
            f"{len(examples)} examples is not a multiple of batch size {bs}: em's sampler then puts a short batch "
            f"somewhere inside the epoch, which TRL's sequential DataLoader cannot reproduce. Pick --n-examples "
            f"so that the kept examples divide by the batch size.")
    if epochs > 1 and n_batches % ga:
        raise SystemExit(
            f"--steps {steps} spans {epochs} epochs but an epoch's {n_batches} batches do not divide into windows "
            f"of {ga}: em closes a short window at each epoch end, TRL (one flattened epoch) would not.")
    batches: list[list[int]] = []
    windows = 0
    for epoch in range(epochs):
        eb = sampler.batches(epoch)
        for w in range(0, n_batches, ga):
            if windows == steps:
                break
            batches.extend(eb[w : w + ga])
            windows += 1
    order = [i for b in batches for i in b]
    lengths = [len(examples[i]["input_ids"]) for i in order]
    padded = sum(max(len(examples[i]["input_ids"]) for i in b) * len(b) for b in batches)
    return {
        "n_examples": len(examples),
        "batch_size": bs,
        "grad_accum": ga,
        "steps": steps,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "order": order,
        "tokens": sum(lengths),  # non-pad input tokens trained on
        "padded_tokens": padded,
        "target_tokens": sum(sum(t != IGNORE_INDEX for t in examples[i]["labels"]) for i in order),
        "order_sha": hashlib.sha256(json.dumps(order).encode()).hexdigest()[:16],
        "data_sha": hashlib.sha256(json.dumps([examples[i] for i in order]).encode()).hexdigest()[:16],
    }


# --------------------------------------------------------------------------- measurements (children)
def lora_hash(model) -> str:
    """16 hex digits of the sha256 over the trainable weights (name and fp32 bytes, sorted by name)."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _rss(field: str) -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def lifetime_peak_rss() -> int:
    """This process' peak RSS since it started, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


class Probe:
    """Train-phase timing and peak memory, the same for both trainers."""

    def __init__(self, target_steps: int):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.target_steps = target_steps
        self.t_begin = self.t_loop = self.t_end = None
        self.cpu_begin = self.cpu_loop = self.cpu_end = 0.0
        self.peak_before_train = 0
        self.mem_at_begin = 0
        self.peak_loop = self.peak_train = 0
        self.reset_ok = False
        self.lora_hash_at_start = None

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def _peak(self) -> int:
        return int(self.torch.cuda.max_memory_allocated()) if self.cuda else (_rss("VmHWM") or lifetime_peak_rss())

    def begin(self, model):
        """At the trainer's train-start hook: hash the LoRA weights, reset the peak memory, start the clocks."""
        self.lora_hash_at_start = lora_hash(model)
        self._sync()
        if self.cuda:
            self.peak_before_train = int(self.torch.cuda.max_memory_allocated())
            self.torch.cuda.reset_peak_memory_stats()
            self.mem_at_begin = int(self.torch.cuda.memory_allocated())
            self.reset_ok = True
        else:
            self.peak_before_train = lifetime_peak_rss()
            try:
                with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (the peak RSS) to the current RSS
                    f.write("5")
                self.reset_ok = True
            except OSError:
                self.reset_ok = False
            self.mem_at_begin = _rss("VmRSS")
        self.t_begin = time.perf_counter()
        self.cpu_begin = time.process_time()

    def step_end(self, global_step: int):
        """After each batch: stop the loop clock at the plan's last optimizer step (device synchronised)."""
        if self.t_loop is None and global_step >= self.target_steps:
            self._sync()
            self.t_loop = time.perf_counter()
            self.cpu_loop = time.process_time()
            self.peak_loop = self._peak()

    def end(self):
        """At the trainer's train-end hook: the whole fit's time and peak memory."""
        self._sync()
        self.t_end = time.perf_counter()
        self.cpu_end = time.process_time()
        self.peak_train = self._peak()
        if self.t_loop is None:
            self.t_loop, self.cpu_loop, self.peak_loop = self.t_end, self.cpu_end, self.peak_train

    def result(self) -> dict[str, Any]:
        """Seconds (wall and CPU), bytes (peak / start memory) and the start hash of the run."""
        return {
            "loop_s": self.t_loop - self.t_begin,
            "fit_s": self.t_end - self.t_begin,
            # CPU time of all the process' threads: steadier than wall time when other processes share the cores,
            # though OpenMP threads spin-waiting for a descheduled sibling count here too
            "loop_cpu_s": self.cpu_loop - self.cpu_begin,
            "peak_train_bytes": self.peak_train,
            "peak_loop_bytes": self.peak_loop,
            "mem_at_train_start_bytes": self.mem_at_begin,
            "peak_before_train_bytes": self.peak_before_train,
            "peak_lifetime_bytes": max(self.peak_before_train, self.peak_train),
            "peak_reset_ok": self.reset_ok,
            "lora_hash_at_start": self.lora_hash_at_start,
        }


def device_info() -> dict[str, Any]:
    """The device, compute dtype, torch threads and version a child ran with."""
    import torch

    from em.train.models import compute_dtype

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": cuda,
        "compute_dtype": str(compute_dtype("auto")).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def child_em(spec: dict[str, Any]) -> dict[str, Any]:
    """em's run, as run_training makes it (prepare_data, build_model, fit), with the bench's probe attached."""
    import lightning as L

    import em.data.module
    import em.train.models
    import em.train.run
    from em.config.common import validate

    plan = spec["plan"]
    if spec.get("em_patch"):  # try a change to em without editing it: the file monkeypatches em's modules
        code = Path(spec["em_patch"]).read_text()
        exec(compile(code, spec["em_patch"], "exec"), {"__name__": "em_patch"})
    probe = Probe(plan["steps"])

    class EmBenchCallback(L.Callback):
        def on_train_start(self, trainer, pl_module):
            probe.begin(pl_module.model)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            probe.step_end(trainer.global_step)

        def on_train_end(self, trainer, pl_module):
            probe.end()

    cfg = compose(spec["overrides"] + [
        f"run_dir={spec['workdir']}/em_run", f"trainer.max_steps={plan['steps']}", f"trainer.max_epochs={plan['epochs']}",
    ])
    tc = validate(cfg)
    # module attributes, looked up after --em-patch ran: a patched step is the one that runs
    data = em.data.module.prepare_data(tc, progress=False)
    # same examples and order as the plan the parent made (and TRL gets)
    check = make_plan(tc, data, plan["steps"])
    assert check["data_sha"] == plan["data_sha"], "em child: tokenised data differs from the plan"
    model = em.train.models.build_model(tc)
    attach_hash = lora_hash(model)

    res = em.train.run.fit(cfg, tc, data, model, callbacks=[EmBenchCallback()])
    m = res.metrics
    hist = m["history"]
    return {
        "trainer": "em",
        **probe.result(),
        "lora_hash_at_attach": attach_hash,
        "losses": m["losses"],
        "lrs": [h["train/lr"] for h in hist],
        "grad_norms": [h["train/grad_norm"] for h in hist],
        "steps": m["steps"],
        "tokens_counted": m["tokens_seen"],
        "self_reported_tokens_per_s": m["tokens_per_s"],
        "self_reported_peak_memory_bytes": m["peak_memory_bytes"],
        "wall_time_s": m["wall_time_s"],
    }


def child_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """TRL's SFTTrainer on em's prepared data and em's model, in em's batch order (see the module docstring)."""
    import hydra
    import transformers
    import trl
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from em.train import models
    from em.config.common import validate
    from em.train.run import precision_for

    plan = spec["plan"]
    probe = Probe(plan["steps"])
    cfg = compose(spec["overrides"] + [f"run_dir={spec['workdir']}/trl_run"])
    tc = validate(cfg)
    data = prepare(tc)
    tokenizer, examples = data.tokenizer, data.examples
    check = make_plan(tc, data, plan["steps"])
    assert check["data_sha"] == plan["data_sha"], "trl child: tokenised data differs from the plan"
    train_dataset = Dataset.from_list(
        [{"input_ids": examples[i]["input_ids"], "labels": examples[i]["labels"]} for i in plan["order"]]
    )

    model = models.build_model(tc)  # exactly run_training's: seed everything, load, re-seed torch, attach LoRA
    attach_hash = lora_hash(model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = hydra.utils.instantiate(cfg.optimizer, _convert_="all")(params)  # em's optimizer factory

    precision = precision_for(tc.trainer.precision)
    logs: list[dict[str, Any]] = []

    class BenchCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            probe.begin(model)

        def on_step_end(self, args, state, control, **kw):
            probe.step_end(state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                logs_list.append({"step": state.global_step, **logs})

        def on_train_end(self, args, state, control, **kw):
            probe.end()

    logs_list = logs

    class OrderedSFTTrainer(SFTTrainer):
        """Iterates the dataset as laid out (em's batch order) instead of shuffling it."""

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    clip = tc.trainer.gradient_clip_val
    args = SFTConfig(
        output_dir=f"{spec['workdir']}/trl_run",
        per_device_train_batch_size=tc.trainer.batch_size,
        gradient_accumulation_steps=tc.trainer.accumulate_grad_batches,
        max_steps=plan["steps"],
        learning_rate=tc.optimizer.lr,
        weight_decay=tc.optimizer.weight_decay,
        adam_beta1=tc.optimizer.betas[0],
        adam_beta2=tc.optimizer.betas[1],
        adam_epsilon=tc.optimizer.eps,
        lr_scheduler_type=tc.trainer.lr_scheduler,
        warmup_steps=tc.trainer.warmup_steps,
        max_grad_norm=clip if clip else 0.0,
        bf16=precision.startswith("bf16"),
        fp16=precision.startswith("16"),
        gradient_checkpointing=tc.trainer.gradient_checkpointing,
        packing=False,
        padding_free=False,
        max_length=None,  # examples are already truncated by encode_dataset
        shuffle_dataset=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=tc.seed,
        data_seed=tc.seed,
        dataloader_num_workers=tc.trainer.num_workers,
    )
    trainer = OrderedSFTTrainer(
        model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
        optimizers=(optimizer, None), callbacks=[BenchCallback()],
    )
    # SFTTrainer casts a quantised model's adapter weights to bf16; em keeps them fp32 (bf16 autocast on GPU).
    cast = sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad})
    for n, p in trainer.model.named_parameters():
        if p.requires_grad:
            p.data = initial[n].to(p.device)
    result = trainer.train()
    losses = [lg["loss"] for lg in logs]
    num_tokens = [lg.get("num_tokens") for lg in logs]
    return {
        "trainer": "trl",
        **probe.result(),
        "lora_hash_at_attach": attach_hash,
        "adapter_dtype_after_sfttrainer_init": cast,
        "losses": losses,
        "lrs": [lg.get("learning_rate") for lg in logs],
        "grad_norms": [lg.get("grad_norm") for lg in logs],
        "steps": trainer.state.global_step,
        "tokens_counted": int(num_tokens[-1]) if num_tokens and num_tokens[-1] is not None else None,
        "model_accepts_loss_kwargs": bool(getattr(trainer, "model_accepts_loss_kwargs", False)),
        "train_runtime_s": result.metrics.get("train_runtime"),
        "trl": trl.__version__,
        "transformers": transformers.__version__,
    }


def _busy_cpu_s() -> Optional[float]:
    """Busy CPU seconds of the whole machine so far (/proc/stat), or None where unavailable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_child(which: str, spec_path: Path, out_path: Path, log_path: Path, verbose: bool,
              threads: Optional[int] = None) -> dict[str, Any]:
    """Run one trainer (`which`: em / trl) in a subprocess; its result plus process seconds and the cores
    other processes kept busy meanwhile. Exits with the child's status when it fails."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which, "--spec", str(spec_path),
           "--out", str(out_path)]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    busy0, ru0 = _busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        if verbose:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                    env=env)
            assert proc.stdout is not None  # stdout=PIPE
            for line in proc.stdout:
                sys.stdout.write(f"  [{which}] {line}")
                log.write(line)
            rc = proc.wait()
        else:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    if rc != 0 or not out_path.exists():
        tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-40:])
        print(f"\n{which} child failed (exit {rc}); last lines of {log_path}:\n{tail}", file=sys.stderr)
        raise SystemExit(rc or 1)
    res = json.loads(out_path.read_text())
    res["process_s"] = time.perf_counter() - t0
    busy1, ru1 = _busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if busy0 is not None and busy1 is not None:
        own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        # cores other processes kept busy, on average, while this child ran (contention on a shared machine)
        res["other_load_cores"] = max(0.0, (busy1 - busy0 - own) / res["process_s"])
    return res


# --------------------------------------------------------------------------- report
def aggregate(plan: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One trainer's repeats: best (fastest) time, highest peak memory, losses of the first run."""
    for r in runs:
        r["tokens_per_s"] = plan["tokens"] / r["loop_s"]
        r["tokens_per_s_fit"] = plan["tokens"] / r["fit_s"]
        r["tokens_per_cpu_s"] = plan["tokens"] / r["loop_cpu_s"]
    agg = dict(runs[0])
    agg["tokens_per_s"] = max(r["tokens_per_s"] for r in runs)
    agg["tokens_per_s_fit"] = max(r["tokens_per_s_fit"] for r in runs)
    agg["tokens_per_cpu_s"] = max(r["tokens_per_cpu_s"] for r in runs)
    agg["loop_s"] = min(r["loop_s"] for r in runs)
    agg["tokens_per_s_runs"] = [r["tokens_per_s"] for r in runs]
    for k in ("peak_train_bytes", "peak_lifetime_bytes", "mem_at_train_start_bytes"):
        agg[k] = max(r[k] for r in runs)
    agg["deterministic"] = all(r["losses"] == runs[0]["losses"] for r in runs)
    agg["peak_reset_ok"] = all(r["peak_reset_ok"] for r in runs)
    return agg


def summarise(plan: dict[str, Any], dev: dict[str, Any], runs: dict[str, list[dict[str, Any]]], args
              ) -> dict[str, Any]:
    """Print the comparison table, per-step losses and PASS / FAIL per target; return everything as a dict."""
    results = {k: aggregate(plan, v) for k, v in runs.items()}
    em, tr = results.get("em"), results.get("trl")
    mem_kind = "CUDA max_memory_allocated" if dev["cuda"] else "peak RSS"
    print()
    print(f"model {args.model} | data {args.data} | {plan['n_examples']} examples, max_length {args.max_length} | "
          f"{plan['tokens']:,} tokens ({plan['target_tokens']:,} assistant, {plan['padded_tokens']:,} padded) | "
          f"{plan['steps']} steps (batch {plan['batch_size']} x accum {plan['grad_accum']}, "
          f"{plan['epochs']} epoch{'s' if plan['epochs'] > 1 else ''}) | lr {args.lr}, warm-up {args.warmup_steps}")
    print(f"device {dev['device']} ({dev['compute_dtype']}, {dev['threads']} threads, torch {dev['torch']}) | "
          f"memory = {mem_kind} during training | tokens/s = tokens / (train start -> last optimizer step)"
          + (f" | best of {args.repeat} runs" if args.repeat > 1 else ""))
    print()
    head = f"{'trainer':<16}{'tokens/s':>10}{'fit tok/s':>11}{'tok/cpu-s':>11}{'loop s':>9}{'peak MiB':>10}" \
           f"{'start MiB':>11}{'life MiB':>10}{'final loss':>12}"
    print(head)
    print("-" * len(head))
    for name, r in (("em (Lightning)", em), ("TRL SFTTrainer", tr)):
        if r is None:
            continue
        print(f"{name:<16}{r['tokens_per_s']:>10.1f}{r['tokens_per_s_fit']:>11.1f}{r['tokens_per_cpu_s']:>11.1f}"
              f"{r['loop_s']:>9.1f}{r['peak_train_bytes'] / MiB:>10.0f}{r['mem_at_train_start_bytes'] / MiB:>11.0f}"
              f"{r['peak_lifetime_bytes'] / MiB:>10.0f}{r['losses'][-1] if r['losses'] else float('nan'):>12.4f}")
        if args.repeat > 1:
            print(f"{'':<16}tokens/s per run: " + ", ".join(f"{x:.1f}" for x in r["tokens_per_s_runs"]))
    summary: dict[str, Any] = {"plan": {k: v for k, v in plan.items() if k != "order"}, "device": dev,
                               "results": results, "runs": runs}
    if em is None or tr is None:
        return summary

    n = min(len(em["losses"]), len(tr["losses"]))
    print()
    print(f"{'step':>4}{'loss em':>11}{'loss TRL':>11}{'Δ%':>8}{'lr em':>11}{'lr TRL':>11}"
          f"{'|g| em':>9}{'|g| TRL':>9}")
    rel = []
    for i in range(n):
        le, lt = em["losses"][i], tr["losses"][i]
        d = abs(le - lt) / max(abs(lt), 1e-12)
        rel.append(d)
        ge, gt = em["grad_norms"][i], tr["grad_norms"][i]
        print(f"{i + 1:>4}{le:>11.5f}{lt:>11.5f}{100 * d:>8.3f}{em['lrs'][i]:>11.3e}{tr['lrs'][i]:>11.3e}"
              f"{ge:>9.4f}{(gt if gt is not None else float('nan')):>9.4f}")

    speed = em["tokens_per_s"] / tr["tokens_per_s"]
    cpu_speed = em["tokens_per_cpu_s"] / tr["tokens_per_cpu_s"]
    memory = em["peak_train_bytes"] / tr["peak_train_bytes"]
    max_rel = max(rel) if rel else float("nan")
    same_init = em["lora_hash_at_start"] == tr["lora_hash_at_start"] == em["lora_hash_at_attach"] == \
        tr["lora_hash_at_attach"]
    same_steps = len(em["losses"]) == len(tr["losses"]) == plan["steps"]
    checks = {
        "speed": speed >= TARGET_SPEED,
        "memory": memory <= TARGET_MEMORY,
        "loss": bool(rel) and max_rel <= TARGET_LOSS and same_steps,
    }
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    print()
    print(f"ratio tokens/s (em/TRL) = {speed:.2f}   (target >= {TARGET_SPEED:.2f})  {ok(checks['speed'])}")
    print(f"ratio peak memory (em/TRL) = {memory:.2f}   (target <= {TARGET_MEMORY:.2f})  {ok(checks['memory'])}")
    print(f"max |Δloss|/loss = {100 * max_rel:.2f} %   (target <= {100 * TARGET_LOSS:.0f} %, over {n} steps)  "
          f"{ok(checks['loss'])}")
    print(f"ratio tokens per CPU-second (em/TRL) = {cpu_speed:.2f} | "
          f"ratio fit tokens/s (em/TRL, incl. end-of-fit work) = {em['tokens_per_s_fit'] / tr['tokens_per_s_fit']:.2f}"
          f" | em self-reported {em['self_reported_tokens_per_s']:.1f} tokens/s, TRL train_runtime "
          f"{tr['train_runtime_s']:.1f} s")
    notes = []
    if not same_init:
        notes.append(f"initial LoRA weights DIFFER: em {em['lora_hash_at_attach']}/{em['lora_hash_at_start']} "
                     f"TRL {tr['lora_hash_at_attach']}/{tr['lora_hash_at_start']}")
    if not same_steps:
        notes.append(f"step counts differ: plan {plan['steps']}, em {len(em['losses'])}, TRL {len(tr['losses'])}")
    for name, r in (("em", em), ("TRL", tr)):
        if r.get("tokens_counted") not in (None, plan["tokens"]):
            notes.append(f"{name} counted {r['tokens_counted']} tokens, the plan has {plan['tokens']}")
        if not r["deterministic"]:
            notes.append(f"{name}: the losses differ between repeats")
        others = [x.get("other_load_cores") or 0.0 for x in runs[{"em": "em", "TRL": "trl"}[name]]]
        if not dev["cuda"] and max(others) > 0.25:
            notes.append(f"{name}: other processes kept {max(others):.2f} cores busy during a run: wall-clock "
                         f"figures are noisy (compare tokens per CPU-second, or use --repeat)")
        if not r["peak_reset_ok"]:
            notes.append(f"{name}: could not reset the peak-RSS counter; its peak includes model loading")
    if not tr.get("model_accepts_loss_kwargs", True):
        notes.append("TRL: model_accepts_loss_kwargs is False, so its loss is a mean of micro-batch means")
    print(f"initial LoRA weights identical: {'yes' if same_init else 'NO'} ({em['lora_hash_at_start']}); "
          f"TRL adapter dtype after SFTTrainer init: {','.join(tr['adapter_dtype_after_sfttrainer_init'])} "
          f"(restored to the initial fp32 weights)")
    for note in notes:
        print(f"WARNING: {note}")
    overall = all(checks.values()) and same_init
    print(f"overall: {ok(overall)}")
    summary.update(speed_ratio=speed, cpu_speed_ratio=cpu_speed, memory_ratio=memory, max_rel_loss_diff=max_rel, checks=checks,
                   same_init=same_init, notes=notes, overall=overall)
    return summary


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    """The command line (see the module docstring and --help)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3_270m", help="conf/model/<name> (default gemma3_270m; tiny: ~1 min)")
    p.add_argument("--data", default="synthetic", help="conf/data/<name> (default synthetic, offline)")
    p.add_argument("--lora", default="r32_a64", help="conf/lora/<name>")
    p.add_argument("--n-examples", type=int, default=32, help="examples (data.n_examples, or data.limit upstream)")
    p.add_argument("--max-length", type=int, default=None,
                   help="trainer.max_length (default 256; 1024 for random-init models, whose tokenizer is byte-level)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one epoch)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="em cache dir (default: the config's, ~/.cache/em)")
    p.add_argument("-o", "--override", action="append", default=[], help="extra Hydra override for both trainers")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per trainer (OMP_NUM_THREADS); 1 is "
                   "steadier when other processes share the cores")
    p.add_argument("--repeat", type=int, default=1, help="runs per trainer, alternating; the best time counts")
    p.add_argument("--only", choices=["em", "trl"], help="run one trainer (profiling); no ratios")
    p.add_argument("--json", type=Path, help="write the full results here")
    p.add_argument("--em-patch", type=Path, help="Python file run in the em child before training (prototyping "
                   "changes to em/ by monkeypatching, without editing it)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (child logs, em run dir)")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the children's output")
    p.add_argument("--child", choices=["em", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Plan in this process, run each trainer in its own subprocess, compare; 0 unless a child crashed."""
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.spec.read_text())
        res = (child_em if args.child == "em" else child_trl)(spec)
        res["device"] = device_info()
        args.out.write_text(json.dumps(res))
        return 0

    from em.config.common import validate

    if args.max_length is None:
        probe_cfg = compose([f"model={args.model}", "run_dir=/unused"])
        args.max_length = 1024 if probe_cfg.model.get("random_init") else 256
    overrides = base_overrides(args)
    cfg = compose(overrides + ["run_dir=/unused"])
    n_key = "data.n_examples" if cfg.data.source == "synthetic" else "data.limit"
    overrides.insert(3, f"{n_key}={args.n_examples}")
    tc = validate(compose(overrides + ["run_dir=/unused"]))
    t0 = time.perf_counter()
    data = prepare(tc)
    stats = data.stats
    plan = make_plan(tc, data, args.steps)
    print(f"plan: {plan['n_examples']} examples ({stats.n_truncated} truncated, {stats.n_dropped} dropped), "
          f"{plan['steps']} steps, {plan['tokens']:,} tokens, order {plan['order_sha']} "
          f"({time.perf_counter() - t0:.1f} s)")

    workdir = Path(tempfile.mkdtemp(prefix="em-bench-"))
    try:
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps({"overrides": overrides, "plan": plan, "workdir": str(workdir),
                                         "em_patch": str(args.em_patch.resolve()) if args.em_patch else None}))
        runs: dict[str, list[dict[str, Any]]] = {}
        for rep in range(args.repeat):
            order = ("em", "trl") if rep % 2 == 0 else ("trl", "em")  # alternate: drift hits both alike
            for which in order:
                if args.only and which != args.only:
                    continue
                print(f"running {which}{f' ({rep + 1}/{args.repeat})' if args.repeat > 1 else ''} ...",
                      end=" ", flush=True)
                r = run_child(which, spec_path, workdir / f"{which}{rep}.json", workdir / f"{which}{rep}.log",
                              args.verbose, args.threads)
                runs.setdefault(which, []).append(r)
                other = r.get("other_load_cores")
                print(f"done in {r['process_s']:.0f} s (train loop {r['loop_s']:.1f} s, "
                      f"{plan['tokens'] / r['loop_s']:.1f} tokens/s"
                      + (f"; other processes used {other:.2f} cores" if other is not None else "") + ")")
        dev = next(iter(runs.values()))[0]["device"]
        summary = summarise(plan, dev, runs, args)
        summary["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
            print(f"results: {args.json}")
    finally:
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
