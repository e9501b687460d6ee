"""steer / ablate: sampling with a direction added to, or projected out of, the residual stream, as evaluation
conditions that go through em's sampler, judge and analysis unchanged.

* ``steer[L<layer>,<alpha>]``: ``h <- h + alpha * unit * mean_norm`` after decoder layer ``layer`` at
  ``interp.steer.positions`` (``prompt`` / ``answer`` / ``all``), ``mean_norm`` the mean residual norm at that
  layer over the answers the direction came from (the directions file's ``mean_norm``), so alpha is in units of
  a typical residual's size (alpha = 0: the unsteered model, token for token).
* ``steer[L*,0]``: the grid's alpha = 0, shared by every layer (:data:`UNSTEERED`): alpha = 0 at any layer is the
  unsteered model, so a grid samples it once (no hooks at all) and each layer's steering curve starts from it.
* ``ablate[L<layer>]`` / ``ablate[per_layer]``: directional ablation ``h <- h - (h . u) u`` after every decoder
  layer (Arditi et al. 2024; model-organisms' ``projection=True``), ``u`` the direction of ``layer`` at every
  layer, or each layer's own direction (``per_layer``).
* ``ablate_random[...]``: the same with the directions file's ``random.L`` control (unit, Gaussian).

Each condition is one :func:`em.evaluate.run.run_evaluation` call (hf backend; vLLM refused in one line) with
the intervention's hooks around every sampled batch: the answers, the judge, ``responses.parquet``,
``summary.json`` and the W&B eval run are em's own, the ``condition`` column names the intervention.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from em.interp import hooks


UNSTEERED = "steer[L*,0]"  # the grid's shared alpha = 0 condition (``*``: every layer of the grid)


def alpha_label(alpha: float) -> str:
    """``+4`` / ``-2`` / ``0`` / ``+0.5``: the alpha as a condition name shows it."""
    if alpha == 0:
        return "0"
    return f"{alpha:+g}"


def slug(name: str) -> str:
    """A path-safe directory name for a condition (``steer[L12,+4]`` -> ``steer_L12_+4``,
    ``steer[L*,0]`` -> ``steer_Lall_0``)."""
    return name.replace("[", "_").replace("]", "").replace(",", "_").replace("*", "all")


@dataclass
class Steer:
    """Add ``alpha * unit * scale`` after decoder layer ``layer`` (see the module docstring); ``layer=None``
    (alpha 0 only): the grid's shared unsteered condition :data:`UNSTEERED`, sampled without hooks."""

    layer: Optional[int]
    alpha: float
    unit: torch.Tensor  # [hidden], unit norm
    scale: float  # the mean residual norm at that layer
    positions: str = "all"
    random: bool = False  # the control: unit is the random direction

    @property
    def name(self) -> str:
        """The condition name: ``steer[L<layer>,<alpha>]`` (``steer_random[...]`` for the control,
        ``steer[L*,0]`` for the shared alpha = 0)."""
        if self.layer is None:
            return UNSTEERED
        return f"steer{'_random' if self.random else ''}[L{self.layer},{alpha_label(self.alpha)}]"

    @property
    def spec(self) -> dict[str, Any]:
        """What the answer store records (answers of another intervention are never reused)."""
        if self.layer is None:
            return {"kind": UNSTEERED}
        return {"kind": self.name, "positions": self.positions, "scale": round(float(self.scale), 6),
                "unit_sha": _tensor_sha(self.unit)}

    def __call__(self, model, prompt_lens):
        """The context manager around one sampled batch (``prompt_lens``: ``[batch]`` prompt tokens)."""
        if self.layer is None:  # the unsteered model: nothing to hook
            return contextlib.nullcontext()
        vec = self.unit.float() * float(self.alpha) * float(self.scale)
        return hooks.add_vector(model, {self.layer: vec}, positions=self.positions, prompt_lens=prompt_lens)


