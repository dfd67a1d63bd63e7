"""Where weights come from: the embedded suite in assets/, a local diffusers folder, a single-file checkpoint,
or a hub id (only when online). Safetensors first; pickle checkpoints only when allowed."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from studio.config import StudioConfig
from studio.errors import ModelError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the user typed or picked
    kind: str  # "folder", "single_file" or "hub"
    location: str  # a path, or a hub id
    embedded: bool = False

    @property
    def name(self) -> str:
        return Path(self.location).stem if self.kind != "hub" else self.location


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or corrupt safetensors file before any loader sees it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if keys:
                f.get_slice(keys[-1])
        size = path.stat().st_size
        with open(path, "rb") as raw:
            header_len = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end > size:
            raise ValueError(f"file is {size} bytes but its header needs {8 + header_len + end}")
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise ModelError(f"{path} is not a readable safetensors file (truncated or corrupt download?): {e}") from e


def check_folder(path: Path, allow_pickle: bool) -> None:
    """A diffusers folder: model_index.json plus readable weights for each component."""
    if not (path / "model_index.json").is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
        raise ModelError(
            f"{path} is not a diffusers model folder: it has no model_index.json (found: {found}). "
            "Point at a folder saved by diffusers' save_pretrained, or at a single .safetensors checkpoint."
        )
    for weights in path.glob("*/*.safetensors"):
        check_safetensors(weights)
    pickles = [p for p in path.glob("*/*") if p.suffix in PICKLE_SUFFIXES]
    has_safetensors = {p.parent for p in path.glob("*/*.safetensors")}
    unsafe = [p for p in pickles if p.parent not in has_safetensors]
    if unsafe and not allow_pickle:
        raise ModelError(
            f"{path} has pickle weights with no safetensors beside them ({', '.join(str(p.relative_to(path)) for p in unsafe[:4])}). "
            "Pickle files can run code when loaded; convert them to safetensors, or start the studio with --allow-pickle if you trust them."
        )


def resolve(spec: str, config: StudioConfig) -> ModelSource:
    """Turn a model spec (embedded name, folder, file, hub id) into a checked ModelSource, or raise ModelError."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelError("No model chosen. Pick one from the list, or type a diffusers folder, a .safetensors file or a hub id.")
    # 1. A name in the embedded suite or the models folder. Only a plain relative name: joining an absolute path
    # (or one with ~ or ..) to a base folder would yield that path itself, marked embedded.
    as_path = Path(spec)
    is_name = not as_path.is_absolute() and not spec.startswith("~") and ".." not in as_path.parts
    for base, embedded in ((config.assets_dir, True), (config.models_dir, False)) if is_name else ():
        candidate = Path(base) / spec
        if candidate.is_dir():
            check_folder(candidate, config.allow_pickle)
            return ModelSource(spec, "folder", str(candidate), embedded)
        if candidate.is_file():
            return _file_source(spec, candidate, config, embedded)
    # 2. A path on disk.
    path = Path(spec).expanduser()
    if path.is_dir():
        check_folder(path, config.allow_pickle)
        return ModelSource(spec, "folder", str(path.resolve()))
    if path.is_file():
        return _file_source(spec, path, config)
    looks_like_path = spec.startswith((".", "/", "~")) or "\\" in spec or Path(spec).suffix in (".safetensors",) + PICKLE_SUFFIXES
    if looks_like_path or not HUB_ID.match(spec):
        raise ModelError(f"Model {spec!r} not found: no such folder or file, and it is not one of the listed models.")
    # 3. A hub id.
    if not config.online:
        raise ModelError(
            f"{spec!r} looks like a hub id, but the studio is offline. Download it on a connected machine "
            f"(e.g. `hf download {spec} --local-dir models/{spec.split('/')[-1]}`), then pick that folder, "
            "or start with --online."
        )
    return ModelSource(spec, "hub", spec)


def _file_source(spec: str, path: Path, config: StudioConfig, embedded: bool = False) -> ModelSource:
    if path.suffix == ".safetensors":
        check_safetensors(path)
    elif path.suffix in PICKLE_SUFFIXES:
        if not config.allow_pickle:
            raise ModelError(
                f"{path.name} is a pickle checkpoint, which can run code when loaded. Use a .safetensors file, "
                "or start the studio with --allow-pickle if you trust it."
            )
    else:
        raise ModelError(f"{path} is not a model file: expected a diffusers folder or a .safetensors checkpoint.")
    return ModelSource(spec, "single_file", str(path.resolve()), embedded)


def list_models(config: StudioConfig) -> list[str]:
    """Choices for the model picker: embedded suite first, then the models folder."""
    names: list[str] = []
    for base in (Path(config.assets_dir), Path(config.models_dir)):
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir()):
            if (p.is_dir() and (p / "model_index.json").is_file()) or p.suffix == ".safetensors":
                if p.name not in names:
                    names.append(p.name)
    return names
