"""What every sampling job shares: checks of common settings, preparation before the loop (prompt, scheduler,
initial noise), and `stream`, the one function that runs the loop and turns its states into Step events."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from studio.errors import RequestError
from studio.jobs.cost import Budget
from studio.events import Step
from studio.manager import LoadedModel, ModelManager
from studio.sampling import previews
from studio.sampling.loop import Conditioning, Hooks, LoopState, ModelFn, denoise, noise_to, start_index, step_kwargs
from studio.sampling.schedulers import make_scheduler, set_steps

MAX_SEED = 2**32 - 1


def check_seed(seed: int) -> None:
    if not -1 <= seed <= MAX_SEED:
        raise RequestError(f"Seed must be -1 (random) or between 0 and {MAX_SEED} (got {seed}).")


def check_prompts(limits, **prompts: str) -> None:
    """Refuse prompts past the limit (a 1 MB prompt was stored whole in every PNG); name the field."""
    for name, text in prompts.items():
        if len(text or "") > limits.max_prompt_chars:
            raise RequestError(f"The {name.replace('_', ' ')} is {len(text):,} characters; at most "
                               f"{limits.max_prompt_chars:,} are accepted (the text encoder reads far fewer).")


PROMPT_CACHE_SIZE = 32  # entries: whole conditionings and the single texts they were made of


def encode_prompt(model: LoadedModel, prompt: str, negative: str, batch: int, do_cfg: bool, size: tuple[int, int]) -> Conditioning:
    """Text conditioning, kept for the model's last few prompts (as ComfyUI and A1111 keep it: a new seed or
    sampler does not encode the same prompt again), unless an embedding or LoRA changes the text encoders."""
    key = (prompt, negative, batch, do_cfg, size if model.is_xl else None)
    return _cached(model, key, lambda: _encode_prompt(model, prompt, negative, batch, do_cfg, size))


def _cached(model: LoadedModel, key: tuple, make: Callable[[], Any]) -> Any:
    """The model's prompt cache: `make()` once per key while the text encoders are plain, least recently used out."""
    cacheable = model.text_encoders_plain()
    if cacheable and key in model.prompt_cache:
        model.prompt_cache.move_to_end(key)
        return model.prompt_cache[key]
    value = make()
    if cacheable:
        model.prompt_cache[key] = value
        while len(model.prompt_cache) > PROMPT_CACHE_SIZE:
            model.prompt_cache.popitem(last=False)
    return value


def _encode_prompt(model: LoadedModel, prompt: str, negative: str, batch: int, do_cfg: bool, size: tuple[int, int]) -> Conditioning:
    """Text conditioning through the pipeline's own encoder code, so every model family encodes as diffusers does."""
    pipe, device = model.pipe, model.device
    if model.is_sd3:
        # Both CLIPs and T5 read the one prompt; the pooled CLIP embeddings travel as `added`.
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=batch,
            do_classifier_free_guidance=do_cfg, negative_prompt=negative or None,
        )
        return Conditioning(pe, npe, {"pooled": pooled}, {"pooled": npooled} if do_cfg else None)
    if model.is_xl:
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=prompt, device=device, num_images_per_prompt=batch, do_classifier_free_guidance=do_cfg,
            negative_prompt=negative or None,
        )
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=pe.dtype,
                                          text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        time_ids = time_ids.to(device).repeat(batch, 1)
        return Conditioning(pe, npe, {"text_embeds": pooled, "time_ids": time_ids},
                            {"text_embeds": npooled, "time_ids": time_ids} if do_cfg else None)
    # SD 1.x/2.x and the suite: the prompt and the negative are encoded apart (diffusers encodes the negative, or "",
    # exactly as a prompt), so that a new prompt with the usual negative encodes one text, not two.
    pe = _encode_text(model, prompt, batch)
    return Conditioning(pe, _encode_text(model, negative or "", batch) if do_cfg else None)


def _encode_text(model: LoadedModel, text: str, batch: int) -> torch.Tensor:
    return _cached(model, ("text", text, batch), lambda: _text_embeds(model, text, batch))


