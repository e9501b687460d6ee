"""``python -m em.capability``: the same Hydra app as ``em capability`` (:mod:`em.commands.capability`)."""

from em.commands.capability import cli

cli()
