"""The personalization job: TrainRequest in, events out (Notice..., TrainStep per step, Samples, Result). LoRA,
DreamBooth (LoRA or full fine-tuning, with or without prior preservation) and textual inversion, through one loop
(studio.personalize.trainer); results go where the pickers look, each with a model card."""
from __future__ import annotations

import copy
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from studio.config import DEFAULT_MODEL, StudioConfig
from studio.errors import RequestError
from studio.events import Notice, Result, Samples, TrainStep
from studio.manager import LoadedModel, ModelManager
from studio.personalize import card as cards
from studio.personalize import data as datasets
from studio.personalize import lora, tokens, trainer
from studio.training.common import hardware, latest_step

METHODS = ("lora", "dreambooth", "textual-inversion")
# Tuned on the embedded suite (see assets/personalize/README.md); LoRA's rank, alpha and Gaussian init, DreamBooth's
# prior weight and the textual-inversion recipe (a new token initialised from the class word) as diffusers' examples.
DEFAULTS = {
    "lora": {"steps": 500, "lr": 1e-3, "token_lr": 5e-3},
    "dreambooth": {"steps": 300, "lr": 1e-3, "token_lr": 5e-3},
    "dreambooth-full": {"steps": 400, "lr": 1e-4, "token_lr": 5e-3},
    "textual-inversion": {"steps": 400, "lr": 0.0, "token_lr": 5e-3},
}
PRIOR_TARGETS = ("base", "noise")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_STEPS = 20_000


@dataclass
class TrainRequest:
    method: str = "lora"
    images: tuple = ()  # (name, PIL image or path, caption or None) per image; or a folder in images_dir
    images_dir: Path | None = None
    token: str = ""
    class_word: str = ""
    template: str = datasets.DEFAULT_TEMPLATE  # caption of images that have none of their own
    name: str = ""  # the result's name (default: the token's letters)
    model: str = DEFAULT_MODEL
    steps: int = 0  # 0: the method's default
    batch: int = 4
    lr: float = 0.0  # 0: the method's default
    token_lr: float = 0.0
    rank: int = 4
    alpha: float = 0.0  # 0: the rank (scale 1)
    text_encoder_lora: bool = False
    conv_lora: bool = True  # the suite could not learn a new shape with attention LoRA alone (README of assets/personalize)
    full: bool = False  # DreamBooth: fine-tune the whole UNet (a new model folder) instead of a LoRA
    prior: bool = False
    prior_weight: float = 1.0
    # What the class images' loss pulls toward: "base", the base model's own prediction on the same noised class image
    # (a distillation loss, zero at the start; kept "a green square" at 97% on the suite where "noise" kept 74-79%,
    # assets/personalize/README.md), or "noise", DreamBooth's own (the noise that was added)
    prior_target: str = "base"
    class_images: int = 50
    class_prompt: str = "a <class>"
    vectors: int = 1
    flip: bool = True
    seed: int = 0
    sample_every: int = 0  # 0: four times in the run
    sample_prompts: tuple[str, ...] = ()  # default: "a <tok>" and the first caption
    sample_seeds: tuple[int, ...] = (0, 1)
    checkpoint_every: int = 50
    minutes: float = 0.0  # wall-time cap (0: none)
    word_dropout: float = 0.5  # caption words but the token left out at random, so the token is not tied to them
    ema_decay: float = 0.0  # the result is a moving average of the weights (0: the last step's)
    resume: bool = False
    out: Path | None = None  # default: models/lora/<name>, models/embeddings/<name>, models/<name> (DreamBooth full)
    command: str = ""  # how it was started, for the model card

    @property
    def kind(self) -> str:
        """What the result is: "lora", "embedding" or "model"."""
        if self.method == "textual-inversion":
            return "embedding"
        return "model" if self.method == "dreambooth" and self.full else "lora"

    @property
    def recipe(self) -> str:
        return "dreambooth-full" if self.kind == "model" else self.method


