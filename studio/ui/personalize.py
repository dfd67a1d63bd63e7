"""The Personalize tab: drop 3-20 images, caption them, train a LoRA, a DreamBooth model or a textual-inversion
embedding in the page (progress bar, live loss plot, sample grid as it grows; Stop keeps a checkpoint, Resume goes
on from it); the result is at once in the pickers of the other tabs."""
from __future__ import annotations

import html
import time
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from studio.events import Notice, Result, Samples, TrainStep
from studio.jobs.train import DEFAULTS, TrainRequest, train
from studio.personalize.data import DEFAULT_TEMPLATE, TEMPLATES
from studio.studio import Studio
from studio.ui.common import ACCELERATOR, api_signature, compose_grid, deferred, guarded, status, wire_stop
from studio.ui.form import number_field
from studio.ui.uploads import file_path

METHODS = [("LoRA", "lora"), ("DreamBooth (LoRA)", "dreambooth"), ("DreamBooth (full fine-tuning)", "dreambooth-full"),
           ("Textual inversion", "textual-inversion")]
CAPTION_HEADERS = ["image", "caption"]
PLOT_EVERY_S = 0.5  # the loss plot is redrawn at most this often (fast GPUs make many steps a second)


def progress_bar(step: int, total: int, text: str) -> str:
    """An HTML progress bar with a line of text under it."""
    return (f'<progress value="{step}" max="{max(total, 1)}" style="width:100%"></progress>'
            f'<div class="status-info">{html.escape(text)}</div>')


def caption_rows(files, template: str) -> list[list[str]]:
    """One row per uploaded image: its file name and the template (edit the captions in the table)."""
    return [[Path(f).name, template or DEFAULT_TEMPLATE] for f in (files or [])]


FORM_FIELDS = ("images", "captions", "method", "token", "class_word", "name", "model", "steps", "batch", "lr", "token_lr",
               "rank", "text_encoder_lora", "conv_lora", "prior", "prior_weight", "class_images", "word_dropout", "flip",
               "seed", "sample_every", "sample_prompts", "minutes", "class_prompts", "ema_decay", "prior_target")
PRIOR_TARGET_LABELS = {"the base model's prediction (distillation)": "base", "the noise (DreamBooth's paper)": "noise"}


def request_from_form(images, captions, method: str, token: str, class_word: str, name: str, model: str, steps,
                      batch, lr, token_lr, rank, text_encoder_lora: bool, conv_lora: bool, prior: bool, prior_weight,
                      class_images, word_dropout, flip: bool, seed, sample_every, sample_prompts: str, minutes,
                      class_prompts: str = "", ema_decay=0.0, prior_target: str = "", resume: bool = False) -> TrainRequest:
    """The form's values as a TrainRequest; a caption left empty takes the template's."""
    table = captions.values.tolist() if isinstance(captions, pd.DataFrame) else (captions or [])
    by_name = {str(row[0]): str(row[1]).strip() for row in table if len(row) >= 2}
    files = [file_path(f) for f in (images or [])]
    images = tuple((Path(f).name, Path(f), by_name.get(Path(f).name) or None) for f in files)
    full = method == "dreambooth-full"
    d = TrainRequest()
    prompts = tuple(p.strip() for p in (sample_prompts or "").split("\n") if p.strip())
    return TrainRequest(
        method="dreambooth" if full else method, full=full, images=images, token=token or "", class_word=class_word or "",
        name=name or "", model=model or d.model, steps=number_field("steps", steps, d.steps),
        batch=number_field("batch", batch, d.batch), lr=number_field("lr", lr, d.lr),
        token_lr=number_field("token_lr", token_lr, d.token_lr), rank=number_field("rank", rank, d.rank),
        text_encoder_lora=bool(text_encoder_lora), conv_lora=bool(conv_lora), prior=bool(prior),
        prior_weight=number_field("prior_weight", prior_weight, d.prior_weight),
        class_images=number_field("class_images", class_images, d.class_images),
        word_dropout=number_field("word_dropout", word_dropout, d.word_dropout), flip=bool(flip),
        seed=number_field("seed", seed, d.seed), sample_every=number_field("sample_every", sample_every, d.sample_every),
        sample_prompts=prompts, minutes=number_field("minutes", minutes, d.minutes), resume=resume,
        class_prompt=class_prompts or "", ema_decay=number_field("ema_decay", ema_decay, d.ema_decay),
        prior_target=PRIOR_TARGET_LABELS.get(prior_target, prior_target or d.prior_target), command="the Personalize tab")


