"""Training images for personalization: a folder or uploads -> checked, centre-cropped, resized images with captions.

A caption may hold the placeholders <tok> (the concept's token) and <class> (its class word); a folder may give a
caption per image in a text file of the same name (kohya's convention: heart-1.png + heart-1.txt)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from studio.errors import RequestError

MIN_IMAGES, MAX_IMAGES = 3, 20
TOKEN, CLASS = "<tok>", "<class>"
TEMPLATES = ("a <tok>", "a photo of <tok> <class>", "a <tok> <class>")
DEFAULT_TEMPLATE = TEMPLATES[0]
CAPTION_SUFFIX = ".txt"
SKIPPED_SUFFIXES = (".txt", ".json", ".md")  # captions and notes beside the images; anything else must be an image


@dataclass
class TrainImage:
    image: Image.Image  # RGB, already at the training size
    caption: str  # with <tok> / <class> filled in
    name: str  # where it came from, for messages


def fill(template: str, token: str, class_word: str) -> str:
    """A caption with its placeholders replaced (<tok> by the token, <class> by the class word), spaces tidied."""
    return " ".join(template.replace(TOKEN, token).replace(CLASS, class_word).split())


def read_folder(folder: Path) -> list[tuple[str, Image.Image | Path, str | None]]:
    """(name, image path, caption or None) for each image of a folder, sorted by name; refuses a file that is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RequestError(f"No folder of training images at {folder}.")
    items = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() in SKIPPED_SUFFIXES:
            continue
        sidecar = path.with_suffix(CAPTION_SUFFIX)
        caption = sidecar.read_text().strip() if sidecar.is_file() else None
        items.append((path.name, path, caption or None))
    return items


def open_image(name: str, source: Image.Image | Path | str) -> Image.Image:
    """An RGB image (transparency flattened onto white), or a RequestError naming the file that is not an image."""
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            with Image.open(source) as opened:
                opened.load()
                image = opened.copy()
        image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise RequestError(f"{name} is not an image that can be read ({type(e).__name__}); remove it or convert it "
                           "to PNG or JPEG. Nothing was trained.") from e
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def fit(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to size x size (Lanczos when shrinking, bicubic when enlarging)."""
    w, h = image.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    resample = Image.Resampling.LANCZOS if side > size else Image.Resampling.BICUBIC
    return image.crop(box).resize((size, size), resample)


def prepare_images(items: list[tuple[str, Image.Image | Path | str, str | None]], size: int, template: str,
                   token: str, class_word: str) -> tuple[list[TrainImage], list[str]]:
    """Checked training images at `size` with their captions (an item's own caption, else the template), and the
    notices to show (sizes changed, captions without the token)."""
    if not items:
        raise RequestError(f"No training images: add {MIN_IMAGES} to {MAX_IMAGES} images of the concept.")
    if len(items) < MIN_IMAGES:
        raise RequestError(f"{len(items)} training image{'s' if len(items) > 1 else ''}: personalization needs at least "
                           f"{MIN_IMAGES} (up to {MAX_IMAGES}) images of the concept, in different places or poses.")
    if len(items) > MAX_IMAGES:
        raise RequestError(f"{len(items)} training images: at most {MAX_IMAGES}; pick the most varied ones.")
    opened = [(name, open_image(name, source), caption) for name, source, caption in items]
    notices = []
    sizes = sorted({im.size for _, im, _ in opened})
    if len(sizes) > 1 or sizes[0] != (size, size):
        listed = ", ".join(f"{w}x{h}" for w, h in sizes[:6])
        notices.append(f"Images of size {listed}: each is centre-cropped to a square and resized to {size}x{size}, "
                       "the model's size.")
    images = [TrainImage(fit(im, size), fill(caption or template, token, class_word), name) for name, im, caption in opened]
    missing = [im.name for im in images if token and token not in im.caption.split()]
    if missing:
        notices.append(f"The caption of {', '.join(missing[:4])} does not hold the token {token}: "
                       "those images teach the model without it.")
    return images, notices


def to_tensor(images: list[Image.Image], flip: bool) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1]; with `flip`, the mirrored images follow the originals (2N)."""
    arrays = [np.asarray(im, dtype=np.float32) / 127.5 - 1 for im in images]
    if flip:
        arrays += [a[:, ::-1] for a in arrays]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