def validate(req: TrainRequest) -> TrainRequest:
    """Refuse what cannot run, fill in the method's defaults; the images and token are checked against the model later."""
    if req.method not in METHODS:
        raise RequestError(f"Unknown method {req.method!r}; choose one of {', '.join(METHODS)}.")
    if req.full and req.method != "dreambooth":
        raise RequestError("Full fine-tuning is a DreamBooth option; LoRA and textual inversion train small parts.")
    defaults = DEFAULTS[req.recipe]
    req = replace(req, steps=req.steps or defaults["steps"], lr=req.lr or defaults["lr"],
                  token_lr=req.token_lr or defaults["token_lr"], alpha=req.alpha or float(req.rank))
    for what, value, low, high in (("Steps", req.steps, 1, MAX_STEPS), ("Batch", req.batch, 1, 64),
                                   ("Rank", req.rank, 1, 256), ("Vectors", req.vectors, 1, 16),
                                   ("Class images", req.class_images, 1, 1000)):
        if not low <= value <= high:
            raise RequestError(f"{what} must be between {low} and {high} (got {value}).")
    if req.lr < 0 or req.token_lr < 0 or req.prior_weight < 0 or req.minutes < 0:
        raise RequestError("Learning rates, the prior weight and the time budget cannot be negative.")
    if not 0 <= req.ema_decay < 1:
        raise RequestError(f"The weight average's decay must be at least 0 and below 1 (got {req.ema_decay}).")
    if req.prior_target not in PRIOR_TARGETS:
        raise RequestError(f"The prior's target is one of {', '.join(PRIOR_TARGETS)} (got {req.prior_target!r}).")
    if req.prior and not req.class_word.strip():
        raise RequestError("Prior preservation needs a class word (e.g. 'dog' for a dog, 'diamond' for a pointed "
                           "shape): the base model draws class images from it.")
    name = req.name.strip() or re.sub(r"[^A-Za-z0-9_.-]", "", req.token)
    if not NAME.match(name or ""):
        raise RequestError(f"The result's name {name!r} must be letters, digits, '-', '_' or '.', starting with a letter "
                           "or digit (it names a folder and the <lora:name:weight> tag).")
    return replace(req, name=name)


def result_folder(config: StudioConfig, req: TrainRequest) -> Path:
    if req.out is not None:
        return Path(req.out)
    base = Path(config.models_dir)
    return {"lora": base / "lora", "embedding": base / "embeddings", "model": base}[req.kind] / req.name


def work_folder(out: Path) -> Path:
    """Checkpoints, loss log and class images: beside the result, in a hidden folder no picker lists."""
    return out.parent / ".training" / out.name


# Settings whose default changed after runs began to record them: what a run that did not record them trained with.
BEFORE_RECORDED = {"prior_target": "noise"}
ONLY_WITH = {"prior_target": "prior"}  # a setting that means nothing unless another is on
SETTINGS_KEYS = ("method", "token", "class_word", "model", "batch", "rank", "alpha", "text_encoder_lora", "conv_lora",
                 "full", "prior", "vectors", "seed", "flip", "ema_decay", "prior_target")


def train(manager: ModelManager, req: TrainRequest) -> Iterator[Notice | TrainStep | Samples | Result]:
    """Train, yielding progress; the result and its model card are saved at the end (and on a time-budget end)."""
    from accelerate import Accelerator  # only where a run starts

    # 1. Check inputs.
    req = validate(req)
    out = result_folder(manager.config, req)
    work = work_folder(out)
    with manager.session():
        model = manager.get(req.model)
        pipe = _check_model(model)
        size = model.default_size
        token = tokens.check_token(pipe.tokenizer, req.token)
        items = datasets.read_folder(req.images_dir) if req.images_dir is not None else list(req.images)
        images, notes = datasets.prepare_images(items, size, req.template, token, req.class_word.strip())
        for text in notes:
            yield Notice(text)
        accelerator = Accelerator(cpu=pipe.device.type == "cpu")
        yield from _start_or_resume(req, work, accelerator.is_main_process)
        accelerator.wait_for_everyone()
        # 2. The parts: a tokenizer and text encoder of our own with the new token; the UNet's LoRA (on the loaded
        # model, removed at the end) or a trainable copy.
        tokenizer, text_encoder = copy.deepcopy(pipe.tokenizer), copy.deepcopy(pipe.text_encoder).float()
        ids = tokens.add_token(tokenizer, text_encoder, token, req.vectors, req.class_word.strip())
        parts = trainer.Parts(tokenizer, text_encoder, pipe.unet, pipe.vae, dict(pipe.scheduler.config), ids,
                              train_unet=req.kind != "embedding")
        pixels = datasets.to_tensor([im.image for im in images], req.flip)
        captions = [im.caption for im in images] * (2 if req.flip else 1)
        data = trainer.Data(trainer.encode_images(pipe.vae, pixels, pipe.device), captions)
        if req.prior:
            data.class_latents, data.class_captions = yield from _class_images(parts, req, work, pipe.device,
                                                                               accelerator.is_main_process)
        try:
            with torch.random.fork_rng(devices=[]):  # LoRA's Gaussian init from the run's seed: resumes repeat it
                torch.manual_seed(req.seed)
                if req.kind == "model":
                    parts.unet = copy.deepcopy(pipe.unet).float().requires_grad_(True)
                elif req.kind == "lora":
                    lora.add_unet_lora(pipe.unet, req.rank, req.alpha, req.conv_lora)
                if req.text_encoder_lora and req.kind != "embedding":
                    lora.add_text_lora(text_encoder, req.rank, req.alpha)
            if req.prior and req.prior_target == "base":
                parts.base = _base_prediction(pipe.unet, req.kind == "lora")
            trainable = (lora.trainable_count(parts.unet if parts.train_unet else None, text_encoder)
                         + len(ids) * text_encoder.get_input_embeddings().weight.shape[1])
            yield Notice(f"Training {trainable:,} parameters ({req.recipe}); results go to {out}.")
            # 3. The loop.
            schedule = _schedule(req, token, images)
            t0 = time.perf_counter()
            outcome = yield from trainer.run(parts, data, schedule, work, accelerator, manager.should_stop)
            if not accelerator.is_main_process:
                return
            _log_losses(work, outcome)
            if outcome.stopped:
                return
            # 4. Save the result and its card; the checkpoints are no longer needed.
            paths = _export(req, parts, pipe, token, ids, out)
            info = _card(req, model, token, outcome, trainable, paths, time.perf_counter() - t0, work)
            cards.write_card(out, info)
            shutil.rmtree(work / "checkpoints", ignore_errors=True)
        finally:
            if req.kind == "lora":
                pipe.unet.unload_lora()
    yield Notice(f"Saved {req.kind} {req.name!r} to {out}.")
    yield Result(images=[], paths=[out / cards.CARD_FILE, *paths.values()], metrics={
        "final_loss": info["final_loss"], "steps": float(outcome.step), "seconds": info["wall_time_s"],
        "trainable_params": float(trainable), "it_per_s": info["it_per_s"]})


