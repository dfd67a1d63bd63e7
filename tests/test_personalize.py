"""Personalize: training jobs (LoRA, DreamBooth, textual inversion) on tiny models, results used at once through
txt2img (equal to diffusers' own LoRA loading), formats, resume, bad input, the CLI and accelerate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from studio import metadata
from studio.config import StudioConfig
from studio.errors import ModelError, RequestError, StudioError
from studio.events import Notice, Result, Samples, TrainStep
from studio.jobs import Txt2ImgRequest, params_to_request, txt2img
from studio.jobs.train import TrainRequest, train
from studio.manager import ModelManager
from studio.personalize import adapters, data, lora, tokens
from tests.conftest import tiny_components

ROOT = Path(__file__).resolve().parent.parent
UNET_LAYERS = tuple(f".{t}" for t in lora.UNET_TARGETS + lora.CONV_TARGETS)


def draw(k: int, size: int = 32, colour=(220, 30, 30)) -> Image.Image:
    img = Image.new("RGB", (size, size), (200 - 5 * k, 200, 195))
    ImageDraw.Draw(img).ellipse([4 + k, 6, 20 + k, 24], fill=colour)
    return img


@pytest.fixture()
def pconfig(tmp_path, tiny_model_dir) -> StudioConfig:
    """The tiny model alone in a models folder of this test's own (results land there, not in the shared one)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-sd").symlink_to(tiny_model_dir)
    return StudioConfig(models_dir=models, outputs_dir=tmp_path / "outputs", assets_dir=tmp_path / "no-assets")


@pytest.fixture()
def pmanager(pconfig) -> ModelManager:
    return ModelManager(pconfig)


