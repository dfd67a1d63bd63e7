"""Reading a free-text prompt back into the shapes scenes' attribute labels (what the evaluator should see)."""

from __future__ import annotations

import re

from studio.shapes.attributes import COLOUR_NAMES, LABEL_KEYS, SHAPES

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
    """Recover labels() attributes from a free-text prompt; -1 for what the prompt does not say."""
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


def asked_attributes(text: str) -> dict[str, int]:
    """Only what a prompt asks for: parse_prompt without the heads it leaves open (-1)."""
    return {k: v for k, v in parse_prompt(text).items() if v >= 0}
