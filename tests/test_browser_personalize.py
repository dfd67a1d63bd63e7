"""The Personalize tab in a real browser: five images dropped, DreamBooth (full) with prior preservation from two
class prompts, started twice in a row (each start clears the last run's outputs), then again with one setting
changed."""
from __future__ import annotations

from test_browser import (ROOT, app_url, count_runs_done, fill_field,  # noqa: F401 - fixtures, the skip mark
                          page, pytestmark)

SCREENSHOT = "/tmp/personalize_page.png"
HEARTS = sorted(str(p) for p in (ROOT / "assets" / "personalize" / "heart").glob("*.png"))


def test_dreambooth_with_class_prompts_twice_then_changed(app_url, page):  # noqa: F811
    url, _ = app_url
    page.goto(url)
    page.get_by_role("tab", name="Personalize").click()
    page.locator("#pz-images input[type=file]").set_input_files(HEARTS)
    page.locator("#pz-captions").get_by_text("heart-5.png").wait_for(timeout=20_000)
    page.locator("#pz-method").get_by_text("DreamBooth (full fine-tuning)").click()
    fill_field(page, "pz-class", "diamond")
    page.get_by_text("Settings", exact=True).first.click()
    fill_field(page, "pz-steps", "4")
    page.get_by_label("Prior preservation (class images from the base model)").check()
    page.get_by_label("Class images", exact=True).fill("4")
    fill_field(page, "pz-class-prompts", "a <class>\na big blue <class> on the left")
    count_runs_done(page, "pz-status", "Done:")
    for k in range(2):
        page.locator("#pz-start").click()
        page.locator("#pz-status").get_by_text("parameters (dreambooth-full)").wait_for(timeout=120_000)
        assert page.locator("#pz-result").inner_text().strip() == ""  # the last run's "Saved" line is gone
        page.wait_for_function(f"window.__done === {k + 1}", timeout=240_000)
        assert "Saved:" in page.locator("#pz-result").inner_text()
    fill_field(page, "pz-steps", "3")
    page.locator("#pz-start").click()
    page.wait_for_function("window.__done === 3", timeout=240_000)
    assert "Done: 3 steps" in page.locator("#pz-status").inner_text()
    assert page.locator("#pz-samples img").count() == 1
    assert page.get_by_text("Error", exact=True).count() == 0
    page.screenshot(path=SCREENSHOT, full_page=True)
