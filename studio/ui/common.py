"""Widgets and helpers shared by the tabs: status messages, image tiling, page CSS."""
from __future__ import annotations

import html
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, NamedTuple

import gradio as gr
from PIL import Image, ImageDraw, ImageFont

from studio.compute import on_own_thread
from studio.errors import Cancelled, StudioError
from studio.events import Cell, Notice, Result, Step, TrainStep

log = logging.getLogger("studio.ui")

CELL = 128  # grid cells are shown at least this big (64 px suite images are upscaled x2, pixelated)
PENDING = (200, 200, 200)
ACCELERATOR = "accelerator"  # one Gradio concurrency group for every job that uses the GPU

CSS = """
.pixelated img { image-rendering: pixelated; }
#live-image img, #cn-live-image img, .control-map img { width: 100%; height: 100%; object-fit: contain; }
#status-line, #cn-status-line { min-height: 1.5em; }
.status-error { color: #b42318; font-weight: 600; }
.status-info { color: #475467; }
.status-ok { color: #067647; font-weight: 600; }
/* Galleries keep their columns with one image (Gradio spans a lone image over the whole width, zoomed and cropped). */
.fixed-grid .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; }
.fixed-grid .caption-label { font-size: 11px; max-width: calc(100% - 8px); }
"""


def blank_canvas(side: int = 512) -> dict:
    """A sketchpad's opening value: a white ground (with one, Gradio's sketchpad draws at once; without, it draws
    only after its brush tool is picked)."""
    ground = Image.new("RGB", (side, side), "white")
    return {"background": ground, "layers": [], "composite": ground}


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


SCRIPT_HEADER = "x-gradio-user"  # gradio_client sends "api" in it


def session_of(request: gr.Request | None) -> str | None:
    """The page session that sent a request (None outside Gradio: the CLI, tests)."""
    return getattr(request, "session_hash", None) if request is not None else None


def from_script(request: gr.Request | None) -> bool:
    """Whether a request comes from a script rather than this studio's own page: gradio_client says so in a header;
    the page's requests come from a browser on the studio's own origin (browsers send Origin with every POST), and
    anything else (curl, httpx, another site) is a script."""
    headers = getattr(request, "headers", None) if request is not None else None
    if headers is None:
        return False
    if headers.get(SCRIPT_HEADER) == "api":
        return True
    origin, host = headers.get("origin") or "", headers.get("x-forwarded-host") or headers.get("host") or ""
    return urlsplit(origin).netloc != host


def deferred(make: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """A job's events, with the job made (its request parsed) on the first step: inside guarded(), so bad input
    becomes a message instead of an exception before any handler can catch it."""
    yield from make()


# Finished images a page's gallery (and a script's reply) holds, newest first. Every reply carries the whole gallery
# and each entry costs about 3 ms of the server's and the client's time on every run (one suite image through the API:
# 0.46 s with 2-11 entries, 0.51 s with 25-34, 0.61 s with 48).
GALLERY_KEEP = 12
STEP_UPDATE_SECONDS = 0.1  # a page shows a job's progress (step line, live preview) at most ten times a second


def guarded(events: Iterator[Any], on_event: Callable[[Any], dict], on_error: Callable[[str, str], dict],
            request: gr.Request | None = None, manager=None) -> Iterator[dict]:
    """Turn a job's events into widget updates; any failure becomes a message in the page, never a dead app.

    `manager`: the job is claimed for the request's session first, so that only this session's Stop ends it.
    A script (gradio_client) also gets the failure raised as gr.Error after the message, so that it can catch it;
    the page gets the message only (a raised error would badge every output with a bare "Error")."""
    if manager is not None:
        manager.claim(session_of(request))
    shown_at, held = None, {}
    try:
        # Each job's steps run on a thread of its own (studio.compute): Gradio advances a generator on any of its
        # pooled threads, and PyTorch's kernels slow down twofold once two long-lived threads have run them.
        for event in on_own_thread(events):
            # Every event is handled (plots gather their points), but step updates reach the page at most every
            # STEP_UPDATE_SECONDS, merged: each update is a round of Gradio's output processing and a message to the
            # page, and a fast run (25 steps in 0.4 s) spent more time on those than on sampling.
            held.update(on_event(event))
            if isinstance(event, Step | TrainStep) and shown_at is not None \
                    and time.monotonic() - shown_at < STEP_UPDATE_SECONDS:
                continue
            shown_at = time.monotonic()
            yield held
            held = {}
        if held:
            yield held
        return
    except Cancelled as e:
        text, kind = str(e), "info"
    except StudioError as e:
        text, kind = str(e), "error"
    except Exception as e:  # noqa: BLE001 - the page must keep serving whatever went wrong
        log.exception("job failed")
        text, kind = f"Unexpected error: {type(e).__name__}: {e}", "error"
    yield on_error(text, kind)
    if from_script(request):
        raise gr.Error(text, print_exception=False)


def api_signature(fn: Callable, names) -> Callable:
    """Give fn(..., **values) a keyword-only parameter per name, defaulting to None, so that every named parameter of
    its endpoint is optional for a script (None means the field's default; Gradio reads defaults off the signature)."""
    signature = inspect.signature(fn)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names]
    fn.__signature__ = signature.replace(parameters=fixed + extra)
    return fn


