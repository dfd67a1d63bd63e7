"""The inverse-problem job: a measurement y = A x + n from an image, DPS through the one loop, and the operator's
baseline; every operator-specific choice comes from the operator registry (studio.inverse.operators)."""
from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from studio import metadata
from studio.config import DEFAULT_MODEL
from studio.errors import RequestError
from studio.events import Notice, Result, Step
from studio.inverse import dps
from studio.inverse.operators import Operator, operator_class, settings_text
from studio.jobs.common import MAX_SEED, Prepared, check_prompts, prepare, start_from, stream
from studio.manager import LoadedModel, ModelManager
from studio.sampling import previews
from studio.sampling.loop import Hooks, LoopState


@dataclass
class InverseRequest:
    image: np.ndarray  # uint8 HxWx3: the clean image (from_clean) or the measurement itself
    operator: str = "inpainting"  # a name in the operator registry (inpainting, gaussian_blur, motion_blur, super_resolution)
    hole: np.ndarray | None = None  # a painted region (inpainting): HxW, nonzero where pixels are missing; None: a box
    # Operator settings; each operator reads its own (Operator.params).
    box: float = 0.4  # side of the box hole, as a fraction of the image
    random_missing: float = 0.0  # > 0: a random-pixel mask with this fraction missing, instead of the box
    kernel_size: int = 9
    intensity: float = 2.0  # Gaussian blur width (pixels)
    angle: float = 30.0  # motion blur direction (degrees)
    factor: int = 4  # super-resolution factor
    sigma: float = 0.05  # measurement noise, on the [-1, 1] scale
    zeta: float | None = None  # DPS step size; None: dps.DEFAULT_ZETA
    strength: float = dps.DEFAULT_STRENGTH  # DPS starts from the measurement's estimate noised this far; 1 = pure noise
    dps_mode: str = "full"  # "full": gradients through the UNet and decoder; "fast": through the decoder only
    tiny_decoder: bool = False  # the model's tiny decoder (AutoencoderTiny) in the gradient path instead of its VAE
    tiny_offset: bool = True  # ... with its offset to the full decoder measured every few steps (DPSCorrection)
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


@dataclass
class Measurement:
    operator: Operator
    y: torch.Tensor  # (1, 3, h, w) in [-1, 1]
    clean: torch.Tensor | None  # (1, 3, H, W), when the measurement was made from a clean image
    settings: dict  # the operator's settings, as read from the request


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


def build_measurement(req: InverseRequest, size: int, device) -> Measurement:
    """The operator and y (and the clean image when there is one); resizing what does not fit, saying so in req.notices."""
    if not 0 <= req.sigma <= 1:
        raise RequestError(f"Noise sigma must be between 0 and 1 on the [-1, 1] scale (got {req.sigma}).")
    if req.dps_mode not in ("full", "fast"):
        raise RequestError(f"DPS mode must be full or fast (got {req.dps_mode!r}).")
    if not 0 < req.strength <= 1:
        raise RequestError(f"Start strength must be above 0 and at most 1 (1 = from pure noise; got {req.strength}).")
    if not 0 <= req.seed <= MAX_SEED:
        raise RequestError(f"Seed must be between 0 and {MAX_SEED} (got {req.seed}).")
    cls = operator_class(req.operator)
    image = _rgb(req.image, "image")
    hole = None
    if req.hole is not None and np.asarray(req.hole).any():
        painted = np.asarray(req.hole)
        painted = _rgb(painted.astype(np.uint8) * 255 if painted.max() <= 1 else painted, "mask")
        hole = _resized(painted, size, "mask", req.notices, nearest=True)[..., 0] > 127
    settings = {p.name: getattr(req, p.name) for p in cls.params}
    for p in cls.params:  # the registry's ranges hold for scripts and the CLI too, not only the page's sliders
        value = settings[p.name]
        if (value not in p.choices) if p.choices else not p.minimum <= value <= p.maximum:
            allowed = ", ".join(f"{c:g}" for c in p.choices) if p.choices else f"between {p.minimum:g} and {p.maximum:g}"
            raise RequestError(f"{p.label} must be {allowed} (got {value:g}).")
    op = cls.build(size, settings, req.seed, hole)
    g = torch.Generator().manual_seed(req.seed)
    if req.from_clean:
        clean = previews.from_uint8(_resized(image, size, "image", req.notices)[None], device)
        return Measurement(op, op.measure(clean, req.sigma, g), clean, settings)
    small = op.measurement_size(size)
    y = previews.from_uint8(_resized(image, small, "measurement", req.notices)[None], device)
    return Measurement(op, op.from_upload(y), None, settings)


