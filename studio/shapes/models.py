"""Architectures of the embedded suite: configs for the tokenizer, text encoder, VAE, UNet and scheduler."""
from __future__ import annotations

from collections.abc import Iterable

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>")
PUNCTUATION = (",", ".", "!", "?", ";", ":", "-", "'")
MAX_TOKENS = 24
TEXT_DIM = 128


def build_tokenizer(words: Iterable[str], max_length: int = MAX_TOKENS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the suite's vocabulary; unknown words map to <|unk|>."""
    vocab_words = list(SPECIAL_TOKENS) + list(PUNCTUATION) + sorted({w.lower() for w in words} - set(PUNCTUATION))
    vocab = {w: i for i, w in enumerate(vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        model_max_length=max_length,
    )


def build_text_encoder(vocab_size: int, max_length: int = MAX_TOKENS) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        projection_dim=TEXT_DIM,
    )
    return CLIPTextModel(config)


def build_vae() -> AutoencoderKL:
    """64x64x3 <-> 16x16x4: three downsamplings."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 192),
        layers_per_block=1,  # depth costs CPU time per step more than width does: 25 CFG steps must fit in 1 s
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=(2, 4, 6),
        norm_num_groups=32,
    )


def build_scheduler() -> DDIMScheduler:
    # Stable Diffusion's noise schedule, so every SD sampler applies unchanged.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
