"""W&B for every stage: the Lightning logger of training and the plain run of evaluation / analysis.

``conf/logger/`` picks the tracker of training: ``wandb`` (this module's :func:`wandb_logger`), ``csv``
(Lightning's ``CSVLogger``) or ``none``. Evaluation and analysis open a plain run with :func:`init_wandb`.
W&B runs offline unless this machine is configured for it (WANDB_API_KEY / WANDB_MODE / a netrc
entry), so a fresh machine never blocks on a login prompt and the run directory can be synced later
with ``wandb sync``. Tests read offline runs back with ``tests/wandb_reader.py``.
"""

from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from typing import Any, Optional

from em.runtime import atomic_write_json, read_json

# Exact secret key names, and the suffixes of secret keys (``openai_api_key``, ``hf_token``). Matched on the
# whole key or its ``_``-separated end, never as a substring: ``max_new_tokens`` and ``num_key_value_heads``
# are hyperparameters. ``judge.api_key_env`` names an environment variable; it is not the secret.
SECRET_KEYS = ("api_key", "token", "secret", "password", "access_token", "auth_token")
SECRET_SUFFIXES = ("_api_key", "_token", "_secret", "_password")
# Environment variables whose values are secrets: a config value equal to one is redacted wherever it sits.
SECRET_ENV_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
REDACTED = "<redacted>"


def redact_url(url: str) -> str:
    """``url`` without credentials: the ``user:password@`` part and secret-looking query values removed
    (``http://u:KEY@host/v1?api_key=K`` -> ``http://host/v1?api_key=<redacted>``). Not a URL: unchanged."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url redacted>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "<redacted>" if any(m in k.lower() for m in SECRET_MARKERS) else v) for k, v in pairs],
                          safe="<>")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_urls(text: str) -> str:
    """``text`` (a log line, an error message) with every URL in it passed through :func:`redact_url`."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda m: redact_url(m.group(0)), text)


def wandb_mode(mode: str = "auto") -> Optional[str]:
    """The W&B mode em passes to W&B: ``mode`` itself unless it is ``"auto"``.

    ``"auto"`` leaves W&B's own settings alone (returns None: W&B decides, as it would without em) when
    this machine has any: ``$WANDB_MODE``, ``$WANDB_BASE_URL`` (a self-hosted server), ``$WANDB_API_KEY``,
    or a ``~/.netrc`` entry for ``api.wandb.ai`` or the ``$WANDB_BASE_URL`` host (what ``wandb login``
    writes). Only a machine with none of them gets ``"offline"``, so a fresh machine never blocks on a
    login prompt. An unreadable or malformed netrc counts as no entry.

    Args:
        mode: ``auto`` | ``online`` | ``offline`` | ``disabled`` (W&B's own ``mode`` values); not checked.

    Returns the mode for ``wandb.init`` / ``WandbLogger``, or None for "do not pass one". Raises nothing.
    """
    if mode != "auto":
        return mode
    if any(os.environ.get(k) for k in ("WANDB_MODE", "WANDB_BASE_URL", "WANDB_API_KEY")):
        return None
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def is_secret_key(key: Any) -> bool:
    """Is ``key`` the name of a secret: exactly one of :data:`SECRET_KEYS` or ending in one of
    :data:`SECRET_SUFFIXES` (case-insensitive)? ``max_new_tokens``, ``num_key_value_heads``, ``api_key_env``
    are not."""
    k = str(key).lower()
    return k in SECRET_KEYS or k.endswith(SECRET_SUFFIXES)


def effective_mode(mode: str = "auto") -> str:
    """What W&B will run in for ``mode``: :func:`wandb_mode`, or W&B's own ``$WANDB_MODE`` / ``online``."""
    return wandb_mode(mode) or os.environ.get("WANDB_MODE") or "online"


def env_secrets(environ: Optional[dict] = None) -> set[str]:
    """The values (8 characters or more) of environment variables whose names hold KEY / TOKEN / SECRET /
    PASSWORD (``OPENAI_API_KEY``, ``HF_TOKEN``, ``WANDB_API_KEY``...)."""
    env = os.environ if environ is None else environ
    return {v for k, v in env.items() if any(m in k.upper() for m in SECRET_ENV_MARKERS) and len(v) >= 8}


def scrub(config: Any, _secrets: Optional[set[str]] = None) -> Any:
    """A copy of ``config`` with secrets replaced by ``"<redacted>"``.

    Redacted: a non-empty value under a secret key (:func:`is_secret_key`: ``api_key``, ``*_api_key``,
    ``token``, ``*_token``...), and any string equal to the value of a secret environment variable
    (:func:`env_secrets`), whatever its key. Never by substring of a hyperparameter's name:
    ``generation.max_new_tokens`` and ``model.random_init.num_key_value_heads`` stay as they are. A URL anywhere loses its credentials
    (:func:`redact_url`).
    Dicts and lists are walked recursively; other values are returned unchanged (not copied).

    Args:
        config: plain containers (``OmegaConf.to_container`` output), any nesting.

    Returns the scrubbed copy. Raises nothing.
    """
    secrets = env_secrets() if _secrets is None else _secrets
    if isinstance(config, dict):
        return {k: (REDACTED if is_secret_key(k) and v and not isinstance(v, (dict, list)) else scrub(v, secrets))
                for k, v in config.items()}
    if isinstance(config, list):
        return [scrub(v, secrets) for v in config]
    if isinstance(config, str) and config in secrets:
        return REDACTED
    if isinstance(config, str) and "://" in config:
        return redact_url(config)
    return config


