"""``trainer.ablate_direction``: CAFT -- project a saved direction out of the residual stream while training.

Concept-ablation fine-tuning (Casademunt et al. 2025, ``cadentj/caft``): during fine-tuning, the residual
stream after decoder layer L is replaced by ``h - (h . u) u`` for the unit direction ``u`` of that layer,
so the adapter cannot learn to use that direction; evaluation runs without the hook (a later process
loads the adapter alone). Directions come from a ``directions.safetensors`` file (CONTRACTS.md 1: tensors
``unit.L`` [hidden] float32 per layer L, the residual stream after decoder layer L, 0-based), read with
safetensors' safe loader (no code runs on load).

The layers are found and hooked by em.interp.hooks (the same finder and projection as inference-time
directional ablation), so training and evaluation ablate alike.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from em.errors import ConfigError
from em.interp import hooks
from em.interp.hooks import decoder_layers  # noqa: F401  (re-exported: the layers CAFT hooks)

log = logging.getLogger("em.dynamics")

UNIT = re.compile(r"^unit\.(\d+)$")


def load_directions(path: str | Path, layers: Optional[Sequence[int]] = None, key: str = "trainer.ablate_direction",
                    layers_key: str = "trainer.ablate_layers") -> dict[int, torch.Tensor]:
    """``{layer: unit direction [hidden] float32}`` from a directions file, re-normalised to unit length.

    Raises:
        ConfigError: missing or unreadable file, no ``unit.L`` tensor, a requested layer absent, a zero or
            non-finite direction (one line naming ``key`` / ``layers_key``: the config keys that gave them;
            ``trainer.probe`` reads its direction with this function too).
    """
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{key}: {p} does not exist")
    try:
        tensors = load_file(str(p))
    except Exception as e:  # noqa: BLE001  a torn or foreign file: one line
        raise ConfigError(f"{key}: {p} is not a safetensors directions file ({e})") from None
    units = {int(m.group(1)): t for k, t in tensors.items() if (m := UNIT.match(k))}
    if not units:
        raise ConfigError(f"{key}: {p} holds no unit.<layer> tensor")
    if layers is not None:
        missing = [l for l in layers if l not in units]
        if missing:
            raise ConfigError(f"{layers_key}: layer(s) {missing} not in {p} (it has {sorted(units)})")
        units = {l: units[l] for l in layers}
    out = {}
    for l, u in sorted(units.items()):
        u = u.detach().float().flatten()
        n = float(torch.linalg.vector_norm(u))
        if not (n > 0 and torch.isfinite(u).all()):
            raise ConfigError(f"{key}: unit.{l} in {p} is zero or not finite")
        out[l] = u / n
    return out


def check_fits(model, dirs: dict[int, torch.Tensor], key: str = "trainer.ablate_direction") -> dict[int, torch.Tensor]:
    """``dirs`` unchanged when each layer is one of ``model``'s decoder layers and each direction has its
    hidden size.

    Raises:
        ConfigError: a layer index beyond the model's layers; a direction of another size (names ``key``).
    """
    n, hidden = hooks.n_layers(model), hooks.hidden_size(model)
    for l, u in dirs.items():
        if not 0 <= l < n:
            raise ConfigError(f"{key}: layer {l} is not among the model's {n} layers")
        if u.numel() != hidden:
            raise ConfigError(f"{key}: unit.{l} has {u.numel()} entries, the model's hidden size is {hidden}")
    return dirs


@contextlib.contextmanager
def ablated(model, path: str | Path, layers: Optional[Sequence[int]] = None) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, the residual stream after each listed decoder layer has the file's direction
    projected out (forward hooks; gradients flow through the projection). Yields the directions used;
    the hooks are removed on exit, also on an exception.

    Raises:
        ConfigError: see :func:`load_directions`; a layer index beyond the model's layers; a direction whose
            size is not the model's hidden size.
    """
    dirs = check_fits(model, load_directions(path, layers))
    with hooks.project_out(model, dirs):  # every position; gradients flow through the projection
        log.info("CAFT: projecting %s out of the residual stream after layer(s) %s", path, sorted(dirs))
        yield dirs
