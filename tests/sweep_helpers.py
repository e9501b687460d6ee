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


def offline_run_header(run_file: str | Path) -> dict:
    """The run record of an offline ``run-*.wandb`` file: job_type, group, project, name, tags.

    (em.tracking.read_offline_run returns config / history / summary; the run's own fields are in the
    first ``run`` record of the same LevelDB-style log: 32 KiB blocks of crc/length/type-framed chunks.)
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    assert data[:4] == b":W&B", f"{run_file}: not a W&B transaction log"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4) and pending:
            rec = pb.Record()
            rec.ParseFromString(pending)
            pending = b""
            if rec.WhichOneof("record_type") == "run":
                r = rec.run
                return {"job_type": r.job_type, "group": r.run_group, "project": r.project,
                        "name": r.display_name, "tags": list(r.tags)}
    raise AssertionError(f"{run_file}: no run record")
