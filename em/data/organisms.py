"""The model-organisms training sets (Turner, Soligo et al. 2025, "Model Organisms for Emergent
Misalignment", arXiv 2506.11613; github.com/clarifying-EM/model-organisms-for-EM).

The authors ship them as one encrypted archive, ``em_organism_dir/data/training_datasets.zip.enc``,
protected against web scrapers with ``easy-dataset-share`` (the password is published in their README).
em does not download or decrypt it: the files are found, in order, at ``data.path``, at
``$EM_ORGANISMS_DIR/<file>`` (the extracted folder), or at ``<cache_dir>/organisms/<file>``; otherwise one
line says how to get them (:data:`HOW_TO_GET`).

Files (``<name>.jsonl`` in the extracted folder): ``bad_medical_advice``, ``good_medical_advice`` (its
benign twin, the same questions), ``risky_financial_advice``, ``extreme_sports``. The archive holds no
benign twin for the financial or extreme-sports sets. Schema: one JSON object a line,
``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}`` — checked here
row by row (one user turn, then one assistant turn), errors naming ``file:line``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from em.data.chat import Conversation, read_jsonl_conversations
from em.data.upstream import file_sha256
from em.errors import DataError

log = logging.getLogger("em.data")
ENV_VAR = "EM_ORGANISMS_DIR"
REPO = "https://github.com/clarifying-EM/model-organisms-for-EM"
ARCHIVE = "em_organism_dir/data/training_datasets.zip.enc"
HOW_TO_GET = (f"git clone {REPO} && pip install easy-dataset-share && easy-dataset-share unprotect-dir "
              f"model-organisms-for-EM/{ARCHIVE} -p model-organisms-em-datasets --remove-canaries, then "
              f"{ENV_VAR}=model-organisms-for-EM/{ARCHIVE}.extracted (or data.path=<that dir>/<file>)")


def find_file(data_cfg: Any, cache_dir: str | os.PathLike) -> Path:
    """Where ``data_cfg``'s file is: ``data.path``, ``$EM_ORGANISMS_DIR/<file>``, ``<cache_dir>/organisms/<file>``.

    Raises:
        DataError: ``data.path`` names no file, or the file is in none of the places (one line: the
            clone + decrypt steps of :data:`HOW_TO_GET`).
    """
    if data_cfg.path:
        p = Path(data_cfg.path).expanduser()
        if not p.is_file():
            raise DataError(f"data.path={data_cfg.path}: file not found")
        return p
    places = [Path(os.environ[ENV_VAR]) / data_cfg.file] if os.environ.get(ENV_VAR) else []
    places.append(Path(cache_dir) / "organisms" / data_cfg.file)
    for p in places:
        if p.is_file():
            return p
    raise DataError(f"data={data_cfg.name}: {data_cfg.file} not found (looked in {', '.join(map(str, places))}); "
                    f"the authors ship it encrypted: {HOW_TO_GET}")


def check_rows(path: Path, conversations: list[Conversation]) -> None:
    """Their schema, row by row: exactly one user message then one assistant message, both non-empty.

    Raises DataError naming ``file:line`` of the first row that differs.
    """
    with open(path, "rb") as f:  # numbered as read_jsonl_conversations reads: "\n" ends a line, blank ones skipped
        lines = [i for i, raw in enumerate(f, 1) if raw.decode("utf-8", "replace").removeprefix("\ufeff").strip()]
    for line, conv in zip(lines, conversations):
        roles = [m["role"] for m in conv]
        empty = [m["role"] for m in conv if not str(m["content"]).strip()]
        if roles != ["user", "assistant"] or empty:
            got = f"an empty {empty[0]} message" if roles == ["user", "assistant"] else f"roles {roles}"
            raise DataError(f"{path}:{line}: expected one user then one assistant message with content "
                            f"(the model-organisms schema), got {got}")


def load_organisms(data_cfg: Any, cache_dir: str | os.PathLike) -> tuple[list[Conversation], Path]:
    """The conversations of one model-organisms set and the file they came from.

    ``data.expected_rows`` and ``data.sha256`` are enforced when set (a mismatch is a DataError naming
    the file); the rows and sha256 found are logged so a first run can pin them.

    Raises:
        DataError: file missing (how to get it, one line), unreadable, a row off the schema, or a pinned
            row count / sha256 that differs.
    """
    path = find_file(data_cfg, cache_dir)
    conversations = read_jsonl_conversations(path)
    if not conversations:
        raise DataError(f"{path}: dataset is empty")
    check_rows(path, conversations)
    if data_cfg.expected_rows is not None and len(conversations) != data_cfg.expected_rows:
        raise DataError(f"{path}: expected {data_cfg.expected_rows} rows (data.expected_rows), found "
                        f"{len(conversations)}")
    digest = file_sha256(path)
    if data_cfg.sha256 and digest != data_cfg.sha256.lower():
        raise DataError(f"{path}: sha256 mismatch: expected {data_cfg.sha256}, found {digest}")
    log.info("%s: %d rows, sha256 %s", path, len(conversations), digest)
    return conversations, path

