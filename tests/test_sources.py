"""Tests for studio.sources: every bad model input gives a ModelError that says what is wrong and what to do."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from studio import sources
from studio.config import StudioConfig
from studio.errors import ModelError


def _raises(spec: str, config: StudioConfig, *words: str) -> str:
    with pytest.raises(ModelError) as info:
        sources.resolve(spec, config)
    message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    return message


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture()
def work_config(tmp_path, tiny_model_dir) -> StudioConfig:
    """A config with its own (empty) models and assets folders, so tests can add files without touching others."""
    (tmp_path / "models").mkdir()
    (tmp_path / "assets").mkdir()
    return StudioConfig(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out", assets_dir=tmp_path / "assets")


def _tiny_safetensors(path: Path) -> Path:
    save_file({"model.diffusion_model.w": torch.zeros(64, 64), "model.diffusion_model.b": torch.ones(64)}, str(path))
    return path


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("spec", ["", "   ", None])
def test_empty_spec(spec, config):
    _raises(spec, config, "no model chosen", "pick one")


def test_missing_path(config):
    _raises("/nonexistent/x", config, "/nonexistent/x", "not found", "no such folder or file")


def test_unlisted_name(config):
    _raises("not-a-model", config, "not-a-model", "not found", "listed models")


def test_folder_without_model_index_lists_contents(work_config):
    """Inside the models folder the message lists what is there (outside it never does: tests/test_security.py)."""
    folder = work_config.models_dir / "stuff"
    folder.mkdir()
    (folder / "readme.md").write_text("hi")
    (folder / "weights.safetensors").write_bytes(b"")
    msg = _raises(str(folder), work_config, "no model_index.json", "save_pretrained", ".safetensors")
    assert "readme.md" in msg and "weights.safetensors" in msg


def test_empty_folder_says_found_nothing(work_config):
    folder = work_config.models_dir / "empty"
    folder.mkdir()
    _raises(str(folder), work_config, "no model_index.json", "found: nothing")


def test_truncated_safetensors_in_folder(tmp_path, config, tiny_model_dir):
    copy = tmp_path / "broken-sd"
    shutil.copytree(tiny_model_dir, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    _truncate(weights)
    msg = _raises(str(copy), config, "not a readable safetensors file", "truncated or corrupt")
    assert "unet" in msg


def test_truncated_single_file(tmp_path, config):
    path = _tiny_safetensors(tmp_path / "model.safetensors")
    _truncate(path, 0.6)
    _raises(str(path), config, "model.safetensors", "truncated or corrupt")


def test_garbage_safetensors(tmp_path, config):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"this is not a safetensors file at all, just some text" * 10)
    _raises(str(path), config, "garbage.safetensors", "not a readable safetensors file")


def test_tiny_garbage_safetensors(tmp_path, config):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"abc")
    _raises(str(path), config, "not a readable safetensors file")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_file_refused(tmp_path, config, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not loaded")
    _raises(str(path), config, "pickle", "--allow-pickle", ".safetensors")


def test_pickle_file_allowed_with_flag(tmp_path, config):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"x")
    config.allow_pickle = True
    src = sources.resolve(str(path), config)
    assert src.kind == "single_file" and src.location == str(path.resolve())


def test_folder_with_only_bin_weights_refused(tmp_path, config, tiny_model_dir):
    copy = tmp_path / "bin-sd"
    shutil.copytree(tiny_model_dir, copy)
    for weights in copy.glob("*/*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    msg = _raises(str(copy), config, "pickle", "--allow-pickle", "safetensors")
    assert "unet" in msg
    config.allow_pickle = True
    assert sources.resolve(str(copy), config).kind == "folder"


def test_hub_id_offline(config):
    msg = _raises("runwayml/stable-diffusion-v1-5", config, "hub id", "offline", "--local-dir", "pick that folder", "--online")
    assert "runwayml/stable-diffusion-v1-5" in msg


def test_hub_id_online(config):
    config.online = True
    src = sources.resolve("runwayml/stable-diffusion-v1-5", config)
    assert (src.kind, src.location, src.name) == ("hub", "runwayml/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")


def test_non_model_file(tmp_path, config):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    _raises(str(path), config, "notes.txt", "not a model file", "diffusers folder", ".safetensors")


def test_non_model_file_by_name(work_config):
    (work_config.models_dir / "notes.txt").write_text("hello")
    _raises("notes.txt", work_config, "not a model file")


def test_path_like_missing_file(config):
    _raises("./missing.safetensors", config, "not found")
    _raises("missing.safetensors", config, "not found")


def test_a_bad_model_path_reaches_the_page_as_its_own_message(config):
    """The page shows a StudioError's text as is; any other exception is an "Unexpected error" with a traceback."""
    from studio.ui.common import guarded

    def job():
        sources.resolve("./missing.safetensors", config)
        yield "never reached"

    shown = list(guarded(job(), on_event=lambda e: {"event": e}, on_error=lambda text, kind: {"text": text, "kind": kind}))
    assert len(shown) == 1 and shown[0]["kind"] == "error", shown
    assert "missing.safetensors" in shown[0]["text"] and "Unexpected" not in shown[0]["text"], shown