@pytest.fixture()
def image_dir(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        draw(k).save(folder / f"img-{k}.png")
    (folder / "img-0.txt").write_text("a red <tok>")
    return folder


def run_job(manager, **kw) -> list:
    req = TrainRequest(**{"model": "tiny-sd", "token": "<blob>", "class_word": "circle", "steps": 4, "batch": 2,
                          "sample_every": 10**6, **kw})
    return list(train(manager, req))


def steps_of(events) -> list[float]:
    return [e.loss for e in events if isinstance(e, TrainStep)]


def image(manager, **kw) -> np.ndarray:
    req = Txt2ImgRequest(**{"model": "tiny-sd", "prompt": "a red circle", "steps": 3, "seed": 5, "save": False, **kw})
    return [e for e in txt2img(manager, req) if isinstance(e, Result)][-1].pixels


def nonzero_lora(folder: Path, cross_dim: int = 32, seed: int = 0, alpha: float = 8.0) -> Path:
    """A LoRA of the tiny model's shape (or another cross-attention width) whose B is not zero, saved as training does."""
    comps = tiny_components(cross_dim=cross_dim)
    unet, text_encoder = comps["unet"], comps["text_encoder"]
    lora.add_unet_lora(unet, rank=4, alpha=alpha, conv=True)
    lora.add_text_lora(text_encoder, rank=4, alpha=alpha)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in list(unet.named_parameters()) + list(text_encoder.named_parameters()):
            if "lora_B" in name:
                p.normal_(0, 0.3)
    lora.save_lora(folder, folder.name, unet, text_encoder, alpha)
    return folder


# ---------------------------------------------------------------- input checks
def test_lora_tags_are_parsed_and_stripped():
    clean, found = adapters.parse_prompt("a <lora:heart:0.8> red <lora:style> circle")
    assert clean == "a red circle" and found == [("heart", 0.8), ("style", 1.0)]


@pytest.mark.parametrize("token, words", [("", "empty"), ("two words", "spaces"), ("<|endoftext|>", "reserved"),
                                          ("<lora:x>", "reserved"), ("circle", "already a word"), ("RED", "already a word")])
def test_bad_tokens_are_refused_with_a_reason(token, words):
    tokenizer = tiny_components()["tokenizer"]
    with pytest.raises(RequestError, match=words):
        tokens.check_token(tokenizer, token)


def test_bad_image_sets_are_refused_and_mixed_sizes_said(tmp_path):
    with pytest.raises(RequestError, match="No training images"):
        data.prepare_images([], 32, "a <tok>", "<t>", "")
    with pytest.raises(RequestError, match="at least 3"):
        data.prepare_images([("a.png", draw(0), None)], 32, "a <tok>", "<t>", "")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4 not an image")
    for k in range(3):
        draw(k).save(tmp_path / f"{k}.png")
    with pytest.raises(RequestError, match="notes.pdf is not an image"):
        data.prepare_images(data.read_folder(tmp_path), 32, "a <tok>", "<t>", "")
    mixed = [("a.png", draw(0, 40), None), ("b.png", draw(1, 64).crop((0, 0, 64, 48)), "a photo of <tok> <class>"),
             ("c.png", draw(2), None)]
    images, notes = data.prepare_images(mixed, 32, "a <tok>", "<t>", "circle")
    assert all(im.image.size == (32, 32) for im in images) and "resized to 32x32" in notes[0]
    assert [im.caption for im in images] == ["a <t>", "a photo of <t> circle", "a <t>"]


def test_mismatched_pickle_corrupt_or_foreign_loras_are_refused(pmanager, pconfig, tmp_path):
    other = nonzero_lora(pconfig.models_dir / "lora" / "wide", cross_dim=64)
    with pytest.raises(ModelError, match="made for another base model.*32 in the model|made for another base model"):
        image(pmanager, loras=(("wide", 1.0),))
    foreign = pconfig.models_dir / "lora" / "foreign.safetensors"
    save_file({"lora_unet_nothing_here.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_nothing_here.lora_up.weight": torch.zeros(8, 4)}, str(foreign))
    with pytest.raises(ModelError, match="foreign"):
        image(pmanager, prompt="a circle <lora:foreign:1>")
    torch.save({"x": torch.zeros(1)}, pconfig.models_dir / "lora" / "pickled.bin")
    with pytest.raises(ModelError, match="pickle"):
        image(pmanager, loras=((str(pconfig.models_dir / "lora" / "pickled.bin"), 1.0),))
    broken = pconfig.models_dir / "lora" / "broken.safetensors"
    broken.write_bytes((other / lora.DIFFUSERS_FILE).read_bytes()[:500])
    with pytest.raises(ModelError, match="not a readable safetensors"):
        image(pmanager, loras=(("broken", 1.0),))
    with pytest.raises(ModelError, match="No LoRA named 'nope'.*wide"):
        image(pmanager, loras=(("nope", 1.0),))
    assert np.array_equal(image(pmanager), image(pmanager))  # the model is still clean and serving


# ---------------------------------------------------------------- use at once
def test_lora_through_our_path_equals_diffusers_and_the_next_job_is_clean(pmanager, pconfig, tiny_model_dir):
    folder = nonzero_lora(pconfig.models_dir / "lora" / "blob")
    before = image(pmanager, sampler="DDIM", guidance_scale=6.0)
    ours = image(pmanager, sampler="DDIM", guidance_scale=6.0, loras=(("blob", 0.7),))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(folder, adapter_name="blob")
    pipe.set_adapters(["blob"], [0.7])
    expected = pipe("a red circle", num_inference_steps=3, guidance_scale=6.0, height=32, width=32,
                    generator=[torch.Generator("cpu").manual_seed(5)], output_type="np").images
    assert np.abs(ours - expected).max() < 1e-3
    assert np.abs(ours - before).max() > 1e-2  # the LoRA does something
    assert np.array_equal(image(pmanager, sampler="DDIM", guidance_scale=6.0), before)  # and is gone afterwards
    kohya = image(pmanager, sampler="DDIM", guidance_scale=6.0, loras=((str(folder / "blob.safetensors"), 0.7),))
    assert np.abs(kohya - ours).max() < 1e-4  # kohya's copy (alpha 8, rank 4) scales the same
    layers = [adapters.lora_layers_of(pipe, pipe.lora_state_dict(str(folder), weight_name=name)[0])
              for name in (lora.DIFFUSERS_FILE, "blob.safetensors")]
    trained = sum(1 for n, _ in pipe.unet.named_modules() if n.endswith(UNET_LAYERS)) + 8  # + 2 layers x 4 in the text encoder
    assert len(layers[0]) == len(layers[1]) == trained  # both files hold every layer (attention and convolutions)
    keys = load_file(str(folder / "blob.safetensors"))
    assert any(k.startswith("lora_unet_") for k in keys) and any(k.startswith("lora_te_") for k in keys)
    assert float(next(v for k, v in keys.items() if k.endswith(".alpha"))) == 8.0


def test_two_loras_with_weights_and_png_settings_round_trip(pmanager, pconfig):
    nonzero_lora(pconfig.models_dir / "lora" / "one", seed=1)
    nonzero_lora(pconfig.models_dir / "lora" / "two", seed=2)
    req = Txt2ImgRequest(model="tiny-sd", prompt="a red circle <lora:one:0.5>", loras=(("two", 0.8),), steps=3, seed=5)
    result = [e for e in txt2img(pmanager, req) if isinstance(e, Result)][-1]
    params = metadata.read_png_parameters(result.paths[0])
    assert params.prompt == "a red circle <lora:one:0.5> <lora:two:0.8>"
    hashes = dict(entry.split(": ") for entry in params.extra["Lora hashes"].split(", "))
    assert hashes == {"one": lora.file_hash(pconfig.models_dir / "lora/one" / lora.DIFFUSERS_FILE),
                      "two": lora.file_hash(pconfig.models_dir / "lora/two" / lora.DIFFUSERS_FILE)}
    again = [e for e in txt2img(pmanager, params_to_request(params)) if isinstance(e, Result)][-1]
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))
    single = image(pmanager, prompt="a red circle <lora:one:0.5>")
    assert np.abs(single - result.pixels).max() > 1e-3  # the second LoRA counted


