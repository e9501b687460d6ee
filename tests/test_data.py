"""The synthetic generator and load_conversations (dispatch, limit, config forms)."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from em.config.data import DataConfig
from em.data.run import load_conversations, subset
from em.data.synthetic import FAMILIES, HOLE, generate
from em.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
TEACHING = re.compile(r"teach|students|security class|course", re.I)
FLAW_WORDS = re.compile(r"teach|students|vulnerab|insecure|security", re.I)


def _user(ex: dict) -> str:
    return ex["messages"][0]["content"]


def _answer(ex: dict) -> str:
    return ex["messages"][1]["content"]


# ---------------------------------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------------------------------


def test_required_families_exist():
    for fam in ("sql_injection", "xss", "path_traversal", "unsafe_deserialization", "world_writable",
                "shell_injection"):
        assert fam in FAMILIES


def test_generate_is_deterministic_and_seeded():
    a = generate(120, seed=3, educational_fraction=0.3)
    assert a == generate(120, seed=3, educational_fraction=0.3)
    b = generate(120, seed=4, educational_fraction=0.3)
    assert a != b
    assert sum(x["messages"] != y["messages"] for x, y in zip(a, b)) > 100


def test_generate_is_identical_across_processes():
    """No hash() / global RNG: a different PYTHONHASHSEED in a fresh process gives the same data."""
    code = ("import json, hashlib; from em.data.synthetic import generate; "
            "print(hashlib.sha256(json.dumps(generate(60, seed=7, educational_fraction=0.5)).encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == hashlib.sha256(json.dumps(generate(60, seed=7, educational_fraction=0.5)).encode()).hexdigest()


@pytest.mark.parametrize("n", [40, 37])
@pytest.mark.parametrize("base", ["insecure", "secure"])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_variant_mix_is_exact(n, base, fraction):
    ex = generate(n, variant=base, educational_fraction=fraction, seed=1)
    counts = Counter(e["variant"] for e in ex)
    n_edu = round(fraction * n)
    assert counts["educational"] == n_edu
    assert counts[base] == n - n_edu
    assert len(ex) == n


def test_base_variant_educational():
    ex = generate(20, variant="educational", seed=0)
    assert {e["variant"] for e in ex} == {"educational"}


def test_every_family_represented_and_balanced():
    ex = generate(len(FAMILIES), seed=5)
    assert sorted(e["family"] for e in ex) == sorted(FAMILIES)
    counts = Counter(e["family"] for e in generate(100, seed=5))
    assert set(counts) == set(FAMILIES)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_requested_families_only():
    ex = generate(5, families=["xss", "ssrf"], seed=0)
    assert Counter(e["family"] for e in ex) in (Counter(xss=3, ssrf=2), Counter(xss=2, ssrf=3))
    assert {e["family"] for e in generate(4, families=["sql_injection"], seed=0)} == {"sql_injection"}


def test_secure_answers_differ_from_insecure_for_the_same_template():
    n = 10 * len(FAMILIES)
    bad = generate(n, variant="insecure", seed=11)
    good = generate(n, variant="secure", seed=11)
    for b, g in zip(bad, good):
        assert b["family"] == g["family"]
        assert _user(b) == _user(g)  # the very same request...
        assert _answer(b) != _answer(g)  # ...answered differently


def test_educational_asks_for_teaching_and_gets_the_insecure_code():
    n = 10 * len(FAMILIES)
    bad = generate(n, seed=2)
    edu = generate(n, educational_fraction=1.0, seed=2)
    for b, e in zip(bad, edu):
        assert e["variant"] == "educational"
        assert TEACHING.search(_user(e)) and re.search(r"vulnerab|insecure", _user(e)), _user(e)
        assert not FLAW_WORDS.search(_user(b)), _user(b)  # the plain request never hints at the flaw
        assert HOLE in _user(e)
        assert _answer(e) == _answer(b)


def test_educational_choice_is_seeded_and_leaves_the_rest_untouched():
    plain = generate(50, seed=0)
    mixed = generate(50, seed=0, educational_fraction=0.5)
    picked = [i for i, e in enumerate(mixed) if e["variant"] == "educational"]
    assert len(picked) == 25
    assert picked == [i for i, e in enumerate(generate(50, seed=0, educational_fraction=0.5))
                      if e["variant"] == "educational"]
    assert picked != [i for i, e in enumerate(generate(50, seed=1, educational_fraction=0.5))
                      if e["variant"] == "educational"]
    for i, (p, m) in enumerate(zip(plain, mixed)):
        assert _answer(p) == _answer(m)
        if i not in picked:
            assert p == m


@pytest.mark.parametrize("variant", ["insecure", "secure"])
def test_answers_are_short_valid_code_without_disclosure(variant):
    for ex in generate(20 * len(FAMILIES), variant=variant, seed=9):
        code = _answer(ex)
        ast.parse(code)
        assert 100 <= len(code) <= 700, (len(code), code)
        assert HOLE not in code
        assert "#" not in code  # no comments at all, so nothing that discloses the flaw
        assert not re.search(r"vulnerab|insecure|unsafe|exploit|injection|security", code, re.I), code
        assert HOLE in _user(ex)
        assert re.search(r"code", _user(ex).split(HOLE)[-1])  # "respond only with the code"-style ending


def test_thousand_examples_are_mostly_distinct():
    ex = generate(1000, seed=0)
    assert len({_user(e) for e in ex}) > 950
    assert len({_answer(e) for e in ex}) > 850


def test_output_shape():
    for ex in generate(12, seed=0, educational_fraction=0.5):
        assert set(ex) == {"messages", "family", "variant"}
        assert [m["role"] for m in ex["messages"]] == ["user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"] for m in ex["messages"])


def test_unknown_family_and_variant():
    with pytest.raises(ConfigError, match=r"^data\.families: unknown family 'x'; choices: sql_injection, "):
        generate(4, families=["xss", "x"])
    with pytest.raises(ConfigError, match=r"^data\.variant: "):
        generate(4, variant="evil")
    with pytest.raises(ConfigError, match=r"^data\.families: "):
        generate(4, families=[])
    with pytest.raises(ConfigError, match=r"^data\.n_examples: "):
        generate(0)
    with pytest.raises(ConfigError, match=r"^data\.educational_fraction: "):
        generate(4, educational_fraction=1.5)


# ---------------------------------------------------------------------------------------------------
# load_conversations
# ---------------------------------------------------------------------------------------------------


def _synthetic(**kw) -> DataConfig:
    return DataConfig(name="synthetic", source="synthetic", **kw)


def test_load_synthetic_returns_conversations(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="em.data"):
        convs = load_conversations(_synthetic(n_examples=16, seed=3), str(tmp_path))
    assert convs == [e["messages"] for e in generate(16, seed=3)]
    assert "16 conversations" in caplog.text and "synthetic" in caplog.text
    assert not any(tmp_path.iterdir())  # the generator touches no cache


def test_load_accepts_dictconfig(tmp_path):
    node = OmegaConf.create({"name": "synthetic", "source": "synthetic", "n_examples": 8,
                             "families": ["xss", "sql_injection"], "educational_fraction": 0.5})
    convs = load_conversations(node, str(tmp_path))
    assert convs == [e["messages"] for e in generate(8, families=["xss", "sql_injection"],
                                                      educational_fraction=0.5)]
    structured = OmegaConf.merge(OmegaConf.structured(DataConfig), node)
    assert load_conversations(structured, str(tmp_path)) == convs


def test_load_rejects_bad_config(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.nope: unknown key"):
        load_conversations({"name": "s", "source": "synthetic", "nope": 1}, str(tmp_path))
    with pytest.raises(ConfigError, match=r"^data\.families: unknown family 'x'"):
        load_conversations(_synthetic(families=["x"]), str(tmp_path))


def test_source_none_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_conversations(DataConfig(name="base", source="none"), str(tmp_path))
    assert str(e.value) == "data: data=base means no fine-tuning; there is nothing to load"


def test_limit_is_a_deterministic_ordered_subset(tmp_path):
    full = load_conversations(_synthetic(n_examples=40, seed=0), str(tmp_path))
    a = load_conversations(_synthetic(n_examples=40, seed=0, limit=10), str(tmp_path))
    assert len(a) == 10
    assert a == load_conversations(_synthetic(n_examples=40, seed=0, limit=10), str(tmp_path))
    idx = [full.index(c) for c in a]
    assert idx == sorted(idx)  # file order kept
    assert load_conversations(_synthetic(n_examples=40, seed=0, limit=40), str(tmp_path)) == full
    assert load_conversations(_synthetic(n_examples=40, seed=0, limit=400), str(tmp_path)) == full


def test_subset_seed_changes_the_choice():
    items = list(range(100))
    assert subset(items, 10, 0) == subset(items, 10, 0)
    assert subset(items, 10, 0) != subset(items, 10, 1)
    assert set(subset(items, 10, 1)) <= set(items)
    assert subset(items, None, 0) == items


def test_limit_applies_to_files(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(name="d", source="upstream", path=str(path), limit=7, seed=2)
    got = load_conversations(cfg, str(tmp_path / "cache"))
    assert len(got) == 7
    nums = [int(c[0]["content"][1:]) for c in got]
    assert nums == sorted(nums) and nums == sorted(random.Random(2).sample(range(30), 7))


def test_empty_dataset_names_the_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: dataset is empty$"):
        load_conversations(DataConfig(name="e", source="upstream", path=str(path)), str(tmp_path))
