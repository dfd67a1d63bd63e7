"""Shared fixtures: tiny diffusers components built from configs and saved to a temp folder, a manager over them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests run eagerly (the app and CLI they start too): exporting or compiling engines would only add CI time.
# The engine tests ask for an engine by name.
os.environ["STUDIO_ENGINE"] = "eager"

from studio.config import StudioConfig  # noqa: E402
from studio.manager import ModelManager  # noqa: E402
from studio.server import free_port  # noqa: E402,F401 - tests import it from here
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


def tiny_t5_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer shaped like T5's: <pad> 0, </s> 1, <unk> 2, and </s> closing every text."""
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *sorted(set(words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def tiny_sd3_components(seed: int = 0) -> dict:
    """As diffusers' SD3 get_dummy_components, with local tokenizers: an SD3 transformer (patch 2), a 16-channel VAE
    with SD3's shift and scale, two CLIPs (pooled 32 + 32 = 64) and a T5 wider than both CLIPs (so the CLIP
    embeddings are padded to it, as in SD3), and a flow-matching scheduler with shift 3."""
    torch.manual_seed(seed)
    t5_dim = 80
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=t5_dim, pooled_projection_dim=64, out_channels=16,
    )
    vae = AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3, norm_num_groups=8, latent_channels=16, sample_size=32,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False,
    )
    tokenizer, tokenizer_2 = build_tokenizer(WORDS, max_length=16), build_tokenizer(WORDS, max_length=16)
    clip = CLIPTextConfig(bos_token_id=2, eos_token_id=3, pad_token_id=0, hidden_size=32, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=16,
                          projection_dim=32)
    text_encoder, text_encoder_2 = CLIPTextModelWithProjection(clip), CLIPTextModelWithProjection(clip)
    tokenizer_3 = tiny_t5_tokenizer(WORDS)
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_3), d_model=t5_dim, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
                tokenizer_3=tokenizer_3, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory) -> Path:
    """A tiny SD3-class folder, alone in its own models folder (so listings of the tiny SD model's stay as they are)."""
    folder = tmp_path_factory.mktemp("sd3-models") / "tiny-sd3"
    StableDiffusion3Pipeline(**tiny_sd3_components()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    StableDiffusionPipeline(**tiny_components()).save_pretrained(folder)
    return folder


@pytest.fixture()
def config(tmp_path, tiny_model_dir) -> StudioConfig:
    """Loads from any path (tests make models in temp folders); tests/test_security.py checks the confined default."""
    return StudioConfig(models_dir=tiny_model_dir.parent, outputs_dir=tmp_path / "outputs", assets_dir=tmp_path / "no-assets",
                        allow_any_path=True)


@pytest.fixture()
def manager(config) -> ModelManager:
    return ModelManager(config)
