"""Presets: named generation settings (model, sampler, steps, guidance, size, negative prompt) kept as YAML files, one per preset."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from studio.config import DEFAULT_MODEL, PRESETS_DIR
from studio.errors import RequestError
from studio.jobs import Txt2ImgRequest
from studio.sampling.schedulers import get_sampler


@dataclass
class Preset:
    name: str
    description: str = ""
    model: str = DEFAULT_MODEL
    sampler: str = "DPM++ 2M"
    steps: int = 25
    guidance_scale: float = 7.0
    guidance_rescale: float = 0.0
    width: int = 0  # 0: the model's native size
    height: int = 0
    negative_prompt: str = ""


_FIELDS = {f.name: f for f in dataclasses.fields(Preset)}
_TYPES = {"str": str, "int": int, "float": float}


def _check_value(key: str, value, source: Path):
    """The value converted to the field's type, or a RequestError naming the file and the key."""
    kind = _TYPES[str(_FIELDS[key].type)]
    if value is None and kind is str:
        return ""
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise RequestError(f"Preset file {source}: {key!r} must be {'a number' if kind is float else 'an integer' if kind is int else 'text'}, got {value!r}.")
    return value


def load_preset(path: Path) -> Preset:
    """One preset from a YAML file; the file stem is its name."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RequestError(f"Preset file {path} is not valid YAML: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise RequestError(f"Preset file {path} could not be read: {e}") from e
    if not isinstance(data, dict):
        raise RequestError(f"Preset file {path} must hold a mapping of settings (key: value), got {type(data).__name__}.")
    name = path.stem
    if "name" in data and data.pop("name") != name:
        raise RequestError(f"Preset file {path}: 'name' must match the file name ({name!r}) or be left out.")
    unknown = [str(k) for k in data if k not in _FIELDS or k == "name"]
    if unknown:
        allowed = ", ".join(k for k in _FIELDS if k != "name")
        raise RequestError(f"Preset file {path}: unknown key(s) {', '.join(map(repr, unknown))}. Allowed keys: {allowed}.")
    values = {key: _check_value(key, value, path) for key, value in data.items()}
    preset = Preset(name=name, **values)
    try:
        get_sampler(preset.sampler)
    except RequestError as e:
        raise RequestError(f"Preset file {path}: {e}") from e
    if not preset.model.strip():
        raise RequestError(f"Preset file {path}: 'model' must not be empty.")
    if preset.steps < 1:
        raise RequestError(f"Preset file {path}: 'steps' must be 1 or more (got {preset.steps}).")
    if preset.guidance_scale < 0 or not 0 <= preset.guidance_rescale <= 1:
        raise RequestError(f"Preset file {path}: 'guidance_scale' must be 0 or more and 'guidance_rescale' between 0 and 1.")
    if preset.width < 0 or preset.height < 0:
        raise RequestError(f"Preset file {path}: 'width' and 'height' must be 0 (the model's native size) or more.")
    return preset


def load_presets(folder: Path = PRESETS_DIR) -> dict[str, Preset]:
    """Every ``*.yaml`` preset in a folder, by name (sorted). A missing folder gives no presets; a bad file raises RequestError."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    presets = {}
    for path in sorted(folder.glob("*.yaml")):
        preset = load_preset(path)
        presets[preset.name] = preset
    return presets


def get_preset(presets: dict[str, Preset], name: str) -> Preset:
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none (the presets folder is empty)"
        raise RequestError(f"Unknown preset {name!r}. Known presets: {known}.")
    return presets[name]


def apply_preset(req: Txt2ImgRequest, preset: Preset) -> Txt2ImgRequest:
    """The request with the preset's model, sampler, steps, guidance, rescale, size and negative prompt."""
    return replace(
        req, model=preset.model, sampler=preset.sampler, steps=preset.steps, guidance_scale=preset.guidance_scale,
        guidance_rescale=preset.guidance_rescale, width=preset.width, height=preset.height,
        negative_prompt=preset.negative_prompt,
    )
