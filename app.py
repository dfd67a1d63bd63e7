"""Diffusion Studio: parse flags, build the Studio, serve the page. Nothing heavy happens at import."""
from __future__ import annotations

import argparse
import sys

from studio import server
from studio.config import add_model_flags, config_from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Diffusion Studio: a web studio for diffusion image models.")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, help="USER:PASSWORD (both non-empty); required to serve on a non-loopback address")
    p.add_argument("--allowed-hosts", default="", help="comma-separated host names the page may be reached under besides "
                   "loopback and --host (e.g. behind a reverse proxy; '*' turns the Host check off)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted, in MB")
    p.add_argument("--max-queue", type=int, default=32, help="jobs that may wait at once; more are refused as busy")
    add_model_flags(p)
    return p.parse_args(argv)


def check_exposure(host: str, auth: str | None, share: bool = False) -> str | None:
    """A message if serving so would expose the machine: empty credentials, or a network address or a public share
    link (GRADIO_SHARE=True) without a password."""
    return server.exposure_problem(host, auth, share)


def serve_settings(args: argparse.Namespace) -> server.ServeSettings:
    """The serving settings from the flags (the tests launch with these too)."""
    hosts = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip())
    return server.ServeSettings(host=args.host, port=args.port, auth=server.parse_auth(args.auth),
                                share=server.share_requested(), allowed_hosts=hosts, max_upload_mb=args.max_upload_mb,
                                max_queue=args.max_queue)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_exposure(args.host, args.auth, server.share_requested())
    if args.max_upload_mb <= 0 or args.max_queue < 1:
        problem = problem or "--max-upload-mb must be above 0 and --max-queue at least 1."
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from studio import ui  # heavy imports (torch, diffusers, gradio) only once flags are fine
    from studio.studio import Studio

    studio = Studio(config_from_args(args))
    studio.warm_up()  # the default model (and its cached engines) loads in the background while the page starts
    demo = ui.build(studio)
    server.launch(demo, serve_settings(args), studio.config, **ui.launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
