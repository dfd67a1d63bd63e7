"""Attribute classifier for shapes scenes: judges prompt adherence and gives features for Frechet distances."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from studio.sampling.previews import from_uint8
from studio.shapes import attributes

HEADS: dict[str, int] = {
    "kind": 2,
    "shape": len(attributes.SHAPES),
    "colour": len(attributes.COLOURS),
    "count": 3,
    "position": len(attributes.POSITIONS),
    "size": len(attributes.SIZES),
    "pose": len(attributes.POSES),
}
FEATURE_DIM = 256


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class AttributeClassifier(nn.Module):
    """A small CNN: RGB in [-1, 1] at 64x64 -> one logit vector per attribute head."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv(3, w, 1), _conv(w, w, 1),
            _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1),
            _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w, 1),
            _conv(4 * w, FEATURE_DIM, 2), _conv(FEATURE_DIM, FEATURE_DIM, 1),
        )
        # Positions and counts need to know where things are: keep a coarse spatial map, not only a global average.
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(4 * FEATURE_DIM, FEATURE_DIM), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, n) for name, n in HEADS.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.pool(self.body(x)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {name: head(f) for name, head in self.heads.items()}


images_to_tensor = from_uint8  # uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]


def save_weights(model: nn.Module, folder: str | Path, config: dict, metrics: dict | None = None) -> None:
    """A small torch model as folder/model.safetensors + config.json (+ metrics.json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))


def load_weights(model: nn.Module, folder: str | Path, device: str | torch.device, what: str) -> nn.Module:
    """Fill `model` from folder/model.safetensors; in eval mode, gradients off for its parameters."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"No {what} weights at {path}")
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval().requires_grad_(False)


def save(model: AttributeClassifier, folder: str | Path, metrics: dict | None = None) -> None:
    config = {"heads": HEADS, "feature_dim": FEATURE_DIM, "shapes": list(attributes.SHAPES),
              "colours": list(attributes.COLOURS), "positions": list(attributes.POSITIONS),
              "sizes": list(attributes.SIZES), "poses": list(attributes.POSES)}
    save_weights(model, folder, config, metrics)


def load(folder: str | Path, device: str | torch.device = "cpu") -> AttributeClassifier:
    return load_weights(AttributeClassifier(), folder, device, "evaluator")


@torch.no_grad()
def predict(model: AttributeClassifier, images: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Predicted class index per head for uint8 images (N, 64, 64, 3)."""
    device = next(model.parameters()).device
    out: dict[str, list[np.ndarray]] = {name: [] for name in HEADS}
    for i in range(0, len(images), batch):
        logits = model(images_to_tensor(images[i:i + batch], device))
        for name, v in logits.items():
            out[name].append(v.argmax(1).cpu().numpy())
    return {name: np.concatenate(v) for name, v in out.items()}


@torch.no_grad()
def features(model: AttributeClassifier, images: np.ndarray, batch: int = 256) -> np.ndarray:
    device = next(model.parameters()).device
    chunks = [model.features(images_to_tensor(images[i:i + batch], device)).cpu().numpy() for i in range(0, len(images), batch)]
    return np.concatenate(chunks).astype(np.float64)


def accuracy(pred: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-head accuracy over the samples where the head applies (target >= 0)."""
    result = {}
    for name in HEADS:
        mask = target[name] >= 0
        if mask.any():
            result[name] = float((pred[name][mask] == target[name][mask]).mean())
    return result


def adherence(pred: dict[str, np.ndarray], wanted: dict[str, np.ndarray]) -> np.ndarray:
    """Per sample: True when every attribute the prompt asks for (wanted >= 0) is what the evaluator sees."""
    ok = np.ones(len(next(iter(wanted.values()))), dtype=bool)
    for name in HEADS:
        w = wanted[name]
        ok &= (w < 0) | (pred[name] == w)
    return ok


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr(sqrt(s1 s2)) = sum of sqrt of the eigenvalues of s1 s2 (real and >= 0 up to rounding, both being PSD).
    eig = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig).sum())
