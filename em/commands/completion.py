"""Shell completion for the ``em`` command: ``em <TAB>`` lists the subcommands, ``em train model=<TAB>`` the
options Hydra completes for ``python train.py model=<TAB>``.

Hydra's completion hook (``eval "$(em -sc install=bash)"``; ``em train --hydra-help`` prints the same line)
runs the command's first word with ``-sc query=bash`` and the shell's ``COMP_LINE`` / ``COMP_POINT`` in the
environment, i.e. ``em -sc query=bash``: the subcommand is still inside ``COMP_LINE``. :func:`complete`
answers that call: with the cursor in the subcommand word, the matching subcommands; after a Hydra
subcommand, ``COMP_LINE`` without the subcommand word (``em model=`` for ``em train model=``, as Hydra's
``strip_python_or_app_name`` expects: the app's name, then overrides) goes to that subcommand's own Hydra
app, which prints Hydra's completions; ``view`` / ``push`` take paths (the shell's default completion).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Callable, Mapping

SHELL_COMPLETION_FLAGS = ("-sc", "--shell-completion")
SCHEMA_SUFFIX = "_schema"  # (em.config.compose.SCHEMA_SUFFIX; em.config.compose is not imported on this light path)
# the subcommands that are Hydra apps -> the app whose options they complete (em judge is evaluate.py answers=...)
HYDRA_COMMANDS = {"train": "train", "evaluate": "evaluate", "judge": "evaluate", "analyze": "analyze",
                  "capability": "capability", "interp": "interp"}


def is_completion(argv: list[str]) -> bool:
    """Is ``em ARGV`` a shell-completion call without a subcommand (``em -sc query=bash`` from the hook, or
    ``em -sc install=bash``)?"""
    return bool(argv) and argv[0] in SHELL_COMPLETION_FLAGS


def program_name(name: str, args: list[str]) -> str:
    """``sys.argv[0]`` for subcommand ``name``: ``em <name>`` (Hydra's messages), but plain ``em`` when Hydra
    writes the completion hook (``-sc install=bash`` registers the hook for ``basename(argv[0])``: ``em``,
    not the two commands ``em`` and ``train``)."""
    if any(a in SHELL_COMPLETION_FLAGS for a in args) and any(a.startswith(("install=", "uninstall=")) for a in args):
        return "em"
    return f"em {name}"


def complete(argv: list[str], commands: Mapping[str, object], run: Callable[[str, list[str]], None]) -> None:
    """Answer the hook's ``em -sc query=<shell>`` (see the module docstring).

    Args:
        argv: ``em``'s arguments (``["-sc", "query=bash"]``).
        commands: the subcommand names (``em.commands.COMMANDS``).
        run: ``run(name, argv)`` runs subcommand ``name`` with ``argv`` as its command line.

    Reads ``COMP_LINE`` (the whole line up to the cursor when ``COMP_POINT`` is set) from the environment and
    rewrites it (and ``COMP_POINT``) for the subcommand's Hydra app. Prints the candidates, space-separated.
    """
    if not any(a.startswith("query=") for a in argv[1:]):  # em -sc install=bash: one hook for every subcommand
        run("train", list(argv))
        return
    line = os.environ.get("COMP_LINE", "")
    point = os.environ.get("COMP_POINT", "")
    if point.isdigit():
        line = line[: int(point)]
    words = line.split(" ")
    # words[0] is the command ("em" or a path to it); the cursor is in the last word
    if len(words) <= 2:
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(n for n in commands if n.startswith(prefix)))
        return
    name = words[1]
    if name not in HYDRA_COMMANDS or name not in commands:
        print("")  # em view / em push take directories: the shell's own file completion (-o default)
        return
    rest = " ".join(words[2:])
    sub_line = f"{words[0]} {rest}"
    os.environ["COMP_LINE"] = sub_line
    os.environ["COMP_POINT"] = str(len(sub_line))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            run(HYDRA_COMMANDS[name], list(argv))
        except SystemExit as e:  # train.py's entry exits with its sweep status: the candidates are printed first
            if e.code not in (0, None):
                raise
    # the schemas' ConfigStore entries (judge=openai_schema) are not options to choose (em.config.compose.SCHEMA_SUFFIX)
    print(" ".join(w for w in out.getvalue().split() if not w.endswith(SCHEMA_SUFFIX)))
    sys.stdout.flush()
