"""What a person sees of a sweep, in a real browser: Debian's Chromium driven by Playwright
opens MLflow's UI (a real `mlflow server` on the small sweep's store) at the URL the sweep
printed and finds the training-runs view (not the GenAI overview), the parent run with its
children, and the accuracy and gap columns; then it opens the sweep's HTML report and
finds its tables and images loaded. Skipped, with the reason, only where no Chromium or
Playwright is installed (`.ci/run` installs both)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or \
    next((p for p in ("/usr/bin/chromium", "/usr/lib/chromium/chromium") if os.path.exists(p)), None)
START_TIMEOUT_S = 120


def _playwright():
    if CHROMIUM is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium); the browser tests need it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_ui(small_sweep):
    """`mlflow server` on the sweep's SQLite store, 127.0.0.1, a free port, one worker; its
    own process group, stopped (only it) at the end. Yields its base URL."""
    tmp, _, _ = small_sweep
    port = _free_port()
    log = open(tmp / "mlflow_server.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
         "--artifacts-destination", str(tmp / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, (tmp / "mlflow_server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(base + "/health", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "no answer: " + (tmp / "mlflow_server.log").read_text()[-3000:]
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _printed(stdout: str, pattern: str) -> str:
    match = re.search(pattern, stdout)
    assert match, f"the sweep did not print {pattern!r}:\n{stdout[-3000:]}"
    return match.group(1)


def test_mlflow_opens_on_the_sweeps_runs_with_children_and_metric_columns(small_sweep, mlflow_ui):
    sync_playwright = _playwright()
    _, stdout, _ = small_sweep
    # The URL the sweep printed, with the port of this test's server.
    printed = _printed(stdout, r"then open (http://127\.0\.0\.1:\d+/#/experiments/\S+)")
    url = re.sub(r"^http://127\.0\.0\.1:\d+", mlflow_ui, printed)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(url)
            parent = page.locator('[role="row"]', has_text="small").first
            parent.wait_for(timeout=60_000)
            # The training-runs view of the experiment, not MLflow 3's GenAI overview.
            assert "/runs" in page.url
            body = page.inner_text("body")
            assert "Detect Issues" not in body and "Token Usage" not in body
            header = page.locator('[role="columnheader"]').all_inner_texts()
            for column in ("eval/acc_non_pivot", "eval/acc_pivot", "eval/gap"):
                assert any(column in h for h in header), (column, header)
            # The parent holds the headline metrics: numbers in its row (the grid draws a row in
            # two parts, the pinned name column and the scrolling columns, sharing the run's id).
            parent_id = _printed(stdout, r"MLflow \(parent run (\w+)\)")
            assert parent.get_attribute("row-id") == parent_id
            cells = " ".join(page.locator(f'[role="row"][row-id="{parent_id}"]').all_inner_texts())
            assert len(re.findall(r"\b0\.\d+", cells)) >= 3, cells
            # Its children, by their readable names, once the parent is expanded.
            parent.locator("button").first.click()
            page.get_by_text(re.compile(r"confirm \d+: best seed=0")).first.wait_for(timeout=30_000)
            rows = page.locator('[role="row"]').all_inner_texts()
            assert any(re.search(r"\d+: temperature=", r) for r in rows), rows
            assert any("no_contrastive seed=0" in r for r in rows), rows
            page.screenshot(path=str(small_sweep[0] / "mlflow_runs_view.png"))
        finally:
            browser.close()


def test_the_html_report_shows_its_tables_and_images(small_sweep):
    sync_playwright = _playwright()
    tmp, stdout, _ = small_sweep
    report = Path(_printed(stdout, r"HTML report: (\S+\.html)"))
    assert report.is_file()
    html = report.read_text(encoding="utf-8")
    assert "src=\"http" not in html and "<script" not in html   # self-contained: nothing fetched
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(report.as_uri())
            headings = page.locator("h2").all_inner_texts()
            for heading in ("Starting model, best config and controls", "Accuracy per task and language, before and after",
                            "Pareto front", "Sentence representations, before and after", "Search trials"):
                assert heading in headings, headings
            assert page.locator("table").count() >= 3
            first = page.locator("table").first.inner_text()
            assert "starting model" in first and "best config" in first and "no_contrastive" in first
            images = page.locator("img")
            assert images.count() >= 5    # accuracy before/after, Pareto front, projections before/after
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert all(w > 0 for w in widths), widths
            alts = images.evaluate_all("imgs => imgs.map(i => i.alt)")
            # "after": the best config's first confirmation run (it has the test evaluation)
            assert any("before: the starting model (PCA" in a for a in alts), alts
            assert any(a.startswith("after: the best config, confirmation run") and "(PCA" in a for a in alts), alts
        finally:
            browser.close()
