"""The screenshots of docs/space.md: the page in headless Chromium (Debian's ``/usr/bin/chromium``
via Playwright) with the repository's real expert index (``benchmarks/results/zoo_index``, or
``T2V_EXPERT_INDEX_REPO``), after one click on an example.

    .venv/bin/python spaces/expert-finder/screenshots.py [OUT_DIR]   # default docs/figures

writes ``space.png`` (desktop, 1400x1000, full page, footwear example) and ``space-phone.png``
(phone, 390x844, the results at the top of the screen, digits example).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

import app as space_app  # noqa: E402
import finder  # noqa: E402

CHROMIUM = os.environ.get("T2V_CHROMIUM", "/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _search(page, example: int) -> float:
    start = time.perf_counter()
    page.click(f"#example-{example}")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Best expert')", timeout=300_000)
    page.wait_for_function(
        "['#task-map', '#heatmap'].every(s => document.querySelector(s + ' .js-plotly-plot .main-svg'))"
    )
    page.wait_for_timeout(1500)
    return time.perf_counter() - start


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    index = finder.load_expert_index()
    demo = space_app.build_app(index, examples_dir=Path(tempfile.gettempdir()) / "t2v-space-examples")
    space_app.warm_up(index)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **space_app.launch_options())
    url = f"http://127.0.0.1:{port}/"
    out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#find")
            print(f"desktop: footwear example searched in {_search(page, 0):.1f} s")
            page.screenshot(path=str(out / "space.png"), full_page=True)
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(url)
            phone.wait_for_selector("#find")
            print(f"phone: digits example searched in {_search(phone, 1):.1f} s")
            phone.locator("#status").scroll_into_view_if_needed()
            phone.evaluate("document.querySelector('#status').scrollIntoView({block: 'start'})")
            phone.screenshot(path=str(out / "space-phone.png"))
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else _HERE.parents[1] / "docs" / "figures")
