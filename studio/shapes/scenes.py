"""Procedural, deterministic 64x64 RGB scenes (coloured shapes and stick figures) with captions and
attribute labels, used to train the small text-to-image latent diffusion model and its attribute evaluator."""

from __future__ import annotations

import multiprocessing as mp
import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from studio.control.pose import KEYPOINT_INDEX, KEYPOINT_NAMES

# ----------------------------------------------------------------------------------------------------------------
# Attribute spaces
# ----------------------------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 30),
    "orange": (255, 130, 0),
    "yellow": (250, 225, 20),
    "green": (30, 175, 50),
    "cyan": (0, 215, 230),
    "blue": (25, 60, 235),
    "purple": (135, 40, 205),
    "pink": (255, 120, 200),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "big")
POSITIONS = ("left", "right", "top", "bottom", "centre")  # single objects only
POSES = ("standing", "arms up", "waving", "walking", "sitting")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
KINDS = ("object", "figure")
LABEL_KEYS = ("kind", "shape", "colour", "count", "position", "size", "pose")

# Kind mix: single object / multiple objects / figure.
KIND_PROBS = (0.50, 0.22, 0.28)

# ----------------------------------------------------------------------------------------------------------------
# Data classes
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    centre: tuple[float, float]  # (x, y) pixels
    radius: float


@dataclass
class Figure:
    colour: str  # shirt colour
    pose: str
    keypoints: np.ndarray  # (18, 2) float32 pixel coords (x, y), NaN where absent


@dataclass
class Scene:
    image: np.ndarray  # uint8 HxWx3 RGB
    caption: str
    kind: str  # "object" or "figure"
    objects: list[SceneObject] = field(default_factory=list)
    figure: Figure | None = None
    count: int = 1
    position: str | None = None


# ----------------------------------------------------------------------------------------------------------------
# Backgrounds: low-saturation tones, in a dark and a light group (a gradient never mixes groups, so the figure's
# skin/limb tone can always be picked to contrast with the whole background).
# ----------------------------------------------------------------------------------------------------------------

_DARK_TONES = np.array(
    [(40, 40, 40), (28, 30, 34), (44, 54, 64), (62, 48, 38), (52, 54, 44), (36, 40, 54), (58, 58, 58)],
    dtype=np.float32,
)
_LIGHT_TONES = np.array(
    [(200, 200, 200), (228, 226, 220), (215, 203, 180), (196, 186, 166), (176, 184, 192), (186, 180, 172),
     (214, 214, 208)],
    dtype=np.float32,
)
_SKIN_LIGHT = (238, 200, 160)  # limbs/head on dark backgrounds
_SKIN_DARK = (72, 44, 28)  # limbs/head on light backgrounds

_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    g = _GRID_CACHE.get(size)
    if g is None:
        c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        g = (c[None, :].repeat(size, 0), c[:, None].repeat(size, 1))
        _GRID_CACHE[size] = g
    return g


def _tone(rng: np.random.Generator, tones: np.ndarray) -> np.ndarray:
    base = tones[rng.integers(len(tones))]
    jitter = rng.uniform(-8, 8) + rng.uniform(-3, 3, size=3)
    return np.clip(base + jitter, 0, 255).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, bool]:
    """Returns (uint8 image, is_dark)."""
    dark = bool(rng.random() < 0.5)
    tones = _DARK_TONES if dark else _LIGHT_TONES
    a = _tone(rng, tones)
    if rng.random() < 0.4:
        img = np.empty((size, size, 3), dtype=np.uint8)
        img[:] = np.round(a).astype(np.uint8)
        return img, dark
    b = _tone(rng, tones)
    theta = rng.uniform(0, 2 * np.pi)
    gx, gy = _grid(size)
    t = gx * np.float32(np.cos(theta)) + gy * np.float32(np.sin(theta))
    t = t * np.float32(1 / 1.4143) + np.float32(0.5)  # in [0, 1]
    img = a + t[..., None] * (b - a)
    return img.astype(np.uint8), dark


