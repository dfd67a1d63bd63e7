"""The text-to-image job: Txt2ImgRequest in, events out (Notice..., Step per denoising step, Result)."""
from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace

from studio import metadata
from studio.config import DEFAULT_MODEL, Limits
from studio.control.controlnet import ControlInput, build_units, control_hook, validate_controls
from studio.errors import RequestError
from studio.events import Notice, Result, Step
from studio.jobs.common import check_prompts, check_seed, prepare, stream
from studio.manager import LoadedModel, ModelManager
from studio.personalize import adapters
from studio.sampling import guidance, previews
from studio.sampling.loop import Hooks
from studio.sampling.schedulers import MAX_SHIFT, MODEL_DEFAULT, check_sampler, sampler_from_label, sampler_label

SIZE_MULTIPLE = 8
MAX_LORA_WEIGHT = 10.0


@dataclass
class Txt2ImgRequest:
    prompt: str = ""
    negative_prompt: str = ""
    model: str = DEFAULT_MODEL
    sampler: str = MODEL_DEFAULT  # "": the model's own scheduler, from its folder
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
    classifier_scale: float = 0.0  # classifier guidance (models whose judges include a noise-aware classifier)
    classifier_target: str = ""  # what to steer toward, e.g. "red star" or "person"; empty: the prompt's attributes
    text_guidance_scale: float = 0.0  # text guidance: CLIP, or the model's image judge, on the decoded x0-hat
    shift: float = 0.0  # flow models: timestep shift (0: the model's own, from its scheduler config)
    controls: tuple[ControlInput, ...] = ()  # ControlNets, with their control maps
    loras: tuple[tuple[str, float], ...] = ()  # (name or path, weight), besides <lora:name:weight> tags in the prompt
    embeddings: tuple[str, ...] = ()  # textual-inversion embeddings (name or path), besides those the prompt names
    save: bool = True


def validate(req: Txt2ImgRequest, limits: Limits) -> tuple[Txt2ImgRequest, list[str]]:
    """Refuse what cannot run; round what can (saying so). Returns the request to run and the notices."""
    notices: list[str] = []
    check_sampler(req.sampler)
    check_prompts(limits, prompt=req.prompt, negative_prompt=req.negative_prompt, classifier_target=req.classifier_target)
    if not 0 <= req.shift <= MAX_SHIFT:
        raise RequestError(f"Shift must be 0 (the model's own) or above 0 and at most {MAX_SHIFT:g} (got {req.shift}).")
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
    for name, weight in list(req.loras) + adapters.parse_prompt(req.prompt)[1]:
        if not str(name).strip() or not -MAX_LORA_WEIGHT <= float(weight) <= MAX_LORA_WEIGHT:
            raise RequestError(f"A LoRA needs a name and a weight between -{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g} "
                               f"(got {name!r}: {weight}).")
    if req.preview_every < 0:
        raise RequestError(f"Preview every N steps must be 0 (off) or more (got {req.preview_every}).")
    check_seed(req.seed)
    sides = {}
    for name in ("width", "height"):
        value = int(getattr(req, name))
        if value == 0:
            sides[name] = 0
            continue
        if not limits.min_side <= value <= limits.max_side:
            raise RequestError(f"{name.capitalize()} must be between {limits.min_side} and {limits.max_side} pixels (got {value}).")
        rounded = _round_to(value, SIZE_MULTIPLE)
        if rounded != value:
            notices.append(f"{name.capitalize()} {value} is not a multiple of {SIZE_MULTIPLE}; rounded to {rounded}.")
        sides[name] = rounded
    return replace(req, **sides), notices


def image_size(model: LoadedModel, req: Txt2ImgRequest) -> tuple[int, int]:
    """(height, width) a request samples at: its own, or the model's native size where it says 0."""
    height, width = req.height or model.default_size, req.width or model.default_size
    multiple = model.size_multiple
    if height % multiple or width % multiple:
        raise RequestError(f"{model.name} samples at sides that are multiples of {multiple} pixels; got {width}x{height}. "
                           f"Try {_round_to(width, multiple)}x{_round_to(height, multiple)}.")
    return height, width


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


# ---------------------------------------------------------------- guidance beyond CFG, from the model's judges
def text_judge(model: LoadedModel, req: Txt2ImgRequest, clip) -> Callable:
    """The model's image judge (the embedded suite's evaluator); CLIP (--clip-model) for other models; else a clear error."""
    judges = model.judges
    if judges is not None and judges.image_logits is not None:
        return guidance.evaluator_judge(judges.image_logits, attribute_targets(model, req.prompt, "text guidance"))
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
        classifier = require_noisy_judge(model)
        targets = attribute_targets(model, req.classifier_target or req.prompt, "classifier guidance")
        steps.append(guidance.GradientGuidance(guidance.classifier_log_prob(classifier, targets),
                                               req.classifier_scale, scheduler, space))
    if req.text_guidance_scale > 0:
        steps.append(guidance.GradientGuidance(
            guidance.x0_judge_log_prob(lambda z: previews.vae_decode_grad(model.pipe.vae, z), text_judge(model, req, clip)),
            req.text_guidance_scale, scheduler, space))
    return Hooks(guidance=_chain(steps) if steps else None)


