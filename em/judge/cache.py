"""On-disk judge cache: (judge identity, rendered prompt) -> judgment, in one SQLite file.

Keyed by the judge's endpoint + model (+ anything else that changes its answer) and the exact prompt text,
so re-running, resuming, or adding a format / question never re-asks a prompt that was judged. Only final
judgments are stored (a score, a label, or a deterministic "no score" such as < 0.25 mass); failures after
retries are not, so the next run asks again. SQLite gives atomic writes that survive a kill and lets
several evaluation processes share one cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Iterable, Optional

from em.judge.scoring import Judgment, JudgeRequest, unsound

log = logging.getLogger("em.judge")


def cache_key(judge_id: str, prompt: str) -> str:
    """The SQLite key of (judge identity, text): a 64-character sha256 hex digest of both, JSON-encoded."""
    return hashlib.sha256(json.dumps([judge_id, prompt]).encode()).hexdigest()


def request_key(judge_id: str, req: JudgeRequest) -> str:
    """The cache key of one request to one judge: identity + rendered prompt + kind (``0_100`` / ``label``).

    Also the ``custom_id`` of the request's Batch API line, so a batch's results land in the same cache entries
    as the synchronous path's."""
    return cache_key(judge_id, req.prompt + "\x00" + req.kind)


class JudgeCache:
    """The judgments of every judge, in one SQLite file (or nothing at all when ``path`` is None).

    Args:
        path: the SQLite file (its directory is created); None: a cache that holds nothing and stores nothing.
    """

    def __init__(self, path: Optional[str | Path]):
        self.path = Path(path).expanduser() if path else None
        self._db: Optional[sqlite3.Connection] = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable on commit in WAL mode, much faster
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, judge TEXT, value TEXT)"
            )

    def get_many(self, keys: Iterable[str]) -> dict[str, Judgment]:
        """key -> judgment for the keys the cache holds (missing keys are left out).

        Every entry is validated again as it is read (:func:`em.judge.scoring.unsound`): one that cannot stand
        (a NaN score or an unsound logprob an older version cached) is left out, so it is asked again and
        the fresh judgment replaces it; a warning counts them."""
        if self._db is None:
            return {}
        keys = list(keys)
        out: dict[str, Judgment] = {}
        bad: list[str] = []
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[i : i + 500]
            rows = self._db.execute(
                f"SELECT key, value FROM judgments WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            for k, v in rows:
                try:
                    j = Judgment.from_dict(json.loads(v))
                    problem = unsound(j) or (None if j.final else "not final")
                except (ValueError, TypeError) as e:
                    problem = f"unreadable entry ({type(e).__name__})"
                if problem:
                    bad.append(problem)
                    continue
                out[k] = j
        if bad:
            log.warning("judge cache %s: %d unsound entries ignored and asked again (first: %s)",
                        self.path, len(bad), bad[0])
        return out

    def put(self, key: str, judge_id: str, judgment: Judgment) -> None:
        """Store a final judgment under ``key`` (committed at once); failures (``final=False``) are not stored."""
        if self._db is None or not judgment.final:
            return
        self._db.execute("INSERT OR REPLACE INTO judgments VALUES (?, ?, ?)",
                         (key, judge_id, json.dumps(judgment.to_dict())))

    def __len__(self) -> int:
        """The number of stored judgments."""
        if self._db is None:
            return 0
        return self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        """Close the database (idempotent)."""
        if self._db is not None:
            self._db.close()
            self._db = None
