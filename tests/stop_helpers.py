"""Lightning callbacks that tests put into a job's config (trainer.callbacks) to stop it the way a cluster does."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L


class SignalOnce(L.Callback):
    """Send ``signum`` (a real signal, e.g. 15 = SIGTERM, 2 = SIGINT) to this process when training reaches
    ``at_step``, unless ``marker`` exists; creates ``marker`` first, so the relaunched job trains on."""

    def __init__(self, marker: str, at_step: int, signum: int = int(signal.SIGTERM)):
        self.marker = Path(marker)
        self.at_step = at_step
        self.signum = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.at_step and not self.marker.exists():
            self.marker.write_text(str(trainer.global_step))
            os.kill(os.getpid(), self.signum)


class ClockBack(L.Callback):
    """Step this process' wall clock (``time.time``) back by ``seconds`` once, when training starts: what
    an NTP correction does to a long sweep."""

    def __init__(self, seconds: float, marker: str):
        self.seconds = seconds
        self.marker = Path(marker)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.marker.exists():
            return
        self.marker.write_text("stepped")
        real, back = time.time, self.seconds
        time.time = lambda: real() - back
