"""Lightning callbacks that tests put into a job's config (trainer.callbacks) to break it on purpose."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class KillOnce(L.Callback):
    """SIGKILL this process (no cleanup, like an OOM kill or a pre-empted node) when training reaches
    `at_step`, unless `marker` exists; creates `marker` first, so the relaunched job trains on."""

    def __init__(self, marker: str, at_step: int):
        self.marker = Path(marker)
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.at_step and not self.marker.exists():
            self.marker.write_text(str(trainer.global_step))
            os.kill(os.getpid(), signal.SIGKILL)
