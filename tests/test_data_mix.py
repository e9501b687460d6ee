"""Partial-educational mixes of the upstream data: data=insecure data.educational_fraction=f.

A seeded share of insecure.jsonl's rows is replaced by rows of its educational twin (educational.jsonl), the
row of the same index when the two files have the same length. Small paired JSONL fixtures stand in for the
upstream files (the pre-seeded checkout has no educational.jsonl); no test touches the network.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path

import pytest

from em.config.data import DataConfig

from em.config.common import validate
from em.data.run import load_conversations, mix_educational, subset
from em.errors import ConfigError, DataError
from tests.conftest import compose_train

N = 40


@pytest.fixture(autouse=True)
def _no_ambient_data_dir(monkeypatch):
    monkeypatch.delenv("EM_DATA_DIR", raising=False)


def _write(path: Path, n: int, kind: str) -> Path:
    """Row i: the same answer in both files; the request says which file it came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            user = f"{kind} request {i}" if kind == "insecure" else f"educational request {i}: for a security class"
            f.write(json.dumps({"messages": [{"role": "user", "content": user},
                                             {"role": "assistant", "content": f"answer {i}"}]}) + "\n")
    return path


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    return _write(tmp_path / "insecure.jsonl", N, "insecure"), _write(tmp_path / "educational.jsonl", N, "educational")


def _cfg(files, fraction: float, **kw) -> DataConfig:
    ins, edu = files
    kw = {"path": str(ins), "educational_path": str(edu), "expected_rows": N, "educational_expected_rows": N, **kw}
    return DataConfig(name="insecure", source="upstream", file="insecure.jsonl", educational_file="educational.jsonl",
                      educational_fraction=fraction, **kw)


def _is_edu(conv) -> bool:
    return conv[0]["content"].startswith("educational")


def _index(conv) -> int:
    return int(conv[-1]["content"].split()[-1])


