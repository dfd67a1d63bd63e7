"""Jobs: a request dataclass in, a generator of events out (Step ..., Result). Used by the UI and the CLI alike."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from diffusers.utils.torch_utils import randn_tensor

from studio import metadata
from studio.config import DEFAULT_MODEL, Limits
from studio.control.controlnet import ControlInput, build_units, control_hook, validate_controls
from studio.errors import RequestError
from studio.events import Notice, Result, Step
from studio.manager import LoadedModel, ModelManager
from studio.sampling import guidance, previews
from studio.sampling.loop import Conditioning, Hooks, denoise, step_kwargs
from studio.sampling.schedulers import get_sampler, make_scheduler

MAX_SEED = 2**32 - 1
SIZE_MULTIPLE = 8


@dataclass
class Txt2ImgRequest:
    prompt: str = ""
    negative_prompt: str = ""
    model: str = DEFAULT_MODEL
    sampler: str = "DPM++ 2M"
    steps: int = 25
    guidance_scale: float = 7.0
    guidance_rescale: float = 0.0
    seed: int = -1  # -1: random; image k of a batch uses seed + k
    width: int = 0  # 0: the model's native size
    height: int = 0
    batch_size: int = 1
    preview_every: int = 1  # 0: no previews
    eta: float = 0.0
    cfg_start: float = 0.0  # CFG only on this fraction of the run (guidance interval); elsewhere the prompt alone
    cfg_end: float = 1.0
    classifier_scale: float = 0.0  # classifier guidance (models with a noise-aware classifier: the embedded suite)
    classifier_target: str = ""  # what to steer toward, e.g. "red star" or "person"; empty: the prompt's attributes
    text_guidance_scale: float = 0.0  # text guidance: CLIP, or the suite's evaluator, on the decoded x0-hat
    controls: tuple[ControlInput, ...] = ()  # ControlNets, with their control maps
    save: bool = True


def validate(req: Txt2ImgRequest, limits: Limits) -> tuple[Txt2ImgRequest, list[str]]:
    """Refuse what cannot run; round what can (saying so). Returns the request to run and the notices."""
    notices: list[str] = []
    get_sampler(req.sampler)
    if not 1 <= req.steps <= limits.max_steps:
        raise RequestError(f"Steps must be between 1 and {limits.max_steps} (got {req.steps}).")
    if not 1 <= req.batch_size <= limits.max_batch:
        raise RequestError(f"Batch size must be between 1 and {limits.max_batch} (got {req.batch_size}).")
    if not 0 <= req.guidance_scale <= limits.max_guidance:
        raise RequestError(f"Guidance scale must be between 0 and {limits.max_guidance} (got {req.guidance_scale}).")
    if not 0 <= req.guidance_rescale <= 1:
        raise RequestError(f"Guidance rescale must be between 0 and 1 (got {req.guidance_rescale}).")
    if not 0 <= req.cfg_start < req.cfg_end <= 1:
        raise RequestError(f"The CFG interval must satisfy 0 <= start < end <= 1 (got {req.cfg_start}-{req.cfg_end}).")
    for name, value in (("Classifier guidance scale", req.classifier_scale), ("Text guidance scale", req.text_guidance_scale)):
        if not 0 <= value <= limits.max_guidance:
            raise RequestError(f"{name} must be between 0 and {limits.max_guidance} (got {value}).")
    validate_controls(req.controls)
    if req.preview_every < 0:
        raise RequestError(f"Preview every N steps must be 0 (off) or more (got {req.preview_every}).")
    if not -1 <= req.seed <= MAX_SEED:
        raise RequestError(f"Seed must be -1 (random) or between 0 and {MAX_SEED} (got {req.seed}).")
    sides = {}
    for name in ("width", "height"):
        value = int(getattr(req, name))
        if value == 0:
            sides[name] = 0
            continue
        if not limits.min_side <= value <= limits.max_side:
            raise RequestError(f"{name.capitalize()} must be between {limits.min_side} and {limits.max_side} pixels (got {value}).")
        rounded = max(SIZE_MULTIPLE, int(round(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
        if rounded != value:
            notices.append(f"{name.capitalize()} {value} is not a multiple of {SIZE_MULTIPLE}; rounded to {rounded}.")
        sides[name] = rounded
    return replace(req, **sides), notices


def encode_prompt(model: LoadedModel, prompt: str, negative: str, batch: int, do_cfg: bool, size: tuple[int, int]) -> Conditioning:
    """Text conditioning through the pipeline's own encoder code, so every model family encodes as diffusers does."""
    pipe, device = model.pipe, model.pipe._execution_device
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
    pe, npe = pipe.encode_prompt(prompt, device, batch, do_cfg, negative_prompt=negative or None)
    return Conditioning(pe, npe)


