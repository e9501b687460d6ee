"""``em judge answers=<run dir | responses table | other lab's file> judge=...``: re-judge answers that exist.

The same Hydra app as ``em evaluate`` (:mod:`em.commands.evaluate`) with ``answers=`` required: no model is
loaded, nothing is sampled (:mod:`em.evaluate.rejudge`).
"""

import sys


def cli() -> None:
    """Refuse a command line without ``answers=`` (one line, exit 2), then run evaluate's app."""
    if not any(a.split("=", 1)[0].lstrip("+") == "answers" for a in sys.argv[1:]) and not any(
            a in ("-h", "--help", "--cfg", "-c", "--info") for a in sys.argv[1:]):
        print("error: answers: em judge needs answers=<run dir | responses table | file> (the answers to judge)",
              file=sys.stderr)
        sys.exit(2)
    from em.commands.evaluate import cli as evaluate_cli

    evaluate_cli()