def show_measurement(y: torch.Tensor, size: int) -> torch.Tensor:
    """The measurement as a viewable image at full size (smaller measurements upscaled by nearest neighbour)."""
    if y.shape[-1] != size:
        y = torch.nn.functional.interpolate(y, size=(size, size), mode="nearest")
    return y.clamp(-1, 1)


def scores(clean: np.ndarray, out: np.ndarray, mask: torch.Tensor | None) -> dict[str, float]:
    """PSNR and SSIM against the clean image (uint8), and PSNR on the hole alone when there is a known-pixel mask."""
    result = {"psnr": float(peak_signal_noise_ratio(clean, out, data_range=255)),
              "ssim": float(structural_similarity(clean, out, channel_axis=2, data_range=255))}
    if mask is not None:
        hole = mask[0, 0].cpu().numpy() < 0.5
        mse = float(((clean[hole].astype(np.float64) - out[hole]) ** 2).mean())
        result["psnr_hole"] = float(10 * np.log10(255**2 / max(mse, 1e-10)))
    return result


def inverse(manager: ModelManager, req: InverseRequest) -> Iterator[Step | Notice | Result]:
    """DPS for the request's measurement (Steps, phase "dps"), then the baseline (phase "baseline" when it samples);
    the Result's images are DPS's, `named` holds the baseline, measurement, clean image and DPS's start."""
    check_prompts(manager.config.limits, prompt=req.prompt)
    with manager.session():
        # 1. Model and measurement.
        model = manager.get(req.model)
        pipe, size = model.pipe, model.default_size
        m = build_measurement(req, size, model.device)
        for text in req.notices:
            yield Notice(text)
        op, y = m.operator, m.y.expand(req.batch_size, -1, -1, -1)
        zeta = dps.DEFAULT_ZETA if req.zeta is None else req.zeta
        outputs: dict[str, torch.Tensor] = {}
        # 2. DPS through the one loop, gradients on for the model call (full DPS) or from x0-hat on (fast DPS).
        run = _prepare(model, req, size)
        fast = req.dps_mode == "fast"
        correction = dps.DPSCorrection(op, y, _gradient_decoder(model, req.tiny_decoder), zeta, fast=fast,
                                       full_decode=_offset_decoder(model, req))
        if req.strength < 1:  # from the classical estimate (bicubic, the blurred image, the mean-filled hole), noised
            with torch.no_grad():
                start = previews.vae_encode(pipe.vae, op.estimate(y))
            run = start_from(run, start, req.steps, req.strength)
            if op.known_mask() is not None:
                outputs["start"] = op.estimate(y)  # scored too: what DPS improved on
        hooks = Hooks(correction=correction, needs_grad=zeta > 0 and not fast)
        outputs["dps"] = yield from _sample(manager, model, req, run, hooks, "dps")
        # 3. The baseline: mask blending where pixels are known as they are, else the operator's classical estimate.
        if req.baseline:
            known = op.known_mask()
            if known is not None:
                run = _prepare(model, req, size)
                with torch.no_grad():
                    known_latents = previews.vae_encode(pipe.vae, y)
                blend = dps.MaskBlend(known_latents, dps.latent_mask(known.to(known_latents.device), known_latents.shape[-2:]), run.scheduler,
                                      torch.Generator().manual_seed(req.seed + 1))
                outputs["baseline"] = yield from _sample(manager, model, req, run, Hooks(correction=blend), "baseline")
            else:
                outputs["baseline"] = op.estimate(y)
        if m.clean is not None:  # the floor a latent model can reach: the clean image through the VAE
            with torch.no_grad():
                outputs["clean_vae"] = previews.vae_decode(pipe.vae, previews.vae_encode(pipe.vae, m.clean)).float()
    # 4. Scores and residuals.
    metrics: dict[str, float] = {"zeta": zeta, "sigma": req.sigma, "strength": req.strength}
    for name, out in outputs.items():
        with torch.no_grad():
            residual = y - op.forward(out.float())
        metrics[f"{name}_residual_rms"] = float(residual.pow(2).flatten(1).mean(1).sqrt().mean())
        if m.clean is not None:
            for k, v in scores(previews.to_uint8(m.clean)[0], previews.to_uint8(out)[0], op.known_mask()).items():
                metrics[f"{name}_{k}"] = v
    named = {"measurement": previews.to_pil(show_measurement(y[:1], size))[0]}
    for name in ("baseline", "start"):
        if name in outputs:
            named[name] = previews.to_pil(outputs[name][:1])[0]
    if m.clean is not None:
        named["clean"] = previews.to_pil(m.clean)[0]
    images = previews.to_pil(outputs["dps"])
    saved = {"DPS": images[0], **({"baseline": named["baseline"]} if "baseline" in named else {})}
    paths = _save(manager, model, req, zeta, settings_text(type(op), m.settings), saved) if req.save else []
    yield Result(images, paths=paths, metrics=metrics, seeds=[req.seed], named=named)


