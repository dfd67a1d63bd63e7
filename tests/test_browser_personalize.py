"""The Personalize tab in a real browser: five images dropped, DreamBooth (full) with prior preservation from two
class prompts, started twice in a row (each start clears the last run's outputs), then again with one setting
changed."""
from __future__ import annotations

from test_browser import ROOT, app_url, page, pytestmark  # noqa: F401 - fixtures and the skip-without-chromium mark

SCREENSHOT = "/tmp/personalize_page.png"
HEARTS = sorted(str(p) for p in (ROOT / "assets" / "personalize" / "heart").glob("*.png"))

COUNT_DONE = """() => { window.__done = 0; let was = false;
  new MutationObserver(() => { const now = document.querySelector('#pz-status').innerText.includes('Done:');
    if (now && !was) window.__done += 1; was = now; })
  .observe(document.querySelector('#pz-status'), {subtree: true, childList: true, characterData: true}); }"""


def _fill(page, elem_id: str, value: str):
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")


def test_dreambooth_with_class_prompts_twice_then_changed(app_url, page):  # noqa: F811
    url, _ = app_url
    page.goto(url)
    page.get_by_role("tab", name="Personalize").click()
    page.locator("#pz-images input[type=file]").set_input_files(HEARTS)
    page.locator("#pz-captions").get_by_text("heart-5.png").wait_for(timeout=20_000)
    page.locator("#pz-method").get_by_text("DreamBooth (full fine-tuning)").click()
    _fill(page, "pz-class", "diamond")
    page.get_by_text("Settings", exact=True).first.click()
    _fill(page, "pz-steps", "4")
    page.get_by_label("Prior preservation (class images from the base model)").check()
    page.get_by_label("Class images", exact=True).fill("4")
    _fill(page, "pz-class-prompts", "a <class>\na big blue <class> on the left")
    page.evaluate(COUNT_DONE)
    for k in range(2):
        page.locator("#pz-start").click()
        page.locator("#pz-status").get_by_text("parameters (dreambooth-full)").wait_for(timeout=120_000)
        assert page.locator("#pz-result").inner_text().strip() == ""  # the last run's "Saved" line is gone
        page.wait_for_function(f"window.__done === {k + 1}", timeout=240_000)
        assert "Saved:" in page.locator("#pz-result").inner_text()
    _fill(page, "pz-steps", "3")
    page.locator("#pz-start").click()
    page.wait_for_function("window.__done === 3", timeout=240_000)
    assert "Done: 3 steps" in page.locator("#pz-status").inner_text()
    assert page.locator("#pz-samples img").count() == 1
    assert page.get_by_text("Error", exact=True).count() == 0
    page.screenshot(path=SCREENSHOT, full_page=True)
