"""--help reads each key's help from its schema: every schema field carries its help text as field metadata."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import em.config  # noqa: F401  registers the schemas
from tests.conftest import REPO


def _schema_classes() -> set[type]:
    """Every dataclass reachable from the schemas registered in Hydra's ConfigStore (through field types)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    def entries(d):
        for v in d.values():
            yield from (entries(v) if isinstance(v, dict) else [v])

    todo = [OmegaConf.get_type(e.node) for e in entries(ConfigStore.instance().repo)]
    seen: set[type] = set()
    while todo:
        cls = todo.pop()
        if not dataclasses.is_dataclass(cls) or cls in seen or not cls.__module__.startswith("em."):
            continue  # (Hydra's own schemas are in the ConfigStore too)
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            stack = [hints[f.name]]
            while stack:  # Optional[X], list[X], dict[str, X]
                t = stack.pop()
                stack += list(typing.get_args(t))
                if dataclasses.is_dataclass(t):
                    todo.append(t)
    return seen


def test_every_schema_field_has_help():
    classes = _schema_classes()
    names = {c.__name__ for c in classes}
    assert {"TrainConfig", "TrainerConfig", "EvalConfig", "AnalysisConfig", "OpenAIJudgeSchema", "Thresholds",
            "InterpRunConfig", "CapabilityRunConfig", "KLConfig"} <= names
    empty = [f"{c.__module__}.{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c)
             if not str(f.metadata.get("help", "")).strip()]
    assert empty == []


def _help_of(cls: type, name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def test_train_help_shows_each_keys_help_from_the_schema():
    from em.config.judge import OpenAIJudgeSchema
    from em.config.train import TrainConfig, TrainerConfig

    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--help", "judge=openai"], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    want = {"  max_epochs: 1.0": _help_of(TrainerConfig, "max_epochs"), "seed: 0": _help_of(TrainConfig, "seed"),
            "  concurrency: 64": _help_of(OpenAIJudgeSchema, "concurrency")}
    for start, help_ in want.items():
        assert f"{start}  # {help_}" in lines, (start, [ln for ln in lines if ln.startswith(start)])


def test_every_typed_key_of_each_entry_is_annotated():
    """In each script's --help config, a key of a schema-typed node carries exactly its field's help."""
    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig, OmegaConf

    from em.config.compose import annotated_yaml, field_help
    from em.paths import CONF_DIR

    for name in ("train", "evaluate", "analyze", "interp", "capability_run"):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose(name)
        lines = annotated_yaml(cfg)
        n = 0
        for key in cfg.keys():
            node = cfg._get_node(key)
            if isinstance(node, DictConfig) or not dataclasses.is_dataclass(OmegaConf.get_type(cfg)):
                continue
            help_ = field_help(cfg, str(key))
            assert help_ and any(ln.startswith(f"{key}: ") and ln.endswith(f"  # {help_}") for ln in lines), key
            n += 1
        assert n >= 3, name
