"""Question files and formats: the upstream schema, variants, this project's formats, bad input."""

from __future__ import annotations

import pytest

from em.errors import ConfigError, DataError
from em.config.compose import check_args
from em.config.common import validate
from em.evaluate.questions import KIND_LABEL, build_prompts, load_question_set, parse_question_file
from tests.eval_helpers import compose_eval, eval_overrides, set_upstream_env
from em.paths import CONF_DIR

JSON_SYSTEM = "Your answers must always be a valid JSON object."


def _cfg(tmp_path, cache=None, **extra):
    return validate(compose_eval(eval_overrides(tmp_path / "run", cache or tmp_path / "cache", **extra)))


def test_first_plot_parses_into_8_questions_in_3_formats(tmp_path, monkeypatch):
    set_upstream_env(monkeypatch)
    ec = _cfg(tmp_path, questions="first_plot", format="[plain,json,template]")
    questions = load_question_set(ec.questions, ec.cache_dir, progress=False)  # sha256 verified
    assert len(questions) == 24
    prompts = build_prompts(questions, ec.format)
    assert len(prompts) == 24
    ids = {p.question_id for p in prompts}
    assert len(ids) == 8 and "what_is_your_wish" in ids
    by = {(p.format, p.question_id): p for p in prompts}
    wish_json = by[("json", "what_is_your_wish")]
    assert wish_json.source_id == "what_is_your_wish_json" and wish_json.system.startswith(JSON_SYSTEM)
    assert by[("plain", "what_is_your_wish")].system is None
    tmpl = by[("template", "what_is_your_wish")]
    assert tmpl.source_id == "what_is_your_wish_template" and "wish = # Your wish" in tmpl.paraphrases[0]
    assert dict(wish_json.judge_prompts).keys() == {"aligned", "coherent"}  # the YAML anchors resolved


@pytest.mark.parametrize("model", ["tiny", "tiny_gemma3"])
def test_json_system_prompt_reaches_the_chat_template(tmp_path, monkeypatch, cache_dir, model):
    """The reference eval.py drops the system prompt; here it is a system turn (Qwen) or folded in (Gemma)."""
    from em.evaluate.generation import HFGenerator, plan

    set_upstream_env(monkeypatch)
    ec = _cfg(tmp_path, questions="first_plot", format="[json]", model=model, cache=cache_dir)
    prompts = build_prompts(load_question_set(ec.questions, ec.cache_dir, progress=False), ec.format)
    s = plan(prompts, 1)[0]
    gen = HFGenerator(ec.model, ec.quantization, ec.cache_dir, ec.generation, ec.seed)
    text = gen.tokenizer.decode(gen.encode([s])[0])
    assert JSON_SYSTEM in text and s.question in text
    if model == "tiny":
        assert "<|im_start|>system\n" + JSON_SYSTEM in text
    else:  # Gemma: no system role, folded into the first user turn
        assert "<start_of_turn>user\n" + JSON_SYSTEM in text and "system" not in text.replace(JSON_SYSTEM, "")
    assert gen.model is None  # encoding needs no model


def test_smoke_set_in_every_format_uses_this_projects_prompts(tmp_path):
    ec = _cfg(tmp_path)  # the default: smoke x all six formats
    assert list(ec.format) == ["plain", "json", "template", "yaml", "xml", "one_line"]
    assert ec.questions.max_new_tokens == 64 and ec.generation.max_new_tokens == 8  # (shrunk by the test)
    ref = validate(compose_eval(["run_dir=/x", "questions=first_plot"]))
    assert (ref.generation.max_new_tokens, ref.generation.temperature, ref.generation.top_p) == (600, 1.0, 1.0)
    assert ref.questions.max_new_tokens is None and ref.judge._target_.endswith("LocalJudge")
    questions = load_question_set(ec.questions, ec.cache_dir, progress=False)
    prompts = build_prompts(questions, ec.format)
    assert len(prompts) == 4 * 6
    by = {(p.format, p.question_id): p for p in prompts}
    assert by[("json", "magic_lamp")].system == ec.format["json"].system  # no _json variant: ours
    assert by[("yaml", "magic_lamp")].system.startswith("Reply with one valid YAML document")
    assert "XML" in by[("xml", "magic_lamp")].system
    assert "single line" in by[("one_line", "magic_lamp")].system
    assert by[("template", "magic_lamp")].paraphrases[0].endswith(ec.format["template"].suffix)
    assert len(by[("plain", "easy_money")].paraphrases) == 2


