"""The playground's pictures, drawn with PIL alone: trajectories over the target, and W2 against Euler steps."""
from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw, ImageFont

SIZE = 360
COLORS = {"random": (230, 120, 20), "ot": (30, 100, 200), "sinkhorn": (40, 150, 70), "reflow": (140, 60, 170)}
OTHER = (90, 90, 90)
TARGET = (150, 190, 230, 110)
PATH = (110, 120, 30, 90)
START = (20, 20, 20, 200)
END = (30, 80, 200, 230)
Bounds = tuple[float, float, float, float]  # x_min, x_max, y_min, y_max


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def bounds_of(*clouds: torch.Tensor, margin: float = 0.08) -> Bounds:
    """A square view that holds every point of the given (n, 2) clouds, with a margin."""
    points = torch.cat([c.reshape(-1, 2) for c in clouds])
    low, high = points.min(dim=0).values, points.max(dim=0).values
    center, half = (low + high) / 2, float((high - low).max()) / 2 * (1 + margin) + 1e-6
    return float(center[0]) - half, float(center[0]) + half, float(center[1]) - half, float(center[1]) + half


def _to_pixels(points: torch.Tensor, bounds: Bounds, size: int) -> list[tuple[float, float]]:
    x_min, x_max, y_min, y_max = bounds
    u = (points[:, 0] - x_min) / (x_max - x_min) * (size - 1)
    v = (y_max - points[:, 1]) / (y_max - y_min) * (size - 1)
    return list(zip(u.tolist(), v.tolist()))


def _dots(draw: ImageDraw.ImageDraw, pixels: list[tuple[float, float]], color: tuple, radius: float) -> None:
    for u, v in pixels:
        draw.ellipse([u - radius, v - radius, u + radius, v + radius], fill=color)


def trajectory_plot(trajectory: torch.Tensor, target: torch.Tensor, bounds: Bounds, title: str = "",
                    upto: int | None = None, paths: int = 256, size: int = SIZE) -> Image.Image:
    """Target points (light blue) and the first `paths` trajectories (olive) from their starts (black) to where they
    are after `upto` Euler steps (blue; default: the end). `trajectory` is (steps + 1, n, 2)."""
    upto = len(trajectory) - 1 if upto is None else upto
    shown = trajectory[: upto + 1, :paths]
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image, "RGBA")
    _dots(draw, _to_pixels(target, bounds, size), TARGET, 1.5)
    lines = [_to_pixels(shown[:, k], bounds, size) for k in range(shown.shape[1])]
    if upto > 0:
        for line in lines:
            draw.line(line, fill=PATH, width=1)
    _dots(draw, [line[0] for line in lines], START, 1.5)
    _dots(draw, [line[-1] for line in lines], END, 1.8)
    if title:
        draw.text((6, 4), title, fill="black", font=_font(14))
    return image


def side_by_side(images: list[Image.Image], gap: int = 6) -> Image.Image:
    """Panels in one row, white between them."""
    sheet = Image.new("RGB", (sum(im.width for im in images) + gap * (len(images) - 1), max(im.height for im in images)),
                      "white")
    x = 0
    for im in images:
        sheet.paste(im, (x, 0))
        x += im.width + gap
    return sheet


def w2_chart(w2: dict[str, dict[int, float]], width: int = 480, height: int = 320) -> Image.Image:
    """W2 to the target against Euler steps (log2 axis), one line per model, with a legend."""
    font = _font(12)
    left, right, top, bottom = 52, 110, 16, 40
    steps = sorted({k for line in w2.values() for k in line})
    y_max = max(v for line in w2.values() for v in line.values()) * 1.1 or 1.0
    span = max(math.log2(steps[-1]) - math.log2(steps[0]), 1.0)

    def at(k: int, value: float) -> tuple[float, float]:
        u = left + (math.log2(k) - math.log2(steps[0])) / span * (width - left - right)
        return u, top + (1 - value / y_max) * (height - top - bottom)

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    for k in steps:
        u, _ = at(k, 0)
        draw.line([(u, height - bottom), (u, height - bottom + 4)], fill="black")
        draw.text((u - 4, height - bottom + 6), str(k), fill="black", font=font)
    for tick in range(5):
        value = y_max * tick / 4
        _, v = at(steps[0], value)
        draw.line([(left - 4, v), (left, v)], fill="black")
        draw.text((4, v - 7), f"{value:.2f}", fill="black", font=font)
    draw.text(((width - right + left) / 2 - 40, height - 18), "Euler steps", fill="black", font=font)
    draw.text((left + 4, 0), "W2 to the target", fill="black", font=font)
    for row, (name, line) in enumerate(w2.items()):
        color = COLORS.get(name, OTHER)
        points = [at(k, line[k]) for k in sorted(line)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for u, v in points:
            draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=color)
        y = top + 4 + 18 * row
        draw.line([(width - right + 10, y + 7), (width - right + 30, y + 7)], fill=color, width=3)
        draw.text((width - right + 34, y), name, fill="black", font=font)
    return image
