"""Tests for studio.manager: caching, LRU eviction under a budget, hashes, clear errors, the accelerator session,
and single-file checkpoints loaded offline with configs from a local diffusers folder."""
from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, StableDiffusionPipeline, UNet2DModel
from safetensors.torch import save_file

from studio.config import StudioConfig
from studio.errors import ModelError
from studio.manager import ModelManager


@pytest.fixture()
def work_config(tmp_path, tiny_model_dir) -> StudioConfig:
    """Own models folder holding a copy of tiny-sd, so tests can add models without touching the shared one."""
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "tiny-sd")
    return StudioConfig(models_dir=models, outputs_dir=tmp_path / "out", assets_dir=tmp_path / "assets")


# ------------------------------------------------------------------ loading, caching, eviction
def test_get_is_cached(manager):
    first = manager.get("tiny-sd")
    assert manager.get("tiny-sd") is first
    assert manager.loaded() == [first.source.location]
    assert first.name == "tiny-sd" and not first.is_xl
    assert first.nbytes > 0 and first.pipe.unet.device.type == "cpu"
    assert first.default_size == 16 * 2 and first.vae_scale_factor == 2


def test_same_model_by_path_and_name_shares_the_cache(manager, tiny_model_dir):
    assert manager.get(str(tiny_model_dir)) is manager.get("tiny-sd")


def test_model_hash_is_stable(config, manager):
    h = manager.get("tiny-sd").model_hash
    assert re.fullmatch(r"[0-9a-f]{10}", h)
    assert ModelManager(config).get("tiny-sd").model_hash == h


