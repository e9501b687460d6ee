"""Issue 19 cases 6 and 9: a full disk or a read-only output directory is one line naming the file and what it
held, exit 1 (the machine's fault; bad input is 2), in train.py / evaluate.py / analyze.py; outputs honour the
umask. The disk is a real tmpfs (mounted when the tests run as root) or a patched ``os.write``."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from em.runtime import StorageError, storage_fault
from tests.conftest import REPO, tiny_overrides
from tests.eval_helpers import eval_overrides, subprocess_env


def script(name: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / name), *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def one_line(r: subprocess.CompletedProcess, status: int) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == status, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    return lines[0]


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "1m", read_only: bool = False):
    """A real tmpfs of ``size`` at ``where`` (read-only: remounted ro); skips where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode(errors='replace').strip()[:80]})")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(mount: Path, leave: int) -> None:
    """Fill the file system at ``mount`` until about ``leave`` bytes are free."""
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    with open(mount / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, free - leave))


# ------------------------------------------------------------------ the classifier over real faults
def test_a_full_sqlite_database_names_its_file(tmp_path):
    db = tmp_path / "judge_cache.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
    conn.commit()
    conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")  # real SQLITE_FULL
    with pytest.raises(sqlite3.OperationalError, match="full") as ei:
        conn.executemany("INSERT INTO t VALUES (?, ?)", ((str(i), "x" * 500) for i in range(1000)))
    fault = storage_fault(ei.value)
    assert isinstance(fault, StorageError) and fault.exit_status == 1
    assert str(fault).startswith(f"{db}: no space left on device [errno 28] while writing the judge cache;")


class _FullFile:
    """A file whose writes fail as a full disk's do (``ENOSPC`` from the write, the file itself opened)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@contextlib.contextmanager
def full_disk():
    """Every ``open(..., "w"/"a")`` of this process (``open``, ``io.open``: pathlib's) writes into a full disk."""
    import builtins
    import io

    real = builtins.open

    def patched(file, mode="r", *a, **k):
        f = real(file, mode, *a, **k)
        return _FullFile(f) if any(c in mode for c in "wax+") else f

    builtins.open = io.open = patched
    try:
        yield
    finally:
        builtins.open = io.open = real


def test_a_full_disk_in_the_answer_store_names_the_store_and_what_is_kept(tmp_path):
    from em.evaluate.store import AnswerStore

    store = AnswerStore(tmp_path / "answers.jsonl", {"seed": 0})
    store.load()
    rec = {"format": "plain", "question_id": "q", "paraphrase": 0, "sample": 0, "answer": "a"}
    store.append([rec, rec | {"sample": 1}])
    with full_disk(), pytest.raises(OSError) as ei:
        store.append([rec | {"sample": 2}])
    line = str(storage_fault(ei.value))
    assert line.startswith(f"{tmp_path / 'answers.jsonl'}: no space left on device [errno 28] while writing the "
                           "answers (append-only store); 2 answers kept in"), line
    assert "rerun the same command: it resumes" in line


def test_run_main_exits_1_with_one_line_for_a_full_disk_and_2_for_bad_input(tmp_path, capsys):
    from em.commands import run_main
    from em.errors import ConfigError
    from em.runtime import atomic_write_text

    with full_disk(), pytest.raises(SystemExit) as ei:
        run_main(lambda _cfg: atomic_write_text(tmp_path / "summary.json", "x"), None)
    assert ei.value.code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'summary.json'}: no space left on device"), err
    assert "while writing the run summary" in err[0]
    assert not list(tmp_path.glob(".summary.json.*"))  # the temp file is gone

    def bad(_cfg):
        raise ConfigError("samples: must be > 0")

    with pytest.raises(SystemExit) as ei:
        run_main(bad, None)
    assert ei.value.code == 2


def test_other_errors_are_not_storage_faults():
    assert storage_fault(ValueError("x")) is None
    assert storage_fault(OSError(errno.ENOENT, "No such file")) is None
    assert storage_fault(sqlite3.OperationalError("no such table: t")) is None