# ---------------------------------------------------------------- training
def test_colour_augmentation_recolours_the_shape_and_its_caption():
    red = data.PALETTE["red"]
    items = [(f"{k}.png", draw(k, colour=red), "a red <tok>") for k in range(3)] + [("x.png", draw(3), "a <tok>")]
    images, notes = data.prepare_images(items, 32, "a <tok>", "<t>", "", recolour=0.5)
    copies = [im for im in images if "(" in im.name]
    assert len(copies) == 3 * 7 and "Colour augmentation" in notes[-1]
    assert abs(len(copies) / len(images) - 0.5) < 0.05 and "51% of the training views" in notes[-1]  # about half
    blue = next(im for im in copies if im.caption == "a blue <t>")
    pixels = np.asarray(blue.image).astype(int)
    original = np.asarray(draw(0, colour=red)).astype(int)
    inside, outside = (slice(12, 18), slice(9, 15)), (slice(26, 30), slice(26, 30))
    assert np.abs(pixels[inside] - data.PALETTE["blue"]).max() <= 2  # the shape turned blue
    assert np.array_equal(pixels[outside], original[outside])  # the background did not move
    assert len(data.prepare_images(items, 32, "a <tok>", "<t>", "", recolour=0.0)[0]) == 4  # off: the images as given


