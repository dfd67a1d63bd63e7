"""Command line: `python -m studio generate|control|inverse|sweep|flow|train|presets|models`: the web app's jobs without
a browser, one subcommand per job, writing the same PNGs with settings."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from studio import cli_train, sources
from studio.config import PRESETS_DIR, StudioConfig, add_model_flags, config_from_args
from studio.control.annotators import pose_to_json
from studio.control.maps import ANNOTATORS, MapSource
from studio.control.pose import POSE_PRESETS, preset_pose
from studio.errors import ModelError, RequestError, StudioError
from studio.events import Cell, Maps, Notice, Result, Step, SweepSummary
from studio.flow.distributions import DISTRIBUTIONS, parse_points
from studio.flow.pairings import DEFAULT_SINKHORN_REG, PAIRINGS
from studio.inverse.operators import OPERATORS
from studio.jobs import (ControlNetRequest, ControlUnitRequest, InverseRequest, SweepRequest, Txt2ImgRequest, controlnet,
                         inverse, sweep, txt2img)
from studio.jobs.flow2d import DRAWN, Flow2DRequest, flow2d, parse_steps, summary
from studio.jobs.sweep import AXES, parse_axis_values, parse_scales
from studio.presets import apply_preset, get_preset, load_presets

# Flag dest -> request field; a flag left out (None) keeps the preset's value, or the request's default.
OVERRIDES = {
    "model": "model", "negative_prompt": "negative_prompt", "sampler": "sampler", "steps": "steps",
    "cfg": "guidance_scale", "cfg_rescale": "guidance_rescale", "width": "width", "height": "height", "batch": "batch_size",
}


def _generation_flags(p: argparse.ArgumentParser) -> None:
    """The text-to-image settings shared by generate, control and sweep."""
    p.add_argument("--prompt", required=True, help="what to draw")
    p.add_argument("--seed", type=int, default=-1, help="-1 (default): random; image k of a batch uses seed + k")
    p.add_argument("--out", type=Path, default=None, help="folder for the images (default: --outputs-dir)")
    p.add_argument("--preset", default=None, help="named settings from the presets folder (see `python -m studio presets`)")
    p.add_argument("--model", default=None, help="a name in the models folder, a diffusers folder, a .safetensors file or a hub id")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--sampler", default=None, help="e.g. 'Euler', 'Euler a', 'DPM++ 2M Karras'")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg", type=float, default=None, help="guidance scale")
    p.add_argument("--cfg-rescale", type=float, default=None, help="guidance rescale, 0 to 1")
    p.add_argument("--width", type=int, default=None, help="0: the model's native size")
    p.add_argument("--height", type=int, default=None, help="0: the model's native size")
    p.add_argument("--batch", type=int, default=None, help="images per run")
    p.add_argument("--presets-dir", type=Path, default=PRESETS_DIR, help="folder of preset YAML files")
    p.add_argument("--lora", action="append", default=[], metavar="DIR_OR_NAME:WEIGHT",
                   help="a LoRA (a name in models/lora, a folder or a file) and its weight (default 1); repeatable")
    p.add_argument("--embedding", action="append", default=[], metavar="DIR_OR_NAME",
                   help="a textual-inversion embedding (a name in models/embeddings, a folder or a file); repeatable")
    add_model_flags(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description="Diffusion studio from the command line.")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{generate,control,inverse,sweep,flow,train,presets,models}")

    gen = sub.add_parser("generate", help="text to image; saves PNGs with their settings")
    _generation_flags(gen)

    con = sub.add_parser("control", help="text to image with ControlNets; maps from drawings, images, poses or ready maps",
                         epilog="e.g. --unit shapes-v1-canny scribble star.png --unit shapes-v1-pose pose waving")
    _generation_flags(con)
    con.add_argument("--unit", nargs=3, action="append", required=True, metavar=("CONTROLNET", "ANNOTATOR", "INPUT"),
                     help=f"a ControlNet, how its map is made ({', '.join(ANNOTATORS)}) and its input: an image file "
                          f"(scribble: a drawing, canny: a photo, none: a ready map), or for pose an OpenPose JSON file "
                          f"or a preset ({', '.join(POSE_PRESETS[:5])}, ...). Repeat for several ControlNets.")
    con.add_argument("--scale", type=float, action="append", default=None, help="conditioning scale per --unit (default 1)")
    con.add_argument("--maps", type=Path, default=None, help="also save the control maps into this folder")

    inv = sub.add_parser("inverse", help="inpainting, deblurring, super-resolution by DPS; saves DPS and baseline PNGs")
    inv.add_argument("--image", type=Path, required=True, help="the clean image (the measurement is made from it), or with "
                                                                "--measured the measurement itself")
    inv.add_argument("--operator", default="inpainting", choices=list(OPERATORS))
    inv.add_argument("--measured", action="store_true", help="the image already is the measurement (no scores)")
    seen = set()
    for cls in OPERATORS.values():
        for p in cls.params:
            if p.name not in seen:
                seen.add(p.name)
                kind = int if isinstance(p.default, int) else float
                inv.add_argument(f"--{p.name.replace('_', '-')}", type=kind, default=None,
                                 help=f"{p.label} ({', '.join(c.name for c in OPERATORS.values() if p in c.params)})")
    inv.add_argument("--hole", type=Path, default=None, help="inpainting: a mask image, white where pixels are missing")
    for name, kind, helptext in (("sigma", float, "measurement noise on the [-1, 1] scale"), ("zeta", float, "DPS step size"),
                                 ("strength", float, "start strength; 1 = from pure noise"), ("steps", int, None),
                                 ("seed", int, None), ("sampler", str, None), ("prompt", str, None), ("model", str, None)):
        inv.add_argument(f"--{name}", type=kind, default=None, help=helptext)
    inv.add_argument("--dps-mode", choices=["full", "fast"], default=None,
                     help="full: DPS's gradient through the UNet and decoder; fast: from x0-hat, through the decoder only")
    inv.add_argument("--tiny-decoder", action="store_true", default=None,
                     help="the model's tiny decoder (AutoencoderTiny) in the gradient path instead of its VAE")
    inv.add_argument("--out", type=Path, default=None, help="folder for the images (default: --outputs-dir)")
    inv.add_argument("--json", action="store_true", help="print the scores as JSON")
    add_model_flags(inv)

    swp = sub.add_parser("sweep", help="a grid of CFG scales by seeds (or sampler, steps, ...); every cell saved")
    _generation_flags(swp)
    swp.add_argument("--scales", default="1, 3, 5, 7", help="CFG scales, the columns")
    swp.add_argument("--axis", default="seed", choices=list(AXES), help="what varies along the rows")
    swp.add_argument("--values", default="", help="row values for axes other than seed, comma-separated")
    swp.add_argument("--rows", type=int, default=2, help="rows when the axis is seed")
    swp.add_argument("--json", action="store_true", help="print the per-column metrics as JSON")

    _flow_parser(sub)
    cli_train.add_parser(sub)

    pre = sub.add_parser("presets", help="list the presets (name and description)")
    pre.add_argument("--presets-dir", type=Path, default=PRESETS_DIR, help="folder of preset YAML files")

    mod = sub.add_parser("models", help="list the models found (embedded suite, then the models folder)")
    add_model_flags(mod)
    return parser


def _config(args: argparse.Namespace):
    try:
        config = config_from_args(args)
    except ValueError as e:  # e.g. an unknown --dtype
        raise StudioError(str(e)) from e
    config.allow_any_path = True  # a local tool: its user may already read any path the process can
    if getattr(args, "out", None) is not None:
        config.outputs_dir = args.out
    if getattr(args, "presets_dir", None) is not None:
        config.presets_dir = args.presets_dir
    return config


def build_request(args: argparse.Namespace, presets_dir: Path) -> Txt2ImgRequest:
    """Defaults, then the preset, then the flags given explicitly."""
    req = Txt2ImgRequest(prompt=args.prompt, seed=args.seed, preview_every=0, save=True)
    if args.preset:
        req = apply_preset(req, get_preset(load_presets(presets_dir), args.preset))
    for dest, field_name in OVERRIDES.items():
        value = getattr(args, dest)
        if value is not None:
            setattr(req, field_name, value)
    req.loras = tuple(parse_lora_flag(given) for given in args.lora)
    req.embeddings = tuple(args.embedding)
    return req


def parse_lora_flag(given: str) -> tuple[str, float]:
    """`--lora NAME_OR_PATH[:WEIGHT]` -> (name or path, weight)."""
    spec, _, weight = given.rpartition(":")
    try:
        return (spec, float(weight)) if spec else (given, 1.0)
    except ValueError:
        return given, 1.0


def _run(config, events, model_spec: str) -> list:
    """Print a job's progress to stderr and its saved files to stdout; returns its final events (Result, SweepSummary)."""
    from studio.compute import on_own_thread
    from studio.manager import ModelManager  # heavy import, only where a model runs

    manager = ModelManager(config)
    finals = []
    try:
        # On a thread that ends with the job, as in the page: the engine builder's timings then share the CPU with
        # no idle team of PyTorch's workers (studio.compute).
        for event in on_own_thread(events(manager), on_abandon=manager.request_stop):  # Ctrl-C: Stop
            if isinstance(event, Step):
                print(f"{event.phase + ' ' if event.phase else ''}step {event.i}/{event.n}  "
                      f"{event.metrics.get('it_per_s', 0.0):.1f} it/s", file=sys.stderr, flush=True)
            elif isinstance(event, Notice):
                print(f"note: {event.text}", file=sys.stderr, flush=True)
            elif isinstance(event, Cell):
                print(f"saved {event.path}  row {event.row} col {event.col}  {event.row_label}  {event.col_label}", flush=True)
            elif isinstance(event, Result):
                for path, seed in zip(event.paths, event.seeds * len(event.paths)):
                    print(f"saved {path}  seed {seed}", flush=True)
                if event.engine:
                    print(event.engine, file=sys.stderr, flush=True)
                finals.append(event)
            elif isinstance(event, (SweepSummary, Maps)):
                finals.append(event)
    except ModelError as e:
        known = sources.list_models(config)
        if model_spec not in known and not Path(model_spec).expanduser().exists():
            listed = ", ".join(known) or "none"
            raise ModelError(f"{e} Models found (in {config.assets_dir} and {config.models_dir}): {listed}. "
                             "Put weights in the models folder or pass --models-dir.") from e
        raise
    _finish_engines(manager)
    return finals


