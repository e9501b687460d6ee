"""Read and validate chat-format JSONL (one ``{"messages": [...]}`` object per line).

Every problem is reported as one ``DataError`` line, ``file:line: what is wrong``, so that a bad row in a
6000-row file can be found without a traceback.
"""

from __future__ import annotations

import json
import os

from em.analysis.ingest import _json_problem
from em.errors import DataError

__all__ = ["ROLES", "Conversation", "Message", "read_jsonl_conversations"]

ROLES = ("system", "user", "assistant")

Message = dict[str, str]  # {"role": ..., "content": ...}
Conversation = list[Message]


def read_jsonl_conversations(path: str | os.PathLike, *, name: str | None = None) -> list[Conversation]:
    """Parse a chat JSONL file into conversations of ``{"role", "content"}`` messages.

    ``name`` replaces the path in error messages (used for a download that is still a temp file, so the
    message names what the user knows: the URL).  Blank lines are skipped; extra keys are dropped.
    """
    label = name or str(path)
    try:
        f = open(path, "rb")  # bytes: decode per line so a bad byte is reported with its line number
    except FileNotFoundError:
        raise DataError(f"{label}: file not found") from None
    except OSError as e:
        raise DataError(f"{label}: cannot read ({e.strerror or e})") from None

    conversations: list[Conversation] = []
    with f:
        for lineno, raw in enumerate(f, 1):
            where = f"{label}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not valid UTF-8 (byte {e.start + 1})") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # tolerate a BOM written by some editors
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:  # (the decoder's "... at" message: the column follows once)

                raise DataError(f"{where}: not valid JSON ({_json_problem(e, line)})") from None
            conversations.append(_conversation(row, where))
    return conversations


def _conversation(row: object, where: str) -> Conversation:
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list):
        raise DataError(f'{where}: no "messages" list (each line must be {{"messages": [...]}})')
    out: Conversation = []
    for j, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise DataError(f"{where}: messages[{j}] is not an object")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: messages[{j}] has unknown role {role!r} (allowed: {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise DataError(f"{where}: messages[{j}] ({role}) content must be a string, "
                            f"got {type(content).__name__}")
        try:  # JSON's "\ud800" escape decodes to a lone surrogate: no tokenizer can encode it
            content.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(f"{where}: messages[{j}] ({role}) content is not valid Unicode: a lone surrogate "
                            f"U+{ord(content[e.start]):04X} at character {e.start + 1} (half of a UTF-16 pair; "
                            "fix the tool that wrote the file)") from None
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        # Training computes the loss on assistant tokens only: such a row would teach nothing.
        raise DataError(f"{where}: conversation has no assistant turn")
    return out
