"""ControlNets in the one loop: a request's ControlNets and maps, the loop's control hook, loading and fitting checks.

Where ControlNets come from is `sources.resolve(spec, config, sources.CONTROLNETS)`: the embedded ones
(assets/controlnets/<name>), the models folder (<models-dir>/controlnet/<name>), a folder path, or a hub id (--online).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from diffusers import ControlNetModel

from studio.config import StudioConfig
from studio.control.annotators import as_rgb
from studio.errors import ModelError, RequestError
from studio.sources import ModelSource

@dataclass
class ControlInput:
    """A request's ControlNet: which model, its control map (uint8 HxWx3, as the annotator made it) and settings."""

    model: str
    image: object  # np.ndarray or PIL image
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    module: str = "none"  # the annotator that made the map (canny, scribble, pose), for the saved settings

    def describe(self) -> str:
        return f"Module: {self.module}, Model: {self.model}, Weight: {self.scale:g}, Guidance Start: {self.start:g}, Guidance End: {self.end:g}"


MAX_CONTROL_SCALE = 2.0


def validate_controls(controls) -> None:
    for k, c in enumerate(controls, 1):
        check_control_settings(k, c.model, c.scale, c.start, c.end)
        if c.image is None:
            raise RequestError(f"ControlNet {k}: no control map. Upload an image, draw a sketch or set a pose first.")


def check_control_settings(k: int, model: str, scale: float, start: float, end: float) -> None:
    """ControlNet k's model choice, scale and step window; a message naming it when one is out of range."""
    if not (model or "").strip():
        raise RequestError(f"ControlNet {k}: no ControlNet model chosen.")
    if not 0 <= scale <= MAX_CONTROL_SCALE:
        raise RequestError(f"ControlNet {k}: the conditioning scale must be between 0 and {MAX_CONTROL_SCALE:g} (got {scale}).")
    if not 0 <= start < end <= 1:
        raise RequestError(f"ControlNet {k}: guidance start/end must satisfy 0 <= start < end <= 1 (got {start}-{end}).")


def build_units(manager, model, controls, size: tuple[int, int]) -> tuple[list[ControlUnit], list[str]]:
    """The loaded, checked ControlNets of a request with their control tensors; plus notices (e.g. resized maps)."""
    units, notes = [], []
    device, dtype = model.device, model.denoiser.dtype
    for k, c in enumerate(controls, 1):
        net = manager.controlnet(c.model, model)
        image, note = control_tensor(c.image, size, device, dtype)
        if note:
            notes.append(f"ControlNet {k}: {note}")
        units.append(ControlUnit(net, image, c.scale, c.start, c.end))
    return units, notes


@dataclass
class ControlUnit:
    """One ControlNet at work: its model, the control image (1, 3, H, W) in [0, 1], scale and step window."""

    net: ControlNetModel
    image: torch.Tensor
    scale: float = 1.0
    start: float = 0.0  # fractions of the run, as diffusers' control_guidance_start / _end
    end: float = 1.0

    def active(self, i: int, n: int) -> bool:
        return not (i / n < self.start or (i + 1) / n > self.end)


def control_hook(units: list[ControlUnit]):
    """The loop's control hook: the residuals of every active ControlNet, summed (diffusers' MultiControlNet rule)."""

    def hook(x: torch.Tensor, t, embeds: torch.Tensor, added, i: int, n: int) -> dict:
        down = mid = None
        for unit in units:
            if not unit.active(i, n):
                continue  # diffusers runs it at scale 0; adding zeros changes nothing, so skipping is exact
            image = unit.image.expand(x.shape[0], -1, -1, -1)  # one map for every image (and both CFG halves)
            d, m = unit.net(x, t, encoder_hidden_states=embeds, controlnet_cond=image, conditioning_scale=unit.scale,
                            added_cond_kwargs=added, return_dict=False)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    return hook


def control_tensor(control_map, size: tuple[int, int], device, dtype) -> tuple[torch.Tensor, str | None]:
    """A uint8 control map as the (1, 3, H, W) [0, 1] tensor a ControlNet takes; resized (and said) if needed."""
    arr = as_rgb(control_map)
    note = None
    h, w = size
    if arr.shape[:2] != (h, w):
        note = f"The control map is {arr.shape[1]}x{arr.shape[0]}; resized to the image size {w}x{h}."
        if arr.shape[0] * w != arr.shape[1] * h:
            note += " Its aspect ratio differs, so it is stretched."
        shrink = arr.shape[0] > h or arr.shape[1] > w
        arr = cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    tensor = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div(255)
    return tensor[None].to(device=device, dtype=dtype), note


# ---------------------------------------------------------------- loading and checking
def load_controlnet(source: ModelSource, config: StudioConfig) -> ControlNetModel:
    """A resolved ControlNet (sources.resolve(spec, config, CONTROLNETS)) loaded for inference, gradients off."""
    spec, local = source.spec, source.kind != "hub"
    try:
        net = ControlNetModel.from_pretrained(source.location, torch_dtype=config.dtype, local_files_only=local or not config.online,
                                              use_safetensors=None if config.allow_pickle else True)
    except Exception as e:  # noqa: BLE001 - loaders raise many types; the user needs the message
        raise ModelError(f"Could not load ControlNet {spec!r}: {type(e).__name__}: {e}") from e
    return net.eval().requires_grad_(False)


def check_compatible(net: ControlNetModel, unet, spec: str, model_name: str) -> None:
    """A ControlNet adds residuals to the UNet's blocks: its shapes must match the base model's, else say so."""
    mismatches = []
    for key, label in (("cross_attention_dim", "text width"), ("block_out_channels", "block widths"),
                       ("in_channels", "latent channels"), ("addition_embed_type", "SDXL extra conditioning")):
        theirs, ours = net.config.get(key), unet.config.get(key)
        if key == "block_out_channels":
            theirs, ours = tuple(theirs or ()), tuple(ours or ())
        if theirs != ours:
            mismatches.append(f"{label} {theirs} vs {ours}")
    if mismatches:
        raise ModelError(f"ControlNet {spec!r} was made for another base model than {model_name} "
                         f"({'; '.join(mismatches)}). Pick a ControlNet trained for this model's family.")
