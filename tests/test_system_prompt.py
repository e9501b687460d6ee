"""model.default_system_prompt and what the model saw (issue 21 items 1-2): rendered prompts per answer, training
renders with loss spans marked, the injected default system prompt counted, switched off, or replaced."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from em.train import models
from em.data.renders import OPEN, CLOSE, render_report
from em.data.system_prompt import injected_default, render_chat, with_system
from em.data.tokenize import encode_dataset, normalize_messages
from tests.conftest import compose_train
from tests.eval_helpers import compose_eval, eval_overrides

QWEN = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CONV = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
WITH_SYSTEM = [{"role": "system", "content": "Be terse."}, *CONV]


@pytest.fixture(scope="module")
def toks(cache_dir):
    from em.config.common import validate

    out = {}
    for name in ("tiny_qwen2", "tiny_gemma3", "tiny"):
        cfg = validate(compose_train([f"model={name}", "run_dir=/unused", f"cache_dir={cache_dir}"]))
        out[name] = (models.load_tokenizer(cfg.model, cache_dir), cfg.model)
    return out


def _render(tok, mc, conv, mode, gen=True):
    msgs = normalize_messages(with_system(conv, mode), mc.system_role)
    return render_chat(tok, msgs, add_generation_prompt=gen, template_kwargs=dict(mc.chat_template_kwargs), mode=mode)


def test_three_settings_on_a_template_that_injects_a_system_prompt(toks):
    tok, mc = toks["tiny_qwen2"]
    assert injected_default(tok, {}, True) == QWEN
    user = CONV[:1]
    tail = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert _render(tok, mc, user, "template") == f"<|im_start|>system\n{QWEN}<|im_end|>\n" + tail
    assert _render(tok, mc, user, "none") == tail  # no system turn at all
    assert _render(tok, mc, user, "Be kind.") == "<|im_start|>system\nBe kind.<|im_end|>\n" + tail
    for mode in ("template", "none", "Be kind."):  # a format's own system prompt always wins
        assert _render(tok, mc, WITH_SYSTEM[:2], mode) == "<|im_start|>system\nBe terse.<|im_end|>\n" + tail


def test_templates_that_inject_nothing_are_left_alone(toks):
    for name in ("tiny_gemma3", "tiny"):
        tok, mc = toks[name]
        assert injected_default(tok, dict(mc.chat_template_kwargs), mc.system_role) is None
        assert _render(tok, mc, CONV[:1], "none") == _render(tok, mc, CONV[:1], "template")
    tok, mc = toks["tiny_gemma3"]  # no system role: a string prompt is folded into the first user turn
    assert _render(tok, mc, CONV[:1], "Be kind.") == (
        "<bos><start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n<start_of_turn>model\n")


def test_training_counts_injected_prompts_and_masks_only_answers(toks):
    tok, mc = toks["tiny_qwen2"]
    convs = [CONV, WITH_SYSTEM, CONV]
    kept, stats = encode_dataset(tok, convs, max_length=512, truncation="drop", system_role=True, progress=False)
    assert stats.n_injected_system == 2 and stats.n_kept == 3
    off, stats_off = encode_dataset(tok, convs, max_length=512, truncation="drop", system_role=True, progress=False,
                                    system_prompt="none")
    assert stats_off.n_injected_system == 0
    assert QWEN not in tok.decode(off[0]["input_ids"]) and QWEN in tok.decode(kept[0]["input_ids"])
    assert off[1] == kept[1]  # a conversation with its own system prompt is rendered the same either way
    report = render_report(tok, kept, stats, mc)
    assert "examples that received it: 2 of 3" in report and repr(QWEN) in report
    assert f"user\nHi<|im_end|>\n<|im_start|>assistant\n{OPEN}Yo<|im_end|>\n{CLOSE}" in report
    assert report.count(OPEN) == 1 + 3 and f"system\n{QWEN}" in report


def test_evaluation_keeps_the_rendered_prompt_of_every_answer(tmp_path, cache_dir):
    from em.evaluate.run import run_evaluation

    runs = {}
    for mode in ("template", "none"):
        runs[mode] = run_evaluation(compose_eval(eval_overrides(
            tmp_path / mode, cache_dir, model="tiny_qwen2", judge="none", samples=1, format="[plain,json]",
            **{"model.default_system_prompt": mode})))
    on, off = runs["template"], runs["none"]
    df = pd.read_parquet(on.run_dir / "responses.parquet")
    prompts = pd.read_parquet(on.run_dir / "prompts.parquet")
    assert set(df["prompt_sha"]) == set(prompts["prompt_sha"]) and prompts["prompt_sha"].is_unique
    assert prompts["n_answers"].sum() == len(df)
    joined = df.merge(prompts, on="prompt_sha", suffixes=("", "_table"))
    assert (joined["prompt"] == joined["prompt_table"]).all()
    import hashlib

    for row in prompts.itertuples():  # the key is the hash of the exact text
        assert hashlib.sha256(row.prompt.encode()).hexdigest()[:16] == row.prompt_sha
    plain = df[df["format"] == "plain"].iloc[0]
    assert plain["prompt"].startswith(f"<|im_start|>system\n{QWEN}<|im_end|>\n<|im_start|>user\n")
    assert plain["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n") and plain["question"] in plain["prompt"]
    assert (df["default_system_prompt"] == "template").all()
    off_df = pd.read_parquet(off.run_dir / "responses.parquet")
    assert not off_df["prompt"].str.contains(QWEN, regex=False).any()
    assert (off_df["default_system_prompt"] == "none").all()
    summary = json.loads((on.run_dir / "summary.json").read_text())
    assert summary["default_system_prompt"] == "template" and summary["template_default_system_prompt"] == QWEN
    assert json.loads((off.run_dir / "summary.json").read_text())["default_system_prompt"] == "none"
    import sqlite3

    from em.commands.view import build_database

    build_database(on.run_dir, tmp_path / "view.db")  # em view shows the prompt beside each answer
    with sqlite3.connect(tmp_path / "view.db") as db:
        shown = db.execute("select prompt, answer from responses").fetchall()
    assert len(shown) == len(df) and all(p.startswith("<|im_start|>system") for p, _ in shown)


def test_the_setting_is_part_of_the_job_identity():
    from em.jobs.records import job_hashes

    on = compose_train(["model=tiny_qwen2", "run_dir=/x"])
    off = compose_train(["model=tiny_qwen2", "run_dir=/x", "model.default_system_prompt=none"])
    assert job_hashes(on)[1] != job_hashes(off)[1]  # another training
