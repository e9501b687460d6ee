"""User-facing errors: each carries one line that names the culprit (config key, file:line)."""


class EMError(Exception):
    """Base class for errors the entry scripts print as one line (no traceback)."""


class ConfigError(EMError, ValueError):
    """A config value is invalid; the message starts with the dotted config key."""


class DataError(EMError, ValueError):
    """A dataset is missing, unreadable or malformed; the message names file[:line]."""


class ModelLoadError(EMError, RuntimeError):
    """A model or tokenizer cannot be loaded; the message says what to install or where to put it."""


class JudgeError(EMError, RuntimeError):
    """A judge cannot run at all (no API key, endpoint refuses every request); per-answer faults are not errors."""
