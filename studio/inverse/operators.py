"""Measurement operators for inverse problems, y = A(x) + n: a registry by name, each with its forward map and transpose.

Images are tensors (N, 3, H, W) in [-1, 1]; noise sigma is on that scale (DPS's sigma = 0.05).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from studio.errors import RequestError

OPERATORS: dict[str, type[Operator]] = {}


def register_operator(name: str):
    def add(cls):
        cls.name = name
        OPERATORS[name] = cls
        return cls

    return add


def operator_class(name: str) -> type[Operator]:
    if name not in OPERATORS:
        raise RequestError(f"Unknown operator {name!r}. Known operators: {', '.join(OPERATORS)}.")
    return OPERATORS[name]


def get_operator(name: str, **params) -> Operator:
    return operator_class(name)(**params)


def settings_text(cls: type[Operator], settings: dict) -> dict[str, str]:
    """An operator's settings as saved with an image ({"SR factor": "4"})."""
    return {p.setting: f"{settings[p.name]:g}" for p in cls.params}


@dataclass(frozen=True)
class Param:
    """One setting of an operator: the request field it reads, its page label, saved-settings key and range."""

    name: str  # InverseRequest field and operator keyword
    label: str  # the page's label
    setting: str  # key in the saved PNG settings
    default: float
    minimum: float
    maximum: float
    step: float = 1.0
    info: str = ""
    choices: tuple = ()  # a fixed set of values instead of a range


