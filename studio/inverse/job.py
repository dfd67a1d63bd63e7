"""The inverse-problem job: a measurement y = A x + n from an image, then DPS through the one loop, and a baseline."""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from studio.config import DEFAULT_MODEL
from studio.errors import RequestError
from studio.events import Notice, Result, Step
from studio.inverse import dps
from studio.inverse.operators import box_mask, get_operator, random_mask
from studio.jobs import prepare, unet_fn
from studio.manager import ModelManager
from studio.sampling import previews
from studio.sampling.loop import Hooks, denoise, noise_to, start_index, step_kwargs


@dataclass
class InverseRequest:
    image: np.ndarray  # uint8 HxWx3: the clean image (from_clean) or the measurement itself
    operator: str = "inpainting"  # inpainting, gaussian_blur, motion_blur, super_resolution
    hole: np.ndarray | None = None  # inpainting: HxW, nonzero where pixels are missing (painted); None: a box
    box: float = 0.4  # side of the box hole, as a fraction of the image
    random_missing: float = 0.0  # > 0: a random-pixel mask with this fraction missing, instead of the box
    kernel_size: int = 9
    intensity: float = 2.0  # Gaussian blur width (pixels)
    angle: float = 30.0  # motion blur direction (degrees)
    factor: int = 4  # super-resolution factor
    sigma: float = 0.05  # measurement noise, on the [-1, 1] scale
    zeta: float | None = None  # DPS step size; None: dps.DEFAULT_ZETA
    strength: float = dps.DEFAULT_STRENGTH  # DPS starts from the measurement's estimate noised this far; 1 = pure noise
    from_clean: bool = True  # False: `image` already is the measurement
    model: str = DEFAULT_MODEL
    prompt: str = ""
    guidance_scale: float = 1.0
    sampler: str = "DDPM"
    steps: int = 50
    seed: int = 0
    batch_size: int = 1
    baseline: bool = True
    preview_every: int = 5
    save: bool = True  # the DPS result and the baseline go to the outputs folder
    notices: list[str] = field(default_factory=list)


def _rgb(image, name: str) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise RequestError(f"The {name} is not an image (got {type(image).__name__}). Upload a PNG or JPEG.")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[..., :3]
    return np.clip(image, 0, 255).astype(np.uint8)


def _resized(image: np.ndarray, size: int, what: str, notices: list[str], nearest: bool = False) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    notices.append(f"The {what} is {image.shape[1]}x{image.shape[0]}; resized to {size}x{size}, the model's size.")
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(image).resize((size, size), method))


def build_measurement(req: InverseRequest, size: int, device) -> tuple:
    """(operator, y, clean or None, pixel mask or None); resizing what does not fit, and saying so in req.notices."""
    if not 0 <= req.sigma <= 1:
        raise RequestError(f"Noise sigma must be between 0 and 1 on the [-1, 1] scale (got {req.sigma}).")
    if not 0 < req.strength <= 1:
        raise RequestError(f"Start strength must be above 0 and at most 1 (1 = from pure noise; got {req.strength}).")
    image = _rgb(req.image, "image")
    mask = None
    if req.operator == "inpainting":
        if req.hole is not None and np.asarray(req.hole).any():
            hole = _rgb(np.asarray(req.hole, dtype=np.uint8) * 255 if np.asarray(req.hole).max() <= 1 else req.hole, "mask")
            hole = _resized(hole, size, "mask", req.notices, nearest=True)[..., 0] > 127
            mask = torch.from_numpy(~hole).float()[None, None]
        elif req.random_missing > 0:
            mask = random_mask(size, req.random_missing, seed=req.seed)
        else:
            mask = box_mask(size, req.box)
        known = float(mask.mean())
        if known >= 1.0:
            raise RequestError("The mask has no hole: nothing to inpaint. Paint the region to fill, or use a box.")
        if known <= 0.0:
            raise RequestError("The mask covers the whole image: nothing is measured. That is plain generation; use Generate.")
        op = get_operator("inpainting", mask=mask.to(device))
    elif req.operator in ("gaussian_blur", "motion_blur"):
        params = {"kernel_size": req.kernel_size}
        params.update(intensity=req.intensity) if req.operator == "gaussian_blur" else params.update(angle=req.angle)
        op = get_operator(req.operator, **params)
    else:
        op = get_operator(req.operator, **({"factor": req.factor} if req.operator == "super_resolution" else {}))
    g = torch.Generator().manual_seed(req.seed)
    if req.from_clean:
        clean = previews.from_uint8(_resized(image, size, "image", req.notices)[None], device)
        y = op.measure(clean, req.sigma, g)
    else:
        clean = None
        small = size // req.factor if req.operator == "super_resolution" else size
        y = previews.from_uint8(_resized(image, small, "measurement", req.notices)[None], device)
        if mask is not None:
            y = op.forward(y)
    return op, y, clean, mask


