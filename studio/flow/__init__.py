"""Flow matching in 2D: toy distributions, pairings (independent, minibatch OT), the CFM objective, Euler, metrics.

    distributions.py   samplers by name ("gaussian", "8gaussians", "moons", "checkerboard") and drawn points
    pairings.py        how a batch of sources meets a batch of targets: "random", "ot" (ot.emd), "sinkhorn"
    cfm.py             the conditional flow matching path and target (Tong et al. 2023), the MLP v(x, t)
    playground.py      training with a pairing, reflow, Euler integration, metrics (path energy, W2)
    plots.py           trajectories and W2-against-steps charts as PIL images
"""
from studio.flow.distributions import SOURCES, TARGETS, Distribution, get_distribution
from studio.flow.pairings import PAIRINGS, get_pairing

__all__ = ["PAIRINGS", "SOURCES", "TARGETS", "Distribution", "get_distribution", "get_pairing"]
