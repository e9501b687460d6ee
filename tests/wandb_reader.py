"""Read an offline W&B run file back, so tests can check what a run recorded without network.

Test-only: nothing in ``em/`` reads its own W&B runs back.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK_BYTES = 32768  # LevelDB log block size
HEADER_BYTES = 7  # per chunk: crc32 (4) + length (2, little-endian) + type (1)


def read_offline_run(run_file: str | Path, wait_s: float = 60.0) -> dict[str, Any]:
    """Config, history rows and summary of an offline ``run-*.wandb`` file.

    The wandb Python SDK does not ship a reader for the transaction log that wandb-core writes, so this
    one follows the format: a 7-byte ``:W&B`` file header, then a LevelDB-style log (32 KiB blocks of
    chunks framed by crc32 / length / type, type 1 full, 2 first, 3 middle, 4 last; a block tail under
    7 bytes is padding) whose records are protobuf ``wandb.proto.wandb_internal_pb2.Record`` messages.
    Checksums are not verified.

    Args:
        run_file: path of a ``offline-run-*/run-*.wandb`` file.
        wait_s: how long to wait for the run's exit record (a run still open, or not yet flushed, is read
            as far as it goes after that).

    Returns:
        ``{"config": {key: value}, "history": [{key: value}, ...], "summary": {key: value}, "artifacts":
        [{"name", "type", "aliases", "files"}, ...]}`` (artifacts the run logged), values
        JSON-decoded; nested keys are joined with ``/`` (``eval/plain/misaligned_rate``). Later config
        and summary updates overwrite earlier ones; history keeps one dict per logged step, in order.

    Raises:
        ValueError: the file does not start with the ``:W&B`` magic.
        OSError: the file cannot be read.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    # wandb.finish() can return before wandb-core has flushed the offline log (seen: a 7-byte file, the
    # records arriving a second later): wait for the run's exit record, which wandb-core writes last.
    deadline = time.monotonic() + wait_s
    while True:
        data = Path(run_file).read_bytes()
        if data[:4] != b":W&B":
            raise ValueError(f"{run_file}: not a W&B transaction log")
        records = _records(data)
        if time.monotonic() > deadline or any(_kind(pb, r) == "exit" for r in records[-3:]):
            break
        time.sleep(0.2)
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "artifacts": []}
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind in ("config", "run"):
            # wandb.init's config travels in the run record; later updates in config records (wandb-core may
            # fold an early update into the run record when the backend is slow to start)
            for item in (rec.config if kind == "config" else rec.run.config).update:
                out["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "artifact":
            a = rec.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                                     "files": sorted(e.path for e in a.manifest.contents)})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def _kind(pb, raw: bytes) -> str:
    rec = pb.Record()
    rec.ParseFromString(raw)
    return rec.WhichOneof("record_type") or ""


def _records(data: bytes) -> list[bytes]:
    """The raw protobuf records of a transaction log's bytes (a torn last chunk is left out)."""
    pos, pending = HEADER_BYTES, b""
    records: list[bytes] = []
    while pos + HEADER_BYTES <= len(data):
        left = BLOCK_BYTES - pos % BLOCK_BYTES
        if left < HEADER_BYTES:  # block trailer padding
            pos += left
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk = data[pos + HEADER_BYTES : pos + HEADER_BYTES + length]
        pos += HEADER_BYTES + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records