def build(studio: Studio) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    lora_defaults = DEFAULTS["lora"]
    with gr.Row():
        with gr.Column(scale=2):
            files = gr.File(label="Images of the concept (3-20; resized and centre-cropped to the model's size)",
                            file_count="multiple", file_types=["image"], type="filepath", elem_id="pz-images")
            template = gr.Dropdown(list(TEMPLATES), value=DEFAULT_TEMPLATE, allow_custom_value=True,
                                   label="Caption template", info="<tok>: the token, <class>: the class word",
                                   elem_id="pz-template")
            captions = gr.Dataframe(headers=CAPTION_HEADERS, datatype=["str", "str"], col_count=(2, "fixed"),
                                    interactive=True, label="Captions (one per image; edit freely)", elem_id="pz-captions")
            method = gr.Radio(METHODS, value="lora", label="Method", elem_id="pz-method")
            with gr.Row():
                token = gr.Textbox(label="Token", value="<heart>", info="a new word, e.g. <heart>", elem_id="pz-token")
                class_word = gr.Textbox(label="Class word", value="", info="what it is (e.g. dog, diamond)",
                                        elem_id="pz-class")
                name = gr.Textbox(label="Name", value="", info="of the result (default: the token's letters)",
                                  elem_id="pz-name")
            model = gr.Dropdown(studio.model_choices(), value=studio.default_model(), label="Base model",
                                allow_custom_value=True, elem_id="pz-model")
            with gr.Accordion("Settings", open=False):
                with gr.Row():
                    steps = gr.Number(value=lora_defaults["steps"], label="Steps", precision=0, elem_id="pz-steps")
                    batch = gr.Number(value=TrainRequest.batch, label="Batch", precision=0)
                    minutes = gr.Number(value=0, label="Time budget (min)", info="0: none")
                with gr.Row():
                    lr = gr.Number(value=0, label="Learning rate", info="0: the method's default")
                    token_lr = gr.Number(value=0, label="Token learning rate", info="0: the method's default")
                    rank = gr.Number(value=TrainRequest.rank, label="LoRA rank", precision=0)
                with gr.Row():
                    text_encoder_lora = gr.Checkbox(label="LoRA on the text encoder too")
                    conv_lora = gr.Checkbox(value=TrainRequest.conv_lora, label="LoRA on the convolutions too")
                    flip = gr.Checkbox(value=True, label="Mirror-image augmentation")
                with gr.Row():
                    prior = gr.Checkbox(label="Prior preservation (class images from the base model)")
                    prior_weight = gr.Number(value=1.0, label="Prior loss weight")
                    class_images = gr.Number(value=TrainRequest.class_images, label="Class images", precision=0)
                    prior_target = gr.Dropdown(list(PRIOR_TARGET_LABELS), value=next(iter(PRIOR_TARGET_LABELS)),
                                               label="Class images' loss pulls toward",
                                               info="distillation keeps plain prompts better (assets/personalize)")
                class_prompts = gr.Textbox(
                    value=TrainRequest.class_prompt, lines=2, elem_id="pz-class-prompts",
                    label="Class prompts (prior preservation; one a line, <class> is the class word)",
                    info="Class images cycle through them: list what the model should keep drawing as before")
                with gr.Row():
                    word_dropout = gr.Number(value=TrainRequest.word_dropout, label="Caption word dropout",
                                             info="0-1; words other than the token")
                    seed = gr.Number(value=0, label="Seed", precision=0)
                    sample_every = gr.Number(value=0, label="Samples every N steps", info="0: four times", precision=0)
                    ema_decay = gr.Number(value=TrainRequest.ema_decay, label="Weight average decay",
                                          info="e.g. 0.99: save a moving average of the weights; 0: the last step's")
                sample_prompts = gr.Textbox(label="Sample prompts (one a line; empty: 'a <tok>' and the first caption)",
                                            lines=2, elem_id="pz-sample-prompts")
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", elem_id="pz-start")
                stop = gr.Button("Stop", variant="stop", elem_id="pz-stop")
                resume_btn = gr.Button("Resume", elem_id="pz-resume")
        with gr.Column(scale=3):
            bar = gr.HTML(progress_bar(0, 1, "Drop 3-20 images, pick a token, press Start."), elem_id="pz-progress")
            progress = gr.Markdown("", elem_id="pz-status")
            plot = gr.LinePlot(pd.DataFrame(columns=["step", "loss"]), x="step", y="loss", label="Training loss",
                               x_title="step", y_title="loss", elem_id="pz-loss")
            # The label above the grid, not floating over its column headers.
            gr.Markdown("**Samples** (fixed prompts and seeds) as training goes")
            grid = gr.Image(show_label=False, type="pil", interactive=False, elem_id="pz-samples",
                            elem_classes=["pixelated"])
            result = gr.Markdown("", elem_id="pz-result")

    files.change(caption_rows, [files, template], captions, queue=False)
    template.change(caption_rows, [files, template], captions, queue=False)
    # The API's parameter names: request_from_form's (images, captions, method, token, class_word, ...).
    named = dict(zip(FORM_FIELDS, [files, captions, method, token, class_word, name, model, steps, batch, lr, token_lr,
                                   rank, text_encoder_lora, conv_lora, prior, prior_weight, class_images, word_dropout,
                                   flip, seed, sample_every, sample_prompts, minutes, class_prompts, ema_decay,
                                   prior_target]))
    outputs = [bar, progress, plot, grid, result]

    def run(resume: bool, values: dict, request: gr.Request | None):
        losses: list[list[float]] = []
        cells: dict[tuple[int, int], Image.Image] = {}
        labels = {"rows": [], "cols": []}
        shown = {"at": 0.0}

        def on_event(event) -> dict:
            if isinstance(event, TrainStep):
                losses.append([event.step, event.loss])
                text = (f"Step {event.step}/{event.total} · loss {event.loss:.4f} · lr {event.lr:.1e} · "
                        f"{event.it_per_s:.2f} it/s · ETA {event.eta_s:.0f} s")
                update = {bar: progress_bar(event.step, event.total, text)}
                if time.monotonic() - shown["at"] >= PLOT_EVERY_S or event.step == event.total:
                    shown["at"] = time.monotonic()
                    update[plot] = pd.DataFrame(losses, columns=["step", "loss"])
                return update
            if isinstance(event, Samples):
                labels["rows"] = [f"{p} · seed {s}" for p, s in zip(event.prompts, event.seeds)]
                labels["cols"].append(f"step {event.step}")
                for r, image in enumerate(event.images):
                    cells[(r, len(labels["cols"]) - 1)] = image
                return {grid: compose_grid(cells, labels["rows"], labels["cols"])}
            if isinstance(event, Notice):
                return {progress: status(event.text)}
            assert isinstance(event, Result)
            m = event.metrics
            return {progress: status(f"Done: {int(m['steps'])} steps in {m['seconds']:.0f} s, final loss "
                                     f"{m['final_loss']:.4f}.", "ok"),
                    plot: pd.DataFrame(losses, columns=["step", "loss"]),
                    result: "Saved: " + ", ".join(f"`{p}`" for p in event.paths) +
                    ". It is in the LoRA / embedding / model pickers now (press ↻ there if the list was open)."}

        # A new run clears the last one's outputs: its samples, loss curve and "Saved" line would pass for this run's.
        yield {progress: status("Resuming…" if resume else "Starting…"), bar: progress_bar(0, 1, ""),
               plot: pd.DataFrame(columns=["step", "loss"]), grid: None, result: ""}
        events = deferred(lambda: train(studio.manager, request_from_form(**values, resume=resume)))
        yield from guarded(events, on_event, lambda text, kind: {progress: status(text, kind)}, request, studio.manager)

    def start_clicked(request: gr.Request = None, **values):
        yield from run(False, values, request)

    def resume_clicked(request: gr.Request = None, **values):
        yield from run(True, values, request)

    start_btn.click(api_signature(start_clicked, named), None, outputs, inputs_kwargs=named, concurrency_id=ACCELERATOR,
                    concurrency_limit=1, api_name="personalize_start")
    resume_btn.click(api_signature(resume_clicked, named), None, outputs, inputs_kwargs=named,
                     concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="personalize_resume")
    wire_stop(stop, studio.manager, progress)
