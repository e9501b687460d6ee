"""em's vllm backend equals its hf backend (greedy, fp32) on tiny models, with and without an adapter.

Runs where vllm is importable (CI: the CPU venv of requirements-vllm.txt, .ci/run); skipped elsewhere, so
the default ``python -m pytest -q`` needs no vllm. The comparison itself is tests/vllm_compare.py, run as
a script (vLLM starts engine processes with spawn).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("vllm", reason="vllm is not installed (CI installs requirements-vllm.txt in its own venv)")


def test_vllm_and_hf_give_identical_greedy_answers_and_the_adapter_applies(tmp_path):
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "vllm_compare.py"), str(tmp_path)], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    print(proc.stdout[-3000:])
    res = json.loads((tmp_path / "vllm_vs_hf.json").read_text())
    bad = [c for c in res["cases"] if not c["same"]][:3]
    assert res["identical"] == res["total"] > 0, bad
    for name, ch in res["adapter_changes"].items():
        assert ch["hf"] > 0 and ch["vllm"] > 0, (name, ch)  # the adapter is applied on both backends
    assert {"qwen3", "gemma3"} <= set(res["adapter_changes"])
    assert proc.returncode == 0, proc.stderr[-2000:]
