"""CPU engines (studio.engines): built in the background from the model's own UNet and decoder, equal to eager,
used for plain calls only, loaded from the cache after a restart; the prompt cache."""
from __future__ import annotations

import dataclasses
import itertools
import json
import time
import types

import numpy as np
import pytest
import torch

from studio import engines
from studio.events import Result
from studio.jobs import Txt2ImgRequest, txt2img
from studio.jobs.common import encode_prompt
from studio.manager import ModelManager
from studio.studio import Studio
from test_personalize import nonzero_lora

pytest.importorskip("onnxruntime")


def engine_config(config, tmp_path, engine="onnx"):
    return dataclasses.replace(config, engine=engine, cache_dir=tmp_path / "cache")


def run(manager, spec, **kw) -> Result:
    req = Txt2ImgRequest(prompt="a red circle", model=str(spec), steps=4, guidance_scale=5.0, seed=7, preview_every=0,
                         save=False, **kw)
    return [e for e in txt2img(manager, req) if isinstance(e, Result)][-1]


class Calls:
    """Counts the eager forward calls of a module (the fast path does not go through it)."""

    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))


def pixels(result: Result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(int)


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_engine_is_built_in_the_background_matches_eager_and_is_then_used(config, tiny_model_dir, tmp_path, engine):
    if not engines.installed(engine):
        pytest.skip(f"{engine} is not installed")
    manager = ModelManager(engine_config(config, tmp_path, engine))
    first = run(manager, tiny_model_dir)  # eager, while the engine builds
    assert "optimizing for this CPU" in first.engine
    model = manager.get(str(tiny_model_dir))
    model.engines.wait()
    assert not model.engines.pending()
    unet_calls, decoder_calls = Calls(model.pipe.unet), Calls(model.pipe.vae.decoder)
    second = run(manager, tiny_model_dir)
    assert unet_calls.n == 0 and decoder_calls.n == 0  # both parts ran on the engine
    assert model.engines.built("unet").engine == engine and model.engines.built("unet").max_abs_diff < 1e-4
    assert engines.LABELS[engine] in second.engine and "threads" in second.engine
    third = run(manager, tiny_model_dir)  # a second run on the engine gives the same image
    assert np.array_equal(pixels(second), pixels(third))
    sample_shape, step_shape, context_shape = model.engines.built_shapes("unet")[0]
    sample, context, steps = torch.randn(sample_shape), torch.randn(context_shape), torch.full(step_shape, 500.0)
    unet = model.engines.built("unet").run
    out = unet(sample, steps, context)
    kept = out.clone()
    unet(torch.randn(sample_shape), steps, context)
    assert torch.equal(out, kept)  # an output stays as returned after the next call (runtimes reuse their buffers)
    if engine == "openvino":  # an integer timestep is converted to the export's input type, as eager takes it
        assert torch.equal(unet(sample, steps.long(), context), out)
    assert np.abs(pixels(first) - pixels(second)).max() <= 1  # the same image (8-bit rounding at most)


def test_a_restart_with_a_warm_cache_uses_the_engine_from_the_first_call(config, tiny_model_dir, tmp_path):
    warm = ModelManager(engine_config(config, tmp_path))
    run(warm, tiny_model_dir)
    warm.get(str(tiny_model_dir)).engines.wait()
    restarted = ModelManager(engine_config(config, tmp_path))
    model = restarted.get(str(tiny_model_dir))
    calls = Calls(model.pipe.unet)
    result = run(restarted, tiny_model_dir)
    assert calls.n == 0 and not model.engines.pending()
    assert "ONNX Runtime" in result.engine
    # The app's warm-up loads the model and the engines recorded for it before any job.
    studio = Studio(engine_config(config, tmp_path))
    studio.warm_up().join()
    model = studio.manager.get(studio.default_model())
    assert model.engines.built("unet").engine == "onnx" and model.engines.built("decoder").engine == "onnx"
    assert model.engines.built("text_encoder").engine == "onnx"  # recorded for token ids: checked on integers
    assert "cached" in model.engines.built("text_encoder").notes  # loaded, not built again


def test_prompts_are_encoded_on_the_engine_as_diffusers_encodes_them(config, tiny_model_dir, tmp_path):
    manager = ModelManager(engine_config(config, tmp_path))
    run(manager, tiny_model_dir)  # queues the text encoder's build with the UNet's and the decoder's
    model = manager.get(str(tiny_model_dir))
    model.engines.wait()
    assert model.engines.built("text_encoder").engine == "onnx"
    calls = Calls(model.pipe.text_encoder)
    long = " ".join(["a small blue square beside a red circle"] * 12)  # longer than the tokenizer takes: truncated
    texts = (("a blue square", ""), (long, "blurry"))
    fast = [encode_prompt(model, prompt, negative, 2, True, (64, 64)) for prompt, negative in texts]
    assert calls.n == 0  # every text went through the engine
    for (prompt, negative), cond in zip(texts, fast):
        with torch.no_grad():
            pe, npe = model.pipe.encode_prompt(prompt, "cpu", 2, True, negative_prompt=negative)
        assert cond.embeds.shape == pe.shape and (cond.embeds - pe).abs().max() < 1e-4
        assert (cond.negative - npe).abs().max() < 1e-4
    calls.n = 0
    plain = model.pipe.tokenizer
    model.pipe.tokenizer = plain.__class__.from_pretrained(model.source.location, subfolder="tokenizer")  # as embeddings do
    try:
        encode_prompt(model, "a green star", "", 1, True, (64, 64))
    finally:
        model.pipe.tokenizer = plain
    assert calls.n == 2  # with an embedding's tokenizer the text encoder runs eagerly (its new tokens are not exported)


def test_a_broken_cache_entry_is_rebuilt_not_given_up(config, tiny_model_dir, tmp_path):
    first = ModelManager(engine_config(config, tmp_path))
    run(first, tiny_model_dir)
    first.get(str(tiny_model_dir)).engines.wait()
    for graph in (tmp_path / "cache").rglob("unet-*/model.onnx"):
        graph.write_bytes(b"not a graph")
    restarted = ModelManager(engine_config(config, tmp_path))
    run(restarted, tiny_model_dir)  # the broken entry fails to load: removed, and built again in the background
    engines_ = restarted.get(str(tiny_model_dir)).engines
    engines_.wait()
    assert engines_.built("unet").engine == "onnx"


def test_gradients_and_loras_run_eagerly_with_an_engine_built(config, tiny_model_dir, tmp_path):
    cfg = engine_config(config, tmp_path)
    cfg = dataclasses.replace(cfg, models_dir=tmp_path / "models")
    lora = nonzero_lora(cfg.models_dir / "lora" / "blob")
    manager = ModelManager(cfg)
    run(manager, tiny_model_dir)
    model = manager.get(str(tiny_model_dir))
    model.engines.wait()
    x, t, e = (torch.randn(s) for s in model.engines.built_shapes("unet")[0])
    with torch.no_grad():
        assert model.engines.call("unet", x, t, e) is not None
    assert model.engines.call("unet", x, t, e) is None  # with gradients on (guidance, DPS): eager
    calls = Calls(model.pipe.unet)
    with_lora = run(manager, tiny_model_dir, loras=((str(lora), 1.0),))
    assert calls.n == 4  # the LoRA's weights are not in the export: every step ran eagerly
    eager = ModelManager(cfg)
    assert np.abs(pixels(with_lora) - pixels(run(eager, tiny_model_dir, loras=((str(lora), 1.0),)))).max() <= 1


def test_a_timing_that_a_job_ran_beside_is_taken_again(tmp_path, monkeypatch):
    """Through build(): eager timed quietly, then the engine's timing with a job started during it (retaken), then
    one with a job still running at its end (retaken), then a quiet one, which is kept."""
    started, running = [0], [False]
    taken = iter([({"eager": 0.010}, None), ({"onnx": 0.050}, "start"), ({"onnx": 0.040}, "run"),
                  ({"onnx": 0.004}, None)])

    def set_timings(fns, **_):
        for fn in fns.values():
            fn()
        result, disturbance = next(taken)
        started[0] += disturbance == "start"
        running[0] = disturbance == "run"
        return result

    monkeypatch.setattr(engines, "timings", set_timings)
    monkeypatch.setattr(engines, "IDLE_SECONDS", 0.01)
    def idle():  # no job, but right after the timing that left one running
        was_running, running[0] = running[0], False
        return not was_running

    module = torch.nn.Linear(4, 4).eval()
    module.input_names = ["x"]  # as the parts name their inputs for the export
    built = engines.ModelEngines("onnx", tmp_path, [], {"part": module}, "cpu", idle=idle, jobs=lambda: started[0])
    choice = built.build(("part", ((1, 4),)), module, (torch.randn(1, 4),))
    assert choice.engine == "onnx" and choice.speedup == pytest.approx(0.010 / 0.004)
    busy = engines.ModelEngines("onnx", tmp_path, [], {}, "cpu", jobs=itertools.count().__next__)  # a job each time
    tries = iter([{"onnx": 1.0}, {"onnx": 2.0}, {"onnx": 3.0}, {"onnx": 4.0}])
    monkeypatch.setattr(engines, "timings", lambda fns, **_: next(tries))
    assert busy._quiet_timings({"onnx": lambda: None}) == {"onnx": 3.0}  # three tries, then the last is kept


def test_the_engines_cache_is_keyed_by_each_parts_files(tmp_path):
    vae = types.SimpleNamespace(config=types.SimpleNamespace(scaling_factor=0.18215, shift_factor=None))
    parts = {"unet": engines.UNetCall(torch.nn.Identity()), "decoder": engines.DecoderCall(vae),
             "text_encoder": engines.TextCall(torch.nn.Identity())}
    for folder in ("unet", "vae", "text_encoder"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text("{}")
        (tmp_path / folder / "model.safetensors" if folder != "text_encoder" else tmp_path / folder / "model.bin").touch()
    assert engines.weight_files(tmp_path, parts) == []  # a part without safetensors: its tensors are hashed instead
    (tmp_path / "text_encoder" / "model.safetensors").touch()
    files = engines.weight_files(tmp_path, parts)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "unet/model.safetensors", "vae/model.safetensors", "text_encoder/model.safetensors",
        "unet/config.json", "vae/config.json", "text_encoder/config.json"]
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.touch()
    assert engines.weight_files(checkpoint, parts) == [checkpoint]


def test_unknown_engines_are_refused_with_the_known_ones(config, tmp_path):
    with pytest.raises(ValueError, match="Known: auto, eager, compile, onnx, openvino"):
        engines.check_engine("fastest")


def test_eager_config_builds_nothing(config, tiny_model_dir, tmp_path):
    manager = ModelManager(engine_config(config, tmp_path, "eager"))
    result = run(manager, tiny_model_dir)
    assert result.engine.startswith("Engine: PyTorch eager") and not (tmp_path / "cache").exists()


def test_prompts_are_encoded_once_while_the_text_encoder_is_plain(manager, tiny_model_dir):
    model = manager.get(str(tiny_model_dir))
    calls = Calls(model.pipe.text_encoder)
    a = encode_prompt(model, "a red circle", "", 1, True, (64, 64))
    b = encode_prompt(model, "a red circle", "", 1, True, (64, 64))
    assert a is b and calls.n == 2  # prompt and negative, once
    encode_prompt(model, "a blue circle", "", 1, True, (64, 64))
    assert calls.n == 3  # a new prompt with the same negative: only the prompt is encoded
    encode_prompt(model, "a blue circle", "blurry", 1, True, (64, 64))
    assert calls.n == 4  # the new negative only
    plain = model.pipe.tokenizer
    model.pipe.tokenizer = plain.__class__.from_pretrained(model.source.location, subfolder="tokenizer")  # as embeddings do
    try:
        assert encode_prompt(model, "a red circle", "", 1, True, (64, 64)) is not a
    finally:
        model.pipe.tokenizer = plain


def test_timings_leave_a_quiet_pause_before_each_turn():
    """A runtime's threads spin after its calls (ONNX Runtime's for ~40 ms): each timed turn starts after a pause,
    so that the next candidate is not timed beside them."""
    from studio.engine_runtime import PAUSE_S, timings

    marks: list[tuple[str, float, float]] = []

    def work(name):
        def fn():
            t0 = time.perf_counter()
            sum(range(20000))
            marks.append((name, t0, time.perf_counter()))
        return fn

    seconds = timings({"a": work("a"), "b": work("b")}, rounds=3, calls=2, warmup=0)  # one untimed call first
    assert set(seconds) == {"a", "b"} and all(s > 0 for s in seconds.values())
    assert len(marks) == 18 and [m[0] for m in marks[:6]] == ["a"] * 3 + ["b"] * 3
    turn_starts = range(3, 18, 3)  # every third call (the untimed one) begins a new turn
    assert all(marks[i][1] - marks[i - 1][2] >= PAUSE_S * 0.95 for i in turn_starts)
    assert all(marks[i + 1][1] - marks[i][2] < PAUSE_S / 2 for i in turn_starts)  # then the timed calls, at once


def test_auto_runs_a_models_parts_on_the_runtime_of_its_unet(config, tiny_model_dir, tmp_path, monkeypatch):
    """The decoder follows the UNet's runtime even where another one times faster for it alone (two runtimes in one
    image cost more than their own timings show). The timings are set here: the UNet faster on OpenVINO, the
    decoder on ONNX Runtime."""
    if not (engines.installed("onnx") and engines.installed("openvino")):
        pytest.skip("needs ONNX Runtime and OpenVINO")
    # The UNet is built first although its job asked for the text encoder first; then the others in the order asked.
    alone = iter([{"onnx": 0.005, "openvino": 0.004}, {"onnx": 0.003, "openvino": 0.006},  # UNet, text encoder
                  {"onnx": 0.003, "openvino": 0.005}])  # decoder

    def set_timings(fns, **_):
        for fn in fns.values():
            fn()
        return {"eager": 0.010} if list(fns) == ["eager"] else next(alone)

    monkeypatch.setattr(engines, "timings", set_timings)
    manager = ModelManager(engine_config(config, tmp_path, "auto"))
    run(manager, tiny_model_dir)
    model = manager.get(str(tiny_model_dir))
    model.engines.wait()
    assert model.engines.built("unet").engine == "openvino"
    decoder = model.engines.built("decoder")
    assert decoder.engine == "openvino" and decoder.speedup == pytest.approx(2.0)
    record = json.loads(next((tmp_path / "cache").rglob(f"decoder-*.auto.*.{engines.RECORD_VERSION}.json")).read_text())
    assert record["chosen"] == "openvino" and record["onnx"]["speedup"] > record["openvino"]["speedup"]
    assert any("like the UNet" in note for note in record["notes"])
    text = model.engines.built("text_encoder")
    assert text.engine == "openvino" and text.speedup == pytest.approx(0.010 / 0.006)
