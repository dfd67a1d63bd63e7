"""Where weights come from: one resolver for pipelines and ControlNets alike. A spec is a name in the embedded
assets or the models folder, a local folder, a single-file checkpoint (pipelines only), or a hub id (only when
online). Safetensors first; pickle checkpoints only when allowed. Paths stay inside the models folder and assets/
unless config.allow_any_path (the page is served to others: no probing or listing of the server's other folders), and
messages show them relative to those folders."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from studio.config import ROOT, StudioConfig
from studio.errors import ModelError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ASSETS = ROOT / "assets"


def allowed_roots(config: StudioConfig) -> list[Path]:
    """The folders models may come from unless allow_any_path: assets/ (and the configured embedded folders), the
    models folder."""
    return [ASSETS, Path(config.assets_dir), Path(config.controlnets_dir), Path(config.models_dir)]


def root_of(path: Path, config: StudioConfig) -> tuple[Path, Path] | None:
    """(allowed folder, path relative to it) if the path lies inside one, else None. No `..` anywhere; links inside
    an allowed folder (put there by whoever runs the studio) are followed, as for names."""
    if ".." in path.parts:
        return None
    lexical, real = Path(os.path.abspath(path)), path.resolve()
    for root in allowed_roots(config):
        for inside, base in ((lexical, Path(os.path.abspath(root))), (real, root.resolve())):
            if inside == base or base in inside.parents:
                return base, inside.relative_to(base)
    return None


def shown(path: Path, config: StudioConfig) -> str:
    """A path as messages show it: relative to its allowed folder (`models/sd15`, `assets/models/shapes-v1`)."""
    found = root_of(path, config)
    if found is None:
        return str(path)  # only reachable with allow_any_path: the path the user typed
    base, rel = found
    return base.name if rel == Path(".") else f"{base.name}/{rel}"


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the user typed or picked
    kind: str  # "folder", "single_file" or "hub"
    location: str  # a path, or a hub id
    embedded: bool = False

    @property
    def name(self) -> str:
        return Path(self.location).stem if self.kind != "hub" else self.location


# Files found readable, by (path, size, modification time): a model is resolved again on every request, and
# re-reading each header cost about 0.5 ms a file (2-3 ms an image on the suite); a changed file is checked again.
_READABLE: set[tuple[str, int, int]] = set()


def check_safetensors(path: Path, name: str | None = None) -> None:
    """Refuse a truncated or corrupt safetensors file before any loader sees it."""
    try:
        stat = path.stat()
        seen = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        seen = None
    if seen in _READABLE:
        return
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
        raise ModelError(f"{name or path.name} is not a readable safetensors file (truncated or corrupt download?): {e}") from e
    if seen is not None:
        _READABLE.add(seen)


def check_folder(path: Path, config: StudioConfig) -> None:
    """A diffusers pipeline folder: model_index.json plus readable weights for each component."""
    where = shown(path, config)
    if not (path / "model_index.json").is_file():
        # List what is there only inside the allowed folders: never a listing of any other folder of the server.
        found = (" (found: " + (", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing") + ")"
                 if root_of(path, config) else "")
        raise ModelError(
            f"{where} is not a diffusers model folder: it has no model_index.json{found}. "
            "Point at a folder saved by diffusers' save_pretrained, or at a single .safetensors checkpoint."
        )
    found = list(path.glob("*/*.safetensors"))
    for weights in found:
        check_safetensors(weights, f"{where}/{weights.relative_to(path)}")
    pickles = [p for p in path.glob("*/*") if p.suffix in PICKLE_SUFFIXES]
    has_safetensors = {p.parent for p in found}
    unsafe = [p for p in pickles if p.parent not in has_safetensors]
    if unsafe and not config.allow_pickle:
        raise ModelError(
            f"{where} has pickle weights with no safetensors beside them ({', '.join(str(p.relative_to(path)) for p in unsafe[:4])}). "
            "Pickle files can run code when loaded; convert them to safetensors, or start the studio with --allow-pickle if you trust them."
        )


def is_controlnet_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "ControlNet" in json.loads(config.read_text()).get("_class_name", "")
    except (ValueError, OSError):
        return False


def check_controlnet_folder(path: Path, config: StudioConfig) -> None:
    """A diffusers ControlNetModel folder: config.json naming a ControlNet, and readable weights."""
    where = shown(path, config)
    if not is_controlnet_folder(path):
        raise ModelError(f"{path.name!r} is a folder but not a ControlNet (its config.json should name ControlNetModel).")
    weights = sorted(path.glob("*.safetensors"))
    for f in weights:
        check_safetensors(f, f"{where}/{f.name}")
    if not weights:
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if not pickles:
            raise ModelError(f"ControlNet folder {where} has no weights (.safetensors).")
        if not config.allow_pickle:
            raise ModelError(f"ControlNet folder {where} has only pickle weights ({', '.join(pickles)}), which can run code "
                             "when loaded. Convert them to safetensors, or start the studio with --allow-pickle if you trust them.")


@dataclass(frozen=True)
class Catalog:
    """One kind of weights: where named ones live, what a folder of that kind is, how it is checked."""

    what: str  # "model", "ControlNet": for messages
    bases: Callable[[StudioConfig], list[tuple[Path, bool]]]  # (folder, embedded), searched in order for plain names
    is_folder: Callable[[Path], bool]
    check: Callable[[Path, StudioConfig], None]
    single_files: bool  # whether a .safetensors checkpoint is one of these
    download_to: str  # where a downloaded hub id goes, relative to the studio folder


MODELS = Catalog("model", lambda c: [(Path(c.assets_dir), True), (Path(c.models_dir), False)],
                 lambda p: (p / "model_index.json").is_file(), check_folder, True, "models/{name}")
CONTROLNETS = Catalog("ControlNet", lambda c: [(Path(c.controlnets_dir), True), (Path(c.models_dir) / "controlnet", False)],
                      is_controlnet_folder, check_controlnet_folder, False, "models/controlnet/{name}")


def resolve(spec: str, config: StudioConfig, catalog: Catalog = MODELS) -> ModelSource:
    """Turn a spec (embedded name, folder, file, hub id) into a checked ModelSource of the catalog's kind, or raise ModelError."""
    spec = (spec or "").strip()
    what = catalog.what
    if not spec:
        files = ", a .safetensors file" if catalog.single_files else ""
        raise ModelError(f"No {what} chosen. Pick one from the list, or type a diffusers folder{files} or a hub id.")
    # 1. A name in the embedded assets or the models folder. Only a plain relative name: joining an absolute path
    # (or one with ~ or ..) to a base folder would yield that path itself, marked embedded.
    as_path = Path(spec)
    is_name = not as_path.is_absolute() and not spec.startswith("~") and ".." not in as_path.parts
    for base, embedded in catalog.bases(config) if is_name else ():
        candidate = base / spec
        if candidate.is_dir():
            catalog.check(candidate, config)
            return ModelSource(spec, "folder", str(candidate), embedded)
        if candidate.is_file() and catalog.single_files:
            return _file_source(spec, candidate, config, embedded)
    # 2. A path on disk: inside the allowed folders only (unless allow_any_path). Outside them it is never looked
    # at, so the answer is the same whether it exists or not: nothing to learn about the server's other folders.
    path = as_path.expanduser()
    reachable = config.allow_any_path or root_of(path, config) is not None
    if reachable and path.is_dir():
        catalog.check(path, config)
        return ModelSource(spec, "folder", str(path.resolve()))
    if reachable and path.is_file() and catalog.single_files:
        return _file_source(spec, path, config)
    looks_like_path = spec.startswith((".", "/", "~")) or "\\" in spec or as_path.suffix in (".safetensors",) + PICKLE_SUFFIXES
    if looks_like_path and not reachable:
        raise ModelError(f"{what[0].upper() + what[1:]} {spec!r} is outside the models folder and assets/, and the studio "
                         f"loads {what}s only from those. Put it in the models folder (then pick it from the list), or "
                         "start the studio with --allow-any-path.")
    if looks_like_path or not HUB_ID.match(spec):
        raise ModelError(f"{what[0].upper() + what[1:]} {spec!r} not found: no such folder or file, and it is not one of "
                         f"the listed {what}s.")
    # 3. A hub id.
    if not config.online:
        target = catalog.download_to.format(name=spec.split("/")[-1])
        raise ModelError(
            f"{spec!r} looks like a hub id, but the studio is offline. Download it on a connected machine "
            f"(e.g. `hf download {spec} --local-dir {target}`), then pick that folder, or start with --online."
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
        raise ModelError(f"{shown(path, config)} is not a model file: expected a diffusers folder or a .safetensors checkpoint.")
    return ModelSource(spec, "single_file", str(path.resolve()), embedded)


def list_names(config: StudioConfig, catalog: Catalog = MODELS) -> list[str]:
    """Choices for a picker: the embedded ones first, then the models folder's."""
    names: list[str] = []
    for base, _ in catalog.bases(config):
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir()):
            fits = catalog.is_folder(p) if p.is_dir() else (catalog.single_files and p.suffix == ".safetensors")
            if fits and p.name not in names:
                names.append(p.name)
    return names


def list_models(config: StudioConfig) -> list[str]:
    return list_names(config, MODELS)


def list_controlnets(config: StudioConfig) -> list[str]:
    return list_names(config, CONTROLNETS)
