"""Helpers for the evaluation tests: compose the real evaluate config and shrink it."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import upstream_dir
from em.paths import CONF_DIR

KEY_ENV = "EM_TEST_JUDGE_KEY"  # the loopback judge's "API key" lives here, never in a config


def compose_eval(overrides: list[str]):
    """evaluate.py's config, composed from conf/ with ``overrides`` (schemas registered)."""
    from hydra import compose, initialize_config_dir

    import em.config  # noqa: F401  registers the schemas

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("evaluate", overrides=overrides)


def eval_overrides(run_dir, cache_dir, **extra) -> list[str]:
    """The real config, shrunk: tiny model in fp32, base model, a few short answers, no judge, no W&B."""
    o = {
        "model": "tiny",
        "quantization": "none",
        "adapter": "none",
        "run_dir": str(run_dir),
        "cache_dir": str(cache_dir),
        "judge_cache": str(Path(run_dir).parent / "judge_cache.sqlite"),
        "samples": 2,
        "generation.max_new_tokens": 8,
        "progress": "false",
        "wandb.enabled": "false",
    }
    o.update(extra)
    out = [f"{k}={v}" for k, v in o.items() if v is not None and not k.startswith("~")]
    out += [k for k, v in o.items() if k.startswith("~")]
    return out


def openai_judge_overrides(url: str, batch: bool = False, **extra) -> dict:
    """judge=openai (batch: judge=openai_batch) against the loopback server at ``url``, short timeouts."""
    o = {"judge": "openai_batch" if batch else "openai", "judge.base_url": url, "judge.api_key_env": KEY_ENV,
         "judge.max_retries": 3, "judge.timeout": 1.0}
    if not batch:  # the synchronous judge's own knobs
        o |= {"judge.retry_backoff": 0.01, "judge.concurrency": 32}
    o.update(extra)
    return o


def set_upstream_env(monkeypatch) -> Path:
    """Point EM_DATA_DIR at the pre-seeded upstream files (skip the test when there are none)."""
    d = upstream_dir()
    if d is None:
        import pytest

        pytest.skip("pre-seeded upstream files not found (set EM_UPSTREAM_DIR)")
    monkeypatch.setenv("EM_DATA_DIR", str(d))
    return d


def subprocess_env(**extra) -> dict:
    """The environment for a script run as a subprocess: offline, quiet W&B, unbuffered output."""
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def loopback_openai_judge(url: str, **kw):
    """An OpenAIJudge against a loopback server, its key in :data:`KEY_ENV`; quick retries for tests."""
    from em.judge.factory import build_judge
    from em.config.judge import OpenAIJudgeSchema

    kw = {"max_retries": 3, "timeout": 1.0, "reply_retries": 3, "retry_backoff": 0.01, "concurrency": 32} | kw
    return build_judge(OpenAIJudgeSchema(base_url=url, api_key_env=KEY_ENV, **kw))
