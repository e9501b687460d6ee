"""One home per default: a group YAML file names its schema and holds only what differs from it; the reference
judge id is written once in em's code and config."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

import em.config  # noqa: F401  registers the schemas (the group options name them)
from em.paths import CONF_DIR
from tests.conftest import compose_train

# Groups whose options are typed by a schema dataclass (the others -- experiment, mitigation, hydra -- are
# presets over the root config). logger=none is the null logger: no node, nothing to type.
TYPED_GROUPS = ("model", "data", "lora", "quantization", "trainer", "optimizer", "format", "generation",
                "questions", "judge", "logger", "capability", "interp")
UNTYPED_OPTIONS = {("logger", "none")}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _plain(v):
    return OmegaConf.to_container(OmegaConf.structured(v)) if dataclasses.is_dataclass(v) else v


def _same(value, default) -> bool:
    """YAML value == schema default, as config values (1 == 1.0, but True != 1; '???' is no default)."""
    if default is dataclasses.MISSING or default == "???":
        return False
    default = _plain(default)
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default) and value == default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return float(value) == float(default)
    return type(value) is type(default) and value == default


def _repeats(schema: type, own: dict, composed: DictConfig, path: str) -> list[str]:
    """Keys the file sets itself whose composed value equals the schema's default (nested schemas walked)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    out = []
    for key, raw in own.items():
        if key == "defaults" or key not in fields:
            continue
        default = _default(fields[key])
        if isinstance(raw, dict) and dataclasses.is_dataclass(default):
            out += _repeats(type(default), raw, composed[key], f"{path}.{key}")
            continue
        value = OmegaConf.to_container(composed, resolve=False)[key]
        if _same(value, default):
            out.append(f"{path}.{key}={value!r}")
    return out


def _options():
    from em.config.compose import compose_group

    for group in TYPED_GROUPS:
        for name, node in compose_group(group):
            yield group, name, node


def test_every_group_yaml_names_its_schema_and_repeats_no_default():
    """Each option of a schema-typed group, composed by Hydra, is typed by its schema; no value its file sets
    equals that schema's default (the dataclass is the one home of a default)."""
    checked, repeats = 0, []
    for group, name, node in _options():
        if (group, name) in UNTYPED_OPTIONS:
            continue
        raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"), resolve=False)
        pkg = next((e.split("@", 1)[1] for e in raw.get("defaults", []) if isinstance(e, str) and "_schema@" in e),
                   None)  # format/<x>.yaml: the schema at @<x>, the values under <x>:
        typed_node, own = (node[pkg], raw[pkg]) if pkg else (node, raw)
        schema = OmegaConf.get_type(typed_node)
        assert dataclasses.is_dataclass(schema), f"{group}/{name}.yaml: not typed by a schema ({schema})"
        repeats += [f"{group}/{name}.yaml: {r}" for r in _repeats(schema, own, typed_node, group)]
        checked += 1
    assert checked >= 70  # every option of those groups (the count grows with new options)
    assert repeats == [], "\n".join(repeats)


def test_schema_default_is_what_runs():
    """Where a YAML file and its dataclass disagreed, the value that ran is now the dataclass default."""
    from hydra import compose, initialize_config_dir

    from em.config.evaluate import EvalConfig
    from em.config.train import TrainerConfig

    fields = {f.name: f for f in dataclasses.fields(EvalConfig)}
    tcfg = compose_train([])
    assert tcfg.trainer.devices == _default({f.name: f for f in dataclasses.fields(TrainerConfig)}["devices"]) == 1
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        ev = compose("evaluate")
    assert ev.train_dir == _default(fields["train_dir"]) == "outputs"
    raw = OmegaConf.to_container(ev, resolve=False)
    assert raw["judge_cache"] == _default(fields["judge_cache"]) == "${cache_dir}/judge_cache.sqlite"


def test_reference_judge_id_is_written_once():
    """``gpt-4o-2024-08-06`` appears once in em's code and config (em.config.judge.REFERENCE_JUDGE_MODEL);
    the judge options and constructors refer to it. The bundled question sets (em/evaluate/question_sets)
    are data in the upstream format, whose per-question ``judge`` field records the authors' judge."""
    from em.config.judge import REFERENCE_JUDGE_MODEL, OpenAIBatchJudgeSchema, OpenAIJudgeSchema

    import em

    # the package and its config (conf/ at the repository root, shipped as em.conf): code and config only
    roots = {"em": Path(em.__file__).parent, "conf": CONF_DIR}
    files = [(name, p) for name, root in roots.items() for p in sorted(root.rglob("*"))
             if p.suffix in (".py", ".yaml", ".yml") and "question_sets" not in p.parts]
    hits = [(f"{name}/{p.relative_to(roots[name]).as_posix()}", m.start()) for name, p in files
            for m in re.finditer(re.escape(REFERENCE_JUDGE_MODEL), p.read_text(encoding="utf-8"))]
    assert [h[0] for h in hits] == ["em/config/judge.py"], hits
    assert OpenAIJudgeSchema().model == OpenAIBatchJudgeSchema().model == REFERENCE_JUDGE_MODEL
    for option in ("openai", "openai_batch"):
        assert compose_train([f"judge={option}"]).judge.model == REFERENCE_JUDGE_MODEL


@pytest.mark.parametrize("cls", ["em.judge.openai_judge.OpenAIJudge", "em.judge.openai_batch.OpenAIBatchJudge",
                                 "em.judge.openai_wire.OpenAIEndpointJudge", "em.judge.local.LocalJudge"])
def test_judge_constructors_have_no_defaults(cls):
    """The schema holds every default of a judge; its constructor takes the node's keys, none defaulted."""
    import importlib
    import inspect

    module, name = cls.rsplit(".", 1)
    params = inspect.signature(getattr(importlib.import_module(module), name).__init__).parameters
    defaulted = [p for p in params.values() if p.default is not inspect.Parameter.empty]
    assert defaulted == []
