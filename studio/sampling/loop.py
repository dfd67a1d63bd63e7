"""THE denoising loop: a generator over a diffusers scheduler, with fixed places where guidance, control and DPS plug in.

Per step: model output (with ControlNet residuals; CFG combination) -> guidance hook (e.g. classifier guidance)
-> x0-hat -> scheduler step -> correction hook (e.g. DPS) -> yield the step's state.
Gradients are enabled only for the model call when a hook asks for them.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from studio.errors import Cancelled

# model(latent_model_input, t, encoder_hidden_states, added_cond_kwargs, control) -> model output (eps, v or velocity)
ModelFn = Callable[..., torch.Tensor]


@dataclass
class Conditioning:
    """Text conditioning for one batch: the prompt's, and the negative's for classifier-free guidance."""

    embeds: torch.Tensor
    negative: torch.Tensor | None = None
    added: dict[str, torch.Tensor] | None = None  # SDXL: text_embeds, time_ids; SD3: pooled
    negative_added: dict[str, torch.Tensor] | None = None


@dataclass
class Hooks:
    """The loop's plug-in points. Each is optional; `needs_grad` turns gradients on for the model call."""

    # (latent_model_input, t, encoder_hidden_states, added_cond_kwargs, i, n) -> extra model kwargs (ControlNet residuals)
    control: Callable[..., dict[str, Any]] | None = None
    # (state) -> adjusted model output, e.g. eps - sqrt(1 - a) * s * grad log p(y | x_t)
    guidance: Callable[["LoopState"], torch.Tensor] | None = None
    # (state, next_latents) -> corrected next latents, e.g. a DPS measurement step
    correction: Callable[["LoopState", torch.Tensor], torch.Tensor] | None = None
    needs_grad: bool = False


@dataclass
class LoopState:
    """What a step leaves behind: enough for previews, metrics and the hooks."""

    i: int
    n: int
    t: torch.Tensor
    latents: torch.Tensor  # x_t before the step (UNet space)
    model_output: torch.Tensor  # after CFG
    x0_hat: torch.Tensor | None = None
    x0_scale: torch.Tensor | None = None  # d x0_hat / d x_t with the model output held fixed (for correction hooks)
    next_latents: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance, optionally rescaled (Lin et al. 2023, sec. 3.4) to keep the std of the text branch."""
    guided = uncond + scale * (cond - uncond)
    if rescale > 0:
        dims = list(range(1, cond.ndim))
        rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
        guided = rescale * rescaled + (1 - rescale) * guided
    return guided


def current_sigma(scheduler, t: torch.Tensor) -> torch.Tensor:
    if getattr(scheduler, "step_index", None) is None and hasattr(scheduler, "_init_step_index"):
        scheduler._init_step_index(t)
    return scheduler.sigmas[scheduler.step_index]


def vp_view(scheduler, space: str, latents: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same point in VP form, x_t = sqrt(a) x0 + sqrt(1 - a) eps: returns (x_t, a) for "vp" and "ve" spaces."""
    if space == "ve":
        # k-diffusion space: x = x0 + sigma eps; the same point in VP space is x / sqrt(1 + sigma^2).
        sigma = current_sigma(scheduler, t).to(latents)
        alpha_bar = 1 / (1 + sigma**2)
        return latents * alpha_bar.sqrt(), alpha_bar
    if space == "vp":
        return latents, scheduler.alphas_cumprod.to(latents.device)[t.long()].to(latents)
    raise ValueError(f"No VP view of the {space!r} space")


