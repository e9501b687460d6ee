"""Residual-stream hooks: find a model's decoder layers, read their outputs, add a vector, project a direction out.

Plain PyTorch forward hooks on the decoder layers (what the references use: model-organisms-for-EM's
``steering/activation_steering.py``, persona vectors' ``generate_vec.py``), chosen by measuring the
alternatives (docs/interp.md, "hooking choice"): a forward hook sees the layer's output whatever wraps the
model (a peft ``PeftModelForCausalLM``, bitsandbytes ``Linear4bit`` modules inside the layers, a multimodal
Gemma 3 whose decoder layers sit under ``model.language_model``), runs inside ``generate()`` (prefill and every
decode step) and costs one tensor add per layer. ``steering-vectors`` does the same thing through a
hard-coded table of layer-name patterns per architecture (no Gemma 3 multimodal entry), and ``nnsight``'s
tracing of ``generate`` re-dispatches the model per call; neither adds anything em needs.

"The residual stream after decoder layer ``L``" is the hidden state that layer returns (0-based index into
the decoder-layer list): ``output_hidden_states[L + 1]`` for every layer but the last, where transformers
returns the final norm's output instead.

Positions: an intervention limited to ``positions="prompt"`` or ``"answer"`` is told each row's prompt length
(``prompt_lens``: ``[batch]`` real prompt tokens, or one int for every row) and reads each token's position
from the ``position_ids`` the model passes to its layers (transformers derives them from the attention mask,
in ``generate()``'s prefill and every decode step alike, so left padding does not shift them): ``prompt`` is
every position before the row's prompt length, ``answer`` every position from it on (the generated tokens, or
the answer of a teacher-forced row).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional

import torch

POSITIONS = ("all", "prompt", "answer")


# --------------------------------------------------------------------------- finding the layers
def unwrap(model: Any) -> Any:
    """The transformers model under a peft wrapper (``get_base_model()``), else ``model`` itself."""
    base = getattr(model, "get_base_model", None)
    return base() if callable(base) else model


def text_config(model: Any) -> Any:
    """The text model's config (``config.get_text_config()``: a multimodal Gemma 3's ``text_config``)."""
    cfg = unwrap(model).config
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The model's list of decoder layers, found from the model itself (no per-family names).

    The ``ModuleList`` whose length is the text config's ``num_hidden_layers`` and whose entries are all of one
    class, outside any vision tower; the shallowest such list when there are several. Works for every
    causal LM transformers builds (Llama / Qwen / Gemma / Mistral / Phi-3 / GPT-2 style), the text model of
    ``Gemma3ForConditionalGeneration`` (``model.language_model.layers``), a peft-wrapped model and a
    bitsandbytes 4-bit one (the layers are the same modules there).

    Raises:
        ValueError: no such list (the message names the model class and the layer count looked for).
    """
    root = unwrap(model)
    n = getattr(text_config(model), "num_hidden_layers", None)
    found: list[tuple[int, str, torch.nn.ModuleList]] = []
    for name, mod in root.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0 or (n is not None and len(mod) != n):
            continue
        if any(part in name.lower() for part in ("vision", "visual", "image", "audio", "encoder")):
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        found.append((name.count("."), name, mod))
    if not found:
        raise ValueError(f"no decoder-layer list of {n} layers found in {type(root).__name__}")
    found.sort(key=lambda t: (t[0], t[1]))
    return found[0][2]


def n_layers(model: Any) -> int:
    """How many decoder layers the model has (``len(decoder_layers(model))``)."""
    return len(decoder_layers(model))


def hidden_size(model: Any) -> int:
    """The residual stream's width (the text config's ``hidden_size``)."""
    return int(text_config(model).hidden_size)


