"""Paths as the user typed them, resolved against the directory the command was started in.

With ``hydra.job.chdir=true`` Hydra runs the job inside its output directory, so a relative
``train_dir=outputs/train`` or ``adapter=runs/x`` would silently point somewhere else (and
``adapter=latest`` would find nothing). Every user-given path goes through :func:`original_path`:
Hydra's ``to_absolute_path`` (the original working directory) inside a Hydra job, ``os.path.abspath``
outside one.

:data:`CONF_DIR` is the Hydra config root (for ``initialize_config_dir`` only; nothing opens a YAML under it by
path); :func:`local_roots` says where upstream files are looked for before a download.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

# The Hydra config root: the package's folder em.conf in an installed wheel (the build copies conf/ there), the
# repository's conf/ in a checkout or an editable install (where pkg://em.conf is mapped to it as well).
_HERE = Path(__file__).resolve().parent
CONF_DIR = _HERE / "conf" if (_HERE / "conf").is_dir() else _HERE.parent / "conf"
DATA_DIR_ENV = "EM_DATA_DIR"  # a directory holding the upstream repository's files (before the cache)


def original_path(path: Optional[str]) -> Optional[str]:
    """``path`` made absolute against the original working directory (``~`` expanded); None stays None.

    Raises nothing: outside a Hydra job the current directory is the original one.
    """
    if path is None or str(path) == "":
        return path
    p = os.path.expanduser(str(path))
    if os.path.isabs(p):
        return p
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            from hydra.utils import to_absolute_path

            return to_absolute_path(p)
    except ImportError:  # hydra is em's dependency; a bare script without it resolves against the cwd
        pass
    return os.path.abspath(p)


def absolutize_eval(ec: Any, keywords: tuple = ()) -> Any:
    """The evaluation config's user paths resolved in place (train_dir, cache_dir, judge_cache, model.path,
    questions.path, and ``adapter`` unless it is one of ``keywords`` such as ``latest`` / ``none``).

    Returns ``ec``.
    """
    ec.train_dir = original_path(ec.train_dir)
    ec.cache_dir = original_path(ec.cache_dir)
    ec.judge_cache = original_path(ec.judge_cache)
    ec.model.path = original_path(ec.model.path)
    ec.questions.path = original_path(ec.questions.path)
    if isinstance(ec.adapter, str) and ec.adapter.strip().lower() not in keywords:
        ec.adapter = original_path(ec.adapter)
    return ec



def local_roots(cache_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """Where em looks for an upstream repository's files before downloading, in order: ``("EM_DATA_DIR",
    its directory)`` when that variable is set, then ``("cache", <cache_dir>/upstream)``. Reads nothing."""
    env_dir = os.environ.get(DATA_DIR_ENV)
    return ([(DATA_DIR_ENV, Path(env_dir).expanduser())] if env_dir else []) + [
        ("cache", Path(cache_dir).expanduser() / "upstream")]


__all__ = ["CONF_DIR", "DATA_DIR_ENV", "absolutize_eval", "local_roots", "original_path"]
