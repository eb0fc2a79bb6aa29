"""/docs in a real browser: headless Chromium (Debian's, installed by `make browser`) driven by
playwright against a live server. The page shows every operation of /openapi.json, and a "try it
out" embeddings call made from the page returns 200; with API keys on, the page first asks for a
key and the call carries it. Each run keeps a screenshot under build/test-artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.fixtures.server import ROOT, live_server
from tests.reliability_server import openapi_document

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "build" / "test-artifacts"
KEY = "sk-docs-page-0123456789"
# Swagger UI renders the whole document in well under a second here; a shared, loaded machine
# can be many times slower.
RENDER_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Page]:
    if not CHROMIUM.exists():  # never a skip: the page must be tested wherever the suite runs
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as pw:
        # --no-sandbox: Chromium refuses to sandbox itself as root, which CI runs as.
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


@pytest.mark.parametrize("keyed", [False, True], ids=["open", "keyed"])
def test_the_page_shows_every_route_and_tries_an_embedding(
        browser_page: Page, tiny_bundle: Path, tiny_cls_bundle: Path, keyed: bool) -> None:
    page = browser_page
    args = ["--api-key", KEY] if keyed else []
    with live_server([tiny_bundle, tiny_cls_bundle], args) as live:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{live.url}/docs")
        if keyed:  # the document needs the key: the page asks for it first
            page.wait_for_selector("#key-form:not([hidden])", timeout=RENDER_TIMEOUT_MS)
            page.fill("#key", KEY)
            page.click("#key-form button")
        page.wait_for_selector(".opblock", timeout=RENDER_TIMEOUT_MS)
        spec = openapi_document(live.url, KEY if keyed else None)
        shown = {(block.locator(".opblock-summary-method").inner_text().lower(),
                  block.locator(".opblock-summary-path").inner_text())
                 for block in page.locator(".opblock").all()}
        declared = {(method, path) for path, item in spec["paths"].items() for method in item}
        assert shown == declared

        op = page.locator("#operations-default-createEmbedding0")  # POST /v1/embeddings
        op.locator(".opblock-summary").click()
        op.locator("button.try-out__btn").click()
        op.locator("button.execute").click()
        status = op.locator(".live-responses-table tbody .response-col_status")
        status.wait_for(timeout=RENDER_TIMEOUT_MS)
        body = op.locator(".live-responses-table tbody .response-col_description pre").first
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / f"docs-page-{'keyed' if keyed else 'open'}.png",
                        full_page=True)
        assert status.inner_text().strip() == "200", body.inner_text()[:500]
        answer = json.loads(body.inner_text())
        assert answer["object"] == "list" and len(answer["data"][0]["embedding"]) == 32
        # offline: the page fetched nothing from anywhere but this server
        outside = [url for url in requested if not url.startswith(live.url + "/")
                   and not url.startswith("data:")]
        assert not outside, outside
