"""The Inverse problems tab: Diffusion Posterior Sampling (Chung et al. 2023) against a baseline, with a live residual plot."""
from __future__ import annotations

import time

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from studio.errors import RequestError
from studio.events import Notice, Result, Step
from studio.inverse.job import InverseRequest, inverse
from studio.sampling.schedulers import SAMPLERS
from studio.shapes.scenes import make_scene
from studio.studio import Studio
from studio.ui.common import ACCELERATOR, guarded, status, tile

VIEW = 256  # images are upscaled (nearest) to at least this many pixels for viewing
OPERATORS = [("Inpainting", "inpainting"), ("Gaussian blur", "gaussian_blur"), ("Motion blur", "motion_blur"),
             ("Super-resolution", "super_resolution")]
BASELINES = {"inpainting": "mask blending", "super_resolution": "bicubic", "gaussian_blur": "the measurement itself",
             "motion_blur": "the measurement itself"}
TABLE_HEADERS = ["method", "PSNR", "SSIM", "hole PSNR", "residual"]
PLOT_COLUMNS = ["step", "value", "series"]


def build(studio: Studio) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    start = InverseRequest(image=np.zeros((1, 1, 3), np.uint8))
    with gr.Row():
        with gr.Column(scale=2):
            editor = gr.ImageEditor(type="numpy", image_mode="RGBA", label="Image (paint the hole to inpaint)",
                                    brush=gr.Brush(colors=["#ff00ff"], default_color="#ff00ff", default_size=6),
                                    sources=["upload", "clipboard"], layers=False, transforms=(), height=360,
                                    elem_id="inverse-editor", elem_classes=["pixelated"])
            with gr.Row():
                sample_btn = gr.Button("Procedural sample", elem_id="inverse-sample")
                scene_seed = gr.Number(value=0, precision=0, minimum=0, label="Scene seed", info="+1 each click")
            from_measurement = gr.Checkbox(False, label="Input is already the measurement",
                                           info="off: the measurement is made from the image (and scores are computed)")
            operator = gr.Dropdown(OPERATORS, value=start.operator, label="Operator", elem_id="inverse-operator")
            with gr.Row():
                box = gr.Slider(0, 0.9, value=start.box, step=0.05, label="Box size", info="side of the hole; painted strokes win",
                                elem_id="inverse-box")
                random_missing = gr.Slider(0, 0.95, value=0.0, step=0.05, label="Random pixels missing",
                                           info="0 = off (the box is used)")
                kernel = gr.Slider(3, 31, value=start.kernel_size, step=2, label="Kernel size", visible=False)
                intensity = gr.Slider(0.5, 10, value=start.intensity, step=0.5, label="Blur strength (px)", visible=False)
                angle = gr.Slider(0, 180, value=start.angle, step=5, label="Motion angle (deg)", visible=False)
                factor = gr.Radio([2, 4], value=start.factor, label="SR factor", visible=False, elem_id="inverse-factor")
            with gr.Row():
                sigma = gr.Slider(0, 0.2, value=start.sigma, step=0.005, label="Noise sigma", info="on the [-1, 1] scale")
                zeta = gr.Number(value=0, label="zeta (DPS step size)", info="0 or empty = the per-task default (1)")
                strength = gr.Slider(0.05, 1, value=start.strength, step=0.05, label="Start strength", elem_id="inverse-strength",
                                     info="DPS starts from the classical estimate noised this far; 1 = from pure noise")
            with gr.Row():
                steps = gr.Slider(1, studio.config.limits.max_steps, value=start.steps, step=1, label="Steps",
                                  elem_id="inverse-steps")
                sampler = gr.Dropdown(list(SAMPLERS), value=start.sampler, label="Sampler")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
            with gr.Row():
                prompt = gr.Textbox(label="Prompt (optional)", placeholder="empty: unconditional", scale=3)
                cfg = gr.Slider(0, 20, value=start.guidance_scale, step=0.5, label="CFG scale", info="1 = no CFG", scale=2)
            model = gr.Dropdown(studio.model_choices(), value=studio.default_model(), label="Model", allow_custom_value=True)
            with gr.Row():
                run_btn = gr.Button("Run DPS", variant="primary", elem_id="inverse-run")
                stop = gr.Button("Stop", variant="stop", elem_id="inverse-stop")
        with gr.Column(scale=3):
            progress = gr.Markdown("", elem_id="inverse-status")
            with gr.Row():
                live = gr.Image(label="Live: x0-hat · current sample", type="pil", interactive=False, height=220,
                                elem_id="inverse-live", elem_classes=["pixelated"])
                plot = gr.LinePlot(x="step", y="value", color="series", label="Measurement residual (RMS) against step",
                                   x_title="DPS step", y_title="RMS, [-1, 1] scale", elem_id="inverse-plot")
            gallery = gr.Gallery(label="Measurement · baseline · DPS · clean", columns=4, height=210, object_fit="contain",
                                 elem_id="inverse-gallery", elem_classes=["pixelated"])
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Scores against the clean image", interactive=False,
                                 elem_id="inverse-table")

    specific = [box, random_missing, kernel, intensity, angle, factor]

    def show_controls(name):
        shown = {"inpainting": (box, random_missing), "gaussian_blur": (kernel, intensity),
                 "motion_blur": (kernel, angle), "super_resolution": (factor,)}[name]
        return [gr.update(visible=c in shown) for c in specific]

    operator.change(show_controls, operator, specific, queue=False)

    def new_sample(seed_value):
        s = int(seed_value or 0)
        return make_scene(np.random.default_rng(s)).image, s + 1

    sample_btn.click(new_sample, scene_seed, [editor, scene_seed], queue=False)

    def run(editor_value, measured, op, box_v, random_v, kernel_v, intensity_v, angle_v, factor_v, sigma_v, zeta_v,
            strength_v, steps_v, sampler_v, seed_v, prompt_v, cfg_v, model_v):
        residuals: list[dict] = []
        t0 = time.perf_counter()

        def events():
            # Building the request here sends bad input to the status line through guarded().
            image, hole = editor_image(editor_value)
            req = InverseRequest(image=image, operator=op, hole=hole, box=float(box_v), random_missing=float(random_v),
                                 kernel_size=int(kernel_v), intensity=float(intensity_v), angle=float(angle_v),
                                 factor=int(factor_v), sigma=float(sigma_v), zeta=float(zeta_v) if zeta_v else None,
                                 strength=float(strength_v),
                                 from_clean=not measured, model=model_v or "", prompt=prompt_v or "",
                                 guidance_scale=float(cfg_v), sampler=sampler_v, steps=int(steps_v), seed=int(seed_v or 0))
            yield from inverse(studio.manager, req)

        def on_event(event) -> dict:
            if isinstance(event, Notice):
                return {progress: status(event.text)}
            if isinstance(event, Step):
                update = {}
                if event.preview:
                    update[live] = enlarge(tile(event.preview))
                if "dps" in event.metrics:
                    r = event.metrics.get("residual_rms")
                    text = f"DPS step {event.i}/{event.n}" + (f" · residual {r:.4f}" if r is not None else "")
                    if r is not None:
                        residuals.append({"step": event.i, "value": r})
                        update[plot] = residual_plot(residuals, float(sigma_v))
                else:
                    text = f"Baseline step {event.i}/{event.n}"
                update[progress] = status(text)
                return update
            assert isinstance(event, Result)
            m = event.metrics
            return {gallery: gr.update(value=result_gallery(event.images), label=gallery_label(op, len(event.images) > 3)),
                    table: score_table(m),
                    progress: status(f"Done in {time.perf_counter() - t0:.1f} s · zeta {m['zeta']:.3g} · sigma {m['sigma']:g} · "
                                     f"DPS residual {m['dps_residual_rms']:.4f}", "ok")}

        def on_error(text: str, kind: str) -> dict:
            return {progress: status(text, kind)}

        yield {live: None, gallery: None, table: pd.DataFrame(columns=TABLE_HEADERS),
               plot: pd.DataFrame(columns=PLOT_COLUMNS), progress: status("Starting…")}
        yield from guarded(events(), on_event, on_error)

    run_btn.click(run, [editor, from_measurement, operator, box, random_missing, kernel, intensity, angle, factor, sigma, zeta,
                        strength, steps, sampler, seed, prompt, cfg, model], [live, plot, gallery, table, progress],
                  concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="inverse")
    stop.click(studio.manager.request_stop, None, None, queue=False)


