"""The ``em`` console command: ``em train|evaluate|analyze|capability|interp|view|push ...`` (installed by ``pip install .``).

``em train ARGS`` is ``python train.py ARGS`` (the same Hydra app, config from the package: ``pkg://em.conf``),
so an installed em runs from any directory. ``em view DIR`` serves the responses browser
(:mod:`em.commands.view`); ``em push DIR repo_id=...`` uploads an adapter (:mod:`em.adapters.run`). Light on purpose: a subcommand's heavy imports happen only once it runs.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

COMMANDS = {
    "train": ("em.commands.train", "fine-tune a chat model with 4-bit LoRA (python train.py)"),
    "evaluate": ("em.commands.evaluate", "sample and judge answers (python evaluate.py)"),
    "judge": ("em.commands.judge", "re-judge existing answers (python evaluate.py answers=... judge=...)"),
    "analyze": ("em.commands.analyze", "rates, contrasts, figures and a report (python analyze.py)"),
    "capability": ("em.commands.capability", "lm-eval benchmarks, base vs adapter (python -m em.capability)"),
    "interp": ("em.commands.interp", "directions, projections, steering and ablation (python interp.py)"),
    "view": ("em.commands.view", "browse responses.parquet of a run or sweep in a local web page"),
    "push": ("em.adapters.run", "push a trained adapter (or a job's adapter/) to the Hugging Face Hub"),
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
    from em.commands.completion import complete, is_completion

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
    from em.commands.completion import program_name

    sys.argv = [program_name(name, args), *args]
    importlib.import_module(COMMANDS[name][0]).cli()
