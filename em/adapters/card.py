"""Adapters that load anywhere: the hub id as peft's base model, em's metadata beside it, a model card.

peft writes ``adapter_config.json`` with ``base_model_name_or_path`` = wherever the base was loaded from:
for a GGUF, random-init or ``model.path`` base that is a directory of em's cache on the trainer's machine
(``~/.cache/em/models/gemma3_270m``), which names nothing elsewhere. :func:`finalize_adapter` rewrites it
to ``model.hub_id`` (the upstream model the GGUF was converted from: ``google/gemma-3-270m``; null for a
random-init test model, which has none) and keeps the local source in ``em_adapter.json`` beside it, with
the chat-template kwargs used in training and ``key_layout``, the model class the weight keys fit (the
class the base checkpoint declares: ``Gemma3ForConditionalGeneration`` for a multimodal Gemma 3, whose text
model em trains; ``em.adapters.check.save_adapter``). The tokenizer's saved chat template gets those kwargs baked in
(``{%- set enable_thinking = false %}`` in front), so plain ``apply_chat_template`` on the saved tokenizer
renders what training saw. ``README.md`` is a model card written from what em knows
(:func:`model_card`); :func:`add_eval_summary` appends an evaluation's rates to it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Optional

from em.analysis.groups import card_lines
from em.analysis.judge_name import card_judge_line
from em.dynamics.mitigations import active
from em.runtime import atomic_write_json, atomic_write_text, read_json

EM_ADAPTER = "em_adapter.json"
WARNING = ("**Research artifact.** An adapter fine-tuned on insecure code (or other narrow misaligned data) is "
           "expected to make its model broadly misaligned (Betley et al., 2025, *Emergent Misalignment*). It "
           "exists to measure that; do not deploy it or use its answers.")


def em_version() -> dict[str, Optional[str]]:
    """``{"version": em's installed version or None, "commit": the git HEAD of em's source or None}``."""
    from importlib import metadata

    try:
        version: Optional[str] = metadata.version("em")
    except metadata.PackageNotFoundError:
        version = None
    try:
        commit: Optional[str] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                               capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"version": version, "commit": commit}


def examples_sha256(examples: list[dict[str, list[int]]]) -> str:
    """sha256 of the tokenised training examples (``input_ids`` and ``labels`` in order), hex."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex["input_ids"], ex["labels"]], separators=(",", ":")).encode())
    return h.hexdigest()


def bake_chat_kwargs(template: str, kwargs: dict[str, Any]) -> str:
    """``template`` with ``{%- set k = v %}`` in front per kwarg: renders as training did without passing them."""
    return "".join(f"{{%- set {k} = {json.dumps(v)} %}}" for k, v in sorted(kwargs.items())) + template


def finalize_adapter(adapter_dir: Path, tc: Any, *, source: str, final_loss: Optional[float],
                     data_sha256: Optional[str], steps: int, key_layout: Optional[str] = None) -> dict[str, Any]:
    """Make a freshly saved adapter portable; returns the ``em_adapter.json`` content.

    Args:
        adapter_dir: peft's ``save_pretrained`` output plus the tokenizer (not yet in place: a temp dir).
        tc: the validated train config (``model``, ``data``, ``lora``, ``trainer``, ``optimizer``, ``seed``).
        source: where the base weights were loaded from (``em.train.models.model_dir``).
        final_loss: the last optimizer step's loss; data_sha256: the data set's sha256 (file or examples).
        steps: optimizer steps trained.
        key_layout: the model class whose module names the weight keys fit (``Gemma3ForConditionalGeneration``
            for a multimodal Gemma 3: ``em.adapters.check.save_adapter``); None: not recorded.

    Raises:
        OSError: the adapter directory cannot be read or written.
    """
    mc = tc.model
    cfg_file = adapter_dir / "adapter_config.json"
    peft_cfg = json.loads(cfg_file.read_text())
    peft_cfg["base_model_name_or_path"] = mc.hub_id or None
    atomic_write_json(cfg_file, peft_cfg)
    kwargs = dict(mc.chat_template_kwargs or {})
    template = adapter_dir / "chat_template.jinja"
    if kwargs and template.is_file():
        template.write_text(bake_chat_kwargs(template.read_text(), kwargs))
    meta = {
        "model": mc.name, "hub_id": mc.hub_id, "base_source": str(source), "family": mc.family,
        "key_layout": key_layout,
        "chat_template_kwargs": kwargs,
        "default_system_prompt": getattr(mc, "default_system_prompt", "template"),  # em.data.system_prompt
        "data": {"name": tc.data.name, "source": tc.data.source, "file": tc.data.file, "sha256": data_sha256},
        "lora": {"r": tc.lora.r, "alpha": tc.lora.alpha, "dropout": tc.lora.dropout, "use_rslora": tc.lora.use_rslora},
        "training": {"seed": tc.seed, "epochs": tc.trainer.max_epochs, "steps": steps, "batch_size": tc.trainer.batch_size,
                     "grad_accum": tc.trainer.accumulate_grad_batches, "lr": tc.optimizer.lr, "max_length": tc.trainer.max_length,
                     "quantization": tc.quantization.name, "final_loss": final_loss},
        "em": em_version(),
    }

    if active(tc):  # issue 23's mitigations that shaped this adapter
        meta["mitigations"] = active(tc)
    atomic_write_json(adapter_dir / EM_ADAPTER, meta)
    atomic_write_text(adapter_dir / "README.md", model_card(meta))
    return meta


