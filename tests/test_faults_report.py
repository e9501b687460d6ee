"""Values from the data never run as markup in the analysis report (issue 13, case 17), checked in a real
headless Chromium (skipped, with the reason, where none is installed; .ci/run installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from hydra import compose, initialize

from em.analysis.run import run_analysis
from tests.synthetic_responses import synthetic_responses

TITLE = "Emergent misalignment: analysis"
IMG = "<img src=x onerror=\"document.title='PWNED-img'\">"
SCRIPT = "<script>document.title='PWNED-script'</script>"
SVG = "<svg onload=\"document.title='PWNED-svg'\"></svg>"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium installed (apt-get install -y chromium): the browser check cannot run")


def dump_dom(path, tmp_path) -> str:
    """The DOM of a local file after it loaded, as headless Chromium sees it (no network, a fresh profile)."""
    out = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=3000", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def title(dom: str) -> str:
    m = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert m, dom[:500]
    return m.group(1)


def test_harness_sees_a_script_run(tmp_path):
    """Control: the same payloads, unescaped in a page, do change the title (so the check below can fail)."""
    page = tmp_path / "control.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>{TITLE}</title></head><body>{IMG}</body></html>")
    assert title(dump_dom(page, tmp_path)) == "PWNED-img"
    page.write_text(f"<!DOCTYPE html><html><head><title>{TITLE}</title></head><body>{SCRIPT}</body></html>")
    assert title(dump_dom(page, tmp_path)) == "PWNED-script"


def test_report_runs_no_script_from_the_data(tmp_path):
    """Model names and conditions carrying HTML: report.md opens no tag, report.html runs no script."""
    chromium()
    table = synthetic_responses(models=[IMG, "gemma3_1b"], conditions=["base", SCRIPT, SVG],
                                n_questions=2, n_samples=20)
    table.to_parquet(tmp_path / "responses.parquet")
    with initialize(config_path="../conf", version_base="1.3"):
        cfg = compose("analyze", overrides=[f"run_dir={tmp_path / 'run'}", "bootstrap.n_resamples=200",
                                            "figures=false", f"inputs=[{tmp_path / 'responses.parquet'}]"])
    run = run_analysis(cfg)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "PWNED-img" in md and "PWNED-script" in md  # the values are in the report, as text
    assert not re.search(r"<(img|script|svg)\b", md, re.I)
    html = (tmp_path / "run" / "report.html").read_text()
    assert "&lt;img" in html and "&lt;script" in html
    assert not re.search(r"<(img|script|svg)\b", html.split("<body>", 1)[1], re.I)
    dom = dump_dom(tmp_path / "run" / "report.html", tmp_path)
    assert title(dom) == TITLE
    assert "PWNED" in dom  # the page did render the values (as text)
    assert run is not None
