"""Conditional flow matching (Lipman et al. 2023; Tong et al. 2023, Eq. 14-15 and Alg. 1-2), torchcfm's small pieces,
and the MLP velocity field v(x, t).

With a pair (x0, x1) drawn from a coupling pi (independent, or a minibatch OT plan) and t ~ U(0, 1):
    mu_t = (1 - t) x0 + t x1,        x_t = mu_t + sigma eps,  eps ~ N(0, I)
    u_t(x_t | x0, x1) = x1 - x0      (the conditional velocity; sigma is constant, so it has no x_t term)
    loss = E || v(x_t, t) - u_t ||^2
sigma defaults to 0 here (torchcfm's default is 0.1 for OT-CFM): the 2D targets are already smooth, and with sigma 0
the learned flow of the exact OT pairing approaches the straight OT map, which is what the path energy measures."""
from __future__ import annotations

import torch
from torch import nn

DEFAULT_SIGMA = 0.0


def compute_mu_t(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mu_t = (1 - t) x0 + t x1 (t: shape (n,), broadcast over the coordinates)."""
    t = t.reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * x1


def compute_sigma_t(t: torch.Tensor, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """sigma_t = sigma, constant in t."""
    return torch.full_like(t, sigma)


def sample_xt(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """x_t = mu_t + sigma_t eps."""
    sigma_t = compute_sigma_t(t, sigma).reshape(-1, *([1] * (x0.dim() - 1)))
    return compute_mu_t(x0, x1, t) + sigma_t * eps


def compute_conditional_flow(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """u_t(x | x0, x1) = x1 - x0: the straight line's constant velocity."""
    return x1 - x0


def sample_location_and_conditional_flow(x0: torch.Tensor, x1: torch.Tensor, generator: torch.Generator,
                                         sigma: float = DEFAULT_SIGMA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, x_t, u_t) for a batch of pairs: t ~ U(0, 1), eps ~ N(0, I)."""
    t = torch.rand(len(x0), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    return t, sample_xt(x0, x1, t, eps, sigma), compute_conditional_flow(x0, x1)


def cfm_loss(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor, generator: torch.Generator,
             sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """E || v(x_t, t) - (x1 - x0) ||^2 over a batch of pairs."""
    t, xt, ut = sample_location_and_conditional_flow(x0, x1, generator, sigma)
    return ((model(xt, t) - ut) ** 2).sum(dim=1).mean()


class VelocityMLP(nn.Module):
    """v(x, t): an MLP on the concatenation [x, t] (torchcfm's MLP, SELU activations)."""

    def __init__(self, dim: int = 2, width: int = 128, hidden_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim + 1, width), nn.SELU()]
        for _ in range(hidden_layers - 1):
            layers += [nn.Linear(width, width), nn.SELU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype).expand(len(x)).reshape(-1, 1)
        return self.net(torch.cat([x, t], dim=1))
