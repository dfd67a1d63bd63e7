"""The generation form shared by the Generate and ControlNet tabs: model, prompt, sampler, steps, CFG, size, seed,
batch, previews and the guidance accordion. Its opening values come from the default preset, in both tabs."""
from __future__ import annotations

import math
from dataclasses import dataclass

import gradio as gr

from studio.config import DEFAULT_MODEL
from studio.errors import RequestError
from studio.jobs import Txt2ImgRequest
from studio.personalize import adapters
from studio.presets import apply_preset
from studio.sampling.schedulers import MODEL_DEFAULT, SAMPLERS
from studio.studio import Studio

DEFAULT_PRESET = "shapes-fast"
# The sampler dropdown: first the model's own scheduler (from its folder), then the registry by name.
SAMPLER_CHOICES = [("Model default", MODEL_DEFAULT), *((name, name) for name in SAMPLERS)]
# Request fields the form edits, in the order of `GenerationForm.components()`.
FIELDS = ("model", "prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "guidance_rescale",
          "seed", "width", "height", "batch_size", "preview_every",
          "cfg_start", "cfg_end", "classifier_scale", "classifier_target", "text_guidance_scale", "shift", "embeddings")


def opening_request(studio: Studio) -> Txt2ImgRequest:
    """The form's first values: the request defaults (sampler: the model's own), with the fast preset when the embedded
    suite is the default model."""
    start = Txt2ImgRequest()
    if studio.default_model() == DEFAULT_MODEL and DEFAULT_PRESET in studio.presets:
        start = apply_preset(start, studio.presets[DEFAULT_PRESET])
    return start


@dataclass
class GenerationForm:
    model: gr.Dropdown
    refresh: gr.Button
    prompt: gr.Textbox
    negative: gr.Textbox
    sampler: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Slider
    rescale: gr.Slider
    seed: gr.Number
    width: gr.Number
    height: gr.Number
    batch: gr.Slider
    preview_every: gr.Slider
    cfg_start: gr.Slider
    cfg_end: gr.Slider
    classifier_scale: gr.Slider
    classifier_target: gr.Textbox
    text_scale: gr.Slider
    shift: gr.Number
    embeddings: gr.Dropdown  # textual-inversion embeddings picked (their tokens then work in the prompt)

    def components(self) -> list:
        """The inputs, in FIELDS order."""
        return [self.model, self.prompt, self.negative, self.sampler, self.steps, self.cfg, self.rescale, self.seed,
                self.width, self.height, self.batch, self.preview_every, self.cfg_start, self.cfg_end,
                self.classifier_scale, self.classifier_target, self.text_scale, self.shift, self.embeddings]

    def named(self) -> dict[str, gr.components.Component]:
        """The inputs by request field: the API's parameter names (`prompt`, `steps`, `guidance_scale`, ...)."""
        return dict(zip(FIELDS, self.components()))


def model_row(studio: Studio, elem_id: str, label: str = "Model", extra=None) -> tuple[gr.Dropdown, gr.Button]:
    """The model picker (pick, or type a folder, a file or a hub id) and its refresh button, in a row."""
    with gr.Row():
        model = gr.Dropdown(studio.model_choices(), value=studio.default_model(), label=label, allow_custom_value=True,
                            elem_id=elem_id, info="Pick one, or type a diffusers folder, a .safetensors file or a hub id", scale=4)
        refresh = gr.Button("↻", scale=0, min_width=40)
        if extra is not None:
            extra()
    refresh.click(lambda: gr.update(choices=studio.model_choices()), None, model, queue=False)
    return model, refresh


def prompt_boxes(studio: Studio, prefix: str) -> tuple[gr.Textbox, gr.Textbox]:
    prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a big red star on the left", elem_id=f"{prefix}prompt-box")
    negative = gr.Textbox(label="Negative prompt", lines=1, value=opening_request(studio).negative_prompt,
                          elem_id=f"{prefix}negative-box")
    return prompt, negative