def _finish_engines(manager) -> None:
    """An engine build started by this run (the first on this machine) is finished before exit, so the next run
    starts on the fast path instead of starting it again."""
    pending = [m.engines for m in manager.loaded_models() if m.engines is not None and m.engines.pending()]
    if pending:
        print("note: optimizing for this CPU (once per model and image size; later runs start fast)...",
              file=sys.stderr, flush=True)
        for engines in pending:
            engines.wait()
            print(engines.describe(), file=sys.stderr, flush=True)


def cmd_generate(args: argparse.Namespace) -> int:
    config = _config(args)
    req = build_request(args, config.presets_dir)
    _run(config, lambda manager: txt2img(manager, req), req.model)
    return 0


def _read_image(path: Path) -> np.ndarray:
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except (OSError, ValueError) as e:
        raise RequestError(f"Could not read the image {path}: {e}") from e


def unit_from_flags(net: str, annotator: str, given: str, scale: float) -> ControlUnitRequest:
    if annotator == "pose":
        path = Path(given)
        if path.is_file():
            text = path.read_text()
        elif given in POSE_PRESETS:
            text = pose_to_json(preset_pose(given), (64, 64))
        else:
            raise RequestError(f"--unit {net} pose {given}: give an OpenPose JSON file or a preset ({', '.join(POSE_PRESETS)}).")
        return ControlUnitRequest(net, MapSource("pose", pose=text), scale)
    return ControlUnitRequest(net, MapSource(annotator, _read_image(Path(given))), scale)


