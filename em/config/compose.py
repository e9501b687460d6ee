"""What the entry scripts share: bad input is one line (``error: ...``, exit 2), never a traceback.

``train.py`` / ``evaluate.py`` call :func:`check_args` before ``@hydra.main``: it composes the config the
way Hydra is about to, so an unknown option, a typo'd key (``format.plain.sufix=x``) or a wrong type fails
here with one line naming the key, instead of Hydra's multi-line report.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from em.config.common import check_name
from em.config.judge import KEY_ENV_MESSAGE, looks_like_secret
from em.config.train import RENAMED_KEYS, TRAINER_DERIVED
from em.errors import ConfigError
from em.paths import CONF_DIR
from em.runtime import check_output_dir

# Launchers that come from a plugin package, and the package (conf/hydra/launcher/slurm.yaml builds on submitit_slurm).
LAUNCHER_PLUGINS = {
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
}
SCHEMA_SUFFIX = "_schema"  # ConfigStore entries of a group (em.config) that are not options to choose
# A key-bearing config key (its last part): api_key, openai_apikey, hf_token, auth_token, secret, password, ...
SECRET_KEY = re.compile(r"(^|_)(api_?key|token|secret|password|passwd|credentials?)$")
URL_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s@]*@")
# Config values that become parts of paths (run / sweep directories, file names): em.config.common.check_name
NAME_KEYS = ("experiment_name", "model.name", "data.name", "questions.name", "condition", "evaluate.condition")


def check_secrets(argv: list[str]) -> None:
    """No key on the command line: ``+judge.api_key=...``, a key pasted as ``judge.api_key_env=sk-...``
    (:func:`em.config.judge.looks_like_secret`) or a URL with ``user:password@`` is refused before
    Hydra writes ``.hydra/*.yaml`` (the message never repeats the value).

    Raises:
        ConfigError: names the key and says where a key belongs (an environment variable, ``judge.api_key_env``).
    """
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.startswith("-"):
            continue
        leaf = key.lstrip("+~").rsplit(".", 1)[-1].rsplit("@", 1)[0].lower()
        if leaf == "api_key_env":

            if looks_like_secret(value):
                raise ConfigError(f"{key.lstrip('+~')}: {KEY_ENV_MESSAGE}")
        if SECRET_KEY.search(leaf):
            where = ("set HF_TOKEN or run `hf auth login`" if key.lstrip("+~").startswith("push_to_hub.") else
                     "put the key in an environment variable and name it in judge.api_key_env")
            raise ConfigError(f"{key.lstrip('+~')}: keys and secrets are never config values (they would be written "
                              f"to the run's config records and W&B); {where}")
        if URL_CREDENTIALS.search(value):
            raise ConfigError(f"{key.lstrip('+~')}: credentials in a URL (scheme://user:password@host) would be "
                              "written to every config record; put the key in the environment variable named by "
                              "judge.api_key_env")


def check_composed(cfg: Any) -> None:
    """The composed config, before Hydra creates a directory: no key a schema lacks (``+bogus=1``), no URL
    with credentials (from a YAML file too), and path-safe names (:data:`NAME_KEYS`).

    Raises:
        ConfigError: one line naming the key.
    """
    import dataclasses

    from omegaconf import DictConfig, ListConfig, OmegaConf

    def walk(node: Any, path: str) -> None:
        if isinstance(node, DictConfig):
            t = OmegaConf.get_type(node)
            known = {f.name for f in dataclasses.fields(t)} if dataclasses.is_dataclass(t) else None
            for k in node.keys():
                where = f"{path}.{k}" if path else str(k)
                if known is not None and k not in known:
                    raise ConfigError(f"{where}: not a config key (a '+' override adds a key nothing reads); "
                                      "--cfg job lists the keys")
                walk(node._get_node(k), where)
        elif isinstance(node, ListConfig):
            for i in range(len(node)):
                walk(node._get_node(i), f"{path}[{i}]")
        elif not node._is_interpolation() and isinstance(node._value(), str) and URL_CREDENTIALS.search(node._value()):
            raise ConfigError(f"{path}: credentials in a URL (scheme://user:password@host) would be written to "
                              "every config record; put the key in the environment variable named by judge.api_key_env")

    walk(cfg, "")
    for key in NAME_KEYS:
        try:
            value = OmegaConf.select(cfg, key, default=None)
        except Exception:  # noqa: BLE001  an interpolation that resolves only inside a run: checked at validation
            continue
        if isinstance(value, str):
            check_name(value, key)


def check_renamed(argv: list[str]) -> None:
    """A key renamed to lightning.Trainer's name (``trainer.epochs=3``, :data:`em.config.train.RENAMED_KEYS`)
    is refused with its new name, before Hydra composes anything.

    Raises:
        ConfigError: ``trainer.epochs: renamed trainer.max_epochs (lightning.Trainer's name)``.
    """
    for arg in argv:
        key = arg.partition("=")[0].lstrip("+~")
        if key in RENAMED_KEYS:
            raise ConfigError(f"{key}: renamed {RENAMED_KEYS[key]} (lightning.Trainer's name)")


def check_launcher(argv: list[str]) -> None:
    """``hydra/launcher=X``: a missing plugin or an unknown launcher is one line, before Hydra composes anything.

    Raises:
        ConfigError: the launcher's plugin package is not installed (names the pip package), or no such launcher.
    """
    import importlib.util

    for arg in argv:
        key, sep, name = arg.partition("=")
        if not sep or key.lstrip("+~") != "hydra/launcher":
            continue
        if name in LAUNCHER_PLUGINS:
            module, package = LAUNCHER_PLUGINS[name]
            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError:  # no hydra_plugins package at all: find_spec of a submodule raises
                found = False
            if not found:
                raise ConfigError(f"hydra/launcher={name} needs the Hydra plugin {package}: "
                                  f"pip install 'em[launchers]' (or pip install {package})")
        elif name != "basic":
            from hydra import initialize_config_dir

            with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
                known = group_options("hydra/launcher")
            if name not in known:
                choices = sorted({"basic", *LAUNCHER_PLUGINS, *known})
                raise ConfigError(f"hydra/launcher={name}: unknown launcher; choices: {', '.join(choices)}")


def compose_group(group: str) -> list[tuple[str, Any]]:
    """(option name, composed node) for every option of config group ``group`` (e.g. ``model``).

    Inside a Hydra app the app's own config repository is used; else one initialised on
    :data:`em.paths.CONF_DIR`. All options are composed at once, each under its own package
    (``+model@models.m<i>=<option>``), so no file under ``conf/`` is opened by path.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def compose_all() -> list[tuple[str, Any]]:
        names = group_options(group)
        if not names:
            return []
        cfg = compose(overrides=[f"+{group}@_options.m{i}={name}" for i, name in enumerate(names)])
        return [(name, cfg._options[f"m{i}"]) for i, name in enumerate(names)]

    if GlobalHydra.instance().is_initialized():
        return compose_all()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose_all()


def group_options(group: str) -> list[str]:
    """The options of a config group (e.g. ``format``) as Hydra sees them, without the schemas' entries.

    Needs an initialised Hydra (inside ``initialize_config_dir`` or a running app).
    """
    from hydra.core.global_hydra import GlobalHydra

    names = GlobalHydra.instance().config_loader().get_group_options(group)
    return sorted(n for n in names if not n.endswith(SCHEMA_SUFFIX))


def hydra_error_line(e: Exception) -> str:
    """One line for a Hydra composition error, naming the key or the group and its choices.

    ``model=nonexistent`` -> ``model: unknown model 'nonexistent'; choices: gemma3_12b, ...``;
    ``format.plain.sufix=x`` -> ``Could not override 'format.plain.sufix': Key 'sufix' not in 'FormatConfig'``;
    ``lora.r=abc`` -> ``Error merging override lora.r=abc: Value 'abc' ... (key: lora.r)``.
    """
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        if group:
            try:
                options = group_options(group)
            except Exception:  # noqa: BLE001  Hydra not initialised: the options Hydra attached, if any
                options = sorted(o for o in (e.options or []) if not o.endswith(SCHEMA_SUFFIX))
            return f"{group}: unknown {group.rsplit('/', 1)[-1]} {name!r}; choices: {', '.join(options)}"
    head = " ".join(str(e).split("\n", 1)[0].split()).rstrip(".")
    cause = e.__cause__
    if cause is not None and str(cause):
        key = getattr(cause, "full_key", None)
        detail = " ".join(str(cause).split("\n", 1)[0].split())
        suffix = f" (key: {key})" if key and key not in head else ""
        return f"{head}: {detail}{suffix}"
    return " ".join(str(e).split())


def check_args(config_name: str, argv: list[str]) -> None:
    """Compose ``config_name`` with the command line's overrides as ``@hydra.main`` will, before it does.

    Nothing runs and nothing is written: only the composition (a few hundred ms). Skipped for
    ``--help`` / ``--hydra-help`` / ``--info`` / shell completion and another ``--config-name`` /
    ``--config-dir``, which Hydra answers itself.

    Raises:
        ConfigError: the one line of :func:`hydra_error_line` (unknown option, typo'd key, wrong type).
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    check_secrets(argv)
    check_renamed(argv)
    check_launcher(argv)
    for arg in argv:  # the W&B option carries the logger node's schema: csv merged first would be dropped
        opts = arg.partition("=")[2].strip("[]").split(",") if arg.startswith("logger=[") else []
        if "csv" in opts and "wandb" in opts and opts.index("csv") < opts.index("wandb"):
            raise ConfigError(f"{arg}: list wandb first: logger=[wandb,csv]")
    args, _ = get_args_parser().parse_known_args(argv)
    if args.help and not (args.config_dir or args.config_name):
        print(help_text(config_name, list(args.overrides)))
        sys.exit(0)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    if args.config_dir or (args.config_name and args.config_name != config_name):
        return  # another config: Hydra reports on it itself
    from hydra import initialize_config_dir

    mode = RunMode.MULTIRUN if args.multirun else RunMode.RUN
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        try:
            cfg = GlobalHydra.instance().hydra.compose_config(config_name, list(args.overrides), run_mode=mode,
                                                              with_log_configuration=False)
        except HydraException as e:
            raise ConfigError(hydra_error_line(e)) from None
        except OmegaConfBaseException as e:  # omegaconf's own errors (a type, a missing value) carry the key
            key = getattr(e, "full_key", None)
            raise ConfigError(" ".join(str(e).split("\n", 1)[0].split()) + (f" (key: {key})" if key else "")) from None
        check_known_keys(cfg)  # (names the schema, and for trainer.* where a Lightning argument goes)
        check_composed(_without_hydra(cfg))

        check_output_dir(cfg, multirun=bool(args.multirun))  # a read-only outputs directory: one line, exit 1


def _without_hydra(cfg: Any) -> Any:
    """A copy of a composed config without its ``hydra`` node (what the task function receives)."""
    from omegaconf import OmegaConf, open_dict

    out = cfg.copy()
    with open_dict(out):
        out.pop("hydra", None)
    OmegaConf.set_struct(out, True)
    return out


def check_known_keys(cfg: Any, path: str = "") -> None:
    """Refuse a key its schema does not declare (``+trainer.max_epochs=2``: Hydra's ``+`` adds keys even
    under a typed node). Walks every node typed by a dataclass; ``dict``-typed fields (``trainer.extra``)
    take any key.

    Raises:
        ConfigError: ``<key>: not a key of <Schema>`` (for ``trainer.*``: where Lightning arguments go).
    """
    import dataclasses

    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, ListConfig):
        for i in range(len(cfg)):
            check_known_keys(cfg._get_node(i), f"{path}[{i}]")
        return
    if not isinstance(cfg, DictConfig):
        return
    schema = OmegaConf.get_type(cfg)
    fields = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in cfg.keys():
        if not path and key == "hydra":
            continue
        full = f"{path}.{key}" if path else str(key)
        if fields is not None and key not in fields:
            hint = ""
            if path == "trainer":

                renamed = RENAMED_KEYS.get(f"trainer.{key}")
                hint = (f"; renamed {renamed} (lightning.Trainer's name)" if renamed else
                        f"; em sets it from {TRAINER_DERIVED[key]}" if key in TRAINER_DERIVED else
                        f"; a lightning.Trainer argument goes in trainer.extra (+trainer.extra.{key}=...)")
            raise ConfigError(f"{full}: not a key of {schema.__name__}{hint}")
        child = cfg._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_missing() and not child._is_none():
            check_known_keys(child, full)


def help_text(config_name: str, overrides: list[str]) -> str:
    """``--help`` of one script: only the config groups its own config uses (``hydra.runtime.choices``), their
    options, and the composed config (as Hydra's help prints it). Needs no Hydra app; composes once.

    Raises:
        ConfigError: the overrides do not compose (the one line of :func:`hydra_error_line`).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except HydraException as e:
            raise ConfigError(hydra_error_line(e)) from None
        from hydra.core.global_hydra import GlobalHydra

        # a group chosen in the defaults list, or one a top-level key is composed from (format: [plain, json])
        used = {g.split("@")[0] for g in cfg.hydra.runtime.choices} | set(cfg.keys())
        groups = sorted(g for g in GlobalHydra.instance().config_loader().list_groups("") if g in used and g != "hydra")
        lines = [f"{config_name} (em {config_name}): python {config_name}.py [group=option ...] [key=value ...]", "",
                 "== Configuration groups ==", "Compose your configuration from those groups (group=option)", ""]
        lines += [f"{g}: {', '.join(group_options(g))}" for g in groups]
    lines += ["", "== Config ==", "Override anything in the config (foo.bar=value); after '#': the key's help "
              "(the schema's field metadata)", ""]
    lines += annotated_yaml(cfg, skip=("hydra",))
    lines += ["", "Hydra's own options: --hydra-help; the resolved config: --cfg job --resolve"]
    return "\n".join(lines)


def field_help(node: Any, key: str) -> str:
    """The help text of ``key`` in a config node typed by a schema dataclass (its field's ``metadata["help"]``);
    "" for an untyped node or a key without one."""
    import dataclasses

    from omegaconf import OmegaConf

    t = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(t):
        return ""
    return next((f.metadata.get("help", "") for f in dataclasses.fields(t) if f.name == key), "")


def annotated_yaml(node: Any, indent: int = 0, skip: tuple[str, ...] = ()) -> list[str]:
    """``node`` as YAML lines (values unresolved), each key followed by ``# <help>`` where its schema has one."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    lines = []
    for key in node.keys():
        if key in skip:
            continue
        child, help_ = node._get_node(key), field_help(node, str(key))
        note = f"  # {help_}" if help_ else ""
        pad = " " * indent
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing() and \
                not child._is_interpolation() and len(child):
            lines += [f"{pad}{key}:{note}", *annotated_yaml(child, indent + 2)]
            continue
        value = OmegaConf.to_container(node, resolve=False)[key] if not child._is_missing() else "???"
        text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        lines.append(f"{pad}{key}: {text}{note}")
    return lines
