"""Uploaded images, read once and safely: size checked from the header before decoding, broken files named, large
pictures scaled down at upload (and the user told), so that no handler meets a bomb or an undecodable file."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from studio.config import Limits
from studio.errors import RequestError

MAX_UPLOAD_PIXELS = Limits().max_image_pixels  # refused above this, before decoding (a 13000x13000 PNG is 169 MP)
UPLOAD_MAX_SIDE = 1024  # larger pictures are scaled down once, at upload: every model here samples smaller


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """The decoded image at `path`, or a RequestError that names the problem (not an image, truncated, too large)."""
    name = Path(path).name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked here, by size
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_UPLOAD_PIXELS:
                    raise RequestError(f"The {what} {name} is {width}x{height} pixels; the studio reads images of at most "
                                       f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels. Scale it down first.")
                image.load()
                return ImageOps.exif_transpose(image)
    except RequestError:
        raise
    except Image.DecompressionBombError:
        raise RequestError(f"The {what} {name} is too large to read safely (over {MAX_UPLOAD_PIXELS / 1e6:.0f} "
                           "megapixels). Scale it down first.") from None
    except FileNotFoundError:
        raise RequestError(f"The {what} {name} is gone from the server (uploads are kept a limited time); "
                           "upload it again.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise RequestError(f"The {what} {name} is not an image that can be read (PNG, JPEG, WebP, ...): {e}") from None


def shrink(image: Image.Image, max_side: int = UPLOAD_MAX_SIDE) -> tuple[Image.Image, str]:
    """The image scaled down to fit `max_side` (aspect kept), and what was done in words ('' when nothing was)."""
    if max(image.size) <= max_side:
        return image, ""
    before = image.size
    scale = max_side / max(before)
    smaller = image.resize((max(1, round(before[0] * scale)), max(1, round(before[1] * scale))), Image.Resampling.LANCZOS)
    return smaller, f"Resized from {before[0]}x{before[1]} to {smaller.width}x{smaller.height}."


def file_path(value) -> str | None:
    """The server-side path of an upload as an event receives it unprocessed (Gradio's FileData dict, whose file
    Gradio has already checked to be in its upload cache) or processed (a path)."""
    if isinstance(value, dict):
        return value.get("path")
    return None if value is None else str(value)


def read_array(value, what: str = "image", mode: str = "RGB") -> np.ndarray | None:
    """An upload (a path or FileData) as a uint8 array (HxWx3 for RGB, x4 for RGBA), scaled down when large; None when
    nothing was uploaded. Handlers read uploads here, not in Gradio's preprocessing: a broken file gets a message."""
    if isinstance(value, np.ndarray):  # already decoded (a script passing arrays to the jobs directly)
        return value
    path = file_path(value)
    if path is None:
        return None
    image, _ = shrink(open_image(path, what))
    return np.asarray(image.convert(mode))