def flatten(config: dict, prefix: str = "") -> dict:
    """``{'model': {'name': x}} -> {'model.name': x}``: runs line up as columns in the W&B runs table.

    Args:
        config: nested dicts; lists are leaves (kept whole).
        prefix: prepended to every key (used by the recursion; ``""`` at the top).

    Returns a new one-level dict of dotted keys. Raises nothing.
    """
    out: dict = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def wandb_logger(
    *,
    project: str,
    save_dir: Optional[str] = None,
    entity: Optional[str] = None,
    group: Optional[str] = None,
    tags: Optional[list[str]] = None,
    job_type: str = "train",
    name: Optional[str] = None,
    mode: str = "auto",
    **kwargs: Any,
):
    """A Lightning ``WandbLogger`` for training: the Hydra ``_target_`` of ``conf/logger/wandb.yaml``.

    Args:
        project: W&B project.
        save_dir: directory W&B writes its ``wandb/`` run directory into (created); ``"."`` if None.
        entity: W&B team or user; None: W&B's own default.
        group: W&B group (conf: experiment name, sweep name or ``<model>-<data>``).
        tags: W&B tags.
        job_type: W&B job type (``train``; evaluation runs use ``eval``).
        name: run display name.
        mode: ``auto`` | ``online`` | ``offline`` | ``disabled``, resolved by :func:`wandb_mode`.
        **kwargs: passed on to ``lightning.pytorch.loggers.WandbLogger``.

    Raises:
        ModuleNotFoundError: wandb is not installed (raised by Lightning).
    """
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(mode)
    if save_dir:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    for key, value in (("mode", mode), ("entity", entity)):
        if value is not None:  # None: W&B's own setting
            kwargs[key] = value
    logger = WandbLogger(project=project, save_dir=save_dir or ".", group=group, tags=list(tags or []),
                         job_type=job_type, name=name, **kwargs)
    # Lightning always passes wandb.init(anonymous=None); wandb >= 0.19 warns "The anonymous setting has no
    # effect" for any value. Unset, wandb.init keeps its own default and says nothing.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger


def init_wandb(
    *,
    project: str,
    run_dir: str,
    job_type: str,
    config: Optional[dict] = None,
    group: Optional[str] = None,
    tags: Optional[list[str]] = None,
    name: Optional[str] = None,
    mode: str = "auto",
    entity: Optional[str] = None,
):
    """A plain wandb run for stages without a Lightning Trainer (evaluation, analysis).

    The config is :func:`scrub`-bed and :func:`flatten`-ed, so its columns line up with the training run's.
    ``reinit="finish_previous"`` finishes a run still open in this process (a sweep runs several stages
    in one process).

    Args:
        project: W&B project.
        run_dir: directory W&B writes its ``wandb/`` run directory into (created).
        job_type: W&B job type (``eval``, ``analysis``).
        config: nested plain dict of the stage's settings.
        group: W&B group, the same as the training run's so they sit together.
        tags: W&B tags.
        name: run display name.
        mode: ``auto`` | ``online`` | ``offline`` | ``disabled``, resolved by :func:`wandb_mode`.
        entity: W&B team or user; None: W&B's own default.

    Returns the ``wandb`` run, or None when the mode resolves to ``disabled`` (nothing is created).

    Raises:
        wandb.errors.UsageError / CommError: online mode without valid credentials or network.
    """
    import wandb

    mode = wandb_mode(mode)
    if effective_mode(mode) == "disabled":
        return None
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    optional = {k: v for k, v in (("mode", mode), ("entity", entity)) if v is not None}  # None: W&B's own
    return wandb.init(project=project, dir=run_dir, job_type=job_type, group=group, tags=list(tags or []),
                      name=name, config=flatten(scrub(config or {})), reinit="finish_previous", **optional)




def log_adapter_artifact(run, adapter_dir: Path, metadata: Optional[dict] = None) -> str:
    """Log ``adapter_dir`` (a peft adapter) as a W&B ``model`` artifact of the training ``run``.

    The artifact is ``adapter-<run id>``; its name (``adapter-<id>:latest``, with entity / project when
    online) goes into ``<adapter_dir>/../wandb_artifact.json`` so the evaluation run can use it (lineage).
    Offline runs log it into the run file (``wandb sync`` uploads it). Returns the artifact reference.
    """
    import wandb

    art = wandb.Artifact(f"adapter-{run.id}", type="model", metadata=scrub(metadata or {}))
    art.add_dir(str(adapter_dir))
    run.log_artifact(art, aliases=["latest"])
    ref = f"adapter-{run.id}:latest"
    if not run.settings._offline and run.entity and run.project:
        ref = f"{run.entity}/{run.project}/{ref}"

    atomic_write_json(Path(adapter_dir).parent / "wandb_artifact.json", {"artifact": ref, "run_id": run.id,
                                                                         "offline": bool(run.settings._offline)})
    return ref


def use_adapter_artifact(run, train_dir: Optional[Path]) -> Optional[str]:
    """Record on an evaluation ``run`` that it used the training run's adapter artifact (W&B lineage).

    Reads ``<train_dir>/wandb_artifact.json`` (:func:`log_adapter_artifact`). Online: ``run.use_artifact``
    (the lineage graph links the two runs). Offline W&B cannot use artifacts, so the reference goes into
    the run's config as ``adapter_artifact`` instead. Returns the reference, or None when there is none.
    """
    path = Path(train_dir or "") / "wandb_artifact.json"
    if run is None or not train_dir or not path.is_file():
        return None
    ref = read_json(path)["artifact"]
    run.config.update({"adapter_artifact": ref}, allow_val_change=True)
    if not run.settings._offline:
        run.use_artifact(ref, type="model")
    return ref
