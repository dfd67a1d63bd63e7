"""Shared fixtures: tiny diffusers components built from configs and saved to a temp folder, a manager over them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from studio.config import StudioConfig  # noqa: E402
from studio.manager import ModelManager  # noqa: E402
from studio.shapes.models import build_tokenizer  # noqa: E402

WORDS = "a an the red green blue big small circle square star on left right of photo cat dog".split()


def tiny_components(seed: int = 0, cross_dim: int = 32) -> dict:
    """As diffusers' own get_dummy_components: seconds on a CPU, but every part real."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_dim, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4, sample_size=32,
    )
    tokenizer = build_tokenizer(WORDS, max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=2, eos_token_id=3, pad_token_id=0, hidden_size=cross_dim, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=16,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    StableDiffusionPipeline(**tiny_components()).save_pretrained(folder)
    return folder


@pytest.fixture()
def config(tmp_path, tiny_model_dir) -> StudioConfig:
    return StudioConfig(models_dir=tiny_model_dir.parent, outputs_dir=tmp_path / "outputs", assets_dir=tmp_path / "no-assets")


@pytest.fixture()
def manager(config) -> ModelManager:
    return ModelManager(config)
