"""Pieces every trainer shares: LR schedule, budgets, noising and loss weights, EMA, checkpoints, logging.

A trainer's step, in the order these pieces are used:

    set_lr(opt, lr_at(base_lr, budget.fraction(step), step))
    t = sample_timesteps(scheduler, batch, device)
    x_t, target = noised(scheduler, x0, torch.randn_like(x0), t)
    loss = diffusion_loss(model(x_t, t), target, min_snr_weights(scheduler, t))
    optimizer_step(opt, loss, max_grad_norm=1.0); ema.update(model, step)
    if saving(): save_checkpoint(out / "checkpoints", step, {"model": model, "optimizer": opt, "ema": ema})

and `resume(folder, parts)` at the start puts the latest checkpoint back. Noise-prediction (epsilon, v) models
train with a DDPM-family scheduler; flow-matching models with FlowMatchEulerDiscreteScheduler.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import compute_snr
from torch import nn
from transformers import PreTrainedTokenizerBase

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")
CHECKPOINT_GLOB = "step-*.pt"


# ---------------------------------------------------------------- schedule and budget
def lr_at(base: float, frac: float, step: int, warmup: int = 200, floor: float = 0.1) -> float:
    """Linear warmup over `warmup` steps, then cosine decay from `base` to `floor * base` as `frac` goes 0 -> 1."""
    return base * min(1.0, (step + 1) / warmup) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The same learning rate for every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class Budget:
    """Stops a stage after `minutes` of wall time or `max_steps`; `fraction` drives the LR schedule.

    The fraction is whichever of steps and time is further along, so a step cap and a time budget both end
    the schedule at its floor. Steps count from `start_step` (where a resumed run picked up)."""

    def __init__(self, minutes: float, max_steps: int, start_step: int = 0):
        self.t0, self.seconds, self.max_steps, self.start = time.time(), minutes * 60, max_steps, start_step

    def fraction(self, step: int) -> float:
        by_steps = (step - self.start) / max(1, self.max_steps - self.start)
        return min(1.0, max(by_steps, (time.time() - self.t0) / max(self.seconds, 1e-9)))

    def done(self, step: int) -> bool:
        return step >= self.max_steps or time.time() - self.t0 >= self.seconds


class Every:
    """Called once a step, says True once every `minutes` of wall time: when to write a checkpoint."""

    def __init__(self, minutes: float):
        self.seconds, self.last = minutes * 60, time.time()

    def __call__(self) -> bool:
        if time.time() - self.last <= self.seconds:
            return False
        self.last = time.time()
        return True


# ---------------------------------------------------------------- noising and loss
def prediction_type(scheduler) -> str:
    """What the model learns to predict: "flow" for flow-matching schedulers (no add_noise, as in
    sampling.loop.noise_to), else the scheduler's configured prediction_type ("epsilon" or "v_prediction")."""
    kind = "flow" if not hasattr(scheduler, "add_noise") else scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"Cannot train for prediction_type {kind!r}. Known: {', '.join(PREDICTION_TYPES)}.")
    return kind


def sample_timesteps(scheduler, n: int, device: torch.device) -> torch.Tensor:
    """Training timesteps, uniformly: integers 0..T-1 for DDPM-family schedulers; for flow matching one of the
    scheduler's own timesteps (its shift included), as diffusers' SD3 trainer does with uniform weighting."""
    if prediction_type(scheduler) == "flow":
        return scheduler.timesteps[torch.randint(0, len(scheduler.timesteps), (n,))].to(device)
    return torch.randint(0, scheduler.config.num_train_timesteps, (n,), device=device)