# ------------------------------------------------------------------ the scripts on a real full / read-only tmpfs
def test_evaluate_on_a_full_disk_is_one_line_exit_1_and_resumes(tmp_path, cache_dir):
    with tmpfs(tmp_path / "mnt", "256k") as mnt:
        run_dir = mnt / "run"
        args = [*eval_overrides(run_dir, cache_dir, judge="none", samples=2, format="[plain]"),
                f"hydra.run.dir={run_dir}", f"judge_cache={tmp_path / 'judge_cache.sqlite'}"]
        fill(mnt, 2048)  # a couple of KB: the run starts, then the disk is full
        r = script("evaluate.py", *args)
        line = one_line(r, 1)
        assert f"{mnt}" in line and "no space left on device [errno 28] while writing" in line, line
        assert "rerun the same command" in line
        (mnt / "filler").unlink()  # space again: the same command finishes
        r2 = script("evaluate.py", *args)
        assert r2.returncode == 0, r2.stderr[-2000:]
        assert (run_dir / "responses.parquet").is_file()


@pytest.mark.parametrize("name", ["evaluate.py", "train.py", "analyze.py"])
def test_a_read_only_output_directory_is_one_line_exit_1(tmp_path, cache_dir, name):
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as ro:
        run_dir = ro / "outputs" / "run"
        if name == "evaluate.py":
            args = eval_overrides(run_dir, cache_dir, judge="none")
        elif name == "train.py":
            args = tiny_overrides(run_dir, cache_dir)
        else:
            args = [f"inputs=[{tmp_path}]"]
        r = script(name, *args, f"hydra.run.dir={run_dir}")
        line = one_line(r, 1)
        assert line.startswith(f"error: hydra.run.dir: {ro} is not writable (read-only file system [errno 30])"), line


# ------------------------------------------------------------------ case 9: the umask
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, mask, mode):
    import pandas as pd

    from em.runtime import atomic_write, atomic_write_csv, atomic_write_json, atomic_write_text

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        atomic_write_json(tmp_path / "summary.json", {"a": 1})
        atomic_write_csv(tmp_path / "responses.csv", pd.DataFrame({"a": [1]}))
        atomic_write(tmp_path / "responses.parquet", lambda p: pd.DataFrame({"a": [1]}).to_parquet(p))
    finally:
        os.umask(old)
    for f in ("config.yaml", "summary.json", "responses.csv", "responses.parquet"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == mode, f


def test_a_published_adapter_directory_honours_the_umask(tmp_path):
    """safetensors' save_file writes 0600 (the trained adapter, the snapshots); publishing gives 0644 at umask 022."""
    import torch
    from safetensors.torch import save_file

    from em.runtime import atomic_replace_dir

    old = os.umask(0o022)
    try:
        tmp = tmp_path / "adapter.tmp"
        tmp.mkdir()
        save_file({"lora_A": torch.zeros(2, 2)}, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text("{}")
        atomic_replace_dir(tmp, tmp_path / "adapter")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "adapter").iterdir()}
    assert modes == {"adapter_model.safetensors": 0o644, "adapter_config.json": 0o644}
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o755


def test_the_config_records_of_an_accepted_run_honour_the_umask(tmp_path):
    from omegaconf import OmegaConf

    from em.jobs.records import write_config_records

    old = os.umask(0o022)
    try:
        write_config_records(tmp_path, OmegaConf.create({"seed": 0}))
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), files


def test_a_second_fault_while_reporting_the_first_names_the_first_file(tmp_path):
    """A failed job writes error.log on the same full disk: the line still names the file that filled it."""
    ckpt = str(tmp_path / "checkpoints" / "last.ckpt")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", ckpt)
        except OSError:
            raise OSError(errno.ENOSPC, "No space left on device")  # (a write without a file name)
    except OSError as e:
        line = str(storage_fault(e))
    assert line.startswith(f"{ckpt}: no space left on device [errno 28] while writing a training checkpoint;"), line


def test_pyarrows_parquet_writer_on_a_full_tmpfs_names_the_table(tmp_path):
    import pandas as pd

    from em.runtime import atomic_write

    df = pd.DataFrame({"answer": [os.urandom(64).hex() for _ in range(4000)]})  # ~0.5 MB, incompressible
    with tmpfs(tmp_path / "mnt", "128k") as mnt:
        with pytest.raises(Exception) as ei:
            atomic_write(mnt / "responses.parquet", lambda p: df.to_parquet(p))
        assert not list(mnt.iterdir())  # no torn table, no temp file
    line = str(storage_fault(ei.value))
    assert line.startswith(f"{mnt / 'responses.parquet'}: no space left on device [errno 28] while writing the "
                           "responses table;"), (type(ei.value), str(ei.value), line)