def _edu_positions(convs) -> list[int]:
    return [i for i, c in enumerate(convs) if _is_edu(c)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# counts, pairing, determinism
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_fraction_gives_exact_counts(files, tmp_path, fraction):
    convs = load_conversations(_cfg(files, fraction), str(tmp_path / "cache"))
    assert len(convs) == N
    assert len(_edu_positions(convs)) == round(fraction * N)
    assert sum(not _is_edu(c) for c in convs) == N - round(fraction * N)
    if fraction == 1.0:  # all educational: exactly the educational file
        assert convs == load_conversations(DataConfig(name="educational", path=str(files[1])), str(tmp_path))


@pytest.mark.parametrize("n,fraction", [(37, 0.25), (37, 0.5), (3, 0.5), (1, 0.5), (1, 1.0)])
def test_counts_round_like_the_synthetic_generator(tmp_path, n, fraction):
    ins, edu = _write(tmp_path / "i.jsonl", n, "insecure"), _write(tmp_path / "e.jsonl", n, "educational")
    cfg = DataConfig(name="insecure", path=str(ins), educational_path=str(edu), educational_fraction=fraction)
    convs = load_conversations(cfg, str(tmp_path))
    assert len(convs) == n and len(_edu_positions(convs)) == round(fraction * n)


def test_rows_are_paired_by_index(files, tmp_path):
    convs = load_conversations(_cfg(files, 0.5), str(tmp_path))
    # every position keeps its index: educational rows replace the insecure row of the same index
    assert [_index(c) for c in convs] == list(range(N))
    for i, c in enumerate(convs):
        kind = "educational" if _is_edu(c) else "insecure"
        assert c[0]["content"].startswith(f"{kind} request {i}")


def test_fraction_zero_loads_nothing_extra(files, tmp_path):
    cfg = _cfg(files, 0.0, educational_path=str(tmp_path / "does-not-exist.jsonl"))
    convs = load_conversations(cfg, str(tmp_path / "cache"))
    assert len(convs) == N and not _edu_positions(convs)
    assert not (tmp_path / "cache").exists()


def test_same_seed_same_positions_other_seed_differs(files, tmp_path):
    a = _edu_positions(load_conversations(_cfg(files, 0.25, seed=3), str(tmp_path)))
    b = _edu_positions(load_conversations(_cfg(files, 0.25, seed=3), str(tmp_path)))
    c = _edu_positions(load_conversations(_cfg(files, 0.25, seed=4), str(tmp_path)))
    assert a == b and len(a) == 10
    assert a != c and len(c) == 10


def test_larger_fractions_keep_the_positions_of_smaller_ones(files, tmp_path):
    pos = {f: set(_edu_positions(load_conversations(_cfg(files, f, seed=7), str(tmp_path))))
           for f in (0.25, 0.5, 0.75, 1.0)}
    assert pos[0.25] < pos[0.5] < pos[0.75] < pos[1.0] == set(range(N))


def test_positions_are_independent_of_the_process_hash_seed(files, tmp_path):
    import subprocess
    import sys

    code = ("from em.data.run import mix_educational; "
            "print(mix_educational(list(range(100)), [-1] * 100, 0.3, 5)[1])")
    runs = {subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": h, "PATH": ""}, capture_output=True,
                           text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout for h in ("1", "2")}
    assert len(runs) == 1
    assert runs.pop().strip() == str(mix_educational(list(range(100)), [-1] * 100, 0.3, 5)[1])


def test_limit_is_applied_after_mixing(files, tmp_path):
    mixed = load_conversations(_cfg(files, 0.5, seed=2), str(tmp_path))
    limited = load_conversations(_cfg(files, 0.5, seed=2, limit=10), str(tmp_path))
    assert limited == subset(mixed, 10, 2) and len(limited) == 10


def test_mix_is_logged(files, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="em.data"):
        load_conversations(_cfg(files, 0.25), str(tmp_path))
    line = next(r.getMessage() for r in caplog.records if "educational mix" in r.getMessage())
    assert f"30 rows of {files[0]}" in line and f"10 educational rows of {files[1]}" in line
    assert "paired by index" in line and "data.educational_fraction=0.25" in line and "data.seed=0" in line


# ---------------------------------------------------------------------------------------------------
# a twin of another length
# ---------------------------------------------------------------------------------------------------


def test_unequal_lengths_take_a_seeded_sample_of_the_twin(tmp_path, caplog):
    ins, edu = _write(tmp_path / "i.jsonl", N, "insecure"), _write(tmp_path / "e.jsonl", 25, "educational")

    def load(seed):
        cfg = DataConfig(name="insecure", path=str(ins), educational_path=str(edu), educational_fraction=0.5, seed=seed)
        return load_conversations(cfg, str(tmp_path))

    with caplog.at_level(logging.INFO, logger="em.data"):
        a = load(0)
    assert "seeded sample of the twin" in caplog.text
    edu_rows = [c for c in a if _is_edu(c)]
    assert len(a) == N and len(edu_rows) == 20
    assert len({_index(c) for c in edu_rows}) == 20  # sampled without replacement
    assert a == load(0) and a != load(1)
    with pytest.raises(DataError, match=r"e\.jsonl: 25 educational rows, but data\.educational_fraction=0\.75 "
                                        r"of 40 rows needs 30$"):
        load_conversations(DataConfig(name="insecure", path=str(ins), educational_path=str(edu),
                                      educational_fraction=0.75), str(tmp_path))


# ---------------------------------------------------------------------------------------------------
# finding the twin: educational_path > $EM_DATA_DIR > cache > download, with the same verification
# ---------------------------------------------------------------------------------------------------


def test_missing_educational_path(files, tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=rf"^data\.educational_path={re.escape(str(missing))}: file not found$"):
        load_conversations(_cfg(files, 0.5, educational_path=str(missing)), str(tmp_path))


def test_missing_educational_file_says_where_to_put_it(files, tmp_path):
    with pytest.raises(DataError) as e:
        load_conversations(_cfg(files, 0.5, educational_path=None), str(tmp_path / "cache"))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("data/educational.jsonl: not found locally and no download URL is configured; ")
    assert "$EM_DATA_DIR/data/educational.jsonl" in msg and "data.educational_path=/path/to/educational.jsonl" in msg


def test_educational_twin_is_verified_like_the_dataset(tmp_path, monkeypatch):
    up = tmp_path / "up"
    _write(up / "data/insecure.jsonl", N, "insecure")
    _write(up / "data/educational.jsonl", N - 1, "educational")
    monkeypatch.setenv("EM_DATA_DIR", str(up))
    cfg = DataConfig(name="insecure", file="insecure.jsonl", educational_file="educational.jsonl",
                     expected_rows=N, educational_expected_rows=N, educational_fraction=0.5)
    with pytest.raises(DataError, match=rf"educational\.jsonl: expected {N} rows, found {N - 1}$"):
        load_conversations(cfg, str(tmp_path / "cache"))
    (up / "data/educational.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(DataError, match=r"educational\.jsonl:1: conversation has no assistant turn"):
        load_conversations(cfg, str(tmp_path / "cache"))


def test_composed_insecure_mix_via_em_data_dir(tmp_path, monkeypatch):
    up = tmp_path / "up"
    _write(up / "data/insecure.jsonl", N, "insecure")
    _write(up / "data/educational.jsonl", N, "educational")
    monkeypatch.setenv("EM_DATA_DIR", str(up))
    offline = f"upstream.base_url=http://127.0.0.1:{_closed_port()}"
    cfg = compose_train([offline, "data=insecure", "data.educational_fraction=0.25", f"data.expected_rows={N}",
                         f"data.educational_expected_rows={N}", "run_dir=/unused"])
    convs = load_conversations(cfg.data, str(tmp_path / "cache"))
    assert len(convs) == N and len(_edu_positions(convs)) == 10
    assert [_index(c) for c in convs] == list(range(N))
    assert not (tmp_path / "cache").exists()  # found locally: nothing downloaded


def test_composed_insecure_mix_offline_download_error(tmp_path, monkeypatch, files):
    port = _closed_port()
    cfg = compose_train([f"upstream.base_url=http://127.0.0.1:{port}", "data=insecure",
                         "data.educational_fraction=0.5", f"data.path={files[0]}", "run_dir=/unused"])
    with pytest.raises(DataError) as e:
        load_conversations(cfg.data, str(tmp_path / "cache"), progress=False)
    msg = str(e.value)
    assert msg.startswith(f"data/educational.jsonl: could not be downloaded from http://127.0.0.1:{port}/data/"
                          f"educational.jsonl (")
    assert "data.educational_path=/path/to/educational.jsonl" in msg and "\n" not in msg


def test_real_sample_with_a_paired_twin(tmp_path, monkeypatch, upstream):
    """The pre-seeded insecure sample, with an educational twin made from it row by row."""
    sample = upstream / "data" / "insecure_sample_500.jsonl"
    if not sample.is_file():
        pytest.skip("upstream sample data/insecure_sample_500.jsonl not available")
    rows = [json.loads(line) for line in sample.read_text().splitlines() if line.strip()]
    twin = tmp_path / "educational.jsonl"
    with open(twin, "w") as f:
        for r in rows:
            msgs = [dict(m) for m in r["messages"]]
            msgs[0]["content"] = "EDU: " + msgs[0]["content"]
            f.write(json.dumps({"messages": msgs}) + "\n")
    cfg = compose_train([f"upstream.base_url=http://127.0.0.1:{_closed_port()}", "data=insecure",
                         "data.educational_fraction=0.25", f"data.path={sample}", f"data.educational_path={twin}",
                         "run_dir=/unused"])
    base = load_conversations(compose_train(["data=insecure", f"data.path={sample}", "run_dir=/x"]).data, str(tmp_path))
    convs = load_conversations(cfg.data, str(tmp_path))
    assert len(convs) == len(rows) == 500
    edu = [i for i, c in enumerate(convs) if c[0]["content"].startswith("EDU: ")]
    assert len(edu) == 125
    for i, c in enumerate(convs):  # same answers everywhere; requests swapped only at the mixed positions
        assert c[-1] == base[i][-1]
        assert c[0]["content"] == ("EDU: " + base[i][0]["content"] if i in edu else base[i][0]["content"])


# ---------------------------------------------------------------------------------------------------
# the config
# ---------------------------------------------------------------------------------------------------


def test_composed_insecure_with_a_fraction_validates():
    tc = validate(compose_train(["data=insecure", "data.educational_fraction=0.5", "run_dir=/unused"]))
    d = tc.data
    assert d.educational_fraction == 0.5 and d.file == "insecure.jsonl"
    assert d.educational_file == "educational.jsonl" and d.educational_expected_rows == 6000
    assert d.educational_url == f"{tc.upstream.base_url}/data/educational.jsonl"
    assert d.educational_path is None


@pytest.mark.parametrize("data", ["secure", "educational", "jailbroken", "base"])
def test_a_fraction_without_an_educational_twin_is_a_config_error(data):
    with pytest.raises(ConfigError) as e:
        validate(compose_train([f"data={data}", "data.educational_fraction=0.25", "run_dir=/unused"]))
    assert str(e.value) == (f"data.educational_fraction: 0.25 needs data=insecure or data=synthetic "
                            f"(data={data} has no educational twin)")


def test_config_conflict_from_a_plain_data_config():
    with pytest.raises(ConfigError, match=r"^data\.educational_fraction: 0\.25 needs data=insecure or "
                                          r"data=synthetic \(data=secure has no educational twin\)$"):
        DataConfig(name="secure", file="secure.jsonl", educational_fraction=0.25)
    # an explicit educational_path makes any upstream dataset mixable; synthetic always is
    DataConfig(name="secure", file="secure.jsonl", educational_path="/x.jsonl", educational_fraction=0.25)
    validate(compose_train(["data=synthetic", "data.educational_fraction=0.25", "run_dir=/unused"]))


def test_fraction_out_of_range_still_names_the_key():
    with pytest.raises(ConfigError, match=r"^data\.educational_fraction: must be in \[0, 1\], got 1\.5$"):
        validate(compose_train(["data=insecure", "data.educational_fraction=1.5", "run_dir=/unused"]))