def noised(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target): the training input at `timesteps` and what the model should predict there.

    DDPM family (VP): x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise (scheduler.add_noise); the target is the noise
    for epsilon models, v = sqrt(a_t) noise - sqrt(1 - a_t) x0 (scheduler.get_velocity) for v_prediction.
    Flow matching (rectified flow, Lipman et al. 2023 / Esser et al. 2024): sigma = t / T,
    x_sigma = (1 - sigma) x0 + sigma noise, and the target is the velocity noise - x0."""
    kind = prediction_type(scheduler)
    if kind == "flow":
        sigma = timesteps.to(x0.device, torch.float32) / scheduler.config.num_train_timesteps
        sigma = sigma.view(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
        return (1 - sigma) * x0 + sigma * noise, noise - x0
    target = noise if kind == "epsilon" else scheduler.get_velocity(x0, noise, timesteps)
    return scheduler.add_noise(x0, noise, timesteps), target


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy"), for a loss on the model's own target.

    The paper weights the x0 error by min(SNR, gamma), SNR = a_t / (1 - a_t). An epsilon error is SNR times
    the x0 error and a v error (SNR + 1) times it, so on those losses the weight becomes min(SNR, gamma) / SNR
    and min(SNR, gamma) / (SNR + 1) (diffusers' train_text_to_image.py does the same)."""
    kind = prediction_type(scheduler)
    if kind == "flow":
        raise ValueError("min-SNR weighting is for noise and v prediction; flow matching weights timesteps "
                         "through how it samples them (diffusers.training_utils.compute_density_for_timestep_sampling).")
    snr = compute_snr(scheduler, timesteps)
    return snr.clamp(max=gamma) / (snr if kind == "epsilon" else snr + 1)


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample (over all but the batch dimension), optionally weighted, averaged."""
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=tuple(range(1, pred.ndim)))
    return (per_sample if weights is None else weights * per_sample).mean()


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_grad_norm: float | None = None) -> None:
    """Backward, clip the gradient norm over all of the optimizer's parameters when asked, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    optimizer.step()


# ---------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a module's weights, held in a frozen copy (`.model`) that saves like any model.

    Decay at step k is min(max_decay, (1 + k) / (10 + k)): the warm-up of diffusers' EMAModel, so early averages
    do not stay near the random init. Not EMAModel itself: that one keeps bare tensors (saving needs model_cls and
    config), counts its own steps (reset on resume unless saved apart) and uses k - 1 where this uses k."""

    def __init__(self, model: nn.Module, max_decay: float = 0.999):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = max_decay

    def decay(self, step: int) -> float:
        return min(self.max_decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move each averaged weight toward the model's by 1 - decay(step)."""
        weight = 1 - self.decay(step)
        for averaged, current in zip(self.model.parameters(), model.parameters()):
            averaged.lerp_(current, weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state)


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(folder: str | Path, step: int, parts: Mapping[str, Any], keep: int = 2) -> Path:
    """Write {"step": step, name: part.state_dict() ...} to folder/step-<step>.pt and keep the `keep` latest.

    Atomic: written to a temporary file in the same folder, then renamed over (os.replace), so a run killed
    mid-write leaves the previous checkpoint whole. Parts are anything with state_dict(): modules, optimizers, EMA."""
    if "step" in parts:
        raise ValueError("'step' is the checkpoint's own key; name the part otherwise.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:09d}.pt"
    tmp = folder / f".{path.name}.tmp"
    torch.save({"step": step, **{name: part.state_dict() for name, part in parts.items()}}, tmp)
    os.replace(tmp, path)
    for old in checkpoints(folder)[:-keep]:
        old.unlink()
    return path


def checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoint files in `folder`, oldest step first (empty when the folder does not exist)."""
    return sorted(Path(folder).glob(CHECKPOINT_GLOB), key=lambda p: int(p.stem.split("-")[1]))


def latest_step(folder: str | Path) -> int:
    """The step of the latest checkpoint in `folder`, 0 when there is none."""
    found = checkpoints(folder)
    return int(found[-1].stem.split("-")[1]) if found else 0


def load_latest(folder: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The latest checkpoint's dict ({"step", and one state dict per part}), or None when there is none."""
    found = checkpoints(folder)
    return torch.load(found[-1], map_location=map_location, weights_only=True) if found else None


def resume(folder: str | Path, parts: Mapping[str, Any]) -> int:
    """Load the latest checkpoint into `parts` (name -> object with load_state_dict); its step, or 0 if none."""
    state = load_latest(folder)
    if state is None:
        return 0
    missing = set(parts) - set(state)
    if missing:
        raise KeyError(f"Checkpoint in {folder} has no {', '.join(sorted(missing))}; it holds {', '.join(sorted(state))}.")
    for name, part in parts.items():
        part.load_state_dict(state[name])
    return int(state["step"])


# ---------------------------------------------------------------- logging, devices, text
def log(out: Path, record: dict) -> None:
    """Print one metrics record as JSON and append it to out/metrics.jsonl."""
    print(json.dumps(record), flush=True)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def autocast(device: torch.device):
    """bf16 autocast on CUDA, a no-op elsewhere (CPU runs stay in fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def hardware(device: torch.device) -> str:
    """What a model card records as the hardware: the GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> torch.Tensor:
    """Token ids padded and truncated to the tokenizer's model_max_length, as CLIP text encoders expect."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids
