"""The Inverse problems tab: Diffusion Posterior Sampling (Chung et al. 2023) against a baseline, with a live residual plot."""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from studio.errors import RequestError
from studio.events import Notice, Result, Step
from studio.inverse.operators import OPERATORS, Param
from studio.jobs import InverseRequest, inverse
from studio.sampling.schedulers import SAMPLERS
from studio.studio import Studio
from studio.ui.common import ACCELERATOR, api_signature, guarded, status, tile, wire_stop
from studio.ui.form import number_field
from studio.ui.uploads import open_image, read_array, shrink

VIEW = 256  # images are upscaled (nearest) to at least this many pixels for viewing
TABLE_HEADERS = ["method", "PSNR", "SSIM", "hole PSNR", "residual"]
PLOT_COLUMNS = ["step", "value", "series"]


def param_widget(param: Param, visible: bool):
    """A page control for one operator setting, from its registry entry."""
    elem_id = f"inverse-{param.name.replace('_', '-')}"
    if param.choices:
        return gr.Radio(list(param.choices), value=param.default, label=param.label, visible=visible, elem_id=elem_id)
    return gr.Slider(param.minimum, param.maximum, value=param.default, step=param.step, label=param.label,
                     info=param.info or None, visible=visible, elem_id=elem_id)


def operator_params() -> dict[str, Param]:
    """Every setting of every registered operator, once by name (operators share e.g. kernel_size)."""
    params: dict[str, Param] = {}
    for cls in OPERATORS.values():
        for p in cls.params:
            params.setdefault(p.name, p)
    return params


def sample_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.png")) if Path(folder).is_dir() else []


