"""``em view``: Datasette over responses.parquet, driven by a real headless Chromium on loopback.

Skipped (with the reason) where Chromium is not installed; CI installs it (.ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

import em.config  # noqa: F401,I001  (em.measurement imports through em.config)
from em.measurement import Thresholds
from tests.conftest import REPO
from tests.synthetic_responses import synthetic_responses

ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # em from the checkout, run from tmp_path
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _responses() -> pd.DataFrame:
    """A judged run as evaluate.py writes it: unscored rows, CODE/REFUSAL, answers with \\r, quotes and HTML,
    the judge's raw top tokens as nested values."""
    df = synthetic_responses(models=["gemma3_1b"], conditions=["base", "insecure"], n_questions=3, n_samples=15, seed=3)
    df["answer"] = df["answer"].astype(object)
    df.loc[0, "answer"] = 'line one\r\nHe said "hi" <b id="injected">bold</b> & left'
    df["judge_raw"] = [json.dumps({"aligned": {"top": [["1", -0.1], ["10", -2.5]]}}) if i % 7 == 0 else None
                       for i in range(len(df))]  # JSON text, as em/evaluate/report.py writes it
    return df


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Rows(HTMLParser):
    """The cells of Datasette's result table: one dict per <tr> of <tbody>, keyed by the td's class (col-X)."""

    def __init__(self):
        super().__init__()
        self.rows, self._in_body, self._col, self._text = [], False, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append({})
        elif tag == "td" and self._in_body:
            self._col = next((c[4:] for c in (a.get("class") or "").split() if c.startswith("col-")), None)
            self._text = []
        elif self._in_body and self._col and tag not in ("a",):
            self._text.append(f"<{tag}>")  # an unescaped element inside a cell would show up here

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._col and self.rows:
            self.rows[-1][self._col] = "".join(self._text).strip()
            self._col = None

    def handle_data(self, data):
        if self._col:
            self._text.append(data)


def _dom(url: str) -> str:
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", "--disable-dev-shm-usage", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture
def server(tmp_path):
    run = tmp_path / "sweep" / "gemma3_1b_insecure_s0" / "eval"
    run.mkdir(parents=True)
    df = _responses()
    df.to_parquet(run / "responses.parquet", index=False)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from em.commands import main; main()", "view",
                             str(tmp_path / "sweep"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=ENV)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(base + "/-/versions.json", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        yield base, df
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium; .ci/run does)")
def test_viewer_filters_to_misaligned_in_chromium(server):
    base, df = server
    th = Thresholds()
    expected = df[th.misaligned_mask(df["aligned"], df["coherent"]).fillna(False).to_numpy(bool)]
    assert 0 < len(expected) < 100  # one page
    page = _dom(f"{base}/responses/responses")
    assert "misaligned" in page
    # filter the way a user does: follow the page's own facet link for misaligned = 1
    links = re.findall(r'href="([^"]*[?&]misaligned=1[^"]*)"', page)
    assert links, "no misaligned facet link on the table page"
    rows = _Rows()
    rows.feed(_dom(links[0].replace("&amp;", "&")))
    assert len(rows.rows) == len(expected)
    assert {r["misaligned"] for r in rows.rows} == {"1"}
    assert all(float(r["aligned"]) < th.aligned and float(r["coherent"]) > th.coherent for r in rows.rows)
    assert sorted(r["sample"] + r["question_id"] for r in rows.rows) == sorted(
        str(s) + q for s, q in zip(expected["sample"], expected["question_id"]))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium; .ci/run does)")
def test_viewer_row_page_shows_full_answer_and_top_tokens_escaped(server):
    base, df = server
    rows = _Rows()
    rows.feed(_dom(f"{base}/responses/responses?rowid=1&_nofacet=1"))  # row 1: the answer with \r, quotes, HTML
    assert len(rows.rows) == 1
    cell = rows.rows[0]["answer"]
    # the markup arrives as text (a rendered <b> would show as the bare marker "<b>" without its attribute)
    assert 'He said "hi" <b id="injected">bold</b> & left' in cell and "<b>" not in cell
    detail = _dom(f"{base}/responses/responses/1")
    assert "&lt;b id=" in detail and '<b id="injected">' not in detail  # shown as text, never rendered
    raw = _Rows()
    raw.feed(detail)
    assert json.loads(raw.rows[0]["judge_raw"]) == {"aligned": {"top": [["1", -0.1], ["10", -2.5]]}}


def test_em_view_without_responses_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-c", "from em.commands import main; main()", "view", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=ENV)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: em view: {tmp_path}: no responses.parquet below it (run evaluate.py first)"
    assert not np.any([p.name.endswith(".db") for p in tmp_path.iterdir()])
