"""Structured-config schemas (Hydra ConfigStore dataclasses), one package for every stage and group.

Importing this package registers them all (:func:`register_configs`): the root schemas ``train_schema``
and ``evaluate_schema``, and per group ``<group>/<name>_schema`` (questions, format, generation, logger,
judge, ...), which the group's YAML files name first in their ``defaults`` so a typo under the group fails
at composition. Each module of this package that defines ``store(cs)`` is registered; nothing else needs
listing here.

Types are checked when Hydra composes; ranges in each dataclass's ``__post_init__`` run in
:func:`em.config.common.validate`, before any model or dataset is touched. Light on purpose (no torch):
imported on the ``--help`` path.
"""

from __future__ import annotations

import importlib
import pkgutil

from em.config import resolvers

def register_configs() -> None:
    """Register the ``em.*`` resolvers and every schema of this package in Hydra's ConfigStore (calling it again re-registers).

    Calls ``store(ConfigStore.instance())`` of each ``em.config.<module>`` that defines one (so
    ``em.config.judge.store`` registers the judge group's schemas).
    """
    from hydra.core.config_store import ConfigStore

    resolvers.register()
    cs = ConfigStore.instance()
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        store = getattr(module, "store", None)
        if callable(store):
            store(cs)


register_configs()
