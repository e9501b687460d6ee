"""User-facing errors: each carries one line that names the culprit (config key, file:line)."""


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
