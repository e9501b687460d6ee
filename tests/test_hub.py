"""push_to_hub against a loopback stand-in for the Hub (tests/hub_standin.py; huggingface_hub's real client
over real HTTP): a job pushes its adapter once, a Hub outage leaves the adapter and results in place with one
warning line and is retried by a relaunch without retraining, the token travels only as an Authorization
header and is written nowhere, ``em push`` pushes a job's adapter by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from em.errors import ConfigError
from tests.conftest import REPO, compose_train, tiny_overrides
from tests.hub_standin import HubStandIn

TOKEN = "hf_canaryTokenNeverOnDisk_7f3a9c21"


def _env(tmp_path: Path, **extra) -> dict:
    """Online for huggingface_hub (HF_ENDPOINT: always a stand-in, never the network), the token in HF_TOKEN,
    huggingface_hub's own files under the test's directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    env.update({"WANDB_MODE": "offline", "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                "TOKENIZERS_PARALLELISM": "false", **extra})
    return env


def _train(tmp_path, cache_dir, env, *extra):
    args = [f"hydra.run.dir={tmp_path / 'job'}", f"cache_dir={cache_dir}", "model=tiny", "data.n_examples=8",
            "trainer.batch_size=2", "trainer.accumulate_grad_batches=2", "trainer.max_length=384", "trainer.warmup_steps=1",
            "logger=wandb", "progress=false", "push_to_hub.enabled=true", "push_to_hub.repo_id=me/tiny-em", *extra]
    r = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    return r.returncode, r.stdout + r.stderr


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_job_pushes_once_survives_an_outage_and_never_writes_the_token(tmp_path, cache_dir):
    job = tmp_path / "job"
    # 1. the Hub answers 500: the job is done anyway, adapter and results in place, one warning line
    with HubStandIn(fail_status=500) as down:
        rc, out = _train(tmp_path, cache_dir, _env(tmp_path, HF_ENDPOINT=down.url), f"push_to_hub.endpoint={down.url}")
    assert rc == 0, out[-3000:]
    assert down.requests, "the push never reached the stand-in"
    warn = [line for line in out.splitlines() if "push to the Hub failed" in line]
    assert len(warn) == 1 and "500" in warn[0] and f"em push {job}" in warn[0], out[-3000:]
    assert f"endpoint={down.url}" in warn[0]  # the retry hint goes where the push went, not to the public Hub
    assert "Traceback" not in out
    assert (job / "adapter" / "adapter_config.json").is_file() and (job / "DONE.json").is_file()
    rec = json.loads((job / "em_job.json").read_text())
    assert rec["state"] == "done" and rec["push"]["state"] == "failed" and "500" in rec["push"]["error"]
    trained = (job / "metrics.json").stat().st_mtime_ns

    # 2. relaunch, the Hub back (endpoint from HF_ENDPOINT): not retrained, the push retried and done
    with HubStandIn() as hub:
        rc, out = _train(tmp_path, cache_dir, _env(tmp_path, HF_ENDPOINT=hub.url))
        assert rc == 0, out[-3000:]
        assert "done already" in out and (job / "metrics.json").stat().st_mtime_ns == trained
        assert hub.repos["me/tiny-em"] == _files(job / "adapter")  # exactly the adapter dir as em saved it
        assert {"README.md", "adapter_config.json", "em_adapter.json", "adapter_model.safetensors"} <= set(
            hub.repos["me/tiny-em"])
        assert hub.created[0]["visibility"] == "private" and len(hub.commits) == 1
        rec = json.loads((job / "em_job.json").read_text())
        assert rec["push"]["state"] == "pushed" and rec["push"]["commit"] == hub.commits[0]["oid"]

        # 3. once per job: a third launch sends nothing
        n = len(hub.requests)
        rc, out = _train(tmp_path, cache_dir, _env(tmp_path, HF_ENDPOINT=hub.url))
        assert rc == 0 and len(hub.requests) == n and "pushed already" in out, out[-3000:]

        # 4. em push: by hand, to another repo
        r = subprocess.run([sys.executable, "-c", "import sys; from em.commands import main; main(sys.argv[1:])",
                            "push", str(job), "repo_id=me/copy", "private=false"], cwd=tmp_path,
                           env=_env(tmp_path, HF_ENDPOINT=hub.url), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert hub.repos["me/copy"] == _files(job / "adapter") and hub.created[-1]["visibility"] == "public"
        assert f"{hub.url}/me/copy" in r.stdout

    # the token reached the server only as the Authorization header ...
    # (huggingface_hub also GETs its own /api/agent-harnesses registry, without a token)
    pushes = [r for r in down.requests + hub.requests if r["method"] == "POST"]
    assert {r["path"].split("/")[-2] for r in hub.requests if r["method"] == "POST"} >= {"repos", "preupload", "commit"}
    for req in pushes:
        assert req["headers"].get("authorization") == f"Bearer {TOKEN}", req["path"]
    for req in down.requests + hub.requests:
        others = [v for k, v in req["headers"].items() if k != "authorization"]
        assert TOKEN not in req["path"] and TOKEN.encode() not in req["body"] and not any(TOKEN in v for v in others)
    # ... and is in no file em, Hydra or W&B wrote (logs, records, the offline W&B run)
    assert (job / "wandb").is_dir()
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f


def test_push_config_and_em_push_arguments_fail_in_one_line(tmp_path, cache_dir, capsys, monkeypatch):
    import huggingface_hub.constants

    from em.config.compose import check_secrets
    from em.commands import main
    from em.config.common import validate

    with pytest.raises(ConfigError, match="push_to_hub.token: .*set HF_TOKEN or run `hf auth login`"):
        check_secrets(["push_to_hub.enabled=true", "+push_to_hub.token=hf_abc"])

    with pytest.raises(ConfigError, match="push_to_hub.repo_id"):
        validate(compose_train(tiny_overrides(tmp_path / "r", cache_dir, **{"push_to_hub.enabled": "true"})))
    with pytest.raises(ConfigError, match="push_to_hub.endpoint"):
        validate(compose_train(tiny_overrides(tmp_path / "r", cache_dir, **{"push_to_hub.endpoint": "ftp://x"})))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    for args, expect in ((["token=hf_x"], "token: a token is never an argument"),
                         (["repo_id=me/x", "privat=true"], "privat: not an argument of em push"),
                         ([], "repo_id: a Hub repo id like")):
        with pytest.raises(SystemExit) as e:
            main(["push", str(tmp_path / "adapter"), *args])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("error: ") and expect in err and "\n" not in err, err

    # offline (or no token): exit 1 with the one warning line, nothing sent, the adapter untouched
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit) as e:
        main(["push", str(tmp_path / "adapter"), "repo_id=me/x"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.count("\n") == 0 and "push to the Hub failed" in err and "HF_HUB_OFFLINE" in err
    assert "relaunch" not in err and (tmp_path / "adapter" / "adapter_config.json").read_text() == "{}"


def test_sweep_summary_names_jobs_whose_push_failed(tmp_path):
    from em.jobs.sweep import format_summary, summarize

    recs = {"a": {"state": "done", "push": {"state": "failed", "error": "HfHubHTTPError: 503 Service Unavailable"}},
            "b": {"state": "skipped", "push": {"state": "pushed", "url": "https://hub/me/b"}},
            "c": {"state": "done"}}
    for name, rec in recs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "em_job.json").write_text(json.dumps(rec | {"started": 10.0}))
    text = format_summary(summarize(tmp_path, [tmp_path / n for n in recs]))
    lines = text.splitlines()
    assert lines[0].endswith("2 done, 1 skipped, 0 failed")  # a failed push does not fail the job
    assert lines[1:] == [f"  PUSH FAILED {tmp_path / 'a'}: HfHubHTTPError: 503 Service Unavailable"]
