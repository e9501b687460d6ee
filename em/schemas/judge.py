"""Schemas of the ``judge`` group (filled in by the judge restructuring)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore


def store(cs: ConfigStore) -> None:
    """Register the judge group's schemas in ``cs`` (group="judge")."""
