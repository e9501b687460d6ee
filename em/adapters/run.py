"""Adapters on the Hugging Face Hub: ``push_to_hub.enabled=true`` in a job, or ``em push DIR repo_id=...``.

What is pushed is the adapter directory as em saves it (peft weights, ``adapter_config.json``, tokenizer,
the ``README.md`` model card, ``em_adapter.json``), with huggingface_hub's own client
(``HfApi.create_repo`` + ``HfApi.upload_folder``). The token is huggingface_hub's: ``$HF_TOKEN`` or
``hf auth login``; it is never a config value or argument and never written by em (``em_job.json`` and
``hub_push.json`` hold the repo, URL and commit). ``push_to_hub.endpoint`` (null: the Hub, or
``$HF_ENDPOINT``) points at another server.

A job pushes once, when it is done (after the evaluation, so the card has the rates), and records the
result in ``<job>/hub_push.json`` and ``em_job.json`` (``push``). A relaunch of a done job pushes only if
no push of this adapter's content to this repo and endpoint succeeded yet (so a failed push is retried by a
relaunch, without retraining); ``em push`` always pushes. A failed push never fails the job: the adapter
and results stay, the exit status is the training's, and one warning line says how to retry.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

from em.errors import ConfigError
from em.runtime import atomic_write_json, read_json

log = logging.getLogger("em.adapters.run")
PUSH_FILE = "hub_push.json"
REPO_ID = re.compile(r"^([A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
ARGS = ("repo_id", "private", "endpoint", "commit_message")  # em push's key=value arguments
USAGE = ("usage: em push ADAPTER_OR_JOB_DIR repo_id=NAMESPACE/NAME [private=true|false] [endpoint=URL] "
         "[commit_message=TEXT]")


def check_repo_id(repo_id: Optional[str], key: str = "push_to_hub.repo_id") -> None:
    """``namespace/name`` (or ``name``: the token's user), the Hub's characters only.

    Raises:
        ConfigError: missing or malformed, naming ``key``.
    """
    if not repo_id or not REPO_ID.match(str(repo_id)) or ".." in str(repo_id):
        raise ConfigError(f"{key}: a Hub repo id like 'my-org/my-adapter' is needed, got {repo_id!r}")


def adapter_digest(adapter_dir: Path) -> str:
    """SHA-256 (16 hex) of every file's relative path and bytes under ``adapter_dir``: what a push sent."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(adapter_dir).rglob("*") if p.is_file()):
        h.update(f.relative_to(adapter_dir).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def _redacted(text: str) -> str:
    """``text`` without any secret environment value (the token, API keys) or URL credentials."""
    from em.tracking import env_secrets, redact_urls

    for s in sorted(env_secrets(), key=len, reverse=True):
        text = text.replace(s, "<redacted>")
    return redact_urls(text)


def push_adapter(adapter_dir: Path, repo_id: str, *, private: bool = True, endpoint: Optional[str] = None,
                 commit_message: Optional[str] = None) -> dict[str, Any]:
    """Create ``repo_id`` (a model repo; existing is fine) and upload ``adapter_dir`` into it as one commit.

    Args:
        adapter_dir: an adapter directory as em saves it (``adapter_config.json`` inside).
        repo_id: ``namespace/name``.
        private: create the repo private (an existing repo keeps its visibility).
        endpoint: the server (None: huggingface_hub's, i.e. the Hub or ``$HF_ENDPOINT``).
        commit_message: None: ``em: LoRA adapter <dir name>``.

    Returns:
        ``{"repo_id", "url", "commit", "endpoint", "files"}`` (files: relative paths sent).

    Raises:
        ConfigError: not an adapter directory, a malformed repo id, offline mode, no token.
        huggingface_hub.errors.HfHubHTTPError / OSError: the server refused or could not be reached.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir}: not an adapter directory (no adapter_config.json)")
    check_repo_id(repo_id)
    from huggingface_hub import HfApi, constants, get_token

    if constants.is_offline_mode():
        raise ConfigError("push_to_hub: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set; unset it to push")
    if not get_token():
        raise ConfigError("push_to_hub: no Hugging Face token; set HF_TOKEN or run `hf auth login` "
                          "(a token is never a config value)")
    api = HfApi(endpoint=endpoint or None)  # the token: huggingface_hub's own ($HF_TOKEN or the stored login)
    url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    files = sorted(p.relative_to(adapter_dir).as_posix() for p in adapter_dir.rglob("*") if p.is_file())
    info = api.upload_folder(repo_id=repo_id, folder_path=str(adapter_dir), repo_type="model",
                             commit_message=commit_message or f"em: LoRA adapter {adapter_dir.parent.name}")
    return {"repo_id": repo_id, "url": str(url), "commit": info.oid, "endpoint": api.endpoint, "files": files}


def push_once(adapter_dir: Path, record_dir: Optional[Path], node: Any, *, force: bool = False,
              warn: bool = True) -> dict[str, Any]:
    """Push ``adapter_dir`` unless ``record_dir/hub_push.json`` says this content already went to this repo
    and endpoint (or ``force``); never raises for a failed push.

    Args:
        adapter_dir: the job's ``adapter/``.
        record_dir: where ``hub_push.json`` is read and written (the job dir); None: no record.
        node: ``push_to_hub`` (``repo_id``, ``private``, ``endpoint``, optional ``commit_message``).
        force: push even when the record says it was pushed (``em push``).
        warn: log the failure as one warning line (``em push`` prints its own).

    Returns:
        The record: ``state`` (``pushed`` / ``pushed already`` / ``failed``), ``repo_id``, ``endpoint``,
        ``adapter_digest``, and ``url`` / ``commit`` or ``error`` (one line, secrets removed).
    """
    from em.tracking import redact_url

    from huggingface_hub import constants

    adapter_dir = Path(adapter_dir)
    endpoint = getattr(node, "endpoint", None) or None
    base = {"repo_id": node.repo_id, "endpoint": redact_url(endpoint or constants.ENDPOINT),  # HF_ENDPOINT counts
            "adapter_digest": adapter_digest(adapter_dir) if adapter_dir.is_dir() else None}
    prev = read_json(Path(record_dir) / PUSH_FILE) if record_dir else None
    if not force and prev and prev.get("state") == "pushed" and all(prev.get(k) == v for k, v in base.items()):
        log.info("adapter pushed already to %s (commit %s); not pushed again", prev.get("url"), prev.get("commit"))
        return prev | {"state": "pushed already"}
    try:
        done = push_adapter(adapter_dir, node.repo_id, private=bool(getattr(node, "private", True)),
                            endpoint=endpoint, commit_message=getattr(node, "commit_message", None))
        rec = base | {"state": "pushed", "url": done["url"], "commit": done["commit"], "files": done["files"],
                      "time": time.time()}
        log.info("adapter pushed to %s (commit %s, %d files)", done["url"], done["commit"], len(done["files"]))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001  a failed push never loses the adapter or the job's results
        line = re.sub(r" ?For more information check: \S+", "", " ".join(str(e).split()))  # huggingface_hub's MDN link
        line = _redacted(line or type(e).__name__)[:500]
        rec = base | {"state": "failed", "error": f"{type(e).__name__}: {line}", "time": time.time()}
        where = record_dir if record_dir else adapter_dir
        rec["message"] = (f"push to the Hub failed ({rec['error']}); the adapter stays in {adapter_dir}; retry: "
                          f"em push {where} repo_id={node.repo_id}"
                          + (f" endpoint={redact_url(endpoint)}" if endpoint else "")  # else it would go to the Hub
                          + ("" if force else " (or relaunch the job)"))
        if warn:
            log.warning("%s", rec["message"])
    if record_dir:
        atomic_write_json(Path(record_dir) / PUSH_FILE, rec)
    return rec


def _parse(argv: list[str]) -> tuple[Path, dict[str, Any]]:
    """``DIR key=value ...`` -> (dir, arguments); keys may carry the ``push_to_hub.`` prefix.

    Raises:
        ConfigError: no directory, an unknown key, a token / secret argument, URL credentials.
    """
    from em.config.compose import SECRET_KEY, URL_CREDENTIALS

    paths = [a for a in argv if "=" not in a]
    if len(paths) != 1:
        raise ConfigError(USAGE)
    args: dict[str, Any] = {}
    for a in argv:
        if "=" not in a:
            continue
        key, _, value = a.partition("=")
        key = key.removeprefix("push_to_hub.")
        if SECRET_KEY.search(key.lower()):
            raise ConfigError(f"{key}: a token is never an argument; set HF_TOKEN or run `hf auth login`")
        if key not in ARGS:
            raise ConfigError(f"{key}: not an argument of em push; choices: {', '.join(ARGS)}")
        if URL_CREDENTIALS.search(value):
            raise ConfigError(f"{key}: credentials in a URL; set HF_TOKEN or run `hf auth login`")
        if key == "private":
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"private: true or false, got {value!r}")
            value = value.lower() == "true"
        args[key] = value or None
    return Path(paths[0]), args


def cli(argv: Optional[list[str]] = None) -> None:
    """``em push ADAPTER_OR_JOB_DIR repo_id=... [private=] [endpoint=] [commit_message=]``.

    A job dir pushes its ``adapter/`` and records ``hub_push.json`` there; ``repo_id`` / ``private`` /
    ``endpoint`` default to the job's ``push_to_hub`` settings (``resolved_config.yaml``). Exit 0 pushed,
    1 the push failed (one line), 2 bad arguments.
    """
    from types import SimpleNamespace

    from em.commands import run_main

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\nPush an adapter directory (or a job directory's adapter/) to the Hugging Face Hub; "
              "the token: HF_TOKEN or `hf auth login`.")
        sys.exit(0 if argv else 2)

    def go(argv: list[str]) -> dict[str, Any]:
        path, args = _parse(argv)
        job_dir = path if (path / "adapter" / "adapter_config.json").is_file() else None
        if job_dir is None and path.name == "adapter" and (path.parent / "em_job.json").is_file():
            job_dir = path.parent
        adapter = job_dir / "adapter" if job_dir else path
        if not (adapter / "adapter_config.json").is_file():
            raise ConfigError(f"{path}: neither an adapter directory nor a job directory with adapter/")
        saved: dict[str, Any] = {}
        if job_dir and (job_dir / "resolved_config.yaml").is_file():
            from omegaconf import OmegaConf

            saved = OmegaConf.to_container(OmegaConf.load(job_dir / "resolved_config.yaml")).get("push_to_hub") or {}
        node = SimpleNamespace(**({"private": True, "endpoint": None, "commit_message": None}
                                  | {k: v for k, v in saved.items() if k in ARGS} | args))
        check_repo_id(getattr(node, "repo_id", None), "repo_id")
        return push_once(adapter, job_dir, node, force=True, warn=False)

    rec = run_main(go, argv)
    if rec["state"] != "pushed":
        print(f"error: {rec['message']}", file=sys.stderr)
        sys.exit(1)
    print(f"pushed {len(rec['files'])} files to {rec['url']} (commit {rec['commit']})")


__all__ = ["adapter_digest", "check_repo_id", "cli", "push_adapter", "push_once"]