class Operator(ABC):
    """A linear measurement A with its transpose A^T (<A x, y> = <x, A^T y>), and what the page and job need to know.

    The registry carries each operator's label, settings (`params`), baseline and editor hint, so the Inverse job and
    tab dispatch on it instead of on names."""

    name: str = ""
    label: str = ""
    params: tuple[Param, ...] = ()
    baseline_label: str = "the measurement itself"  # what `estimate` (or mask blending, with a known_mask) gives
    hint: str = "Image (the clean image, or the measurement itself)"

    @classmethod
    def build(cls, size: int, settings: dict, seed: int = 0, hole: np.ndarray | None = None) -> Operator:
        """The operator for a request's settings on size x size images; `hole` (HxW bool at that size) is a painted
        region, used by operators that have one."""
        return cls(**{p.name: settings[p.name] for p in cls.params})

    def known_mask(self) -> torch.Tensor | None:
        """(1, 1, H, W), 1 where pixels are measured as they are: then the baseline is mask blending. None otherwise."""
        return None

    def measurement_size(self, size: int) -> int:
        """The side of y for size x size images (an uploaded measurement is resized to it)."""
        return size

    def from_upload(self, y: torch.Tensor) -> torch.Tensor:
        """An uploaded measurement (at measurement_size) as this operator's y."""
        return y

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def transpose(self, y: torch.Tensor) -> torch.Tensor: ...

    def estimate(self, y: torch.Tensor) -> torch.Tensor:
        """A crude image from the measurement (the classical answer; DPS may start from it): here y itself."""
        return y.clamp(-1, 1)

    def measure(self, x: torch.Tensor, sigma: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
        """y = A x + sigma * n, n standard normal."""
        clean = self.forward(x)
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
        return clean + sigma * noise


# ------------------------------------------------------------------ inpainting
@register_operator("inpainting")
class Inpainting(Operator):
    """Keeps the pixels where mask == 1 (mask (1, 1, H, W) or (N, 1, H, W)), zeroes the hole."""

    label = "Inpainting"
    params = (Param("box", "Box size", "Inpainting box", 0.4, 0.0, 0.9, 0.05, "side of the hole; painted strokes win"),
              Param("random_missing", "Random pixels missing", "Random pixels missing", 0.0, 0.0, 0.95, 0.05,
                    "0 = off (the box is used)"))
    baseline_label = "mask blending"
    hint = "Image (paint the hole to inpaint)"

    @classmethod
    def build(cls, size: int, settings: dict, seed: int = 0, hole: np.ndarray | None = None) -> Inpainting:
        if hole is not None and hole.any():
            mask = torch.from_numpy(~hole).float()[None, None]
        elif settings["random_missing"] > 0:
            mask = random_mask(size, settings["random_missing"], seed=seed)
        else:
            mask = box_mask(size, settings["box"])
        known = float(mask.mean())
        if known >= 1.0:
            raise RequestError("The mask has no hole: nothing to inpaint. Paint the region to fill, or use a box.")
        if known <= 0.0:
            raise RequestError("The mask covers the whole image: nothing is measured. That is plain generation; use Generate.")
        return cls(mask)

    def known_mask(self) -> torch.Tensor:
        return self.mask

    def from_upload(self, y):
        return self.forward(y)

    def __init__(self, mask: torch.Tensor):
        if mask.ndim == 2:
            mask = mask[None, None]
        self.mask = mask.float()

    def forward(self, x):
        return x * self.mask.to(x)

    def transpose(self, y):
        return y * self.mask.to(y)

    def estimate(self, y):
        """The known pixels, with the hole filled by their mean colour."""
        mask = self.mask.to(y)
        fill = (y * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True).clamp_min(1)
        return (y * mask + fill * (1 - mask)).clamp(-1, 1)


def box_mask(size: int, box: float = 0.5, centre: tuple[float, float] = (0.5, 0.5)) -> torch.Tensor:
    """1 outside a square hole whose side is `box` of the image, at `centre` (fractions); (1, 1, size, size)."""
    side = round(size * box)
    mask = torch.ones(1, 1, size, size)
    if side == 0:
        return mask
    cy, cx = round(centre[1] * size), round(centre[0] * size)
    top, left = max(0, min(size - side, cy - side // 2)), max(0, min(size - side, cx - side // 2))
    mask[..., top:top + side, left:left + side] = 0
    return mask


def random_mask(size: int, missing: float = 0.7, seed: int = 0) -> torch.Tensor:
    """Each pixel missing with probability `missing` (same for all channels)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, size, size, generator=g) >= missing).float()


# ------------------------------------------------------------------ blur
KERNEL = Param("kernel_size", "Kernel size", "Blur kernel", 9, 3, 31, 2)

class Convolution(Operator):
    """Per-channel convolution with zero padding (odd kernel); its transpose is the matching transposed convolution."""

    def __init__(self, kernel: torch.Tensor):
        if kernel.shape[-1] % 2 == 0 or kernel.shape[-2] % 2 == 0:
            raise RequestError(f"Blur kernels need an odd size (got {tuple(kernel.shape)}).")
        self.kernel = (kernel / kernel.sum()).float()

    def _weight(self, x):
        return self.kernel.to(x)[None, None].repeat(x.shape[1], 1, 1, 1)

    def forward(self, x):
        k = self.kernel.shape
        return F.conv2d(x, self._weight(x), padding=(k[0] // 2, k[1] // 2), groups=x.shape[1])

    def transpose(self, y):
        k = self.kernel.shape
        return F.conv_transpose2d(y, self._weight(y), padding=(k[0] // 2, k[1] // 2), groups=y.shape[1])


@register_operator("gaussian_blur")
class GaussianBlur(Convolution):
    label = "Gaussian blur"
    params = (KERNEL, Param("intensity", "Blur strength (px)", "Blur strength", 2.0, 0.5, 10.0, 0.5))

    def __init__(self, kernel_size: int = 9, intensity: float = 2.0):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise RequestError(f"Blur kernel size must be odd and positive (got {kernel_size}).")
        if intensity <= 0:
            raise RequestError(f"Blur strength must be positive (got {intensity}).")
        r = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
        g = torch.exp(-(r**2) / (2 * intensity**2))
        super().__init__((g[:, None] * g[None, :]).float())


@register_operator("motion_blur")
class MotionBlur(Convolution):
    """A straight streak of length `kernel_size` at `angle` degrees (a camera moving in one direction)."""

    label = "Motion blur"
    params = (KERNEL, Param("angle", "Motion angle (deg)", "Blur angle", 30.0, 0.0, 180.0, 5.0))

    def __init__(self, kernel_size: int = 9, angle: float = 30.0):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise RequestError(f"Blur kernel size must be odd and positive (got {kernel_size}).")
        k = torch.zeros(kernel_size, kernel_size, dtype=torch.float64)
        c = kernel_size // 2
        dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        for s in torch.linspace(-c, c, 4 * kernel_size):
            k[round(c - float(s) * dy), round(c + float(s) * dx)] += 1
        super().__init__(k.float())


# ------------------------------------------------------------------ super-resolution
@register_operator("super_resolution")
class SuperResolution(Operator):
    """Downsampling by averaging `factor` x `factor` blocks; the transpose spreads each value back over its block."""

    label = "Super-resolution"
    params = (Param("factor", "SR factor", "SR factor", 4, 2, 4, choices=(2, 4)),)
    baseline_label = "bicubic"

    def measurement_size(self, size: int) -> int:
        return size // self.factor

    def __init__(self, factor: int = 4):
        if factor not in (2, 4, 8):
            raise RequestError(f"Super-resolution factor must be 2, 4 or 8 (got {factor}).")
        self.factor = factor

    def forward(self, x):
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise RequestError(f"Image size {tuple(x.shape[-2:])} is not a multiple of the factor {self.factor}.")
        return F.avg_pool2d(x, self.factor)

    def transpose(self, y):
        return F.interpolate(y, scale_factor=self.factor, mode="nearest") / self.factor**2

    def estimate(self, y):
        """Bicubic upsampling."""
        return F.interpolate(y, scale_factor=self.factor, mode="bicubic", align_corners=False).clamp(-1, 1)
