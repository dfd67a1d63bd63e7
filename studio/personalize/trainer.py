"""The personalization loop, one for every method: DreamBooth's recipe (Ruiz et al. 2023, "DreamBooth: Fine Tuning
Text-to-Image Diffusion Models for Subject-Driven Generation"): the noise-prediction loss on the concept's images
captioned with a new token, plus, with prior preservation, prior_weight x the same loss on images the base model
drew for the class prompt. What trains is the method's choice: the token's embedding rows (textual inversion, Gal et
al. 2023; in every method, as pivotal tuning does), LoRA layers on the UNet (and the text encoder), or the whole UNet.

Every random draw of step k (which images, flips, noise, timesteps) comes from a generator seeded by (seed, k) for
the global batch, and each process takes its slice of it. So a resumed run repeats an uninterrupted one exactly, and
N processes under `accelerate launch` see the batch one process would (gradients averaged by DDP)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

from studio.errors import StudioError
from studio.events import Notice, Samples, TrainStep
from studio.personalize.tokens import RowGuard
from studio.training.common import autocast, diffusion_loss, latest_step, lr_at, noised, save_checkpoint, tokenize

SAMPLE_STEPS = 20  # sampler steps of the preview images (DPM++ 2M)
SAMPLE_CFG = 5.0


@dataclass
class Parts:
    """What the loop trains and reads: a tokenizer and text encoder holding the new token, the UNet (with LoRA layers,
    or a trainable copy), the frozen VAE, and the ids of the token's rows."""

    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict
    token_ids: list[int]
    train_unet: bool = True  # False: textual inversion (the UNet is frozen)
    # The base model's prediction (x_t, t, text embeddings) -> eps, when the prior's target is the base model's
    # (distillation) instead of the class images' noise; None: DreamBooth's noise target.
    base: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass
class Data:
    """Cached VAE latents and captions: the concept's images (and their mirror images), and the class images."""

    latents: torch.Tensor
    captions: list[str]
    class_latents: torch.Tensor | None = None
    class_captions: list[str] = field(default_factory=list)


@dataclass
class Schedule:
    steps: int
    batch: int  # global batch (concept images per step; as many class images again with prior preservation)
    lr: float  # the UNet's LoRA (or full) weights
    token_lr: float  # the token's embedding rows
    prior_weight: float = 1.0
    seed: int = 0
    warmup: int = 0
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2
    checkpoint_every: int = 100
    sample_every: int = 0
    sample_prompts: tuple[str, ...] = ()
    sample_seeds: tuple[int, ...] = (0,)
    minutes: float = 0.0  # a wall-time cap (0: none); the run stops with a checkpoint when it is reached
    word_dropout: float = 0.0  # each caption word but the token is left out with this probability (kohya's tag dropout)
    keep_words: tuple[str, ...] = ()  # never left out (the token)
    # Exponential moving average of the trained weights (0: off), started from the base weights; the result saves the
    # average. Small-batch steps make the weights wander around where the loss is low; the average stays nearer.
    ema_decay: float = 0.0


@dataclass
class Outcome:
    step: int
    losses: list[float]  # every step's, from step 1 (a resumed run's too)
    seconds: float  # of this session, from `start`
    stopped: bool
    start: int = 0

    @property
    def it_per_s(self) -> float:
        return (self.step - self.start) / max(self.seconds, 1e-9)


class TrainedState:
    """The trained tensors as one state dict for checkpoints: every trainable parameter but the embedding matrix,
    and of that only the token's rows (the other rows never change)."""

    def __init__(self, parts: Parts):
        self.parts = parts
        self.embedding = parts.text_encoder.get_input_embeddings().weight

    def named(self) -> dict[str, torch.nn.Parameter]:
        found = {f"unet.{n}": p for n, p in self.parts.unet.named_parameters() if p.requires_grad}
        found.update({f"text_encoder.{n}": p for n, p in self.parts.text_encoder.named_parameters()
                      if p.requires_grad and p is not self.embedding})
        return found

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {n: p.detach().cpu().clone() for n, p in self.named().items()}
        state["token_rows"] = self.embedding[self.parts.token_ids].detach().cpu().clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        named = self.named()
        missing = set(named) - set(state)
        if missing:
            raise StudioError(f"The checkpoint does not match this run's settings (it lacks {sorted(missing)[0]} ...); "
                              "resume with the settings it was trained with, or start again.")
        for n, p in named.items():
            p.copy_(state[n])
        self.embedding[self.parts.token_ids] = state["token_rows"].to(self.embedding)


class WeightAverage:
    """An exponential moving average of the trained tensors (the UNet's LoRA or all of it, a text-encoder LoRA; not
    the token's rows), for checkpoints like any part; `apply` copies it into the weights at the end. Not
    training.common.EMA: that one copies a whole module (the frozen UNet too, under a LoRA) and warms its decay up
    from a random init, where this starts from the base weights at the asked decay."""

    def __init__(self, state: TrainedState, decay: float):
        self.decay = decay
        self.pairs = {n: (p, p.detach().clone()) for n, p in state.named().items()}  # name -> (weight, average)

    @torch.no_grad()
    def update(self) -> None:
        for p, averaged in self.pairs.values():
            averaged.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def apply(self) -> None:
        for p, averaged in self.pairs.values():
            p.copy_(averaged)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: averaged.cpu() for n, (_, averaged) in self.pairs.items()}

    @torch.no_grad()
    def load_state_dict(self, saved: dict[str, torch.Tensor]) -> None:
        for n, (_, averaged) in self.pairs.items():
            if n in saved:
                averaged.copy_(saved[n])


