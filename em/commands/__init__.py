"""The ``em`` console command: ``em train|evaluate|analyze|capability|interp|view|push ...`` (installed by ``pip install .``).

``em train ARGS`` is ``python train.py ARGS`` (the same Hydra app, config from the package: ``pkg://em.conf``),
so an installed em runs from any directory. ``em view DIR`` serves the responses browser
(:mod:`em.commands.view`); ``em push DIR repo_id=...`` uploads an adapter (:mod:`em.commands.push`). Light on purpose: a subcommand's heavy imports happen only once it runs.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any, Callable, Optional

from em.commands.completion import complete, is_completion, program_name
from em.config.compose import URL_CREDENTIALS
from em.errors import EMError
from em.runtime import drop_empty_run_dir, quiet_log_file_faults, storage_fault
from em.tracking import redact_urls

COMMANDS = {
    "train": ("em.commands.train", "fine-tune a chat model with 4-bit LoRA (python train.py)"),
    "evaluate": ("em.commands.evaluate", "sample and judge answers (python evaluate.py)"),
    "judge": ("em.commands.judge", "re-judge existing answers (python evaluate.py answers=... judge=...)"),
    "analyze": ("em.commands.analyze", "rates, contrasts, figures and a report (python analyze.py)"),
    "capability": ("em.commands.capability", "lm-eval benchmarks, base vs adapter (python -m em.capability)"),
    "interp": ("em.commands.interp", "directions, projections, steering and ablation (python interp.py)"),
    "view": ("em.commands.view", "browse responses.parquet of a run or sweep in a local web page"),
    "push": ("em.commands.push", "push a trained adapter (or a job's adapter/) to the Hugging Face Hub"),
}


def usage() -> str:
    """The one-screen usage text of ``em`` (its subcommands and what each does)."""
    lines = ["usage: em <command> [args]   (em <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    """Dispatch ``em <command> ARGS`` to the command's ``cli()``; no or an unknown command: usage, exit 2.

    ``sys.argv`` is rewritten to ``["em <command>", *ARGS]`` before the command runs, so Hydra parses ARGS
    exactly as it would for the script.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if is_completion(argv):  # the shell's completion hook: `em -sc query=bash` (em.commands.completion)
        return complete(argv, COMMANDS, _run)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choices: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    _run(name, rest)


def _run(name: str, args: list[str]) -> None:
    """Run subcommand ``name`` with ``args`` as its command line (``sys.argv`` rewritten for Hydra)."""
    sys.argv = [program_name(name, args), *args]
    importlib.import_module(COMMANDS[name][0]).cli()


class RedactCredentials(logging.Filter):
    """A handler filter: a URL's ``user:password@`` never reaches a log file or the console (httpx logs every
    request's URL at INFO; an endpoint from ``$OPENAI_BASE_URL`` may carry credentials)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003  logging's name
        """Rewrite the record's message without URL credentials; never drops a record."""
        message = record.getMessage()
        if "@" in message and URL_CREDENTIALS.search(message):
            record.msg = redact_urls(message)
            record.args = ()
        return True


def sweep_cli(config_name: str, app: Callable[[], Any], exit_status: Callable[[Any], Any]) -> None:
    """The entry of a Hydra app that may run as a sweep (train.py, interp.py): warning filters first, the command
    line checked (one line, exit 2), then ``app()``; the exit status of a multirun is its summary's (non-zero when a
    job failed or was interrupted: ``exit_status``, :func:`em.jobs.sweep.exit_status`, passed in because em.jobs.sweep
    imports this package), not an atexit hook's."""
    from em.config.compose import check_args
    from em.quiet import early

    early(sys.argv[1:])  # warning filters; no tqdm bars into a file
    run_main(lambda argv: check_args(config_name, argv), sys.argv[1:])
    try:
        app()
        code = 0
    except SystemExit as e:
        code = e.code
    sys.exit(exit_status(code))


def run_main(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Call ``fn(cfg)``; an EMError (bad config value, bad data row, missing model) prints one line and exits 2;
    a full or read-only disk (:mod:`em.runtime`) prints one line naming the file and exits 1.

    Every handler of the root logger (Hydra's console and ``<job>.log``) gets :class:`RedactCredentials`.
    """
    log_sizes = {}  # the job's log files as the run found them: a refused run's own lines go with its directory
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactCredentials) for f in handler.filters):
            handler.addFilter(RedactCredentials())
        quiet_log_file_faults(handler)
        if isinstance(handler, logging.FileHandler):  # (a delayed handler has not created its file yet)
            log_file = handler.baseFilename
            log_sizes[log_file] = os.path.getsize(log_file) if os.path.exists(log_file) else 0
    try:
        return fn(cfg)
    except EMError as e:
        print(f"error: {e}", file=sys.stderr)
        drop_empty_run_dir(log_sizes)
        sys.exit(getattr(e, "exit_status", 2))  # 2: bad input; 1: the machine's fault (em.runtime.StorageError)
    except Exception as e:
        fault = storage_fault(e)  # a full / read-only disk: one line naming the file, exit 1 (em.runtime)
        if fault is None:
            raise
        print(f"error: {fault}", file=sys.stderr)
        sys.exit(fault.exit_status)
