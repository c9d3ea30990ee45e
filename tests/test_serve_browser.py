"""``hica serve`` end to end in a real headless Chromium (Playwright driving Debian's ``chromium``).

A live uvicorn server on a free loopback port serves a tiny real BUSI model. The tests upload a real BUSI
image on the Predict page and read the prediction and heatmaps; train a tiny few-shot model (K=1, a few
steps) from the Train page to completion and predict with it; and check the Models page. With
``$HICA_SCREENSHOTS=DIR`` each page is also saved as ``DIR/<page>.png`` (``scripts/serve-screenshots``
makes the ones in ``docs/serve/``).

The browser is ``$HICA_CHROMIUM`` or ``/usr/bin/chromium`` (``.ci/run`` installs it); without it these tests
skip, except under ``CI=true`` where a missing browser fails them.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from playwright import sync_api
from playwright.sync_api import expect
from serve_helpers import busi_image, make_settings

pytestmark = pytest.mark.usefixtures("one_thread")

# Launch flags for a closed network (no background requests, no component updates, no sandbox as root).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1280, "height": 900}
# Page actions and expectations wait up to 60 s: a loaded 2-core CI machine can take seconds per request.
expect.set_options(timeout=60_000)


def _chromium() -> str:
    path = os.environ.get("HICA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        msg = f"no Chromium at {path}: apt-get install chromium, or set HICA_CHROMIUM to a Chromium binary"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A live server (uvicorn in a thread) on 127.0.0.1 with the tiny model; yields (base URL, settings)."""
    import uvicorn

    from hica.serve import create_app

    settings = make_settings(tmp_path_factory.mktemp("browser"), data_root)
    port = _free_port()
    srv = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", settings
    srv.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport=VIEWPORT)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(60_000)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def _shot(page, name: str) -> None:
    """Save a full-page screenshot when ``$HICA_SCREENSHOTS`` names a folder."""
    out = os.environ.get("HICA_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"{name}.png"), full_page=True)


def _no_horizontal_overflow(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORT["width"], (
        f"the page is {width} px wide, wider than the {VIEWPORT['width']} px window"
    )


def test_predict_page_shows_prediction_and_heatmaps(page, server, data_root: Path) -> None:
    base, _ = server
    page.goto(f"{base}/predict")
    page.wait_for_selector("#model option[value='tiny']", state="attached")
    img = busi_image(data_root, "malignant", 3)
    page.set_input_files("#files", str(img))
    page.click("#run")
    result = page.wait_for_selector(f".result[data-file='{img.name}'] .predicted")
    predicted = result.inner_text()
    assert predicted in ("benign", "malignant", "normal")
    bars = page.locator(f".result[data-file='{img.name}'] .prob")
    assert bars.count() == 3
    assert page.locator(".prob.top .name").inner_text() == predicted
    maps = page.locator(f".result[data-file='{img.name}'] .heatmaps .heatmap[data-class] img")
    assert maps.count() == 3
    for i in range(3):  # every heatmap image decoded to real pixels
        assert maps.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.locator(".heatmap[data-class] li").count() >= 3  # top phrases under each map
    assert page.is_visible("#colorbar")
    expect(page.locator("#message")).to_contain_text("classified with tiny")
    assert page.is_enabled("#csv")
    with page.expect_download() as dl:
        page.click("#csv")
    csv_text = Path(dl.value.path()).read_text()
    assert csv_text.splitlines()[0] == "file,predicted,p_benign,p_malignant,p_normal"
    assert csv_text.splitlines()[1].startswith(f"{img.name},{predicted},")
    _no_horizontal_overflow(page)
    _shot(page, "predict")


def test_predict_page_reports_a_bad_file(page, server, tmp_path: Path) -> None:
    base, _ = server
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.goto(f"{base}/predict")
    page.wait_for_selector("#model option[value='tiny']", state="attached")
    page.set_input_files("#files", str(bad))
    page.click("#run")
    expect(page.locator("#message.error")).to_contain_text("notes.png: not a PNG, JPEG or DICOM image")


def test_train_in_the_browser_then_predict_with_the_new_model(page, server, data_root: Path) -> None:
    base, settings = server
    page.goto(f"{base}/train")
    page.wait_for_selector(".class-row")  # the first bundled file's classes, loaded at start
    page.select_option("#descriptors", "busi")
    page.wait_for_selector(".class-row[data-class='normal']")
    page.fill("#name", "browser-k1")
    page.fill("#k", "1")
    page.fill("#steps", "3")
    for cls in ("benign", "malignant"):  # K=1: one training and one validation image per class
        row = page.locator(f".class-row[data-class='{cls}']")
        row.locator("input.images").set_input_files([str(busi_image(data_root, cls, i)) for i in (1, 2)])
        row.locator("input.masks").set_input_files(str(busi_image(data_root, cls, 1, mask=True)))
        assert row.locator(".count").inner_text() == "2 images"
    page.locator(".class-row[data-class='normal'] input.use").uncheck()
    page.click("#start")
    # The message comes when the upload is answered (a job card can show earlier: the list refreshes itself).
    expect(page.locator("#message")).to_contain_text("started for model browser-k1", timeout=60_000)
    page.wait_for_selector(".job[data-state='running'], .job[data-state='done']", timeout=120_000)
    page.reload()  # the job survives a page reload: it lives on the server
    job = page.wait_for_selector(".job[data-state='done']", timeout=240_000)
    text = job.inner_text()
    assert "browser-k1" in text and "100%" in text and "held-out uploads: accuracy" in text
    assert page.get_attribute(".job[data-state='done'] .progress", "aria-valuenow") == "100"
    _shot(page, "train")

    assert (settings.models_dir / "browser-k1" / "model_card.json").is_file()
    page.click(".job[data-state='done'] a:has-text('predict with it')")
    page.wait_for_selector("#model option[value='browser-k1']", state="attached")
    assert page.input_value("#model") == "browser-k1"
    img = busi_image(data_root, "benign", 5)
    page.set_input_files("#files", str(img))
    page.click("#run")
    shown = page.wait_for_selector(f".result[data-file='{img.name}'] .predicted, #message.error")
    assert "error" not in (shown.get_attribute("class") or ""), page.inner_text("#message")
    predicted = shown.inner_text()
    assert predicted in ("benign", "malignant")  # the new model knows only its two classes
    assert page.locator(f".result[data-file='{img.name}'] .prob").count() == 2


def test_models_page_shows_cards(page, server) -> None:
    base, _ = server
    page.goto(f"{base}/models")
    card = page.wait_for_selector(".card[data-model='tiny']")
    text = card.inner_text()
    for want in ("benign, malignant, normal", "K=1, seed 1", "lesion masks", "verified", "not for clinical"):
        assert want in text, want
    _no_horizontal_overflow(page)
    _shot(page, "models")


def test_api_page_lists_the_endpoints_offline(page, server) -> None:
    base, _ = server
    page.goto(f"{base}/api-docs")
    page.wait_for_selector(".endpoint[data-path='/api/predict']")
    text = page.inner_text(".endpoint[data-path='/api/predict']")
    assert "POST" in text and "files" in text and "model" in text
    for path in ("/api/models", "/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel"):
        assert page.locator(f".endpoint[data-path='{path}']").count() >= 1, path
    _no_horizontal_overflow(page)
    _shot(page, "api")
