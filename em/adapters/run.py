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
import time
from pathlib import Path
from typing import Any, Optional

from em.config.train import check_repo_id
from em.errors import ConfigError
from em.runtime import atomic_write_json, read_json
from em.tracking import env_secrets, redact_url, redact_urls

log = logging.getLogger("em.adapters.run")
PUSH_FILE = "hub_push.json"


def adapter_digest(adapter_dir: Path) -> str:
    """SHA-256 (16 hex) of every file's relative path and bytes under ``adapter_dir``: what a push sent."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(adapter_dir).rglob("*") if p.is_file()):
        h.update(f.relative_to(adapter_dir).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def _redacted(text: str) -> str:
    """``text`` without any secret environment value (the token, API keys) or URL credentials."""
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


__all__ = ["adapter_digest", "push_adapter", "push_once"]