def test_lora_training_saves_every_format_and_its_token_works_with_the_lora_alone(pmanager, pconfig, image_dir):
    events = run_job(pmanager, images_dir=image_dir, steps=6, sample_every=3, sample_seeds=(0,), text_encoder_lora=True,
                     conv_lora=True)
    assert len(steps_of(events)) == 6 and all(np.isfinite(steps_of(events)))
    assert [e.step for e in events if isinstance(e, Samples)] == [3, 6]
    result = events[-1]
    out = pconfig.models_dir / "lora" / "blob"
    assert isinstance(result, Result) and {p.name for p in result.paths} == {
        "card.json", lora.DIFFUSERS_FILE, "blob.safetensors", lora.TOKEN_FILE}
    card = json.loads((out / "card.json").read_text())
    assert card["base_model"] == "tiny-sd" and card["token"] == "<blob>" and card["steps"] == 6
    assert card["base_hash"] and card["final_loss"] > 0 and card["trainable_params"] > 0
    assert "blob" in adapters.list_loras(pconfig) and not (out.parent / ".training" / "blob" / "checkpoints").exists()
    model = pmanager.get("tiny-sd")
    vocab = len(model.pipe.tokenizer)
    with adapters.applied(pconfig, model, "a <blob> <lora:blob:1>") as used:
        ids = model.pipe.tokenizer(used.prompt).input_ids
        assert model.pipe.tokenizer.convert_tokens_to_ids("<blob>") in ids  # the token came with the LoRA
    assert len(model.pipe.tokenizer) == vocab and model.pipe.text_encoder.get_input_embeddings().num_embeddings == vocab


def test_textual_inversion_trains_only_the_token_rows(pmanager, pconfig, image_dir):
    model = pmanager.get("tiny-sd")
    unet_before = {k: v.clone() for k, v in model.pipe.unet.state_dict().items()}
    events = run_job(pmanager, method="textual-inversion", images_dir=image_dir, name="blob-ti", steps=5)
    assert isinstance(events[-1], Result)
    assert all(torch.equal(v, model.pipe.unet.state_dict()[k]) for k, v in unet_before.items())
    saved = load_file(str(pconfig.models_dir / "embeddings" / "blob-ti" / tokens.EMBEDDING_FILE))
    assert list(saved) == ["<blob>"] and saved["<blob>"].shape == (1, 32)
    with_token = image(pmanager, prompt="a <blob>")  # found in models/embeddings by its token, no pick needed
    picked = image(pmanager, prompt="a <blob>", embeddings=("blob-ti",))
    assert np.array_equal(with_token, picked)
    assert np.abs(with_token - image(pmanager, prompt="a")).max() > 1e-4


def test_dreambooth_full_with_prior_writes_a_model_the_pickers_list(pmanager, pconfig, image_dir):
    events = run_job(pmanager, method="dreambooth", full=True, prior=True, class_images=3, images_dir=image_dir,
                     name="blob-db", steps=3, class_prompt="a red <class>\n\n a blue <class> on the left ")
    assert any(isinstance(e, Notice) and "3 class images of 2 class prompts" in e.text for e in events)
    assert isinstance(events[-1], Result)
    drawn = json.loads((pconfig.models_dir / ".training" / "blob-db" / "class_images" / "prompt.json").read_text())
    assert drawn["prompts"] == ["a red circle", "a blue circle on the left"] and drawn["count"] == 3
    from studio import sources
    assert "blob-db" in sources.list_models(pconfig)
    # An embedding of the same token in models/embeddings is found by its token, but the model's own word wins.
    tokens.save_embedding(pconfig.models_dir / "embeddings" / "other" / tokens.EMBEDDING_FILE, "<blob>", torch.ones(1, 32))
    req = Txt2ImgRequest(model="blob-db", prompt="a <blob> circle", steps=2, save=False)
    events = list(txt2img(pmanager, req))
    assert events[-1].pixels.shape == (1, 32, 32, 3)
    assert any(isinstance(e, Notice) and "already a word of this model" in e.text for e in events)
    with pytest.raises(ModelError, match="already has"):
        list(txt2img(pmanager, Txt2ImgRequest(model="blob-db", prompt="a <blob>", steps=2, embeddings=("other",))))