def test_loaded_spec_is_not_checked_again_until_its_folder_goes(work_config):
    mm = ModelManager(work_config)
    first = mm.get("tiny-sd")
    weights = next((work_config.models_dir / "tiny-sd" / "unet").glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")  # the loaded weights are in memory: the job needs no file
    assert mm.get("tiny-sd") is first
    shutil.rmtree(work_config.models_dir / "tiny-sd")  # gone: the spec is resolved again, with a clear message
    with pytest.raises(ModelError, match="not found"):
        mm.get("tiny-sd")


def test_a_fine_tune_of_the_same_layout_has_its_own_hash(work_config):
    from safetensors.torch import load_file

    shutil.copytree(work_config.models_dir / "tiny-sd", work_config.models_dir / "tiny-tuned")
    weights = next((work_config.models_dir / "tiny-tuned" / "unet").glob("*.safetensors"))
    header = _header(weights)
    save_file({k: v + 1e-3 for k, v in load_file(str(weights)).items()}, str(weights), metadata=_metadata(weights))
    assert _header(weights) == header  # the same layout, byte for byte: only the weights differ
    mm = ModelManager(work_config)
    assert mm.get("tiny-tuned").model_hash != mm.get("tiny-sd").model_hash


def _header(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[:8 + int.from_bytes(raw[:8], "little")]


def _metadata(path: Path) -> dict | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_budget_evicts_least_recently_used(work_config):
    shutil.copytree(work_config.models_dir / "tiny-sd", work_config.models_dir / "tiny-copy")
    work_config.memory_budget_gb = 1e-6
    mm = ModelManager(work_config)
    first = mm.get("tiny-sd")
    second = mm.get("tiny-copy")
    assert mm.loaded() == [second.source.location]
    assert first.model_hash == second.model_hash  # same weights, same fingerprint
    mm.unload()
    assert mm.loaded() == []


def test_lru_order_and_unload_one(work_config):
    shutil.copytree(work_config.models_dir / "tiny-sd", work_config.models_dir / "tiny-copy")
    mm = ModelManager(work_config)
    a, b = mm.get("tiny-sd"), mm.get("tiny-copy")
    mm.get("tiny-sd")  # most recently used now
    assert mm.loaded() == [b.source.location, a.source.location]
    mm.unload("tiny-copy")
    assert mm.loaded() == [a.source.location]
    mm.unload()
    assert mm.loaded() == []


def test_budget_default_on_cpu(config):
    assert ModelManager(config).budget_bytes == 8 * 2**30
    config.memory_budget_gb = 0.5
    assert ModelManager(config).budget_bytes == 2**29


def test_bad_spec_from_get(manager):
    with pytest.raises(ModelError, match="not found"):
        manager.get("no-such-model")
    assert manager.loaded() == []


def test_pipeline_without_vae_is_refused(work_config):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(work_config.models_dir / "ddpm")
    with pytest.raises(ModelError) as info:
        ModelManager(work_config).get("ddpm")
    msg = str(info.value)
    for words in ("DDPMPipeline", "no vae", "Generate supports", "Stable Diffusion"):
        assert words in msg, msg


def test_unloadable_folder_gives_model_error(work_config):
    broken = work_config.models_dir / "broken"
    shutil.copytree(work_config.models_dir / "tiny-sd", broken)
    (broken / "unet" / "config.json").write_text("{ not json")
    with pytest.raises(ModelError, match="Could not load model 'broken'"):
        ModelManager(work_config).get("broken")


# ------------------------------------------------------------------ session and Stop
def test_stop_flag_does_not_carry_over(manager):
    assert not manager.request_stop() and not manager.should_stop()  # nothing runs: nothing to stop
    with manager.session():
        assert not manager.should_stop()
        assert manager.request_stop()
        assert manager.should_stop()
    # A Stop pressed as a job ends still counts (a sweep checks it between cells) until the next job starts.
    assert manager.should_stop()
    with manager.session():
        assert not manager.should_stop()


def test_stop_belongs_to_the_session_that_started_the_job(manager):
    """One user's Stop never ends another user's run (the page claims each job for its session)."""
    manager.claim("alice")
    with manager.session():
        assert not manager.request_stop("bob") and not manager.should_stop()
        assert manager.request_stop("alice") and manager.should_stop()
    manager.claim(None)  # a job from the CLI or a test: any Stop ends it
    with manager.session():
        assert manager.request_stop("bob")


def test_session_is_exclusive(manager):
    entered, release, second_in = threading.Event(), threading.Event(), threading.Event()

    def first():
        with manager.session():
            entered.set()
            release.wait(5)

    def second():
        with manager.session():
            second_in.set()

    t1 = threading.Thread(target=first)
    t1.start()
    assert entered.wait(5)
    t2 = threading.Thread(target=second)
    t2.start()
    assert not second_in.wait(0.3)  # blocked while the first job holds the accelerator
    release.set()
    assert second_in.wait(5)
    t1.join(5)
    t2.join(5)


def test_session_released_after_error(manager):
    with pytest.raises(RuntimeError):
        with manager.session():
            raise RuntimeError("boom")
    done = threading.Event()

    def again():
        with manager.session():
            done.set()

    threading.Thread(target=again).start()
    assert done.wait(2)


# ------------------------------------------------------------------ single-file checkpoints
# diffusers -> original LDM key names, for the tiny test model; generalised from diffusers'
# scripts/convert_diffusers_to_original_stable_diffusion.py (which hard-codes SD 1.x's four levels).
def _unet_to_ldm(sd: dict, levels: int, layers: int) -> dict:
    top = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
           ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
    resnet = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
              ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
    prefixes = [("middle_block.1.", "mid_block.attentions.0."), ("middle_block.0.", "mid_block.resnets.0."),
                ("middle_block.2.", "mid_block.resnets.1.")]
    for i in range(levels):
        for j in range(layers):
            prefixes += [(f"input_blocks.{(layers + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."),
                         (f"input_blocks.{(layers + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}.")]
        prefixes.append((f"input_blocks.{(layers + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        for j in range(layers + 1):
            prefixes += [(f"output_blocks.{(layers + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."),
                         (f"output_blocks.{(layers + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}.")]
        has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)
        prefixes.append((f"output_blocks.{(layers + 1) * i + layers}.{2 if has_attn else 1}.", f"up_blocks.{i}.upsamplers.0."))
    out = {}
    for key, value in sd.items():
        new = key
        for ldm, hf in top + prefixes:
            if new.startswith(hf):
                new = ldm + new[len(hf):]
                break
        if ".resnets." in key:
            for ldm, hf in resnet:
                new = new.replace(hf, ldm)
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(sd: dict, levels: int, layers: int) -> dict:
    names = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0."),
             ("mid.block_1.", "mid_block.resnets.0."), ("mid.block_2.", "mid_block.resnets.1.")]
    for i in range(levels):
        names.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
        names.append((f"decoder.up.{levels - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
        names += [(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.") for j in range(layers)]
        names += [(f"decoder.up.{levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.") for j in range(layers + 1)]
    attn = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    out = {}
    for key, value in sd.items():
        new = key
        for ldm, hf in names:
            new = new.replace(hf, ldm)
        if "attentions" in key:
            for ldm, hf in attn:
                new = new.replace(hf, ldm)
            if new.endswith((".q.weight", ".k.weight", ".v.weight", ".proj_out.weight")):
                value = value.reshape(*value.shape, 1, 1)  # LDM uses 1x1 convs
        out["first_stage_model." + new] = value
    return out


def ldm_state_dict(pipe: StableDiffusionPipeline) -> dict:
    """The tiny pipeline's weights under the original Stable Diffusion checkpoint names."""
    levels = len(pipe.unet.config.block_out_channels)
    sd = _unet_to_ldm(pipe.unet.state_dict(), levels, pipe.unet.config.layers_per_block)
    sd.update(_vae_to_ldm(pipe.vae.state_dict(), levels, pipe.vae.config.layers_per_block))
    te = pipe.text_encoder.state_dict()  # transformers >= 5.6 flattened CLIPTextModel; LDM keeps "text_model."
    prefix = "cond_stage_model.transformer." + ("" if next(iter(te)).startswith("text_model.") else "text_model.")
    sd.update({prefix + k: v for k, v in te.items()})
    return {k: v.contiguous() for k, v in sd.items()}


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)


@pytest.fixture()
def single_file(work_config, tiny_pipe) -> Path:
    path = work_config.models_dir / "tiny-single.safetensors"
    save_file(ldm_state_dict(tiny_pipe), str(path))
    return path


def _same_weights(a: StableDiffusionPipeline, b: StableDiffusionPipeline) -> None:
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert torch.equal(sa[k], sb[k].reshape(sa[k].shape)), (name, k)


def test_single_file_with_config_sidecar(work_config, single_file, tiny_pipe):
    single_file.with_suffix(".config").write_text("tiny-sd\n")
    model = ModelManager(work_config).get("tiny-single.safetensors")
    assert model.source.kind == "single_file" and isinstance(model.pipe, StableDiffusionPipeline)
    _same_weights(tiny_pipe, model.pipe)
    assert re.fullmatch(r"[0-9a-f]{10}", model.model_hash)
    out = model.pipe("a red circle", num_inference_steps=1, height=32, width=32, output_type="np")
    assert out.images.shape == (1, 32, 32, 3)


def test_single_file_sidecar_with_path_relative_to_checkpoint(tmp_path, work_config, single_file):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = single_file.rename(elsewhere / single_file.name)
    shutil.copytree(work_config.models_dir / "tiny-sd", elsewhere / "base-configs")
    moved.with_suffix(".config").write_text("base-configs")
    work_config.allow_any_path = True  # "elsewhere" is outside the models folder
    assert isinstance(ModelManager(work_config).get(str(moved)).pipe, StableDiffusionPipeline)


def test_pickle_single_file_with_allow_pickle(work_config, tiny_pipe):
    path = work_config.models_dir / "tiny-old.ckpt"
    torch.save({"state_dict": ldm_state_dict(tiny_pipe)}, path)
    path.with_suffix(".config").write_text("tiny-sd")
    with pytest.raises(ModelError, match="--allow-pickle"):
        ModelManager(work_config).get("tiny-old.ckpt")
    work_config.allow_pickle = True
    model = ModelManager(work_config).get("tiny-old.ckpt")
    _same_weights(tiny_pipe, model.pipe)
    assert re.fullmatch(r"[0-9a-f]{10}", model.model_hash)


def test_single_file_without_configs_offline_explains(work_config, single_file, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never reach the network in tests
    with pytest.raises(ModelError) as info:
        ModelManager(work_config).get("tiny-single.safetensors")
    msg = str(info.value)
    for words in ("tiny-single.safetensors", "Offline", "tiny-single.config", "diffusers folder"):
        assert words in msg, msg


def test_single_file_sidecar_naming_nothing(work_config, single_file):
    single_file.with_suffix(".config").write_text("no-such-base")
    with pytest.raises(ModelError) as info:
        ModelManager(work_config).get("tiny-single.safetensors")
    assert "tiny-single.config" in str(info.value) and "not found" in str(info.value)


def test_single_file_sidecar_naming_a_file(work_config, single_file):
    single_file.with_suffix(".config").write_text("tiny-single.safetensors")
    with pytest.raises(ModelError, match="not a diffusers folder"):
        ModelManager(work_config).get("tiny-single.safetensors")


def test_single_file_sidecar_wrong_architecture(tmp_path, work_config, single_file):
    from tests.conftest import tiny_components

    StableDiffusionPipeline(**tiny_components(cross_dim=16)).save_pretrained(work_config.models_dir / "other-arch")
    single_file.with_suffix(".config").write_text("other-arch")
    with pytest.raises(ModelError) as info:
        ModelManager(work_config).get("tiny-single.safetensors")
    assert "same architecture" in str(info.value)
