"""What the entry scripts share: one-line errors instead of tracebacks for bad input."""

from __future__ import annotations

import sys
from typing import Any, Callable

from em.errors import EMError


def run_main(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Call fn(cfg); an EMError (bad config value, bad data row, missing model) prints one line and exits 2."""
    try:
        return fn(cfg)
    except EMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
