"""The page in a real browser: headless Chromium (Debian's) driven by Playwright, against `python app.py`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (scripts/setup.sh --dev installs it)")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    port = free_port()
    outputs = tmp_path_factory.mktemp("outputs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path_factory.mktemp("log") / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--outputs-dir", str(outputs),
                             "--models-dir", str(tmp_path_factory.mktemp("models"))], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited early: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("app did not start in 120 s")
    yield url, outputs
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture()
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield pg
        browser.close()


def fill_field(page, elem_id: str, value: str) -> None:
    """Type into a field's box (a number, a textbox or a text area) and leave it, as a user does (Gradio reads it then)."""
    box = page.locator(f"#{elem_id} input:not([type=range]):not([type=checkbox]), #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")


def count_runs_done(page, status_id: str, done_text: str) -> None:
    """From now on, window.__done counts the runs that end: each time the status line comes to hold `done_text`."""
    page.evaluate("""([id, text]) => {
        window.__done = 0; let was = false;
        const status = document.querySelector('#' + id);
        new MutationObserver(() => {
            const now = status.innerText.includes(text);
            if (now && !was) window.__done += 1;
            was = now;
        }).observe(status, {subtree: true, childList: true, characterData: true});
    }""", [status_id, done_text])


WATCH_LIVE_IMAGE = """
() => {
  window.__srcs = [];
  const record = () => {
    const img = document.querySelector('#live-image img');
    if (img && img.src && window.__srcs[window.__srcs.length - 1] !== img.src) window.__srcs.push(img.src);
  };
  new MutationObserver(record).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
}
"""


def test_generate_streams_previews_then_shows_result(app_url, page):
    url, outputs = app_url
    page.goto(url)
    page.fill("#prompt-box textarea", "a big red star in the centre")
    steps = page.locator("#steps-box input[type=number]")
    steps.fill("40")
    steps.press("Tab")
    page.evaluate(WATCH_LIVE_IMAGE)
    page.click("#generate-btn")
    page.get_by_text("Done:").wait_for(timeout=90_000)
    srcs = page.evaluate("window.__srcs")
    # Previews (x0-hat) changed the image at least twice before the final result arrived.
    assert len(srcs) >= 3, srcs
    assert page.locator("#gallery img").count() >= 1
    saved = list(outputs.glob("*.png"))
    assert len(saved) == 1
    page.screenshot(path=str(outputs / "page.png"), full_page=True)


def test_bad_model_path_is_a_message_and_the_app_keeps_serving(app_url, page):
    url, _ = app_url
    page.goto(url)
    model_box = page.locator("#model-box input")
    model_box.fill("/nonexistent/model-folder")
    model_box.press("Enter")
    page.click("#generate-btn")
    page.locator("#status-line .status-error").get_by_text("outside the models folder").wait_for(timeout=30_000)
    # The same page still generates afterwards.
    model_box.fill("shapes-v1")
    model_box.press("Enter")
    page.fill("#prompt-box textarea", "two blue squares")
    page.click("#generate-btn")
    page.get_by_text("Done:").wait_for(timeout=90_000)


def test_load_settings_from_a_saved_png_fills_the_form(app_url, page, tmp_path):
    from PIL import Image

    from studio import metadata

    url, _ = app_url
    params = metadata.GenerationParams(prompt="three small pink stars", negative_prompt="blurry", steps=17,
                                       sampler="Euler a", cfg_scale=6.5, seed=4242, width=64, height=64, model="shapes-v1")
    png = metadata.save_png(Image.new("RGB", (64, 64), "gray"), params, tmp_path)
    page.goto(url)
    page.get_by_text("Load settings from image").click()
    page.locator("#settings-png input[type=file]").set_input_files(str(png))
    page.get_by_text("Settings loaded (seed 4242)").wait_for(timeout=20_000)
    assert page.input_value("#prompt-box textarea") == "three small pink stars"
    assert page.input_value("#negative-box textarea") == "blurry"
    assert page.input_value("#seed-box input") == "4242"
    assert page.input_value("#steps-box input[type=number]") == "17"
