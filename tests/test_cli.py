"""The command line, run in-process on the tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from studio import cli
from studio.metadata import read_png_parameters

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "samples" / "scene-003.png"


def _flags(tiny_model_dir, out) -> list[str]:
    return ["--models-dir", str(tiny_model_dir.parent), "--device", "cpu", "--dtype", "fp32", "--out", str(out)]


def test_generate_saves_png_with_seed(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["generate", "--prompt", "a red star", "--seed", "7", "--model", "tiny-sd", "--steps", "2",
                     "--sampler", "Euler", *_flags(tiny_model_dir, out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "step 2/2" in captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith("saved ")]
    assert len(lines) == 1 and lines[0].endswith("seed 7")
    path = Path(lines[0].split()[1])
    assert path.is_file() and path.parent == out
    params = read_png_parameters(path)
    assert params.seed == 7 and params.steps == 2 and params.prompt == "a red star"


def test_flags_override_preset(tmp_path):
    (tmp_path / "p.yaml").write_text("model: m1\nsampler: Euler a\nsteps: 9\nguidance_scale: 3\nwidth: 64\nheight: 64\n")
    args = cli.build_parser().parse_args(["generate", "--prompt", "x", "--preset", "p", "--steps", "4", "--cfg", "2.5"])
    req = cli.build_request(args, tmp_path)
    assert (req.model, req.sampler, req.steps, req.guidance_scale, req.width) == ("m1", "Euler a", 4, 2.5, 64)


def test_bad_sampler_exits_2_listing_samplers(tiny_model_dir, tmp_path, capsys):
    code = cli.main(["generate", "--prompt", "x", "--model", "tiny-sd", "--sampler", "Warp 9",
                     *_flags(tiny_model_dir, tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Warp 9" in err and "DPM++ 2M Karras" in err
    assert "Traceback" not in err


def test_missing_model_exits_2_with_message(tiny_model_dir, tmp_path, capsys):
    code = cli.main(["generate", "--prompt", "x", "--model", "no-such-model", "--steps", "1",
                     *_flags(tiny_model_dir, tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "no-such-model" in err and "not found" in err and "tiny-sd" in err


def test_unknown_preset_exits_2(capsys):
    assert cli.main(["generate", "--prompt", "x", "--preset", "nope"]) == 2
    assert "sd15" in capsys.readouterr().err


def test_presets_and_models_listing(tiny_model_dir, capsys):
    assert cli.main(["presets"]) == 0
    assert "shapes-fast" in capsys.readouterr().out
    assert cli.main(["models", "--models-dir", str(tiny_model_dir.parent)]) == 0
    assert "tiny-sd" in capsys.readouterr().out.split()


def _suite_flags(tmp_path) -> list[str]:
    return ["--models-dir", str(tmp_path / "models"), "--device", "cpu", "--dtype", "fp32", "--out", str(tmp_path / "out")]


def _saved(out: str) -> list[Path]:
    return [Path(line.split()[1]) for line in out.splitlines() if line.startswith("saved ")]


def test_every_job_has_a_subcommand_with_help(capsys):
    for command in ("generate", "control", "inverse", "sweep"):
        assert cli.main([command, "--help"]) == 0
        assert "usage: python -m studio " + command in capsys.readouterr().out


def test_control_builds_the_map_from_a_drawing_and_saves_its_settings(tmp_path, capsys):
    """The embedded suite and its canny ControlNet: a drawn square outline becomes the map, at the image size."""
    drawing = np.full((256, 256, 3), 255, np.uint8)
    drawing[40:200:, 40:44] = drawing[40:200, 196:200] = drawing[40:44, 40:200] = drawing[196:200, 40:200] = 0
    Image.fromarray(drawing).save(tmp_path / "square.png")
    code = cli.main(["control", "--prompt", "a red square", "--seed", "3", "--steps", "3",
                     "--unit", "shapes-v1-canny", "scribble", str(tmp_path / "square.png"), "--maps", str(tmp_path / "maps"),
                     *_suite_flags(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    [path] = _saved(captured.out)
    params = read_png_parameters(path)
    assert params.seed == 3 and "Module: scribble, Model: shapes-v1-canny" in params.extra["ControlNet 0"]
    control_map = np.asarray(Image.open(tmp_path / "maps" / "control-map-0.png"))
    assert control_map.shape[:2] == (64, 64) and control_map[10, 30, 0] == 255 and control_map[32, 32, 0] == 0


def test_inverse_saves_dps_and_baseline_with_the_operator_settings(tmp_path, capsys):
    code = cli.main(["inverse", "--image", str(SAMPLE), "--operator", "super_resolution", "--factor", "2",
                     "--steps", "4", "--json", *_suite_flags(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    paths = _saved(captured.out)
    assert len(paths) == 2
    params = [read_png_parameters(p) for p in paths]
    assert [p.extra["Result"] for p in params] == ["DPS", "baseline"]
    assert all(p.extra["SR factor"] == "2" and p.extra["Inverse problem"] == "super_resolution" for p in params)
    metrics = json.loads(captured.out[captured.out.index("{"):])
    assert metrics["dps_psnr"] > 10 and "baseline_psnr" in metrics


def test_sweep_saves_every_cell_and_prints_the_columns(tmp_path, capsys):
    code = cli.main(["sweep", "--prompt", "a big red star", "--scales", "1,4", "--rows", "1", "--steps", "3", "--seed", "5",
                     "--json", *_suite_flags(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    paths = _saved(captured.out)
    assert [read_png_parameters(p).cfg_scale for p in paths] == [1.0, 4.0]
    columns = json.loads(captured.out[captured.out.index("["):])
    assert [c["scale"] for c in columns] == [1.0, 4.0] and all(c["adherence"] is not None for c in columns)


def test_control_with_an_unreadable_image_exits_2(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    code = cli.main(["control", "--prompt", "x", "--unit", "shapes-v1-canny", "canny", str(tmp_path / "broken.png"),
                     *_suite_flags(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Could not read the image" in err and "Traceback" not in err
