"""The Generate tab: text-to-image with live x0-hat previews, a gallery of saved images, presets, settings from PNGs."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from studio import jobs, metadata
from studio.config import DEFAULT_MODEL
from studio.events import Notice, Result, Step
from studio.jobs import Txt2ImgRequest
from studio.presets import apply_preset, get_preset
from studio.sampling.schedulers import SAMPLERS
from studio.studio import Studio
from studio.ui.common import ACCELERATOR, guarded, status, tile

DEFAULT_PRESET = "shapes-fast"
NO_MODEL_HELP = (
    "No model found. Put a diffusers model folder (with model_index.json) or a .safetensors checkpoint in "
    "{models}, then press ↻, or type a folder path in the model box."
)
# Request fields the form edits, in the order of the form's components.
FIELDS = ("model", "prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "guidance_rescale",
          "seed", "width", "height", "batch_size", "preview_every",
          "cfg_start", "cfg_end", "classifier_scale", "classifier_target", "text_guidance_scale")


def build(studio: Studio) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    model_default = studio.default_model()
    # The embedded suite's fast preset sets the opening values when that suite is the default model.
    start = Txt2ImgRequest()
    if model_default == DEFAULT_MODEL and DEFAULT_PRESET in studio.presets:
        start = apply_preset(start, studio.presets[DEFAULT_PRESET])
    preset_names = list(studio.presets)
    with gr.Row():
        model = gr.Dropdown(studio.model_choices(), value=model_default, label="Model", allow_custom_value=True, elem_id="model-box",
                            info="Pick one, or type a diffusers folder, a .safetensors file or a hub id", scale=4)
        refresh = gr.Button("↻", scale=0, min_width=40)
        preset = gr.Dropdown(preset_names, value=DEFAULT_PRESET if start.model == DEFAULT_MODEL and DEFAULT_PRESET in preset_names else None, label="Preset", scale=2,
                             info="Fills model, sampler, steps, guidance and size")
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a big red star on the left", elem_id="prompt-box")
            negative = gr.Textbox(label="Negative prompt", lines=1, value=start.negative_prompt, elem_id="negative-box")
            with gr.Row():
                sampler = gr.Dropdown(list(SAMPLERS), value=start.sampler, label="Sampler", elem_id="sampler-box")
                steps = gr.Slider(1, studio.config.limits.max_steps, value=start.steps, step=1, label="Steps", elem_id="steps-slider")
            with gr.Row():
                cfg = gr.Slider(0, 20, value=start.guidance_scale, step=0.5, label="Guidance scale (CFG)")
                rescale = gr.Slider(0, 1, value=0.0, step=0.05, label="CFG rescale", info="0 = off; 0.7 is usual")
            with gr.Row():
                width = gr.Number(value=start.width, precision=0, label="Width", info="0 = model's native size")
                height = gr.Number(value=start.height, precision=0, label="Height", info="0 = model's native size")
                batch = gr.Slider(1, studio.config.limits.max_batch, value=1, step=1, label="Batch size")
            with gr.Row():
                seed = gr.Number(value=-1, precision=0, label="Seed", info="-1 = random", elem_id="seed-box")
                preview_every = gr.Slider(0, 20, value=1, step=1, label="Preview every N steps", info="0 = off")
            with gr.Accordion("Guidance: CFG interval, classifier guidance, text guidance", open=False):
                with gr.Row():
                    cfg_start = gr.Slider(0, 1, value=0.0, step=0.05, label="CFG from", info="fraction of the run")
                    cfg_end = gr.Slider(0, 1, value=1.0, step=0.05, label="CFG until", info="outside: prompt only")
                with gr.Row():
                    classifier_scale = gr.Slider(0, 20, value=0.0, step=0.5, label="Classifier guidance scale",
                                                 info="needs a noise-aware classifier (the embedded suite has one; 8 is a good start)",
                                                 elem_id="classifier-scale")
                    classifier_target = gr.Textbox(label="Classifier target", placeholder="e.g. red star, two blue squares, "
                                                   "a person waving; empty: the prompt", elem_id="classifier-target")
                text_scale = gr.Slider(0, 20, value=0.0, step=0.5, label="Text guidance scale",
                                       info="gradient of a judge of image and prompt on x0-hat: the suite's evaluator, "
                                            "or CLIP (--clip-model) for other models")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
            with gr.Accordion("Load settings from image", open=False):
                settings_png = gr.Image(type="pil", label="Drop a PNG made here, in A1111, or another tool", sources=["upload"],
                                        elem_id="settings-png")
        with gr.Column(scale=2):
            live = gr.Image(label="Live preview (x0-hat)", type="pil", interactive=False, height=320,
                            elem_id="live-image", elem_classes=["pixelated"])
            progress = gr.Markdown(status(NO_MODEL_HELP.format(models=studio.config.models_dir)) if model_default is None else "",
                                   elem_id="status-line")
            used_seed = gr.Number(label="Seed used", interactive=False, precision=0)
            gallery = gr.Gallery(label="Finished images (saved with their settings)", columns=4, height=260, object_fit="contain",
                                 elem_id="gallery", elem_classes=["pixelated"])
            infotext = gr.Textbox(label="Settings of the last image", lines=3, interactive=False)
    history = gr.State([])
    form = [model, prompt, negative, sampler, steps, cfg, rescale, seed, width, height, batch, preview_every,
            cfg_start, cfg_end, classifier_scale, classifier_target, text_scale]

    out = Outputs(live, progress, gallery, history, used_seed, infotext)

    def run(*values):
        *form_values, past = values
        yield from job_updates(jobs.txt2img(studio.manager, request_from_form(form_values)), past, out)

    generate.click(run, form + [history], [live, progress, gallery, history, used_seed, infotext],
                   concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="generate")
    stop.click(studio.manager.request_stop, None, None, queue=False)

    def refresh_models():
        choices = studio.model_choices()
        return gr.update(choices=choices)

    refresh.click(refresh_models, None, model, queue=False)

    def use_preset(name):
        if not name:
            return [gr.update()] * 8
        try:
            p = get_preset(studio.presets, name)
        except Exception as e:  # noqa: BLE001
            return [gr.update()] * 7 + [status(str(e), "error")]
        r = apply_preset(Txt2ImgRequest(), p)
        return [r.model, r.sampler, r.steps, r.guidance_scale, r.width, r.height, r.negative_prompt,
                status(f"Preset {name}: {p.description}")]

    preset.change(use_preset, preset, [model, sampler, steps, cfg, width, height, negative, progress], queue=False)

    def load_settings(image):
        if image is None:
            return [gr.update()] * len(form) + [gr.update()]
        try:
            params = metadata.read_png_parameters(image)
        except ValueError as e:
            return [gr.update()] * len(form) + [status(str(e), "error")]
        if params is None:
            return [gr.update()] * len(form) + [status("That image has no generation settings (no 'parameters' text chunk).", "error")]
        req = jobs.params_to_request(params)
        values = asdict(req)
        note = ""
        if req.sampler not in SAMPLERS:
            values["sampler"] = "DPM++ 2M"
            note = f" Its sampler {params.sampler!r} is not offered here; using DPM++ 2M."
        return [values[k] for k in FIELDS] + [status(f"Settings loaded (seed {req.seed}).{note}", "ok")]

    settings_png.upload(load_settings, settings_png, form + [progress], queue=False)


class Outputs(NamedTuple):
    """The widgets a text-to-image job streams into (Generate and ControlNet tabs)."""

    live: gr.Image
    progress: gr.Markdown
    gallery: gr.Gallery
    history: gr.State
    used_seed: gr.Number
    infotext: gr.Textbox


def job_updates(events, past: list, out: Outputs):
    """A txt2img job's events as widget updates: live x0-hat, step/it/s line, then the gallery; errors as messages."""
    shown = list(past)

    def on_event(event) -> dict:
        if isinstance(event, Step):
            text = f"Step {event.i}/{event.n} · {event.metrics.get('it_per_s', 0):.1f} it/s"
            if "guidance_log_prob" in event.metrics:
                text += f" · guidance log p {event.metrics['guidance_log_prob']:.2f}"
            update = {out.progress: status(text)}
            if event.preview:
                update[out.live] = tile(event.preview)
            return update
        if isinstance(event, Notice):
            return {out.progress: status(event.text)}
        assert isinstance(event, Result)
        items = [(str(p), f"seed {s}") for p, s in zip(event.paths, event.seeds)] or [(im, f"seed {s}") for im, s in zip(event.images, event.seeds)]
        shown[:0] = items
        where = f" · saved to {Path(event.paths[0]).parent}" if event.paths else ""
        return {out.live: tile(event.images), out.gallery: shown, out.history: shown, out.used_seed: event.seeds[0],
                out.infotext: event.infotexts[0],
                out.progress: status(f"Done: {len(event.images)} image(s) in {event.metrics['seconds']:.1f} s{where}", "ok")}

    def on_error(text: str, kind: str) -> dict:
        return {out.progress: status(text, kind)}

    yield from guarded(events, on_event, on_error)


def request_from_form(values) -> Txt2ImgRequest:
    """The form's values (in FIELDS order) as a request; an emptied box (None) means the field's default."""
    defaults = Txt2ImgRequest()
    return Txt2ImgRequest(**{k: getattr(defaults, k) if v is None else _plain(v) for k, v in zip(FIELDS, values)})


def _plain(value):
    """Gradio numbers arrive as float; the request wants ints where the field is int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