# --------------------------------------------------------------------------- the hook plumbing
def _hidden(output: Any) -> torch.Tensor:
    """The hidden state of a decoder layer's output (a tensor, or the first entry of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def _replace(output: Any, h: torch.Tensor) -> Any:
    """The layer output with its hidden state replaced by ``h`` (same container type)."""
    return (h, *output[1:]) if isinstance(output, tuple) else h


def _positions(kwargs: Mapping[str, Any], seq_len: int, device) -> torch.Tensor:
    """``[batch or 1, seq_len]`` position of each token of this forward: the layer's ``position_ids`` (from the
    attention mask in ``generate()``; ``past + 0..seq_len-1`` in a plain forward), else ``0..seq_len-1``."""
    pid = kwargs.get("position_ids")
    if pid is None:
        return torch.arange(seq_len, device=device)[None, :]
    pid = pid.to(device)
    if pid.dim() == 3:  # multimodal rotary layouts ([sections, batch, seq]): the text positions come first
        pid = pid[0]
    return pid.reshape(-1, pid.shape[-1])[:, -seq_len:]


def check_positions(positions: str, prompt_lens: Any) -> None:
    """Raises ValueError: ``positions`` not in :data:`POSITIONS`, or ``prompt`` / ``answer`` without ``prompt_lens``."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if positions != "all" and prompt_lens is None:
        raise ValueError(f"positions={positions!r} needs prompt_lens")


def position_mask(kwargs: Mapping[str, Any], seq_len: int, device, positions: str,
                  prompt_lens: Any) -> Optional[torch.Tensor]:
    """``[batch or 1, seq_len]`` bool: which tokens of this forward an intervention touches (None: all).

    ``prompt_lens``: one int, or ``[batch]`` real prompt tokens per row (see the module docstring).

    Raises:
        ValueError: see :func:`check_positions`.
    """
    check_positions(positions, prompt_lens)
    if positions == "all":
        return None
    pos = _positions(kwargs, seq_len, device)
    lens = torch.as_tensor(prompt_lens, device=device).reshape(-1, 1)
    return pos < lens if positions == "prompt" else pos >= lens


