"""Captions for the shapes scenes: random paraphrases of a scene, the tokenizer and the closed vocabulary."""

from __future__ import annotations

import re

import numpy as np

from studio.shapes.attributes import COLOURS, COUNT_WORDS, SHAPES, Scene

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
