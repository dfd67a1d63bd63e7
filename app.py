"""Diffusion Studio: parse flags, build the Studio, serve the page. Nothing heavy happens at import."""
from __future__ import annotations

import argparse
import sys

from studio.config import LOOPBACK_HOSTS, add_model_flags, config_from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Diffusion Studio: a web studio for diffusion image models.")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, help="USER:PASSWORD; required to serve on a non-loopback address")
    add_model_flags(p)
    return p.parse_args(argv)


def check_exposure(host: str, auth: str | None) -> str | None:
    """A message if serving on this host without a password would expose the GPU to the network."""
    if host in LOOPBACK_HOSTS:
        return None
    if not auth or ":" not in auth:
        return (f"Refusing to serve on {host} without a password: anyone on the network could use this machine. "
                "Add --auth USER:PASSWORD, or use --host 127.0.0.1.")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_exposure(args.host, args.auth)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from studio import ui  # heavy imports (torch, diffusers, gradio) only once flags are fine
    from studio.studio import Studio

    studio = Studio(config_from_args(args))
    demo = ui.build(studio)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, auth=auth,
                                                   **ui.launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