def settings(studio: Studio, prefix: str, model: gr.Dropdown, refresh: gr.Button, prompt: gr.Textbox,
             negative: gr.Textbox) -> GenerationForm:
    """Sampler, steps, CFG, size, seed, batch, previews and guidance, laid out in the current column."""
    start = opening_request(studio)
    limits = studio.config.limits
    with gr.Row():
        sampler = gr.Dropdown(SAMPLER_CHOICES, value=start.sampler, label="Sampler", elem_id=f"{prefix}sampler-box")
        # Number boxes, not sliders, for values a user types: out-of-range ones reach the checks and get their
        # message (a slider clamps silently: Steps 0 ran 1 step).
        steps = gr.Number(value=start.steps, label="Steps", info=f"1-{limits.max_steps}", elem_id=f"{prefix}steps-box",
                          min_width=110)
        shift = gr.Number(value=start.shift, label="Shift", info="flow models: 0 = the model's own",
                          elem_id=f"{prefix}shift-box", min_width=110)
    with gr.Row():
        cfg = gr.Slider(0, 20, value=start.guidance_scale, step=0.5, label="Guidance scale (CFG)", elem_id=f"{prefix}cfg-slider")
        rescale = gr.Slider(0, 1, value=start.guidance_rescale, step=0.05, label="CFG rescale", info="0 = off; 0.7 is usual")
    with gr.Row():
        width = gr.Number(value=start.width, label="Width", info="0 = model's native size")
        height = gr.Number(value=start.height, label="Height", info="0 = model's native size")
        batch = gr.Slider(1, limits.max_batch, value=start.batch_size, step=1, label="Batch size")
    with gr.Row():
        seed = gr.Number(value=start.seed, label="Seed", info="-1 = random", elem_id=f"{prefix}seed-box")
        preview_every = gr.Slider(0, 20, value=start.preview_every, step=1, label="Preview every N steps", info="0 = off")
    embeddings = lora_row(studio, prefix, refresh, prompt)
    with gr.Accordion("Guidance: CFG interval, classifier guidance, text guidance", open=False):
        with gr.Row():
            cfg_start = gr.Slider(0, 1, value=start.cfg_start, step=0.05, label="CFG from", info="fraction of the run")
            cfg_end = gr.Slider(0, 1, value=start.cfg_end, step=0.05, label="CFG until", info="outside: prompt only")
        with gr.Row():
            classifier_scale = gr.Slider(0, 20, value=start.classifier_scale, step=0.5, label="Classifier guidance scale",
                                         info="needs a noise-aware classifier (the embedded suite has one; 8 is a good start)",
                                         elem_id=f"{prefix}classifier-scale")
            classifier_target = gr.Textbox(label="Classifier target", placeholder="e.g. red star, two blue squares, "
                                           "a person waving; empty: the prompt", elem_id=f"{prefix}classifier-target")
        text_scale = gr.Slider(0, 20, value=start.text_guidance_scale, step=0.5, label="Text guidance scale",
                               info="gradient of a judge of image and prompt on x0-hat: the model's own judge, "
                                    "or CLIP (--clip-model) for other models")
    return GenerationForm(model, refresh, prompt, negative, sampler, steps, cfg, rescale, seed, width, height, batch,
                          preview_every, cfg_start, cfg_end, classifier_scale, classifier_target, text_scale, shift,
                          embeddings)


def lora_row(studio: Studio, prefix: str, refresh: gr.Button, prompt: gr.Textbox) -> gr.Dropdown:
    """LoRAs as A1111 adds them (picking one puts `<lora:name:1>` in the prompt, where its weight is edited; several
    may be used), and the textual-inversion embeddings to load; both lists refresh with the model list (↻)."""
    with gr.Row():
        lora = gr.Dropdown(adapters.list_loras(studio.config), value=None, label="Add a LoRA", allow_custom_value=False,
                           info="puts <lora:name:1> in the prompt; edit the weight there", elem_id=f"{prefix}lora-pick")
        embeddings = gr.Dropdown(adapters.list_embeddings(studio.config), value=[], multiselect=True,
                                 label="Embeddings (textual inversion)", info="their tokens then work in the prompt",
                                 elem_id=f"{prefix}embeddings")

    def add_lora(name, text):
        if not name:
            return gr.update(), gr.update()
        return f"{(text or '').rstrip()} <lora:{name}:1>".strip(), None

    lora.input(add_lora, [lora, prompt], [prompt, lora], queue=False)
    refresh.click(lambda: (gr.update(choices=adapters.list_loras(studio.config)),
                           gr.update(choices=adapters.list_embeddings(studio.config))), None, [lora, embeddings], queue=False)
    return embeddings


def request_from_form(values: dict) -> Txt2ImgRequest:
    """The form's values by field as a request; an emptied box (None) means the field's default. Numbers are checked
    here (NaN, infinities, fractions where a whole number is wanted) so that each gets a message naming its field."""
    defaults = Txt2ImgRequest()
    fields = {k: getattr(defaults, k) if v is None else number_field(k, v, getattr(defaults, k)) for k, v in values.items()}
    if "embeddings" in fields:
        fields["embeddings"] = tuple(fields["embeddings"] or ())
    return Txt2ImgRequest(**fields)


def number_field(name: str, value, default):
    """A form value as the type of the request field's default: finite, and whole where the field is int."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return value
    label = name.replace("_", " ").capitalize()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{label} must be a number (got {value!r}).") from None
    if not math.isfinite(number):
        raise RequestError(f"{label} must be a finite number (got {value!r}).")
    if isinstance(default, int):
        if not number.is_integer():
            raise RequestError(f"{label} must be a whole number (got {value!r}).")
        return int(value) if isinstance(value, int) else int(number)
    return number