# ------------------------------------------------------------------ finding models
def test_resolve_by_name_in_models_dir(config, tiny_model_dir):
    src = sources.resolve("tiny-sd", config)
    assert (src.kind, Path(src.location), src.embedded, src.name) == ("folder", tiny_model_dir, False, "tiny-sd")


def test_resolve_by_name_in_assets_dir(work_config, tiny_model_dir):
    shutil.copytree(tiny_model_dir, work_config.assets_dir / "suite-model")
    src = sources.resolve("suite-model", work_config)
    assert src.kind == "folder" and src.embedded
    assert Path(src.location) == work_config.assets_dir / "suite-model"


def test_embedded_wins_over_models_dir(work_config, tiny_model_dir):
    shutil.copytree(tiny_model_dir, work_config.assets_dir / "same")
    shutil.copytree(tiny_model_dir, work_config.models_dir / "same")
    assert sources.resolve("same", work_config).embedded


def test_resolve_by_absolute_path(work_config, tiny_model_dir):
    work_config.allow_any_path = True  # tiny-sd lies outside this config's folders
    src = sources.resolve(str(tiny_model_dir), work_config)
    assert src.kind == "folder" and Path(src.location) == tiny_model_dir.resolve()
    assert not src.embedded  # an absolute path is never mistaken for a name in the embedded suite


def test_absolute_path_is_not_embedded_even_with_default_assets(tiny_model_dir, tmp_path):
    cfg = StudioConfig(models_dir=tmp_path / "m", outputs_dir=tmp_path / "o", allow_any_path=True)  # real assets dir
    src = sources.resolve(str(tiny_model_dir), cfg)
    assert not src.embedded and src.location == str(tiny_model_dir.resolve())


def test_resolve_by_absolute_path_with_spaces(work_config):
    work_config.allow_any_path = True
    _raises("  /nonexistent/x  ", work_config, "not found")


def test_resolve_single_file_by_name(work_config):
    _tiny_safetensors(work_config.models_dir / "single.safetensors")
    src = sources.resolve("single.safetensors", work_config)
    assert src.kind == "single_file" and src.name == "single" and not src.embedded


def test_resolve_real_embedded_suite():
    cfg = StudioConfig()
    if not (Path(cfg.assets_dir) / "shapes-v1" / "model_index.json").is_file():
        pytest.skip("embedded suite not built")
    src = sources.resolve("shapes-v1", cfg)
    assert src.embedded and src.kind == "folder"


def test_list_models(work_config, tiny_model_dir):
    shutil.copytree(tiny_model_dir, work_config.assets_dir / "zz-embedded")
    shutil.copytree(tiny_model_dir, work_config.models_dir / "aa-local")
    _tiny_safetensors(work_config.models_dir / "bb-single.safetensors")
    (work_config.models_dir / "no-index").mkdir()
    (work_config.models_dir / "notes.txt").write_text("x")
    (work_config.models_dir / "old.ckpt").write_bytes(b"x")
    assert sources.list_models(work_config) == ["zz-embedded", "aa-local", "bb-single.safetensors"]


def test_list_models_missing_folders(tmp_path):
    cfg = StudioConfig(models_dir=tmp_path / "none", assets_dir=tmp_path / "none2", outputs_dir=tmp_path / "o")
    assert sources.list_models(cfg) == []


def test_listed_models_resolve(work_config, tiny_model_dir):
    shutil.copytree(tiny_model_dir, work_config.assets_dir / "e")
    _tiny_safetensors(work_config.models_dir / "s.safetensors")
    for name in sources.list_models(work_config):
        assert sources.resolve(name, work_config).spec == name
