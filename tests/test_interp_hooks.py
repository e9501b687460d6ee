"""em.interp.hooks: decoder layers found from the model itself (every tiny family, multimodal Gemma 3, peft,
4-bit), reading the residual stream equals output_hidden_states, adding a zero vector changes nothing inside
generate(), directional ablation leaves every hooked residual orthogonal to the direction."""

from __future__ import annotations

import pytest
import torch

from em.interp import hooks
from tests.eval_helpers import compose_eval, eval_overrides

FAMILIES = ["tiny", "tiny_qwen2", "tiny_gemma3", "tiny_llama", "tiny_mistral", "tiny_phi3"]


def load(model: str, cache_dir, tmp_path, quantization: str = "none", **extra):
    """em's own loading of a tiny random model (and its tokenizer), as the hf sampler loads it."""
    from em.train import models
    from em.config.common import validate

    ec = validate(compose_eval(eval_overrides(tmp_path / "run", cache_dir, model=model, quantization=quantization,
                                              **extra)))
    tok = models.load_tokenizer(ec.model, ec.cache_dir)
    return models.load_model(ec.model, ec.quantization, ec.cache_dir).eval(), tok, ec


def batch(tok, texts=("Hello there, how are you?", "Tell me a story")):
    enc = tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def check_record_equals_hidden_states(model):
    """Recorded outputs of every layer == output_hidden_states[L + 1] (the last: after the final norm)."""
    ids = torch.randint(0, 200, (2, 9))
    with torch.no_grad(), hooks.record(model) as rec:
        out = model(input_ids=ids, output_hidden_states=True)
    hs = out.hidden_states
    n = hooks.n_layers(model)
    assert len(hs) == n + 1 and all(len(rec[L]) == 1 for L in range(n))
    for L in range(n - 1):
        torch.testing.assert_close(rec[L][0], hs[L + 1], rtol=1e-5, atol=1e-6)
    norm = [m for name, m in hooks.unwrap(model).named_modules() if name.endswith("norm") and "layers" not in name][-1]
    torch.testing.assert_close(norm(rec[n - 1][0]), hs[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_layers_found_and_recorded_for_every_family(name, cache_dir, tmp_path):
    model, _, ec = load(name, cache_dir, tmp_path)
    layers = hooks.decoder_layers(model)
    assert len(layers) == ec.model.random_init["num_hidden_layers"]
    assert hooks.hidden_size(model) == ec.model.random_init["hidden_size"]
    check_record_equals_hidden_states(model)


def test_multimodal_gemma3_text_layers(tmp_path):
    from transformers import Gemma3ForConditionalGeneration

    from tests.vllm_compare import multimodal_dir

    model = Gemma3ForConditionalGeneration.from_pretrained(multimodal_dir(tmp_path)).eval()
    layers = hooks.decoder_layers(model)
    assert layers is model.model.language_model.layers  # the text model's, not the vision tower's
    assert hooks.hidden_size(model) == model.config.text_config.hidden_size
    check_record_equals_hidden_states(model)


def test_peft_and_4bit_layers_are_the_base_models(cache_dir, tmp_path):
    from em.train import models
    from em.config.model import LoraConfig

    model, _, ec = load("tiny", cache_dir, tmp_path, quantization="nf4")
    assert getattr(model, "is_loaded_in_4bit", False)
    peft = models.attach_lora(model, LoraConfig(r=2, alpha=4), ec.model)
    assert hooks.decoder_layers(peft) is hooks.decoder_layers(model)
    ids = torch.randint(0, 200, (2, 7))
    v = torch.zeros(hooks.hidden_size(peft))
    v[3] = 50.0
    with torch.no_grad():
        plain = peft(input_ids=ids).logits
        with hooks.add_vector(peft, v, layers=[0]):
            steered = peft(input_ids=ids).logits
        again = peft(input_ids=ids).logits
    assert not torch.allclose(plain, steered)
    torch.testing.assert_close(plain, again)  # hooks removed on exit


def generate(model, tok, ids, mask, **kw):
    torch.manual_seed(0)
    return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=8, min_new_tokens=8,
                          pad_token_id=tok.pad_token_id, use_cache=True, **kw)


@pytest.mark.parametrize("positions", ["all", "prompt", "answer"])
def test_zero_vector_identical_and_large_vector_changes_generate(positions, cache_dir, tmp_path):
    model, tok, _ = load("tiny", cache_dir, tmp_path)
    tok.padding_side = "left"
    ids, mask = batch(tok)
    lens = mask.sum(1)
    width = hooks.hidden_size(model)
    with torch.no_grad():
        base = generate(model, tok, ids, mask)
        with hooks.add_vector(model, torch.zeros(width), layers=[0, 1], positions=positions, prompt_lens=lens):
            zero = generate(model, tok, ids, mask)
        big = torch.randn(width, generator=torch.Generator().manual_seed(1)) * 100
        with hooks.add_vector(model, big, layers=[0], positions=positions, prompt_lens=lens):
            steered = generate(model, tok, ids, mask)
    assert torch.equal(base, zero)
    assert not torch.equal(base[:, ids.shape[1]:], steered[:, ids.shape[1]:])


def test_positions_select_prompt_or_answer_tokens_in_generate(cache_dir, tmp_path):
    """In generate(), 'prompt' touches exactly the prompt positions of each (left-padded) row, 'answer' the rest."""
    model, tok, _ = load("tiny", cache_dir, tmp_path)
    tok.padding_side = "left"
    ids, mask = batch(tok)
    lens = mask.sum(1)
    seen = {"prompt": [], "answer": []}
    for positions in seen:
        def spy(h, kwargs, positions=positions):
            seen[positions].append(hooks.position_mask(kwargs, h.shape[1], h.device, positions, lens).expand(
                h.shape[0], -1))
        with torch.no_grad(), hooks.layer_hooks(model, {0: spy}):
            generate(model, tok, ids, mask)
    prompt = seen["prompt"]
    # prefill: every real prompt token is 'prompt' (pads too: they are masked anyway); decode steps: none
    assert prompt[0].shape[1] == ids.shape[1] and prompt[0][mask.bool()].all()
    assert all(not m.any() for m in prompt[1:]) and all(m.all() for m in seen["answer"][1:])
    assert not seen["answer"][0][mask.bool()].any()


@pytest.mark.parametrize("positions", ["all", "answer"])
def test_ablation_leaves_every_hooked_residual_orthogonal(positions, cache_dir, tmp_path):
    model, tok, _ = load("tiny", cache_dir, tmp_path)
    tok.padding_side = "left"
    ids, mask = batch(tok)
    lens = mask.sum(1)
    n, width = hooks.n_layers(model), hooks.hidden_size(model)
    dirs = {L: torch.randn(width, generator=torch.Generator().manual_seed(L)) for L in range(n)}
    units = {L: d / d.norm() for L, d in dirs.items()}
    checked = []

    def check(L):
        def fn(h, kwargs):
            m = hooks.position_mask(kwargs, h.shape[1], h.device, positions, lens)
            dots = (h.float() @ units[L]).abs()
            bound = 1e-4 * h.float().norm(dim=-1)
            ok = dots <= bound
            if m is not None:  # the untouched positions keep their component
                ok = ok | ~m
            assert bool(ok.all()), f"layer {L}: max |h.v| {dots.max():.3g}"
            checked.append(L)
        return fn

    with torch.no_grad(), hooks.project_out(model, dirs, positions=positions, prompt_lens=lens):
        with hooks.layer_hooks(model, {L: check(L) for L in range(n)}):  # registered after: sees the ablated output
            generate(model, tok, ids, mask)
    assert sorted(set(checked)) == list(range(n)) and len(checked) == n * 8


def test_bad_arguments_are_one_line_errors(cache_dir, tmp_path):
    model, _, _ = load("tiny", cache_dir, tmp_path)
    with pytest.raises(ValueError, match="shape"):
        with hooks.add_vector(model, torch.zeros(7), layers=[0]):
            pass
    with pytest.raises(ValueError, match="zero"):
        with hooks.project_out(model, torch.zeros(hooks.hidden_size(model))):
            pass
    with pytest.raises(ValueError, match="prompt_lens"):
        with hooks.add_vector(model, torch.zeros(hooks.hidden_size(model)), layers=[0], positions="answer"):
            pass
    with pytest.raises(IndexError, match="decoder layers"):
        with hooks.add_vector(model, torch.zeros(hooks.hidden_size(model)), layers=[5]):
            pass
    assert not any(l._forward_hooks for l in hooks.decoder_layers(model))  # nothing left registered
