"""The expert-finder Space in a real headless Chromium (Playwright for Python driving Debian's
``/usr/bin/chromium``): the app runs on 127.0.0.1 on a free port, a zip of real Animal-MNIST images
is uploaded through the page, the search runs, and the ranked experts appear; a hostile zip gets a
clear error on the page. A screenshot goes to ``test-output/space.png``."""

from __future__ import annotations

import os
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hf_task2vec import TaskEmbedding
from tests.test_space import QUERY_CLASSES, build_expert_index, class_folder_zip, png_bytes

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = os.environ.get("T2V_CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(__file__).resolve().parents[1] / "test-output"
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    import app as space_app

    demo = space_app.build_app(build_expert_index())
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                max_file_size=20 * 2**20)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make system-deps`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(app_url)
    pg.wait_for_selector("#find")
    yield pg
    context.close()


def _upload(page, path: Path) -> None:
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_selector(f"#upload :text('{path.name}')")


def _wait_for_text(page, locator, timeout_s: float) -> None:
    """Wait until ``locator`` is visible; fail at once with its text if an error toast shows up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(el.is_visible() for el in locator.all()):
            return
        toasts = page.locator(".toast-item")
        if toasts.count():
            pytest.fail(f"the page shows an error: {toasts.first.inner_text()}")
        page.wait_for_timeout(250)
    pytest.fail(f"timed out after {timeout_s} s waiting for {locator}")


def test_upload_zip_search_and_see_ranked_experts(page, tmp_path):
    zpath = class_folder_zip(tmp_path / "three-animals.zip", classes=tuple(QUERY_CLASSES), per_class=20)
    assert "4 experts" in page.locator("#index-line").inner_text()
    _upload(page, zpath)
    page.click("#find")
    table = page.locator("#experts")
    _wait_for_text(page, table.get_by_text("test-experts/lite0-animal-quadrupeds"), timeout_s=150)
    rows = [r.inner_text() for r in table.locator("[role=row]").all() if r.is_visible()]
    assert len(rows) == 5 and rows[0].split() == ["rank", "expert", "score", "trained", "on"]
    assert rows[1].split()[:2] == ["1", "test-experts/lite0-animal-quadrupeds"]
    assert "animal-mnist-cat-dog-horse" in rows[1]
    shown = {r.split()[1] for r in rows[1:]}
    assert shown == {f"test-experts/lite0-{m}" for m in ("animal-quadrupeds", "animal-wild", "fashion-shoes", "digits")}
    scores = [float(r.split()[2]) for r in rows[1:]]
    assert scores == sorted(scores)
    status = page.locator("#status").inner_text()
    assert "three-animals" in status and "60 images, 3 classes" in status and "Best expert" in status
    download = page.locator('#embedding a[download="three-animals.safetensors"]')
    download.first.wait_for()
    emb = TaskEmbedding.from_bytes(page.request.get(download.first.get_attribute("href")).body())
    assert emb.name == "three-animals" and emb.meta["num_samples"] == "60"
    build_expert_index().embedding("test-experts/lite0-digits").check_compatible(emb)
    page.wait_for_function("document.querySelectorAll('img[src*=\"task_map\"], img[src*=\"distance_heatmap\"]')"
                           ".length >= 2")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "space.png"), full_page=True)


def test_hostile_zip_gets_a_clear_error_in_the_page(page, tmp_path):
    zpath = tmp_path / "sneaky.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("cat/ok.png", png_bytes(np.zeros((8, 8), np.uint8)))
        zf.writestr("../../../tmp/pwned.png", b"evil")
    _upload(page, zpath)
    page.click("#find")
    toast = page.locator(".toast-item")
    toast.first.wait_for(timeout=60_000)
    text = toast.first.inner_text()
    assert text.startswith("Error") and "path traversal" in text and "../../../tmp/pwned.png" in text
    assert not Path("/tmp/pwned.png").exists()
    OUTPUT.mkdir(exist_ok=True)
    page.wait_for_timeout(600)  # the toast fades in
    page.screenshot(path=str(OUTPUT / "space-error.png"), animations="disabled")
    # the server is fine afterwards: the page still answers
    assert page.locator("#find").is_enabled()