def _check_model(model: LoadedModel) -> StableDiffusionPipeline:
    pipe = model.pipe
    if not isinstance(pipe, StableDiffusionPipeline):
        raise RequestError(f"Personalization trains Stable Diffusion 1.x/2.x-style models (one text encoder and a UNet, "
                           f"like the embedded suite); {model.name} is a {type(pipe).__name__}.")
    return pipe


def _start_or_resume(req: TrainRequest, work: Path, main: bool) -> Iterator[Notice]:
    """Resume: the saved settings must match. Start: an earlier run's checkpoints of the same name are cleared (by
    the main process; the others only read)."""
    settings = {k: str(getattr(req, k)) for k in SETTINGS_KEYS}
    saved = work / "run.json"
    step = latest_step(work / "checkpoints")
    if req.resume:
        if not step:
            raise RequestError(f"Nothing to resume for {req.name!r}: no checkpoint in {work / 'checkpoints'}. Press Start.")
        before = json.loads(saved.read_text()) if saved.is_file() else {}
        # A setting newer than the run's record compares as its default (what that run trained with).
        defaults = {f.name: str(f.default) for f in fields(TrainRequest) if f.default is not MISSING}
        defaults.update(BEFORE_RECORDED)
        changed = [k for k in SETTINGS_KEYS if before.get(k, defaults.get(k)) != settings[k]
                   and (k not in ONLY_WITH or settings[ONLY_WITH[k]] == "True")]
        if changed:
            raise RequestError(f"The checkpoint of {req.name!r} was trained with other settings ({', '.join(changed)}); "
                               "resume with the same ones, or Start anew.")
        return
    if not main:
        return
    if step:
        yield Notice(f"Starting anew: the earlier checkpoint of {req.name!r} (step {step}) is cleared.")
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    (work / "metrics.jsonl").unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(settings, indent=2))