def drop_words(caption: str, keep: tuple[str, ...], p: float, g: torch.Generator) -> str:
    """The caption with each word outside `keep` left out with probability p (drawn from g even when p is 0, so the
    draws of a step do not depend on it)."""
    words = caption.split()
    draws = torch.rand(len(words), generator=g).tolist()
    return " ".join(w for w, u in zip(words, draws) if w in keep or u >= p)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + step)


def encode_images(vae, pixels: torch.Tensor, device: torch.device, batch: int = 16) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled VAE latents (the posterior's mean, as the sampler's latents are scaled)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out = []
    with torch.no_grad():
        for chunk in pixels.split(batch):
            mean = vae.encode(chunk.to(device, vae.dtype)).latent_dist.mean
            out.append(((mean - shift) * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)


def preview_pipeline(parts: Parts, text_encoder=None, unet=None) -> StableDiffusionPipeline:
    """A diffusers pipeline over the parts as they are now (no copies), for preview and class images."""
    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=text_encoder or parts.text_encoder, tokenizer=parts.tokenizer, unet=unet or parts.unet,
        scheduler=DPMSolverMultistepScheduler.from_config(parts.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def draw(pipe: StableDiffusionPipeline, prompts: list[str], seeds: list[int], batch: int = 8) -> list:
    """One image per (prompt, seed), each from its own CPU generator (the same on any device)."""
    images = []
    for start in range(0, len(prompts), batch):
        chunk = list(zip(prompts, seeds))[start:start + batch]
        with autocast(pipe.device):  # parts of mixed precision on a GPU (an fp32 copy beside a bf16 VAE)
            images += pipe([p for p, _ in chunk], num_inference_steps=SAMPLE_STEPS, guidance_scale=SAMPLE_CFG,
                           generator=[torch.Generator("cpu").manual_seed(s) for _, s in chunk]).images
    return images


def _optimizer(state: TrainedState, s: Schedule) -> torch.optim.Optimizer:
    weights = [p for p in state.named().values()]
    groups = [{"params": [state.embedding], "lr": s.token_lr, "base_lr": s.token_lr, "weight_decay": 0.0}]
    if weights:
        groups.append({"params": weights, "lr": s.lr, "base_lr": s.lr, "weight_decay": s.weight_decay})
    return torch.optim.AdamW(groups)


def run(parts: Parts, data: Data, s: Schedule, work: Path, accelerator, should_stop: Callable[[], bool],
        ) -> Generator[TrainStep | Samples | Notice, None, Outcome]:
    """Train from the latest checkpoint in work/checkpoints (or from the start) to `s.steps`; yields a TrainStep per
    step, Samples every `s.sample_every` steps; returns the Outcome. Stop (or the time cap) saves a checkpoint."""
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    if s.batch % world:
        raise StudioError(f"The batch ({s.batch}) must split evenly over {world} processes.")
    # 1. What trains: the token's rows always, the UNet's LoRA (or all of it) unless textual inversion.
    embedding = parts.text_encoder.get_input_embeddings()
    embedding.weight.requires_grad_(True)
    state = TrainedState(parts)
    optimizer = _optimizer(state, s)
    average = WeightAverage(state, s.ema_decay) if s.ema_decay else None
    # 2. Resume: the trained tensors, the optimizer and the loss curve so far.
    checkpoints = work / "checkpoints"
    start = latest_step(checkpoints)
    losses: list[float] = []
    if start:
        saved = torch.load(sorted(checkpoints.glob("step-*.pt"))[-1], map_location="cpu", weights_only=True)
        state.load_state_dict(saved["trained"])
        optimizer.load_state_dict(saved["optimizer"])
        losses = list(saved["losses"].tolist())
        if average is not None and "average" in saved:  # (a checkpoint from a run without it: averaged from here)
            average.load_state_dict(saved["average"])
        yield Notice(f"Resumed from the checkpoint at step {start} of {s.steps}.")
    guard = RowGuard(embedding, parts.token_ids)
    # DDP wraps only what trains (a module with nothing to train cannot be wrapped).
    unet = accelerator.prepare(parts.unet) if parts.train_unet else parts.unet
    text_encoder, optimizer = accelerator.prepare(parts.text_encoder, optimizer)
    latents, class_latents = data.latents, data.class_latents
    t0, step, stopped = time.perf_counter(), start, False
    scheduler = DDPMScheduler.from_config(parts.scheduler_config)
    share = slice(rank * s.batch // world, (rank + 1) * s.batch // world)

    def checkpoint(at: int) -> Path | None:
        if not accelerator.is_main_process:
            return None
        parts_to_save = {"trained": state, "optimizer": optimizer, "losses": _Tensor(torch.tensor(losses)),
                         **({"average": average} if average is not None else {})}
        try:
            return save_checkpoint(checkpoints, at, parts_to_save, keep=2)
        except OSError as e:
            for tmp in checkpoints.glob(".step-*.tmp"):
                tmp.unlink(missing_ok=True)
            kept = latest_step(checkpoints)
            raise StudioError(f"Could not write the checkpoint at step {at} ({e.strerror or e}); is the disk full? "
                              + (f"The checkpoint of step {kept} is kept: free some space and Resume." if kept else
                                 "No checkpoint was kept.")) from e

    while step < s.steps:
        # 3. The global batch of step k, then this process's slice of it.
        g = step_generator(s.seed, step)
        views = torch.randint(0, len(latents), (s.batch,), generator=g)
        noise = torch.randn((s.batch, *latents.shape[1:]), generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (s.batch,), generator=g)
        captions = [drop_words(data.captions[i], s.keep_words, s.word_dropout, g) for i in views.tolist()][share]
        x0 = latents[views[share]]
        eps, tt = noise[share], t[share]
        if class_latents is not None:
            cviews = torch.randint(0, len(class_latents), (s.batch,), generator=g)
            cnoise = torch.randn((s.batch, *latents.shape[1:]), generator=g)
            ct = torch.randint(0, scheduler.config.num_train_timesteps, (s.batch,), generator=g)
            x0 = torch.cat([x0, class_latents[cviews[share]]])
            captions += [data.class_captions[i] for i in cviews[share].tolist()]
            eps, tt = torch.cat([eps, cnoise[share]]), torch.cat([tt, ct[share]])
        # 4. The loss: the concept's images, plus prior_weight x the class images'.
        lr_scale = lr_at(1.0, step / s.steps, step, warmup=max(1, s.warmup), floor=0.1)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_scale
        x0, eps, tt = x0.to(device), eps.to(device), tt.to(device)
        x_t, target = noised(scheduler, x0, eps, tt)
        n = len(views[share])
        with autocast(device):
            embeds = text_encoder(tokenize(parts.tokenizer, captions).to(device))[0]
            pred = unet(x_t.to(parts.unet.dtype), tt, encoder_hidden_states=embeds.to(parts.unet.dtype)).sample
            if class_latents is not None and parts.base is not None:  # under the same autocast as the prediction
                target = torch.cat([target[:n], parts.base(x_t[n:], tt[n:], embeds[n:].detach()).to(target)])
        loss = diffusion_loss(pred[:n], target[:n])
        if class_latents is not None:
            loss = loss + s.prior_weight * diffusion_loss(pred[n:], target[n:])
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if s.max_grad_norm:
            accelerator.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], s.max_grad_norm)
        optimizer.step()
        guard.restore()
        if average is not None:
            average.update()
        step += 1
        losses.append(float(accelerator.gather(loss.detach()[None]).mean()))
        # 5. Report; checkpoint and previews on schedule; Stop and the time cap end the run with a checkpoint.
        elapsed = time.perf_counter() - t0
        rate = (step - start) / max(elapsed, 1e-9)
        out_of_time = s.minutes > 0 and elapsed >= s.minutes * 60 and step < s.steps
        stopped = should_stop() and step < s.steps
        due = step % s.checkpoint_every == 0 if s.checkpoint_every else False
        saved_at = checkpoint(step) if (due or stopped or out_of_time) and step < s.steps else None
        yield TrainStep(step, s.steps, losses[-1], s.lr * lr_scale, rate, (s.steps - step) / max(rate, 1e-9), saved_at)
        if s.sample_every and s.sample_prompts and (step % s.sample_every == 0 or step == s.steps) and accelerator.is_main_process:
            yield samples(parts, accelerator, unet, text_encoder, s, step)
        if stopped:
            yield Notice(f"Stopped at step {step} of {s.steps}; the checkpoint is kept: Resume continues from it.")
            break
        if out_of_time:
            yield Notice(f"The time budget ({s.minutes:g} min) is spent at step {step} of {s.steps}: the result is "
                         "saved as it is now.")
            break
    accelerator.wait_for_everyone()
    if average is not None and not stopped:  # the result is saved from here: the average's weights
        average.apply()
    return Outcome(step, losses, time.perf_counter() - t0, stopped, start)


def samples(parts: Parts, accelerator, unet, text_encoder, s: Schedule, step: int) -> Samples:
    prompts = [p for p in s.sample_prompts for _ in s.sample_seeds]
    seeds = [seed for _ in s.sample_prompts for seed in s.sample_seeds]
    pipe = preview_pipeline(parts, accelerator.unwrap_model(text_encoder), accelerator.unwrap_model(unet))
    return Samples(step, draw(pipe, prompts, seeds), prompts, seeds)


class _Tensor:
    """A tensor that saves like a module (state_dict / load_state_dict), for save_checkpoint."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    def state_dict(self) -> torch.Tensor:
        return self.value


def read_metrics(work: Path) -> list[dict]:
    path = work / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
