"""Quiet by default: what the entry points (``em/commands/*``) set before a run, so a run prints em's lines.

* **Known third-party warnings** (deprecations inside transformers / Lightning / torch / wandb that em
  cannot act on, listed in :data:`KNOWN_WARNINGS`) are filtered; every other warning still shows.
  ``verbose=true`` keeps them all.
* **One log line per event.** Lightning gives its ``lightning.pytorch`` logger its own console handler
  when it is imported and the root logger has none yet; under Hydra the root has its console + file
  handlers, so every Lightning INFO line came out twice. Lightning's own handlers are removed: its lines
  go through the root's (console and the job's log file) once. Lightning's advert ("💡 Tip: ... litlogger")
  and bitsandbytes' missing-CPU-kernel note are dropped.
* **Progress bars on terminals only.** When stderr is not a terminal (a log file, SLURM, nohup, CI) or
  ``progress=false``, tqdm bars are off (``TQDM_DISABLE``, HF's own bars too): a file gets em's periodic
  log lines (one per logged training step) instead of carriage-return spam.
* **No per-request lines.** The judge's HTTP client (``httpx`` / ``openai``) logs at WARNING and above only, and
  W&B's end-of-run history / summary panels stay out of the console (``WANDB_QUIET``; the run holds them);
  ``verbose=true`` brings both back.
* ``quiet=true``: warnings and errors only (em's INFO lines too); ``verbose=true``: em at DEBUG.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# (message regex, category, module regex): deprecations raised inside third-party code on every run
KNOWN_WARNINGS = (
    (r".*is_gradient_checkpointing.*is deprecated", FutureWarning, ""),
    (r".*isinstance\(treespec, LeafSpec\).* is deprecated", Warning, ""),
    (r".*torch\.utils\._pytree\._register_pytree_node.* is deprecated", Warning, ""),
    (r".*`torch_dtype` is deprecated", Warning, ""),
    (r".*The `srun` command is available on your system but is not used", Warning, ""),
    (r".*does not have many workers which may be a bottleneck", Warning, ""),
    (r".*pkg_resources is deprecated", Warning, ""),
    (r".*Deprecated call to `pkg_resources", Warning, ""),
    (r".*datetime\.datetime\.utcnow\(\) is deprecated", Warning, ""),
    (r".*`resume_download` is deprecated", FutureWarning, ""),
    (r".*`torch\.jit\.script_method` is deprecated", DeprecationWarning, ""),
    (r".*`torch\.jit\.script` is deprecated", DeprecationWarning, ""),
    # em's sampler and RNG states travel in the checkpoint: a mid-epoch resume is bit-identical
    # (tests/test_faults_stop.py), so Lightning's generic "dataloader is not resumable" caution does not apply
    (r".*resuming from a checkpoint that ended before the epoch ended", Warning, ""),
)
# per-request INFO / DEBUG lines of the judge's client (openai >= 3 ships its own httpx2 / httpcore2)
HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai")
DROPPED_LOG_TEXT = ("💡 Tip:", "litlogger", "Failed to load CPU gemm_4bit_forward")


def filter_warnings(verbose: bool = False) -> None:
    """Ignore :data:`KNOWN_WARNINGS` (nothing when ``verbose``); idempotent. Call before the heavy imports."""
    if verbose:
        return
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def early(argv: list[str]) -> None:
    """What must happen before any heavy import: the warning filters, and progress bars off (tqdm reads
    ``TQDM_*`` when it is imported) when stderr is not a terminal or ``progress=false`` is on the command line.

    ``argv``: the command line's arguments (Hydra overrides), read for ``verbose=true`` / ``progress=false``.
    """
    flags = {a.lower() for a in argv}
    filter_warnings(verbose="verbose=true" in flags)
    if "progress=false" in flags or not sys.stderr.isatty():
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


class _DropKnown(logging.Filter):
    """Drops third-party log records whose message contains one of :data:`DROPPED_LOG_TEXT`."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(t in msg for t in DROPPED_LOG_TEXT)


def configure(*, quiet: bool = False, verbose: bool = False, progress: bool = True, lightning: bool = False) -> None:
    """Set warnings, log levels / handlers and progress bars for a run (see the module docstring).

    Args:
        quiet: WARNING and above only, em's own loggers included.
        verbose: keep every warning; em's loggers at DEBUG.
        progress: progress bars at all (still only when stderr is a terminal).
        lightning: import Lightning now (train.py), so that its console handler exists to be removed.

    Idempotent; touches only the ``lightning*``, ``bitsandbytes*``, ``em*`` and (unless ``verbose``)
    ``httpx(2)`` / ``httpcore(2)`` / ``openai`` loggers, the root's level when ``quiet``, and ``TQDM_DISABLE`` /
    ``HF_HUB_DISABLE_PROGRESS_BARS`` / ``WANDB_QUIET`` (set unless already set, not when ``verbose``) in this
    process's environment.
    """
    filter_warnings(verbose)
    if lightning:
        import lightning.pytorch  # noqa: F401  its import installs the console handler removed below
    drop = _DropKnown()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "bitsandbytes"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):  # Lightning's own console handler: its records reach the root's once
            lg.removeHandler(h)
        lg.propagate = True
        if not any(isinstance(f, _DropKnown) for f in lg.filters):
            lg.addFilter(drop)
    for lg_name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                    "bitsandbytes.backends.cpu.ops"):
        lg = logging.getLogger(lg_name)
        if not any(isinstance(f, _DropKnown) for f in lg.filters):
            lg.addFilter(drop)
    if not verbose:
        # the judge's HTTP client logs one INFO line per request (hundreds per run in <job>.log); em's own
        # progress lines say how judging goes. W&B's end-of-run history / summary panels (half the demo's
        # console) stay in the run itself: WANDB_QUIET (wandb.Settings.quiet), unless the user set it.
        for name in HTTP_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        os.environ.setdefault("WANDB_QUIET", "true")
    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("em", "lightning", "lightning.pytorch"):
            logging.getLogger(name).setLevel(logging.WARNING)
    elif verbose:
        logging.getLogger("em").setLevel(logging.DEBUG)
    if not progress or not sys.stderr.isatty():
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def bars_on(progress: bool = True) -> bool:
    """Should a progress bar be drawn: ``progress`` and stderr is a terminal."""
    return bool(progress) and sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")