def require_noisy_judge(model: LoadedModel) -> Callable:
    """The model's noise-aware classifier (x_t, t) -> logits, or the message that says it has none."""
    if model.judges is None or model.judges.noisy_logits is None:
        raise RequestError(f"Classifier guidance needs a noise-aware classifier (a judge of noisy latents, such as the "
                           f"embedded suite's noisy_classifier/); {model.name} has none. The embedded suite shapes-v1 has one.")
    return model.judges.noisy_logits


def attribute_targets(model: LoadedModel, text: str, what: str) -> dict[str, int]:
    """What a text asks the model's judges for; a clear error when they know none of it."""
    targets = model.judges.attributes(text) if model.judges is not None else {}
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


# ---------------------------------------------------------------- the job
def txt2img(manager: ModelManager, req: Txt2ImgRequest) -> Iterator[Step | Notice | Result]:
    """Text to image through the one loop; yields Notice(s), a Step per denoising step, then the Result."""
    # 1. Check inputs.
    req, notices = validate(req, manager.config.limits)
    for text in notices:
        yield Notice(text)
    with manager.session():
        model = manager.get(req.model)
        result = yield from sample(manager, model, req)
    yield result


def sample(manager: ModelManager, model: LoadedModel, req: Txt2ImgRequest) -> Generator[Step | Notice, None, Result]:
    """A checked request on a loaded model, inside the job's session: Steps while denoising; returns the Result.
    The request's LoRAs and embeddings are in the model for this run only."""
    with adapters.applied(manager.config, model, req.prompt, req.loras, req.embeddings) as used:
        for text in used.notices:
            yield Notice(text)
        result = yield from _sample(manager, model, replace(req, prompt=used.prompt), used)
    return result


def _sample(manager: ModelManager, model: LoadedModel, req: Txt2ImgRequest,
            used: adapters.Used) -> Generator[Step | Notice, None, Result]:
    # 2. The prompt, sampler and noise; guidance and ControlNet hooks.
    if req.controls and model.is_sd3:
        raise RequestError(f"ControlNet works with UNet models (SD 1.x, 2.x, XL and the embedded suite); {model.name} is "
                           "an SD3-class transformer model. Use Generate without ControlNets for it.")
    run = prepare(model, req.prompt, req.negative_prompt, req.guidance_scale, req.sampler, req.steps, req.seed,
                  req.batch_size, image_size(model, req), req.shift)
    hooks = guidance_hooks(model, req, run.scheduler, run.space, manager.clip() if req.text_guidance_scale > 0 else None)
    if req.controls:
        units, notes = build_units(manager, model, req.controls, run.size)
        for text in notes:
            yield Notice(text)
        hooks.control = control_hook(units)
    # 3. Denoise, streaming x0-hat previews.
    t0 = time.perf_counter()
    latents = yield from stream(manager, model, run, req.guidance_scale, hooks=hooks, preview_every=req.preview_every,
                                guidance_rescale=req.guidance_rescale, cfg_interval=(req.cfg_start, req.cfg_end), eta=req.eta)
    # 4. Decode, save with settings, report.
    images = model.decode(latents)
    pixels = ((images.detach().float() / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).cpu().numpy()
    pil = previews.to_pil(images)
    height, width = run.size
    sampler = sampler_label(req.sampler, run.scheduler)
    infotexts, paths = [], []
    for image, s in zip(pil, run.seeds):
        params = metadata.GenerationParams(
            prompt=used.written_prompt, negative_prompt=req.negative_prompt, steps=req.steps, sampler=sampler,
            cfg_scale=req.guidance_scale, seed=s, width=width, height=height, model=model.name,
            model_hash=model.model_hash, extra=_extras(req, sampler, used.extras),
        )
        infotexts.append(metadata.format_parameters(params))
        if req.save:
            paths.append(metadata.save_png(image, params, manager.config.outputs_dir))
    return Result(pil, infotexts, paths, run.seeds, {"seconds": time.perf_counter() - t0}, pixels=pixels,
                  engine=model.engines.describe() if model.engines else "")


def _extras(req: Txt2ImgRequest, sampler: str, personal: dict[str, str]) -> dict[str, str]:
    extra = {}
    if req.guidance_rescale > 0:
        extra["CFG rescale"] = f"{req.guidance_rescale:g}"
    if req.shift:
        extra["Shift"] = f"{req.shift:g}"
    if req.eta and sampler in ("DDIM",):
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
    extra.update(personal)  # "Lora hashes", "TI hashes", as A1111 writes them
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
        sampler=sampler_from_label(params.sampler), steps=params.steps, guidance_scale=params.cfg_scale, guidance_rescale=rescale,
        seed=params.seed, width=params.width, height=params.height, eta=float(params.extra.get("Eta", 0) or 0),
        shift=float(params.extra.get("Shift", 0) or 0),
        embeddings=tuple(entry.partition(":")[0].strip() for entry in params.extra.get("TI hashes", "").split(",")
                         if entry.strip()),
    )
