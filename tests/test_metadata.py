"""Tests for studio.metadata: A1111-style "parameters" infotext in PNG files."""

from pathlib import Path

import pytest
from PIL import Image

from studio.metadata import (
    PARAMETERS_KEY,
    GenerationParams,
    format_parameters,
    parse_parameters,
    read_png_parameters,
    save_png,
)

ROUND_TRIP_CASES = [
    GenerationParams(prompt="a red circle"),
    GenerationParams(
        prompt="a red circle\non a blue square,\nhighly detailed",
        negative_prompt="blurry",
        steps=30,
        sampler="DPM++ 2M Karras",
        cfg_scale=7.5,
        seed=1234,
        width=512,
        height=768,
        model="shapes-v1",
        model_hash="0a1b2c3d4e",
    ),
    GenerationParams(prompt="a cat", negative_prompt="", cfg_scale=7, seed=0),
    GenerationParams(
        prompt="(masterpiece:1.2), a dog",
        negative_prompt="low quality, worst quality,\n(bad hands:1.4), text",
        seed=4294967295,
    ),
    GenerationParams(
        prompt="a tree",
        extra={
            "Lora hashes": "a: 1, b: 2",
            "Clip skip": "2",
            "Note": 'say "hi"\nthere',
            "Padded": " x ",
            "Empty": "",
            "Version": "diffusion-studio",
        },
    ),
    GenerationParams(prompt="", negative_prompt="only a negative", cfg_scale=3.25),
    GenerationParams(prompt="Steps: 1, Sampler: a, CFG scale: 2", seed=42),  # prompt that looks like params
]


@pytest.mark.parametrize("params", ROUND_TRIP_CASES)
def test_round_trip(params):
    text = format_parameters(params)
    assert parse_parameters(text) == params


def test_format_exact_text():
    p = GenerationParams(
        prompt="a red circle\non a blue square",
        negative_prompt="blurry, dark",
        steps=25,
        sampler="DPM++ 2M Karras",
        cfg_scale=7.0,
        seed=1234,
        width=512,
        height=768,
        model="shapes-v1",
        model_hash="0a1b2c3d4e",
        extra={"Lora hashes": "a: 1, b: 2", "Version": "diffusion-studio"},
    )
    assert format_parameters(p) == (
        "a red circle\non a blue square\n"
        "Negative prompt: blurry, dark\n"
        "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
        'Model hash: 0a1b2c3d4e, Model: shapes-v1, Lora hashes: "a: 1, b: 2", Version: diffusion-studio'
    )


def test_empty_negative_line_omitted_and_float_format():
    text = format_parameters(GenerationParams(prompt="x", cfg_scale=7.5))
    assert "Negative prompt" not in text
    assert "CFG scale: 7.5," in text
    assert "CFG scale: 7," in format_parameters(GenerationParams(prompt="x", cfg_scale=7))
    assert "7.0" not in format_parameters(GenerationParams(prompt="x", cfg_scale=7.0))


def test_parse_handwritten_a1111_string():
    text = (
        "masterpiece, best quality, 1girl, <lora:style:0.8>,\n"
        "red dress, looking at viewer\n"
        "Negative prompt: (worst quality:1.4), lowres,\n"
        "bad anatomy\n"
        "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, "
        'Size: 640x448, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, '
        'Lora hashes: "x: 1", TI hashes: "bad-hands: 0123abcd, easyneg: 4567", Version: v1.10.1'
    )
    p = parse_parameters(text)
    assert p.prompt == "masterpiece, best quality, 1girl, <lora:style:0.8>,\nred dress, looking at viewer"
    assert p.negative_prompt == "(worst quality:1.4), lowres,\nbad anatomy"
    assert p.steps == 28
    assert p.sampler == "DPM++ 2M"
    assert p.cfg_scale == 6.5
    assert p.seed == 3141592653
    assert (p.width, p.height) == (640, 448)
    assert p.model == "v1-5-pruned-emaonly"
    assert p.model_hash == "6ce0161689"
    assert p.extra == {
        "Schedule type": "Karras",
        "Clip skip": "2",
        "Lora hashes": "x: 1",
        "TI hashes": "bad-hands: 0123abcd, easyneg: 4567",
        "Version": "v1.10.1",
    }
    assert list(p.extra) == ["Schedule type", "Clip skip", "Lora hashes", "TI hashes", "Version"]


