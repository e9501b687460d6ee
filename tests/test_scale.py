"""bench/gpu_train.py and bench/scale_estimate.py: the parts that run without a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_train  # noqa: E402


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["qwen3_1_7b", "qwen3_4b", "qwen3_8b", "qwen3_14b", "qwen3_32b", "gemma3_1b",
                                  "gemma3_4b", "gemma3_12b", "gemma3_27b"])
def test_architectures_add_up_to_the_published_parameter_counts(name):
    params = float(yaml.safe_load((REPO / "conf/model" / f"{name}.yaml").read_text())["params"])  # "8.2e9": a str to YAML 1.1
    total = gpu_train.counts(gpu_train.ARCHS[name])["total"]
    vision = 0.42e9 if name in ("gemma3_4b", "gemma3_12b", "gemma3_27b") else 0.0  # conf counts the SigLIP tower
    assert total + vision == pytest.approx(params, rel=0.03)


def test_flops_formula_is_the_documented_one():
    arch = gpu_train.ARCHS["qwen3_8b"]
    c = gpu_train.counts(arch)
    no_gc = gpu_train.flops_per_token(arch, 1, 1.0, gc=False, em_head=False)
    assert no_gc["model"] == no_gc["hardware"]
    assert no_gc["model"] == pytest.approx(4 * c["linear"] + 6 * c["lora"] + 3 * no_gc["attention"] + 4 * c["head"])
    gc = gpu_train.flops_per_token(arch, 1, 1.0, gc=True, em_head=True)
    assert gc["hardware"] - gc["model"] == pytest.approx(2 * c["linear"] + 2 * c["lora"] + gc["attention"] + 2 * c["head"])


def test_help_dry_run_and_no_gpu_need_no_gpu():
    r = _run("bench/gpu_train.py", "--help")
    assert r.returncode == 0 and "--peak-tflops" in r.stdout and "--dry-run" in r.stdout
    r = _run("bench/gpu_train.py", "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "qwen3_32b" in r.stdout and "32.76B" in r.stdout and "gemma3_27b" in r.stdout
    import torch

    if not torch.cuda.is_available():
        r = _run("bench/gpu_train.py")
        assert r.returncode == 0 and r.stdout.strip().splitlines() == [
            "bench/gpu_train.py needs a CUDA GPU (none here); `--dry-run` prints the estimates without one."]


def test_scale_estimate_recorded_table():
    r = _run("bench/scale_estimate.py", "--recorded")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "1,529,604 tokens, 790,092 assistant tokens" in out
    assert "129,600 GPT-4o calls" in out and "64,800 answers" in out
    assert "-> $283 (Batch API $142)" in out
    assert "all 27 jobs" in out
