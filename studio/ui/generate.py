"""The Generate tab: text-to-image with live x0-hat previews, a gallery of saved images, presets, settings from PNGs."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import gradio as gr
from PIL import Image

from studio import metadata
from studio.config import DEFAULT_MODEL
from studio.jobs import Txt2ImgRequest, params_to_request, txt2img
from studio.presets import apply_preset, get_preset
from studio.sampling.schedulers import MODEL_DEFAULT, SAMPLERS
from studio.studio import Studio
from studio.ui import form as forms
from studio.ui.common import ACCELERATOR, api_signature, deferred, job_updates, result_panel, status, wire_stop

NO_MODEL_HELP = (
    "No model found. Put a diffusers model folder (with model_index.json) or a .safetensors checkpoint in "
    "{models}, then press ↻, or type a folder path in the model box."
)


def build(studio: Studio) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    model_default = studio.default_model()
    preset_names = list(studio.presets)
    preset_box = []

    def preset_picker():
        opening = forms.DEFAULT_PRESET if model_default == DEFAULT_MODEL and forms.DEFAULT_PRESET in preset_names else None
        preset_box.append(gr.Dropdown(preset_names, value=opening, label="Preset", scale=2,
                                      info="Fills model, sampler, steps, guidance and size"))

    model, refresh = forms.model_row(studio, "model-box", extra=preset_picker)
    preset = preset_box[0]
    with gr.Row():
        with gr.Column(scale=3):
            prompt, negative = forms.prompt_boxes(studio, "")
            form = forms.settings(studio, "", model, refresh, prompt, negative)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
            with gr.Accordion("Load settings from image", open=False):
                # A file, read by the handler: a broken upload gets a message, not Gradio's bare "Error".
                settings_png = gr.File(label="Drop a PNG made here, in A1111, or another tool", file_types=["image"],
                                       type="filepath", height=130, elem_id="settings-png")
        with gr.Column(scale=2):
            out = result_panel("", status(NO_MODEL_HELP.format(models=studio.config.models_dir)) if model_default is None else "")
    inputs = form.components()

    def run(history: list | None = None, request: gr.Request = None, **values):
        job = deferred(lambda: txt2img(studio.manager, forms.request_from_form(values)))
        yield from job_updates(job, history, out, request=request, manager=studio.manager)

    # The API: /generate with the request's field names as parameters (prompt, steps, guidance_scale, ...).
    generate.click(api_signature(run, form.named()), [out.history], list(out), inputs_kwargs=form.named(), concurrency_id=ACCELERATOR,
                   concurrency_limit=1, api_name="generate")
    wire_stop(stop, studio.manager, out.progress)

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

    preset.change(use_preset, preset, [model, form.sampler, form.steps, form.cfg, form.width, form.height, negative,
                                       out.progress], queue=False)

    def load_settings(path):
        if path is None:
            return [gr.update()] * len(inputs) + [gr.update()]
        try:
            params = metadata.read_png_parameters(path)
        except (ValueError, OSError, Image.DecompressionBombError) as e:
            return [gr.update()] * len(inputs) + [status(f"Could not read settings from {Path(path).name}: {e}", "error")]
        if params is None:
            return [gr.update()] * len(inputs) + [status("That image has no generation settings (no 'parameters' text chunk).", "error")]
        req = params_to_request(params)
        values = asdict(req)
        note = ""
        if req.sampler not in SAMPLERS and req.sampler != MODEL_DEFAULT:
            values["sampler"] = "DPM++ 2M"
            note = f" Its sampler {params.sampler!r} is not offered here; using DPM++ 2M."
        values["embeddings"] = list(values["embeddings"])
        return [values[k] for k in forms.FIELDS] + [status(f"Settings loaded (seed {req.seed}).{note}", "ok")]

    settings_png.upload(load_settings, settings_png, inputs + [out.progress], queue=False, api_visibility="private")
