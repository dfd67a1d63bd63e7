"""The Inverse problems tab in a real browser: a short DPS super-resolution run fills the table; a box of 0 is a message."""
from __future__ import annotations

from test_browser import app_url, count_runs_done, fill_field, page, pytestmark  # noqa: F401 - fixtures, skip mark

SCREENSHOT = "/tmp/inverse_page.png"


def _open_tab_with_a_sample(page, url):
    page.goto(url)
    page.get_by_role("tab", name="Inverse problems").click()
    page.click("#inverse-sample")
    # The editor shows the scene as its background once the click's update has arrived.
    page.locator("#inverse-editor canvas").first.wait_for(timeout=20_000)
    page.wait_for_timeout(1_000)


def _choose_operator(page, label: str):
    page.locator("#inverse-operator input").click()
    page.get_by_role("option", name=label).click()


def test_dps_super_resolution_runs_and_scores(app_url, page):  # noqa: F811
    url, _ = app_url
    _open_tab_with_a_sample(page, url)
    _choose_operator(page, "Super-resolution")
    page.locator("#inverse-factor").get_by_label("4").check()
    fill_field(page, "inverse-steps", "10")
    page.click("#inverse-run")
    page.locator("#inverse-status").get_by_text("Done in").wait_for(timeout=180_000)
    table = page.locator("#inverse-table")
    assert table.get_by_text("DPS", exact=True).count() >= 1
    assert table.get_by_text("baseline", exact=True).count() >= 1
    assert page.locator("#inverse-gallery img").count() == 4  # measurement, baseline, DPS, clean
    page.locator("#inverse-plot canvas, #inverse-plot svg").first.wait_for(timeout=10_000)
    page.screenshot(path=SCREENSHOT, full_page=True)


def test_fast_dps_with_the_tiny_decoder_twice_then_full(app_url, page):  # noqa: F811
    url, _ = app_url
    _open_tab_with_a_sample(page, url)
    fill_field(page, "inverse-steps", "6")
    page.locator("#inverse-dps-mode").get_by_label("Fast: from x0-hat").check()
    page.locator("#inverse-tiny-decoder input").check()
    count_runs_done(page, "inverse-status", "Done in")
    for k in range(2):  # the same click twice, then one setting changed
        page.click("#inverse-run")
        page.wait_for_function(f"window.__done === {k + 1}", timeout=120_000)
        assert "fast DPS (tiny decoder)" in page.locator("#inverse-status").inner_text()
    page.locator("#inverse-dps-mode").get_by_label("Full: through the UNet").check()
    page.click("#inverse-run")
    page.wait_for_function("window.__done === 3", timeout=120_000)
    assert "full DPS (tiny decoder)" in page.locator("#inverse-status").inner_text()
    assert page.locator("#inverse-gallery img").count() == 4


def test_inpainting_without_a_hole_is_a_message(app_url, page):  # noqa: F811
    url, _ = app_url
    _open_tab_with_a_sample(page, url)
    fill_field(page, "inverse-box", "0")
    page.click("#inverse-run")
    page.locator("#inverse-status").get_by_text("no hole").wait_for(timeout=60_000)
    assert page.locator("#inverse-status .status-error").count() == 1


def test_painted_strokes_form_the_hole():
    import numpy as np

    from studio.ui.inverse import editor_image

    background = np.full((64, 64, 4), 255, np.uint8)
    layer = np.zeros((128, 128, 4), np.uint8)  # a layer at another size is resized to the image's
    layer[20:40, 20:40, 3] = 200
    image, hole = editor_image({"background": background, "layers": [layer], "composite": background})
    assert image.shape == (64, 64, 3) and hole.shape == (64, 64)
    assert hole.sum() == 10 * 10 and hole[15, 15] == 1
    assert editor_image({"background": background, "layers": [np.zeros((64, 64, 4), np.uint8)]})[1] is None