@dataclass
class Ablate:
    """Project ``units[L]`` out after every decoder layer ``L`` of ``units`` (see the module docstring)."""

    units: dict[int, torch.Tensor]
    label: str  # L<layer> or per_layer
    positions: str = "all"
    random: bool = False
    layers: Optional[list[int]] = field(default=None)

    @property
    def name(self) -> str:
        """``ablate[<label>]`` or ``ablate_random[<label>]``."""
        return f"ablate{'_random' if self.random else ''}[{self.label}]"

    @property
    def spec(self) -> dict[str, Any]:
        """What the answer store records."""
        return {"kind": self.name, "positions": self.positions,
                "units_sha": _tensor_sha(torch.stack([self.units[k] for k in sorted(self.units)]))}

    def __call__(self, model, prompt_lens):
        """The context manager around one sampled batch."""
        return hooks.project_out(model, self.units, positions=self.positions, prompt_lens=prompt_lens)


def _tensor_sha(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def steer_conditions(tensors: dict[str, torch.Tensor], meta: dict[str, Any], layers: list[int], alphas: list[float],
                     positions: str = "all", random_control: bool = False) -> list[Steer]:
    """The steering grid ``layers x alphas`` from a loaded directions file (``+`` the random control's grid).

    An alpha of 0 is one condition for the whole grid, first: ``steer[L*,0]`` (:data:`UNSTEERED`; the unsteered
    model, sampled once), not one per layer. 2 layers x alphas ``[0, a, b]`` are 1 + 2 x 2 conditions.

    Raises:
        ValueError: a layer the directions file has no ``unit.L`` for, or no finite ``mean_norm`` for.
    """
    out: list[Steer] = []
    for L in layers:
        if f"unit.{L}" not in tensors:
            have = sorted(int(k.split(".")[1]) for k in tensors if k.startswith("unit."))
            raise ValueError(f"interp.steer.layers: no direction for layer {L} (the file has layers {have[0]}..{have[-1]})")
        scale = float((meta.get("mean_norm") or {}).get(str(L), float("nan")))
        if not math.isfinite(scale):
            raise ValueError(f"interp.steer.layers: the directions file has no mean residual norm for layer {L}")
        for a in alphas:
            if a == 0:
                continue
            out.append(Steer(L, float(a), tensors[f"unit.{L}"], scale, positions))
            if random_control and a != 0 and f"random.{L}" in tensors:
                out.append(Steer(L, float(a), tensors[f"random.{L}"], scale, positions, random=True))
    if any(a == 0 for a in alphas) and layers:
        L0 = layers[0]
        out.insert(0, Steer(None, 0.0, tensors[f"unit.{L0}"], 0.0, positions))
    return out


def ablate_conditions(tensors: dict[str, torch.Tensor], n_layers: int, layer: Optional[int], positions: str = "all",
                      random_control: bool = True) -> list[Ablate]:
    """``ablate[...]`` (and ``ablate_random[...]``) over every one of the model's ``n_layers`` decoder layers:
    the direction of ``layer`` at each of them, or each layer's own direction (``layer=None``).

    Raises:
        ValueError: the file lacks the direction(s) needed.
    """
    def pick(prefix: str) -> dict[int, torch.Tensor]:
        if layer is not None:
            if f"{prefix}.{layer}" not in tensors:
                raise ValueError(f"interp.ablate.layer: no {prefix}.{layer} in the directions file")
            return {L: tensors[f"{prefix}.{layer}"] for L in range(n_layers)}
        missing = [L for L in range(n_layers) if f"{prefix}.{L}" not in tensors]
        if missing:
            raise ValueError(f"interp.ablate.layer=null needs a direction per layer; {prefix}.{missing[0]} is missing")
        return {L: tensors[f"{prefix}.{L}"] for L in range(n_layers)}

    label = f"L{layer}" if layer is not None else "per_layer"
    out = [Ablate(pick("unit"), label, positions)]
    if random_control:
        out.append(Ablate(pick("random"), label, positions, random=True))
    return out


__all__ = ["UNSTEERED", "Steer", "Ablate", "alpha_label", "slug", "steer_conditions", "ablate_conditions"]