def cmd_control(args: argparse.Namespace) -> int:
    config = _config(args)
    base = build_request(args, config.presets_dir)
    scales = args.scale or []
    units = tuple(unit_from_flags(net, kind, given, scales[k] if k < len(scales) else 1.0)
                  for k, (net, kind, given) in enumerate(args.unit))
    finals = _run(config, lambda manager: controlnet(manager, ControlNetRequest(base, units)), base.model)
    if args.maps is not None:
        args.maps.mkdir(parents=True, exist_ok=True)
        for event in finals:
            if isinstance(event, Maps):
                for k, m in enumerate(event.maps):
                    Image.fromarray(m).save(args.maps / f"control-map-{k}.png")
                    print(f"map {args.maps / f'control-map-{k}.png'}", flush=True)
    return 0


def cmd_inverse(args: argparse.Namespace) -> int:
    config = _config(args)
    given = {k: v for k, v in vars(args).items() if v is not None and k in InverseRequest.__dataclass_fields__}
    hole = (_read_image(args.hole)[..., 0] > 127).astype(np.uint8) if args.hole is not None else None
    req = InverseRequest(**{**given, "image": _read_image(args.image), "from_clean": not args.measured, "hole": hole})
    finals = _run(config, lambda manager: inverse(manager, req), req.model)
    metrics = finals[-1].metrics
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print("  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    config = _config(args)
    base = build_request(args, config.presets_dir)
    req = SweepRequest(base, parse_scales(args.scales), args.axis, parse_axis_values(args.axis, args.values), args.rows)
    finals = _run(config, lambda manager: sweep(manager, req), base.model)
    summary = finals[-1]
    if args.json:
        print(json.dumps(summary.columns, indent=2))
    else:
        for column in summary.columns:
            print("  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in column.items()))
    return 0


# ---------------------------------------------------------------- flow: the Flow matching tab's 2D playground
def _flow_parser(sub) -> None:
    """`flow 2d`: train the playground's velocity fields on the CPU and print their metrics (no model files)."""
    flow = sub.add_parser("flow", help="flow matching; `flow 2d`: the 2D playground (random vs OT pairing), metrics")
    two_d = flow.add_subparsers(dest="flow_command", required=True, metavar="{2d}").add_parser(
        "2d", help="train flow matching in 2D with random and minibatch-OT pairings; path energy and W2 at 1, 2, 4, 8 steps")
    two_d.add_argument("--source", default="8gaussians", help=f"one of {', '.join(DISTRIBUTIONS)}")
    two_d.add_argument("--target", default="moons", help=f"one of {', '.join(DISTRIBUTIONS)}, or {DRAWN} with --points")
    two_d.add_argument("--points", type=Path, default=None, help=f"--target {DRAWN}: a text file, one 'x, y' per line")
    two_d.add_argument("--pairing", action="append", default=None,
                       help=f"{', '.join(PAIRINGS)}; repeat or comma-separate (default: random and ot)")
    two_d.add_argument("--steps", type=int, default=Flow2DRequest.train_steps, help="training steps per model")
    two_d.add_argument("--batch", type=int, default=Flow2DRequest.batch)
    two_d.add_argument("--eval-steps", default="1,2,4,8", help="Euler steps at which W2 to the target is measured")
    two_d.add_argument("--seed", type=int, default=0, help="-1: random")
    two_d.add_argument("--sinkhorn-reg", type=float, default=DEFAULT_SINKHORN_REG, help="on the cost divided by its maximum")
    two_d.add_argument("--reflow", action="store_true", help="also reflow the random-pairing model (2-rectified flow)")
    two_d.add_argument("--json", action="store_true", help="print the metrics as JSON")
    two_d.add_argument("--out", type=Path, default=None, help="save the trajectory plot to this PNG (and the W2 chart beside it)")


def cmd_flow(args: argparse.Namespace) -> int:
    points = None
    if args.points is not None:
        try:
            points = parse_points(args.points.read_text())
        except OSError as e:
            raise RequestError(f"Could not read the points file {args.points}: {e}") from e
    pairings = tuple(name.strip() for given in (args.pairing or ["random,ot"]) for name in given.split(",") if name.strip())
    req = Flow2DRequest(args.source, args.target, points, pairings, parse_steps(args.eval_steps), args.steps, args.batch,
                        args.seed, args.sinkhorn_reg, args.reflow)
    result = _run(StudioConfig(allow_any_path=True), lambda manager: flow2d(manager, req), "")[-1]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result.named["trajectories"].save(args.out)
        result.named["w2"].save(args.out.with_name(f"{args.out.stem}-w2.png"))
        print(f"saved {args.out}", file=sys.stderr if args.json else sys.stdout, flush=True)  # keep --json's stdout JSON
    if args.json:
        print(json.dumps(result.metrics, indent=2))
    else:
        for row in summary(result.metrics):
            print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    presets = load_presets(args.presets_dir)
    if not presets:
        print(f"No presets in {args.presets_dir}.", file=sys.stderr)
        return 0
    width = max(len(name) for name in presets)
    for name, preset in presets.items():
        print(f"{name:<{width}}  {preset.description}  [model: {preset.model}]")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    config = _config(args)
    names = sources.list_models(config)
    if not names:
        print(f"No models in {config.assets_dir} or {config.models_dir}.", file=sys.stderr)
    for name in names:
        print(name)
    return 0


COMMANDS = {"generate": cmd_generate, "control": cmd_control, "inverse": cmd_inverse, "sweep": cmd_sweep, "flow": cmd_flow,
            "train": lambda args: cli_train.cmd_train(args, _config(args)), "presets": cmd_presets, "models": cmd_models}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error (argparse has printed it)
        return e.code if isinstance(e.code, int) else 2
    try:
        return COMMANDS[args.command](args)
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
