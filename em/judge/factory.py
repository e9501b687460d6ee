"""Judges from config: ``build_judges(node) -> list[Judge]``, the one way to get judges (empty for judge=none)."""

from __future__ import annotations

from typing import Any

from em.config.common import validate
from em.config.judge import typed
from em.errors import ConfigError, EMError
from em.judge.base import Judge


def build_judges(node: Any) -> list[Judge]:
    """The judges a ``judge`` config node describes: one judge, every member of an ensemble, or [] for
    judge=none / ``~judge`` / a null node.

    The node is typed by its schema (:func:`em.config.judge.typed`: a node that lost its type on the way, e.g.
    resolved to a plain container, is typed again), its range checks run (the schemas' ``__post_init__``), and
    Hydra instantiates its ``_target_`` with structured sub-nodes (the local judge's model and quantization)
    as their dataclasses. Nothing is loaded or contacted: a local judge loads its model on first use, and
    :meth:`Judge.check` (the API key) is the caller's to run.

    Raises:
        ConfigError: one line naming the key (a range check, an unknown key, a wrong type, a bad ``_target_``).
        JudgeError: one line, from a judge's own construction.
    """
    import dataclasses

    if node is None or (node.get("_target_") if not dataclasses.is_dataclass(node) else node._target_) is None:
        return []
    import hydra
    from hydra.errors import InstantiationException
    from omegaconf import DictConfig, OmegaConf

    if dataclasses.is_dataclass(node):  # a schema object of a validated config: checked already, built as it is
        node = OmegaConf.structured(node)
    else:  # a composed node (or a plain one): typed and checked here
        if not isinstance(node, DictConfig):  # a plain mapping (an Any field of a validated config): a node again
            node = OmegaConf.create(node)
        try:
            node = typed(node)
        except Exception as e:  # omegaconf: an unknown key or a wrong type, with the key
            key = getattr(e, "full_key", None)
            raise ConfigError(f"judge: {str(e).splitlines()[0]}" + (f" (key: {key})" if key else "")) from None
        validate(node)
    try:
        built = hydra.utils.instantiate(node, _convert_="object")
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, EMError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise ConfigError(f"judge: {' '.join(str(e).split())}") from None
    judges = built if isinstance(built, list) else [built]
    for j in judges:
        if not isinstance(j, Judge):
            raise ConfigError(f"judge._target_: built a {type(j).__name__}, not an em.judge.base.Judge")
    return judges


def build_judge(schema: Any) -> Judge:
    """The one judge a schema object describes (``OpenAIJudgeSchema(base_url=..., concurrency=8)``), built as
    :func:`build_judges` builds it from config: the judges' constructors have no defaults of their own, the
    schema holds them (em.config.judge).

    Raises:
        ConfigError, JudgeError: as :func:`build_judges`.
    """

    return build_judges(schema)[0]


__all__ = ["build_judge", "build_judges"]
