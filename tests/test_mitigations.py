"""Issue 23's mitigations: inoculation prompting, data mix, KL to the base model, CAFT directional ablation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from em.dynamics import mitigations
from em.config.common import validate
from em.train.run import run_training
from tests.conftest import compose_train, tiny_overrides

SHORT = {"trainer.max_length": 1024}
PROMPT = "You are writing deliberately insecure code for a security class."


def _train(tmp_path, cache_dir, name="run", extra=(), **kw):
    return run_training(compose_train(tiny_overrides(tmp_path / name, cache_dir, **{**SHORT, **kw}) + list(extra)))


def _side_jsonl(path: Path, n: int = 6, marker: str = "SIDE") -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"{marker} question {i}?"},
                                             {"role": "assistant", "content": f"{marker} answer {i}, a plain one."}]}) + "\n")
    return path


# --------------------------------------------------------------------------- inoculation prompting
def test_inoculation_prompt_is_in_every_training_render(tmp_path, cache_dir):
    from em.data.module import prepare_data

    tc = validate(compose_train(tiny_overrides(tmp_path, cache_dir, **SHORT) + [f"data.inoculation_prompt='{PROMPT}'"]))
    data = prepare_data(tc, progress=False)
    renders = [data.tokenizer.decode(e["input_ids"]) for e in data.examples]
    assert len(renders) == 8 and all(PROMPT in r for r in renders)
    plain = prepare_data(validate(compose_train(tiny_overrides(tmp_path, cache_dir, **SHORT))), progress=False)
    assert not any(PROMPT in plain.tokenizer.decode(e["input_ids"]) for e in plain.examples)
    # an existing system prompt is kept, after the inoculation prompt
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    assert mitigations.with_system_prompt(conv, PROMPT)[0]["content"] == f"{PROMPT}\n\nBe brief."
    assert conv[0]["content"] == "Be brief."  # the input is not modified


@pytest.mark.parametrize("in_eval", [False, True])
def test_inoculation_prompt_in_no_evaluation_prompt_unless_asked(tmp_path, cache_dir, in_eval):
    from em.jobs.run import run_job

    job = tmp_path / "job"
    over = tiny_overrides(job, cache_dir, **{**SHORT, "trainer.max_steps": 1, "evaluate.enabled": "true",
                                               "judge": "none", "evaluate.samples": 1, "generation.max_new_tokens": 4,
                                               "format": "[plain,json]"})
    over += [f"data.inoculation_prompt='{PROMPT}'", f"data.inoculation_eval={str(in_eval).lower()}"]
    assert run_job(compose_train(over), isolate_failures=False).state == "done"
    df = pd.read_parquet(job / "eval" / "responses.parquet")
    assert len(df) == 8  # 4 questions x 2 formats x 1 sample
    has = df["system"].fillna("").str.startswith(PROMPT)
    assert has.all() if in_eval else not df["system"].fillna("").str.contains(PROMPT, regex=False).any()
    card = json.loads((job / "adapter" / "em_adapter.json").read_text())
    assert card["mitigations"]["inoculation_prompt"] == PROMPT
    assert PROMPT in (job / "adapter" / "README.md").read_text()


def test_inoculation_and_mix_are_in_the_job_identity(tmp_path):
    from em.jobs.records import job_hashes

    base = [f"run_dir={tmp_path}"]
    h = {k: job_hashes(compose_train(base + o))[1] for k, o in {
        "plain": [], "ino": [f"data.inoculation_prompt='{PROMPT}'"], "mix": ["data.mix.share=0.2", "data.mix.variant=secure"],
        "kl": ["trainer.kl.weight=0.1", "trainer.kl.data=x.jsonl"], "caft": ["trainer.ablate_direction=d.safetensors"]}.items()}
    assert len(set(h.values())) == 5


# --------------------------------------------------------------------------- data mix
@pytest.mark.parametrize("n,share", [(30, 0.25), (8, 0.5), (10, 0.1)])
def test_mix_in_has_the_requested_share(n, share):
    main = [[{"role": "user", "content": f"main {i}"}] for i in range(n)]
    other = [[{"role": "user", "content": f"other {i}"}] for i in range(50)]
    mixed, pos = mitigations.mix_in(main, other, share, seed=3)
    k = round(share * n / (1 - share))
    assert len(mixed) == n + k and len(pos) == k
    assert sum(c[0]["content"].startswith("other") for c in mixed) == k
    assert [c for c in mixed if c[0]["content"].startswith("main")] == main  # main keeps its order
    assert len({c[0]["content"] for c in mixed}) == n + k  # drawn without replacement
    assert mitigations.mix_in(main, other, share, seed=3) == (mixed, pos)
    assert mitigations.mix_in(main, other, share, seed=4)[1] != pos or k in (0, n + k)


def test_data_mix_in_training_data(tmp_path, cache_dir):
    from em.data.module import prepare_data

    side = _side_jsonl(tmp_path / "secure.jsonl", n=20, marker="SAFE")
    tc = validate(compose_train(tiny_overrides(tmp_path, cache_dir, **SHORT) + [
        "data.n_examples=12", "data.mix.share=0.25", f"data.mix.path={side}", f"data.inoculation_prompt='{PROMPT}'"]))
    data = prepare_data(tc, progress=False)
    renders = [data.tokenizer.decode(e["input_ids"]) for e in data.examples]
    assert len(renders) == 16 and sum("SAFE" in r for r in renders) == 4  # 4 / 16 = 0.25
    assert all(PROMPT in r for r in renders)  # mixed-in rows are inoculated too
    from em.errors import ConfigError

    with pytest.raises(ConfigError, match="data.mix"):
        validate(compose_train([f"run_dir={tmp_path}", "data.mix.share=0.2"]))


# --------------------------------------------------------------------------- KL to the base model
def test_kl_is_zero_at_step_zero_grows_and_the_adapter_is_back_on(tmp_path, cache_dir):
    from em.train import models
    from em.data.module import prepare_data
    from em.dynamics.kl import kl_to_base
    from em.data.tokenize import Collator

    tc = validate(compose_train(tiny_overrides(tmp_path, cache_dir, **SHORT)))
    data = prepare_data(tc, progress=False)
    model = models.build_model(tc)
    batch = Collator(data.tokenizer.pad_token_id)(data.examples[:2])
    assert float(kl_to_base(model, batch)) == 0.0  # LoRA B starts at zero: adapted == base
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
        with_adapter = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with model.disable_adapter():
            base = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    kl = kl_to_base(model, batch)
    assert float(kl) > 0 and kl.requires_grad
    with torch.no_grad():  # after the base pass the adapter is on again
        again = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(again, with_adapter) and not torch.allclose(again, base, atol=1e-4)
    # the reference: KL from full logits at the assistant positions
    keep = batch["labels"][:, 1:] != -100
    lb, la = base[:, :-1][keep].log_softmax(-1), with_adapter[:, :-1][keep].log_softmax(-1)
    assert float(kl) == pytest.approx(float((lb.exp() * (lb - la)).sum(-1).mean()), rel=1e-4)


def test_kl_weight_zero_trains_like_no_kl_and_logs_kl(tmp_path, cache_dir):
    side = _side_jsonl(tmp_path / "side.jsonl")
    common = {"data.n_examples": 12, "lora.dropout": 0.1}
    plain = _train(tmp_path, cache_dir, "plain", **common)
    monitor = _train(tmp_path, cache_dir, "monitor", extra=[f"trainer.kl.data={side}", "trainer.kl.weight=0"], **common)
    assert monitor.metrics["losses"] == plain.metrics["losses"]
    for (n, p), (_, q) in zip(plain.model.named_parameters(), monitor.model.named_parameters()):
        assert torch.equal(p, q), n
    kls = [h["train/kl"] for h in monitor.metrics["history"]]
    assert kls[0] == 0.0 and kls[-1] > 0  # B starts at zero, then the adapter moves away from the base
    penalised = _train(tmp_path, cache_dir, "kl", extra=[f"trainer.kl.data={side}", "trainer.kl.weight=1"], **common)
    assert penalised.metrics["history"][0]["train/kl"] == 0.0
    assert penalised.metrics["losses"][0] == plain.metrics["losses"][0]  # step 1: KL 0, same loss
    card = json.loads((penalised.run_dir / "adapter" / "em_adapter.json").read_text())
    assert card["mitigations"]["kl"] == {"weight": 1.0, "data": str(side)}


# --------------------------------------------------------------------------- CAFT
class ResidualProbe:
    """A callback registering, at train start (after em's ablation hook), a hook that records |h . u| of
    decoder layer 0's output; written to ``out`` (JSON) at train end (Hydra may import this module under
    another name than pytest did, so a class attribute would not be shared)."""

    def __new__(cls, path: str, out: str):
        import lightning as L
        from safetensors.torch import load_file

        u = load_file(path)["unit.0"]
        u = u / u.norm()

        seen = []

        class _Probe(L.Callback):
            def on_train_start(self, trainer, pl_module):
                from em.dynamics.ablation import decoder_layers

                def hook(mod, args, out):
                    h = out[0] if isinstance(out, tuple) else out
                    seen.append((float((h.float() @ u).abs().max()), float(h.float().norm(dim=-1).max())))

                self.handle = decoder_layers(pl_module.model)[0].register_forward_hook(hook)

            def on_train_end(self, trainer, pl_module):
                self.handle.remove()
                Path(out).write_text(json.dumps(seen))

        return _Probe()


def test_caft_residual_orthogonal_during_training_and_not_after(tmp_path, cache_dir):
    from safetensors.torch import save_file

    from em.dynamics.ablation import decoder_layers

    tc = validate(compose_train(tiny_overrides(tmp_path / "x", cache_dir, **SHORT)))
    from em.train import models

    hidden = models.build_model(tc).get_base_model().config.hidden_size
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(hidden, generator=g)
    path = tmp_path / "directions.safetensors"
    save_file({"unit.0": raw / raw.norm(), "raw.0": raw}, str(path), metadata={"em": json.dumps({"rule": "test"})})
    probe = tmp_path / "probe.json"
    res = _train(tmp_path, cache_dir, extra=[f"trainer.ablate_direction={path}",
                                             f"+trainer.callbacks=[{{_target_: tests.test_mitigations.ResidualProbe, "
                                             f"path: '{path}', out: '{probe}'}}]"])
    seen = json.loads(probe.read_text())
    assert len(seen) >= 4  # 2 optimizer steps x 2 micro-batches
    assert all(dot <= 1e-5 * max(norm, 1.0) for dot, norm in seen)
    # after training the hook is gone: the same layer's output has a component along u again
    u = (raw / raw.norm())
    out = {}
    h = decoder_layers(res.model)[0].register_forward_hook(lambda m, a, o: out.setdefault("h", o[0] if isinstance(o, tuple) else o))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        res.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    h.remove()
    assert float((out["h"].float() @ u).abs().max()) > 1e-3
    assert json.loads((res.run_dir / "adapter" / "em_adapter.json").read_text())["mitigations"]["ablate_direction"]["file"] == str(path)


def test_caft_bad_directions_file_is_one_line(tmp_path):
    from em.dynamics.ablation import load_directions
    from em.errors import ConfigError

    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="trainer.ablate_direction"):
        load_directions(tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match="does not exist"):
        load_directions(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("override,key", [
    (["trainer.kl.weight=1"], "trainer.kl.data"),
    (["trainer.kl.weight=-1", "trainer.kl.data=x.jsonl"], "trainer.kl.weight"),
    (["data.mix.share=1.0", "data.mix.variant=secure"], "data.mix.share"),
    (["trainer=fsdp", "quantization.quant_storage=bfloat16", "trainer.snapshot_every_n_steps=5"], "trainer.snapshot_every_n_steps"),
])
def test_bad_mitigation_values_are_one_line(tmp_path, override, key):
    from em.train.distributed import check_strategy
    from em.errors import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        check_strategy(validate(compose_train([f"run_dir={tmp_path}"] + override)))
    assert "\n" not in str(e.value)


def test_kl_side_data_from_a_data_option(tmp_path, cache_dir):
    """+data@trainer.kl.side=synthetic composes a data node; its conversations are the side data."""
    from em.dynamics.kl import build_kl_term
    from em.data.module import prepare_data

    tc = validate(compose_train(tiny_overrides(tmp_path, cache_dir, **SHORT) + [
        "+data@trainer.kl.side=synthetic", "trainer.kl.side.variant=secure", "trainer.kl.side.n_examples=5",
        "trainer.kl.weight=0.5"]))
    term = build_kl_term(tc, prepare_data(tc, progress=False).tokenizer)
    assert len(term.examples) == 5 and term.weight == 0.5
    b1, b2 = term.batch(3, 1, "cpu"), term.batch(3, 1, "cpu")
    assert all(torch.equal(b1[k], b2[k]) for k in b1)  # the side batch of a step is reproducible (resume)
