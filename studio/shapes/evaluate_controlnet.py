"""Measure the embedded ControlNets against their bars on fresh procedural scenes.

    python -m studio.shapes.evaluate_controlnet --canny assets/controlnets/shapes-v1-canny --pose assets/controlnets/shapes-v1-pose

Edges: F1 between the Canny edges of the output and the control edges, with a 2-pixel tolerance, at scale 1
and at scale 0 (the same seeds). Pose: the fraction of the skeleton's limb pixels that fall on the generated
figure, and whether the evaluator finds the prompt's shirt colour. Sketch: hand-drawn outlines + "a <colour>
<shape>" prompts; the evaluator must see that shape and colour, centred where the outline is.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from studio.config import ASSETS_CONTROLNETS, ASSETS_MODELS
from studio.control import annotators
from studio.control.pose import LIMB_PAIRS
from studio.shapes import evaluate as shapes_eval
from studio.shapes import evaluator as ev
from studio.shapes import scenes
from studio.shapes.attributes import COLOUR_NAMES, POSES, SHAPES
from studio.shapes.captions import article
from studio.shapes.evaluate import EVAL_SEED

BODY_LIMBS = LIMB_PAIRS[:13]  # neck, shoulders, arms, hips, legs, nose; not the eye/ear lines (the figure has no face)
TOLERANCE = 2  # pixels, for edge F1


# ---------------------------------------------------------------- metrics
def edge_f1(output_edges: np.ndarray, control_edges: np.ndarray, tolerance: int = TOLERANCE) -> float:
    """F1 of two binary edge maps, an edge pixel counting as matched within `tolerance` pixels of the other map."""
    a, b = (np.asarray(e)[..., 0] > 0 if np.ndim(e) == 3 else np.asarray(e) > 0 for e in (output_edges, control_edges))
    if not a.any() or not b.any():
        return float(a.any() == b.any())
    to_b = cv2.distanceTransform((~b).astype(np.uint8), cv2.DIST_L2, 3)
    to_a = cv2.distanceTransform((~a).astype(np.uint8), cv2.DIST_L2, 3)
    precision, recall = (to_b[a] <= tolerance).mean(), (to_a[b] <= tolerance).mean()
    return float(2 * precision * recall / max(precision + recall, 1e-9))


def background_model(image: np.ndarray, border: int = 3) -> np.ndarray:
    """The scene's background (a smooth gradient): a plane per channel fitted to the image's border pixels."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    frame = np.zeros((h, w), bool)
    frame[:border], frame[-border:], frame[:, :border], frame[:, -border:] = True, True, True, True
    design = np.stack([np.ones_like(xx), xx / w, yy / h], -1)
    coef, *_ = np.linalg.lstsq(design[frame], image[frame].astype(np.float64), rcond=None)
    return design @ coef


def figure_mask(image: np.ndarray, threshold: float = 40.0) -> np.ndarray:
    """Pixels that differ from the fitted background: the figure (or the objects)."""
    return np.linalg.norm(image.astype(np.float64) - background_model(image), axis=-1) > threshold


def limb_mask(keypoints: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    for a, b in BODY_LIMBS:
        if np.isfinite(keypoints[[a, b]]).all():
            cv2.line(mask, tuple(int(round(v)) for v in keypoints[a]), tuple(int(round(v)) for v in keypoints[b]), 1, 1)
    return mask.astype(bool)


def limb_coverage(image: np.ndarray, keypoints: np.ndarray, tolerance: int = 1) -> float:
    """Fraction of the skeleton's limb pixels on the figure (the figure mask grown by `tolerance` pixels)."""
    fig = figure_mask(image).astype(np.uint8)
    if tolerance:
        fig = cv2.dilate(fig, np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8))
    limbs = limb_mask(keypoints, image.shape[:2])
    return float(fig.astype(bool)[limbs].mean()) if limbs.any() else 0.0


