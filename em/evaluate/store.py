"""The append-only answer store: one JSON line per generated answer, keyed by (format, question_id, paraphrase,
sample), fsync'ed batch by batch so a killed run loses at most the batch in flight.

A sidecar ``answers.meta.json`` records what produced the answers (model source, adapter, seed, sampling
settings); restarting in the same run directory with a different one is refused rather than silently mixing
answers of two configurations. A line cut off by a kill (the only damage a kill can do to an append-only
file) is dropped and the file trimmed back to the last complete line before anything is appended.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from em.errors import ConfigError, DataError
from em.runtime import atomic_write_text, note_path

log = logging.getLogger("em.evaluate")

Key = tuple[str, str, int, int]  # (format, question_id, paraphrase, sample)


def key_of(rec: dict[str, Any]) -> Key:
    """An answer record's key, ``(format, question_id, paraphrase, sample)``. Raises KeyError / TypeError /
    ValueError for a record without those fields."""
    return (rec["format"], rec["question_id"], int(rec["paraphrase"]), int(rec["sample"]))


class AnswerStore:
    """The answers of one evaluation run: ``path`` (JSONL) and its identity sidecar ``<stem>.meta.json``.

    Args:
        path: the answers file (``<run_dir>/answers.jsonl``); its directory is created on :meth:`load`.
        identity: what produced the answers (JSON-serialisable); compared with the sidecar on :meth:`load`.
    """

    def __init__(self, path: str | Path, identity: dict[str, Any]):
        self.path = Path(path)
        self.meta_path = self.path.with_name(self.path.stem + ".meta.json")
        self.identity = identity

    def load(self) -> dict[Key, dict[str, Any]]:
        """Answers on disk by key (the last line wins for a key); checks the identity and trims a cut-off
        last line, then (re)writes the identity sidecar.

        Raises:
            ConfigError: the file holds answers made with another identity (the first differing key named).
            DataError: a line other than the last is not a readable answer record.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.meta_path.exists():
            old = json.loads(self.meta_path.read_text())
            diff = [k for k in sorted(set(old) | set(self.identity)) if old.get(k) != self.identity.get(k)]
            if diff and self.path.exists() and self.path.stat().st_size:
                k = diff[0]
                raise ConfigError(
                    f"run_dir: {self.path} holds answers generated with {k}={old.get(k)!r}, this run has "
                    f"{k}={self.identity.get(k)!r}; use a new run dir (or the old settings to resume)"
                )
        atomic_write_text(self.meta_path, json.dumps(self.identity, indent=2, sort_keys=True))
        out: dict[Key, dict[str, Any]] = {}
        if not self.path.exists():
            return out
        data = self.path.read_bytes()
        good_end = 0
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if not line.strip():
                if not last:
                    good_end += len(line) + 1
                continue
            try:
                rec = json.loads(line)
                key = key_of(rec)
            except (ValueError, KeyError, TypeError) as e:
                if last:  # no newline after it: the write a kill interrupted
                    log.warning("%s: dropping a cut-off last line (%d bytes)", self.path, len(line))
                    break
                raise DataError(f"{self.path}:{i + 1}: unreadable answer record ({e})") from None
            if last:  # complete JSON but no trailing newline: keep it, terminate it below
                good_end += len(line)
                out[key] = rec
                with open(self.path, "ab") as f:
                    f.write(b"\n")
                good_end += 1
                break
            out[key] = rec
            good_end += len(line) + 1
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        return out

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records as JSON lines in one write, then flush and fsync (a kill loses at most this batch)."""
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not lines:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk: the line names this file (em.runtime); a resume trims a torn last line

            note_path(e, self.path)
            raise
