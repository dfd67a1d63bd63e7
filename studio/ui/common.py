"""Widgets and helpers shared by the tabs: status messages, image tiling, page CSS."""
from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterator
from typing import Any

from PIL import Image

from studio.errors import Cancelled, StudioError

log = logging.getLogger("studio.ui")

ACCELERATOR = "accelerator"  # one Gradio concurrency group for every job that uses the GPU

CSS = """
.pixelated img { image-rendering: pixelated; }
#live-image img, #cn-live img, .control-map img { width: 100%; height: 100%; object-fit: contain; }
#status-line { min-height: 1.5em; }
.status-error { color: #b42318; font-weight: 600; }
.status-info { color: #475467; }
.status-ok { color: #067647; font-weight: 600; }
"""


def status(text: str, kind: str = "info") -> str:
    """A status line as HTML-safe markdown; kind is info, error or ok."""
    prefix = {"error": "Error: ", "ok": "", "info": ""}[kind]
    return f'<span class="status-{kind}">{prefix}{html.escape(text)}</span>'


def tile(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    """Several same-size images side by side (rows of `cols`) as one image, for batch previews."""
    if len(images) == 1:
        return images[0]
    cols = cols or min(len(images), 4)
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w, rows * h))
    for k, im in enumerate(images):
        sheet.paste(im, ((k % cols) * w, (k // cols) * h))
    return sheet


def guarded(events: Iterator[Any], on_event: Callable[[Any], dict], on_error: Callable[[str, str], dict]) -> Iterator[dict]:
    """Turn a job's events into widget updates; any failure becomes a message in the page, never a dead app."""
    try:
        for event in events:
            yield on_event(event)
    except Cancelled as e:
        yield on_error(str(e), "info")
    except StudioError as e:
        yield on_error(str(e), "error")
    except Exception as e:  # noqa: BLE001 - the page must keep serving whatever went wrong
        log.exception("job failed")
        yield on_error(f"Unexpected error: {type(e).__name__}: {e}", "error")
