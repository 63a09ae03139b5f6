"""The search page in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The service runs in uvicorn on a loopback port, as deployed. Outside CI the test skips when
Chromium or Playwright is missing; in CI (``CI`` set, see ``.ci/run``) it must run.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

try:  # expect(): waits through Playwright's own script, never eval in the page (the page's CSP forbids it)
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the test skips (outside CI) or fails (in CI), see _require
    expect = sync_playwright = None

from index_build.cli import main as build_main
from retrieval.datasets import iter_corpus
from service.app import create_app
from service.settings import Settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test: .ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _require(Path(CHROMIUM).is_file(), f"{CHROMIUM} not installed (apt-get install -y chromium)")
    _require(sync_playwright is not None, "the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("browser-index") / "noveleval"
    argv = ["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(tiny_model_dir), "--no-progress"]
    assert build_main(argv) == 0
    return root


@contextmanager
def live_server(settings: Settings, wait_ready: bool = True) -> Iterator[str]:
    """uvicorn on a free loopback port in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    try:
        if wait_ready:
            while httpx.get(url + "readyz").status_code != 200:
                assert time.monotonic() < deadline, "the service did not become ready"
                time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def test_search_page_shows_ranked_passages(browser, index_root: Path, noveleval: Path) -> None:
    passages = {p.docid: p for p in iter_corpus(noveleval)}
    with live_server(Settings(index=index_root, torch_threads=1, access_log=False)) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#status")).to_have_text("Ready.", timeout=20_000)
        assert "420 passages" in page.inner_text("#about")
        page.fill("#q", "Who produced Spider-Man: Across the Spider-Verse?")
        page.select_option("#top-k", "5")
        page.click("#search-btn")
        expect(page.locator("li.hit")).to_have_count(5, timeout=20_000)
        hits = page.query_selector_all("li.hit")
        assert len(hits) == 5
        assert [h.query_selector(".rank").inner_text() for h in hits] == ["#1", "#2", "#3", "#4", "#5"]
        scores = [float(h.query_selector(".score").inner_text().split()[1]) for h in hits]
        assert scores == sorted(scores, reverse=True)
        for hit in hits:  # the text shown is the passage the docid names
            docid = hit.query_selector(".docid").inner_text().removeprefix("docid ")
            shown = " ".join(hit.query_selector(".text").text_content().split())
            assert shown == " ".join(passages[docid].text.split())
        assert "5 passages in" in page.inner_text("#status")
        page.close()


def test_search_page_says_when_a_query_is_rejected(browser, index_root: Path) -> None:
    with live_server(Settings(index=index_root, torch_threads=1, access_log=False)) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#status")).to_have_text("Ready.", timeout=20_000)
        page.fill("#q", "   ")
        page.click("#search-btn")
        expect(page.locator("#status.problem")).to_have_text(
            "Query rejected: query: query must contain non-whitespace text "
            "(control and format characters count as whitespace)",
            timeout=20_000,
        )
        assert page.query_selector_all("li.hit") == []
        page.close()


def test_search_page_says_when_the_service_is_not_ready(
    browser, index_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    other = Path(shutil.copytree(tiny_model_dir, tmp_path / "other"))
    config = json.loads((other / "encoder_config.json").read_text())
    config.update(max_query_length=16, fingerprint="")  # another encoder: the index refuses it
    (other / "encoder_config.json").write_text(json.dumps(config))
    settings = Settings(index=index_root, encoder_path=str(other), torch_threads=1, access_log=False)
    with live_server(settings, wait_ready=False) as url:
        deadline = time.monotonic() + 30
        while "was built by encoder" not in httpx.get(url + "readyz").text:  # the load has failed
            assert time.monotonic() < deadline
            time.sleep(0.02)
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#status.problem")).to_contain_text("was built by encoder", timeout=20_000)
        status = page.inner_text("#status")
        assert status.startswith("The service is not ready: no index is loaded: index version")
        assert "was built by encoder" in status
        page.fill("#q", "film")
        with page.expect_response(lambda r: r.url.endswith("/search"), timeout=20_000) as answer:
            page.click("#search-btn")  # the status says "searching..." until the answer is shown
        assert answer.value.status == 503
        expect(page.locator("#status.problem")).to_contain_text("no index is loaded", timeout=20_000)
        assert page.inner_text("#status").startswith("The service is not ready: no index is loaded")
        page.close()
