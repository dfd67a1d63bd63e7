"""The Flow matching tab in a real browser: the 2D playground trained twice in a row (then with one setting changed),
and the flow-vs-diffusion grid at two evaluation counts."""
from __future__ import annotations

from test_browser import app_url, fill_field, page, pytestmark  # noqa: F401 - fixtures and the skip mark

SCREENSHOT = "/tmp/flow_page.png"


def _open(page, url):
    page.goto(url)
    page.get_by_role("tab", name="Flow matching").click()
    page.locator("#flow2d-train").wait_for(timeout=20_000)


def test_playground_trains_twice_then_with_fewer_steps(app_url, page):  # noqa: F811
    url, _ = app_url
    _open(page, url)
    fill_field(page, "flow2d-train-steps", "300")
    for _ in range(2):
        page.locator("#flow2d-train").click()
        page.locator("#flow2d-status").get_by_text("Training").wait_for(timeout=60_000)
        page.locator("#flow2d-status").get_by_text("Done in").wait_for(timeout=240_000)
    fill_field(page, "flow2d-train-steps", "200")
    page.locator("#flow2d-train").click()
    page.locator("#flow2d-status").get_by_text("Training").wait_for(timeout=60_000)
    page.locator("#flow2d-status").get_by_text("Done in").wait_for(timeout=240_000)
    assert page.locator("#flow2d-table").get_by_text("ot", exact=True).count() >= 1
    assert page.locator("#flow2d-trajectories img").count() == 1
    assert page.get_by_text("Error", exact=True).count() == 0
    page.screenshot(path=SCREENSHOT, full_page=True)


def test_comparison_grid_fills_in(app_url, page):  # noqa: F811
    url, _ = app_url
    _open(page, url)
    for n in ("8", "16", "32"):  # keep 1, 2, 4 evaluations: seconds on a CPU
        page.locator("#flow-evaluations").get_by_label(n, exact=True).uncheck()
    page.locator("#flow-compare").click()
    page.locator("#flow-status").get_by_text("Done:").wait_for(timeout=240_000)
    assert page.locator("#flow-grid img").count() == 1
    # Gradio 6 draws a virtual table: a header and a row per model and evaluation count (1, 2, 4).
    rows = int(page.locator("#flow-table [role=grid]").get_attribute("aria-rowcount"))
    assert rows - 1 in (3, 6, 9)  # the diffusion suite, and the flow suite and its reflow when installed
