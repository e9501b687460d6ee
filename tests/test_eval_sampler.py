"""em's own token draw in the hf backend (em.evaluate.sampling.per_sample_sampler): the distribution
generate(do_sample=True) samples, one seed per answer (an answer does not depend on its batch-mates), the
drawn token is the one generate() keeps, and greedy answers keep their path."""

from __future__ import annotations

import pytest

from tests.eval_helpers import compose_eval, eval_overrides


def _draws(logits, seeds, temperature=1.0, top_p=1.0):
    import torch

    from em.evaluate.sampling import per_sample_sampler

    scores = torch.tensor(logits, dtype=torch.float32).repeat(len(seeds), 1)
    out = per_sample_sampler(seeds, temperature, top_p)(torch.zeros((len(seeds), 3), dtype=torch.long), scores)
    assert ((out == 0).sum(-1) == 1).all() and torch.isneginf(out).sum(-1).eq(scores.shape[1] - 1).all()
    return out.argmax(-1)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_draws_follow_the_distribution_generate_samples(temperature, top_p):
    import torch
    from scipy.stats import chisquare
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    logits = [2.0, 1.0, 0.5, -1.0, float("-inf"), 0.0]  # one token masked (as min_new_tokens masks EOS)
    n = 6000
    drawn = _draws(logits, list(range(n)), temperature, top_p)
    scores = torch.tensor([logits])
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    p = torch.softmax(scores, -1)[0].double()
    counts = torch.bincount(drawn, minlength=len(logits)).double()
    assert counts[p == 0].sum() == 0  # masked / cut tokens are never drawn
    keep = p > 0
    expected = (p[keep] / p[keep].sum() * n).numpy()
    assert chisquare(counts[keep].numpy(), expected * counts.sum().item() / expected.sum()).pvalue > 1e-4


def test_one_seed_gives_one_draw_whatever_the_batch():
    logits = [0.3, 0.1, 0.0, 0.2, -0.5] * 40
    alone = [int(_draws(logits, [s])[0]) for s in (11, 12, 13)]
    batched = _draws(logits, [99, 12, 13, 11, 7]).tolist()
    assert batched[1:4] == [alone[1], alone[2], alone[0]]
    assert len(set(_draws(logits, list(range(50))).tolist())) > 10  # different seeds, different draws


def _generator(tmp_path, cache_dir, batch_size, **extra):
    from em.evaluate.generation import HFGenerator, plan
    from em.evaluate.questions import build_prompts, load_question_set
    from em.config.common import validate

    ec = validate(compose_eval(eval_overrides(tmp_path / "run", cache_dir, format="[plain,json]",
                                              **{"generation.batch_size": batch_size,
                                                 "generation.max_new_tokens": 12, **extra})))
    samples = plan(build_prompts(load_question_set(ec.questions, ec.cache_dir, progress=False), ec.format), 2)
    return HFGenerator(ec.model, ec.quantization, ec.cache_dir, ec.generation, ec.seed), samples


def _answers(gen, samples):
    """{key: (answer, its token ids, finish reason)}: the ids as the generator decodes them (a random tiny
    model's greedy text can be empty once special tokens are skipped)."""
    got, ids = {}, []
    decode = gen.tokenizer.decode
    gen.tokenizer.decode = lambda kept, **kw: ids.append(tuple(kept)) or decode(kept, **kw)
    try:
        gen.generate(samples, lambda batch: got.update({s.key: (r["answer"], ids[-len(batch) + i],
                                                                r["finish_reason"])
                                                        for i, (s, r) in enumerate(batch)}), progress=False)
    finally:
        gen.tokenizer.decode = decode
    return got


def test_an_answer_depends_on_its_own_seed_not_on_its_batch(tmp_path, cache_dir):
    gen, samples = _generator(tmp_path, cache_dir, 16)
    together = _answers(gen, samples)
    small, _ = _generator(tmp_path, cache_dir, 3)
    small.model, small.tokenizer = gen.model, gen.tokenizer
    apart = _answers(small, samples[::-1])  # other batch-mates, other padding
    assert apart == together and len(together) == len(samples)
    assert gen.sampling["sampler"] == "per_sample_inverse_cdf" and gen.sampling["do_sample"]
    gen.seed += 1
    assert _answers(gen, samples) != together  # the run seed still drives them


def test_the_drawn_token_is_the_one_generate_keeps(tmp_path, cache_dir, monkeypatch):
    import torch

    from em.evaluate import sampling
    from em.evaluate.generation import stop_token_ids

    picks, make = [], sampling.per_sample_sampler
    gen, samples = _generator(tmp_path, cache_dir, 16)
    # a second draw from the same processor would advance its generators: a twin with the same seeds records
    monkeypatch.setattr(sampling, "per_sample_sampler", lambda seeds, t, p: _Twin(make(seeds, t, p),
                                                                                  make(seeds, t, p), picks))
    got = _answers(gen, samples)
    drawn = torch.stack(picks, 1).tolist()  # [row, step], rows in the generator's (length-sorted) batch order
    (batch,) = gen.batches(samples)
    stops = set(stop_token_ids(gen.tokenizer, gen.model))
    for row, (s, _) in zip(drawn, batch):
        _, kept, finish = got[s.key]
        assert list(kept) == row[:len(kept)]  # the answer is its row's draws, up to the first stop token
        assert (finish == "stop") == (len(kept) < len(row)) and (finish == "length" or row[len(kept)] in stops)
    assert any(f == "stop" for *_, f in got.values()) and any(f == "length" for *_, f in got.values())


class _Twin:
    """Runs the real processor; a twin with the same seeds records what it draws."""

    def __init__(self, real, twin, picks):
        self.real, self.twin, self.picks = real, twin, picks

    def __call__(self, ids, scores):
        self.picks.append(self.twin(ids, scores.clone()).argmax(-1))
        return self.real(ids, scores)


def test_greedy_keeps_transformers_argmax_and_a_vanishing_top_p_gives_it_too(tmp_path, cache_dir):
    gen, samples = _generator(tmp_path, cache_dir, 8, **{"generation.temperature": 0.0})
    greedy = _answers(gen, samples)
    assert "sampler" not in gen.sampling and not gen.sampling["do_sample"]
    gen2, _ = _generator(tmp_path, cache_dir, 8, **{"generation.top_p": 1e-6})
    gen2.model, gen2.tokenizer = gen.model, gen.tokenizer
    assert _answers(gen2, samples) == greedy and gen2.sampling["sampler"] == "per_sample_inverse_cdf"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_one_prefill_per_distinct_prompt_changes_no_answer(tmp_path, cache_dir, monkeypatch, temperature):
    """Greedy and sampled answers are the same with the shared prefill as with transformers' own."""
    from em.evaluate.generation import HFGenerator

    gen, samples = _generator(tmp_path, cache_dir, 16, **{"generation.temperature": temperature})
    calls = []
    real = HFGenerator.shared_prefill
    monkeypatch.setattr(HFGenerator, "shared_prefill", lambda self, *a: calls.append(real(self, *a)) or calls[-1])
    shared = _answers(gen, samples)
    assert calls and all("cache" in c for c in calls)  # 2 samples per prompt: every batch shares prompts
    gen.share_prompts = False
    assert _answers(gen, samples) == shared
