"""JupyterLab in a real headless browser: the course opens, a notebook's first cells run in its kernel,
and the check cell's output is on the page (a screenshot is kept).

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and the
``selenium`` package; CI installs them and sets ``EFFILAB_REQUIRE_BROWSER=1``, which turns a missing
piece into a failure instead of a skip. The screenshot goes to ``$EFFILAB_ARTIFACTS`` (default: the
test's temporary folder).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
ALICE = REPO / "grader" / "examples" / "01_float_formats" / "alice_01_float_formats.ipynb"
CELLS = ("intro", "setup_imports", "md_ex1", "decompose_solution", "decompose_check")
TOKEN = "effilab-browser-test"
pytestmark = pytest.mark.slow


def _need(what: str):
    if os.environ.get("EFFILAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} (CI installs it: .ci/run)")
    pytest.skip(what)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _course_folder(root: Path) -> Path:
    """The released notebooks, and alice's first exercise of notebook 01 as a short notebook to run."""
    for p in (REPO / "notebooks").glob("*.ipynb"):
        shutil.copy(p, root / p.name)
    nb = nbformat.read(str(ALICE), as_version=4)
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") in CELLS]
    assert len(nb.cells) == len(CELLS), "notebook 01 lost one of the cells this test runs"
    nbformat.write(nb, str(root / "first_exercise.ipynb"))
    return root


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free port, serving the course folder; yields its base URL."""
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        _need("Chromium and chromedriver are not installed")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _need("the selenium package is not installed")
    root = _course_folder(tmp_path_factory.mktemp("lab"))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
           f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}", "--ServerApp.ip=127.0.0.1"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # JupyterLab starts in a few seconds; a loaded machine may take a minute
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(root / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not answer: {(root / 'lab.log').read_text()[-2000:]}")
        yield url, chrome, driver, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _, chrome, driver, _ = lab
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    b = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    b.set_page_load_timeout(120)
    yield b
    b.quit()


def _wait_for(browser, predicate, timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(0.5)
    shot = Path(os.environ.get("EFFILAB_ARTIFACTS", "/tmp")) / "browser_timeout.png"
    browser.save_screenshot(str(shot))
    pytest.fail(f"timed out waiting for {what} (screenshot {shot}); the page says: "
                f"{browser.find_element('tag name', 'body').text[-1500:]}")


def _menu(browser, top: str, item: str) -> None:
    """Click JupyterLab's menu ``top`` → ``item`` (by their labels)."""
    from selenium.webdriver.common.by import By

    labels = lambda sel: [e for e in browser.find_elements(By.CSS_SELECTOR, sel) if e.text.strip() == top or
                          e.text.strip() == item]
    _wait_for(browser, lambda: [e for e in labels(".lm-MenuBar-itemLabel") if e.text.strip() == top], 60,
              f"the {top} menu")[0].click()
    _wait_for(browser, lambda: [e for e in labels(".lm-Menu-itemLabel") if e.text.strip() == item], 30,
              f"the menu item {item}")[0].click()


def test_the_course_opens_and_a_check_cell_shows_its_verdict(lab, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, _, _, _ = lab
    browser.get(f"{url}/lab/tree/first_exercise.ipynb?token={TOKEN}")
    # the file browser lists the course's notebooks
    _wait_for(browser, lambda: "08_operator_fusion.ipynb" in browser.find_element(By.TAG_NAME, "body").text,
              120, "the course's notebooks in the file browser")
    # the kernel is idle, then every cell runs (Run → Run All Cells)
    _wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 120,
              "the notebook's cells")
    _wait_for(browser, lambda: "Idle" in browser.find_element(By.TAG_NAME, "body").text, 180, "an idle kernel")
    _menu(browser, "Run", "Run All Cells")
    outputs = lambda: " ".join(o.text for o in browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"))
    text = _wait_for(browser, lambda: outputs() if "decompose [correctness]" in outputs() else "", 300,
                     "the check cell's output")
    out = Path(os.environ.get("EFFILAB_ARTIFACTS", tmp_path)) / "browser_notebook01_check.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(out))
    assert "PASS" in text and "3 / 3 points" in text, text[-1500:]
    assert out.stat().st_size > 10_000  # a rendered page, not an empty image
