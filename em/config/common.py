"""What every schema shares: the one range-check helper and the one validator."""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from em.errors import ConfigError, require  # noqa: F401  (require: every schema's check, em.config.common.require)


# numpy's and Lightning's seed range (np.random.seed / seed_everything): every script accepts exactly these
SEED_MIN, SEED_MAX = 0, 2**32 - 1


def check_seed(value: Any, key: str) -> None:
    """Refuse a seed outside [0, 2**32 - 1] (numpy's range: ``seed=-5`` was a numpy traceback in train.py and
    accepted by evaluate.py), the same way in train.py, evaluate.py, analyze.py and the capability run.

    Raises:
        ConfigError: ``<key>: must be an integer in [0, 4294967295] (numpy's seed range), got <value>``.
    """
    ok = isinstance(value, int) and not isinstance(value, bool) and SEED_MIN <= value <= SEED_MAX
    require(ok, key, f"must be an integer in [{SEED_MIN}, {SEED_MAX}] (numpy's seed range), got {value!r}")


NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


def check_name(value: str, key: str) -> str:
    """``value`` when it is safe as one path component (``[A-Za-z0-9._-]``, no ``..``): it names run, sweep
    and output directories and files.

    Raises:
        ConfigError: ``<key>: ...`` naming the key and the characters allowed.
    """
    ok = isinstance(value, str) and bool(NAME_PATTERN.fullmatch(value)) and ".." not in value
    require(ok, key, f"{value!r} is used in paths: only letters, digits, '.', '_' and '-' (no '..', no '/')")
    return value


def plain(node: Any) -> Any:
    """A config as plain containers, interpolations resolved: a validated schema object (what the entry passes
    down) or a composed DictConfig alike (records, W&B config, sub-configs derived from a job's config)."""
    import dataclasses

    if dataclasses.is_dataclass(node):
        node = OmegaConf.structured(node)
    elif isinstance(node, (dict, list)):  # an Any field of a validated object: may hold schema objects
        node = OmegaConf.create(node)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def validate(cfg: DictConfig) -> Any:
    """Turn a composed structured config into its dataclass objects, running every ``__post_init__`` check.

    Raises:
        ConfigError: one line naming the key (range checks, a missing mandatory value, a wrong type).
    """
    try:
        return OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as e:  # omegaconf's own errors (missing mandatory value, type) carry the full key
        key = getattr(e, "full_key", None)
        raise ConfigError(str(e).splitlines()[0] + (f" (key: {key})" if key else "")) from e