@contextlib.contextmanager
def layer_hooks(model: Any, fns: Mapping[int, Callable[[torch.Tensor, Mapping[str, Any]], Optional[torch.Tensor]]]
                ) -> Iterator[None]:
    """Forward hooks on decoder layers: ``fns[L](h, kwargs)`` gets layer L's output hidden state ``h``
    ``[batch, seq, hidden]`` and the layer's call kwargs; a returned tensor replaces ``h``. Removed on exit
    (also on an exception).

    Raises:
        IndexError: a layer index outside ``0..n_layers-1`` (negative indices count from the end).
    """
    layers = decoder_layers(model)
    handles = []
    try:
        for L, fn in fns.items():
            if not -len(layers) <= L < len(layers):
                raise IndexError(f"layer {L} out of range: the model has {len(layers)} decoder layers")

            def hook(module, args, kwargs, output, fn=fn):
                h = _hidden(output)
                new = fn(h, kwargs)
                return None if new is None else _replace(output, new)

            handles.append(layers[L].register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- interventions
def _as_vectors(vectors: Mapping[int, torch.Tensor] | torch.Tensor, layers: Optional[list[int]]) -> dict[int, torch.Tensor]:
    if isinstance(vectors, torch.Tensor):
        if layers is None:
            raise ValueError("a single vector needs layers=[...]")
        return {int(L): vectors for L in layers}
    return {int(L): v for L, v in vectors.items()}


@contextlib.contextmanager
def add_vector(model: Any, vectors: Mapping[int, torch.Tensor] | torch.Tensor, layers: Optional[list[int]] = None,
               positions: str = "all", prompt_lens: Any = None) -> Iterator[None]:
    """Add a steering vector to the residual stream after the given decoder layers: ``h <- h + v``.

    Args:
        vectors: ``{layer: [hidden]}``, or one ``[hidden]`` tensor for every layer of ``layers``. The caller
            scales it (em's steering: ``alpha * unit * mean residual norm at that layer``).
        positions: ``all`` | ``prompt`` (positions before the row's prompt length) | ``answer`` (from it on).
        prompt_lens: one int or ``[batch]`` prompt lengths; needed for ``prompt`` / ``answer``.

    Raises:
        ValueError: a vector of another width than the model's hidden size; bad ``positions``.
    """
    vecs = _as_vectors(vectors, layers)
    width = hidden_size(model)
    for L, v in vecs.items():
        if v.shape != (width,):
            raise ValueError(f"steering vector for layer {L} has shape {tuple(v.shape)}, the model's residual is [{width}]")
    check_positions(positions, prompt_lens)

    def make(v: torch.Tensor):
        cache: dict[Any, torch.Tensor] = {}

        def fn(h: torch.Tensor, kwargs: Mapping[str, Any]) -> torch.Tensor:
            key = (h.device, h.dtype)
            if key not in cache:
                cache[key] = v.to(device=h.device, dtype=h.dtype)
            vv = cache[key]
            mask = position_mask(kwargs, h.shape[1], h.device, positions, prompt_lens)
            if mask is None:
                return h + vv
            return h + mask[..., None].to(h.dtype) * vv
        return fn

    with layer_hooks(model, {L: make(v) for L, v in vecs.items()}):
        yield


@contextlib.contextmanager
def project_out(model: Any, directions: Mapping[int, torch.Tensor] | torch.Tensor,
                layers: Optional[list[int]] = None, positions: str = "all",
                prompt_lens: Any = None) -> Iterator[None]:
    """Directional ablation: ``h <- h - (h . u) u`` with ``u`` the unit direction, after the given layers.

    Args:
        directions: ``{layer: [hidden]}`` or one ``[hidden]`` tensor for every layer of ``layers`` (all layers
            when ``layers`` is None); normalised here. The projection is computed in float32 and cast back.
        positions, prompt_lens: as :func:`add_vector`.

    Raises:
        ValueError: a zero or wrongly shaped direction; bad ``positions``.
    """
    check_positions(positions, prompt_lens)
    if isinstance(directions, torch.Tensor) and layers is None:
        layers = list(range(n_layers(model)))
    dirs = _as_vectors(directions, layers)
    width = hidden_size(model)
    units: dict[int, torch.Tensor] = {}
    for L, d in dirs.items():
        if d.shape != (width,):
            raise ValueError(f"direction for layer {L} has shape {tuple(d.shape)}, the model's residual is [{width}]")
        norm = d.float().norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError(f"direction for layer {L} is zero or not finite")
        units[L] = d.float() / norm

    def make(u: torch.Tensor):
        cache: dict[Any, torch.Tensor] = {}

        def fn(h: torch.Tensor, kwargs: Mapping[str, Any]) -> torch.Tensor:
            if h.device not in cache:
                cache[h.device] = u.to(h.device)
            uu = cache[h.device]
            hf = h.float()
            coef = hf @ uu  # [batch, seq]
            mask = position_mask(kwargs, h.shape[1], h.device, positions, prompt_lens)
            if mask is not None:
                coef = coef * mask.float()
            return (hf - coef[..., None] * uu).to(h.dtype)
        return fn

    with layer_hooks(model, {L: make(u) for L, u in units.items()}):
        yield


@contextlib.contextmanager
def record(model: Any, layers: Optional[list[int]] = None,
           fn: Optional[Callable[[int, torch.Tensor], None]] = None) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Read the residual stream after the given decoder layers (all by default) without changing it.

    With ``fn``, ``fn(layer, h)`` is called on each output (``h`` ``[batch, seq, hidden]``, not copied: pool it
    there to keep memory at one layer's activations); without, each output is detached and appended to the
    yielded ``{layer: [tensor, ...]}`` (one entry per forward call).
    """
    layers = list(range(n_layers(model))) if layers is None else [int(L) for L in layers]
    store: dict[int, list[torch.Tensor]] = {L: [] for L in layers}

    def make(L: int):
        def hook(h: torch.Tensor, kwargs: Mapping[str, Any]) -> None:
            if fn is not None:
                fn(L, h)
            else:
                store[L].append(h.detach())
        return hook

    with layer_hooks(model, {L: make(L) for L in layers}):
        yield store


__all__ = ["POSITIONS", "unwrap", "text_config", "decoder_layers", "n_layers", "hidden_size", "layer_hooks",
           "add_vector", "project_out", "record", "position_mask", "check_positions"]
