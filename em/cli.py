"""What the entry scripts share: one-line errors instead of tracebacks for bad input."""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

from em.errors import ConfigError, EMError


# Launchers that come from a plugin package, and the package (conf/hydra/launcher/slurm.yaml builds on submitit_slurm).
LAUNCHER_PLUGINS = {
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
}


def check_launcher(argv: list[str], conf_dir: Optional[str] = None) -> None:
    """`hydra/launcher=X`: a missing plugin or unknown launcher is one line, before Hydra composes anything."""
    import importlib.util
    from pathlib import Path

    root = Path(conf_dir) if conf_dir else Path(__file__).resolve().parents[1] / "conf"
    for arg in argv:
        key, sep, name = arg.partition("=")
        if not sep or key.lstrip("+~") != "hydra/launcher":
            continue
        if name in LAUNCHER_PLUGINS:
            module, package = LAUNCHER_PLUGINS[name]
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"hydra/launcher={name} needs the Hydra plugin {package}: pip install {package}")
        elif name != "basic" and not (root / "hydra" / "launcher" / f"{name}.yaml").is_file():
            choices = sorted({"basic", *LAUNCHER_PLUGINS, *(p.stem for p in (root / "hydra" / "launcher").glob("*.yaml"))})
            raise ConfigError(f"hydra/launcher={name}: unknown launcher; choices: {', '.join(choices)}")


def run_main(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Call fn(cfg); an EMError (bad config value, bad data row, missing model) prints one line and exits 2."""
    try:
        return fn(cfg)
    except EMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
