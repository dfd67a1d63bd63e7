"""LoRA adapters through peft (no hand-written layers): which layers get them, and saving a trained LoRA in
diffusers' format (`save_lora_weights`), in kohya's format for A1111 and ComfyUI (`convert_state_dict_to_kohya`),
with the new token's embedding beside it (pivotal tuning: the LoRA carries everything its token needs).

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models": W x + (alpha / r) B A x, B zero or small at
the start. Defaults follow diffusers' examples/dreambooth/train_dreambooth_lora.py (rank 4, Gaussian init, the
UNet's attention projections, the text encoder's q/k/v/out projections)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from studio.personalize.tokens import save_embedding

ADAPTER = "personalize"  # the adapter's name while it trains
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
CONV_TARGETS = ("conv1", "conv2", "proj_in", "proj_out")  # the ResNet convolutions and the attention blocks' projections
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"  # diffusers' own name: load_lora_weights(folder) finds it
TOKEN_FILE = "token_embedding.safetensors"  # the new token's vectors, loaded with the LoRA


def lora_config(rank: int, alpha: float, targets: tuple[str, ...]) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))


def add_unet_lora(unet, rank: int, alpha: float, conv: bool = False) -> None:
    """peft LoRA layers on the UNet (diffusers' peft integration, `add_adapter`), trainable in fp32."""
    unet.add_adapter(lora_config(rank, alpha, UNET_TARGETS + (CONV_TARGETS if conv else ())), adapter_name=ADAPTER)
    _fp32_trainable(unet)


def add_text_lora(text_encoder, rank: int, alpha: float) -> None:
    text_encoder.add_adapter(lora_config(rank, alpha, TEXT_TARGETS), adapter_name=ADAPTER)
    _fp32_trainable(text_encoder)


def _fp32_trainable(module: torch.nn.Module) -> None:
    # As diffusers' cast_training_params: only the trainable (LoRA) weights go to fp32 under fp16/bf16 models.
    for p in module.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def trainable_count(*modules) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters() if p.requires_grad)


def peft_layers(module) -> dict[str, torch.Tensor]:
    """The module's LoRA weights in peft's key format (lora_A / lora_B), on the CPU."""
    # Not the embedding table, which peft's "auto" adds once the vocabulary grew: the token is saved on its own.
    state = get_peft_model_state_dict(module, adapter_name=ADAPTER, save_embedding_layers=False)
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def adapter_metadata(module) -> dict | None:
    """The LoraConfig as a dict, saved in the file so loading uses the same rank and alpha (not alpha = rank)."""
    config = getattr(module, "peft_config", {}).get(ADAPTER)
    if config is None:
        return None
    data = config.to_dict()
    data["target_modules"] = sorted(data["target_modules"])
    return data


def save_lora(folder: Path, name: str, unet, text_encoder, alpha: float, token: str = "",
              token_vectors: torch.Tensor | None = None) -> dict[str, Path]:
    """Write the LoRA three ways into `folder`: diffusers' file, kohya's `<name>.safetensors`, and the token's
    embedding (when the LoRA came with a new token). Returns the paths by role."""
    folder.mkdir(parents=True, exist_ok=True)
    unet_layers = peft_layers(unet)
    text_layers = peft_layers(text_encoder) if getattr(text_encoder, "peft_config", None) else None
    # peft's key names (lora_A / lora_B) for every layer: diffusers' older names cover only the attention
    # projections, and a file mixing both loses layers (diffusers decides the format from the first key).
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers, weight_name=DIFFUSERS_FILE,
        unet_lora_adapter_metadata=adapter_metadata(unet),
        text_encoder_lora_adapter_metadata=adapter_metadata(text_encoder) if text_layers else None,
    )
    paths = {"diffusers": folder / DIFFUSERS_FILE, "kohya": save_kohya(folder / f"{name}.safetensors", unet_layers,
                                                                       text_layers, alpha)}
    if token and token_vectors is not None:
        paths["embedding"] = save_embedding(folder / TOKEN_FILE, token, token_vectors)
    return paths


def save_kohya(path: Path, unet_layers: dict, text_layers: dict | None, alpha: float) -> Path:
    """kohya's format (lora_unet_* / lora_te_*, lora_down / lora_up, an alpha per module), as A1111 and ComfyUI load
    for SD-family bases. diffusers' converter writes alpha = rank; the trained alpha is written instead, so the
    copy scales as the diffusers file does (kohya's scale is alpha / rank)."""
    peft_style = {f"unet.{k}": v for k, v in unet_layers.items()}
    # CLIP's layers as kohya names them (text_model.encoder...); transformers 5 models drop the text_model level.
    peft_style.update({f"text_encoder.{'' if k.startswith('text_model.') else 'text_model.'}{k}": v
                       for k, v in (text_layers or {}).items()})
    kohya = convert_state_dict_to_kohya(peft_style)
    out = {}
    for key, value in kohya.items():
        key = key.replace("lora_te1_", "lora_te_")  # SD 1.x/2.x: one text encoder, kohya's plain prefix
        out[key] = torch.tensor(float(alpha)) if key.endswith(".alpha") else value.contiguous()
    save_file(out, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_alpha": f"{alpha:g}"})
    return path


def file_hash(path: Path) -> str:
    """A1111's LoRA hash (its "addnet" hash): sha256 of a safetensors file's tensor bytes (after the header), first
    12 hex digits; of the whole file for other formats."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if Path(path).suffix == ".safetensors":
            header = int.from_bytes(f.read(8), "little")
            f.seek(8 + header)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]