def test_parse_tolerant():
    # no parameter line: everything is prompt
    p = parse_parameters("just a prompt\nwith two lines")
    assert p == GenerationParams(prompt="just a prompt\nwith two lines")
    # fewer than 3 key: value pairs on the last line: still prompt
    p = parse_parameters("a photo\nstyle: noir, mood: dark")
    assert p.prompt == "a photo\nstyle: noir, mood: dark"
    # missing keys keep defaults, int CFG, CRLF line endings, bad numbers keep defaults
    p = parse_parameters("a cat\r\nSteps: 12, CFG scale: 7, Seed: 99, Denoising strength: 0.5")
    assert (p.prompt, p.steps, p.cfg_scale, p.seed) == ("a cat", 12, 7.0, 99)
    assert (p.sampler, p.width, p.height) == ("Euler", 512, 512)
    assert p.extra == {"Denoising strength": "0.5"}
    p = parse_parameters("a\nSteps: many, CFG scale: high, Seed: x")
    assert (p.steps, p.cfg_scale, p.seed) == (25, 7.0, -1)
    # other WxH values stay as text in extra
    p = parse_parameters("a\nSteps: 1, Seed: 2, Size: 64x32, Hires resize: 1024x768")
    assert (p.width, p.height) == (64, 32)
    assert p.extra == {"Hires resize": "1024x768"}
    assert parse_parameters("") == GenerationParams(prompt="")


def test_prompt_lines_are_stripped_like_a1111():
    text = format_parameters(GenerationParams(prompt="  a\n   b  ", negative_prompt=" c\n  d"))
    p = parse_parameters(text)
    assert (p.prompt, p.negative_prompt) == ("a\nb", "c\nd")


def test_bad_extra_key_rejected():
    with pytest.raises(ValueError):
        format_parameters(GenerationParams(prompt="x", extra={"bad, key": "v"}))


def _image():
    return Image.new("RGB", (8, 6), (200, 30, 30))


def test_save_and_read_png(tmp_path):
    params = ROUND_TRIP_CASES[1]
    folder = tmp_path / "not" / "yet" / "there"
    path = save_png(_image(), params, folder)
    assert path == folder / "00000-1234.png"
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (8, 6)
        assert set(im.text) == {PARAMETERS_KEY}
        assert im.text["parameters"] == format_parameters(params)
    assert read_png_parameters(path) == params
    assert read_png_parameters(str(path)) == params
    with Image.open(path) as im:
        assert read_png_parameters(im) == params


def test_running_numbers_never_overwrite(tmp_path):
    p = GenerationParams(prompt="x", seed=7)
    first = save_png(_image(), p, tmp_path)
    second = save_png(_image(), p, tmp_path)
    assert (first.name, second.name) == ("00000-7.png", "00001-7.png")
    # numbers continue after the highest existing one, whatever its file type
    (tmp_path / "00041-other.txt").write_text("keep me")
    third = save_png(_image(), GenerationParams(prompt="y", seed=8), tmp_path, stem="custom")
    assert third.name == "00042-custom.png"
    assert (tmp_path / "00041-other.txt").read_text() == "keep me"
    assert read_png_parameters(first).prompt == "x"
    assert read_png_parameters(third).prompt == "y"
    assert len(list(tmp_path.iterdir())) == 4


def test_save_png_converts_unsupported_mode(tmp_path):
    path = save_png(Image.new("CMYK", (4, 4)), GenerationParams(prompt="cmyk"), tmp_path)
    assert read_png_parameters(path).prompt == "cmyk"


def test_read_garbage_raises_value_error(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all\x00\x01\x02")
    with pytest.raises(ValueError, match="is not an image"):
        read_png_parameters(garbage)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="is not an image"):
        read_png_parameters(text)


def test_read_png_without_chunk_returns_none(tmp_path):
    path = tmp_path / "plain.png"
    _image().save(path)
    assert read_png_parameters(path) is None
    assert read_png_parameters(_image()) is None


def test_read_png_with_other_text_only_returns_none(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "something else")
    path = tmp_path / "other.png"
    _image().save(path, pnginfo=info)
    assert read_png_parameters(path) is None


def test_read_jpeg_without_parameters_is_none(tmp_path):
    path = tmp_path / "photo.jpg"
    _image().save(path, format="JPEG")
    assert read_png_parameters(Path(path)) is None
