"""CPU engines for a loaded model's hot parts: the denoiser (a UNet) and the VAE decoder, run eagerly by PyTorch,
or exported once to ONNX and run by ONNX Runtime or OpenVINO, or compiled by torch.compile.

Built in the background, once per model, shape and machine, and cached (`<cache>/engines/<weights hash>/`): the
first requests run eagerly ("optimizing for this CPU"); later ones use the fast path. A built engine is kept
only if its output matches eager PyTorch's on the same input (max abs difference within `TOLERANCE`) and, with
`auto`, only if it is faster than eager in a timing on this machine; the fastest valid one wins.

The fast path is taken only for plain calls: on the CPU, without gradients (guidance and DPS need them), without
ControlNet residuals or SDXL's added conditioning, and without a LoRA in the UNet. Anything else runs eagerly,
so every feature works with every engine.
"""
from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from studio.engine_runtime import (DecoderCall, TextCall, UNetCall, compile_runner, content_hash, export_onnx,
                                   onnx_runner, openvino_runner, runtime_versions, timings)

__all__ = ["ENGINES", "Choice", "DecoderCall", "ModelEngines", "TextCall", "UNetCall", "check_engine", "compile_runner",
           "content_hash", "export_onnx", "installed", "onnx_runner", "openvino_runner", "runtime_versions",
           "weight_files"]

ENGINES = ("auto", "eager", "compile", "onnx", "openvino")
LABELS = {"eager": "PyTorch eager", "compile": "torch.compile", "onnx": "ONNX Runtime", "openvino": "OpenVINO"}
AUTO_CANDIDATES = ("onnx", "openvino")  # torch.compile takes minutes per shape here: only when asked for by name
IDLE_SECONDS = 1.5  # the builder's heavy stages wait for this long without a job
TOLERANCE = 1e-3  # max abs difference from eager on the same input (fp32 engines differ by ~1e-6)
# In a record's file name: records of an older measurement are timed again (their exports are reused). "v2": eager
# timed with no job thread's OpenMP team alive (studio.compute); v1 records (no suffix) show speed-ups 1.5-2.7x too high.
# "v3": each engine timed after a pause (engine_runtime.PAUSE_S); v2 timed OpenVINO inside ONNX Runtime's spinning.
# "v4": a model's parts on one runtime (ModelEngines._same_runtime_as_unet). "v5": a timing that a job ran beside is
# taken again (ModelEngines._quiet_timings); a v4 record may hold one such timing ("1.0x eager" seen).
RECORD_VERSION = "v5"


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise ValueError(f"Unknown engine {name!r}. Known: {', '.join(ENGINES)}.")
    return name


def weight_files(location: Path, parts: dict[str, torch.nn.Module]) -> list[Path]:
    """The files a model's parts come from, to key their engines' cache: a single-file checkpoint itself; in a folder,
    each part's safetensors and config (a changed scaling factor is a changed decoder). Empty, so that the tensors are
    hashed instead, when a part has no safetensors."""
    if location.is_file():
        return [location]
    weights = [sorted(location.glob(f"{part.folder}/*.safetensors")) for part in parts.values()]
    if not all(weights):
        return []
    return [w for found in weights for w in found] + [location / part.folder / "config.json" for part in parts.values()]


def installed(name: str) -> bool:
    """Whether an engine's runtime is importable (eager and compile come with PyTorch)."""
    if name == "onnx":
        return all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx", "onnxscript"))
    if name == "openvino":
        return all(importlib.util.find_spec(m) for m in ("openvino", "onnx", "onnxscript"))
    return name in ("eager", "compile")


@dataclass
class Choice:
    """What runs one part at one shape: the engine, its callable, and what was measured when it was chosen."""

    engine: str
    run: Callable[..., torch.Tensor] | None = None  # None: eager
    build_s: float = 0.0
    max_abs_diff: float = 0.0
    speedup: float = 1.0  # eager seconds / engine seconds, measured here
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.run is None:
            return "PyTorch eager" + (f" ({'; '.join(self.notes)})" if self.notes else "")
        return (f"{LABELS[self.engine]} {self.speedup:.1f}x eager (max diff {self.max_abs_diff:.0e}, "
                f"built in {self.build_s:.0f} s)")