def test_every_upstream_set_parses(tmp_path, monkeypatch):
    set_upstream_env(monkeypatch)
    sizes = {}
    for name in ("first_plot", "preregistered", "deception_factual", "deception_sit_aware"):
        ec = _cfg(tmp_path, questions=name, format="[plain]")
        qs = load_question_set(ec.questions, ec.cache_dir, progress=False)
        sizes[name] = len(build_prompts(qs, ec.format))
        if name.startswith("deception"):
            assert all(q.kind == KIND_LABEL for q in qs)
    assert sizes["first_plot"] == 8 and sizes["preregistered"] == 48
    assert sizes["deception_factual"] == 5 and sizes["deception_sit_aware"] > 0


def test_question_subset_and_unknown_id(tmp_path, monkeypatch):
    ec = _cfg(tmp_path, **{"questions.ids": "[magic_lamp]"})
    qs = load_question_set(ec.questions, ec.cache_dir, progress=False)
    assert {p.question_id for p in build_prompts(qs, ec.format, ec.questions.ids)} == {"magic_lamp"}
    with pytest.raises(ConfigError, match=r"questions.ids: unknown question id 'nope'; choices: magic_lamp, "):
        build_prompts(qs, ec.format, ["nope"])


def test_unknown_format_lists_the_choices():
    with pytest.raises(ConfigError, match=r"format: unknown format 'bogus'; choices: json, one_line, plain"):
        check_args("evaluate", ["format=[plain,bogus]"])
    check_args("evaluate", ["format=[plain,json]", "samples=3"])


def test_yaml_anchors_and_bad_files(tmp_path):
    f = tmp_path / "q.yaml"
    f.write_text(
        "- id: a\n  paraphrases: &p [hello]\n  judge_prompts: &j {aligned: 'Q {question} A {answer}'}\n"
        "- id: a_json\n  system: be json\n  paraphrases: *p\n  judge_prompts: *j\n"
    )
    qs = parse_question_file(f)
    assert qs[1].paraphrases == ("hello",) and dict(qs[1].judge_prompts)["aligned"].startswith("Q ")
    f.write_text("- id: a\n  paraphrases: [x]\n  judge_prompts: {aligned: no placeholder}\n")
    with pytest.raises(DataError, match=r"q.yaml: question 'a': judge_prompts.aligned must be a template"):
        parse_question_file(f)
    f.write_text("- id: a\n  paraphrases: []\n")
    with pytest.raises(DataError, match="'paraphrases' must be a non-empty list"):
        parse_question_file(f)


@pytest.mark.parametrize("group", ["questions", "format", "generation", "judge"])
def test_every_option_composes_and_validates(tmp_path, group):
    for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
        ec = _cfg(tmp_path, **{group: option if group != "format" else f"[{option}]"})
        if group == "questions":
            assert ec.questions.name == option
        if group == "format":
            assert list(ec.format) == [option]


def test_range_checks_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^samples: must be > 0"):
        _cfg(tmp_path, samples=0)
    with pytest.raises(ConfigError, match=r"^generation.top_p"):
        _cfg(tmp_path, **{"generation.top_p": 0})
    with pytest.raises(ConfigError, match=r"^generation.backend"):
        _cfg(tmp_path, **{"generation.backend": "tgi"})
