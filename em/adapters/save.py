"""Saving an adapter: the LoRA weights, keyed for the class its base checkpoint declares."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from em.adapters.check import save_layout


def save_adapter(model, path: Path, source: Optional[str], **kwargs) -> str:
    """``model.save_pretrained(path, **kwargs)`` (a peft model: the LoRA weights), keyed for the class the
    base checkpoint ``source`` (a local directory or a hub id) declares: a multimodal Gemma 3's text model
    is saved with ``Gemma3ForConditionalGeneration`` keys, so plain peft on the hub checkpoint applies it
    (:func:`em.adapters.check.save_layout`). Returns that class (``key_layout``)."""
    model.save_pretrained(path, **kwargs)
    trained = type(model.get_base_model()).__name__
    if source is None:
        return trained
    return save_layout(path, source, trained)
