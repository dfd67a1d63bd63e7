"""Read and write generation settings in PNG files as AUTOMATIC1111-style "parameters" infotext.

The text written into the PNG tEXt chunk named ``parameters`` has the same form as the one
stable-diffusion-webui writes, so A1111, ComfyUI loaders, InvokeAI and civitai can read our
images, and we can read theirs::

    <prompt, may span several lines>
    Negative prompt: <negative, may span lines>
    Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 0a1b2c3d4e, Model: shapes-v1

Rules (matching A1111's ``parse_generation_parameters``):

* the last line is the parameter line only when it holds at least 3 ``Key: value`` matches;
  otherwise the whole text is prompt (and negative prompt);
* the ``Negative prompt:`` line is left out when the negative prompt is empty; every line from
  the first one starting with ``Negative prompt:`` belongs to the negative prompt;
* a value containing a comma, colon, quote or line break is written JSON-quoted
  (``Lora hashes: "a: 1, b: 2"``) and unquoted with ``json.loads`` when read;
* ``Size: WxH`` gives width and height (A1111 calls them Size-1 / Size-2);
* floats are written without a trailing ``.0`` (``CFG scale: 7``, ``CFG scale: 7.5``).

Lines of the prompts are stripped of surrounding whitespace when read, as A1111 does.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

__all__ = [
    "PARAMETERS_KEY",
    "GenerationParams",
    "format_parameters",
    "parse_parameters",
    "save_png",
    "read_png_parameters",
]

PARAMETERS_KEY = "parameters"

NEGATIVE_PREFIX = "Negative prompt:"

# One ``Key: value`` pair of the parameter line. A key starts with a word character and may hold
# word characters, spaces, '-' and '/'; a value is either a JSON string (with backslash escapes)
# or anything up to the next comma.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_RE = re.compile(r"\w[\w \-/]*")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_MIN_PARAM_MATCHES = 3

# Keys that map onto dataclass fields (never stored in ``extra``).
_CORE_KEYS = ("Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model")

_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
_SEQ_RE = re.compile(r"^(\d+)-")


@dataclass
class GenerationParams:
    """The settings one image was generated with."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    sampler: str = "Euler"
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    model: str = ""
    model_hash: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # any other key: value pairs, in order


# --------------------------------------------------------------------------- formatting


