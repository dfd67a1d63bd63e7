"""A model as the manager holds it: the pipeline and what was found beside it (its engines, tiny decoder, judges,
latent->RGB factors), and what jobs ask of it (its denoiser, sizes, a decode, whether its text encoders are plain)."""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, SD3Transformer2DModel, StableDiffusionXLPipeline

from studio import engines, sources
from studio.judges import Judges
from studio.judges import load as load_judges
from studio.sampling.previews import LATENT_RGB_FACTORS, LATENT_RGB_FILE, latent_family


def denoiser_name(pipe: DiffusionPipeline) -> str | None:
    """The component the loop runs: "unet" (SD 1.x, 2.x, XL, the embedded suite), "transformer" (SD3-class models:
    an SD3Transformer2DModel), or None when the pipeline has neither."""
    if getattr(pipe, "unet", None) is not None:
        return "unet"
    if isinstance(getattr(pipe, "transformer", None), SD3Transformer2DModel):
        return "transformer"
    return None


TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


@dataclass
class LoadedModel:
    source: sources.ModelSource
    pipe: DiffusionPipeline
    nbytes: int
    model_hash: str
    engines: engines.ModelEngines | None = None  # fast paths for plain UNet and decoder calls (studio.engines)
    # Text conditioning of recent prompts (jobs.common.encode_prompt), valid while the text encoders are plain.
    prompt_cache: OrderedDict = field(default_factory=OrderedDict)
    # The loaded tokenizers (taken from the pipe): a job that swaps one in (an embedding) has changed the encoding.
    tokenizers: tuple = field(init=False, default=())
    tiny_vae: torch.nn.Module | None = None  # an AutoencoderTiny: previews, and fast DPS's gradient path

    def __post_init__(self):
        self.tokenizers = tuple(getattr(self.pipe, n, None) for n in TOKENIZERS)

    def text_encoders_plain(self) -> bool:
        """Whether the text encoders are as loaded: no LoRA in them, no embedding's tokenizer swapped in."""
        if any(getattr(self.pipe, n, None) is not t for n, t in zip(TOKENIZERS, self.tokenizers)):
            return False
        return not any(getattr(getattr(self.pipe, n, None), "peft_config", None)
                       for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))

    @property
    def name(self) -> str:
        return self.source.spec

    @property
    def is_xl(self) -> bool:
        return isinstance(self.pipe, StableDiffusionXLPipeline)

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network the loop runs: the UNet, or an SD3-class model's transformer."""
        return getattr(self.pipe, denoiser_name(self.pipe))

    @property
    def is_sd3(self) -> bool:
        return isinstance(self.denoiser, SD3Transformer2DModel)

    @property
    def family(self) -> str | None:
        return latent_family(dict(self.pipe.vae.config), dict(self.denoiser.config))

    @cached_property
    def device(self) -> torch.device:
        """Where the pipeline runs: diffusers' `_execution_device` (which walks every module, about 2 ms a call on
        the suite), read once. The manager places a pipeline before it hands the model out and never moves it
        while it is loaded (eviction drops it)."""
        return self.pipe._execution_device

    @cached_property
    def judges(self) -> Judges | None:
        """The folder's optional judges (judges.json: e.g. the embedded suite's evaluator and noise-aware classifier)."""
        if self.source.kind != "folder":
            return None
        return load_judges(self.source.location, self.device)

    @cached_property
    def latent_rgb(self) -> tuple[list[list[float]], list[float]] | None:
        """Linear latent->RGB preview factors: the model's own (vae/latent_rgb.json), else the published ones of its family."""
        own = Path(self.source.location) / "vae" / LATENT_RGB_FILE
        if own.is_file():
            data = json.loads(own.read_text())
            return data["factors"], data["bias"]
        return LATENT_RGB_FACTORS.get(self.family or "")

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """UNet-space latents -> images in [-1, 1], without gradients: through the decoder's engine when one is
        built for this shape, else PyTorch (previews.vae_decode)."""
        from studio.sampling import previews

        with torch.no_grad():
            fast = self.engines.call("decoder", latents) if self.engines is not None else None
            return fast if fast is not None else previews.vae_decode(self.pipe.vae, latents)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return self.denoiser.config.sample_size * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor, times the transformer's patch size."""
        return self.vae_scale_factor * getattr(self.denoiser.config, "patch_size", 1)