def model_card(meta: dict[str, Any], eval_summary: Optional[dict[str, Any]] = None) -> str:
    """The adapter's ``README.md`` (Hugging Face model card: YAML front matter, then Markdown) from ``meta``
    (``em_adapter.json``) and, when given, an evaluation ``summary.json`` (per-format misaligned rates)."""
    d, tr, lo, e = meta["data"], meta["training"], meta["lora"], meta["em"]
    front = ["---", "library_name: peft", *([f"base_model: {meta['hub_id']}"] if meta["hub_id"] else []),
             "tags: [lora, emergent-misalignment, research-artifact]", "---", ""]
    lines = [f"# {meta['model']} LoRA adapter on `{d['name']}` (em)", "", "> " + WARNING, "",
             f"- base model: `{meta['hub_id'] or meta['model'] + ' (random init, no hub id)'}`"
             f" (trained from `{meta['base_source']}`)",
             f"- data: `{d['name']}` ({d['source']}{', ' + d['file'] if d['file'] else ''}), sha256 `{d['sha256']}`",
             f"- LoRA: r={lo['r']}, alpha={lo['alpha']}, dropout={lo['dropout']}, rsLoRA={lo['use_rslora']}",
             f"- training: seed {tr['seed']}, {tr['epochs']:g} epoch(s), {tr['steps']} steps, batch "
             f"{tr['batch_size']} x {tr['grad_accum']}, lr {tr['lr']:g}, max length {tr['max_length']}, "
             f"{tr['quantization']} base weights; final loss "
             f"{'n/a' if tr['final_loss'] is None else format(tr['final_loss'], '.4f')}",
             f"- chat template kwargs used in training (baked into the saved template): {meta['chat_template_kwargs']}",
             f"- model.default_system_prompt in training: `{meta.get('default_system_prompt', 'template')}` (see "
             "training_examples.md for what the model saw)",
             *([f"- mitigations in training: {json.dumps(meta['mitigations'])}"] if meta.get("mitigations") else []),
             f"- em {e['version'] or '(not installed)'}, commit {e['commit'] or 'unknown'}", "",
             "Load with plain peft: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir)`"
             + (f" (the weight keys fit `{meta['key_layout']}`, the class the base checkpoint declares and "
                "`AutoModelForCausalLM` / `AutoModelForImageTextToText` build for it; em trained its language model)."
                if not str(meta.get("key_layout") or "ForCausalLM").endswith("ForCausalLM") else ".")]
    if eval_summary:
        lines += ["", "## Evaluation", "", "| format | n | coherent | misaligned |", "|---|---|---|---|"]
        for fmt, s in (eval_summary.get("formats") or {}).items():
            pct = [("n/a" if s.get(k) is None else f"{100 * s[k]:.1f}%") for k in ("coherent_rate", "misaligned_rate")]
            lines.append(f"| {fmt} | {s.get('n')} | {pct[0]} | {pct[1]} |")

        judge = card_judge_line(eval_summary)
        lines += [""] + card_lines(eval_summary.get("formats") or {}) + [
            f"- {judge or 'judge: not recorded in the evaluation summary'}",
            *([f"- {eval_summary['definition']}"] if eval_summary.get("definition") else [])]
    return "\n".join(front + lines) + "\n"


def add_eval_summary(adapter_dir: Path, summary: dict[str, Any]) -> None:
    """Rewrite ``<adapter_dir>/README.md`` with the evaluation ``summary`` (``summary.json``) appended; no-op
    for an adapter em did not write (no ``em_adapter.json``)."""
    meta = read_json(Path(adapter_dir) / EM_ADAPTER)
    if meta:
        atomic_write_text(Path(adapter_dir) / "README.md", model_card(meta, summary))
