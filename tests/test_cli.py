"""The command line, run in-process on the tiny model."""
from __future__ import annotations

from pathlib import Path

from studio import cli
from studio.metadata import read_png_parameters


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
