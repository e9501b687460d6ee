"""``trainer.probe``: fixed probe answers projected onto a direction at every step snapshot -> ``probe_projection.csv``.

The cheap burn-in proxy of issue 23 (no judge call): at each ``trainer.snapshot_every_n_steps`` snapshot the
model being trained reads a fixed set of probe answers teacher-forced, and the residual stream after each
listed decoder layer, averaged over each answer's tokens, is projected onto that layer's unit direction
(``unit.L`` of a ``directions.safetensors``, CONTRACTS.md 1, as em's interp stage writes it). The reading is
em.interp's own (:func:`em.interp.collect.encode` renders and tokenises as the hf sampler conditions,
:func:`em.interp.collect.pooled_forward` pools in the layer hooks), so a step's numbers are the ones ``python
interp.py`` would collect from that snapshot's adapter.

Where the numbers live (the conventions of ``lora_geometry.csv``):

* ``snapshots/step_<n>/probe.parquet`` -- per probe answer and layer, the projection (``answer_id``,
  ``layer``, ``projection``, ``probe_key``), written inside the snapshot's temp directory: it appears
  atomically with the adapter, and a resumed run keeps it and writes each missing step once;
* ``probe_projection.csv`` -- recomputed from the snapshots on disk after training: one row per step and
  layer: ``step``, ``layer``, ``mean`` (residual units), ``ci_low``, ``ci_high`` (percentile bootstrap over
  the probe answers, seeded by step and layer), ``n``, ``confidence``;
* ``probe_projection.json`` -- provenance (direction file and its sha256, the probe answers' source and
  hash, layers, the headline layer) and the change point of each layer's series (``ruptures.Dynp``, as
  :func:`em.dynamics.geometry.change_point`).

The series are logged as ``dynamics/probe/L<layer>`` at each snapshot's step. As an early-stopping proxy:
``ProxyEarlyStopping(proxy="em.dynamics.probe:proxy", threshold=..., every_n_steps=N)`` reads the mean
projection at the headline layer (``trainer.probe.layer``) of the model as it is at that step.

Layer L is the residual stream *after* decoder layer L (0-based): ``output_hidden_states[L + 1]`` of a
transformers model, except for the last layer, whose hidden state there has the final norm applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from em.analysis.ingest import read_table
from em.dynamics.ablation import check_fits, load_directions
from em.dynamics.geometry import change_point
from em.dynamics.snapshots import StepSnapshots, step_snapshots
from em.errors import ConfigError, DataError
from em.interp import collect
from em.interp.project import boot_mean
from em.paths import original_path
from em.runtime import atomic_write, atomic_write_csv, atomic_write_json

log = logging.getLogger("em.dynamics")

STEP_FILE = "probe.parquet"  # inside snapshots/step_<n>/
TABLE_FILE = "probe_projection.csv"
META_FILE = "probe_projection.json"
COLUMNS = ["step", "layer", "mean", "ci_low", "ci_high", "n", "confidence"]
POOLING = "answer_mean"


def read_answers(spec: str, limit: Optional[int], seed: int) -> pd.DataFrame:
    """The probe answers of ``trainer.probe.answers``: a table (parquet / csv / jsonl / json, columns
    ``question``, ``answer``, optional ``system``) or a directory (every ``responses.parquet`` under it: the
    judged answers of a run or sweep). Distinct (system, question, answer) texts with a non-empty answer; a
    seeded subset of ``limit`` of them (order kept). Columns: ``answer_id`` (``probe_<i>``), ``system``,
    ``question``, ``answer`` (+ ``question_id`` / ``format`` when the source has them).

    Raises:
        ConfigError: a path that does not exist, a directory without responses tables, a table without
            ``question`` / ``answer`` (named), no answer left.
    """
    p = Path(original_path(spec))
    if p.is_dir():
        files = sorted(p.rglob("responses.parquet"))
        if not files:
            raise ConfigError(f"trainer.probe.answers: {p} holds no responses.parquet")
    elif p.is_file():
        files = [p]
    else:
        raise ConfigError(f"trainer.probe.answers: {p} does not exist")
    frames = []
    for f in files:
        try:
            df = read_table(f)
        except DataError as e:
            raise ConfigError(f"trainer.probe.answers: {e}") from None
        missing = [c for c in ("question", "answer") if c not in df]
        if missing:
            raise ConfigError(f"trainer.probe.answers: {f} has no {' / '.join(missing)} column")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df["system"] = df["system"].where(df["system"].notna(), "") if "system" in df else ""
    keep = [c for c in ("system", "question", "answer", "question_id", "format") if c in df]
    df = df[keep][df["answer"].notna() & (df["answer"].astype(str).str.strip() != "")]
    df = df.astype({"system": str, "question": str, "answer": str}).drop_duplicates(["system", "question", "answer"])
    if df.empty:
        raise ConfigError(f"trainer.probe.answers: {p}: no non-empty answer")
    if limit is not None and len(df) > limit:  # seeded, order kept: the same subset in every process
        df = df.iloc[np.sort(np.random.default_rng(seed).choice(len(df), size=limit, replace=False))]
    df = df.reset_index(drop=True)
    df.insert(0, "answer_id", [f"probe_{i}" for i in range(len(df))])
    return df


def headline_layer(direction: str | Path, layers: Sequence[int], requested: Optional[int]) -> int:
    """``trainer.probe.layer``, else the layer of ``layers`` with the best held-out AUC in the
    ``direction_stats.csv`` beside the directions file (:func:`em.interp.run.best_layer`'s rule), else the
    middle one of ``layers``."""
    if requested is not None:
        return int(requested)
    stats = Path(direction).parent / "direction_stats.csv"
    if stats.is_file():
        st = pd.read_csv(stats)
        st = st[st["layer"].isin(list(layers))].dropna(subset=["auc"]) if {"layer", "auc"} <= set(st) else st.iloc[:0]
        if len(st):
            return int(st.sort_values(["auc", "layer"], ascending=[False, True]).iloc[0]["layer"])
    layers = sorted(layers)
    return int(layers[len(layers) // 2])


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class ProbeSet:
    """The probe answers, encoded once, and the unit directions they are projected onto.

    Args:
        answers: :func:`read_answers`' table; directions: ``{layer: unit [hidden]}`` (float32, unit length);
        tokenizer, model_cfg: em's chat rendering (:func:`em.interp.collect.encode`);
        headline: the proxy's layer; batch_size / max_answer_tokens: as ``trainer.probe``;
        provenance: written to ``probe_projection.json`` (its ``probe_key`` tags every step file).

    Answers with no token after the cut are dropped (a warning names how many).
    """

    def __init__(self, answers: pd.DataFrame, directions: dict[int, Any], tokenizer, model_cfg: Any, *,
                 headline: int, batch_size: int = 8, max_answer_tokens: Optional[int] = None,
                 provenance: Optional[dict[str, Any]] = None):

        enc = collect.encode(tokenizer, model_cfg, answers, max_answer_tokens)
        ok = [i for i, (_, a) in enumerate(enc) if a]
        if len(ok) < len(enc):
            log.warning("trainer.probe: %d probe answer(s) with no token left out", len(enc) - len(ok))
        if not ok:
            raise ConfigError("trainer.probe.answers: no probe answer has a token")
        self.answers = answers.iloc[ok].reset_index(drop=True)
        self.enc = [enc[i] for i in ok]
        self.layers = sorted(directions)
        if headline not in directions:
            raise ConfigError(f"trainer.probe.layer: {headline} is not among the projected layers {self.layers}")
        self.directions, self.headline, self.batch_size = directions, headline, batch_size
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        texts = json.dumps([[s, q, a] for s, q, a in self.answers[["system", "question", "answer"]].itertuples(index=False)])
        self.provenance = dict(provenance or {}) | {
            "n_answers": len(self.answers), "answers_sha256": hashlib.sha256(texts.encode()).hexdigest(),
            "layers": self.layers, "headline_layer": headline, "pooling": POOLING, "max_answer_tokens": max_answer_tokens}
        self.key = hashlib.sha256(json.dumps({k: self.provenance.get(k) for k in (
            "answers_sha256", "direction_sha256", "layers", "max_answer_tokens")}, sort_keys=True).encode()).hexdigest()[:16]
        self._cache: tuple[int, np.ndarray] = (-1, np.empty(0))
        self._checked = False

    def project(self, model) -> np.ndarray:
        """``[answers, layers]`` float64: each probe answer's mean residual (over its tokens) after each layer,
        dotted with that layer's unit direction. The model is read in eval mode (no dropout) under a forked
        RNG, then put back in the mode it was in: training continues exactly as without the probe.

        Raises:
            ConfigError: a layer the model does not have, or a direction of another width (first call).
        """
        import torch

        if not self._checked:
            check_fits(model, self.directions, "trainer.probe.direction")
            self._checked = True
        units = torch.stack([self.directions[L].double() for L in self.layers])  # [layers, hidden]
        out = np.empty((len(self.enc), len(self.layers)))
        was_training = model.training
        device = next(model.parameters()).device
        devices = [device.index or 0] if device.type == "cuda" else []
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                for start in range(0, len(self.enc), self.batch_size):
                    mean, _ = collect.pooled_forward(model, self.enc[start: start + self.batch_size], self.pad)
                    sel = mean[:, self.layers].double()  # [batch, layers, hidden]
                    out[start: start + len(sel)] = torch.einsum("blh,lh->bl", sel, units).numpy()
        finally:
            model.train(was_training)
        return out

    def at_step(self, model, step: int) -> np.ndarray:
        """:meth:`project` once per optimizer step (the snapshot and the early-stopping proxy share it)."""
        if self._cache[0] != step:
            self._cache = (step, self.project(model))
        return self._cache[1]

    def step_table(self, values: np.ndarray) -> pd.DataFrame:
        """``[answers, layers]`` projections as the long table of a snapshot's ``probe.parquet``."""
        n, k = values.shape
        return pd.DataFrame({"answer_id": np.repeat(self.answers["answer_id"].to_numpy(), k),
                             "layer": np.tile(np.array(self.layers), n), "projection": values.reshape(-1),
                             "probe_key": self.key})

    def write_step(self, snapshot_dir: Path, model, step: int) -> Path:
        """Project at ``step`` and write ``<snapshot_dir>/probe.parquet`` (the snapshot's temp directory)."""
        table = self.step_table(self.at_step(model, step))
        return atomic_write(Path(snapshot_dir) / STEP_FILE, lambda p: table.to_parquet(p, index=False))


def build_probe(tc: Any, tokenizer) -> Optional[ProbeSet]:
    """The :class:`ProbeSet` of ``tc.trainer.probe`` (None when ``trainer.probe.answers`` is unset).

    Raises:
        ConfigError: see :func:`read_answers` and :func:`em.dynamics.ablation.load_directions`; an FSDP
            ``trainer.strategy``.
    """
    p = tc.trainer.probe
    if not p.answers:
        return None
    if "fsdp" in str(tc.trainer.strategy).lower():  # the forward runs on rank 0 alone: sharded weights would hang it
        raise ConfigError("trainer.probe: not supported with an FSDP strategy (trainer.strategy); use ddp or one device")

    direction = Path(original_path(p.direction))
    dirs = load_directions(direction, p.layers, key="trainer.probe.direction", layers_key="trainer.probe.layers")
    headline = headline_layer(direction, list(dirs), p.layer)
    answers = read_answers(p.answers, p.limit, tc.seed)
    meta: dict[str, Any] = {}
    try:
        from safetensors import safe_open

        with safe_open(str(direction), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("em", "{}"))
    except Exception:  # noqa: BLE001  the provenance is optional; the tensors were read above
        meta = {}
    prov = {"direction": str(direction), "direction_sha256": _sha(direction),
            "direction_meta": {k: meta.get(k) for k in ("model", "rule", "source", "pooling", "adapter_hash") if k in meta},
            "answers": str(original_path(p.answers)), "model": tc.model.name, "n_boot": p.n_boot,
            "confidence": p.confidence, "seed": tc.seed,
            "interval": "percentile bootstrap over the probe answers, seeded by (seed, step, layer)"}
    probe = ProbeSet(answers, dirs, tokenizer, tc.model, headline=headline, batch_size=p.batch_size,
                     max_answer_tokens=p.max_answer_tokens, provenance=prov)
    log.info("trainer.probe: %d probe answers onto %s, layers %s (headline %d)", len(probe.answers), direction,
             probe.layers, headline)
    return probe


# --------------------------------------------------------------------------- after training
def step_values(run_dir: Path, key: Optional[str] = None) -> pd.DataFrame:
    """Every snapshot's ``probe.parquet`` under ``<run_dir>/snapshots`` with its ``step`` (sorted by step,
    layer, answer). A step whose file has another ``probe_key`` than ``key`` (another probe set or
    direction) is left out with a warning; empty DataFrame when no snapshot has one."""
    parts = []
    for step, d in step_snapshots(run_dir):
        f = d / STEP_FILE
        if not f.is_file():
            continue
        t = pd.read_parquet(f)
        if key is not None and len(t) and str(t["probe_key"].iloc[0]) != key:
            log.warning("%s: projected with another probe set / direction (key %s, not %s): left out", f,
                        t["probe_key"].iloc[0], key)
            continue
        parts.append(t.assign(step=step))
    if not parts:
        return pd.DataFrame(columns=["step", "answer_id", "layer", "projection", "probe_key"])
    return pd.concat(parts, ignore_index=True).sort_values(["step", "layer", "answer_id"], kind="stable")


def summarize(values: pd.DataFrame, *, n_boot: int, confidence: float, seed: int) -> pd.DataFrame:
    """Per step and layer: the mean projection over the probe answers and its percentile bootstrap interval
    (:func:`em.interp.project.boot_mean`, generator seeded by ``(seed, step, layer)``: a step's interval
    does not depend on which other steps exist). Columns :data:`COLUMNS`."""
    rows = []
    tail = 50 * (1 - confidence)
    for (step, layer), g in values.groupby(["step", "layer"], sort=True):
        x = g["projection"].to_numpy(float)
        draws = boot_mean(x, np.random.default_rng([seed, int(step), int(layer)]), n_boot)
        lo, hi = np.percentile(draws, [tail, 100 - tail])
        rows.append({"step": int(step), "layer": int(layer), "mean": float(x.mean()), "ci_low": float(lo),
                     "ci_high": float(hi), "n": len(x), "confidence": confidence})
    return pd.DataFrame(rows, columns=COLUMNS)


def write_projection(run_dir: Path, probe: ProbeSet, *, n_boot: int, confidence: float, seed: int) -> Optional[Path]:
    """``probe_projection.csv`` and ``probe_projection.json`` from the snapshots on disk (see the module
    docstring); None when no snapshot has a probe file."""
    values = step_values(run_dir, probe.key)
    if values.empty:
        return None
    table = summarize(values, n_boot=n_boot, confidence=confidence, seed=seed)
    path = atomic_write_csv(Path(run_dir) / TABLE_FILE, table)
    cps = {str(L): change_point(list(g["step"]), list(g["mean"])) for L, g in table.groupby("layer", sort=True)}
    atomic_write_json(Path(run_dir) / META_FILE, probe.provenance | {
        "probe_key": probe.key, "steps": sorted(int(s) for s in table["step"].unique()),
        "changepoints": cps, "changepoint_method": "ruptures.Dynp(model='l2', n_bkps=1) on each layer's mean; "
                                                   "first step after the break"})
    log.info("probe projection at %d steps: %s", table["step"].nunique(), path)
    return path


def read_projection(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(``probe_projection.csv``, ``probe_projection.json``) of a run; empty table and {} without them."""
    p, m = Path(run_dir) / TABLE_FILE, Path(run_dir) / META_FILE
    if not p.is_file():
        return pd.DataFrame(columns=COLUMNS), {}
    return pd.read_csv(p), (json.loads(m.read_text()) if m.is_file() else {})


def log_projection(loggers, run_dir: Path) -> None:
    """Log ``dynamics/probe/L<layer>`` (mean, and ``_ci_low`` / ``_ci_high``) at each snapshot's step and the
    change points (``dynamics/changepoint/probe_L<layer>``). A failing logger is skipped with a warning."""
    table, meta = read_projection(run_dir)
    if not loggers or table.empty:
        return
    for lg in loggers:
        try:
            for step, g in table.groupby("step", sort=True):
                m = {}
                for r in g.itertuples(index=False):
                    m |= {f"dynamics/probe/L{r.layer}": r.mean, f"dynamics/probe/L{r.layer}_ci_low": r.ci_low,
                          f"dynamics/probe/L{r.layer}_ci_high": r.ci_high}
                lg.log_metrics(m, step=int(step) - 1)  # Lightning logs optimizer step s at s - 1
            cps = {f"dynamics/changepoint/probe_L{k}": float(v) for k, v in meta.get("changepoints", {}).items()
                   if v is not None}
            if cps:
                lg.log_metrics(cps, step=int(table["step"].max()) - 1)
        except Exception as e:  # noqa: BLE001  the CSV on disk is the record
            log.warning("could not log the probe projection to %s: %s", type(lg).__name__, e)


def proxy(trainer, pl_module) -> float:
    """``ProxyEarlyStopping``'s proxy: the mean probe projection at ``trainer.probe.layer`` of the model as it
    is at this optimizer step (the probe set of the run's step-snapshot callback; computed once per step).

    Raises:
        ConfigError: the run has no ``trainer.probe`` (no step-snapshot callback with a probe set).
    """
    probe = next((cb.probe for cb in trainer.callbacks if isinstance(cb, StepSnapshots) and cb.probe), None)
    if probe is None:
        raise ConfigError("em.dynamics.probe:proxy needs trainer.probe.answers / trainer.probe.direction "
                          "(and trainer.snapshot_every_n_steps)")
    values = probe.at_step(pl_module.model, trainer.global_step)
    return float(values[:, probe.layers.index(probe.headline)].mean())


__all__ = ["COLUMNS", "META_FILE", "STEP_FILE", "TABLE_FILE", "ProbeSet", "build_probe", "headline_layer",
           "log_projection", "proxy", "read_answers", "read_projection", "step_values", "summarize",
           "write_projection"]