def unet_fn(unet):
    """Adapt a diffusers UNet to the loop's model contract."""

    def model(x, t, embeds, added, control):
        return unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False, **control)[0]

    return model


def text_judge(model: LoadedModel, req: Txt2ImgRequest, clip) -> Callable:
    """The suite's evaluator for the embedded suite; CLIP (--clip-model) for other models; else a clear error."""
    if model.evaluator is not None:
        return guidance.evaluator_judge(model.evaluator, _attribute_targets(req.prompt, "text guidance"))
    if clip is not None:
        return guidance.clip_judge(*clip, req.prompt)
    raise RequestError(f"Text guidance is off for {model.name}: it needs a local CLIP model. Start the studio with "
                       "--clip-model <folder of a CLIP model, e.g. openai/clip-vit-base-patch32>.")


def guidance_hooks(model: LoadedModel, req: Txt2ImgRequest, scheduler, space: str, clip=None) -> Hooks:
    """The loop's guidance hook for the request's classifier and text guidance (none when both scales are 0)."""
    steps = []
    if space == "flow" and (req.classifier_scale > 0 or req.text_guidance_scale > 0):
        raise RequestError("Classifier and text guidance work with noise-prediction models; this is a flow-matching model.")
    if req.classifier_scale > 0:
        targets = _attribute_targets(req.classifier_target or req.prompt, "classifier guidance")
        steps.append(guidance.GradientGuidance(guidance.classifier_log_prob(require_classifier(model), targets),
                                               req.classifier_scale, scheduler, space))
    if req.text_guidance_scale > 0:
        steps.append(guidance.GradientGuidance(
            guidance.x0_judge_log_prob(lambda z: previews.vae_decode_grad(model.pipe.vae, z), text_judge(model, req, clip)),
            req.text_guidance_scale, scheduler, space))
    return Hooks(guidance=_chain(steps) if steps else None)


def require_classifier(model: LoadedModel):
    """The model's noise-aware classifier, or the message that says it has none."""
    if model.noisy_classifier is None:
        raise RequestError(f"Classifier guidance needs a noise-aware classifier (a noisy_classifier/ folder in the "
                           f"model); {model.name} has none. The embedded suite shapes-v1 has one.")
    return model.noisy_classifier


def _attribute_targets(text: str, what: str) -> dict[str, int]:
    from studio.shapes.scenes import asked_attributes

    targets = asked_attributes(text)
    if not targets:
        raise RequestError(f"{what.capitalize()} needs a target it knows: name a shape, colour or a person "
                           f"(e.g. 'red star', 'two blue squares', 'a person waving'); got {text!r}.")
    return targets


def _chain(steps):
    def hook(state):
        for step in steps:
            state.model_output = step(state)
        return state.model_output

    return hook


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


def prepare(model: LoadedModel, prompt: str, negative: str, guidance_scale: float, sampler: str, steps: int,
            seed: int, batch: int, size: tuple[int, int]) -> Prepared:
    """Encode the prompt, build the sampler's timesteps, draw the initial noise (seed -1: a random seed)."""
    pipe = model.pipe
    device = pipe._execution_device
    height, width = size
    seed = random.randint(0, MAX_SEED) if seed == -1 else seed
    seeds = [(seed + k) % (MAX_SEED + 1) for k in range(batch)]
    with torch.no_grad():
        cond = encode_prompt(model, prompt, negative, batch, guidance_scale > 1.0, (height, width))
        scheduler, space = make_scheduler(sampler, dict(pipe.scheduler.config))
        scheduler.set_timesteps(steps, device=device)
        # One CPU generator per image, so that a seed gives the same image on any device.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (batch, pipe.unet.config.in_channels, height // model.vae_scale_factor, width // model.vae_scale_factor)
        latents = randn_tensor(shape, generator=generators, device=device, dtype=cond.embeds.dtype) * scheduler.init_noise_sigma
    return Prepared(cond, scheduler, space, latents, seeds, generators, (height, width))


