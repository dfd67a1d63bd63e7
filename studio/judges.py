"""The protocol for a model folder's optional judges: classifiers that say which attributes a text asks for and
which an image (or a noisy latent) shows. Guidance and the sweep's measured adherence use them; most models have none.

A folder opts in with `judges.json` at its root naming a loader, as diffusers' model_index.json names classes:
    {"loader": "studio.shapes.judges:load"}
The loader is called as `loader(folder, device)` and returns an object with the methods of `Judges`. Only loaders
inside this project's own package are imported: a downloaded folder cannot make the studio run its code.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from studio.errors import ModelError

JUDGES_FILE = "judges.json"
TRUSTED_PACKAGE = "studio."


class Judges(Protocol):
    """What a model's judges can say. `image_logits` / `noisy_logits` are None when the folder has no such judge."""

    def attributes(self, text: str) -> dict[str, int]:
        """What a text asks for, as attribute -> class index (only the attributes it names; {} for none it knows)."""

    def image_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for clean images (N, 3, H, W) in [-1, 1]; differentiable (text guidance)."""

    def noisy_logits(self, latents: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for noisy latents x_t in VP form at timesteps t; differentiable (classifier guidance)."""

    def adherence(self, images: np.ndarray, asked: dict[str, int]) -> np.ndarray:
        """Per image (uint8 (N, H, W, 3)): True when it shows every asked attribute."""

    def features(self, images: np.ndarray) -> np.ndarray:
        """A feature vector per image (uint8 (N, H, W, 3)), for diversity and Frechet distances."""


def load(folder: str | Path, device: str | torch.device) -> Judges | None:
    """The judges a model folder ships (see the module docstring), or None when it ships none."""
    spec_file = Path(folder) / JUDGES_FILE
    if not spec_file.is_file():
        return None
    try:
        loader = json.loads(spec_file.read_text())["loader"]
        module_name, _, attr = loader.partition(":")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"{spec_file} should be {{\"loader\": \"package.module:function\"}} ({type(e).__name__}: {e}).") from e
    if not module_name.startswith(TRUSTED_PACKAGE) or not attr:
        raise ModelError(f"{spec_file} names the loader {loader!r}; only loaders inside the studio's own package "
                         f"({TRUSTED_PACKAGE}...) are run.")
    try:
        return getattr(importlib.import_module(module_name), attr)(Path(folder), device)
    except (ImportError, AttributeError, OSError) as e:
        raise ModelError(f"Could not load the judges of {folder} with {loader}: {type(e).__name__}: {e}") from e
