"""Screenshot of the search demo in a real browser, as tests/search/test_browser.py takes it: the demo served on
127.0.0.1, Debian's chromium driven by Playwright, a text query typed and run, the gallery awaited.

    python scripts/search_screenshot.py --index runs/tiny/openmoji_index --query "a red heart" --output docs/search_demo.png

Prints the top rows the page shows (they are checked against `Searcher.search`).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from xray_hf.search import Searcher  # noqa: E402
from xray_hf.search.demo import build_demo  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--model", default=None, help="checkpoint (default: the one the index was built with)")
    parser.add_argument("--query", default="a red heart")
    parser.add_argument("--output", default="docs/search_demo.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=820)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    searcher = Searcher(args.index, args.model)
    demo = build_demo(searcher)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, share=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(demo.local_url)
            page.locator("#query-text textarea").fill(args.query)
            page.locator("#search-button").click()
            page.wait_for_function("document.querySelector('#query-time')?.innerText.includes('text query')",
                                   timeout=120_000)
            labels = page.locator("#results .caption-label")
            labels.first.wait_for(timeout=60_000)
            shown = [labels.nth(i).inner_text() for i in range(labels.count())]
            expected = searcher.search(args.query, k=12).rows
            assert shown[0] == f"{expected[0]['score']:.3f} · {expected[0]['caption']}", (shown[0], expected[0])
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete)")
            page.screenshot(path=args.output)
            browser.close()
    finally:
        demo.close()
    print(f"screenshot: {args.output}")
    for row in expected[:10]:
        print(f"{row['rank']:>3}  {row['score']:.3f}  {row['id']:<28} {row['caption']}")


if __name__ == "__main__":
    main()
