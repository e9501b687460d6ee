"""What every schema shares: the one range-check helper and the one validator."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from em.errors import ConfigError


def require(ok: bool, key: str, msg: str) -> None:
    """Raise ConfigError(f"{key}: {msg}") unless ``ok`` (the dotted config key comes first)."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")


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
