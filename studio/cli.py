"""Command line: `python -m studio generate|presets|models`, the same jobs as the web app without a browser."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studio import sources
from studio.config import PRESETS_DIR, add_model_flags, config_from_args
from studio.errors import ModelError, StudioError
from studio.events import Notice, Result, Step
from studio.jobs import Txt2ImgRequest, txt2img
from studio.presets import apply_preset, get_preset, load_presets

# Flag dest -> request field; a flag left out (None) keeps the preset's value, or the request's default.
OVERRIDES = {
    "model": "model", "negative_prompt": "negative_prompt", "sampler": "sampler", "steps": "steps",
    "cfg": "guidance_scale", "cfg_rescale": "guidance_rescale", "width": "width", "height": "height", "batch": "batch_size",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description="Diffusion studio from the command line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,presets,models}")

    gen = sub.add_parser("generate", help="text to image; saves PNGs with their settings")
    gen.add_argument("--prompt", required=True, help="what to draw")
    gen.add_argument("--seed", type=int, default=-1, help="-1 (default): random; image k of a batch uses seed + k")
    gen.add_argument("--out", type=Path, default=None, help="folder for the images (default: --outputs-dir)")
    gen.add_argument("--preset", default=None, help="named settings from the presets folder (see `python -m studio presets`)")
    gen.add_argument("--model", default=None, help="a name in the models folder, a diffusers folder, a .safetensors file or a hub id")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--sampler", default=None, help="e.g. 'Euler', 'Euler a', 'DPM++ 2M Karras'")
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--cfg", type=float, default=None, help="guidance scale")
    gen.add_argument("--cfg-rescale", type=float, default=None, help="guidance rescale, 0 to 1")
    gen.add_argument("--width", type=int, default=None, help="0: the model's native size")
    gen.add_argument("--height", type=int, default=None, help="0: the model's native size")
    gen.add_argument("--batch", type=int, default=None, help="images per run")
    gen.add_argument("--presets-dir", type=Path, default=PRESETS_DIR, help="folder of preset YAML files")
    add_model_flags(gen)

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
    return req


def cmd_generate(args: argparse.Namespace) -> int:
    config = _config(args)
    req = build_request(args, config.presets_dir)
    from studio.manager import ModelManager  # heavy import, only where a model runs

    manager = ModelManager(config)
    try:
        for event in txt2img(manager, req):
            if isinstance(event, Step):
                print(f"step {event.i}/{event.n}  {event.metrics.get('it_per_s', 0.0):.1f} it/s", file=sys.stderr, flush=True)
            elif isinstance(event, Notice):
                print(f"note: {event.text}", file=sys.stderr, flush=True)
            elif isinstance(event, Result):
                for path, seed in zip(event.paths, event.seeds):
                    print(f"saved {path}  seed {seed}", flush=True)
    except ModelError as e:
        known = sources.list_models(config)
        if req.model not in known and not Path(req.model).expanduser().exists():
            listed = ", ".join(known) or "none"
            raise ModelError(f"{e} Models found (in {config.assets_dir} and {config.models_dir}): {listed}. "
                             "Put weights in the models folder or pass --models-dir.") from e
        raise
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


COMMANDS = {"generate": cmd_generate, "presets": cmd_presets, "models": cmd_models}


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
