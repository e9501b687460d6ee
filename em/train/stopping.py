"""Honest stops: SIGTERM (what SLURM sends before it preempts) and SIGINT (Ctrl-C) at any stage of a job.

* :func:`handle_signals` (around one job of train.py) turns either signal into :class:`Interrupted`, a
  ``KeyboardInterrupt`` carrying the signal and, in training, the step: the pipeline records
  ``interrupted`` with the stage and step in ``em_job.json``, prints one line saying how to resume, and the
  process exits ``128 + signal`` (143 for TERM, 130 for INT), as a shell reports a process a signal ended.
* While Lightning trains (:func:`training`), the signal is not raised mid-step: Lightning's own SIGTERM flag
  is set, so it stops at the end of the batch, after the checkpoint callback wrote that step (a resume
  continues bit-identically from the last checkpoint). Lightning ends a SIGTERM stop with
  ``SIGTERMException``, a ``SystemExit`` whose code is 0, and a Ctrl-C with ``sys.exit(1)``; :func:`training`
  turns both back into :class:`Interrupted`. A second signal during training stops at once.
* :func:`slurm_plugins`: Lightning's ``SLURMEnvironment(auto_requeue=True)`` when the job runs under
  ``sbatch`` itself (``SLURM_JOB_ID`` set, not an interactive ``srun`` shell, not a submitit job): on
  ``--signal=USR1@90`` Lightning requeues the job (``scontrol requeue``) and the requeued job resumes from
  ``checkpoints/last.ckpt``. Under submitit (``hydra/launcher=slurm``) submitit requeues (its
  ``max_num_timeout``), so Lightning's requeue stays off there.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: Optional[int] = None  # the first signal of this job
_trainer: Any = None  # the Lightning trainer fitting now (it stops at the end of the batch)


class Interrupted(KeyboardInterrupt):
    """A job stopped by a signal: ``signum``, ``exit_code`` (128 + signum), and in training ``step`` (the
    optimizer steps done)."""

    def __init__(self, signum: int, step: Optional[int] = None):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = int(signum)
        self.step = step

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        """``SIGTERM`` / ``SIGINT``."""
        return signal.Signals(self.signum).name


def received() -> Optional[int]:
    """The signal this job received (None: none)."""
    return _received


def _handler(signum: int, frame: Any) -> None:
    global _received
    first = _received is None
    if first:
        _received = signum
    if _trainer is not None and first:  # Lightning stops after this batch (and its checkpoint)
        _trainer._signal_connector.received_sigterm = True
        return
    raise Interrupted(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Interrupted` (deferred to the end of the batch while training) for the
    duration; the previous handlers are restored after. A no-op outside the main thread."""
    global _received
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    before = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def training(trainer: Any) -> Iterator[None]:
    """Around ``trainer.fit``: a signal stops Lightning at the end of the batch; its ``SystemExit`` (code 0
    for SIGTERM, 1 after a Ctrl-C) becomes :class:`Interrupted` with the trainer's step."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    global _trainer
    _trainer = trainer
    try:
        yield
    except Interrupted as e:  # a second signal, raised mid-step
        e.step = trainer.global_step
        raise
    except SIGTERMException:
        raise Interrupted(_received or signal.SIGTERM, step=trainer.global_step) from None
    except SystemExit as e:
        if _received is None and e.code != 1:  # someone else's exit
            raise
        raise Interrupted(_received or signal.SIGINT, step=trainer.global_step) from None
    finally:
        _trainer = None


def resume_line(job_dir: Any, multirun: bool, pins: tuple[str, ...] = ("hydra.run.dir",),
                note: str = "finished jobs are skipped, this one resumes") -> str:
    """How to resume: the same command (a single run: with ``hydra.run.dir`` pinned to this job's directory,
    unless one of the keys ``pins`` is on the command line already; a multirun: with ``note``)."""
    argv = list(sys.argv) or ["train.py"]
    script = os.path.basename(argv[0])
    if script.endswith(".py") and os.path.dirname(os.path.abspath(argv[0])) != os.getcwd():
        script = argv[0]  # started from another directory (python ../em/train.py): the path as typed
    # `em train ...` runs with sys.argv[0] == "em train" (em.commands): two words, not one quoted program
    head = [argv[0]] if os.path.isfile(argv[0]) else argv[0].split()
    cmd = ["python", script] if script.endswith(".py") else head
    cmd += argv[1:]
    if multirun:
        return f"resume: {shlex.join(cmd)} ({note})"
    if job_dir is not None and not any(a.split("=", 1)[0].lstrip("+") in pins for a in argv[1:]):
        cmd.append(f"hydra.run.dir={job_dir}")
    return f"resume: {shlex.join(cmd)}"


def slurm_plugins(environ: Optional[dict] = None) -> list:
    """Lightning's cluster environment on SLURM: ``[SLURMEnvironment(auto_requeue=True)]`` for a job started by
    ``sbatch`` directly (requeue on SIGUSR1: ``#SBATCH --signal=USR1@90``); ``auto_requeue=False`` under
    submitit (``SUBMITIT_*`` set: submitit requeues the job itself, one requeue is enough); ``[]`` off SLURM
    and in an interactive SLURM shell (job name ``bash`` / ``interactive``: Lightning's own detection then)."""
    env = os.environ if environ is None else environ
    if not env.get("SLURM_JOB_ID") or not env.get("SLURM_NTASKS"):
        return []
    if env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    submitit = any(k.startswith("SUBMITIT_") for k in env)
    return [SLURMEnvironment(auto_requeue=not submitit, requeue_signal=signal.SIGUSR1)]


__all__ = ["Interrupted", "handle_signals", "received", "resume_line", "slurm_plugins", "training"]
