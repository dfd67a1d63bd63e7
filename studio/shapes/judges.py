"""The embedded suite's judges (studio.judges protocol): its evaluator of clean images and its noise-aware classifier."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio.shapes import evaluator, noisy_classifier, prompts

EVALUATOR_SIZE = 64  # the evaluator judges 64x64 images


class ShapesJudges:
    """Loaded from a suite folder: evaluator/ (clean images) and noisy_classifier/ (x_t), each optional."""

    def __init__(self, folder: Path, device: str | torch.device):
        self._evaluator = evaluator.load(folder / "evaluator", device) if (folder / "evaluator").is_dir() else None
        noisy = folder / "noisy_classifier"
        self._noisy = noisy_classifier.load(noisy, device) if noisy.is_dir() else None
        if self._evaluator is None:
            self.image_logits = None
            self.adherence = self.features = None
        if self._noisy is None:
            self.noisy_logits = None

    def attributes(self, text: str) -> dict[str, int]:
        return prompts.asked_attributes(text)

    def image_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._evaluator(images.clamp(-1, 1))

    def noisy_logits(self, latents: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._noisy(latents, t)

    def adherence(self, images: np.ndarray, asked: dict[str, int]) -> np.ndarray:
        batch = _evaluator_size(images)
        wanted = {head: np.full(len(batch), asked.get(head, -1)) for head in evaluator.HEADS}
        return evaluator.adherence(evaluator.predict(self._evaluator, batch), wanted)

    def features(self, images: np.ndarray) -> np.ndarray:
        return evaluator.features(self._evaluator, _evaluator_size(images))


def _evaluator_size(images: np.ndarray) -> np.ndarray:
    if images.shape[1:3] == (EVALUATOR_SIZE, EVALUATOR_SIZE):
        return images
    size = (EVALUATOR_SIZE, EVALUATOR_SIZE)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BILINEAR)) for im in images])


def load(folder: Path, device: str | torch.device) -> ShapesJudges:
    return ShapesJudges(Path(folder), device)
