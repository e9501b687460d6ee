"""Structured-config schemas (Hydra ConfigStore dataclasses), one package for every stage and group.

Types are checked when Hydra composes; ranges in each dataclass's ``__post_init__`` run in
:func:`em.schemas.common.validate`, before any model or dataset is touched. Light on purpose (no torch):
imported on the ``--help`` path.
"""