# ----------------------------------------------------------------------------------------------------------------
# Objects
# ----------------------------------------------------------------------------------------------------------------

_SHIFT = 4
_ONE = 1 << _SHIFT
EXTENT = 1.1  # every shape fits inside a circle of radius EXTENT * radius


def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(xy * _ONE).astype(np.int32)


def _regular(cx: float, cy: float, r: float, n: int, phase: float) -> np.ndarray:
    a = phase + np.arange(n) * (2 * np.pi / n)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def draw_object(img: np.ndarray, obj: SceneObject) -> None:
    cx, cy = obj.centre
    r = obj.radius
    col = COLOURS[obj.colour]
    s = obj.shape
    if s == "circle":
        cv2.circle(img, (round(cx * _ONE), round(cy * _ONE)), round(r * _ONE), col, -1, cv2.LINE_AA, _SHIFT)
        return
    if s == "ring":
        thick = max(2, int(round(0.36 * r)))
        rr = r - thick / 2.0
        cv2.circle(img, (round(cx * _ONE), round(cy * _ONE)), round(rr * _ONE), col, thick, cv2.LINE_AA, _SHIFT)
        return
    if s == "square":
        h = 0.86 * r
        poly = np.array([(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)])
    elif s == "triangle":
        # upright, circumradius 1.1 r, centred so the bounding box is centred on (cx, cy)
        R = 1.1 * r
        poly = _regular(cx, cy + 0.25 * R, R, 3, -np.pi / 2)
    elif s == "star":
        outer = _regular(cx, cy + 0.05 * r, 1.1 * r, 5, -np.pi / 2)
        inner = _regular(cx, cy + 0.05 * r, 0.47 * r, 5, -np.pi / 2 + np.pi / 5)
        poly = np.empty((10, 2))
        poly[0::2] = outer
        poly[1::2] = inner
    elif s == "diamond":
        poly = np.array([(cx, cy - 1.1 * r), (cx + 0.75 * r, cy), (cx, cy + 1.1 * r), (cx - 0.75 * r, cy)])
    else:
        raise ValueError(f"unknown shape {s!r}")
    cv2.fillPoly(img, [_pts(poly)], col, cv2.LINE_AA, _SHIFT)


def _anchor(position: str, size: int) -> tuple[float, float]:
    return {
        "left": (0.25 * size, 0.5 * size),
        "right": (0.75 * size, 0.5 * size),
        "top": (0.5 * size, 0.25 * size),
        "bottom": (0.5 * size, 0.75 * size),
        "centre": (0.5 * size, 0.5 * size),
    }[position]


def _single_object(rng: np.random.Generator, size: int) -> tuple[list[SceneObject], str]:
    k = size / 64.0
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    sz = SIZES[rng.integers(2)]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    r = (rng.uniform(7.0, 9.0) if sz == "small" else rng.uniform(12.5, 14.5)) * k
    ax, ay = _anchor(position, size)
    jx, jy = rng.uniform(-3.0, 3.0, size=2) * k
    ext = EXTENT * r + 2.0 * k
    cx = float(np.clip(ax + jx, ext, size - ext))
    cy = float(np.clip(ay + jy, ext, size - ext))
    return [SceneObject(shape, colour, sz, (cx, cy), float(r))], position


def _multi_objects(rng: np.random.Generator, size: int) -> list[SceneObject]:
    k = size / 64.0
    n = 2 if rng.random() < 0.5 else 3
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    sz = SIZES[rng.integers(2)]
    while True:
        objs: list[SceneObject] = []
        tries = 0
        while len(objs) < n and tries < 200:
            tries += 1
            r = (rng.uniform(5.5, 7.0) if sz == "small" else rng.uniform(8.0, 9.5)) * k
            ext = EXTENT * r + 2.0 * k
            cx, cy = rng.uniform(ext, size - ext, size=2)
            ok = True
            for o in objs:
                d = np.hypot(cx - o.centre[0], cy - o.centre[1])
                if d < EXTENT * (r + o.radius) + 3.0 * k:
                    ok = False
                    break
            if ok:
                objs.append(SceneObject(shape, colour, sz, (float(cx), float(cy)), float(r)))
        if len(objs) == n:
            return objs