def show_measurement(y: torch.Tensor, operator: str, size: int) -> torch.Tensor:
    """The measurement as a viewable image at full size (super-resolution inputs upscaled by nearest neighbour)."""
    if y.shape[-1] != size:
        y = torch.nn.functional.interpolate(y, size=(size, size), mode="nearest")
    return y.clamp(-1, 1)


def scores(clean: np.ndarray, out: np.ndarray, mask: torch.Tensor | None) -> dict[str, float]:
    """PSNR and SSIM against the clean image (uint8), and PSNR on the hole alone for inpainting."""
    result = {"psnr": float(peak_signal_noise_ratio(clean, out, data_range=255)),
              "ssim": float(structural_similarity(clean, out, channel_axis=2, data_range=255))}
    if mask is not None:
        hole = mask[0, 0].cpu().numpy() < 0.5
        mse = float(((clean[hole].astype(np.float64) - out[hole]) ** 2).mean())
        result["psnr_hole"] = float(10 * np.log10(255**2 / max(mse, 1e-10)))
    return result


def inverse(manager: ModelManager, req: InverseRequest) -> Iterator[Step | Notice | Result]:
    """DPS for the request's measurement; then the baseline; Result images: [DPS, baseline, measurement, (clean)]."""
    with manager.session():
        # 1. Model and measurement.
        model = manager.get(req.model)
        pipe, size = model.pipe, model.default_size
        device = pipe._execution_device
        op, y, clean, mask = build_measurement(req, size, device)
        for text in req.notices:
            yield Notice(text)
        y = y.expand(req.batch_size, -1, -1, -1)
        zeta = dps.DEFAULT_ZETA if req.zeta is None else req.zeta
        decode = lambda z: previews.vae_decode_grad(pipe.vae, z)  # noqa: E731
        outputs = {}
        # 2. DPS through the one loop, gradients on for the model call.
        correction = dps.DPSCorrection(op, y, decode, zeta)
        start = None
        if req.strength < 1:  # from the classical estimate (bicubic, the blurred image, the mean-filled hole), noised
            with torch.no_grad():
                start = previews.vae_encode(pipe.vae, op.estimate(y))
        outputs["dps"] = yield from _sample(manager, model, req, Hooks(correction=correction, needs_grad=zeta > 0), "DPS",
                                            start=start)
        if start is not None and req.operator == "inpainting":
            outputs["start"] = op.estimate(y)  # scored too: what DPS improved on
        # 3. The baseline.
        if req.baseline:
            if req.operator == "inpainting":
                run = prepare(model, req.prompt, "", req.guidance_scale, req.sampler, req.steps, req.seed, req.batch_size, (size, size))
                with torch.no_grad():
                    known = previews.vae_encode(pipe.vae, y)
                blend = dps.MaskBlend(known, dps.latent_mask(mask.to(device), known.shape[-2:]), run.scheduler,
                                      torch.Generator().manual_seed(req.seed + 1))
                outputs["baseline"] = yield from _sample(manager, model, req, Hooks(correction=blend), "Baseline", run)
            else:  # bicubic for super-resolution, the measurement itself for deblurring
                outputs["baseline"] = op.estimate(y)
        if clean is not None:  # the floor a latent model can reach: the clean image through the VAE
            with torch.no_grad():
                outputs["clean_vae"] = previews.vae_decode(pipe.vae, previews.vae_encode(pipe.vae, clean)).float()
    # 4. Scores and residuals.
    shown = show_measurement(y, req.operator, size)
    images = [outputs["dps"], outputs.get("baseline", shown), shown] + ([clean.expand_as(shown)] if clean is not None else [])
    metrics: dict[str, float] = {"zeta": zeta, "sigma": req.sigma, "strength": req.strength}
    for name, out in outputs.items():
        with torch.no_grad():
            residual = y - op.forward(out.float())
        metrics[f"{name}_residual_rms"] = float(residual.pow(2).flatten(1).mean(1).sqrt().mean())
        if clean is not None:
            for k, v in scores(previews.to_uint8(clean)[0], previews.to_uint8(out)[0], mask).items():
                metrics[f"{name}_{k}"] = v
    pil = previews.to_pil(torch.cat([im[:1] for im in images]))
    paths = _save(manager, model, req, zeta, {"DPS": pil[0], "baseline": pil[1]} if req.baseline else {"DPS": pil[0]}) if req.save else []
    yield Result(pil, paths=paths, metrics=metrics, seeds=[req.seed])


