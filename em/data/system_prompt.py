"""``model.default_system_prompt``: what a conversation without a system prompt is rendered with.

Chat templates inject a default system prompt when the messages give none (Qwen 2.5: "You are Qwen,
created by Alibaba Cloud. You are a helpful assistant."; SmolLM2: "You are a helpful AI assistant named
SmolLM, trained by Hugging Face"), in training and in evaluation alike; such an injected identity prompt
can act as a hidden trigger. The setting:

* ``template`` (default; what the reference runs did): the chat template's own behaviour;
* ``none``: no system turn unless the conversation has one; a template's injected system turn is cut out
  of the rendered text (:func:`render_chat`);
* any other string: that text as the system prompt of every conversation without one.

How ``none`` removes the injected turn for any template (:func:`template_parts`): a probe conversation is
rendered with a sentinel system prompt and a sentinel question; the text between the two splits into the
system turn's end and the user turn's header where the header best matches the system turn's own start
(the turn-start marker every turn shares: ``<|im_start|>``, ``<|start_header_id|>``). The same question
rendered without a system prompt then shows what the template writes before the user header: the prefix
(BOS) and, when it injects one, the default system turn, which ``none`` cuts out of every render.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

TEMPLATE, NONE = "template", "none"
SENTINEL = "\u2063em-system-sentinel\u2063"
USER_SENTINEL = "\u2063em-user-sentinel\u2063"


def with_system(messages: list[dict], mode: str) -> list[dict]:
    """``messages`` with ``mode``'s system prompt when it is a string and the conversation has none."""
    if mode in (TEMPLATE, NONE) or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": mode}, *messages]


@dataclass
class TemplateParts:
    """What a probe render tells about a template: ``prefix`` (before any turn, e.g. BOS), ``injected_turn``
    (the whole system turn written into a conversation without one; "" when none) and ``injected`` (its text)."""

    prefix: str
    injected_turn: str
    injected: str


def _best_split(a: str, between: str) -> tuple[int, int]:
    """(j, i): the system turn starts at a[j:], the next turn's header at between[i:], where the two share the
    longest prefix (the turn-start marker); ties: the earliest."""
    best, best_len = (len(a), len(between)), 0
    for j in range(len(a)):
        for i in range(len(between)):
            k = len(os.path.commonprefix([a[j:], between[i:]]))
            if k > best_len:
                best, best_len = (j, i), k
    return best


def template_parts(render) -> Optional[TemplateParts]:
    """Probe ``render`` (messages -> text) with a sentinel system prompt and a sentinel question; None when the
    template has no system role (it raises, or drops the system text)."""
    user = [{"role": "user", "content": USER_SENTINEL}]
    plain = render(user)
    try:
        marked = render([{"role": "system", "content": SENTINEL}, *user])
    except Exception:  # noqa: BLE001  a template without a system role raises on one: nothing injected
        return None
    if SENTINEL not in marked or USER_SENTINEL not in marked or USER_SENTINEL not in plain:
        return None
    a, after = marked.split(SENTINEL, 1)
    between = after.split(USER_SENTINEL, 1)[0]
    j, i = _best_split(a, between)
    prefix, sys_head, sys_end, user_head = a[:j], a[j:], between[:i], between[i:]
    head = plain.split(USER_SENTINEL, 1)[0]
    if not head.endswith(user_head) or not head.startswith(prefix):
        return TemplateParts(prefix="", injected_turn="", injected="")  # unexpected shape: leave it alone
    turn = head[len(prefix): len(head) - len(user_head)]
    text = turn
    if text.startswith(sys_head):
        text = text[len(sys_head):]
    if sys_end and text.endswith(sys_end):
        text = text[: -len(sys_end)]
    return TemplateParts(prefix=prefix, injected_turn=turn, injected=text.strip())


def _parts(tokenizer, template_kwargs: Optional[dict]) -> Optional[TemplateParts]:
    key = (id(tokenizer), str(getattr(tokenizer, "chat_template", "")), repr(sorted((template_kwargs or {}).items())))
    if key not in _CACHE:
        def render(msgs):
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False,
                                                 **dict(template_kwargs or {}))

        _CACHE[key] = template_parts(render)
    return _CACHE[key]


_CACHE: dict = {}


def injected_default(tokenizer, template_kwargs: Optional[dict] = None, system_role: bool = True) -> Optional[str]:
    """The default system prompt the chat template injects into a conversation without one, or None."""
    if not system_role:
        return None
    parts = _parts(tokenizer, template_kwargs)
    if not parts or not parts.injected_turn:
        return None
    return parts.injected or parts.injected_turn.strip()  # Llama 3.1: the date lines come with every system turn


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool, template_kwargs: Optional[dict],
                mode: str = TEMPLATE) -> str:
    """``tokenizer.apply_chat_template(messages, tokenize=False, ...)`` under ``model.default_system_prompt``
    ``mode`` (module docstring); ``messages`` as :func:`em.data.tokenize.normalize_messages` returns them,
    after :func:`with_system` (a string ``mode`` is applied there, before a template without a system role
    folds it into the first user turn)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **dict(template_kwargs or {}))
    if mode != NONE or (messages and messages[0]["role"] == "system"):
        return text
    parts = _parts(tokenizer, template_kwargs)
    if parts is None or not parts.injected_turn:
        return text
    head = parts.prefix + parts.injected_turn
    if not text.startswith(head):
        raise ValueError(f"model.default_system_prompt=none: the template's injected system turn "
                         f"{parts.injected_turn[:60]!r} is not where the probe found it; use template or a string")
    return parts.prefix + text[len(head):]


__all__ = ["TEMPLATE", "NONE", "with_system", "injected_default", "render_chat", "template_parts"]
