"""Studio settings: device, dtype, folders, limits; from CLI flags (and a few environment variables)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
ASSETS_MODELS = ROOT / "assets" / "models"
ASSETS_CONTROLNETS = ROOT / "assets" / "controlnets"
ASSETS_SAMPLES = ROOT / "assets" / "samples"  # example images for the pages (PNG)
PRESETS_DIR = ROOT / "presets"
DEFAULT_MODEL = "shapes-v1"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Limits:
    """Bounds on requests: beyond these a request is refused with a message, not attempted."""

    max_steps: int = 200
    min_side: int = 32
    max_side: int = 2048
    max_batch: int = 16
    max_guidance: float = 50.0
    # A job whose measured cost would pass this many seconds is refused (before it starts when its speed is known,
    # else within its first step); 0: no limit.
    max_job_seconds: float = 1800.0
    max_prompt_chars: int = 10_000  # longer prompts are refused (CLIP reads 77 tokens; each PNG stores the prompt)
    max_image_pixels: int = 40_000_000  # Pillow refuses larger images before decoding them (decompression bombs)


@dataclass
class StudioConfig:
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    models_dir: Path = field(default_factory=lambda: ROOT / "models")
    outputs_dir: Path = field(default_factory=lambda: ROOT / "outputs")
    assets_dir: Path = ASSETS_MODELS
    controlnets_dir: Path = ASSETS_CONTROLNETS  # the embedded ControlNets
    samples_dir: Path = ASSETS_SAMPLES
    presets_dir: Path = PRESETS_DIR
    offload: bool = False
    allow_pickle: bool = False
    online: bool = False
    memory_budget_gb: float | None = None  # None: 80% of the GPU, or 8 GiB on the CPU
    clip_model: Path | None = None  # a local CLIP folder (transformers CLIPModel) for text guidance of real models
    allow_any_path: bool = False  # False: model paths only inside models_dir and assets/ (the CLI sets True: a local tool)
    limits: Limits = field(default_factory=Limits)
    # How the UNet and VAE decoder run on the CPU (studio.engines): eager here, so that library users and tests
    # never export or compile; the app and CLI default to auto (STUDIO_ENGINE overrides).
    engine: str = "eager"
    cache_dir: Path = field(default_factory=lambda: ROOT / "cache")  # engine exports, compiled kernels


def resolve_device(name: str = "auto") -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """auto: fp32 on CPU, bf16 on CUDA GPUs that support it, else fp16."""
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name != "auto":
        if name not in names:
            raise ValueError(f"Unknown dtype {name!r}; choose one of auto, {', '.join(names)}")
        return names[name]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def hub_online() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True") and os.environ.get("STUDIO_ONLINE", "0") == "1"


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by the web app and the CLI."""
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), or a torch device name")
    p.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models", help="folder scanned for models (diffusers folders, .safetensors)")
    p.add_argument("--outputs-dir", type=Path, default=ROOT / "outputs", help="where finished images are saved")
    p.add_argument("--offload", action="store_true", help="keep weights on the CPU and move each part to the GPU when used")
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt checkpoints (pickle can run code: trusted files only)")
    p.add_argument("--online", action="store_true", help="allow downloading hub ids (off by default)")
    p.add_argument("--clip-model", type=Path, default=None, help="local CLIP folder (e.g. openai/clip-vit-base-patch32) for text guidance")
    p.add_argument("--memory-budget-gb", type=float, default=None, help="memory for loaded models before the least recently used is freed")
    p.add_argument("--allow-any-path", action="store_true",
                   help="web app: load models from any path on the server, not only --models-dir and assets/ "
                        "(the command line always may)")
    p.add_argument("--engine", default=os.environ.get("STUDIO_ENGINE", "auto"),
                   choices=["auto", "eager", "compile", "onnx", "openvino"],
                   help="how the UNet and VAE decoder run on the CPU: auto (the fastest valid installed engine, "
                        "measured here; built in the background, cached), eager, compile, onnx or openvino")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "cache", help="where engine exports are cached")
    p.add_argument("--max-job-minutes", type=float, default=Limits.max_job_seconds / 60,
                   help="refuse a job whose measured cost would pass this (before it starts when its speed is known, "
                        "else in its first step); 0: no limit")


def config_from_args(args: argparse.Namespace) -> StudioConfig:
    device = resolve_device(args.device)
    return StudioConfig(
        device=device,
        dtype=resolve_dtype(args.dtype, device),
        models_dir=args.models_dir,
        outputs_dir=args.outputs_dir,
        offload=args.offload,
        allow_pickle=args.allow_pickle,
        online=args.online or hub_online(),
        memory_budget_gb=args.memory_budget_gb,
        clip_model=args.clip_model,
        allow_any_path=getattr(args, "allow_any_path", False),
        limits=Limits(max_job_seconds=60 * getattr(args, "max_job_minutes", Limits.max_job_seconds / 60)),
        engine=getattr(args, "engine", "eager"),
        cache_dir=getattr(args, "cache_dir", ROOT / "cache"),
    )
