"""The 2D playground's distributions: samplers registered by name, and a target made of points the user drew."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from studio.errors import RequestError

MIN_DRAWN_POINTS = 8
DRAWN_JITTER = 0.1  # std of the Gaussian put around each drawn point, so the target has a density


@dataclass(frozen=True)
class Distribution:
    """A named 2D distribution: `sample(n, generator)` returns an (n, 2) float32 tensor."""

    name: str
    sample: Callable[[int, torch.Generator], torch.Tensor]


def gaussian(n: int, generator: torch.Generator) -> torch.Tensor:
    """The standard normal N(0, I)."""
    return torch.randn(n, 2, generator=generator)


def eight_gaussians(n: int, generator: torch.Generator, scale: float = 5.0, var: float = 0.1) -> torch.Tensor:
    """Eight Gaussians on a circle of radius 5, as torchcfm's `sample_8gaussians` (its covariance is sqrt(var) I,
    so the standard deviation is var ** 0.25, about 0.56)."""
    angles = torch.arange(8) * (math.pi / 4)
    centers = scale * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    which = torch.randint(0, 8, (n,), generator=generator)
    return centers[which] + var**0.25 * torch.randn(n, 2, generator=generator)


def moons(n: int, generator: torch.Generator, noise: float = 0.2) -> torch.Tensor:
    """Two interleaved half circles (scikit-learn's make_moons, noise 0.2) scaled as torchcfm's `sample_moons`: 3x - 1."""
    upper = torch.rand(n, generator=generator) < 0.5
    angle = math.pi * torch.rand(n, generator=generator)
    outer = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    inner = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    points = torch.where(upper[:, None], outer, inner) + noise * torch.randn(n, 2, generator=generator)
    return 3 * points - 1


def checkerboard(n: int, generator: torch.Generator) -> torch.Tensor:
    """The 4x4 checkerboard on [-4, 4]^2 of FFJORD (Grathwohl et al. 2019): uniform on the dark squares."""
    x = 4 * torch.rand(n, generator=generator) - 2
    y = torch.rand(n, generator=generator) - 2 * torch.randint(0, 2, (n,), generator=generator) + torch.floor(x) % 2
    return 2 * torch.stack([x, y], dim=1)


DISTRIBUTIONS: dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
    "gaussian": gaussian, "8gaussians": eight_gaussians, "moons": moons, "checkerboard": checkerboard,
}
SOURCES = ("gaussian", "8gaussians")  # what the page offers as a source; every name works on either side
TARGETS = ("moons", "checkerboard")


def drawn(points: np.ndarray | list, jitter: float = DRAWN_JITTER) -> Distribution:
    """Points the user drew, as an empirical distribution smoothed by a small Gaussian around each point."""
    array = np.asarray(points, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 2:
        raise RequestError(f"Drawn points must be (x, y) pairs; got an array of shape {array.shape}.")
    if len(array) < MIN_DRAWN_POINTS:
        raise RequestError(f"Draw at least {MIN_DRAWN_POINTS} target points (got {len(array)}).")
    if not np.isfinite(array).all():
        raise RequestError("Drawn points must be finite numbers.")
    table = torch.from_numpy(array)

    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        which = torch.randint(0, len(table), (n,), generator=generator)
        return table[which] + jitter * torch.randn(n, 2, generator=generator)

    return Distribution(f"drawn ({len(array)} points)", sample)


def parse_points(text: str) -> np.ndarray:
    """Drawn points as text, one 'x, y' pair per line (blank lines skipped), as an (m, 2) array."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        try:
            if len(parts) != 2:
                raise ValueError
            rows.append((float(parts[0]), float(parts[1])))
        except ValueError:
            raise RequestError(f"Point line {number} should be 'x, y' (two numbers); got {line.strip()!r}.") from None
    return np.asarray(rows, dtype=np.float32).reshape(-1, 2)


def get_distribution(spec: str | np.ndarray | list) -> Distribution:
    """A distribution by registered name, or drawn points given as an (m, 2) array; unknown names list the known ones."""
    if not isinstance(spec, str):
        return drawn(spec)
    if spec not in DISTRIBUTIONS:
        raise RequestError(f"Unknown distribution {spec!r}; known: {', '.join(DISTRIBUTIONS)} (or drawn points).")
    return Distribution(spec, DISTRIBUTIONS[spec])
