"""Procedural, deterministic RGB scenes (coloured shapes and stick figures) with captions and attribute labels:
the data the embedded text-to-image model, its evaluator and its ControlNets are trained on.

The pieces live apart: attributes.py (vocabulary, records, labels), drawing.py, captions.py, prompts.py, and the
stick figures' poses in the core pose library (studio.control.pose). This module lays scenes out and renders
batches; the RNG draw order here is part of the data (the shipped models were trained on it).
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np

from studio.control.pose import place_pose, unit_pose
from studio.shapes.attributes import (
    COLOUR_NAMES, KIND_PROBS, LABEL_KEYS, POSES, POSITIONS, SHAPES, SIZES, Figure, Scene, SceneObject, labels,
)
from studio.shapes.captions import caption_for
from studio.shapes.drawing import EXTENT, background, draw_figure, draw_object

__all__ = ["Scene", "make_scene", "sample_scenes", "render_batch"]

# ----------------------------------------------------------------------------------------------------------------
# Layout: where the objects or the figure go (random draws in a fixed order)
# ----------------------------------------------------------------------------------------------------------------


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


def _figure(rng: np.random.Generator, size: int) -> tuple[Figure, float]:
    """A stick figure in a random library pose, maybe mirrored, scaled, shifted and jittered: (figure, scale)."""
    k = size / 64.0
    pose = POSES[rng.integers(len(POSES))]
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    unit = unit_pose(pose, mirrored=rng.random() < 0.5)
    scale = rng.uniform(40.0, 54.0) * k
    jx, jy = rng.uniform(-4.0, 4.0, size=2) * k
    kp, scale = place_pose(unit, size, scale, (jx, jy))
    kp = kp + rng.uniform(-1.0, 1.0, size=kp.shape) * k
    return Figure(colour=colour, pose=pose, keypoints=kp.astype(np.float32)), scale


# ----------------------------------------------------------------------------------------------------------------
# Scenes and batches
# ----------------------------------------------------------------------------------------------------------------


def make_scene(rng: np.random.Generator, size: int = 64, kind: str | None = None) -> Scene:
    """One random scene. kind: None (mix), "object" (single or multiple), "single", "multi" or "figure"."""
    if kind is None:
        u = rng.random()
        kind = "single" if u < KIND_PROBS[0] else ("multi" if u < KIND_PROBS[0] + KIND_PROBS[1] else "figure")
    elif kind == "object":
        kind = "single" if rng.random() < KIND_PROBS[0] / (KIND_PROBS[0] + KIND_PROBS[1]) else "multi"
    img, dark = background(rng, size)
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
        fig, scale = _figure(rng, size)
        draw_figure(img, fig, scale, dark)
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