# ---------------------------------------------------------------- cases
def edge_cases(n: int, seed: int = EVAL_SEED) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(captions, control maps, source images) of fresh scenes of every kind."""
    rng = np.random.default_rng([seed, 0xED6E])
    found = [scenes.make_scene(rng) for _ in range(n)]
    return [s.caption for s in found], [annotators.canny(s.image) for s in found], [s.image for s in found]


def pose_cases(n: int, seed: int = EVAL_SEED) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[str], list[str]]:
    """(prompts, pose maps, keypoints, shirt colours, poses) of fresh figure scenes. The prompts name the shirt colour
    but not the pose ("a person in a red shirt"), so only the pose map can say where the limbs go."""
    rng = np.random.default_rng([seed, 0x9053])
    found = [scenes.make_scene(rng, kind="figure") for _ in range(n)]
    return ([f"a person in {article(s.figure.colour)} {s.figure.colour} shirt" for s in found],
            [annotators.pose(s.figure.keypoints) for s in found], [s.figure.keypoints for s in found],
            [s.figure.colour for s in found], [s.figure.pose for s in found])


def hand_outline(shape: str, centre: tuple[float, float], radius: float, rng: np.random.Generator, canvas: int = 512) -> np.ndarray:
    """A wobbly outline of a shape as a person draws it on a white canvas (black strokes), at canvas resolution."""
    k = canvas / 64
    cx, cy, r = centre[0] * k, centre[1] * k, radius * k
    vertices = {"triangle": 3, "square": 4, "diamond": 4, "star": 10}.get(shape, 40)
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False) + {"square": np.pi / 4, "triangle": -np.pi / 2, "star": -np.pi / 2}.get(shape, 0.0)
    radii = np.full(vertices, r)
    if shape == "star":
        radii[1::2] *= 0.45
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    points += rng.normal(0, 0.04 * r, points.shape)
    drawing = np.full((canvas, canvas, 3), 255, np.uint8)
    cv2.polylines(drawing, [np.round(points).astype(np.int32)], True, (0, 0, 0), int(max(2, canvas / 80)), cv2.LINE_AA)
    if shape == "ring":
        cv2.circle(drawing, (int(cx), int(cy)), int(r * 0.55), (0, 0, 0), int(max(2, canvas / 80)), cv2.LINE_AA)
    return drawing


def sketch_cases(n: int, seed: int = EVAL_SEED):
    rng = np.random.default_rng([seed, 0x5CE7])
    cases = []
    for _ in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        centre = (float(rng.uniform(22, 42)), float(rng.uniform(22, 42)))
        drawing = hand_outline(shape, centre, float(rng.uniform(11, 17)), rng)
        cases.append((f"{article(colour)} {colour} {shape}", annotators.scribble(drawing, size=(64, 64)), shape, colour, centre))
    return cases


# ---------------------------------------------------------------- generation
def load_pipeline(suite: str | Path, controlnet: str | Path, device: str = "cpu"):
    return shapes_eval.load_pipeline(suite, device, controlnet=controlnet)


def generate(pipe, prompts: list[str], maps: list[np.ndarray], scale: float, seed: int = 0, steps: int = 25) -> np.ndarray:
    """uint8 images; image k from seed + k (the same noise at every scale)."""
    return shapes_eval.generate(pipe, prompts, seed, steps, batch=32, maps=maps, control_scale=scale)


def evaluate_edges(pipe, n: int, steps: int = 25) -> dict:
    prompts, maps, _ = edge_cases(n)
    report = {"n": n, "tolerance_px": TOLERANCE}
    for scale in (1.0, 0.0):
        images = generate(pipe, prompts, maps, scale, steps=steps)
        report[f"edge_f1_scale_{scale:g}"] = float(np.mean([edge_f1(annotators.canny(im), m) for im, m in zip(images, maps)]))
    return report


def evaluate_pose(pipe, judge, n: int, steps: int = 25) -> dict:
    prompts, maps, keypoints, colours, poses = pose_cases(n)
    wanted_colour = np.array([COLOUR_NAMES.index(c) for c in colours])
    wanted_pose = np.array([POSES.index(p) for p in poses])
    report = {"n": n, "prompt": "a person in a <colour> shirt (no pose words)"}
    for scale in (1.0, 0.0):  # at scale 0 the prompt alone draws a figure somewhere: the coverage a pose map must beat
        images = generate(pipe, prompts, maps, scale, steps=steps)
        pred = ev.predict(judge, images)
        report[f"limb_coverage_scale_{scale:g}"] = float(np.mean([limb_coverage(im, kp) for im, kp in zip(images, keypoints)]))
        report[f"pose_match_scale_{scale:g}"] = float((pred["pose"] == wanted_pose).mean())
        report[f"shirt_colour_scale_{scale:g}"] = float((pred["colour"] == wanted_colour).mean())
        report[f"figure_scale_{scale:g}"] = float((pred["kind"] == 1).mean())
    return report


def evaluate_sketch(pipe, judge, n: int, steps: int = 25) -> dict:
    cases = sketch_cases(n)
    report = {"n": n}
    for scale in (1.0, 0.0):
        images = generate(pipe, [c[0] for c in cases], [c[1] for c in cases], scale, steps=steps)
        pred = ev.predict(judge, images)
        shape_ok = pred["shape"] == np.array([SHAPES.index(c[2]) for c in cases])
        colour_ok = pred["colour"] == np.array([COLOUR_NAMES.index(c[3]) for c in cases])
        offsets = []
        for image, case in zip(images, cases):
            ys, xs = np.nonzero(figure_mask(image))
            offsets.append(float(np.hypot(xs.mean() - case[4][0], ys.mean() - case[4][1])) if len(xs) else 64.0)
        suffix = "" if scale == 1.0 else "_scale_0"
        report.update({f"shape_and_colour{suffix}": float((shape_ok & colour_ok).mean()), f"shape{suffix}": float(shape_ok.mean()),
                       f"colour{suffix}": float(colour_ok.mean()), f"centre_offset_px_median{suffix}": float(np.median(offsets))})
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default=str(ASSETS_MODELS / "shapes-v1"))
    p.add_argument("--canny", default=str(ASSETS_CONTROLNETS / "shapes-v1-canny"))
    p.add_argument("--pose", default=str(ASSETS_CONTROLNETS / "shapes-v1-pose"))
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--only", default="edges,sketch,pose")
    p.add_argument("--write", action="store_true", help="write eval.json into each ControlNet folder")
    args = p.parse_args(argv)
    judge = ev.load(Path(args.suite) / "evaluator")
    results = {}
    t0 = time.time()
    if {"edges", "sketch"} & set(args.only.split(",")):
        pipe = load_pipeline(args.suite, args.canny)
        if "edges" in args.only:
            results["edges"] = evaluate_edges(pipe, args.n, args.steps)
            print(json.dumps({"edges": results["edges"]}), flush=True)
        if "sketch" in args.only:
            results["sketch"] = evaluate_sketch(pipe, judge, max(12, args.n // 2), args.steps)
            print(json.dumps({"sketch": results["sketch"]}), flush=True)
        if args.write:
            (Path(args.canny) / "eval.json").write_text(json.dumps({k: results[k] for k in ("edges", "sketch") if k in results}, indent=1))
    if "pose" in args.only:
        results["pose"] = evaluate_pose(load_pipeline(args.suite, args.pose), judge, args.n, args.steps)
        print(json.dumps({"pose": results["pose"]}), flush=True)
        if args.write:
            (Path(args.pose) / "eval.json").write_text(json.dumps({"pose": results["pose"]}, indent=1))
    print(json.dumps({"seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
