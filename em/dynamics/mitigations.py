"""Data-side mitigations: inoculation prompting (``data.inoculation_prompt``) and a data mix (``data.mix``).

* Inoculation prompting (Anthropic's inoculation-prompting work; Tan et al. 2025): a system prompt that
  explains the narrow behaviour ("You write insecure code on purpose, for a security class") added to
  every training example, and absent at evaluation -- unless ``data.inoculation_eval``, so "with vs
  without at evaluation" is one sweep key.
* Interleaving a share of safe data (e.g. secure code) into the narrow set, seeded.

Both change the conversations before tokenisation (:func:`em.data.module.prepare_data`); both are keys of
``data``, so they are in the job identity, the W&B config and (:func:`active`) the adapter card.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any, Optional

from em.data.chat import Conversation
from em.data.run import load_conversations, read_jsonl_conversations
from em.errors import DataError

log = logging.getLogger("em.dynamics")


def with_system_prompt(conv: Conversation, prompt: str) -> Conversation:
    """A copy of ``conv`` with ``prompt`` as its system prompt: put before an existing system prompt
    (blank line between), else inserted as the first message. Pure; the input is not modified."""
    msgs = [dict(m) for m in conv]
    if msgs and msgs[0].get("role") == "system":
        msgs[0]["content"] = f"{prompt}\n\n{msgs[0]['content']}"
    else:
        msgs.insert(0, {"role": "system", "content": prompt})
    return msgs


def prefix_system(prompt: Any, text: str) -> Any:
    """An evaluation :class:`~em.evaluate.questions.Prompt` with ``text`` before its system prompt."""
    system = f"{text}\n\n{prompt.system}" if prompt.system else text
    return dataclasses.replace(prompt, system=system)


def mix_in(main: list[Conversation], other: list[Conversation], share: float, seed: int
           ) -> tuple[list[Conversation], list[int]]:
    """Interleave rows of ``other`` into ``main`` so that they are ``share`` of the result.

    ``k = round(share * len(main) / (1 - share))`` rows of ``other`` are drawn without replacement
    (``random.Random(seed)``) and put at seeded positions; ``main`` keeps its order. Returns ``(mixed,
    positions of the other rows in mixed)``.

    Raises:
        ValueError: ``share`` outside [0, 1), or ``other`` has fewer than ``k`` rows.
    """
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    k = round(share * len(main) / (1 - share))
    if k > len(other):
        raise ValueError(f"the mix needs {k} rows of the other dataset, it has {len(other)}")
    rng = random.Random(seed)
    picked = [other[i] for i in rng.sample(range(len(other)), k)]
    n = len(main) + k
    pos = sorted(rng.sample(range(n), k))
    pos_set = set(pos)
    it_main, it_other = iter(main), iter(picked)
    mixed = [next(it_other) if i in pos_set else next(it_main) for i in range(n)]
    return mixed, pos


def apply_data_mitigations(data_cfg: Any, conversations: list[Conversation], cache_dir: Optional[str],
                           progress: bool = True) -> list[Conversation]:
    """``data.mix`` then ``data.inoculation_prompt`` applied to the loaded ``conversations`` (the mixed-in
    rows get the inoculation prompt too: every training example carries it).

    Raises:
        ConfigError / DataError: the other dataset cannot be loaded; DataError: it is too small for the share.
    """
    mix = data_cfg.mix
    if mix is not None and mix.share > 0:
        if mix.path:  # a local chat JSONL file

            other = read_jsonl_conversations(mix.path)
        else:  # the main data node with another upstream file or synthetic variant
            other_cfg = dataclasses.replace(
                data_cfg, name=f"{data_cfg.name}-mix", file=mix.file or data_cfg.file,
                path=None if mix.file else data_cfg.path, variant=mix.variant or data_cfg.variant,
                sha256=None if mix.file else data_cfg.sha256, url=None if mix.file else data_cfg.url,
                expected_rows=None if mix.file else data_cfg.expected_rows, limit=None, educational_fraction=0.0,
                inoculation_prompt=None, mix=dataclasses.replace(mix, share=0.0), seed=mix.seed)
            other = load_conversations(other_cfg, cache_dir, progress=progress)
        try:
            conversations, pos = mix_in(conversations, other, mix.share, mix.seed)
        except ValueError as e:
            raise DataError(f"data.mix: {e}") from None
        log.info("data %s: mixed in %d rows (share %.3g, seed %d)", data_cfg.name, len(pos), mix.share, mix.seed)
    if data_cfg.inoculation_prompt:
        conversations = [with_system_prompt(c, data_cfg.inoculation_prompt) for c in conversations]
    return conversations


def active(tc: Any) -> dict[str, Any]:
    """The mitigations a training config turns on (adapter card, W&B summary): ``{name: setting}``."""
    out: dict[str, Any] = {}
    d, t = tc.data, tc.trainer
    if getattr(d, "inoculation_prompt", None):
        out["inoculation_prompt"] = d.inoculation_prompt
    if getattr(d, "mix", None) is not None and d.mix.share > 0:
        out["data_mix"] = {"share": d.mix.share, "file": d.mix.file, "path": d.mix.path, "variant": d.mix.variant,
                           "seed": d.mix.seed}
    if getattr(t, "kl", None) is not None and t.kl.weight > 0:
        side = t.kl.side.get("name") if isinstance(t.kl.side, dict) else getattr(t.kl.side, "name", None)
        out["kl"] = {"weight": t.kl.weight, "data": t.kl.data or side}
    if getattr(t, "ablate_direction", None):
        out["ablate_direction"] = {"file": t.ablate_direction, "layers": t.ablate_layers}
    return out
