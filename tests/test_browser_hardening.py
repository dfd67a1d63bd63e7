"""Repeated use, bad files and several users, in a real browser: what a new user tried and what broke."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from test_browser import CHROMIUM, CHROMIUM_ARGS, app_url, page, pytestmark  # noqa: F401 - fixtures, skip mark


def no_error_badges(page) -> bool:  # noqa: F811
    return page.get_by_text("Error", exact=True).count() == 0


def test_a_corrupt_png_for_settings_is_a_message_and_the_form_survives(app_url, page, tmp_path):  # noqa: F811
    url, _ = app_url
    page.goto(url)
    page.fill("#prompt-box textarea", "kept as typed")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 10)
    page.get_by_text("Load settings from image").click()
    page.locator("#settings-png input[type=file]").set_input_files(str(broken))
    page.locator("#status-line .status-error").get_by_text("Could not read settings from broken.png").wait_for(timeout=20_000)
    assert no_error_badges(page)
    assert page.input_value("#prompt-box textarea") == "kept as typed"  # nothing the user typed is lost


def test_out_of_range_steps_are_a_message_then_runs_twice_and_seed_used(app_url, page):  # noqa: F811
    url, outputs = app_url
    before = len(list(outputs.glob("*.png")))
    page.goto(url)
    assert page.input_value("#seed-used input") == ""  # no seed before any run (it used to say 0)
    page.fill("#prompt-box textarea", "a red star")
    steps = page.locator("#steps-box input[type=number]")
    for bad in ("0", "10000"):
        steps.fill(bad)
        steps.press("Tab")
        page.click("#generate-btn")
        page.locator("#status-line .status-error").get_by_text("Steps must be between 1 and 200").wait_for(timeout=20_000)
        assert page.input_value("#steps-box input[type=number]") == bad  # not clamped behind the user's back
    assert len(list(outputs.glob("*.png"))) == before  # nothing ran, nothing saved
    steps.fill("3")
    steps.press("Tab")
    page.fill("#seed-box input", "31")
    page.press("#seed-box input", "Tab")
    for k in range(2):  # as people iterate: the same click twice
        page.click("#generate-btn")
        page.wait_for_function(f"document.querySelectorAll('#gallery img').length === {k + 1}", timeout=120_000)
        page.locator("#status-line .status-ok").get_by_text("Done").wait_for(timeout=30_000)
        assert page.input_value("#seed-used input") == "31"
        # One image keeps the gallery's columns (Gradio spread a lone image over the whole width, zoomed and cropped).
        columns = page.evaluate("getComputedStyle(document.querySelector('#gallery .grid-container')).gridTemplateColumns")
        assert len(columns.split()) == 3, columns
    page.fill("#seed-box input", "32")
    page.press("#seed-box input", "Tab")
    page.click("#generate-btn")
    page.wait_for_function("document.querySelectorAll('#gallery img').length === 3", timeout=120_000)
    assert page.input_value("#seed-used input") == "32"
    page.locator("#status-line .status-ok").get_by_text("Done").wait_for(timeout=90_000)
    # The big view ends on the saved PNG: downloading it gives the file with its settings, not a settings-less preview.
    src = page.locator("#live-image img").first.get_attribute("src")
    saved = Image.open(io.BytesIO(page.request.get(src).body()))
    assert saved.format == "PNG" and "Seed: 32" in saved.info["parameters"]
    assert no_error_badges(page)


def test_a_huge_upload_to_the_inverse_editor_is_scaled_down_at_once_and_said(app_url, page, tmp_path):  # noqa: F811
    url, _ = app_url
    big = Image.new("RGB", (6000, 6000), "white")
    ImageDraw.Draw(big).ellipse((1500, 1500, 4500, 4500), fill="red")
    path = tmp_path / "big.png"
    big.save(path, optimize=True)
    page.goto(url)
    page.get_by_role("tab", name="Inverse problems").click()
    page.locator("#inverse-upload input[type=file]").set_input_files(str(path))
    page.locator("#inverse-status").get_by_text("Resized from 6000x6000 to 1024x1024").wait_for(timeout=60_000)
    page.locator("#inverse-steps input[type=number]").fill("3")
    page.locator("#inverse-run").click()
    page.locator("#inverse-status .status-ok").get_by_text("Done").wait_for(timeout=120_000)
    assert no_error_badges(page)


def test_stop_ends_only_the_job_of_the_user_who_pressed_it(app_url):  # noqa: F811
    from playwright.sync_api import sync_playwright

    url, _ = app_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        alice = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        bob = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        for user in (alice, bob):
            user.goto(url)
        alice.fill("#prompt-box textarea", "a big red star")
        alice.locator("#steps-box input[type=number]").fill("120")
        alice.locator("#steps-box input[type=number]").press("Tab")
        alice.click("#generate-btn")
        alice.locator("#status-line").get_by_text("Step").wait_for(timeout=60_000)
        bob.click("#stop-btn")  # Bob has nothing running: his Stop must not end Alice's run
        bob.locator("#status-line").get_by_text("Nothing of yours is running").wait_for(timeout=10_000)
        alice.locator("#status-line .status-ok").get_by_text("Done").wait_for(timeout=180_000)
        alice.locator("#steps-box input[type=number]").fill("200")  # long enough that Stop lands mid-run on any load
        alice.locator("#steps-box input[type=number]").press("Tab")
        alice.click("#generate-btn")  # Alice's own Stop ends her run, and the seed it used is still shown
        alice.locator("#status-line").get_by_text("Step").wait_for(timeout=60_000)
        alice.click("#stop-btn")
        try:
            alice.locator("#status-line").get_by_text("Stopped").wait_for(timeout=90_000)
        except Exception:
            alice.screenshot(path="/tmp/stop_test_failure.png", full_page=True)  # for the next person to look at
            raise
        assert alice.input_value("#seed-used input") != ""
        browser.close()


def test_the_controlnet_sketchpad_draws_without_picking_a_tool(app_url, page):  # noqa: F811
    url, _ = app_url
    page.goto(url)
    page.get_by_role("tab", name="ControlNet", exact=True).click()
    canvas = page.locator("#cn0-sketch canvas").last
    canvas.wait_for(timeout=20_000)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy)
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 30, steps=12)
    page.mouse.up()
    page.locator("#cn-show-maps").click()
    page.locator("#cn-status-line").get_by_text("Control maps at 64x64").wait_for(timeout=60_000)
    src = page.locator("#cn0-map img").first.get_attribute("src")
    control = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("L"))
    assert (control > 127).sum() > 10  # the stroke is in the map