# ----------------------------------------------------------------------------------------------------------------
# Figures (stick figures with an OpenPose COCO-18 skeleton)
# ----------------------------------------------------------------------------------------------------------------

# Unit coordinates: x to the image right, y down; head top at y=0, ankles at y~1 when standing.
# "r_" joints are the person's right, i.e. the image left for a person facing the viewer.
_HEAD_R = 0.08
_BASE = {
    "nose": (0.0, 0.085), "neck": (0.0, 0.18),
    "r_shoulder": (-0.11, 0.20), "r_elbow": (-0.14, 0.36), "r_wrist": (-0.15, 0.51),
    "l_shoulder": (0.11, 0.20), "l_elbow": (0.14, 0.36), "l_wrist": (0.15, 0.51),
    "r_hip": (-0.065, 0.52), "r_knee": (-0.07, 0.745), "r_ankle": (-0.075, 0.97),
    "l_hip": (0.065, 0.52), "l_knee": (0.07, 0.745), "l_ankle": (0.075, 0.97),
    "r_eye": (-0.027, 0.07), "l_eye": (0.027, 0.07), "r_ear": (-0.065, 0.085), "l_ear": (0.065, 0.085),
}
_POSE_DELTA = {
    "standing": {},
    "arms up": {
        "r_elbow": (-0.20, 0.06), "r_wrist": (-0.28, -0.07),
        "l_elbow": (0.20, 0.06), "l_wrist": (0.28, -0.07),
    },
    "waving": {  # person's right arm: upper arm out to the side, forearm up
        "r_elbow": (-0.26, 0.24), "r_wrist": (-0.29, 0.07),
    },
    "walking": {  # legs apart in a stride, left arm forward, right arm back
        "r_knee": (-0.11, 0.745), "r_ankle": (-0.20, 0.96),
        "l_knee": (0.10, 0.73), "l_ankle": (0.17, 0.97),
        "l_elbow": (0.17, 0.34), "l_wrist": (0.27, 0.43),
        "r_elbow": (-0.16, 0.35), "r_wrist": (-0.22, 0.49),
    },
    "sitting": {  # side-on, facing image right: thighs horizontal, shins vertical
        "r_shoulder": (-0.05, 0.20), "l_shoulder": (0.05, 0.20),
        "r_hip": (-0.035, 0.52), "l_hip": (0.035, 0.52),
        "r_knee": (0.18, 0.52), "r_ankle": (0.18, 0.76),
        "l_knee": (0.23, 0.535), "l_ankle": (0.23, 0.775),
        "r_elbow": (-0.01, 0.37), "r_wrist": (0.11, 0.45),
        "l_elbow": (0.04, 0.37), "l_wrist": (0.16, 0.46),
    },
}
_MIRROR_PERM = np.array(
    [KEYPOINT_INDEX[n.replace("r_", "@").replace("l_", "r_").replace("@", "l_")] for n in KEYPOINT_NAMES]
)


def _pose_table(pose: str) -> np.ndarray:
    d = dict(_BASE)
    d.update(_POSE_DELTA[pose])
    return np.array([d[n] for n in KEYPOINT_NAMES], dtype=np.float64)


_POSE_UNIT = {p: _pose_table(p) for p in POSES}
_MIRRORED = {p: (_POSE_UNIT[p] * np.array([-1.0, 1.0]))[_MIRROR_PERM] for p in POSES}

