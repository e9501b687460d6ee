"""Experiment tracking behind one small interface: W&B (default), CSV, or nothing.

W&B runs offline unless this machine is configured for it (WANDB_API_KEY / WANDB_MODE / a netrc
entry), so a fresh machine never blocks on a login prompt and the run directory can be synced later
with ``wandb sync``.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Optional

SECRET_MARKERS = ("key", "token", "secret", "password")


def wandb_mode(mode: str = "auto") -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def scrub(config: Any) -> Any:
    """Drop values whose key looks like a secret, so nothing sensitive reaches a tracker."""
    if isinstance(config, dict):
        return {
            k: ("<redacted>" if any(m in str(k).lower() for m in SECRET_MARKERS) and v else scrub(v))
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [scrub(v) for v in config]
    return config


def flatten(config: dict, prefix: str = "") -> dict:
    """{'model': {'name': x}} -> {'model.name': x}: runs line up as columns in the W&B table."""
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
    group: Optional[str] = None,
    tags: Optional[list[str]] = None,
    job_type: str = "train",
    name: Optional[str] = None,
    mode: str = "auto",
    **kwargs: Any,
):
    """A Lightning WandbLogger (Hydra `_target_` of conf/logger/wandb.yaml)."""
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(mode)
    if save_dir:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        save_dir=save_dir or ".",
        group=group,
        tags=list(tags or []),
        job_type=job_type,
        name=name,
        mode=mode,
        **kwargs,
    )


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
):
    """A plain wandb run for stages without a Lightning Trainer (evaluation, analysis)."""
    import wandb

    mode = wandb_mode(mode)
    if mode == "disabled":
        return None
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=project,
        dir=run_dir,
        job_type=job_type,
        group=group,
        tags=list(tags or []),
        name=name,
        mode=mode,
        config=flatten(scrub(config or {})),
        reinit="finish_previous",
    )


def read_offline_run(run_file: str | Path) -> dict[str, Any]:
    """Config, history rows and summary of an offline ``run-*.wandb`` file.

    The Python SDK no longer ships a reader for its own transaction log (wandb-core writes it), yet
    tests and sweep checks need to see what a run recorded without network: the file is a LevelDB-style
    log (32 KiB blocks of crc/length/type-framed chunks) of protobuf ``Record`` messages.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{run_file}: not a W&B transaction log")
    block, pos, pending = 32768, 7, b""
    records: list[bytes] = []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}}
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
