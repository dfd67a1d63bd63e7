"""The Guidance sweep tab in a real browser: a 2x2 sweep fills the grid, the status and the per-column table."""
from __future__ import annotations

from test_browser import app_url, page, pytestmark  # noqa: F401 - fixtures and the skip-without-chromium mark

SCREENSHOT = "/tmp/sweep_page.png"


def test_sweep_tab_runs_a_small_grid(app_url, page):  # noqa: F811
    url, outputs = app_url
    page.goto(url)
    page.get_by_role("tab", name="Guidance sweep").click()
    page.locator("#sweep-prompt textarea").fill("a big red star")
    page.locator("#sweep-scales :is(textarea, input)").fill("1, 5")
    for box, value in (("#sweep-rows", "2"), ("#sweep-steps", "8")):
        number = page.locator(f"{box} input[type=number]")
        number.fill(value)
        number.press("Tab")
    page.click("#sweep-run")
    page.locator("#sweep-status").get_by_text("Done:").wait_for(timeout=120_000)
    # Gradio 6 draws a virtual table: count its rows from the grid's aria-rowcount (header + one per column).
    assert page.locator("#sweep-table [role=grid]").get_attribute("aria-rowcount") == "3"
    assert page.locator("#sweep-grid img").count() == 1
    assert len(list(outputs.glob("*.png"))) == 4
    page.locator("#sweep-plot canvas, #sweep-plot svg").first.wait_for(timeout=10_000)
    page.screenshot(path=SCREENSHOT, full_page=True)