# Limbs drawn for the stick figure (index pairs into KEYPOINT_NAMES).
_I = KEYPOINT_INDEX
_BODY_LIMBS = [
    (_I["r_shoulder"], _I["r_elbow"]), (_I["r_elbow"], _I["r_wrist"]),
    (_I["l_shoulder"], _I["l_elbow"]), (_I["l_elbow"], _I["l_wrist"]),
    (_I["r_hip"], _I["r_knee"]), (_I["r_knee"], _I["r_ankle"]),
    (_I["l_hip"], _I["l_knee"]), (_I["l_knee"], _I["l_ankle"]),
    (_I["neck"], _I["nose"]),
]


def _place(unit: np.ndarray, size: int, scale: float, shift: tuple[float, float]) -> tuple[np.ndarray, float]:
    """(pixel keypoints, scale used): a unit pose scaled (shrunk to fit), centred, shifted, kept inside the margins."""
    k = size / 64.0
    margin = 3.0 * k
    lo = np.minimum(unit.min(axis=0), [-_HEAD_R, 0.0])
    extent = unit.max(axis=0) - lo
    scale = min(scale, (size - 2 * margin - 3 * k) / extent.max())  # margin for limb thickness
    bw, bh = extent * scale
    x0 = float(np.clip((size - bw) / 2 + shift[0], margin, size - margin - bw))
    y0 = float(np.clip((size - bh) / 2 + shift[1], margin, size - margin - bh))
    return (unit - lo) * scale + np.array([x0, y0]), scale


def pose_keypoints(pose: str, size: int = 64, mirrored: bool = False) -> np.ndarray:
    """(18, 2) float32 pixel keypoints of a training figure's pose, centred at the mid scale, no jitter or noise."""
    if pose not in _POSE_UNIT:
        raise ValueError(f"unknown pose {pose!r}; poses: {', '.join(POSES)}")
    unit = _MIRRORED[pose] if mirrored else _POSE_UNIT[pose]
    kp, _ = _place(unit, size, 47.0 * size / 64.0, (0.0, 0.0))
    return kp.astype(np.float32)


def _figure(rng: np.random.Generator, size: int, dark_bg: bool) -> tuple[Figure, dict]:
    k = size / 64.0
    pose = POSES[rng.integers(len(POSES))]
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    unit = _MIRRORED[pose] if rng.random() < 0.5 else _POSE_UNIT[pose]
    scale = rng.uniform(40.0, 54.0) * k
    jx, jy = rng.uniform(-4.0, 4.0, size=2) * k
    kp, scale = _place(unit, size, scale, (jx, jy))
    kp = kp + rng.uniform(-1.0, 1.0, size=kp.shape) * k
    fig = Figure(colour=colour, pose=pose, keypoints=kp.astype(np.float32))
    return fig, {"scale": scale, "dark": dark_bg}


def draw_figure(img: np.ndarray, fig: Figure, scale: float, dark_bg: bool) -> None:
    size = img.shape[0]
    k = size / 64.0
    kp = fig.keypoints.astype(np.float64)
    skin = _SKIN_LIGHT if dark_bg else _SKIN_DARK
    thick = max(2, int(round(3.0 * k)))
    P = np.round(kp * _ONE).astype(np.int64)
    for a, b in _BODY_LIMBS:
        cv2.line(img, (int(P[a, 0]), int(P[a, 1])), (int(P[b, 0]), int(P[b, 1])), skin, thick, cv2.LINE_AA, _SHIFT)
    # shirt: shoulders -> hips quadrilateral, slightly widened, drawn over the limbs
    rs, ls, rh, lh = kp[_I["r_shoulder"]], kp[_I["l_shoulder"]], kp[_I["r_hip"]], kp[_I["l_hip"]]
    c = (rs + ls + rh + lh) / 4.0
    quad = np.array([rs, ls, lh, rh])
    quad = c + (quad - c) * 1.15
    cv2.fillPoly(img, [_pts(quad)], COLOURS[fig.colour], cv2.LINE_AA, _SHIFT)
    # head
    nose = kp[_I["nose"]]
    hr = max(2.5 * k, _HEAD_R * scale * 1.05)
    cv2.circle(img, (round(nose[0] * _ONE), round(nose[1] * _ONE)), round(hr * _ONE), skin, -1, cv2.LINE_AA, _SHIFT)


