"""ModelManager: model spec -> loaded pipeline on one device; LRU under a memory budget; one accelerator lock; Stop."""
from __future__ import annotations

import gc
import hashlib
import json
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from studio import engines, sources
from studio.config import StudioConfig
from studio.errors import Cancelled, ModelError, StudioError
from studio.loaded import LoadedModel, denoiser_name

__all__ = ["LoadedModel", "ModelManager", "denoiser_name"]


TINY_VAE_DIR = "vae_tiny"  # a model folder's own tiny autoencoder (AutoencoderTiny, TAESD's format)
TAESD_DIRS = {"sd1": "taesd", "sdxl": "taesdxl", "sd3": "taesd3"}  # or one per latent family in the models folder
MAX_CONTROLNETS = 4  # ControlNets kept loaded (least recently used dropped first)
CONFIG_SUFFIX = ".config"  # `model.safetensors` + `model.config`: a text file naming a diffusers folder for its configs


_BLOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The entries of a module's ModuleLists (where Stop is checked), found once per module: walking a UNet's
    modules took 0.4 ms a job. LoRAs and hooks add layers inside these blocks, never blocks to the lists."""
    if module not in _BLOCKS:
        _BLOCKS[module] = [block for m in module.modules() if isinstance(m, torch.nn.ModuleList) for block in m]
    return _BLOCKS[module]


def _checkpoint_keys(path: Path) -> list[str]:
    """Tensor names of a single-file checkpoint (safetensors header, or a trusted pickle when allowed)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    return list(load_single_file_checkpoint(str(path)))


def _module_bytes(pipe: DiffusionPipeline) -> int:
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in list(component.parameters()) + list(component.buffers()))
    return total


