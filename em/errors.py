"""User-facing errors: each carries one line that names the culprit (config key, file:line)."""

from __future__ import annotations

import json


class EMError(Exception):
    """Base class for errors the entry scripts print as one line (no traceback).

    ``em.commands.run_main`` catches it around each script's main function, prints ``error: <message>`` to stderr
    and exits with status 2; anything else keeps its traceback. The message is the whole report: it names
    the culprit first.
    """


class ConfigError(EMError, ValueError):
    """A config value is invalid; the message starts with the dotted config key (``questions.ids: ...``).

    Also a ``ValueError``, so code that validates plain values can catch it without knowing em.
    """


class DataError(EMError, ValueError):
    """A dataset or question file is missing, unreadable or malformed; the message names ``file[:line]``
    (or the config key that points at it, e.g. ``questions.path=...``)."""


class ModelLoadError(EMError, RuntimeError):
    """A model or tokenizer cannot be loaded; the message says what to install or where to put it."""


class JudgeError(EMError, RuntimeError):
    """A judge cannot run at all (no API key, endpoint refuses every request); per-answer faults are not errors."""


def _json_problem(e: ValueError, text: str) -> str:
    """What is wrong with one JSONL line, placed by column only (the line is the file's; the decoder's own
    "line 1 column 17 (char 16)" would read as a second line number)."""
    if not isinstance(e, json.JSONDecodeError):
        return str(e)
    head = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Unterminated string starting at": the column follows
    if e.pos >= len(text.rstrip()):
        return f"{head} at the end of the line: the record is cut short"
    cut = ": the record is cut short" if e.msg.startswith("Unterminated string") else ""
    return f"{head} at column {e.colno}{cut}"


def require(ok: bool, key: str, msg: str) -> None:
    """Raise ConfigError(f"{key}: {msg}") unless ``ok`` (the dotted config key comes first)."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")