# ----------------------------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------------------------

_SIZE_WORDS = {"small": ("small", "little", "small"), "big": ("big", "large", "big")}
_POS_PHRASES = {
    "left": ("on the left", "on the left side", "at the left", "to the left"),
    "right": ("on the right", "on the right side", "at the right", "to the right"),
    "top": ("at the top", "near the top", "at the top of the image", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the image", "in the lower part"),
    "centre": ("in the centre", "in the center", "in the middle", "in the middle of the image"),
}
_POS_SHORT = {
    "left": ("left side", "left"),
    "right": ("right side", "right"),
    "top": ("top", "upper part"),
    "bottom": ("bottom", "lower part"),
    "centre": ("centre", "center", "middle"),
}
_PLURAL = {s: s + "s" for s in SHAPES}
_SUBJECTS = ("a person", "a man", "a woman", "a figure", "a stick figure", "someone")
_SHIRT_WORDS = ("shirt", "shirt", "top")
_POSE_PHRASES = {
    "standing": ("standing", "standing still", "standing upright", "just standing"),
    "arms up": ("raising both arms", "with arms up", "with both arms raised", "holding both arms up"),
    "waving": ("waving", "waving a hand", "waving hello", "waving one hand"),
    "walking": ("walking", "walking along", "taking a step", "walking forward"),
    "sitting": ("sitting", "sitting down", "seated", "sitting with bent knees"),
}
_POSE_FIRST = {  # for "<subject> <pose> in a <colour> shirt" (phrases that read well before the shirt)
    "standing": ("standing", "standing upright"),
    "arms up": ("with arms up", "with both arms raised"),
    "waving": ("waving",),
    "walking": ("walking",),
    "sitting": ("sitting", "sitting down"),
}
_EXTRA_WORDS = "a an there is are the of image picture in on with pair".split()


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _witharticle(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def _pick(rng: np.random.Generator, seq):
    return seq[rng.integers(len(seq))]


def _caption_single(scene: Scene, rng: np.random.Generator) -> str:
    o = scene.objects[0]
    u = rng.random()
    with_size = not (u < 0.15)
    with_pos = not (0.15 <= u < 0.30)
    size_w = _pick(rng, _SIZE_WORDS[o.size]) if with_size else ""
    noun = " ".join(w for w in (size_w, o.colour, o.shape) if w)
    pos = _pick(rng, _POS_PHRASES[scene.position]) if with_pos else ""
    pos_short = _pick(rng, _POS_SHORT[scene.position]) if with_pos else ""
    t = int(rng.integers(6))
    if t == 0 or not with_pos:
        if with_pos:
            return f"{_witharticle(noun)} {pos}"
        return _pick(rng, (_witharticle(noun), noun, f"a picture of {_witharticle(noun)}"))
    if t == 1:
        return f"{noun}, {pos_short}"
    if t == 2:
        return f"{noun} {pos}"
    if t == 3:
        return f"{pos}, {_witharticle(noun)}"
    if t == 4:
        return f"there is {_witharticle(noun)} {pos}"
    # t == 5: "a big circle in red on the left"
    base = " ".join(w for w in (size_w, o.shape) if w)
    return f"{_witharticle(base)} in {o.colour} {pos}"


def _caption_multi(scene: Scene, rng: np.random.Generator) -> str:
    o = scene.objects[0]
    n = scene.count
    with_size = rng.random() < 0.6
    size_w = _pick(rng, _SIZE_WORDS[o.size]) if with_size else ""
    plural = _PLURAL[o.shape]
    noun = " ".join(w for w in (size_w, o.colour, plural) if w)
    t = int(rng.integers(5))
    count_w = COUNT_WORDS[n]
    if t == 0 or t == 1:
        return f"{count_w} {noun}"
    if t == 2:
        if n == 2:
            return f"a pair of {noun}"
        return f"there are {count_w} {noun}"
    if t == 3:
        base = " ".join(w for w in (size_w, plural) if w)
        return f"{count_w} {base} in {o.colour}"
    return f"a picture of {count_w} {noun}"


def _caption_figure(scene: Scene, rng: np.random.Generator) -> str:
    f = scene.figure
    assert f is not None
    subj = _pick(rng, _SUBJECTS)
    shirt = f"{_witharticle(f.colour)} {_pick(rng, _SHIRT_WORDS)}"
    t = int(rng.integers(5))
    if t == 0:
        return f"{subj} in {shirt} {_pick(rng, _POSE_PHRASES[f.pose])}"
    if t == 1:
        return f"{subj} wearing {shirt} {_pick(rng, _POSE_PHRASES[f.pose])}"
    if t == 2:
        return f"{subj} {_pick(rng, _POSE_FIRST[f.pose])} in {shirt}"
    if t == 3:
        return f"{subj} {_pick(rng, _POSE_FIRST[f.pose])}, wearing {shirt}"
    return f"{f.colour} {_pick(rng, _SHIRT_WORDS)}, {subj} {_pick(rng, _POSE_PHRASES[f.pose])}"


def caption_for(scene: Scene, rng: np.random.Generator) -> str:
    """One random paraphrase (lower case, words and ',' only) describing the scene."""
    if scene.kind == "figure":
        return _caption_figure(scene, rng)
    if scene.count == 1:
        return _caption_single(scene, rng)
    return _caption_multi(scene, rng)


def tokenize(text: str) -> list[str]:
    """Split a caption into tokens on whitespace and ','."""
    return [t for t in re.split(r"[\s,]+", text.strip()) if t]


def _build_vocabulary() -> list[str]:
    words: set[str] = set(_EXTRA_WORDS)
    words.update(COLOURS)
    words.update(SHAPES)
    words.update(_PLURAL.values())
    words.update(w for n, w in COUNT_WORDS.items())
    phrase_sets = [
        *_SIZE_WORDS.values(), *_POS_PHRASES.values(), *_POS_SHORT.values(), *_POSE_PHRASES.values(),
        *_POSE_FIRST.values(), _SUBJECTS, _SHIRT_WORDS, ("wearing", "a picture of", "there is", "there are"),
    ]
    for phrases in phrase_sets:
        for p in phrases:
            words.update(tokenize(p))
    return sorted(words)


VOCABULARY: list[str] = _build_vocabulary()

# ----------------------------------------------------------------------------------------------------------------
# Labels and prompt parsing
# ----------------------------------------------------------------------------------------------------------------


def labels(scene: Scene) -> dict[str, int]:
    """Evaluator targets; -1 where a head does not apply."""
    if scene.kind == "figure":
        f = scene.figure
        assert f is not None
        return {
            "kind": 1, "shape": -1, "colour": COLOUR_NAMES.index(f.colour), "count": -1,
            "position": -1, "size": -1, "pose": POSES.index(f.pose),
        }
    o = scene.objects[0]
    return {
        "kind": 0,
        "shape": SHAPES.index(o.shape),
        "colour": COLOUR_NAMES.index(o.colour),
        "count": scene.count - 1,
        "position": POSITIONS.index(scene.position) if scene.position is not None else -1,
        "size": SIZES.index(o.size),
        "pose": -1,
    }


_P_COLOUR = {c: i for i, c in enumerate(COLOUR_NAMES)}
_P_COLOUR.update({"violet": 6, "magenta": 7, "teal": 4, "turquoise": 4, "aqua": 4, "scarlet": 0,
                  "crimson": 0, "lime": 3, "gold": 2, "golden": 2, "navy": 5, "rose": 7, "lilac": 6})
_P_SHAPE = {}
for _i, _s in enumerate(SHAPES):
    _P_SHAPE[_s] = (_i, False)
    _P_SHAPE[_s + "s"] = (_i, True)
for _w, _s in {"disc": "circle", "disk": "circle", "dot": "circle", "ball": "circle", "box": "square",
               "rhombus": "diamond", "donut": "ring", "doughnut": "ring", "hoop": "ring", "loop": "ring",
               "rectangle": "square"}.items():
    _P_SHAPE[_w] = (SHAPES.index(_s), False)
    _P_SHAPE[_w + ("es" if _w.endswith("x") else "s")] = (SHAPES.index(_s), True)
_P_FIGURE = {"person", "man", "woman", "figure", "someone", "people", "human", "boy", "girl", "guy", "lady",
             "shirt", "tshirt", "child", "kid", "stickman", "body"}
_P_SIZE = {"small": 0, "little": 0, "tiny": 0, "smaller": 0, "big": 1, "large": 1, "huge": 1, "bigger": 1,
           "larger": 1, "giant": 1}
_P_POS = {"left": 0, "right": 1, "top": 2, "upper": 2, "above": 2, "bottom": 3, "lower": 3, "below": 3,
          "centre": 4, "center": 4, "middle": 4, "central": 4, "centered": 4, "centred": 4}
_P_COUNT = {"one": 0, "single": 0, "two": 1, "pair": 1, "couple": 1, "both": None, "three": 2,
            "1": 0, "2": 1, "3": 2}


def parse_prompt(text: str) -> dict[str, int]:
    """Recover label() attributes from a free-text prompt; -1 for what the prompt does not say."""
    toks = re.findall(r"[a-z0-9]+", text.lower())
    ts = set(toks)
    out = {k: -1 for k in LABEL_KEYS}
    for t in toks:
        if t in _P_COLOUR:
            out["colour"] = _P_COLOUR[t]
            break
    shape, plural = -1, False
    for t in toks:
        if t in _P_SHAPE:
            shape, plural = _P_SHAPE[t]
            break
    is_figure = bool(ts & _P_FIGURE)
    if is_figure and shape < 0:
        out["kind"] = 1
        if ts & {"waving", "waves", "wave", "waved"}:
            out["pose"] = 2
        elif (ts & {"raising", "raised", "raises", "raise", "lifting", "lifted"} and ts & {"arms", "hands"}) or (
            ts & {"arms", "hands"} and "up" in ts
        ):
            out["pose"] = 1
        elif ts & {"sitting", "sits", "seated", "sit", "sat"}:
            out["pose"] = 4
        elif ts & {"walking", "walks", "walk", "step", "stride", "striding", "strolling"}:
            out["pose"] = 3
        elif ts & {"standing", "stands", "stand", "upright"}:
            out["pose"] = 0
        return out
    if shape < 0:
        # no shape word: maybe still an object prompt ("something red on the left")
        if any(t in _P_SIZE for t in toks) or any(t in _P_POS for t in toks):
            pass
        else:
            return out
    else:
        out["kind"] = 0
        out["shape"] = shape
    count = -1
    for t in toks:
        if t in _P_COUNT and _P_COUNT[t] is not None:
            count = _P_COUNT[t]
            break
    if count < 0 and shape >= 0:
        count = 1 if plural else 0  # plural without a number word: at least two
    out["count"] = count
    for t in toks:
        if t in _P_SIZE:
            out["size"] = _P_SIZE[t]
            break
    if count <= 0:
        for t in toks:
            if t in _P_POS:
                out["position"] = _P_POS[t]
                break
    return out


# ----------------------------------------------------------------------------------------------------------------
# Scene generation
# ----------------------------------------------------------------------------------------------------------------


def asked_attributes(text: str) -> dict[str, int]:
    """Only what a prompt asks for: parse_prompt without the heads it leaves open (-1)."""
    return {k: v for k, v in parse_prompt(text).items() if v >= 0}


def make_scene(rng: np.random.Generator, size: int = 64, kind: str | None = None) -> Scene:
    """One random scene. kind: None (mix), "object" (single or multiple), "single", "multi" or "figure"."""
    if kind is None:
        u = rng.random()
        kind = "single" if u < KIND_PROBS[0] else ("multi" if u < KIND_PROBS[0] + KIND_PROBS[1] else "figure")
    elif kind == "object":
        kind = "single" if rng.random() < KIND_PROBS[0] / (KIND_PROBS[0] + KIND_PROBS[1]) else "multi"
    img, dark = _background(rng, size)
    if kind == "single":
        objs, position = _single_object(rng, size)
        draw_object(img, objs[0])
        scene = Scene(image=img, caption="", kind="object", objects=objs, figure=None, count=1, position=position)
    elif kind == "multi":
        objs = _multi_objects(rng, size)
        for o in objs:
            draw_object(img, o)
        scene = Scene(image=img, caption="", kind="object", objects=objs, figure=None, count=len(objs),
                      position=None)
    elif kind == "figure":
        fig, info = _figure(rng, size, dark)
        draw_figure(img, fig, info["scale"], dark)
        scene = Scene(image=img, caption="", kind="figure", objects=[], figure=fig, count=1, position=None)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    scene.caption = caption_for(scene, rng)
    return scene


CHUNK = 256  # scenes per independently seeded chunk; scene i lives in chunk i // CHUNK


def _chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5CE7E, int(chunk)])


