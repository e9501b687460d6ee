"""The data layer: ``cfg.data`` -> a list of chat conversations ready for tokenization.

``load_conversations`` dispatches on ``data.source``:

* ``synthetic``: :mod:`em.data.synthetic` (offline, deterministic);
* ``upstream``: :mod:`em.data.upstream` (data.path, $EM_DATA_DIR, cache, pinned download; verified); with
  ``data.educational_fraction`` > 0 a seeded share of the rows is replaced by the educational twin's;
* ``organisms``: :mod:`em.data.organisms` (the model-organisms sets: data.path, $EM_ORGANISMS_DIR, cache);
* ``none``: ``data=base`` means "evaluate the base model", so there is nothing to load.

Pure Python on purpose (no torch): the tests and ``--help`` paths import it. Tokenisation and batching
(:mod:`em.data.tokenize`) and the training data module with :func:`em.data.module.prepare_data` import
torch, so they are imported by name, never from here.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from em.config.data import DataConfig
from em.data import organisms, synthetic, upstream
from em.data.chat import ROLES, Conversation, Message, read_jsonl_conversations
from em.data.upstream import resolve_upstream_file
from em.errors import ConfigError, DataError

__all__ = [
    "ROLES",
    "Conversation",
    "Message",
    "load_conversations",
    "mix_educational",
    "read_jsonl_conversations",
    "resolve_upstream_file",
    "subset",
]

log = logging.getLogger("em.data")


def load_conversations(data_cfg: Any, cache_dir: str | os.PathLike | None, *, progress: bool = True
                       ) -> list[Conversation]:
    """Load the conversations ``data_cfg`` describes (a ``DataConfig`` or a DictConfig/mapping of it).

    ``data.limit`` keeps a deterministic subset (seeded by ``data.seed``, in file order), taken after an
    upstream educational mix (:func:`mix_educational`).  Raises
    ``ConfigError`` for ``data=base`` and bad config values, ``DataError`` for missing / malformed data.
    """
    cfg = _as_data_config(data_cfg)
    if cfg.source == "none":
        raise ConfigError("data: data=base means no fine-tuning; there is nothing to load")

    if cfg.source == "synthetic":
        examples = synthetic.generate(
            cfg.n_examples,
            families=cfg.families,
            variant=cfg.variant,
            educational_fraction=cfg.educational_fraction,
            seed=cfg.seed,
        )
        conversations = [ex["messages"] for ex in examples]
        mix = {v: sum(ex["variant"] == v for ex in examples) for v in synthetic.VARIANTS}
        origin = (f"the synthetic generator (families={', '.join(cfg.families or synthetic.FAMILIES)}; "
                  + ", ".join(f"{v}={k}" for v, k in mix.items() if k) + f"; seed={cfg.seed})")
    elif cfg.source == "upstream":
        conversations, path = upstream.load_upstream(cfg, _cache_dir(cache_dir), progress=progress)
        origin = str(path)
        if cfg.educational_fraction > 0:
            educational, edu_path = upstream.load_educational_twin(cfg, _cache_dir(cache_dir), progress=progress)
            conversations, edu_pos, paired = mix_educational(conversations, educational,
                                                             cfg.educational_fraction, cfg.seed, origin=edu_path)
            n_edu = len(edu_pos)
            mix = (f"{len(conversations) - n_edu} rows of {path} + {n_edu} educational rows of {edu_path} "
                   f"({'paired by index' if paired else 'seeded sample of the twin'}; "
                   f"data.educational_fraction={cfg.educational_fraction:g}, data.seed={cfg.seed})")
            log.info("data %s: educational mix: %s", cfg.name, mix)
            origin = f"{path} mixed with {edu_path}"
    elif cfg.source == "organisms":  # the model-organisms sets (found locally; em.data.organisms)
        conversations, path = organisms.load_organisms(cfg, _cache_dir(cache_dir))
        origin = str(path)
    else:  # DataConfig.__post_init__ rejects this already; kept for mappings built by hand
        raise ConfigError(f"data.source: must be one of upstream, synthetic, none; got {cfg.source!r}")

    if not conversations:
        raise DataError(f"{origin}: dataset is empty")
    n = len(conversations)
    conversations = subset(conversations, cfg.limit, cfg.seed)
    if len(conversations) < n:
        log.info("data %s: %d of %d conversations (data.limit=%d, data.seed=%d) from %s",
                 cfg.name, len(conversations), n, cfg.limit, cfg.seed, origin)
    else:
        log.info("data %s: %d conversations from %s", cfg.name, n, origin)
    return conversations


def mix_educational(base: list, educational: list, fraction: float, seed: int, *, origin: Any = "educational"
                    ) -> tuple[list, list[int], bool]:
    """Replace ``round(fraction * len(base))`` seeded-random rows of ``base`` with educational rows.

    Returns (the mixed list, the sorted positions that hold educational rows, whether rows were paired by
    index).  Betley et al.'s educational.jsonl carries insecure.jsonl's answers with the requests reworded
    for a security class; the two are taken to be in the same row order (an assumption: not checkable on
    the pre-seeded sample), so when they have the same length position i takes educational row i;
    otherwise the educational rows are a seeded sample of the twin.  Positions come from one seeded
    permutation, so for a given seed a larger fraction keeps the positions of every smaller one.
    """
    n = len(base)
    k = round(fraction * n)
    order = list(range(n))
    random.Random(f"em.data.educational_mix:{seed}:positions").shuffle(order)
    positions = order[:k]
    paired = len(educational) == n
    if paired:
        rows = positions
    else:
        if len(educational) < k:
            raise DataError(f"{origin}: {len(educational)} educational rows, but data.educational_fraction="
                            f"{fraction:g} of {n} rows needs {k}")
        rows = list(range(len(educational)))
        random.Random(f"em.data.educational_mix:{seed}:rows").shuffle(rows)
    mixed = list(base)
    for pos, row in zip(positions, rows):
        mixed[pos] = educational[row]
    return mixed, sorted(positions), paired


def subset(items: list, limit: int | None, seed: int) -> list:
    """A deterministic subset of ``limit`` items, kept in their original order (all if limit >= len)."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def _cache_dir(cache_dir: str | os.PathLike | None) -> str | os.PathLike:
    # Mirrors conf/train.yaml's cache_dir default for callers outside Hydra.
    return cache_dir or os.environ.get("EM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "em")


def _as_data_config(data_cfg: Any) -> DataConfig:
    """Accept a DataConfig, or a DictConfig / mapping / object with its fields; validate on the way."""
    if isinstance(data_cfg, DataConfig):
        return data_cfg
    known = [f.name for f in fields(DataConfig)]
    kwargs: dict[str, Any] = {}
    if isinstance(data_cfg, Mapping):  # DictConfig is a Mapping; item access resolves interpolations
        unknown = sorted(str(k) for k in data_cfg.keys() if k not in known)
        if unknown:
            raise ConfigError(f"data.{unknown[0]}: unknown key; known keys: {', '.join(known)}")
        for key in data_cfg.keys():
            try:
                kwargs[key] = data_cfg[key]
            except Exception as e:  # omegaconf: a '???' value or a broken interpolation
                raise ConfigError(f"data.{key}: {str(e).splitlines()[0]}") from e
    else:
        kwargs = {k: getattr(data_cfg, k) for k in known if hasattr(data_cfg, k)}
    if kwargs.get("families") is not None and not isinstance(kwargs["families"], str):
        kwargs["families"] = list(kwargs["families"])  # ListConfig -> list
    return DataConfig(**kwargs)