def _weights_hash(source: sources.ModelSource, denoiser: str, sample: int = 2**16) -> str:
    """A short, cheap fingerprint: sha256 of the denoiser's (or checkpoint's) safetensors header, which lists every
    tensor, and of `sample` bytes of its weights at the start, middle and end of the tensor data (the header alone is
    the same for every fine-tune of one architecture). `denoiser` is its folder: "unet" or "transformer"."""
    location = Path(source.location)
    if location.is_file():
        files = [location]
    else:  # pickle weights (allowed with --allow-pickle) when the denoiser has no safetensors
        files = sorted(location.glob(f"{denoiser}/*.safetensors")) or sorted(
            p for p in location.glob(f"{denoiser}/*") if p.suffix in sources.PICKLE_SUFFIXES
        )
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as raw:
            if f.suffix == ".safetensors":
                n = int.from_bytes(raw.read(8), "little")
                digest.update(raw.read(min(n, 10_000_000)))
                start, size = 8 + n, f.stat().st_size
                for at in (start, (start + size) // 2, size - sample):
                    raw.seek(max(start, at))
                    digest.update(raw.read(sample))
            else:  # no header listing the tensors: the first MiB stands in for it
                digest.update(raw.read(2**20))
        digest.update(str(f.stat().st_size).encode())
    return digest.hexdigest()[:10] if files else ""


class ModelManager:
    """Owns model loading, the device, the accelerator lock and cancellation. One per app, passed to every tab."""

    def __init__(self, config: StudioConfig):
        self.config = config
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._specs: dict[str, str] = {}  # spec -> location of a model loaded for it (no second check of its files)
        self._lock = threading.RLock()  # guards the table of loaded models
        # Held for a whole job. A plain Lock, not an RLock: Gradio may resume a generator on another thread.
        self._accelerator = threading.Lock()
        self._stop = threading.Event()
        self.jobs_started = 0  # the engines' builder retakes a timing that a job ran beside
        self._owner: str | None = None  # who started the running job (a page session); None: the CLI or a test
        self.speeds: dict[tuple, float] = {}  # seconds per model call, by (model, size, rows): cost estimates
        self._controlnets: OrderedDict[str, object] = OrderedDict()

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

    def loaded_models(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    # ------------------------------------------------------------ loading
    def get(self, spec: str) -> LoadedModel:
        """The loaded model for a spec, loading it (and freeing least recently used ones) when needed. A spec whose
        model is loaded (and whose folder or file is still there) is not resolved again: its weights are in memory."""
        with self._lock:
            key = self._specs.get(spec)
            if key in self._loaded and Path(key).exists():
                self._loaded.move_to_end(key)
                return self._loaded[key]
        source = sources.resolve(spec, self.config)
        key = source.location
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                self._specs[spec] = key
                return self._loaded[key]
            pipe = self._load(source)  # still on the CPU
            model = LoadedModel(source, pipe, _module_bytes(pipe), _weights_hash(source, denoiser_name(pipe)))
            # Free least recently used models before the new one takes accelerator memory.
            while self._loaded and sum(m.nbytes for m in self._loaded.values()) + model.nbytes > self.budget_bytes:
                self._evict(next(iter(self._loaded)))
            self._place(pipe)
            model.engines = self._engines_for(model)
            model.tiny_vae = self._tiny_vae_for(model)
            self._loaded[key] = model
            self._specs[spec] = key
            return model

    def _tiny_vae_for(self, model: LoadedModel) -> torch.nn.Module | None:
        """The model folder's vae_tiny/, else the models folder's TAESD folder for its latent family, if present."""
        from diffusers import AutoencoderTiny

        location = Path(model.source.location)
        found = [location / TINY_VAE_DIR] if location.is_dir() else []
        if model.family in TAESD_DIRS:
            found.append(Path(self.config.models_dir) / TAESD_DIRS[model.family])
        folder = next((f for f in found if (f / "config.json").is_file()), None)
        if folder is None:
            return None
        try:
            tiny = AutoencoderTiny.from_pretrained(folder, local_files_only=True, torch_dtype=self.config.dtype)
        except Exception as e:  # noqa: BLE001 - a broken optional part: the model works without it
            warnings.warn(f"Could not load the tiny decoder in {folder} ({type(e).__name__}: {e}); previews use "
                          "the linear map or the VAE, and fast DPS the VAE.", stacklevel=2)
            return None
        # channels_last: its 24-64-channel convolutions take oneDNN's faster path (fast DPS's decoder forward and
        # backward 7.3 -> 5.8 ms on the suite, CPU).
        return tiny.to(self.config.device, memory_format=torch.channels_last).eval().requires_grad_(False)

    def _engines_for(self, model: LoadedModel) -> engines.ModelEngines | None:
        """Engines for a UNet model's UNet, VAE decoder and CLIP text encoder (SD3-class models run eagerly)."""
        if denoiser_name(model.pipe) != "unet":
            return None
        parts = {"unet": engines.UNetCall(model.pipe.unet), "decoder": engines.DecoderCall(model.pipe.vae)}
        if not model.is_xl and isinstance(getattr(model.pipe, "text_encoder", None), CLIPTextModel):
            parts["text_encoder"] = engines.TextCall(model.pipe.text_encoder)  # (XL encodes through its pipeline)
        files = engines.weight_files(Path(model.source.location), parts)
        return engines.ModelEngines(self.config.engine, self.config.cache_dir, files, parts, self.config.device,
                                    idle=lambda: not self.busy(), jobs=lambda: self.jobs_started)

    def _load(self, source: sources.ModelSource) -> DiffusionPipeline:
        kwargs = {"dtype": self.config.dtype}
        try:
            if source.kind == "single_file":
                pipe = self._load_single_file(Path(source.location), kwargs)
            else:
                pipe = self._load_pretrained(source, kwargs)
        except StudioError:
            raise
        except Exception as e:  # noqa: BLE001 - loaders raise many types; the user needs the message
            raise ModelError(f"Could not load model {source.spec!r}: {type(e).__name__}: {e}") from e
        for required, present in (("unet (or SD3 transformer)", denoiser_name(pipe)), ("vae", getattr(pipe, "vae", None))):
            if present is None:
                raise ModelError(
                    f"{source.spec!r} is a {type(pipe).__name__}, which has no {required}; Generate supports "
                    "Stable Diffusion style UNet models (SD 1.x, 2.x, XL, Turbo and the embedded suite) and SD3-class "
                    "transformer models (SD3, SD3.5)."
                )
        pipe.set_progress_bar_config(disable=True)
        # Inference only: gradients (guidance, DPS) are taken with respect to latents, never weights; without this,
        # every backward pass would also compute the weights' gradients (a third of a UNet backward, measured).
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
        return pipe

    def _place(self, pipe: DiffusionPipeline) -> None:
        """Onto the accelerator, whole or (with --offload) part by part as each runs."""
        if self.config.offload and self.config.device != "cpu":
            pipe.enable_model_cpu_offload(device=self.config.device)
        else:
            pipe.to(self.config.device)
        if self.config.device == "cpu" and isinstance(getattr(pipe, "vae", None), torch.nn.Module):
            # channels_last: the decoder's convolutions take oneDNN's faster path on the CPU (the suite's 64x64
            # decode 13.5 -> 11 ms; encode and DPS's forward+backward unchanged). Unmeasured on GPUs: left there.
            pipe.vae.to(memory_format=torch.channels_last)

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
        is_xl = any(k.startswith("conditioner.embedders.1") for k in _checkpoint_keys(path))
        cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
        config_dir = self._single_file_config(path)
        if config_dir is not None:
            # Component configs and the tokenizer come from this local folder: no hub access needed.
            kwargs = {**kwargs, "config": str(config_dir)}
            index = json.loads((config_dir / "model_index.json").read_text())
            if "safety_checker" in index:
                kwargs.update(safety_checker=None, requires_safety_checker=False)
        try:
            return cls.from_single_file(str(path), local_files_only=not self.config.online, **kwargs)
        except Exception as e:  # noqa: BLE001
            if config_dir is not None:
                raise ModelError(
                    f"Could not load the single-file checkpoint {path.name} with the configs of {config_dir}: "
                    f"{type(e).__name__}: {e}. Check that {path.with_suffix(CONFIG_SUFFIX).name} names a diffusers "
                    "folder of the same architecture (SD 1.x, 2.x or XL) as the checkpoint."
                ) from e
            raise ModelError(
                f"Could not load the single-file checkpoint {path.name}: {type(e).__name__}: {e}. Offline, diffusers "
                "needs the matching model configs: put a text file "
                f"{path.with_suffix(CONFIG_SUFFIX).name} next to it naming a diffusers folder of the same "
                "architecture (a listed model or a path), or convert the checkpoint once to a diffusers folder "
                "and put that in the models folder."
            ) from e

    def _single_file_config(self, path: Path) -> Path | None:
        """The local diffusers folder named by `<checkpoint>.config` (a model name or a path), if there is one."""
        sidecar = path.with_suffix(CONFIG_SUFFIX)
        if not sidecar.is_file():
            return None
        lines = [line.strip() for line in sidecar.read_text().splitlines() if line.strip()]
        spec = lines[0] if lines else ""
        if spec and not Path(spec).expanduser().is_absolute() and (path.parent / spec).is_dir():
            spec = str(path.parent / spec)  # relative to the checkpoint's folder
        try:
            source = sources.resolve(spec, self.config)
        except ModelError as e:
            raise ModelError(f"{sidecar.name} should name a local diffusers folder to take configs from: {e}") from e
        if source.kind != "folder":
            raise ModelError(
                f"{sidecar.name} names {spec!r}, which is not a diffusers folder; it should name a folder with "
                "model_index.json (configs and tokenizer of the same architecture as the checkpoint)."
            )
        return Path(source.location)

    def _evict(self, key: str) -> None:
        model = self._loaded.pop(key)
        self._specs = {spec: at for spec, at in self._specs.items() if at != key}
        if not self.config.offload:
            model.pipe.to("cpu")
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def controlnet(self, spec: str, model: LoadedModel):
        """A ControlNetModel for a loaded base model, on its device; checked to fit that model (clear error if not)."""
        from studio.control import controlnet

        with self._lock:
            source = sources.resolve(spec, self.config, sources.CONTROLNETS)
            key = source.location
            if key not in self._controlnets:
                net = controlnet.load_controlnet(source, self.config)
                while len(self._controlnets) >= MAX_CONTROLNETS:
                    self._controlnets.popitem(last=False)
                self._controlnets[key] = net
            self._controlnets.move_to_end(key)
            net = self._controlnets[key]
        controlnet.check_compatible(net, model.pipe.unet, spec, model.name)
        return net.to(model.device)

    def park_controlnets(self) -> None:
        """After each job (however it ended): with --offload, ControlNets go back to the CPU like every other part."""
        if self.config.offload:
            with self._lock:
                for net in self._controlnets.values():
                    net.to("cpu")

    def unload(self, spec: str | None = None) -> None:
        """Free one model (by spec), or all."""
        with self._lock:
            keys = list(self._loaded) if spec is None else [sources.resolve(spec, self.config).location]
            if spec is None:
                self._controlnets.clear()
            for key in keys:
                if key in self._loaded:
                    self._evict(key)

    def clip(self):
        """(CLIPModel, tokenizer) from --clip-model for text guidance of real models, or None when not configured."""
        if self.config.clip_model is None:
            return None
        if not hasattr(self, "_clip"):
            folder = Path(self.config.clip_model)
            try:
                model = CLIPModel.from_pretrained(folder, local_files_only=True).to(self.config.device).eval().requires_grad_(False)
                self._clip = (model, CLIPTokenizer.from_pretrained(folder, local_files_only=True))
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"Could not load the CLIP model at {folder} for text guidance: {e}") from e
        return self._clip

    # ------------------------------------------------------------ accelerator lock and Stop
    @contextmanager
    def session(self) -> Iterator[None]:
        """Hold the accelerator for one job; a Stop pressed before this job started does not carry over."""
        with self._accelerator:
            # Cleared on entry only: a Stop pressed while a job finishes (or between a sweep's cells) still counts.
            self._stop.clear()
            self.jobs_started += 1
            try:
                yield
            finally:
                self.park_controlnets()

    def busy(self) -> bool:
        """Whether a job holds the accelerator."""
        return self._accelerator.locked()

    def claim(self, owner: str | None) -> None:
        """Name the owner of the job about to run (the page's jobs run one at a time, so it is the running one)."""
        self._owner = owner

    def request_stop(self, owner: str | None = None) -> bool:
        """Stop the running job if `owner` started it (None: whoever did). False when it is not theirs to stop or
        nothing runs: one user's Stop never ends another user's job."""
        if not self.busy() or (owner is not None and self._owner is not None and owner != self._owner):
            return False
        self._stop.set()
        return True

    def should_stop(self) -> bool:
        return self._stop.is_set()

    @contextmanager
    def interruptible(self, module: torch.nn.Module, call_limit: float | None = None,
                      over_limit: Callable[[], Exception] | None = None) -> Iterator[None]:
        """Let Stop end a job inside a model call too: a check before each block of `module` (the entries of its
        ModuleLists: a UNet's down/up blocks, resnets and attentions; a transformer's blocks), which raises Cancelled.
        A few dozen checks per call, so a step of a large image ends within one block's time.

        `call_limit`: a call that runs longer than this many seconds is cut the same way, raising `over_limit()`."""
        if getattr(module, "_orig_mod", None) is not None:  # torch.compile'd: hooks would break its graph
            yield
            return
        started = [time.monotonic()]

        def start(_module, _args):
            started[0] = time.monotonic()

        def check(_module, _args):
            if self._stop.is_set():
                raise Cancelled("Stopped during a step.")
            if call_limit is not None and time.monotonic() - started[0] > call_limit:
                raise over_limit() if over_limit else Cancelled("Stopped: a model call passed its time limit.")

        handles = [module.register_forward_pre_hook(start)]
        handles += [block.register_forward_pre_hook(check) for block in _blocks(module)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