def wire_stop(button: gr.Button, manager, progress: gr.Markdown) -> None:
    """Stop ends the job this page session started, never another user's; it says when there is nothing of theirs."""

    def stop(request: gr.Request):
        if manager.request_stop(session_of(request)):
            # A toast, not the status line: the job writes "Stopped at step i/n" there itself, and this answer may
            # arrive after it (it did under load, leaving "Stopping…" over the final message).
            gr.Info("Stopping…")
            return gr.update()
        return status("Nothing of yours is running: Stop ends only the job you started.")

    button.click(stop, None, progress, queue=False, api_visibility="private")


class Outputs(NamedTuple):
    """The widgets a text-to-image job streams into (Generate and ControlNet tabs)."""

    live: gr.Image
    progress: gr.Markdown
    gallery: gr.Gallery
    history: gr.State
    used_seed: gr.Number
    infotext: gr.Textbox


def result_panel(prefix: str, progress_text: str = "") -> Outputs:
    """Live preview, status line, seed used, gallery of saved images and the last image's settings, in the current column."""
    live = gr.Image(label="Live preview (x0-hat)", type="pil", format="png", interactive=False, height=320,
                    elem_id=f"{prefix}live-image", elem_classes=["pixelated"])
    progress = gr.Markdown(progress_text, elem_id=f"{prefix}status-line")
    used_seed = gr.Textbox(label="Seed used", interactive=False, placeholder="after a run", max_lines=1,
                           elem_id=f"{prefix}seed-used")
    gallery = gr.Gallery(label=f"Latest {GALLERY_KEEP} images (saved with their settings)", columns=3,
                         height=260, object_fit="contain",
                         elem_id=f"{prefix}gallery", elem_classes=["pixelated", "fixed-grid"])
    infotext = gr.Textbox(label="Settings of the last image", lines=3, interactive=False)
    return Outputs(live, progress, gallery, gr.State([]), used_seed, infotext)


