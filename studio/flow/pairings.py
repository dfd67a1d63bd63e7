"""How a batch of source points meets a batch of target points: independent ("random") or by a minibatch transport
plan ("ot": exact, POT's `ot.emd`; "sinkhorn": entropic, `ot.sinkhorn`), after Tong et al. 2023, Sec. 3.2 / Alg. 2."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import ot
import torch

from studio.errors import RequestError

DEFAULT_SINKHORN_REG = 0.05  # on the cost divided by its maximum, so the same value suits any scale of data

Pairing = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def squared_costs(x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    """The batch cost matrix M[i, j] = ||x0_i - x1_j||^2, as float64 for POT."""
    return ot.dist(x0.double().numpy(), x1.double().numpy(), metric="sqeuclidean")


def exact_plan(x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    """pi = argmin <pi, M> over couplings of the two uniform batches (network simplex, `ot.emd`)."""
    return ot.emd(ot.unif(len(x0)), ot.unif(len(x1)), squared_costs(x0, x1))


def sinkhorn_plan(x0: torch.Tensor, x1: torch.Tensor, reg: float = DEFAULT_SINKHORN_REG) -> np.ndarray:
    """pi = argmin <pi, M / max M> - reg H(pi), the entropic plan (`ot.sinkhorn`)."""
    costs = squared_costs(x0, x1)
    # exp(-M / reg) stays above float64's smallest number down to reg ~ 0.0015; the log-domain solver, 10-60x slower
    # on a batch of 256, takes over below 0.01.
    method = "sinkhorn" if reg >= 0.01 else "sinkhorn_log"
    return ot.sinkhorn(ot.unif(len(x0)), ot.unif(len(x1)), costs / costs.max(), reg, method=method)


def partners_from_plan(plan: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """For each source i a target j drawn from the plan's row pi[i, :] / sum_j pi[i, j].

    torchcfm draws the pairs (i, j) jointly from pi, with replacement; drawing by rows keeps every source point once,
    and for the exact plan between equal uniform batches (a permutation) it is exactly that permutation."""
    cdf = np.maximum(plan, 0.0).cumsum(axis=1)  # numpy: on a busy CPU, torch's threads cost more than this work
    u = (1 - torch.rand(len(plan), generator=generator, dtype=torch.float64).numpy()) * cdf[:, -1]  # in (0, row sum]
    first = (cdf < u[:, None]).sum(axis=1)  # inverse CDF: the first j with cdf[i, j] >= u_i
    return torch.from_numpy(np.minimum(first, plan.shape[1] - 1))


def random_pairs(x0: torch.Tensor, x1: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent coupling q(x0) q(x1) (I-CFM): the batches are already independent draws."""
    return x0, x1


def ot_pairs(x0: torch.Tensor, x1: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact minibatch OT coupling (OT-CFM): x1 reordered by the optimal permutation."""
    return x0, x1[partners_from_plan(exact_plan(x0, x1), generator)]


def sinkhorn_pairs(reg: float = DEFAULT_SINKHORN_REG) -> Pairing:
    """Entropic minibatch OT coupling with regularisation `reg`."""
    if not reg > 0:
        raise RequestError(f"The Sinkhorn regularisation must be above 0 (got {reg}).")

    def pair(x0: torch.Tensor, x1: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return x0, x1[partners_from_plan(sinkhorn_plan(x0, x1, reg), generator)]

    return pair


# name -> (label, factory taking the Sinkhorn regularisation): the page's choices, the CLI's and the job's.
PAIRINGS: dict[str, tuple[str, Callable[[float], Pairing]]] = {
    "random": ("independent pairs (I-CFM)", lambda reg: random_pairs),
    "ot": ("exact minibatch OT, ot.emd (OT-CFM)", lambda reg: ot_pairs),
    "sinkhorn": ("entropic minibatch OT, ot.sinkhorn", sinkhorn_pairs),
}


def get_pairing(name: str, sinkhorn_reg: float = DEFAULT_SINKHORN_REG) -> Pairing:
    """A pairing by name; an unknown name is an error listing the known ones."""
    if name not in PAIRINGS:
        raise RequestError(f"Unknown pairing {name!r}; known: {', '.join(PAIRINGS)}.")
    return PAIRINGS[name][1](sinkhorn_reg)
