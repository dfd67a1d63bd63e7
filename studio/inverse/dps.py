"""Diffusion Posterior Sampling (Chung et al. 2023) as the loop's correction hook, and the baselines it is compared to.

After each sampler step x_t -> x_{t-1}, DPS (Algorithm 1, Gaussian noise) moves the new sample toward the measurement:
    x_{t-1} <- x_{t-1} - zeta_t * grad_{x_t} ||y - A(D(x0_hat(x_t)))||^2,   zeta_t = zeta / ||y - A(D(x0_hat(x_t)))||
where x0_hat is the model's clean estimate and D the VAE decoder (identity for pixel models): the gradient runs
through the decoder and the UNet.

Fast DPS (`fast=True`) takes the gradient with respect to x0_hat only, with no backward pass through the UNet (the
manifold-preserving guidance of He et al. 2023 drops the same term): grad_{x_t} ~ (d x0_hat / d x_t with the
network's Jacobian left out) * grad_{x0_hat}: 1/sqrt(alpha_bar_t) for epsilon models in VP space, sqrt(alpha_bar_t)
for v-prediction, 1 for flow models; the loop gives it for every space (LoopState.x0_scale). The model call then
needs no gradients (and may run on an engine). The decoder in the gradient path may be a tiny one (AutoencoderTiny
distilled from the full VAE).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from studio.inverse.operators import Operator
from studio.sampling.loop import LoopState, noise_to

# The official DPS configs (pixel-space FFHQ, 1000 DDPM steps from pure noise) use zeta 0.3-0.5 per task. Measured
# on the embedded suite (latent, 50 steps starting half way from the measurement's estimate; see
# studio/shapes/evaluate_dps.py), zeta = 1 beat 0.5 and 3 on every task. Larger steps overshoot: the rule's step
# zeta / ||r|| * grad ||r||^2 keeps its length as the residual falls, so a large zeta circles the solution.
DEFAULT_ZETA = 1.0
DEFAULT_STRENGTH = 0.5  # start half way: from the measurement's estimate noised to the middle of the schedule


@dataclass
class DPSCorrection:
    """The loop's correction hook. Needs the loop's `needs_grad` (gradients through the model call)."""

    operator: Operator
    y: torch.Tensor  # the measurement, (N, 3, h, w) in [-1, 1]
    decode: Callable[[torch.Tensor], torch.Tensor]  # UNet latents -> images in [-1, 1], differentiable
    zeta: float
    # Started from pure noise with tens of steps instead of DPS's 1000, the first corrections (a_t ~ 0, so
    # d x0-hat / d x_t ~ 1/sqrt(a_t)) would throw the sample off the data and saturate the decoder; each correction's
    # RMS per latent element is capped. Runs that start half way never reach the cap.
    max_move: float = 0.2
    # Fast DPS: the gradient from x0_hat on, times d x0_hat / d x_t without the network's Jacobian (the loop's
    # state.x0_scale); False: full DPS, through the model call.
    fast: bool = False
    # With a tiny decoder in the gradient path: the full decoder, run without gradients every `offset_every` steps
    # to measure what the tiny one misses (offset = D(x0) - D_tiny(x0)); the residual is then taken on
    # D_tiny(x0) + offset, so DPS fits the measurement with the image the full decoder will give, while the
    # gradient stays the tiny decoder's. None: the decoder's output as it is.
    full_decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    offset_every: int = 10
    _offset: torch.Tensor | None = field(default=None, init=False, repr=False)  # the last measured offset

    def residual(self, x0_latents: torch.Tensor, i: int = 0) -> torch.Tensor:
        image = self.decode(x0_latents).float()
        if self.full_decode is not None:
            if self._offset is None or i % self.offset_every == 0:
                with torch.no_grad():
                    self._offset = self.full_decode(x0_latents.detach()).float() - image.detach()
            image = image + self._offset
        return self.y - self.operator.forward(image)

    def __call__(self, state: LoopState, next_latents: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x0 = state.x0_hat.detach().requires_grad_(True) if self.fast else state.x0_hat
            r = self.residual(x0, state.i)
            sq = r.pow(2).flatten(1).sum(1)  # per image
            norm = sq.detach().sqrt()
            state.metrics["residual_rms"] = float((norm / r[0].numel() ** 0.5).mean())
            if self.zeta == 0:
                return next_latents
            if self.fast:
                grad = torch.autograd.grad(sq.sum(), x0)[0] * state.x0_scale
            else:
                grad = torch.autograd.grad(sq.sum(), state.latents)[0]
        shape = (-1, *([1] * (grad.ndim - 1)))
        move = (self.zeta / norm.clamp_min(1e-8)).view(shape) * grad
        rms = move.pow(2).flatten(1).mean(1).sqrt().view(shape)
        move = move * (self.max_move / rms.clamp_min(1e-12)).clamp(max=1.0)
        return (next_latents - move).detach()


@dataclass
class MaskBlend:
    """Baseline for inpainting with an ordinary (non-inpainting) model, as diffusers' inpainting pipeline does for
    a 4-channel UNet: after each step, the known region is replaced by the measurement's latents noised to the next
    timestep; the hole is left to the model."""

    known_latents: torch.Tensor  # the measurement encoded, UNet space
    latent_mask: torch.Tensor  # 1 where known, at latent size
    scheduler: object
    generator: torch.Generator

    def __call__(self, state: LoopState, next_latents: torch.Tensor) -> torch.Tensor:
        timesteps = self.scheduler.timesteps
        idx = state.i  # index of the next timestep
        if idx < len(timesteps):
            noise = torch.randn(self.known_latents.shape, generator=self.generator).to(self.known_latents)
            known = noise_to(self.scheduler, self.known_latents, noise, timesteps[idx:idx + 1])
        else:
            known = self.known_latents
        blended = self.latent_mask * known + (1 - self.latent_mask) * next_latents
        return blended.to(next_latents.dtype)  # the fp32 mask must not promote half-precision latents


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A pixel mask (1 known) at latent size: a latent cell is known only when all its pixels are."""
    return (F.adaptive_avg_pool2d(mask.float(), size) > 0.999).float()