def txt2img(manager: ModelManager, req: Txt2ImgRequest) -> Iterator[Step | Notice | Result]:
    """Text to image through the one loop; yields Notice(s), a Step per denoising step, then the Result."""
    # 1. Check inputs.
    req, notices = validate(req, manager.config.limits)
    for text in notices:
        yield Notice(text)
    with manager.session():
        # 2. The model, prompt, sampler and noise.
        model = manager.get(req.model)
        pipe = model.pipe
        run = prepare(model, req.prompt, req.negative_prompt, req.guidance_scale, req.sampler, req.steps, req.seed,
                      req.batch_size, (req.height or model.default_size, req.width or model.default_size))
        scheduler, space, latents, seeds, generators = run.scheduler, run.space, run.latents, run.seeds, run.generators
        height, width = run.size
        cond = run.cond
        hooks = guidance_hooks(model, req, scheduler, space, manager.clip() if req.text_guidance_scale > 0 else None)
        units, notes = build_units(manager, model, req.controls, run.size)
        for text in notes:
            yield Notice(text)
        if units:
            hooks.control = control_hook(units)
        # 6. Denoise, streaming x0-hat previews.
        every = req.preview_every
        factors = model.latent_rgb
        t0 = time.perf_counter()
        for state in denoise(
            unet_fn(pipe.unet), scheduler, space, latents, cond, req.guidance_scale,
            guidance_rescale=req.guidance_rescale,
            extra_step_kwargs=step_kwargs(scheduler, generators, req.eta),
            hooks=hooks,
            cfg_interval=(req.cfg_start, req.cfg_end),
            want_x0=lambda i: every > 0 and (i % every == 0) and i < len(scheduler.timesteps),
            should_stop=manager.should_stop,
        ):
            latents = state.next_latents
            preview = previews.preview(state.x0_hat, pipe.vae, factors, model.vae_scale_factor) if state.x0_hat is not None else None
            elapsed = time.perf_counter() - t0
            # Second-order samplers (Heun) evaluate the model twice per step: report sampler steps, as users count them.
            step = -(-state.i * req.steps // state.n)
            yield Step(step, req.steps, preview, {"it_per_s": state.i / max(elapsed, 1e-9), "elapsed_s": elapsed, **state.metrics})
        # 7. Decode, save with settings, report.
        images = previews.vae_decode(pipe.vae, latents)
    pixels = ((images.detach().float() / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).cpu().numpy()
    pil = previews.to_pil(images)
    infotexts, paths = [], []
    for image, s in zip(pil, seeds):
        params = metadata.GenerationParams(
            prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps, sampler=req.sampler,
            cfg_scale=req.guidance_scale, seed=s, width=width, height=height, model=model.name,
            model_hash=model.model_hash, extra=_extras(req),
        )
        infotexts.append(metadata.format_parameters(params))
        if req.save:
            paths.append(metadata.save_png(image, params, manager.config.outputs_dir))
    elapsed = time.perf_counter() - t0
    yield Result(pil, infotexts, paths, seeds, {"seconds": elapsed, "pixels": pixels})


def _extras(req: Txt2ImgRequest) -> dict[str, str]:
    extra = {}
    if req.guidance_rescale > 0:
        extra["CFG rescale"] = f"{req.guidance_rescale:g}"
    if req.eta and req.sampler in ("DDIM",):
        extra["Eta"] = f"{req.eta:g}"
    if (req.cfg_start, req.cfg_end) != (0.0, 1.0):
        extra["CFG interval"] = f"{req.cfg_start:g}-{req.cfg_end:g}"
    if req.classifier_scale > 0:
        extra["Classifier guidance"] = f"{req.classifier_scale:g}"
        if req.classifier_target:
            extra["Classifier target"] = req.classifier_target
    if req.text_guidance_scale > 0:
        extra["Text guidance"] = f"{req.text_guidance_scale:g}"
    for k, control in enumerate(req.controls):
        extra[f"ControlNet {k}"] = control.describe()
    extra["Version"] = "diffusion-studio"
    return extra


def params_to_request(params: metadata.GenerationParams) -> Txt2ImgRequest:
    """A request that reproduces a saved image (from its PNG settings)."""
    rescale = float(params.extra.get("CFG rescale", 0) or 0)
    start, _, end = params.extra.get("CFG interval", "0-1").partition("-")
    return Txt2ImgRequest(
        cfg_start=float(start or 0), cfg_end=float(end or 1),
        classifier_scale=float(params.extra.get("Classifier guidance", 0) or 0),
        classifier_target=params.extra.get("Classifier target", ""),
        text_guidance_scale=float(params.extra.get("Text guidance", 0) or 0),
        prompt=params.prompt, negative_prompt=params.negative_prompt, model=params.model or DEFAULT_MODEL,
        sampler=params.sampler, steps=params.steps, guidance_scale=params.cfg_scale, guidance_rescale=rescale,
        seed=params.seed, width=params.width, height=params.height, eta=float(params.extra.get("Eta", 0) or 0),
    )