def job_updates(events, past: list, out: Outputs, on_other: Callable[[Any], dict] | None = None,
                request: gr.Request | None = None, manager=None) -> Iterator[dict]:
    """A sampling job's events as widget updates: live x0-hat, step/it/s line, then the gallery; errors as messages.
    Events other than Step / Notice / Result go to `on_other` (e.g. the ControlNet job's Maps)."""
    shown = list(past or [])

    def on_event(event) -> dict:
        if isinstance(event, Step):
            text = f"Step {event.i}/{event.n} · {event.metrics.get('it_per_s', 0):.1f} it/s"
            if "guidance_log_prob" in event.metrics:
                text += f" · guidance log p {event.metrics['guidance_log_prob']:.2f}"
            update = {out.progress: status(text)}
            if event.seeds:
                update[out.used_seed] = seeds_text(event.seeds)
            if event.preview:
                update[out.live] = tile(event.preview)
            return update
        if isinstance(event, Notice):
            return {out.progress: status(event.text)}
        if not isinstance(event, Result):
            return on_other(event) if on_other else {}
        items = [(str(p), f"seed {s}") for p, s in zip(event.paths, event.seeds)] or [(im, f"seed {s}") for im, s in zip(event.images, event.seeds)]
        shown[:0] = items
        # Every run sends the whole gallery again (Gradio re-processes each file, a script downloads each one): kept
        # to the latest GALLERY_KEEP images (all of this run's, if its batch is larger), the older ones are in the
        # outputs folder.
        del shown[max(GALLERY_KEEP, len(items)):]
        where = f" · saved to {Path(event.paths[0]).parent}" if event.paths else ""
        # The finished image as saved (a PNG with its settings), so that downloading the big view gives that file.
        final = str(event.paths[0]) if len(event.paths) == 1 else tile(event.images)
        return {out.live: final, out.gallery: shown, out.history: shown, out.used_seed: seeds_text(event.seeds),
                out.infotext: event.infotexts[0],
                out.progress: status(f"Done: {len(event.images)} image(s) in {event.metrics['seconds']:.1f} s{where}"
                                     f"{' · ' + event.engine if event.engine else ''}", "ok")}

    def on_error(text: str, kind: str) -> dict:
        return {out.progress: status(text, kind)}

    yield from guarded(events, on_event, on_error, request, manager)


def seeds_text(seeds) -> str:
    """The seed of a run as the user reads it: one number, or the first and last of a batch."""
    seeds = list(seeds)
    return str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]} … {seeds[-1]} (batch of {len(seeds)})"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def compose_grid(cells: dict[tuple[int, int], Image.Image], row_labels: list[str], col_labels: list[str]) -> Image.Image:
    """One labelled sheet: column headers (scales) on top, row labels on the left, grey where a cell is not done yet."""
    first = next(iter(cells.values()))
    factor = max(1, CELL // max(first.size))
    w, h = first.width * factor, first.height * factor
    font = _font(14)
    left = max([110] + [int(font.getlength(t)) + 12 for t in row_labels])
    # Column headers sit low in a tall band: the page's image toolbar (download, full screen) covers the band's top.
    top, gap, header_y = 44, 2, 24
    sheet = Image.new("RGB", (left + len(col_labels) * (w + gap), top + len(row_labels) * (h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(col_labels):
        x = left + c * (w + gap) + (w - font.getlength(text)) / 2
        draw.text((x, header_y), text, fill="black", font=font)
    for r, text in enumerate(row_labels):
        draw.text((6, top + r * (h + gap) + h / 2 - 8), text, fill="black", font=font)
        for c in range(len(col_labels)):
            xy = (left + c * (w + gap), top + r * (h + gap))
            image = cells.get((r, c))
            if image is None:
                draw.rectangle([xy, (xy[0] + w - 1, xy[1] + h - 1)], fill=PENDING)
            else:
                sheet.paste(image.convert("RGB").resize((w, h), Image.Resampling.NEAREST), xy)
    return sheet


def cell_update(event, shown: dict, labels: dict[str, list[str]], grid, progress) -> dict:
    """A grid job's Cell as updates: the cell joins the sheet (row labels as the cells name them), and a count."""
    shown[(event.row, event.col)] = event.image
    labels["rows"][event.row] = event.row_label
    total = len(labels["rows"]) * len(labels["cols"])
    return {grid: compose_grid(shown, labels["rows"], labels["cols"]),
            progress: status(f"Cell {len(shown)}/{total}: {event.row_label}, {event.col_label}")}


def grid_job_updates(events: Iterator[Any], shown: dict, labels: dict[str, list[str]], grid, progress,
                     on_summary: Callable[[Any], dict], request: gr.Request | None = None, manager=None) -> Iterator[dict]:
    """A grid job's events (Notice, Cell ..., then its summary) as widget updates; failures as messages."""

    def on_event(event) -> dict:
        if isinstance(event, Notice):
            return {progress: status(event.text)}
        if isinstance(event, Cell):
            return cell_update(event, shown, labels, grid, progress)
        return on_summary(event)

    yield from guarded(events, on_event, lambda text, kind: {progress: status(text, kind)}, request, manager)