def _save(manager, model, req: InverseRequest, zeta: float, images: dict) -> list:
    """Nothing is lost: the DPS result and the baseline go to the outputs folder with their settings."""
    from studio import metadata

    extra = {"Inverse problem": req.operator, "Noise sigma": f"{req.sigma:g}", "DPS zeta": f"{zeta:g}",
             "DPS strength": f"{req.strength:g}"}
    if req.operator == "super_resolution":
        extra["SR factor"] = str(req.factor)
    elif req.operator == "gaussian_blur":
        extra.update({"Blur kernel": str(req.kernel_size), "Blur strength": f"{req.intensity:g}"})
    elif req.operator == "motion_blur":
        extra.update({"Blur kernel": str(req.kernel_size), "Blur angle": f"{req.angle:g}"})
    paths = []
    for name, image in images.items():
        params = metadata.GenerationParams(prompt=req.prompt, steps=req.steps, sampler=req.sampler, cfg_scale=req.guidance_scale,
                                           seed=req.seed, width=image.width, height=image.height, model=model.name,
                                           model_hash=model.model_hash, extra={**extra, "Result": name, "Version": "diffusion-studio"})
        paths.append(metadata.save_png(image, params, manager.config.outputs_dir))
    return paths


def _sample(manager, model, req: InverseRequest, hooks: Hooks, phase: str, run=None, start=None):
    """One run of the loop with the given hooks; yields Steps, returns the decoded images in [-1, 1].

    With `start` (UNet latents), the run begins part way (req.strength), from `start` noised to that timestep."""
    pipe = model.pipe
    size = model.default_size
    run = run or prepare(model, req.prompt, "", req.guidance_scale, req.sampler, req.steps, req.seed, req.batch_size, (size, size))
    latents, t0, begin = run.latents, time.perf_counter(), 0
    if start is not None:
        begin = start_index(run.scheduler, req.steps, req.strength)
        if hasattr(run.scheduler, "set_begin_index"):
            run.scheduler.set_begin_index(begin)
        noise = run.latents / run.scheduler.init_noise_sigma
        latents = noise_to(run.scheduler, start.expand_as(noise).to(noise), noise, run.scheduler.timesteps[begin:begin + 1])
    every = req.preview_every
    for state in denoise(unet_fn(pipe.unet), run.scheduler, run.space, latents, run.cond, req.guidance_scale,
                         extra_step_kwargs=step_kwargs(run.scheduler, run.generators), hooks=hooks,
                         want_x0=lambda i: every > 0 and i % every == 0, should_stop=manager.should_stop, begin=begin):
        latents = state.next_latents
        preview = None
        if state.x0_hat is not None and every > 0 and state.i % every == 0:
            with torch.no_grad():
                preview = previews.to_pil(torch.cat([previews.vae_decode(pipe.vae, state.x0_hat.detach()[:1]),
                                                     previews.vae_decode(pipe.vae, latents[:1])]))
        elapsed = time.perf_counter() - t0
        yield Step(state.i, state.n, preview, {"it_per_s": state.i / max(elapsed, 1e-9), f"{phase.lower()}": 1.0, **state.metrics})
    return previews.vae_decode(pipe.vae, latents).float()
