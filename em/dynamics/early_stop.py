"""Early stopping on a cheap proxy (a research tool; off unless added to ``trainer.callbacks``).

Evidence it is worth trying: a 2026 multi-seed study finds emergent misalignment appears *after* the
training task has converged, and that stopping early removes most of it while keeping ~93 % of task
performance; model-organisms-for-EM see a sudden LoRA-B rotation at the step where misalignment appears.
Whether it transfers to a given model and data set is an empirical question: evaluate the stopped
adapter as any other (it is the run's final adapter).

Two rules, either or both:

* **plateau** of a logged metric (``monitor``, default ``train/loss``): stop when its mean over the last
  ``window`` optimizer steps has not improved by more than ``min_delta`` for ``patience`` steps;
* **threshold** of a proxy: ``proxy`` is a ``"module:function"`` called as ``function(trainer, pl_module)``
  -> float every ``every_n_steps`` steps (e.g. a probe answers' projection onto a misalignment
  direction); stop at the first step where it is above (``mode=above``) or below ``threshold``.

Add it with ``'+trainer.callbacks=[{_target_: em.dynamics.early_stop.ProxyEarlyStopping, proxy:
"my.module:fn", threshold: 0.5}]'``. The step and reason land in ``stopped_step`` / ``reason`` and in the
log.
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any, Callable, Optional

import lightning as L

log = logging.getLogger("em.dynamics")
MODES = ("above", "below")


def resolve(spec: str) -> Callable:
    """``"package.module:function"`` -> the function (imported by name; a Python path, not a file)."""
    mod, _, name = spec.partition(":")
    if not mod or not name:
        raise ValueError(f"proxy must look like 'package.module:function', got {spec!r}")
    return getattr(importlib.import_module(mod), name)


class ProxyEarlyStopping(L.Callback):
    """Stop training on a plateau of ``monitor`` or when ``proxy`` crosses ``threshold`` (see module doc).

    Args:
        proxy: ``"module:function"`` of ``(trainer, pl_module) -> float``; None: no threshold rule.
        threshold: the proxy's stopping value; mode: ``above`` (stop when proxy >= threshold) or ``below``.
        every_n_steps: how often (optimizer steps) the proxy is computed.
        monitor: the ``callback_metrics`` key of the plateau rule; None: no plateau rule.
        patience: steps without improvement before stopping; min_delta: the improvement that counts;
        window: steps the monitored value is averaged over (the per-step loss is noisy).
        min_steps: never stop before this step.

    Raises:
        ValueError: an unknown ``mode``; no rule; ``patience`` / ``window`` / ``every_n_steps`` not > 0.
    """

    def __init__(self, proxy: Optional[str] = None, threshold: Optional[float] = None, mode: str = "above",
                 every_n_steps: int = 1, monitor: Optional[str] = None, patience: int = 20,
                 min_delta: float = 0.0, window: int = 5, min_steps: int = 0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if proxy is None and monitor is None:
            raise ValueError("ProxyEarlyStopping needs a proxy (with threshold) or a monitor (plateau)")
        if proxy is not None and threshold is None:
            raise ValueError("a proxy needs a threshold")
        if min(patience, window, every_n_steps) <= 0:
            raise ValueError("patience, window and every_n_steps must be > 0")
        self.proxy = resolve(proxy) if isinstance(proxy, str) else proxy
        self.threshold, self.mode, self.every_n_steps = threshold, mode, every_n_steps
        self.monitor, self.patience, self.min_delta, self.window, self.min_steps = monitor, patience, min_delta, window, min_steps
        self.values: list[float] = []
        self.best = math.inf
        self.best_step = 0
        self.proxy_values: dict[int, float] = {}
        self.stopped_step: Optional[int] = None
        self.reason: Optional[str] = None
        self._last = -1

    def _stop(self, trainer, step: int, reason: str) -> None:
        trainer.should_stop = True
        self.stopped_step, self.reason = step, reason
        log.warning("early stopping at step %d: %s", step, reason)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """At each new optimizer step: update the plateau state, compute the proxy when due, stop if a rule fires."""
        step = trainer.global_step
        if step == self._last or step == 0:
            return
        self._last = step
        if self.monitor is not None and self.monitor in trainer.callback_metrics:
            self.values.append(float(trainer.callback_metrics[self.monitor]))
            if len(self.values) >= self.window:
                smooth = sum(self.values[-self.window:]) / self.window
                if smooth < self.best - self.min_delta:
                    self.best, self.best_step = smooth, step
                elif step - self.best_step >= self.patience and step >= self.min_steps:
                    self._stop(trainer, step, f"{self.monitor} plateau ({self.window}-step mean {smooth:.4g}, best "
                                              f"{self.best:.4g} at step {self.best_step})")
                    return
        if self.proxy is not None and step % self.every_n_steps == 0:
            v = float(self.proxy(trainer, pl_module))
            self.proxy_values[step] = v
            pl_module.log("train/proxy", v, on_step=True, on_epoch=False)
            crossed = v >= self.threshold if self.mode == "above" else v <= self.threshold
            if crossed and step >= self.min_steps:
                self._stop(trainer, step, f"proxy {v:.4g} {'>=' if self.mode == 'above' else '<='} {self.threshold:g}")

    def state_dict(self) -> dict[str, Any]:
        """Plateau state and proxy values (kept in the checkpoint: a resumed run continues the rule)."""
        return {"values": self.values, "best": self.best, "best_step": self.best_step,
                "proxy_values": self.proxy_values, "stopped_step": self.stopped_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.values = list(state.get("values", []))
        self.best, self.best_step = state.get("best", math.inf), state.get("best_step", 0)
        self.proxy_values = dict(state.get("proxy_values", {}))
        self.stopped_step = state.get("stopped_step")
