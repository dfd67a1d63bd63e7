"""The ControlNet tab in a real browser: a sketch drawn with the mouse, then a pose preset, through the embedded ControlNets."""
from __future__ import annotations

import numpy as np
from PIL import Image

from test_browser import app_url, page, pytestmark  # noqa: F401 - fixtures and the skip-without-chromium mark

SCREENSHOT = "/tmp/controlnet_page.png"


def _open(page, url):
    page.goto(url)
    page.get_by_role("tab", name="ControlNet", exact=True).click()
    page.locator("#cn0-sketch canvas").first.wait_for(timeout=20_000)


def _draw_star(page):
    page.locator("#cn0-sketch").scroll_into_view_if_needed()
    # No tool picked first: the sketchpad draws at once, as people expect (it has a white ground).
    canvas = page.locator("#cn0-sketch canvas").last
    box = canvas.bounding_box()
    side = min(box["width"], box["height"])  # the square drawing area sits in the middle of the editor
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    cx, cy, r = left + side * 0.3, top + side * 0.35, side * 0.17
    angles = np.linspace(-np.pi / 2, 3.5 * np.pi, 11)
    radii = np.where(np.arange(11) % 2 == 0, r, r * 0.45)
    points = [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii)]
    page.mouse.move(*points[0])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x, y, steps=6)
    page.mouse.up()


def _map(page, tmp_path, k: int) -> np.ndarray:
    src = page.locator(f"#cn{k}-map img").first.get_attribute("src")
    path = tmp_path / f"map{k}.png"
    path.write_bytes(page.request.get(src).body())
    return np.asarray(Image.open(path).convert("RGB"))


def test_sketch_to_image_shows_the_map_and_generates(app_url, page, tmp_path):  # noqa: F811
    url, outputs = app_url
    _open(page, url)
    page.locator("#cn-generate").click()  # nothing drawn yet: a message, not a dead page
    page.locator("#cn-status-line .status-error").get_by_text("draw something").wait_for(timeout=30_000)
    _draw_star(page)
    page.locator("#cn-prompt-box textarea").fill("a red star")
    page.locator("#cn-show-maps").click()
    page.locator("#cn0-map img").first.wait_for(timeout=30_000)
    control = _map(page, tmp_path, 0)
    assert control.shape[:2] == (64, 64)
    ys, xs = np.nonzero(control[..., 0] > 127)
    assert len(xs) > 30 and xs.mean() < 32 and ys.mean() < 32  # the star was drawn up and left
    page.locator("#cn-generate").click()
    page.locator("#cn-status-line").get_by_text("Done").wait_for(timeout=180_000)
    assert page.locator("#cn-gallery img").count() >= 1
    page.screenshot(path=SCREENSHOT, full_page=True)
    saved = list(outputs.rglob("*.png"))
    assert saved and "ControlNet 0" in Image.open(sorted(saved)[-1]).info["parameters"]


def test_pose_preset_drives_the_pose_controlnet(app_url, page, tmp_path):  # noqa: F811
    url, _ = app_url
    _open(page, url)
    page.locator("#cn0-source").get_by_label("Pose").check()
    page.locator("#cn0-net input").fill("shapes-v1-pose")
    page.locator("#cn0-net input").press("Enter")
    page.locator("#cn0-preset input").click()
    page.get_by_role("option", name="arms up", exact=True).click()
    page.wait_for_timeout(500)
    assert '"pose_keypoints_2d"' in page.locator("#cn0-pose-json textarea").input_value()
    page.locator("#cn0-pose-json textarea").fill("{not json")
    page.locator("#cn-generate").click()
    page.locator("#cn-status-line .status-error").get_by_text("not an OpenPose pose file").wait_for(timeout=30_000)
    page.locator("#cn0-preset input").click()
    page.get_by_role("option", name="waving", exact=True).click()
    page.wait_for_timeout(500)
    page.locator("#cn-prompt-box textarea").fill("a person in a green shirt waving")
    page.locator("#cn-generate").click()
    page.locator("#cn-status-line").get_by_text("Done").wait_for(timeout=180_000)
    pose_map = _map(page, tmp_path, 0)
    assert (pose_map.reshape(-1, 3).max(1) > 100).sum() > 50  # the coloured skeleton is shown
    # As people iterate: Generate again with the map the first run showed, then show the maps. The shown map is
    # not sent back as an input, so neither click fails.
    page.locator("#cn-status-line").get_by_text("Done").wait_for(timeout=10_000)
    page.locator("#cn-generate").click()
    page.locator("#cn-status-line").get_by_text("Step").wait_for(timeout=60_000)
    page.locator("#cn-status-line").get_by_text("Done").wait_for(timeout=180_000)
    page.locator("#cn-show-maps").click()
    page.locator("#cn-status-line").get_by_text("Control maps at 64x64").wait_for(timeout=60_000)
    assert page.get_by_text("Error", exact=True).count() == 0
