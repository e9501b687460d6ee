"""Compose once, validate once: a train.py job validates its config at the entry and passes the typed object down."""

from __future__ import annotations

import sys

from tests.conftest import compose_train, tiny_overrides

# The job's config once (em.jobs.run.run_job) + each evaluation target's own config once (em.jobs.targets.eval_config:
# a new run_dir / adapter / condition). Nothing below the entry validates again.
BOUND_PER_JOB = 1


def _count_validations(monkeypatch) -> list[str]:
    """Patch ``validate`` in em.config.common and in every loaded em module that imported it by name."""
    from em.config import common

    real, calls = common.validate, []

    def counting(cfg):
        calls.append(type(cfg).__name__)
        return real(cfg)

    monkeypatch.setattr(common, "validate", counting)
    for name, mod in list(sys.modules.items()):
        if name.startswith("em.") and getattr(mod, "validate", None) is real:
            monkeypatch.setattr(mod, "validate", counting)
    return calls


def test_a_job_validates_once_plus_once_per_evaluation(tmp_path, cache_dir, monkeypatch):
    import em.capability  # noqa: F401  (every module that validates is loaded before the patch)
    import em.evaluate.run  # noqa: F401
    import em.judge.factory  # noqa: F401
    import em.train.run  # noqa: F401
    from em.jobs.targets import eval_targets
    from em.jobs.run import run_job

    over = tiny_overrides(tmp_path / "job", cache_dir, **{
        "evaluate.enabled": "true", "evaluate.samples": 1, "format": "[plain]", "evaluate.progress": "false",
        "generation.max_new_tokens": 4, "model@judge.model": "tiny", "judge.min_number_mass": 0.0,
        "quantization@evaluate.quantization": "none", "trainer.max_length": 1024, "trainer.max_steps": 1})
    cfg = compose_train(over)
    n_targets = len(eval_targets(cfg, tmp_path / "job"))
    calls = _count_validations(monkeypatch)
    res = run_job(cfg, isolate_failures=False)
    assert res.state == "done" and (tmp_path / "job" / "eval" / "summary.json").is_file()
    assert n_targets == 1 and len(calls) == BOUND_PER_JOB + n_targets, calls  # main: 6 (the job's config 3x)
