"""What the engines run (studio.engines): the parts as modules with tensor-only inputs, ONNX export, the runtimes
(ONNX Runtime, OpenVINO, torch.compile) behind one calling convention, cache keys and timings."""
from __future__ import annotations

import hashlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def runtime_versions() -> str:
    """The libraries an export and its runtimes depend on (a new version builds afresh)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "openvino"):
        try:
            found.append(f"{name}={version(name)}")
        except PackageNotFoundError:
            pass
    return ",".join(found)


def content_hash(files: list[Path], modules: list[torch.nn.Module] = ()) -> str:
    """A fingerprint of the parts' weights and configs, with the runtime versions. Of files (headers alone are the
    same for two trainings of one architecture): the whole file up to 256 MiB, else 16 MiB from each end, with the
    size; of modules when no file is known (tensors' bytes)."""
    digest = hashlib.sha256(runtime_versions().encode())
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for f in files:
        size = f.stat().st_size
        digest.update(str(size).encode())
        with open(f, "rb") as raw:
            if size <= 256 * 2**20:
                for chunk in iter(lambda: raw.read(2**22), b""):
                    digest.update(chunk)
            else:
                digest.update(raw.read(2**24))
                raw.seek(size - 2**24)
                digest.update(raw.read(2**24))
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- the parts, as modules with tensor-only inputs
class UNetCall(torch.nn.Module):
    """(sample, timestep per row, encoder_hidden_states) -> the UNet's output: the loop's plain call."""

    input_names = ["sample", "timestep", "encoder_hidden_states"]
    folder = "unet"  # where a diffusers folder keeps its weights and config (they key the engines' cache)

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class DecoderCall(torch.nn.Module):
    """UNet-space latents -> image in [-1, 1]: as previews.vae_decode (scaling and shift inside)."""

    input_names = ["latents"]
    folder = "vae"

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def forward(self, latents):
        return self.vae.decode(latents / self.scale + self.shift, return_dict=False)[0]


class TextCall(torch.nn.Module):
    """Token ids (padded to the tokenizer's length) -> the text encoder's last hidden state: what diffusers'
    encode_prompt takes from a CLIP text encoder for SD 1.x/2.x and the suite (no attention mask, no clip skip)."""

    input_names = ["input_ids"]
    folder = "text_encoder"
    integer_inputs = True  # token ids: a cached engine is checked on zeros, not on random floats

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids, return_dict=False)[0]


# ONNX Runtime's sessions (a UNet and a decoder per model and image size) share one process-wide thread pool, sized
# by the first session (`threads`). With a pool per session (ORT's default), the pool that just ran spins on the CPU
# while the next session, or PyTorch between steps, wants it: measured here on 2 cores, the suite and the flow suite
# alternating, 25 DPM++ 2M steps 0.41-0.47 s an image and 8 flow steps 0.17-0.20 s with a pool per session, 0.38-0.51
# and 0.12-0.17 s with the shared one (three runs each, taken in turns).
_SHARED_POOL: list[int] = []


def _shared_pool(threads: int) -> None:
    """Size ONNX Runtime's process-wide pool before its first session (later calls change nothing)."""
    if not _SHARED_POOL:
        from onnxruntime.capi import _pybind_state

        _pybind_state.set_global_thread_pool_sizes(threads, 1)
        _SHARED_POOL.append(threads)


def _numpy_runner(fn: Callable[[list[np.ndarray]], np.ndarray]) -> Callable[..., torch.Tensor]:
    def run(*tensors: torch.Tensor) -> torch.Tensor:
        arrays = [(t.detach().float() if t.is_floating_point() else t.detach()).contiguous().numpy() for t in tensors]
        return torch.from_numpy(np.ascontiguousarray(fn(arrays)))
    return run


def export_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], folder: Path) -> Path:
    """torch.onnx's exporter (torch.export based), static shapes, with its graph optimizations, into `folder`
    (model.onnx and its weights, model.onnx.data), made in a temporary folder and renamed when complete."""
    path = folder / "model.onnx"
    if path.is_file():
        return path
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        with torch.no_grad():
            torch.onnx.export(module, inputs, str(tmp / "model.onnx"), dynamo=True, input_names=module.input_names,
                              output_names=["out"], optimize=True, verbose=False, external_data=True)
        try:
            tmp.replace(folder)
        except OSError:
            if not path.is_file():  # another process finished the same export first: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def onnx_runner(path: Path, threads: int) -> Callable[..., torch.Tensor]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    _shared_pool(threads)
    options.use_per_session_threads = False
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return _numpy_runner(lambda arrays: session.run(None, dict(zip(names, arrays)))[0])


def openvino_runner(path: Path, threads: int, cache: Path, precision: str = "f32") -> Callable[..., torch.Tensor]:
    """`precision` f32 by default: on CPUs with bf16 units OpenVINO's own default is bf16, which moved the UNet's
    output by 3e-2 (bench.engines measures it)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                     "INFERENCE_NUM_THREADS": threads, "CACHE_DIR": str(cache)})
    request = compiled.create_infer_request()
    dtypes = [i.get_element_type().to_dtype() for i in compiled.inputs]

    def run(arrays: list[np.ndarray]) -> np.ndarray:
        # The inputs as tensors over the arrays' own memory, set by index: `request.infer(arrays)` dispatched them
        # through OpenVINO's Python helpers at 0.44 ms a call, this 0.14 ms (the UNet's call is 11-15 ms). A tensor
        # set so is not converted (infer() did): converted here if its type differs. The output buffer is the
        # request's own and is reused: copied.
        for i, (array, dtype) in enumerate(zip(arrays, dtypes)):
            request.set_input_tensor(i, ov.Tensor(np.ascontiguousarray(array, dtype=dtype), shared_memory=True))
        request.infer()
        return request.get_output_tensor(0).data.copy()
    return _numpy_runner(run)


def compile_runner(module: torch.nn.Module) -> Callable[..., torch.Tensor]:
    compiled = torch.compile(module, dynamic=False)

    def run(*tensors):
        with torch.no_grad():
            return compiled(*tensors)
    return run


# ONNX Runtime's pool keeps spinning for about 40 ms after a call (measured here: 36-44 ms of CPU in the 100 ms after
# one), OpenVINO's for about 1 ms. Timed right after ONNX Runtime, any other function shared the two cores with that
# spinning: the engines' choice favoured ONNX Runtime (its UNet 1.19x OpenVINO's speed when timed back to back; 0.94x
# with a pause between turns, 20 turns of 10 calls, two runs), and a benchmark's baseline after the studio's call ran
# slower. So each turn starts after PAUSE_S of quiet.
PAUSE_S = 0.06


def timings(fns: dict[str, Callable[[], object]], rounds: int = 7, calls: int = 3, warmup: int = 1,
            pause: float = PAUSE_S, settle: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, taken in turns (A B C A B C ...) so that a busy moment or drift
    weighs on all alike; `calls` calls per turn, each turn after `pause` seconds without work and `settle` untimed
    calls (an engine's calls come back to back in a job: timed warm). The benchmarks use it too, without settling
    (bench.common.interleaved: a whole image, as a click starts it)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    seen: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(pause)
            for _ in range(settle):
                fn()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            seen[name].append((time.perf_counter() - t0) / calls)
    return {name: statistics.median(v) for name, v in seen.items()}
