"""Training images for personalization: a folder or uploads -> checked, centre-cropped, resized images with captions.

A caption may hold the placeholders <tok> (the concept's token) and <class> (its class word); a folder may give a
caption per image in a text file of the same name (kohya's convention: heart-1.png + heart-1.txt).

Colour augmentation (`recolour`): when a caption names one of the palette's colours ("a red <tok>"), recoloured
copies of the image are added, one per other colour of the palette, each with the caption's colour word changed to
match ("a blue <tok>"), like mirror images a standard augmentation: the user still gives only their own images. The
shape's pixels are found as a mix of the named colour and the background (a plane fitted to the border, as the suites'
backgrounds are flat or linear), so anti-aliased edges are recoloured in proportion. Without it, a concept trained on
five red images stays tied to red: "a blue <tok>" gives a blue circle (assets/personalize/README.md)."""
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
# The colour words the augmentation knows, with the RGB the embedded suite draws them in (its prompt vocabulary).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 30), "orange": (255, 130, 0), "yellow": (250, 225, 20), "green": (30, 175, 50),
    "cyan": (0, 215, 230), "blue": (25, 60, 235), "purple": (135, 40, 205), "pink": (255, 120, 200),
}
RECOLOUR = 0.5  # share of the training views that are recoloured copies (0: no colour augmentation); tuned in the README


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
                   token: str, class_word: str, recolour: float | None = None) -> tuple[list[TrainImage], list[str]]:
    """Checked training images at `size` with their captions (an item's own caption, else the template), and the
    notices to show (sizes changed, captions without the token). With colour augmentation (`recolour`, default
    RECOLOUR: the share of recoloured views), images whose caption names a palette colour come with recoloured
    copies, and the originals are repeated so that they keep 1 - recolour of the views."""
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
    share = RECOLOUR if recolour is None else recolour
    if share > 0:
        images, note = augment_colours(images, min(share, 0.95))
        notices += [note] if note else []
    return images, notices


def colour_word(caption: str) -> str | None:
    """The first palette colour the caption names, or None."""
    return next((w for w in caption.split() if w in PALETTE), None)


def recolour_image(image: Image.Image, source: tuple[int, int, int], target: tuple[int, int, int]) -> Image.Image:
    """The image with the pixels of colour `source` (and their anti-aliased mix with the background) turned to
    `target`: each pixel is read as background + a (source - background), with the background a plane per channel
    fitted to the 2-pixel border; where that fits (the rest is small), it becomes background + a (target - background)."""
    rgb = np.asarray(image, dtype=np.float64)
    h, w, _ = rgb.shape
    ys, xs = np.mgrid[0:h, 0:w]
    border = np.zeros((h, w), bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    design = np.stack([np.ones(h * w), xs.ravel(), ys.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design[border.ravel()], rgb.reshape(-1, 3)[border.ravel()], rcond=None)
    bg = (design @ coef).reshape(h, w, 3)
    towards = np.asarray(source, np.float64) - bg
    offset = rgb - bg
    a = np.clip((offset * towards).sum(-1) / np.maximum((towards ** 2).sum(-1), 1.0), 0.0, 1.0)
    rest = np.linalg.norm(offset - a[..., None] * towards, axis=-1) / np.maximum(np.linalg.norm(towards, axis=-1), 1.0)
    a = np.where((rest < 0.35) & (a > 0.05), a, 0.0)
    out = rgb + a[..., None] * (np.asarray(target, np.float64) - np.asarray(source, np.float64))
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))


def augment_colours(images: list[TrainImage], share: float) -> tuple[list[TrainImage], str | None]:
    """The images plus a recoloured copy of each captioned with a palette colour, one per other colour (the colour
    word of the caption changed to match); the originals repeated so that the copies are `share` of all views."""
    coloured = [im for im in images if colour_word(im.caption)]
    if not coloured:
        return images, None
    copies = []
    for im in coloured:
        word = colour_word(im.caption)
        for other, rgb in PALETTE.items():
            if other != word:
                caption = " ".join(other if w == word else w for w in im.caption.split())
                copies.append(TrainImage(recolour_image(im.image, PALETTE[word], rgb), caption, f"{im.name} ({other})"))
    repeat = max(1, round(len(copies) * (1 - share) / (share * len(images))))
    note = (f"Colour augmentation: {len(copies)} recoloured copies of the {len(coloured)} images whose caption names a "
            f"colour (the colour word changed to match, e.g. {copies[0].caption!r}) make "
            f"{len(copies) / (len(copies) + repeat * len(images)):.0%} of the training views, so the token keeps its "
            "shape in other colours.")
    return images * repeat + copies, note


def to_tensor(images: list[Image.Image], flip: bool) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1]; with `flip`, the mirrored images follow the originals (2N)."""
    arrays = [np.asarray(im, dtype=np.float32) / 127.5 - 1 for im in images]
    if flip:
        arrays += [a[:, ::-1] for a in arrays]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
