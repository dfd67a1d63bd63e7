"""ModelManager: model spec -> loaded pipeline on one device; LRU under a memory budget; one accelerator lock; Stop."""
from __future__ import annotations

import gc
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from studio import sources
from studio.config import StudioConfig
from studio.errors import ModelError, StudioError
from studio.sampling.previews import latent_family


@dataclass
class LoadedModel:
    source: sources.ModelSource
    pipe: DiffusionPipeline
    nbytes: int
    model_hash: str

    @property
    def name(self) -> str:
        return self.source.spec

    @property
    def is_xl(self) -> bool:
        return isinstance(self.pipe, StableDiffusionXLPipeline)

    @property
    def family(self) -> str | None:
        return latent_family(dict(self.pipe.vae.config), dict(self.pipe.unet.config))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.vae_scale_factor


def _module_bytes(pipe: DiffusionPipeline) -> int:
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in list(component.parameters()) + list(component.buffers()))
    return total


def _weights_hash(source: sources.ModelSource) -> str:
    """A short, cheap fingerprint: sha256 of the UNet's (or checkpoint's) safetensors header, which lists every tensor."""
    location = Path(source.location)
    files = [location] if location.is_file() else sorted(location.glob("unet/*.safetensors"))
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as raw:
            n = int.from_bytes(raw.read(8), "little")
            digest.update(raw.read(min(n, 10_000_000)))
        digest.update(str(f.stat().st_size).encode())
    return digest.hexdigest()[:10] if files else ""


class ModelManager:
    """Owns model loading, the device, the accelerator lock and cancellation. One per app, passed to every tab."""

    def __init__(self, config: StudioConfig):
        self.config = config
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.RLock()  # guards the table of loaded models
        # Held for a whole job. A plain Lock, not an RLock: Gradio may resume a generator on another thread.
        self._accelerator = threading.Lock()
        self._stop = threading.Event()

    # ------------------------------------------------------------ budget
    @property
    def budget_bytes(self) -> int:
        if self.config.memory_budget_gb is not None:
            return int(self.config.memory_budget_gb * 2**30)
        if self.config.device.startswith("cuda") and not self.config.offload:
            return int(0.8 * torch.cuda.get_device_properties(torch.device(self.config.device)).total_memory)
        return 8 * 2**30

    def loaded(self) -> list[str]:
        return list(self._loaded)

    # ------------------------------------------------------------ loading
    def get(self, spec: str) -> LoadedModel:
        """The loaded model for a spec, loading it (and freeing least recently used ones) when needed."""
        source = sources.resolve(spec, self.config)
        key = source.location
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            pipe = self._load(source)
            model = LoadedModel(source, pipe, _module_bytes(pipe), _weights_hash(source))
            while self._loaded and sum(m.nbytes for m in self._loaded.values()) + model.nbytes > self.budget_bytes:
                self._evict(next(iter(self._loaded)))
            self._loaded[key] = model
            return model

    def _load(self, source: sources.ModelSource) -> DiffusionPipeline:
        kwargs = {"torch_dtype": self.config.dtype}
        try:
            if source.kind == "single_file":
                pipe = self._load_single_file(Path(source.location), kwargs)
            else:
                pipe = self._load_pretrained(source, kwargs)
        except StudioError:
            raise
        except Exception as e:  # noqa: BLE001 - loaders raise many types; the user needs the message
            raise ModelError(f"Could not load model {source.spec!r}: {type(e).__name__}: {e}") from e
        for required in ("unet", "vae"):
            if getattr(pipe, required, None) is None:
                raise ModelError(
                    f"{source.spec!r} is a {type(pipe).__name__}, which has no {required}; Generate supports "
                    "Stable Diffusion style UNet models (SD 1.x, 2.x, XL, Turbo and the embedded suite)."
                )
        pipe.set_progress_bar_config(disable=True)
        if self.config.offload and self.config.device != "cpu":
            pipe.enable_model_cpu_offload(device=self.config.device)
        else:
            pipe.to(self.config.device)
        return pipe

    def _load_pretrained(self, source: sources.ModelSource, kwargs: dict) -> DiffusionPipeline:
        location = source.location
        if source.kind == "folder":
            index = json.loads((Path(location) / "model_index.json").read_text())
            if "safety_checker" in index:
                kwargs.update(safety_checker=None, requires_safety_checker=False)
        use_safetensors = None if self.config.allow_pickle else True
        return DiffusionPipeline.from_pretrained(
            location, use_safetensors=use_safetensors, local_files_only=not self.config.online, **kwargs
        )

    def _load_single_file(self, path: Path, kwargs: dict) -> DiffusionPipeline:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            is_xl = any(k.startswith("conditioner.embedders.1") for k in f.keys())
        cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
        try:
            return cls.from_single_file(str(path), local_files_only=not self.config.online, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise ModelError(
                f"Could not load the single-file checkpoint {path.name}: {e}. Offline, diffusers needs the matching "
                "model configs in the local Hugging Face cache; alternatively convert it once to a diffusers folder "
                "and put that in the models folder."
            ) from e

    def _evict(self, key: str) -> None:
        model = self._loaded.pop(key)
        model.pipe.to("cpu") if not self.config.offload else None
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def unload(self, spec: str | None = None) -> None:
        """Free one model (by spec), or all."""
        with self._lock:
            keys = list(self._loaded) if spec is None else [sources.resolve(spec, self.config).location]
            for key in keys:
                if key in self._loaded:
                    self._evict(key)

    # ------------------------------------------------------------ accelerator lock and Stop
    @contextmanager
    def session(self) -> Iterator[None]:
        """Hold the accelerator for one job; a Stop pressed before this job started does not carry over."""
        with self._accelerator:
            self._stop.clear()
            try:
                yield
            finally:
                self._stop.clear()

    def request_stop(self) -> None:
        self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set()