def _format_number(value: float | int) -> str:
    """``7.0`` -> ``"7"``, ``7.5`` -> ``"7.5"``, ints unchanged."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def _quote(value: str) -> str:
    """JSON-quote a value that would otherwise break the ``Key: value, ...`` line."""
    if value and (any(c in value for c in ',:"\n\r') or value != value.strip()):
        return json.dumps(value, ensure_ascii=False)
    return value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            unquoted = json.loads(value)
        except ValueError:
            return value
        if isinstance(unquoted, str):
            return unquoted
    return value


def format_parameters(p: GenerationParams) -> str:
    """Return the A1111 infotext for ``p`` (prompt, optional negative line, parameter line)."""
    pairs: list[tuple[str, str]] = [
        ("Steps", _format_number(int(p.steps))),
        ("Sampler", str(p.sampler)),
        ("CFG scale", _format_number(p.cfg_scale)),
        ("Seed", _format_number(int(p.seed))),
        ("Size", f"{int(p.width)}x{int(p.height)}"),
    ]
    if p.model_hash:
        pairs.append(("Model hash", str(p.model_hash)))
    if p.model:
        pairs.append(("Model", str(p.model)))
    for key, value in p.extra.items():
        key = str(key)
        if key in _CORE_KEYS or key in ("Prompt", "Negative prompt"):
            continue  # the dataclass field wins; never write a key twice
        if not _KEY_RE.fullmatch(key) or key != key.strip():
            raise ValueError(f"parameter key {key!r} cannot be written into A1111 infotext")
        pairs.append((key, "" if value is None else str(value)))

    param_line = ", ".join(f"{k}: {_quote(v)}" for k, v in pairs)
    lines = [p.prompt.replace("\r\n", "\n").strip()]
    negative = p.negative_prompt.replace("\r\n", "\n").strip()
    if negative:
        lines.append(f"{NEGATIVE_PREFIX} {negative}")
    lines.append(param_line)
    if not lines[0]:
        lines.pop(0)
    return "\n".join(lines)


# --------------------------------------------------------------------------- parsing


def _to_int(value: str, default: int) -> int:
    try:
        return int(value.strip())
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            return default
        return int(f) if math.isfinite(f) else default


def _to_float(value: str, default: float) -> float:
    try:
        f = float(value.strip())
    except ValueError:
        return default
    return f if math.isfinite(f) else default


def parse_parameters(text: str) -> GenerationParams:
    """Parse A1111 infotext; tolerant of unknown keys (kept in ``extra``) and missing keys."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    param_line = ""
    if lines and len(_PARAM_RE.findall(lines[-1])) >= _MIN_PARAM_MATCHES:
        param_line = lines.pop()

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if not in_negative and line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)

    p = GenerationParams(prompt="\n".join(prompt_lines).strip(), negative_prompt="\n".join(negative_lines).strip())
    for key, raw in _PARAM_RE.findall(param_line):
        key = key.strip()
        value = _unquote(raw.strip())
        if key == "Steps":
            p.steps = _to_int(value, p.steps)
        elif key == "Sampler":
            p.sampler = value
        elif key == "CFG scale":
            p.cfg_scale = _to_float(value, p.cfg_scale)
        elif key == "Seed":
            p.seed = _to_int(value, p.seed)
        elif key == "Size":
            m = _SIZE_RE.match(value.strip())
            if m:
                p.width, p.height = int(m.group(1)), int(m.group(2))
            else:
                p.extra[key] = value
        elif key == "Model":
            p.model = value
        elif key == "Model hash":
            p.model_hash = value
        else:
            p.extra[key] = value
    return p


# --------------------------------------------------------------------------- PNG files


def _next_sequence_number(folder: Path) -> int:
    """One more than the largest leading ``NNNNN-`` number of the files in ``folder`` (A1111-like)."""
    highest = -1
    for entry in folder.iterdir():
        m = _SEQ_RE.match(entry.name)
        if m:
            highest = max(highest, int(m.group(1)))
    return highest + 1


def save_png(
    image: Image.Image, params: GenerationParams, folder: str | Path, stem: str | None = None
) -> Path:
    """Write ``folder/<NNNNN>-<seed>.png`` with the ``parameters`` text chunk and return its path.

    ``stem`` replaces the ``<seed>`` part of the name. The running number continues after the
    highest one in the folder; an existing file is never overwritten (exclusive create), and the
    folder is created when missing.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = str(params.seed) if stem is None else str(stem)
    if not suffix or "/" in suffix or "\\" in suffix:
        raise ValueError(f"invalid file name stem {suffix!r}")

    if image.mode not in _PNG_MODES:
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(params))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()

    number = _next_sequence_number(folder)
    while True:
        path = folder / f"{number:05d}-{suffix}.png"
        try:
            with open(path, "xb") as fh:
                fh.write(data)
        except FileExistsError:
            number += 1
            continue
        return path


def _text_of(image: Image.Image) -> str | None:
    chunks = getattr(image, "text", None)  # PNG: tEXt/zTXt/iTXt, also those after the image data
    value = chunks.get(PARAMETERS_KEY) if chunks else None
    if value is None:
        value = image.info.get(PARAMETERS_KEY)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value


def read_png_parameters(source: str | Path | Image.Image) -> GenerationParams | None:
    """Generation settings stored in an image's ``parameters`` chunk, or None when it has none.

    Raises ``ValueError`` when ``source`` is a file that is not a readable image.
    """
    if isinstance(source, Image.Image):
        try:
            text = _text_of(source)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"image is not an image that can be read: {exc}") from exc
    else:
        path = Path(source)
        try:
            with Image.open(path) as image:
                text = _text_of(image)
        except FileNotFoundError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"{path} is not an image that can be read ({exc})") from exc
    if text is None:
        return None
    return parse_parameters(text)