def editor_image(value) -> tuple[np.ndarray, np.ndarray | None]:
    """The editor's background as uint8 RGB, and the painted hole (HxW, 1 = missing; alpha > 0 on any layer) or None."""
    background = value.get("background") if isinstance(value, dict) else value
    if background is None:
        raise RequestError("No image: click Procedural sample, or upload an image into the editor.")
    image = np.asarray(background)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    hole = None
    for layer in (value.get("layers") or []) if isinstance(value, dict) else []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4:
            painted = layer[..., 3] > 0
            hole = painted if hole is None else hole | painted
    if hole is not None and hole.any():
        if hole.shape != image.shape[:2]:  # the job resizes mask and image to the model's size independently
            hole = np.asarray(Image.fromarray(hole.astype(np.uint8) * 255).resize(image.shape[1::-1], Image.Resampling.NEAREST)) > 127
        return image, hole.astype(np.uint8)
    return image, None


def enlarge(image: Image.Image) -> Image.Image:
    """Nearest-neighbour upscaling so that 64 px suite images are viewable (the pixelated class keeps them crisp)."""
    k = max(1, VIEW // max(image.height, 1))
    return image if k == 1 else image.resize((image.width * k, image.height * k), Image.Resampling.NEAREST)


def residual_plot(residuals: list[dict], sigma: float) -> pd.DataFrame:
    """Long format for gr.LinePlot: the DPS residual per step, and the noise level sigma as a flat line to reach."""
    rows = [{**r, "series": "residual (RMS)"} for r in residuals]
    rows += [{"step": r["step"], "value": sigma, "series": "noise sigma"} for r in residuals]
    return pd.DataFrame(rows, columns=PLOT_COLUMNS)


def gallery_label(operator: str, with_clean: bool) -> str:
    """Captions stay one word (thumbnails are narrow); the label names the baseline's method."""
    return f"Measurement · baseline ({BASELINES.get(operator, 'none')}) · DPS" + (" · clean" if with_clean else "")


def result_gallery(images: list[Image.Image]) -> list[tuple[Image.Image, str]]:
    """The job's [DPS, baseline, measurement, clean?] shown as measurement, baseline, DPS, clean."""
    dps_out, baseline, measurement, *clean = images
    items = [(measurement, "measurement"), (baseline, "baseline"), (dps_out, "DPS")]
    items += [(clean[0], "clean")] if clean else []
    return [(enlarge(im), label) for im, label in items]


def score_table(metrics: dict[str, float]) -> pd.DataFrame:
    """PSNR / SSIM / hole PSNR / residual for DPS and the baseline; n/a where not measured (no clean image, no hole)."""

    def fmt(key: str, digits: int):
        return round(metrics[key], digits) if key in metrics else "n/a"

    rows = [[label, fmt(f"{name}_psnr", 2), fmt(f"{name}_ssim", 3), fmt(f"{name}_psnr_hole", 2), fmt(f"{name}_residual_rms", 4)]
            for name, label in (("dps", "DPS"), ("baseline", "baseline"), ("start", "DPS's start"),
                                ("clean_vae", "clean through the VAE (floor)")) if f"{name}_residual_rms" in metrics]
    return pd.DataFrame(rows, columns=TABLE_HEADERS)