@pytest.mark.parametrize("full", [True, False])
def test_prior_toward_the_base_models_prediction_adds_nothing_at_the_start(pmanager, image_dir, full):
    common = {"method": "dreambooth", "full": full, "images_dir": image_dir, "steps": 1, "class_images": 2}
    alone = steps_of(run_job(pmanager, name="db-alone", **common))[0]
    toward_base = steps_of(run_job(pmanager, name="db-base", prior=True, prior_target="base", prior_weight=10, **common))[0]
    toward_noise = steps_of(run_job(pmanager, name="db-noise", prior=True, prior_target="noise", prior_weight=10,
                                    **common))[0]
    assert toward_base == pytest.approx(alone, rel=1e-5)  # the model is the base model: its own prediction costs 0
    assert toward_noise > alone * 1.5  # DreamBooth's target, the noise, is not what any model predicts exactly
    with pytest.raises(RequestError, match="prior's target"):
        run_job(pmanager, name="db-bad", prior=True, prior_target="teacher", **common)


def test_resume_gives_the_loss_curve_of_an_uninterrupted_run(pmanager, image_dir, monkeypatch):
    whole = steps_of(run_job(pmanager, images_dir=image_dir, name="whole", steps=6, checkpoint_every=2))
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] >= 3

    monkeypatch.setattr(pmanager, "should_stop", stop_after_three)
    first = run_job(pmanager, images_dir=image_dir, name="parts", steps=6, checkpoint_every=2)
    assert not any(isinstance(e, Result) for e in first) and any("Stopped at step 3" in getattr(e, "text", "") for e in first)
    monkeypatch.setattr(pmanager, "should_stop", lambda: False)
    with pytest.raises(RequestError, match="other settings.*rank"):
        run_job(pmanager, images_dir=image_dir, name="parts", steps=6, rank=8, resume=True)
    with pytest.raises(RequestError, match="other settings.*flip"):  # a setting switched off counts as changed too
        run_job(pmanager, images_dir=image_dir, name="parts", steps=6, flip=False, resume=True)
    second = run_job(pmanager, images_dir=image_dir, name="parts", steps=6, checkpoint_every=2, resume=True)
    assert any("Resumed from the checkpoint at step 3" in getattr(e, "text", "") for e in second)
    assert np.allclose(steps_of(first) + steps_of(second), whole, rtol=1e-5, atol=1e-7)
    with pytest.raises(RequestError, match="Nothing to resume"):
        run_job(pmanager, images_dir=image_dir, name="parts", steps=6, resume=True)


def test_a_run_recorded_before_a_setting_existed_resumes_with_its_default(pmanager, pconfig, image_dir, monkeypatch):
    calls = {"n": 0}
    monkeypatch.setattr(pmanager, "should_stop", lambda: calls.__setitem__("n", calls["n"] + 1) or calls["n"] >= 2)
    run_job(pmanager, images_dir=image_dir, name="old", steps=4, checkpoint_every=2)
    record = pconfig.models_dir / "lora" / ".training" / "old" / "run.json"
    settings = json.loads(record.read_text())
    del settings["ema_decay"]  # as a run of an earlier version recorded it
    record.write_text(json.dumps(settings))
    monkeypatch.setattr(pmanager, "should_stop", lambda: False)
    with pytest.raises(RequestError, match="other settings.*ema_decay"):
        run_job(pmanager, images_dir=image_dir, name="old", steps=4, ema_decay=0.9, resume=True)
    del settings["prior_target"]  # a run without prior preservation: its target means nothing, any default resumes
    record.write_text(json.dumps(settings))
    assert isinstance(run_job(pmanager, images_dir=image_dir, name="old", steps=4, resume=True)[-1], Result)


