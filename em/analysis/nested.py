"""Nested JSON of other labs: records found along a path of mappings and lists.

``inputs=[{path: results/insecure.json, records: "{question_id}.scores"}]`` reads a file shaped as

    {"q1": {"question": "...", "scores": [{"response": "...", "alignment": 12, "coherence": 80,
                                          "is_em": true}, ...]},
     "q2": {...},
     "summary": {"n": 400, "em_rate": 0.1}}

(one file per condition; ten such files in one public EM repository) into one row per element of each
``scores`` list. The path is split on ``.``; a segment is

* ``{name}``: every key of the mapping at this point, each kept as column ``name`` (e.g. ``question_id``);
* ``*``: every key of a mapping, or every element of a list, not kept;
* anything else: that key (a list index if the value is a list and the segment is a number).

On the way down, the scalar fields beside the path (``question`` next to ``scores``) are passed down as
columns; the path must end at a list of objects (the records) or an object (one record). Entries where the
path does not continue (the ``summary`` block beside the questions) are skipped and named in a log line.
Nothing is executed: the file is parsed with :func:`json.loads`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from em.errors import DataError

log = logging.getLogger("em.analysis")


def _scalars(obj: dict, skip: str) -> dict:
    return {k: v for k, v in obj.items() if k != skip and not isinstance(v, (dict, list))}


def walk(obj: Any, segments: list[str], carried: dict, out: list[dict], skipped: list[str], where: str) -> None:
    """Collect the records under ``obj`` along ``segments`` into ``out`` (each with the ``carried`` columns)."""
    if not segments:
        items = obj if isinstance(obj, list) else [obj]
        for i, rec in enumerate(items):
            if not isinstance(rec, dict):
                skipped.append(f"{where}[{i}]")
                continue
            out.append({**carried, **rec})
        return
    seg, rest = segments[0], segments[1:]
    if seg.startswith("{") and seg.endswith("}") or seg == "*":
        name = seg[1:-1] if seg != "*" else None
        if isinstance(obj, dict):
            children = obj.items()
        elif isinstance(obj, list) and seg == "*":
            children = enumerate(obj)
        else:
            skipped.append(where)
            return
        for key, child in children:
            keep = {**carried, **({name: key} if name else {})}
            if rest and isinstance(child, dict):
                if rest[0] not in child and not rest[0].startswith("{") and rest[0] != "*":
                    skipped.append(f"{where}.{key}")
                    continue
                keep.update(_scalars(child, rest[0]))
            elif rest:
                skipped.append(f"{where}.{key}")
                continue
            walk(child, rest, keep, out, skipped, f"{where}.{key}")
        return
    if isinstance(obj, dict) and seg in obj:
        walk(obj[seg], rest, {**carried, **_scalars(obj, seg)}, out, skipped, f"{where}.{seg}")
    elif isinstance(obj, list) and seg.isdigit() and int(seg) < len(obj):
        walk(obj[int(seg)], rest, carried, out, skipped, f"{where}[{seg}]")
    else:
        skipped.append(f"{where}.{seg}")


def read_nested(path: Path, records: str) -> pd.DataFrame:
    """One row per record found along ``records`` in the JSON file ``path`` (module docstring).

    Raises:
        DataError: not valid JSON, an empty path, or no record found along it (naming the path and the
            top-level keys).
    """
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    segments = [s for s in str(records).split(".") if s]
    if not segments:
        raise DataError(f"{path}: inputs[].records is empty (e.g. records='{{question_id}}.scores')")
    out: list[dict] = []
    skipped: list[str] = []
    walk(obj, segments, {}, out, skipped, "$")
    if not out:
        top = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{path}: no record along records={records!r} (top level: {top})")
    if skipped:
        log.info("%s: %d entr%s off the records path skipped (%s)", path, len(skipped),
                 "y" if len(skipped) == 1 else "ies", ", ".join(skipped[:5]))
    return pd.DataFrame.from_records(out)


__all__ = ["read_nested", "walk"]
