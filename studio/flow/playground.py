"""The 2D playground's engine: train a velocity field with a pairing, reflow it, integrate it by Euler, measure it."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import ot
import torch

from studio.flow.cfm import DEFAULT_SIGMA, VelocityMLP, cfm_loss
from studio.flow.distributions import Distribution
from studio.flow.pairings import Pairing

ENERGY_STEPS = 100  # Euler steps for the path energy, the straightness and the reflow pairs
REFLOW_PAIRS = 10_000

# A batch of pairs (x0, x1): drawn independently then paired, or taken from a fixed set (reflow).
PairDraw = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainSettings:
    """One model's budget: Adam on the CFM loss, `steps` batches of `batch` pairs, seeded (model and data)."""

    steps: int = 1000
    batch: int = 256
    lr: float = 1e-3
    width: int = 64
    hidden_layers: int = 3
    sigma: float = DEFAULT_SIGMA
    seed: int = 0


# ---------------------------------------------------------------- training
def coupled(source: Distribution, target: Distribution, pairing: Pairing) -> PairDraw:
    """Batches x0 ~ source and x1 ~ target, drawn independently, then paired (randomly or by a transport plan)."""

    def draw(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = source.sample(n, generator)
        return pairing(x0, target.sample(n, generator), generator)

    return draw


def fixed_pairs(x0: torch.Tensor, x1: torch.Tensor) -> PairDraw:
    """Batches drawn (with replacement) from a fixed set of pairs, e.g. a model's own (x0, x1 = flow(x0))."""

    def draw(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        which = torch.randint(0, len(x0), (n,), generator=generator)
        return x0[which], x1[which]

    return draw


def new_model(settings: TrainSettings) -> VelocityMLP:
    """A fresh MLP whose weights depend on the seed only (the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        return VelocityMLP(width=settings.width, hidden_layers=settings.hidden_layers)


def train(model: VelocityMLP, draw: PairDraw, settings: TrainSettings) -> Iterator[float]:
    """Fit `model` in place to the CFM objective on pairs from `draw`; yields each step's loss.

    On the CPU whatever the studio's device: a 2D MLP is faster there than a round trip to an accelerator."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    model.train()
    for _ in range(settings.steps):
        x0, x1 = draw(settings.batch, generator)
        loss = cfm_loss(model, x0, x1, generator, settings.sigma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        yield loss.item()
    model.eval()


def reflow_start(model: VelocityMLP, source: Distribution, seed: int, n: int = REFLOW_PAIRS,
                 steps: int = ENERGY_STEPS) -> tuple[VelocityMLP, PairDraw]:
    """2-rectified flow (Liu et al. 2022, Alg. 1): the pairs (x0, Z1 = flow of x0) coupled by the model itself, and a
    copy of the model to train on them (initialised from it, as in the paper)."""
    x0 = source.sample(n, torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        x1 = euler(model, x0, steps)[-1]
    return copy.deepcopy(model), fixed_pairs(x0, x1)


# ---------------------------------------------------------------- integration
def euler(model: VelocityMLP, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """x_{k+1} = x_k + v(x_k, k / steps) / steps from t = 0 to 1; returns the trajectories, (steps + 1, n, 2)."""
    xs = [x0]
    for k in range(steps):
        xs.append(xs[-1] + model(xs[-1], k / steps) / steps)
    return torch.stack(xs)


# ---------------------------------------------------------------- metrics
def w2_squared(a: torch.Tensor, b: torch.Tensor) -> float:
    """W2^2 between two point clouds with uniform weights: exact OT on squared Euclidean costs (`ot.emd2`)."""
    costs = ot.dist(a.double().numpy(), b.double().numpy(), metric="sqeuclidean")
    return float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), costs, numItermax=1_000_000))


def path_energy(trajectory: torch.Tensor) -> float:
    """E[ integral_0^1 ||v(x_t, t)||^2 dt ] along Euler trajectories, v = (x_{k+1} - x_k) / dt."""
    dt = 1.0 / (len(trajectory) - 1)
    velocity = (trajectory[1:] - trajectory[:-1]) / dt
    return float((velocity**2).sum(dim=2).sum(dim=0).mean() * dt)


def normalized_path_energy(energy: float, w2sq_source_target: float) -> float:
    """NPE = |PE - W2^2(q0, q1)| / W2^2(q0, q1) (Tong et al. 2023, Sec. 5.1): 0 for the optimal transport flow."""
    return abs(energy - w2sq_source_target) / w2sq_source_target


def straightness(trajectory: torch.Tensor) -> float:
    """S = integral_0^1 E ||(x_1 - x_0) - v(x_t, t)||^2 dt (Liu et al. 2022, Eq. 5): 0 for straight paths."""
    dt = 1.0 / (len(trajectory) - 1)
    velocity = (trajectory[1:] - trajectory[:-1]) / dt
    chord = trajectory[-1] - trajectory[0]
    return float(((chord - velocity) ** 2).sum(dim=2).mean())


@dataclass
class Evaluation:
    """A trained model measured on one shared set of source points: W2 to the target after k Euler steps, the path
    energy and its normalized form, the straightness, and the many-step trajectories (for plots)."""

    w2: dict[int, float]
    path_energy: float
    npe: float
    straightness: float
    trajectory: torch.Tensor = field(repr=False)

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat float metrics, keys like 'ot_w2_2steps', 'ot_npe'."""
        flat = {f"{prefix}_w2_{k}steps": v for k, v in self.w2.items()}
        flat.update({f"{prefix}_path_energy": self.path_energy, f"{prefix}_npe": self.npe,
                     f"{prefix}_straightness": self.straightness})
        return flat


def evaluate(model: VelocityMLP, x0: torch.Tensor, x1: torch.Tensor, w2sq_source_target: float,
             eval_steps: tuple[int, ...], energy_steps: int = ENERGY_STEPS) -> Evaluation:
    """Measure `model` from the source points x0 against the target points x1 (independent draws)."""
    with torch.no_grad():
        trajectory = euler(model, x0, energy_steps)
        w2 = {k: w2_squared(euler(model, x0, k)[-1], x1) ** 0.5 for k in eval_steps}
    energy = path_energy(trajectory)
    return Evaluation(w2, energy, normalized_path_energy(energy, w2sq_source_target), straightness(trajectory), trajectory)
