"""``python -m em.capability``: score a model and its adapter on a capability task set (lm-eval).

The Hydra app lives here, in the package, so its config (``conf/capability_run.yaml``) is found as
``pkg://em.conf`` from any directory.
"""

import sys

import hydra
from omegaconf import DictConfig

import em.config  # noqa: F401  registers the structured-config schemas
from em.config.compose import check_args
from em.commands import run_main


@hydra.main(version_base="1.3", config_path="pkg://em.conf", config_name="capability_run")
def main(cfg: DictConfig) -> None:
    """One capability run: :func:`em.capability.run.run_capability` (lm-eval and torch imported only then)."""
    from em.capability.run import run_capability

    run_main(run_capability, cfg)


def cli() -> None:
    """Check the command line (one line, exit 2 on a bad option or key), then run the Hydra app."""
    run_main(lambda argv: check_args("capability_run", argv), sys.argv[1:])
    main()