def build(studio: Studio) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events; operators and their settings come from the
    operator registry."""
    start = InverseRequest(image=np.zeros((1, 1, 3), np.uint8))
    first = OPERATORS[start.operator]
    params = operator_params()
    with gr.Row():
        with gr.Column(scale=2):
            editor = gr.ImageEditor(type="filepath", image_mode="RGBA", label=first.hint,
                                    brush=gr.Brush(colors=["#ff00ff"], default_color="#ff00ff", default_size=6),
                                    sources=(), layers=False, transforms=(), height=360,
                                    elem_id="inverse-editor", elem_classes=["pixelated"])
            with gr.Row():
                # Uploads go through a file box, not the editor: the server reads the file (a broken one gets a
                # message) and scales a large one down before the editor's canvas ever sees it (a 6000 px picture
                # drawn into the canvas blocked the page for a minute).
                upload = gr.File(label="Upload an image (large ones are scaled down)", file_types=["image"],
                                 type="filepath", height=130, elem_id="inverse-upload", scale=2)
                with gr.Column(scale=1, min_width=120):
                    sample_btn = gr.Button("Example image", elem_id="inverse-sample")
                    sample_index = gr.Number(value=0, label="Example", info="+1 each click")
            from_measurement = gr.Checkbox(False, label="Input is already the measurement",
                                           info="off: the measurement is made from the image (and scores are computed)")
            operator = gr.Dropdown([(cls.label, name) for name, cls in OPERATORS.items()], value=start.operator,
                                   label="Operator", elem_id="inverse-operator")
            with gr.Row():
                widgets = {name: param_widget(p, any(q.name == name for q in first.params)) for name, p in params.items()}
            with gr.Row():
                sigma = gr.Slider(0, 0.2, value=start.sigma, step=0.005, label="Noise sigma", info="on the [-1, 1] scale")
                zeta = gr.Number(value=0, label="zeta (DPS step size)", info="0 or empty = the per-task default (1)")
                strength = gr.Slider(0.05, 1, value=start.strength, step=0.05, label="Start strength", elem_id="inverse-strength",
                                     info="DPS starts from the classical estimate noised this far; 1 = from pure noise")
            with gr.Row():
                dps_mode = gr.Radio([("Full: through the UNet", "full"), ("Fast: from x0-hat", "fast")],
                                    value=start.dps_mode, label="DPS gradient", elem_id="inverse-dps-mode",
                                    info="fast skips the UNet's backward pass (He et al. 2023)")
                tiny_decoder = gr.Checkbox(start.tiny_decoder, label="Tiny decoder in the gradient",
                                           elem_id="inverse-tiny-decoder",
                                           info="the model's AutoencoderTiny instead of its VAE decoder (cheaper)")
            with gr.Row():
                steps = gr.Number(value=start.steps, label="Steps", info=f"1-{studio.config.limits.max_steps}",
                                  elem_id="inverse-steps")
                sampler = gr.Dropdown(list(SAMPLERS), value=start.sampler, label="Sampler")
                seed = gr.Number(value=0, label="Seed", elem_id="inverse-seed")
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
            gallery = gr.Gallery(label=gallery_label(start.operator, True), columns=4, height=210, object_fit="contain",
                                 elem_id="inverse-gallery", elem_classes=["pixelated"])
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Scores against the clean image", interactive=False,
                                 elem_id="inverse-table")
    specific = list(widgets.values())

    def show_controls(name):
        cls = OPERATORS[name]
        own = {p.name for p in cls.params}
        return [gr.update(visible=n in own) for n in widgets] + [gr.update(label=cls.hint)]

    operator.change(show_controls, operator, specific + [editor], queue=False)

    def next_example(index):
        found = sample_images(studio.config.samples_dir)
        if not found:
            return gr.update(), index, status(f"No example images in {studio.config.samples_dir}; upload an image instead.", "error")
        try:
            k = number_field("example", index or 0, 0) % len(found)
        except RequestError as e:
            return gr.update(), 0, status(str(e), "error")
        return str(found[k % len(found)]), k + 1, status(f"Example {found[k % len(found)].name}.")

    sample_btn.click(next_example, sample_index, [editor, sample_index, progress], queue=False)

    def use_upload(path):
        """The uploaded file into the editor, read once here and scaled down when large (the user is told)."""
        if path is None:
            return gr.update(), gr.update()
        try:
            image, note = shrink(open_image(path, "image"))
        except RequestError as e:
            return gr.update(), status(str(e), "error")
        return {"background": image, "layers": [], "composite": image}, status(note or f"Loaded {Path(path).name}.")

    upload.upload(use_upload, upload, [editor, progress], queue=False)

    def run(request: gr.Request = None, **values):
        residuals: list[dict] = []
        t0 = time.perf_counter()
        op, sigma_v = values["operator"], values["sigma"]

        def events():
            # Building the request here sends bad input to the status line through guarded().
            image, hole = editor_image(values["image"])
            numbers = {name: number_field(name, values[name], getattr(start, name))
                       for name in ("sigma", "strength", "steps", "seed", "guidance_scale", *widgets)}
            zeta_v = number_field("zeta", values["zeta"], 0.0) if values["zeta"] else None
            req = InverseRequest(image=image, operator=op, hole=hole, zeta=zeta_v or None, from_clean=not values["from_measurement"],
                                 model=values["model"] or "", prompt=values["prompt"] or "", sampler=values["sampler"],
                                 dps_mode=values["dps_mode"] or "full", tiny_decoder=bool(values["tiny_decoder"]),
                                 **numbers)
            yield from inverse(studio.manager, req)

        def on_event(event) -> dict:
            if isinstance(event, Notice):
                return {progress: status(event.text)}
            if isinstance(event, Step):
                update = {}
                if event.preview:
                    update[live] = enlarge(tile(event.preview))
                r = event.metrics.get("residual_rms")
                text = f"{'DPS' if event.phase == 'dps' else 'Baseline'} step {event.i}/{event.n}"
                if event.phase == "dps" and r is not None:
                    text += f" · residual {r:.4f}"
                    residuals.append({"step": event.i, "value": r})
                    update[plot] = residual_plot(residuals, float(sigma_v))
                update[progress] = status(text)
                return update
            assert isinstance(event, Result)
            m = event.metrics
            return {live: enlarge(event.images[0]),  # the live box ends on the result, as in every tab
                    gallery: gr.update(value=result_gallery(event), label=gallery_label(op, "clean" in event.named)),
                    table: score_table(m),
                    progress: status(f"Done in {time.perf_counter() - t0:.1f} s · {values['dps_mode'] or 'full'} DPS"
                                     f"{' (tiny decoder)' if values['tiny_decoder'] else ''} · zeta {m['zeta']:.3g} · sigma {m['sigma']:g} · "
                                     f"DPS residual {m['dps_residual_rms']:.4f}", "ok")}

        def on_error(text: str, kind: str) -> dict:
            return {progress: status(text, kind)}

        yield {live: None, gallery: None, table: pd.DataFrame(columns=TABLE_HEADERS),
               plot: pd.DataFrame(columns=PLOT_COLUMNS), progress: status("Starting…")}
        yield from guarded(events(), on_event, on_error, request, studio.manager)

    # The API: /inverse with named parameters (image, operator, sigma, ... and each operator setting by name).
    named = {"image": editor, "from_measurement": from_measurement, "operator": operator, "sigma": sigma, "zeta": zeta,
             "strength": strength, "steps": steps, "sampler": sampler, "seed": seed, "prompt": prompt,
             "guidance_scale": cfg, "model": model, "dps_mode": dps_mode, "tiny_decoder": tiny_decoder, **widgets}
    # Unprocessed (preprocess=False): the editor's files are read by editor_image (a broken one gets a message).
    run_btn.click(api_signature(run, named), None, [live, plot, gallery, table, progress], inputs_kwargs=named,
                  preprocess=False, concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="inverse")
    wire_stop(stop, studio.manager, progress)


def editor_image(value) -> tuple[np.ndarray, np.ndarray | None]:
    """The editor's background as uint8 RGB, and the painted hole (HxW, 1 = missing; alpha > 0 on any layer) or None."""
    background = value.get("background") if isinstance(value, dict) else value
    if background is None:
        raise RequestError("No image: click Example image, or upload an image into the editor.")
    image = read_array(background, "image", "RGBA")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    hole = None
    for layer in (value.get("layers") or []) if isinstance(value, dict) else []:
        layer = read_array(layer, "painted layer", "RGBA")
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
    """Captions stay one word (thumbnails are narrow); the label names the baseline's method, from the registry."""
    return f"Measurement · baseline ({OPERATORS[operator].baseline_label}) · DPS" + (" · clean" if with_clean else "")


def result_gallery(result: Result) -> list[tuple[Image.Image, str]]:
    """The job's named images shown as measurement, baseline, DPS, clean (those present)."""
    named = {**result.named, "DPS": result.images[0]}
    order = [("measurement", "measurement"), ("baseline", "baseline"), ("DPS", "DPS"), ("clean", "clean")]
    return [(enlarge(named[key]), label) for key, label in order if key in named]


def score_table(metrics: dict[str, float]) -> pd.DataFrame:
    """PSNR / SSIM / hole PSNR / residual for DPS and the baseline; n/a where not measured (no clean image, no hole)."""

    def fmt(key: str, digits: int):
        return round(metrics[key], digits) if key in metrics else "n/a"

    rows = [[label, fmt(f"{name}_psnr", 2), fmt(f"{name}_ssim", 3), fmt(f"{name}_psnr_hole", 2), fmt(f"{name}_residual_rms", 4)]
            for name, label in (("dps", "DPS"), ("baseline", "baseline"), ("start", "DPS's start"),
                                ("clean_vae", "clean through the VAE (floor)")) if f"{name}_residual_rms" in metrics]
    return pd.DataFrame(rows, columns=TABLE_HEADERS)