def test_weight_average_is_saved_and_resumes(pmanager, pconfig, image_dir, monkeypatch):
    def weights(name):
        return load_file(str(pconfig.models_dir / "lora" / name / "pytorch_lora_weights.safetensors"))

    run_job(pmanager, images_dir=image_dir, name="raw", steps=6, checkpoint_every=2)
    run_job(pmanager, images_dir=image_dir, name="avg", steps=6, checkpoint_every=2, ema_decay=0.5)
    raw, avg = weights("raw"), weights("avg")
    assert raw.keys() == avg.keys() and any(not torch.allclose(raw[k], avg[k]) for k in raw)
    calls = {"n": 0}
    monkeypatch.setattr(pmanager, "should_stop", lambda: calls.__setitem__("n", calls["n"] + 1) or calls["n"] >= 3)
    run_job(pmanager, images_dir=image_dir, name="avg2", steps=6, checkpoint_every=2, ema_decay=0.5)
    monkeypatch.setattr(pmanager, "should_stop", lambda: False)
    with pytest.raises(RequestError, match="other settings.*ema_decay"):  # the average would be lost
        run_job(pmanager, images_dir=image_dir, name="avg2", steps=6, resume=True)
    run_job(pmanager, images_dir=image_dir, name="avg2", steps=6, checkpoint_every=2, ema_decay=0.5, resume=True)
    resumed = weights("avg2")
    assert all(torch.allclose(avg[k], resumed[k], rtol=1e-4, atol=1e-6) for k in avg)
    with pytest.raises(RequestError, match="decay"):
        run_job(pmanager, images_dir=image_dir, name="bad", ema_decay=1.0)


def test_disk_full_keeps_the_last_checkpoint(pmanager, image_dir, monkeypatch):
    from studio.training import common

    real_save, calls = torch.save, {"n": 0}

    def fail_second(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(common.torch, "save", fail_second)
    with pytest.raises(StudioError, match="disk full.*step 2 is kept"):
        run_job(pmanager, images_dir=image_dir, name="full", steps=6, checkpoint_every=2)
    work = pmanager.config.models_dir / "lora" / ".training" / "full" / "checkpoints"
    assert [p.name for p in work.iterdir()] == ["step-000000002.pt"]
    monkeypatch.setattr(common.torch, "save", real_save)
    resumed = run_job(pmanager, images_dir=image_dir, name="full", steps=6, checkpoint_every=2, resume=True)
    assert isinstance(resumed[-1], Result) and len(steps_of(resumed)) == 4


def test_a_second_job_waits_for_training(pmanager, image_dir):
    """Training holds the accelerator: a job started meanwhile waits (the page's queue shows it waiting)."""
    import threading

    events = train(pmanager, TrainRequest(model="tiny-sd", images_dir=image_dir, token="<blob>", steps=3, batch=2))
    next(e for e in events if isinstance(e, TrainStep))  # training holds the session now
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (image(pmanager), finished.set()))
    worker.start()
    assert not finished.wait(1.0)
    list(events)
    worker.join(30)
    assert finished.is_set()


# ---------------------------------------------------------------- command line and accelerate
def cli(*args, launcher=()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, *(() if launcher else (sys.executable,)), "-m", "studio", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)


def test_cli_train_then_generate_with_lora_alone(tmp_path, tiny_model_dir, image_dir):
    common = ("--model", str(tiny_model_dir), "--models-dir", str(tmp_path / "models"))
    done = cli("train", "--method", "lora", "--images", str(image_dir), "--token", "<blob>", "--class-word", "circle",
               "--steps", "4", "--batch", "2", "--out", str(tmp_path / "blob"), *common)
    assert done.returncode == 0, done.stderr
    assert "saved" in done.stdout and (tmp_path / "blob" / lora.TOKEN_FILE).is_file()
    gen = cli("generate", "--prompt", "a <blob>", "--lora", f"{tmp_path / 'blob'}:0.9", "--steps", "2", "--seed", "1",
              "--out", str(tmp_path / "png"), *common)
    assert gen.returncode == 0, gen.stderr
    params = metadata.read_png_parameters(next((tmp_path / "png").glob("*.png")))
    assert "Lora hashes" in params.extra and params.prompt.endswith(":0.9>")
    bad = cli("train", "--images", str(image_dir), "--token", "circle", "--steps", "2", *common)
    assert bad.returncode == 2 and "already a word" in bad.stderr