def _gradient_decoder(model: LoadedModel, tiny: bool):
    """Latents -> images in [-1, 1], differentiable: the model's VAE, or its tiny decoder."""
    if not tiny:
        return lambda z: previews.vae_decode_grad(model.pipe.vae, z)
    if model.tiny_vae is None:
        raise RequestError(f"{model.name} has no tiny decoder: put an AutoencoderTiny (TAESD-format) folder in its "
                           "folder as vae_tiny/, or in the models folder as taesd/ (SD 1.x/2.x), taesdxl/ or taesd3/.")
    return lambda z: previews.tiny_decode(model.tiny_vae, z)


def _offset_decoder(model: LoadedModel, req: InverseRequest):
    """With the tiny decoder in the gradient path, the full decoder (no gradients; on the engine when one is built)
    that measures its offset every few steps."""
    if not req.tiny_decoder or not req.tiny_offset:
        return None
    return model.decode


def _prepare(model: LoadedModel, req: InverseRequest, size: int) -> Prepared:
    return prepare(model, req.prompt, "", req.guidance_scale, req.sampler, req.steps, req.seed, req.batch_size, (size, size))


def _sample(manager: ModelManager, model: LoadedModel, req: InverseRequest, run: Prepared, hooks: Hooks,
            phase: str) -> Generator[Step, None, torch.Tensor]:
    """One run of the loop with the given hooks; yields Steps of `phase`, returns the decoded images in [-1, 1]."""
    def preview(state: LoopState):  # x0-hat and the current sample, decoded
        return previews.to_pil(torch.cat([model.decode(state.x0_hat.detach()[:1]), model.decode(state.next_latents[:1])]))

    latents = yield from stream(manager, model, run, req.guidance_scale, hooks=hooks, preview_every=req.preview_every,
                                preview=preview, phase=phase)
    return model.decode(latents).float()


def _save(manager: ModelManager, model: LoadedModel, req: InverseRequest, zeta: float, operator_settings: dict[str, str],
          images: dict[str, Image.Image]) -> list:
    """Nothing is lost: the DPS result and the baseline go to the outputs folder with their settings."""
    extra = {"Inverse problem": req.operator, "Noise sigma": f"{req.sigma:g}", "DPS zeta": f"{zeta:g}",
             "DPS strength": f"{req.strength:g}", **operator_settings}
    paths = []
    for name, image in images.items():
        params = metadata.GenerationParams(prompt=req.prompt, steps=req.steps, sampler=req.sampler, cfg_scale=req.guidance_scale,
                                           seed=req.seed, width=image.width, height=image.height, model=model.name,
                                           model_hash=model.model_hash, extra={**extra, "Result": name, "Version": "diffusion-studio"})
        paths.append(metadata.save_png(image, params, manager.config.outputs_dir))
    return paths
