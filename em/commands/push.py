"""``em push ADAPTER_OR_JOB_DIR repo_id=...``: push a trained adapter (or a job's ``adapter/``) to the Hub.

The command line: arguments checked here (one line, exit 2), the push itself in :mod:`em.adapters.run`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from omegaconf import OmegaConf

from em.adapters.run import push_once
from em.commands import run_main
from em.config.compose import SECRET_KEY, URL_CREDENTIALS
from em.config.train import check_repo_id
from em.errors import ConfigError

ARGS = ("repo_id", "private", "endpoint", "commit_message")  # em push's key=value arguments


USAGE = ("usage: em push ADAPTER_OR_JOB_DIR repo_id=NAMESPACE/NAME [private=true|false] [endpoint=URL] "
         "[commit_message=TEXT]")


def _parse(argv: list[str]) -> tuple[Path, dict[str, Any]]:
    """``DIR key=value ...`` -> (dir, arguments); keys may carry the ``push_to_hub.`` prefix.

    Raises:
        ConfigError: no directory, an unknown key, a token / secret argument, URL credentials.
    """
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