def _text_embeds(model: LoadedModel, text: str, batch: int) -> torch.Tensor:
    """diffusers' encode_prompt for one text, with the text encoder's call on its engine once one is built: the
    same ids (padded to the tokenizer's length, truncated; no attention mask), the last hidden state, repeated."""
    pipe = model.pipe
    if (model.engines is not None and model.engines.active and "text_encoder" in model.engines.parts
            and model.text_encoders_plain() and not getattr(pipe.text_encoder.config, "use_attention_mask", False)):
        # As encode_prompt converts it (for a textual inversion's tokens); the text itself is left for its fallback.
        converted = pipe.maybe_convert_prompt(text, pipe.tokenizer) if hasattr(pipe, "maybe_convert_prompt") else text
        ids = pipe.tokenizer(converted, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        with torch.no_grad():
            fast = model.engines.call("text_encoder", ids)
        if fast is not None:
            return fast.to(pipe.text_encoder.dtype).repeat(batch, 1, 1)
    return pipe.encode_prompt(text, model.device, batch, False)[0]


def model_fn(model: LoadedModel) -> ModelFn:
    """Adapt the model's denoiser (a UNet, or an SD3 transformer) to the loop's model contract."""
    denoiser = model.denoiser
    if model.is_sd3:

        def transformer(x, t, embeds, added, control):
            # One timestep per sample, as SD3's pipeline passes it (its time embedding wants a 1-D tensor).
            return denoiser(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=embeds,
                            pooled_projections=added["pooled"], return_dict=False)[0]

        return transformer

    fast = model.engines if model.engines is not None and model.engines.active else None  # else: no work per call

    def unet(x, t, embeds, added, control):
        if fast is not None and not control and added is None:  # a plain call: an engine may run it
            out = fast.call("unet", x, t.expand(x.shape[0]).float(), embeds)
            if out is not None:
                return out
        return denoiser(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False, **control)[0]

    return unet


@dataclass
class Prepared:
    """What every sampling job sets up before the loop."""

    cond: Conditioning
    scheduler: object
    space: str
    latents: torch.Tensor
    seeds: list[int]
    generators: list[torch.Generator]
    size: tuple[int, int]  # (height, width)
    begin: int = 0  # index of the first timestep run (runs that start part way: see `start_from`)


def prepare(model: LoadedModel, prompt: str, negative: str, guidance_scale: float, sampler: str, steps: int,
            seed: int, batch: int, size: tuple[int, int], shift: float = 0.0) -> Prepared:
    """Encode the prompt, build the sampler's timesteps, draw the initial noise (seed -1: a random seed)."""
    pipe = model.pipe
    device = model.device
    height, width = size
    seed = random.randint(0, MAX_SEED) if seed == -1 else seed
    seeds = [(seed + k) % (MAX_SEED + 1) for k in range(batch)]
    with torch.no_grad():
        cond = encode_prompt(model, prompt, negative, batch, guidance_scale > 1.0, (height, width))
        scheduler, space = make_scheduler(sampler, dict(pipe.scheduler.config), shift)
        set_steps(scheduler, sampler, steps, device)
        # One CPU generator per image, so that a seed gives the same image on any device.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (batch, model.denoiser.config.in_channels, height // model.vae_scale_factor, width // model.vae_scale_factor)
        latents = randn_tensor(shape, generator=generators, device=device, dtype=cond.embeds.dtype) * noise_scale(scheduler)
    return Prepared(cond, scheduler, space, latents, seeds, generators, (height, width))


def noise_scale(scheduler) -> float:
    """How far the initial noise is scaled: init_noise_sigma (k-diffusion schedulers' sigma_max); 1 for flow
    matching, whose schedulers have no such attribute (x_1 is the noise itself)."""
    return getattr(scheduler, "init_noise_sigma", 1.0)


def start_from(run: Prepared, start: torch.Tensor, steps: int, strength: float) -> Prepared:
    """The run begins part way (strength 1 = from pure noise), from `start` (UNet latents) noised to that timestep
    with the run's own noise: diffusers' img2img start."""
    begin = start_index(run.scheduler, steps, strength)
    if hasattr(run.scheduler, "set_begin_index"):
        run.scheduler.set_begin_index(begin)
    noise = run.latents / noise_scale(run.scheduler)
    run.latents = noise_to(run.scheduler, start.expand_as(noise).to(noise), noise, run.scheduler.timesteps[begin:begin + 1])
    run.begin = begin
    return run


def stream(manager: ModelManager, model: LoadedModel, run: Prepared, guidance_scale: float, *, hooks: Hooks | None = None,
           preview_every: int = 1, preview: Callable[[LoopState], list[Image.Image]] | None = None, phase: str = "",
           guidance_rescale: float = 0.0, cfg_interval: tuple[float, float] = (0.0, 1.0), eta: float = 0.0,
           ) -> Generator[Step, None, torch.Tensor]:
    """Run the one loop for a prepared run, yielding a Step per sampler step; returns the final latents.

    A Step carries a preview every `preview_every` steps (not on the last: the finished image follows), made by
    `preview` from the loop state (default: the x0-hat through the model's cheapest preview)."""
    scheduler, every = run.scheduler, preview_every
    make_preview = preview or default_previewer(model)
    # Second-order samplers (Heun) evaluate the model twice per step: report sampler steps, as users count them.
    order = getattr(scheduler, "order", 1)
    budget = job_budget(manager, model, run, guidance_scale, bool(hooks and hooks.needs_grad))
    budget.check_known(manager.speeds)
    latents, t0 = run.latents, time.perf_counter()
    # Stop (and the job's time limit) is checked between steps by the loop, and inside a call before each block.
    with manager.interruptible(model.denoiser, budget.per_call, budget.call_cut):
        for state in denoise(
            model_fn(model), scheduler, run.space, latents, run.cond, guidance_scale,
            guidance_rescale=guidance_rescale, cfg_interval=cfg_interval,
            extra_step_kwargs=step_kwargs(scheduler, run.generators, eta), hooks=hooks,
            want_x0=lambda i: every > 0 and i % every == 0 and i < len(scheduler.timesteps) - run.begin,
            should_stop=manager.should_stop, begin=run.begin,
        ):
            latents = state.next_latents
            budget.check_step(manager.speeds, time.perf_counter() - t0, state.i)
            shown = every > 0 and state.i % every == 0 and state.i < state.n and state.x0_hat is not None
            with torch.no_grad():
                image = make_preview(state) if shown else None
            elapsed = time.perf_counter() - t0
            total = -(-state.n // order)
            yield Step(-(-state.i * total // state.n), total, image,
                       {"it_per_s": state.i / max(elapsed, 1e-9), "elapsed_s": elapsed, **state.metrics}, phase,
                       tuple(run.seeds))
    return latents


def job_budget(manager: ModelManager, model: LoadedModel, run: Prepared, guidance_scale: float, grad: bool) -> Budget:
    """The run's model calls against the device's per-job limit (CFG doubles the rows of each call; gradients, as
    guidance and DPS take, make a step dearer: measured apart)."""
    rows = run.latents.shape[0] * (2 if guidance_scale > 1.0 and run.cond.negative is not None else 1)
    calls = len(run.scheduler.timesteps) - run.begin
    key = (model.source.location, run.size, rows, grad, manager.config.device)
    return Budget(key, calls, run.size, manager.config.limits.max_job_seconds, manager.config.device)


TINY_PREVIEW_SECONDS = 0.1  # the page shows at most ten updates a second (ui.common.STEP_UPDATE_SECONDS)


def default_previewer(model: LoadedModel) -> Callable[[LoopState], list[Image.Image]]:
    """x0-hat as pictures, for one run: through the model's tiny decoder when it has one (close to the full decode),
    else its linear latent->RGB map (costless, blurry), else a VAE decode. The tiny decoder runs at most every
    TINY_PREVIEW_SECONDS; steps in between get its last picture (never older than that): a tiny decode at every
    step made a suite image 24% slower, for previews the page could not show that fast."""
    if model.tiny_vae is None:
        return lambda state: previews.preview(state.x0_hat.detach(), model.pipe.vae, model.latent_rgb,
                                              model.vae_scale_factor)
    last = {"at": -float("inf"), "images": None}

    def make(state: LoopState) -> list[Image.Image]:
        if last["images"] is None or time.perf_counter() - last["at"] >= TINY_PREVIEW_SECONDS \
                or len(last["images"]) != len(state.x0_hat):
            last["images"] = previews.to_pil(previews.tiny_decode(model.tiny_vae, state.x0_hat.detach()))
            last["at"] = time.perf_counter()
        return last["images"]

    return make