def _render_chunk(args: tuple[int, int, int, int]):
    seed, chunk, n, size = args
    rng = _chunk_rng(seed, chunk)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    caps: list[str] = []
    labs = np.empty((n, len(LABEL_KEYS)), dtype=np.int64)
    for i in range(n):
        sc = make_scene(rng, size)
        images[i] = sc.image
        caps.append(sc.caption)
        lb = labels(sc)
        labs[i] = [lb[k] for k in LABEL_KEYS]
    return images, caps, labs


def sample_scenes(seed: int, n: int, size: int = 64) -> list[Scene]:
    """n scenes, deterministic in (seed, size); scene i is identical to render_batch(seed, n)[.][i]."""
    out: list[Scene] = []
    for c in range((n + CHUNK - 1) // CHUNK):
        rng = _chunk_rng(seed, c)
        for _ in range(min(CHUNK, n - c * CHUNK)):
            out.append(make_scene(rng, size))
    return out


def render_batch(
    seed: int, n: int, size: int = 64, workers: int = 1
) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Bulk generation: (images uint8 (n,H,W,3), captions, {label key: int64 (n,)}). Identical for any workers."""
    tasks = [(seed, c, min(CHUNK, n - c * CHUNK), size) for c in range((n + CHUNK - 1) // CHUNK)]
    if workers > 1 and len(tasks) > 1:
        try:
            ctx = mp.get_context("fork")
        except ValueError:  # pragma: no cover - platforms without fork
            ctx = mp.get_context()
        with ctx.Pool(min(workers, len(tasks))) as pool:
            results = pool.map(_render_chunk, tasks)
    else:
        results = [_render_chunk(t) for t in tasks]
    if results:
        images = np.concatenate([r[0] for r in results])
        labs = np.concatenate([r[2] for r in results])
    else:
        images = np.empty((0, size, size, 3), dtype=np.uint8)
        labs = np.empty((0, len(LABEL_KEYS)), dtype=np.int64)
    captions = [c for r in results for c in r[1]]
    return images, captions, {k: labs[:, j].copy() for j, k in enumerate(LABEL_KEYS)}


def canny_edges(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """cv2.Canny edges of an RGB image as uint8 HxWx3 (white edges on black): the studio's canny annotator."""
    from studio.control.annotators import canny

    return canny(image, low, high)


__all__ = [
    "SHAPES", "COLOURS", "SIZES", "POSITIONS", "POSES", "COUNT_WORDS", "LABEL_KEYS", "VOCABULARY",
    "SceneObject", "Figure", "Scene", "make_scene", "sample_scenes", "caption_for", "labels", "parse_prompt",
    "asked_attributes", "canny_edges", "render_batch", "draw_object", "draw_figure", "pose_keypoints", "tokenize",
]
