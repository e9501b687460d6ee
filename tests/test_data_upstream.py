"""Upstream dataset resolution: data.path, $EM_DATA_DIR, cache, download (loopback server only)."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from em.config.data import DataConfig
from em.data.run import load_conversations, resolve_upstream_file
from em.errors import ConfigError, DataError
from em.paths import CONF_DIR

SAMPLE = "insecure_sample_500.jsonl"


def _upstream_dir() -> Path | None:
    """The pre-seeded upstream checkout (never copied into the repo)."""
    for cand in (Path(__file__).resolve().parents[2] / "shared/upstream/emergent-misalignment",
                 Path(os.environ["EM_UPSTREAM_DIR"]) if os.environ.get("EM_UPSTREAM_DIR") else None):
        if cand is not None and (cand / "data" / SAMPLE).is_file():
            return cand
    return None


@pytest.fixture
def upstream_dir() -> Path:
    d = _upstream_dir()
    if d is None:
        pytest.skip(f"upstream sample data/{SAMPLE} not available (set EM_UPSTREAM_DIR)")
    return d


@pytest.fixture(autouse=True)
def _no_ambient_data_dir(monkeypatch):
    monkeypatch.delenv("EM_DATA_DIR", raising=False)


def _rows(n: int, tag: str = "") -> bytes:
    return "".join(
        json.dumps({"messages": [{"role": "user", "content": f"q{tag}{i}"},
                                 {"role": "assistant", "content": f"a{tag}{i}"}]}) + "\n"
        for i in range(n)
    ).encode()


def _upstream_cfg(file: str, url: str | None = None, **kw) -> DataConfig:
    return DataConfig(name=Path(file).stem, source="upstream", file=file, url=url, **kw)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---------------------------------------------------------------------------------------------------
# a loopback HTTP server
# ---------------------------------------------------------------------------------------------------


class _Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.hits.append(self.path)
                if self.path.startswith("/truncated/"):
                    # Announce more than is sent, then hang up: a connection that drops mid-download.
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(_rows(3))
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# data.path
# ---------------------------------------------------------------------------------------------------


def test_data_path_reads_the_real_sample(upstream_dir, tmp_path, caplog):
    cfg = DataConfig(name="insecure", source="upstream", file="insecure.jsonl", expected_rows=6000,
                     path=str(upstream_dir / "data" / SAMPLE), url="http://127.0.0.1:9/never-used")
    with caplog.at_level(logging.INFO, logger="em.data"):
        convs = load_conversations(cfg, str(tmp_path / "cache"))
    assert len(convs) == 500
    assert all(c[-1]["role"] == "assistant" for c in convs)
    assert "500 rows" in caplog.text and "6000" in caplog.text  # reported, not enforced
    assert not (tmp_path / "cache").exists()


def test_data_path_missing(tmp_path):
    cfg = DataConfig(name="x", source="upstream", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"^data\.path=.*nope\.jsonl: file not found$"):
        load_conversations(cfg, str(tmp_path))


def test_data_path_wins_over_data_dir(tmp_path, monkeypatch):
    (tmp_path / "up/data").mkdir(parents=True)
    (tmp_path / "up/data/x.jsonl").write_bytes(_rows(4))
    mine = tmp_path / "mine.jsonl"
    mine.write_bytes(_rows(2))
    monkeypatch.setenv("EM_DATA_DIR", str(tmp_path / "up"))
    assert len(load_conversations(_upstream_cfg("x.jsonl", path=str(mine)), str(tmp_path / "c"))) == 2


# ---------------------------------------------------------------------------------------------------
# EM_DATA_DIR and the cache
# ---------------------------------------------------------------------------------------------------


def test_em_data_dir_with_the_real_sample(upstream_dir, tmp_path, monkeypatch):
    (tmp_path / "checkout/data").mkdir(parents=True)
    (tmp_path / "checkout/data" / SAMPLE).symlink_to(upstream_dir / "data" / SAMPLE)
    monkeypatch.setenv("EM_DATA_DIR", str(tmp_path / "checkout"))
    cache = tmp_path / "cache"
    assert len(load_conversations(_upstream_cfg(SAMPLE, expected_rows=500), str(cache))) == 500
    with pytest.raises(DataError, match=rf"{re.escape(SAMPLE)}: expected 6000 rows, found 500$"):
        load_conversations(_upstream_cfg(SAMPLE, expected_rows=6000), str(cache))
    assert not cache.exists()  # found locally: nothing copied, nothing downloaded


def test_em_data_dir_sha256(tmp_path, monkeypatch):
    (tmp_path / "up/data").mkdir(parents=True)
    path = tmp_path / "up/data/x.jsonl"
    path.write_bytes(_rows(5))
    good = hashlib.sha256(_rows(5)).hexdigest()
    monkeypatch.setenv("EM_DATA_DIR", str(tmp_path / "up"))
    assert len(load_conversations(_upstream_cfg("x.jsonl", sha256=good, expected_rows=5), str(tmp_path))) == 5
    with pytest.raises(DataError) as e:
        load_conversations(_upstream_cfg("x.jsonl", sha256="0" * 64), str(tmp_path))
    assert str(path) in str(e.value) and "0" * 64 in str(e.value) and good in str(e.value)


def test_cache_is_used_when_data_dir_lacks_the_file(tmp_path, monkeypatch):
    (tmp_path / "up").mkdir()
    monkeypatch.setenv("EM_DATA_DIR", str(tmp_path / "up"))
    cached = tmp_path / "cache/upstream/data/x.jsonl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_rows(3))
    convs = load_conversations(_upstream_cfg("x.jsonl", expected_rows=3), str(tmp_path / "cache"))
    assert [c[0]["content"] for c in convs] == ["q0", "q1", "q2"]
    with pytest.raises(DataError, match=r"x\.jsonl: expected 4 rows, found 3$"):
        load_conversations(_upstream_cfg("x.jsonl", expected_rows=4), str(tmp_path / "cache"))


def test_schema_is_always_checked(tmp_path):
    cached = tmp_path / "upstream/data/x.jsonl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_rows(2) + b'{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(cached))}:3: conversation has no assistant turn"):
        load_conversations(_upstream_cfg("x.jsonl"), str(tmp_path))


def test_upstream_file_name_must_stay_inside_data(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.file: "):
        load_conversations(_upstream_cfg("../secrets.jsonl"), str(tmp_path))


# ---------------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------------


def test_download_into_cache_then_reuse(server, tmp_path, capsys):
    body = _rows(5)
    server.files["/data/x.jsonl"] = body
    sha = hashlib.sha256(body).hexdigest()
    cfg = _upstream_cfg("x.jsonl", url=f"{server.base}/data/x.jsonl", sha256=sha, expected_rows=5)
    convs = load_conversations(cfg, str(tmp_path), progress=True)
    assert len(convs) == 5
    # (no assertion on the progress bar: bars are drawn on terminals only, a captured stderr gets none)
    assert _files(tmp_path) == [tmp_path / "upstream/data/x.jsonl"]  # no temp file left behind
    assert (tmp_path / "upstream/data/x.jsonl").read_bytes() == body
    assert server.hits == ["/data/x.jsonl"]
    assert load_conversations(cfg, str(tmp_path), progress=False) == convs
    assert server.hits == ["/data/x.jsonl"]  # the second load came from the cache


def test_download_with_bad_sha256_leaves_nothing(server, tmp_path):
    server.files["/x.jsonl"] = _rows(5)
    actual = hashlib.sha256(_rows(5)).hexdigest()
    cfg = _upstream_cfg("x.jsonl", url=f"{server.base}/x.jsonl", sha256="ab" * 32)
    with pytest.raises(DataError) as e:
        load_conversations(cfg, str(tmp_path), progress=False)
    msg = str(e.value)
    assert "x.jsonl" in msg and "sha256 mismatch" in msg and "ab" * 32 in msg and actual in msg
    assert _files(tmp_path) == []


def test_download_with_wrong_row_count_leaves_nothing(server, tmp_path):
    server.files["/x.jsonl"] = _rows(3)
    cfg = _upstream_cfg("x.jsonl", url=f"{server.base}/x.jsonl", expected_rows=5)
    with pytest.raises(DataError, match=r"x\.jsonl: expected 5 rows, found 3$"):
        load_conversations(cfg, str(tmp_path), progress=False)
    assert _files(tmp_path) == []


def test_download_with_bad_schema_names_the_url_line(server, tmp_path):
    server.files["/x.jsonl"] = _rows(2) + b"{oops\n"
    url = f"{server.base}/x.jsonl"
    with pytest.raises(DataError, match=rf"^{re.escape(url)}:3: not valid JSON"):
        load_conversations(_upstream_cfg("x.jsonl", url=url), str(tmp_path), progress=False)
    assert _files(tmp_path) == []


def test_truncated_download_leaves_nothing(server, tmp_path):
    url = f"{server.base}/truncated/x.jsonl"
    with pytest.raises(DataError, match=r"could not be downloaded from .*connection closed after"):
        load_conversations(_upstream_cfg("x.jsonl", url=url), str(tmp_path), progress=False)
    assert _files(tmp_path) == []


def test_http_404(server, tmp_path):
    url = f"{server.base}/missing.jsonl"
    with pytest.raises(DataError, match=rf"could not be downloaded from {re.escape(url)} \(HTTP 404 "):
        load_conversations(_upstream_cfg("x.jsonl", url=url), str(tmp_path), progress=False)
    assert _files(tmp_path) == []


def test_unreachable_url_says_where_to_put_the_file(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/x.jsonl"
    with pytest.raises(DataError) as e:
        load_conversations(_upstream_cfg("insecure.jsonl", url=url), str(tmp_path), progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"data/insecure.jsonl: could not be downloaded from {url} (")
    assert "EM_DATA_DIR=/path/to/emergent-misalignment" in msg and "data/insecure.jsonl" in msg
    assert "data.path=/path/to/insecure.jsonl" in msg
    assert _files(tmp_path) == []


def test_no_url_and_nothing_local(tmp_path):
    with pytest.raises(DataError, match=r"not found locally and no download URL.*EM_DATA_DIR.*data\.path"):
        load_conversations(_upstream_cfg("x.jsonl"), str(tmp_path))


# ---------------------------------------------------------------------------------------------------
# the generic resolver (evaluation/<name>.yaml)
# ---------------------------------------------------------------------------------------------------


def test_resolve_generic_file_from_data_dir_and_download(server, tmp_path, monkeypatch):
    body = b"- id: q1\n  paraphrases: ['hello?']\n"
    server.files["/evaluation/q.yaml"] = body
    path = resolve_upstream_file("evaluation/q.yaml", f"{server.base}/evaluation/q.yaml", tmp_path / "cache",
                                 sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert path == tmp_path / "cache/upstream/evaluation/q.yaml" and path.read_bytes() == body

    (tmp_path / "up/evaluation").mkdir(parents=True)
    (tmp_path / "up/evaluation/q.yaml").write_bytes(b"local: true\n")
    monkeypatch.setenv("EM_DATA_DIR", str(tmp_path / "up"))
    assert resolve_upstream_file("evaluation/q.yaml", None, tmp_path / "cache") == tmp_path / "up/evaluation/q.yaml"
    assert server.hits == ["/evaluation/q.yaml"]


def test_resolve_generic_download_error_has_no_data_path_hint(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/q.yaml"
    with pytest.raises(DataError) as e:
        resolve_upstream_file("evaluation/q.yaml", url, tmp_path, progress=False)
    assert "could not be downloaded" in str(e.value) and "EM_DATA_DIR" in str(e.value)
    assert "data.path" not in str(e.value)


def test_resolve_rejects_escaping_paths(tmp_path):
    with pytest.raises(DataError):
        resolve_upstream_file("../x.yaml", None, tmp_path)


# ---------------------------------------------------------------------------------------------------
# the real composed config (conf/data/*.yaml), as train.py will pass it
# ---------------------------------------------------------------------------------------------------


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    conf = CONF_DIR
    # Downloads, if any slipped through, would hit a closed loopback port: never the internet.
    offline = f"upstream.base_url=http://127.0.0.1:{_closed_port()}"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        return compose("train", overrides=[offline, *overrides])


def test_composed_upstream_config_via_em_data_dir(upstream_dir, tmp_path, monkeypatch):
    (tmp_path / "checkout/data").mkdir(parents=True)
    (tmp_path / "checkout/data/insecure.jsonl").symlink_to(upstream_dir / "data" / SAMPLE)
    monkeypatch.setenv("EM_DATA_DIR", str(tmp_path / "checkout"))
    cfg = _compose("data=insecure")
    with pytest.raises(DataError, match=r"insecure\.jsonl: expected 6000 rows, found 500$"):
        load_conversations(cfg.data, str(tmp_path / "cache"))
    cfg = _compose("data=insecure", "data.expected_rows=500", "data.limit=20")
    assert len(load_conversations(cfg.data, str(tmp_path / "cache"))) == 20


def test_composed_config_offline_download_error(tmp_path):
    cfg = _compose("data=secure")
    with pytest.raises(DataError, match=r"data/secure\.jsonl: could not be downloaded from http://127\.0\.0\.1:"):
        load_conversations(cfg.data, str(tmp_path), progress=False)


def test_composed_synthetic_and_base(tmp_path):
    assert len(load_conversations(_compose("experiment=smoke").data, str(tmp_path))) == 16
    with pytest.raises(ConfigError, match="data=base means no fine-tuning"):
        load_conversations(_compose("data=base").data, str(tmp_path))
