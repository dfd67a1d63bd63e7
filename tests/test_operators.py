"""Measurement operators: adjoint identity, noise level, masks, registry errors."""
from __future__ import annotations

import pytest
import torch

from studio.errors import RequestError
from studio.inverse.operators import OPERATORS, box_mask, get_operator, random_mask

CASES = [
    ("inpainting", {"mask": box_mask(32, 0.4)}),
    ("inpainting", {"mask": random_mask(32, 0.7, seed=1)}),
    ("gaussian_blur", {"kernel_size": 9, "intensity": 2.0}),
    ("motion_blur", {"kernel_size": 7, "angle": 30.0}),
    ("super_resolution", {"factor": 2}),
    ("super_resolution", {"factor": 4}),
]


@pytest.mark.parametrize("name, params", CASES)
def test_adjoint_identity(name, params):
    op = get_operator(name, **params)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randn(op.forward(x).shape, generator=g, dtype=torch.float64)
    op_x, opt_y = op.forward(x), op.transpose(y)
    assert opt_y.shape == x.shape
    assert torch.allclose((op_x * y).sum(), (x * opt_y).sum(), rtol=1e-5)


def test_measurement_noise_has_the_asked_sigma():
    op = get_operator("super_resolution", factor=2)
    x = torch.zeros(4, 3, 64, 64)
    y = op.measure(x, sigma=0.05, generator=torch.Generator().manual_seed(0))
    assert abs(float(y.std()) - 0.05) < 0.002


def test_masks_have_the_asked_hole():
    m = box_mask(64, 0.5)
    assert m.shape == (1, 1, 64, 64) and float((m == 0).float().mean()) == pytest.approx(0.25)
    assert m[0, 0, 32, 32] == 0 and m[0, 0, 0, 0] == 1
    r = random_mask(64, 0.7, seed=3)
    assert 0.25 < float(r.mean()) < 0.35


def test_blur_keeps_a_flat_image_flat_inside():
    op = get_operator("gaussian_blur", kernel_size=9, intensity=3.0)
    y = op.forward(torch.ones(1, 3, 32, 32))
    assert torch.allclose(y[..., 8:-8, 8:-8], torch.ones(1, 3, 16, 16), atol=1e-5)


@pytest.mark.parametrize("name, params, words", [
    ("deconvolution", {}, "Known operators: " + ", ".join(OPERATORS)),
    ("gaussian_blur", {"kernel_size": 8}, "odd"),
    ("super_resolution", {"factor": 3}, "factor must be 2, 4 or 8"),
])
def test_bad_operator_settings(name, params, words):
    with pytest.raises(RequestError, match=words.replace("+", r"\+")):
        get_operator(name, **params)
