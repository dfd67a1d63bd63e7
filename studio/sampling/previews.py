"""x0-hat -> RGB previews while sampling: a full VAE decode for small models, a linear latent->RGB map for SD latents."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Published linear latent->RGB approximations (as in ComfyUI's latent previews): rows are latent channels.
# They act on latents in the UNet's (scaled) space.
LATENT_RGB_FACTORS: dict[str, tuple[list[list[float]], list[float]]] = {
    "sd1": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
            [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
             [0.1084, -0.0175, -0.0011]),
    "sd3": ([[-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458], [0.0856, 0.0339, 0.0902],
             [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309], [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358],
             [-0.0194, 0.0020, 0.0669], [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
             [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293], [-0.1448, -0.1463, -0.1189]],
            [0.2394, 0.2135, 0.1925]),
}
LATENT_RGB_FILE = "latent_rgb.json"  # optional, beside a VAE's config: {"factors": [[r, g, b] per channel], "bias": [r, g, b]}


def fit_latent_rgb(latents: torch.Tensor, images: torch.Tensor) -> tuple[list[list[float]], list[float]]:
    """Least-squares linear map from UNet-space latents (N, C, h, w) to images (N, 3, H, W) in [-1, 1] at latent size."""
    small = torch.nn.functional.interpolate(images.float(), size=latents.shape[-2:], mode="area")
    x = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y = small.permute(0, 2, 3, 1).reshape(-1, 3)
    w = torch.linalg.lstsq(x, y).solution
    return w[:-1].tolist(), w[-1].tolist()


def latent_family(vae_config: dict, denoiser_config: dict) -> str | None:
    """Which published factor set fits a model (from its VAE's and its UNet's or transformer's configs), or None
    (then previews use the VAE)."""
    if vae_config.get("latent_channels") == 16 and "caption_projection_dim" in denoiser_config:
        return "sd3"  # SD3's 16-channel VAE, under an SD3 transformer (MMDiT)
    if vae_config.get("latent_channels") != 4:
        return None
    if denoiser_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if vae_config.get("block_out_channels") == [128, 256, 512, 512]:
        return "sd1"  # SD 1.x and 2.x share the VAE
    return None


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> PIL images."""
    return [Image.fromarray(a) for a in to_uint8(images)]


def from_uint8(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]; the inverse of to_uint8."""
    t = torch.from_numpy(np.array(images, dtype=np.uint8)).to(device)
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def linear_preview(latents: torch.Tensor, factors: list[list[float]], bias: list[float]) -> list[Image.Image]:
    w = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    b = torch.tensor(bias, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("nchw,cr->nrhw", latents.float(), w) + b.view(1, 3, 1, 1)
    return to_pil(rgb)


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """UNet-space latents -> image tensor in [-1, 1] (N, 3, H, W)."""
    return vae_decode_grad(vae, latents)


def _upcast_if_needed(vae) -> torch.dtype:
    """The VAE's dtype after the upcast (a lookup over its parameters: read once a call)."""
    dtype = vae.dtype
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)
        return torch.float32
    return dtype


def vae_encode(vae, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> UNet-space latents (the posterior mean, shifted and scaled): the inverse of vae_decode."""
    dtype = _upcast_if_needed(vae)
    z = vae.encode(images.to(dtype)).latent_dist.mean
    return (z - (getattr(vae.config, "shift_factor", None) or 0)) * vae.config.scaling_factor


def vae_decode_grad(vae, latents: torch.Tensor) -> torch.Tensor:
    """As vae_decode, differentiable (for guidance and DPS gradients through the decoder).

    VAEs that overflow in fp16 (force_upcast, e.g. SDXL's) are moved to fp32 once, at their first decode, and stay
    there: switching back and forth per call would break gradients that still refer to the fp32 weights."""
    dtype = _upcast_if_needed(vae)
    z = latents.to(dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        z = z + shift
    return vae.decode(z, return_dict=False)[0]


def tiny_decode(tiny, latents: torch.Tensor) -> torch.Tensor:
    """UNet-space latents -> images in [-1, 1] through an AutoencoderTiny (TAESD's architecture; differentiable).
    Its scaling_factor says what it reads: 1 for TAESD (the UNet's latents as they are), the full VAE's for
    decoders distilled in that VAE's unscaled space (the suite's)."""
    z = latents.to(tiny.dtype) / tiny.config.scaling_factor + (getattr(tiny.config, "shift_factor", None) or 0.0)
    return tiny.decode(z, return_dict=False)[0]


def preview(latents: torch.Tensor, vae, factors: tuple[list[list[float]], list[float]] | None, scale: int) -> list[Image.Image]:
    """Cheap when it can be: a linear latent->RGB map (costless per step), else a VAE decode.

    `scale` is the VAE's downsampling factor: linear previews are upscaled by it to the image's size."""
    if factors is not None:
        images = linear_preview(latents, *factors)
        return [im.resize((im.width * scale, im.height * scale), Image.Resampling.BILINEAR) for im in images]
    return to_pil(vae_decode(vae, latents))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
