"""The demo in a real browser: Playwright driving Debian's chromium (installed by scripts/setup.sh; Playwright cannot
download its own browser here). Types a query, runs it, waits for the gallery, checks the top result against the
index's own answer, uploads an image, and saves a screenshot (to `$XRAY_HF_SCREENSHOT` when set)."""

from __future__ import annotations

import os
import shutil

import pytest

from xray_hf.search import Searcher
from xray_hf.search.demo import build_demo

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def caption(row: dict) -> str:
    return f"{row['score']:.3f} · {row.get('caption') or row['id']}"


def test_search_in_a_real_browser(gallery_index, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or CHROMIUM
    assert os.path.exists(executable), "Debian's chromium is missing: run scripts/setup.sh (apt-get install chromium)"
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    searcher = Searcher(gallery_index)
    demo = build_demo(searcher)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, share=False)
    screenshot = os.environ.get("XRAY_HF_SCREENSHOT") or str(tmp_path / "demo.png")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(demo.local_url)
            page.locator("#query-text textarea").fill("a red square")
            page.locator("#search-button").click()
            page.wait_for_function("document.querySelector('#query-time')?.innerText.includes('text query')",
                                   timeout=60_000)
            labels = page.locator("#results .caption-label")
            labels.first.wait_for(timeout=30_000)
            expected = searcher.search("a red square", k=12).rows
            assert labels.count() == len(expected) == 12
            assert labels.first.inner_text() == caption(expected[0])
            assert page.locator("#results img").count() == 12
            page.screenshot(path=screenshot, full_page=True)

            image = gallery_index.parent / "images" / "blue_square_3.png"
            page.locator("#query-image input[type=file]").set_input_files(str(image))
            page.locator("#query-image img").first.wait_for(timeout=30_000)  # the upload is shown
            page.locator("#search-button").click()
            page.wait_for_function("document.querySelector('#query-time')?.innerText.includes('image query')",
                                   timeout=60_000)
            by_image = searcher.search(image=str(image), k=12).rows
            assert by_image[0]["id"] == "blue_square_3.png"
            assert page.locator("#results .caption-label").first.inner_text() == caption(by_image[0])
            browser.close()
    finally:
        demo.close()
    assert os.path.getsize(screenshot) > 10_000