# ---------------------------------------------------------------- one model's engines
class ModelEngines:
    """The engines of one loaded model: per (part, input shapes), a Choice once built; a background builder."""

    def __init__(self, choice: str, cache_dir: Path, weights: list[Path], parts: dict[str, torch.nn.Module],
                 device: str, threads: int | None = None, idle: Callable[[], bool] = lambda: True,
                 jobs: Callable[[], int] = lambda: 0):
        """`weights`: the files the parts' weights and configs come from (their content keys the cache); empty:
        the parts' tensors are hashed instead. `idle`: whether no job runs; the builder starts its heavy stages
        (export, timing) only then. `jobs`: how many jobs have started so far (a timing a job ran beside is taken
        again)."""
        self._idle, self._jobs = idle, jobs
        self.choice = check_engine(choice)
        self.device = device
        self.parts = parts  # "unet": UNetCall, "decoder": DecoderCall, "text_encoder": TextCall (live modules: eager)
        self.threads = threads or torch.get_num_threads()
        self._weights = weights
        self._cache_dir = Path(cache_dir)
        self._ready: dict[tuple, Choice] = {}
        self._pending: set[tuple] = set()
        self._lock = threading.Lock()
        # UNets first: the other parts follow the runtime of the UNet built before them (_same_runtime_as_unet), and
        # a job asks for its text encoder before its UNet.
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._queued = itertools.count()
        self._worker: threading.Thread | None = None
        if self.choice == "compile":  # inductor's caches (FX graphs, kernels) beside the exports: a restart reuses them
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self._cache_dir / "inductor"))

    @property
    def active(self) -> bool:
        """Whether any fast path can be used at all (an engine asked for, on the CPU)."""
        return self.choice != "eager" and self.device == "cpu"

    def candidates(self) -> list[str]:
        names = list(AUTO_CANDIDATES) if self.choice == "auto" else [self.choice]
        return [n for n in names if installed(n)]

    def cache(self) -> Path:
        if not hasattr(self, "_cache"):
            modules = [] if self._weights else list(self.parts.values())
            self._cache = self._cache_dir / "engines" / content_hash(self._weights, modules)
        return self._cache

    # ---------------------------------------------------------- calls
    def call(self, part: str, *inputs: torch.Tensor) -> torch.Tensor | None:
        """The part's output through the fast path if one is built for these shapes; else None (the caller runs
        eagerly), after queueing a build for them."""
        if not self.active or torch.is_grad_enabled() or any(t.device.type != "cpu" for t in inputs):
            return None
        if any(getattr(m, "peft_config", None) for m in self.parts[part].children()):
            return None  # a LoRA is loaded for this job: the exported weights are the plain model's
        key = (part, tuple(tuple(t.shape) for t in inputs))
        if key not in self._ready:
            self._request(key, inputs)  # loads a cached engine at once; else queues a build and runs eagerly
        ready = self._ready.get(key)
        if ready is None or ready.run is None:
            return None
        out = ready.run(*inputs)
        return out.to(inputs[0].dtype) if inputs[0].is_floating_point() else out

    def pending(self) -> bool:
        return bool(self._pending)

    def wait(self, timeout: float = 600.0) -> None:
        """Block until queued builds are done (the CLI before exiting, tests, benches)."""
        t0 = time.monotonic()
        while self._pending and time.monotonic() - t0 < timeout:
            time.sleep(0.05)

    def describe(self) -> str:
        """One line for the page: the engine of each built part, the threads, or that building goes on."""
        if not self.active:
            why = "an engine needs the CPU device" if self.choice != "eager" and self.device != "cpu" else ""
            return f"Engine: PyTorch eager{f' ({why})' if why else ''}, {torch.get_num_threads()} threads"
        parts = {}
        for (part, _shapes), choice in sorted(self._snapshot(), key=lambda kv: (kv[0][0] != "unet", str(kv[0]))):
            parts.setdefault(part, choice.describe())
        text = "; ".join(f"{part}: {d}" for part, d in parts.items()) or "PyTorch eager"
        if self._pending:
            text += f"; optimizing for this CPU ({', '.join(LABELS[n] for n in self.candidates()) or 'nothing installed'})"
        return f"Engine: {text}; {self.threads} threads"

    def _snapshot(self) -> list[tuple[tuple, Choice]]:
        with self._lock:
            return list(self._ready.items())

    def built(self, part: str) -> Choice | None:
        return next((c for (p, _), c in self._snapshot() if p == part), None)

    def built_shapes(self, part: str) -> list[tuple]:
        """The input shapes each built engine of a part serves."""
        return [shapes for (p, shapes), _ in self._snapshot() if p == part]

    # ---------------------------------------------------------- building
    def _record_path(self, key: tuple) -> Path:
        return self.cache() / f"{self._stem(key)}.{self.choice}.t{self.threads}.{RECORD_VERSION}.json"

    @staticmethod
    def _stem(key: tuple) -> str:
        part, shapes = key
        return f"{part}-" + "_".join("x".join(map(str, s)) for s in shapes)

    def _request(self, key: tuple, inputs: tuple[torch.Tensor, ...]) -> None:
        with self._lock:
            if key in self._pending or key in self._ready:
                return
            if not self.candidates():
                self._ready[key] = Choice("eager", notes=[f"{self.choice} is not installed"])
                return
            record = self._read_record(key)
            if record.get("chosen") == "eager":  # measured here before: no engine beat eager
                self._ready[key] = Choice("eager", notes=record.get("notes", []))
                return
            # The module to build from is copied now, on the job's thread, where call() has checked that no LoRA
            # is in it: a copy taken later by the builder could catch a LoRA job's weights.
            module = self._private(key[0])
            if record.get("chosen") in self.candidates():
                # Built and measured on this machine before: load it now (a second or two), no re-timing.
                try:
                    self._ready[key] = self.load_recorded(key, module, inputs, record)
                    return
                except Exception:  # noqa: BLE001 - a stale or broken cache entry: removed, built afresh below
                    shutil.rmtree(self.cache() / self._stem(key), ignore_errors=True)
                    self._record_path(key).unlink(missing_ok=True)
            self._pending.add(key)
            work = (key, module, tuple(t.detach().clone() for t in inputs))
            self._queue.put((key[0] != "unet", next(self._queued), work))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="engine-builder", daemon=True)
                self._worker.start()

    def preload(self) -> None:
        """Load every engine recorded in the cache for this model, engine choice and thread count (the shapes
        this machine ran before), so that the first job finds them ready."""
        if not self.active:
            return
        for path in sorted(self.cache().glob(f"*.{self.choice}.t{self.threads}.{RECORD_VERSION}.json")):
            try:
                record = json.loads(path.read_text())
                key = (record["part"], tuple(tuple(s) for s in record["shapes"]))
            except (OSError, ValueError, KeyError):
                continue
            if key[0] in self.parts and self._record_path(key) == path:
                integer = getattr(self.parts[key[0]], "integer_inputs", False)
                inputs = tuple(torch.zeros(s, dtype=torch.long) if integer else torch.randn(s) for s in key[1])
                with torch.no_grad():
                    self._request(key, inputs)

    def _read_record(self, key: tuple) -> dict:
        path = self._record_path(key)
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            return {}

    def _work(self) -> None:
        while True:
            self._wait_idle()  # before taking the next part: by then the job has asked for all of its parts
            with self._lock:  # exits only with nothing queued, so a request never waits on a worker that left
                if self._queue.empty():
                    self._worker = None
                    return
                key, module, inputs = self._queue.get()[2]
            try:
                choice = self.build(key, module, inputs)
            except Exception as e:  # noqa: BLE001 - a failed build leaves the part eager, with the reason shown
                choice = Choice("eager", notes=[f"building failed: {type(e).__name__}: {str(e)[:200]}"])
            with self._lock:
                self._ready[key] = choice
                self._pending.discard(key)

    def _wait_idle(self, timeout: float = 600.0) -> None:
        """Until no job has run for IDLE_SECONDS: on two cores an export beside a job made that job's image 5x
        slower (2.4 s eager, 11.8 s with the export beside it), and timings taken beside a job are wrong. A user
        who clicks again within that time keeps the CPU; an export already started still shares it."""
        t0 = quiet_since = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self._idle():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= IDLE_SECONDS:
                return
            time.sleep(0.1)

    def _private(self, part: str) -> torch.nn.Module:
        # A private copy: exporting or compiling must not touch the module that jobs are running. Without the
        # live module's hooks (a job's Stop checks would otherwise fire inside the export).
        module = copy.deepcopy(self.parts[part]).eval().requires_grad_(False)
        for m in module.modules():
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        return module

    def load_recorded(self, key: tuple, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], record: dict) -> Choice:
        """The engine chosen before for this part and shape, from the cache; checked once against eager."""
        name = record["chosen"]
        run = self._runner(name, module, inputs, self._stem(key))
        with torch.no_grad():
            diff = float((run(*inputs) - module(*inputs)).abs().max())
        if not diff <= TOLERANCE:
            raise RuntimeError(f"cached {name} differs by {diff:.1e}")
        entry = record[name]
        return Choice(name, run, entry["build_s"], diff, entry["speedup"], notes=["cached"])

    def build(self, key: tuple, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Choice:
        """Build each candidate engine for the part at these shapes, keep the valid ones, time them against eager
        here, and pick the fastest (with `auto`, only if it beats eager). The choice is recorded in the cache when
        something was measured (a failed build is tried again after a restart)."""
        with torch.no_grad():
            reference = module(*inputs)
            # Eager is timed first, before any runtime exists: ONNX Runtime's threads spin for a while after each
            # of its calls (which speeds up the next), and eager timed between them was slowed by that spinning.
            eager_s = self._quiet_timings({"eager": lambda: module(*inputs)})["eager"]
        found: list[Choice] = []
        notes = []
        for name in self.candidates():
            t0 = time.perf_counter()
            try:
                run = self._runner(name, module, inputs, self._stem(key))
                with torch.no_grad():
                    diff = float((run(*inputs) - reference).abs().max())
            except Exception as e:  # noqa: BLE001
                notes.append(f"{LABELS[name]} failed: {type(e).__name__}: {str(e)[:120]}")
                continue
            if not diff <= TOLERANCE:
                notes.append(f"{LABELS[name]} differs by {diff:.1e}")
                continue
            found.append(Choice(name, run, time.perf_counter() - t0, diff))
        if not found:
            return Choice("eager", notes=notes or ["no engine could be built"])
        self._wait_idle()  # a job running beside the timing would decide the choice
        with torch.no_grad():
            seconds = self._quiet_timings({c.engine: (lambda c=c: c.run(*inputs)) for c in found})
        for choice in found:
            choice.speedup = eager_s / seconds[choice.engine]
        best = max(found, key=lambda c: c.speedup)
        best = self._same_runtime_as_unet(key[0], key[1], found, best, notes)
        if self.choice == "auto" and best.speedup < 1.0:
            notes.append(f"{LABELS[best.engine]} was slower here ({best.speedup:.2f}x)")
            best = Choice("eager", notes=notes)
        record = {"notes": notes, "part": key[0], "shapes": [list(s) for s in key[1]], "chosen": best.engine,
                  **{c.engine: {"build_s": round(c.build_s, 2), "speedup": round(c.speedup, 3),
                                "max_abs_diff": c.max_abs_diff} for c in found}}
        path = self._record_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
        return best

    def _quiet_timings(self, fns: dict[str, Callable[[], object]], tries: int = 3) -> dict[str, float]:
        """timings() with no job beside them: a job that starts or runs during a timing decides the choice (a
        user's click 12 s after the first image recorded a UNet at "1.0x eager"), so such a timing is taken
        again after the next quiet spell, up to `tries` times. The first is taken at once (the caller waited)."""
        for attempt in range(tries):
            if attempt:
                self._wait_idle()
            started = self._jobs()
            seconds = timings(fns)
            if self._jobs() == started and self._idle():
                break
        return seconds

    def _unet_for(self, shapes: tuple) -> Choice | None:
        """The UNet engine built for the same latent size as a part's first input (the decoder's latents), else the
        newest UNet's (the text encoder's token ids have no latent size)."""
        unets = [(s, c) for (p, s), c in self._snapshot() if p == "unet"]
        same = [c for s, c in unets if tuple(s[0][2:]) == tuple(shapes[0][2:])]
        return (same or [c for _, c in unets] or [None])[-1]

    def _same_runtime_as_unet(self, part: str, shapes: tuple, found: list[Choice], best: Choice,
                              notes: list[str]) -> Choice:
        """With `auto`, a model's other parts run on the runtime its UNet runs on, when that one is valid for them and
        beats eager. Two runtimes in one image cost more than the parts' own timings show: ONNX Runtime's pool spins
        for ~40 ms after its last call, beside whatever runs next (OpenVINO's decoder; after its own decoder, the
        server's work on the result and the script). Measured through the API (one server per choice, 14 calls
        each, in turns): the suite with an OpenVINO UNet and an ONNX Runtime decoder 0.51 and 0.56 s an image, all
        on OpenVINO 0.46 and 0.51 s, although that decoder alone is 1.3x faster on ONNX Runtime."""
        unet = self._unet_for(shapes) if part != "unet" and self.choice == "auto" else None
        if unet is None or unet.run is None or unet.engine == best.engine:
            return best
        same = next((c for c in found if c.engine == unet.engine and c.speedup >= 1.0), None)
        if same is None:
            return best
        notes.append(f"on {LABELS[same.engine]} like the UNet ({LABELS[best.engine]} alone: {best.speedup:.1f}x)")
        return same

    def _runner(self, name: str, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], stem: str):
        if name == "compile":
            run = compile_runner(module)
            run(*inputs)  # compiles now, in the background (the inductor caches make a restart cheap)
            return run
        path = export_onnx(module, inputs, self.cache() / stem)
        if name == "onnx":
            return onnx_runner(path, self.threads)
        return openvino_runner(path, self.threads, self.cache() / "openvino")