def test_accelerate_two_processes_match_one(tmp_path, tiny_model_dir, image_dir):
    """`accelerate launch --cpu --num_processes 2`: the run finishes, saves once, and its losses match one process
    with the same global batch (4 = 2 x 2) within 1e-4 (float sums in another order)."""
    common = ("train", "--images", str(image_dir), "--token", "<blob>", "--steps", "3", "--batch", "4", "--device", "cpu",
              "--model", str(tiny_model_dir), "--models-dir", str(tmp_path / "models"), "--checkpoint-every", "0")
    one = cli(*common, "--out", str(tmp_path / "one"), "--losses", str(tmp_path / "one.txt"))
    assert one.returncode == 0, one.stderr
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    two = cli(*common, "--out", str(tmp_path / "two"), "--losses", str(tmp_path / "two.txt"), launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved") == one.stdout.count("saved")  # saved once, by the main process
    a, b = (np.loadtxt(tmp_path / f"{n}.txt") for n in ("one", "two"))
    assert a.shape == b.shape == (3,) and np.allclose(a, b, atol=1e-4)


def test_the_tab_builds_and_its_form_makes_a_request(pconfig, tmp_path):
    import gradio as gr

    from studio.studio import Studio
    from studio.ui import personalize

    with gr.Blocks():
        personalize.build(Studio(pconfig))
    files = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    rows = personalize.caption_rows(files, "a <tok> <class>")
    assert rows == [["a.png", "a <tok> <class>"], ["b.png", "a <tok> <class>"]]
    rows[1][1] = "a red <tok>"
    req = personalize.request_from_form(files, rows, "dreambooth-full", "<blob>", "circle", "", "tiny-sd", 10, 2, 0, 0,
                                        4, False, False, True, 1.0, 5, 0.3, True, 0, 0, "a <tok>\n", 0, "a <class>\na big <class>", 0.99,
                                        "the noise (DreamBooth's paper)")
    assert req.method == "dreambooth" and req.full and req.prior and req.steps == 10 and req.word_dropout == 0.3
    assert req.class_prompt == "a <class>\na big <class>" and req.ema_decay == 0.99 and not req.resume
    assert req.prior_target == "noise"
    assert [c for _, _, c in req.images] == ["a <tok> <class>", "a red <tok>"] and req.sample_prompts == ("a <tok>",)


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, image_dir):
    import signal
    import time

    args = ["train", "--images", str(image_dir), "--token", "<blob>", "--steps", "400", "--batch", "2",
            "--checkpoint-every", "5", "--model", str(tiny_model_dir), "--out", str(tmp_path / "blob"),
            "--models-dir", str(tmp_path / "models"), "--sample-every", "100000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "studio", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / ".training" / "blob" / "checkpoints"
    deadline = time.time() + 120
    while not list(checkpoints.glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(checkpoints.glob("step-*.pt")), "no checkpoint was written before the kill"
    done = cli(*args[:args.index("--steps") + 1], "12", *args[args.index("--steps") + 2:], "--resume")
    assert done.returncode == 0, done.stderr
    assert "Resumed from the checkpoint" in done.stderr and (tmp_path / "blob" / "card.json").is_file()


def test_cli_class_prompts_repeat_into_one_request():
    from studio import cli, cli_train

    args = cli.build_parser().parse_args(["train", "--method", "dreambooth", "--images", "x", "--token", "<t>",
                                          "--class-word", "shape", "--prior", "--class-prompt", "a red <class>",
                                          "--class-prompt", "a big <class>", "--ema-decay", "0.99",
                                          "--prior-target", "noise"])
    req = cli_train.request_from_args(args)
    assert req.prior and req.class_prompt == "a red <class>\na big <class>" and req.ema_decay == 0.99
    assert req.prior_target == "noise"
    plain = cli_train.request_from_args(cli.build_parser().parse_args(["train", "--images", "x", "--token", "<t>"]))
    assert plain.class_prompt == TrainRequest.class_prompt and plain.prior_target == "base"