def _schedule(req: TrainRequest, token: str, images: list) -> trainer.Schedule:
    prompts = req.sample_prompts or tuple(dict.fromkeys([f"a {token}", images[0].caption]))
    prompts = tuple(datasets.fill(p, token, req.class_word.strip()) for p in prompts)
    return trainer.Schedule(
        steps=req.steps, batch=req.batch, lr=req.lr, token_lr=req.token_lr, prior_weight=req.prior_weight, seed=req.seed,
        warmup=min(50, req.steps // 10), checkpoint_every=req.checkpoint_every,
        sample_every=req.sample_every or max(1, req.steps // 4), sample_prompts=prompts, sample_seeds=req.sample_seeds,
        minutes=req.minutes, word_dropout=req.word_dropout, keep_words=(token,), ema_decay=req.ema_decay)


def _base_prediction(unet, lora_on_it: bool):
    """The base model's noise prediction (x_t, t, text) -> eps, without gradients: the loaded UNet itself (a full
    fine-tune trains a copy), or, when the LoRA is on it, the same UNet with the LoRA switched off for the call."""
    @torch.no_grad()
    def predict(x_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        if lora_on_it:
            unet.disable_adapters()
        try:
            return unet(x_t.to(unet.dtype), t, encoder_hidden_states=embeds.to(unet.dtype)).sample.float()
        finally:
            if lora_on_it:
                unet.enable_adapters()
    return predict


def class_prompts(req: TrainRequest) -> list[str]:
    """The class prompts, one per line of `class_prompt` (placeholders filled in); class images cycle through them."""
    lines = [datasets.fill(line, req.token, req.class_word.strip()) for line in req.class_prompt.splitlines()]
    return [line for line in lines if line] or [datasets.fill(TrainRequest.class_prompt, req.token, req.class_word)]


def _class_images(parts: trainer.Parts, req: TrainRequest, work: Path, device, main: bool) -> Iterator[Notice]:
    """The base model's images for the class prompts (prior preservation), drawn once and kept in the work folder
    (other processes than the main one draw their own, the same, and keep none)."""
    chosen = class_prompts(req)
    captions = [chosen[k % len(chosen)] for k in range(req.class_images)]
    folder = work / "class_images"
    stamp = folder / "prompt.json"
    wanted = {"prompts": chosen, "count": req.class_images, "seed": req.seed}
    from PIL import Image

    if main and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        images = [Image.open(folder / f"{k:04d}.png").convert("RGB") for k in range(req.class_images)]
    else:
        what = repr(chosen[0]) if len(chosen) == 1 else f"{len(chosen)} class prompts"
        yield Notice(f"Drawing {req.class_images} class images of {what} with the base model (prior preservation).")
        seeds = [1_000_000 + req.seed * 10_000 + k for k in range(req.class_images)]
        images = trainer.draw(trainer.preview_pipeline(parts), captions, seeds)
        if main:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for k, image in enumerate(images):
                image.save(folder / f"{k:04d}.png")
            stamp.write_text(json.dumps(wanted))
    pixels = datasets.to_tensor(images, flip=False)
    return trainer.encode_images(parts.vae, pixels, device), captions


def _export(req: TrainRequest, parts: trainer.Parts, pipe, token: str, ids: list[int], out: Path) -> dict[str, Path]:
    vectors = tokens.vectors_of(parts.text_encoder, ids)
    if req.kind == "embedding":
        return {"embedding": tokens.save_embedding(out / tokens.EMBEDDING_FILE, token, vectors)}
    if req.kind == "lora":
        return lora.save_lora(out, req.name, parts.unet, parts.text_encoder, req.alpha, token, vectors)
    full = StableDiffusionPipeline(vae=pipe.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=pipe.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    full.save_pretrained(out, safe_serialization=True)
    return {"unet": next(out.glob("unet/*.safetensors")), "text_encoder": next(out.glob("text_encoder/*.safetensors"))}


def _log_losses(work: Path, outcome: trainer.Outcome) -> None:
    with open(work / "metrics.jsonl", "w") as f:
        for k, loss in enumerate(outcome.losses, start=1):
            f.write(json.dumps({"step": k, "loss": loss}) + "\n")


LOSS_WINDOW = 20


def _card(req: TrainRequest, model: LoadedModel, token: str, outcome: trainer.Outcome, trainable: int,
          paths: dict[str, Path], seconds: float, work: Path) -> dict:
    tail = outcome.losses[-LOSS_WINDOW:] or [float("nan")]
    settings = {k: v for k, v in asdict(req).items() if k not in ("images", "out", "command", "resume", "name")}
    settings = {k: (str(v) if isinstance(v, (Path, tuple)) or v is None else v) for k, v in settings.items()}
    return {
        "name": req.name, "kind": req.kind, "method": req.recipe, "base_model": model.name, "base_hash": model.model_hash,
        "token": token, "vectors": req.vectors, "class_word": req.class_word, "steps": outcome.step,
        "wall_time_s": seconds, "it_per_s": outcome.it_per_s, "final_loss": sum(tail) / len(tail),
        "loss_window": len(tail), "trainable_params": trainable, "hardware": hardware(torch.device(model.pipe.device)),
        "settings": settings, "files": {p.name: p.stat().st_size for p in paths.values()},
        "command": req.command, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
