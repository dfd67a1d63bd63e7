"""A concept the suite never saw, for the Personalize feature: a heart shape. Draws the demo images
(`assets/personalize/heart/`) and judges generated images by template matching (heart vs the suite's six shapes).

The suite's evaluator knows only its own six shapes, so the heart needs a judge of its own. It is a template match,
defined (not trained) and checked on drawn data, the numbers in the Personalize model card:
1. the foreground is the largest connected blob of saturated pixels (the suite's backgrounds are low-saturation
   tones, its shape colours saturated; `foreground`); when much else stands out from the background (a plane fitted
   to the border pixels) beyond the blob, it is not a lone shape (a stick figure's shirt with its limbs and head);
2. the blob's bounding box is compared (IoU) with each shape's template mask stretched to that box: the heart's and
   the six suite shapes' (drawn with the suite's own `draw_object`);
3. it is a heart when the heart's template matches best and covers at least MIN_IOU of the union.
Colour: the mean RGB of the blob, nearest of the suite's eight colours.

`python -m studio.shapes.heart --out assets/personalize/heart` writes the five red demo images (and captions).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from studio.shapes.attributes import COLOURS, SHAPES, SceneObject
from studio.shapes.drawing import background, draw_object

TEMPLATE = 96  # template masks are drawn at this size, then cropped to their box
MIN_IOU = 0.6
SATURATION = 0.45  # (max - min) / max over RGB above this: a shape pixel, not background
MIN_PIXELS = 24  # smaller blobs are noise, not a shape
BACKGROUND_DISTANCE = 40.0  # RGB distance from the fitted background beyond which a pixel belongs to something
MAX_OTHER = 0.3  # more than this many pixels (per pixel of the blob) standing out elsewhere: not a lone shape
DEMO_LAYOUT = (  # (centre x, centre y, radius, seed of the background) of the five demo images, 64x64
    (32, 32, 14.0, 11), (20, 30, 10.0, 12), (44, 34, 11.5, 13), (32, 22, 9.0, 14), (31, 40, 13.0, 15),
)


def heart_polygon(cx: float, cy: float, r: float, n: int = 64) -> np.ndarray:
    """The classic heart curve x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t, scaled so its
    half-width is `r` and its box is centred on (cx, cy)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    y -= (y.max() + y.min()) / 2
    s = r / 16.0
    return np.stack([cx + s * x, cy + s * y], axis=1)


def draw_heart(img: np.ndarray, cx: float, cy: float, r: float, colour: tuple[int, int, int]) -> None:
    """An anti-aliased filled heart, drawn in place (as the suite's draw_object draws its shapes)."""
    pts = np.round(heart_polygon(cx, cy, r) * 16).astype(np.int32)
    cv2.fillPoly(img, [pts], colour, cv2.LINE_AA, 4)


def demo_images(colour: str = "red") -> list[np.ndarray]:
    """The five demo images: a heart of one colour on the suite's backgrounds, at several places and sizes."""
    images = []
    for cx, cy, r, seed in DEMO_LAYOUT:
        img, _ = background(np.random.default_rng(seed), 64)
        draw_heart(img, cx, cy, r, COLOURS[colour])
        images.append(img)
    return images


# ---------------------------------------------------------------- the judge
def foreground(image: np.ndarray) -> np.ndarray | None:
    """Mask of the largest blob of saturated pixels (uint8 HxWx3 in), or None when there is no blob worth judging."""
    rgb = image.astype(np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    mask = ((high - low) / np.maximum(high, 1.0) > SATURATION) & (high > 60)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[biggest, cv2.CC_STAT_AREA] < MIN_PIXELS:
        return None
    return labels == biggest


def others(image: np.ndarray, mask: np.ndarray) -> float:
    """Pixels that stand out from the background outside the blob (dilated by 2 px), per pixel of the blob. The
    background is a plane per channel fitted to the 2-pixel border (the suite's backgrounds are flat or linear)."""
    h, w, _ = image.shape
    ys, xs = np.mgrid[0:h, 0:w]
    border = np.zeros((h, w), bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    design = np.stack([np.ones(h * w), xs.ravel(), ys.ravel()], axis=1)
    rgb = image.reshape(-1, 3).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design[border.ravel()], rgb[border.ravel()], rcond=None)
    distance = np.linalg.norm(rgb - design @ coef, axis=1).reshape(h, w)
    near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return float(((distance > BACKGROUND_DISTANCE) & ~near).sum() / max(1, mask.sum()))


def _template(kind: str) -> np.ndarray:
    """A shape's mask cropped to its bounding box (drawn once, big)."""
    canvas = np.zeros((TEMPLATE, TEMPLATE, 3), np.uint8)
    c, r = TEMPLATE / 2, TEMPLATE * 0.38
    if kind == "heart":
        draw_heart(canvas, c, c, r, (255, 255, 255))
    else:
        draw_object(canvas, SceneObject(kind, "red", "big", (c, c), r / 1.1))
    mask = canvas[..., 0] > 127
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


KINDS = ("heart",) + SHAPES
_TEMPLATES: dict[str, np.ndarray] = {}


def shape_scores(mask: np.ndarray) -> dict[str, float]:
    """IoU of the blob with each kind's template stretched to the blob's bounding box."""
    if not _TEMPLATES:
        _TEMPLATES.update({k: _template(k) for k in KINDS})
    ys, xs = np.nonzero(mask)
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = box.shape
    scores = {}
    for kind, template in _TEMPLATES.items():
        fitted = cv2.resize(template.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA) > 0
        scores[kind] = float((fitted & box).sum() / max(1, (fitted | box).sum()))
    return scores


def judge(image: np.ndarray) -> dict:
    """{"shape": best-matching kind, "other" (not a lone shape) or None (nothing), "heart": bool, "colour": nearest
    suite colour or None, "scores": IoU per kind}."""
    mask = foreground(image)
    if mask is None:
        return {"shape": None, "heart": False, "colour": None, "scores": {}}
    scores = shape_scores(mask)
    mean = image[mask].astype(np.float32).mean(axis=0)
    colour = min(COLOURS, key=lambda name: float(((np.array(COLOURS[name]) - mean) ** 2).sum()))
    best = max(scores, key=scores.get) if others(image, mask) <= MAX_OTHER else "other"
    return {"shape": best, "heart": best == "heart" and scores[best] >= MIN_IOU, "colour": colour, "scores": scores}


def concept_rate(images: list[np.ndarray], colour: str | None = None) -> float:
    """Fraction of images judged a heart (and, when `colour` is given, of that colour)."""
    verdicts = [judge(im) for im in images]
    return float(np.mean([v["heart"] and (colour is None or v["colour"] == colour) for v in verdicts])) if verdicts else 0.0


def write_demo(out: Path, colour: str = "red") -> list[Path]:
    """The demo images as PNGs with a caption file each (kohya's convention: name.png + name.txt)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(demo_images(colour)):
        path = out / f"heart-{k + 1}.png"
        Image.fromarray(img).save(path)
        path.with_suffix(".txt").write_text(f"a {colour} <tok>\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("assets/personalize/heart"))
    p.add_argument("--colour", default="red", choices=list(COLOURS))
    args = p.parse_args(argv)
    for path in write_demo(args.out, args.colour):
        print(path)


if __name__ == "__main__":
    main()