def predict_x0(scheduler, space: str, latents: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0-hat from the model output, for the scheduler's space ("vp", "ve" or "flow"), before its step."""
    if space == "flow":
        return latents - current_sigma(scheduler, t).to(latents) * model_output
    x, alpha_bar = vp_view(scheduler, space, latents, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if kind == "v_prediction":
        return alpha_bar.sqrt() * x - (1 - alpha_bar).sqrt() * model_output
    if kind == "sample":
        return model_output
    raise ValueError(f"Unsupported prediction type {kind!r}")


def start_index(scheduler, steps: int, strength: float) -> int:
    """Where a run that starts from a noised image begins (diffusers' img2img rule, but at least one step is run):
    strength 1 = from pure noise."""
    return (steps - max(1, min(int(steps * strength), steps))) * getattr(scheduler, "order", 1)


def noise_to(scheduler, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Clean latents noised to timestep t: add_noise for noise-prediction schedulers, scale_noise for flow matching."""
    if hasattr(scheduler, "add_noise"):
        return scheduler.add_noise(clean, noise, t)
    return scheduler.scale_noise(clean, t, noise)


def step_kwargs(scheduler, generator, eta: float = 0.0) -> dict[str, Any]:
    """`eta` and `generator` for the schedulers whose step takes them (DDIM, ancestral samplers)."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def denoise(
    model: ModelFn,
    scheduler,
    space: str,
    latents: torch.Tensor,
    cond: Conditioning,
    guidance_scale: float,
    *,
    guidance_rescale: float = 0.0,
    cfg_interval: tuple[float, float] = (0.0, 1.0),
    extra_step_kwargs: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    want_x0: Callable[[int], bool] = lambda i: False,
    should_stop: Callable[[], bool] = lambda: False,
    begin: int = 0,
) -> Iterator[LoopState]:
    """Run the scheduler's timesteps (set them first); yield a LoopState after each step.

    `want_x0(i)` says when to compute x0-hat (previews); hooks get it whenever they are present.
    `cfg_interval` (start, end), as fractions of the run: CFG applies on those steps only; elsewhere the prompt's
    prediction alone is used (and the unconditional branch is not computed).
    `begin` skips the first timesteps (img2img-style starts: see `start_index`); the latents must be noised to
    the first timestep run.
    Raises Cancelled between steps once `should_stop()` is true.
    """
    hooks = hooks or Hooks()
    extra_step_kwargs = extra_step_kwargs or {}
    use_cfg = guidance_scale > 1.0 and cond.negative is not None
    # 1. Batch the unconditional and conditional branches once.
    if use_cfg:
        both = torch.cat([cond.negative, cond.embeds])
        both_added = {k: torch.cat([cond.negative_added[k], v]) for k, v in cond.added.items()} if cond.added else None
    timesteps = scheduler.timesteps[begin:]
    if begin and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    n = len(timesteps)
    for i, t in enumerate(timesteps):
        if should_stop():
            raise Cancelled(f"Stopped at step {i}/{n}.")
        do_cfg = use_cfg and cfg_interval[0] <= i / n < cfg_interval[1]
        embeds, added = (both, both_added) if do_cfg else (cond.embeds, cond.added)
        # 2. Model output, with control residuals where a ControlNet is attached.
        with torch.set_grad_enabled(hooks.needs_grad):
            if hooks.needs_grad:
                latents = latents.detach().requires_grad_(True)
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            if hasattr(scheduler, "scale_model_input"):
                model_input = scheduler.scale_model_input(model_input, t)
            control = hooks.control(model_input, t, embeds, added, i, n) if hooks.control else {}
            output = model(model_input, t, embeds, added, control)
            # 3. Classifier-free guidance.
            if do_cfg:
                uncond, text = output.chunk(2)
                output = cfg_combine(uncond, text, guidance_scale, guidance_rescale)
            state = LoopState(i=i + 1, n=n, t=t, latents=latents, model_output=output)
            # 4. Guidance gradients (classifier / text guidance) adjust the model output.
            if hooks.guidance:
                state.model_output = hooks.guidance(state)
            if hooks.correction or want_x0(i + 1):
                state.x0_hat = predict_x0(scheduler, space, latents, state.model_output, t)
            if hooks.correction:  # x0_hat is linear in x_t for a fixed output: its coefficient, before the step
                with torch.no_grad():
                    state.x0_scale = predict_x0(scheduler, space, latents.new_ones(()), latents.new_zeros(()), t)
        # 5. The scheduler's step.
        next_latents = scheduler.step(state.model_output.detach(), t, latents.detach(), **extra_step_kwargs, return_dict=False)[0]
        # 6. Measurement correction (DPS) on the new sample.
        if hooks.correction:
            next_latents = hooks.correction(state, next_latents)
        state.next_latents = next_latents.detach()
        latents = state.next_latents
        yield state
