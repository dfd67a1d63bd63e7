"""Tests for the procedural shapes/figures data set (studio.shapes: scenes, drawing, captions, prompts) and the OpenPose renderer."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from studio.config import ASSETS_MODELS, DEFAULT_MODEL
from studio.control.annotators import canny
from studio.control.pose import COLOURS as POSE_COLOURS
from studio.control.pose import KEYPOINT_NAMES, LIMB_PAIRS, render_pose_map
from studio.shapes import attributes as A
from studio.shapes import captions as C
from studio.shapes import drawing as D
from studio.shapes import models as M
from studio.shapes import prompts as P
from studio.shapes import scenes as S


@pytest.fixture(scope="module")
def many():
    return S.sample_scenes(123, 600)


def test_constants():
    assert len(A.COLOURS) == 8
    assert list(A.COLOURS) == ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
    cols = np.array(list(A.COLOURS.values()), dtype=float)
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1)
    assert d[~np.eye(8, dtype=bool)].min() > 60
    assert len(KEYPOINT_NAMES) == 18 and len(LIMB_PAIRS) == 17 and len(POSE_COLOURS) == 18


def test_determinism():
    a = S.sample_scenes(7, 40)
    b = S.sample_scenes(7, 40)
    c = S.sample_scenes(8, 40)
    assert all(np.array_equal(x.image, y.image) and x.caption == y.caption for x, y in zip(a, b))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))
    assert [x.caption for x in a] != [x.caption for x in c]


def test_scene_structure_and_vocabulary(many):
    vocab = set(C.VOCABULARY)
    kinds = {"single": 0, "multi": 0, "figure": 0}
    for sc in many:
        assert sc.image.shape == (64, 64, 3) and sc.image.dtype == np.uint8
        assert sc.caption == sc.caption.lower()
        assert all(ch.isalpha() or ch in " ," for ch in sc.caption), sc.caption
        toks = C.tokenize(sc.caption)
        assert set(toks) <= vocab, (sc.caption, set(toks) - vocab)
        if sc.kind == "figure":
            kinds["figure"] += 1
            assert sc.figure is not None and sc.objects == [] and sc.count == 1 and sc.position is None
            assert sc.figure.keypoints.shape == (18, 2) and sc.figure.keypoints.dtype == np.float32
            kp = sc.figure.keypoints
            assert (kp >= 0).all() and (kp < 64).all()
        else:
            assert sc.count == len(sc.objects) and 1 <= sc.count <= 3
            assert len({(o.shape, o.colour, o.size) for o in sc.objects}) == 1
            for o in sc.objects:  # fully inside the image, not touching the border
                assert D.EXTENT * o.radius + 1 <= o.centre[0] <= 63 - D.EXTENT * o.radius
                assert D.EXTENT * o.radius + 1 <= o.centre[1] <= 63 - D.EXTENT * o.radius
            if sc.count == 1:
                kinds["single"] += 1
                assert sc.position in A.POSITIONS
            else:
                kinds["multi"] += 1
                assert sc.position is None
                for i, o in enumerate(sc.objects):
                    for p in sc.objects[:i]:
                        dist = np.hypot(o.centre[0] - p.centre[0], o.centre[1] - p.centre[1])
                        assert dist > D.EXTENT * (o.radius + p.radius)
    n = len(many)
    assert 0.40 < kinds["single"] / n < 0.60
    assert 0.14 < kinds["multi"] / n < 0.30
    assert 0.20 < kinds["figure"] / n < 0.36


def test_vocabulary_is_the_captions_words_and_the_shipped_tokenizer_knows_every_caption(many):
    """The shipped text encoder was trained on this vocabulary: a caption word it lacks becomes <|unk|>."""
    words = {w for sc in many for w in C.tokenize(sc.caption)}
    assert words == set(C.VOCABULARY)  # no caption word missing, no vocabulary word that no caption uses
    tok = AutoTokenizer.from_pretrained(ASSETS_MODELS / DEFAULT_MODEL / "tokenizer")
    assert set(tok.get_vocab()) - set(M.SPECIAL_TOKENS) - set(M.PUNCTUATION) == set(C.VOCABULARY)
    for sc in many:
        ids = tok(sc.caption)["input_ids"]
        assert tok.unk_token_id not in ids and len(ids) <= tok.model_max_length, sc.caption

def test_parse_prompt_agrees_with_labels(many):
    n_size = n_pos = n_single = 0
    for sc in many:
        lab = A.labels(sc)
        assert set(lab) == set(A.LABEL_KEYS)
        p = P.parse_prompt(sc.caption)
        assert set(p) == set(A.LABEL_KEYS)
        for k in A.LABEL_KEYS:
            if p[k] != -1:
                assert p[k] == lab[k], (sc.caption, k, p, lab)
        # heads every caption states
        assert p["kind"] == lab["kind"] and p["colour"] == lab["colour"], sc.caption
        if sc.kind == "figure":
            assert p["pose"] == lab["pose"], sc.caption
            assert all(lab[k] == -1 for k in ("shape", "count", "position", "size"))
        else:
            assert p["shape"] == lab["shape"] and p["count"] == lab["count"], sc.caption
            if sc.count == 1:
                n_single += 1
                n_size += p["size"] != -1
                n_pos += p["position"] != -1
    assert n_size > 0.75 * n_single and n_pos > 0.75 * n_single
    assert n_size < n_single and n_pos < n_single  # sometimes omitted


def test_parse_user_prompts():
    p = P.parse_prompt("A Red Star")
    assert p["kind"] == 0 and p["shape"] == A.SHAPES.index("star") and p["colour"] == 0 and p["count"] == 0
    assert p["size"] == -1 and p["position"] == -1 and p["pose"] == -1
    p = P.parse_prompt("three small pink stars")
    assert p["count"] == 2 and p["size"] == 0 and p["colour"] == 7 and p["position"] == -1
    p = P.parse_prompt("a man in an orange shirt waving")
    assert p["kind"] == 1 and p["colour"] == 1 and p["pose"] == A.POSES.index("waving") and p["shape"] == -1
    p = P.parse_prompt("a person in a green shirt raising both arms")
    assert p["pose"] == A.POSES.index("arms up")
    p = P.parse_prompt("big blue ring, right side")
    assert (p["shape"], p["colour"], p["size"], p["position"]) == (4, 5, 1, 1)
    assert P.parse_prompt("hello world") == {k: -1 for k in A.LABEL_KEYS}


def _close(px, rgb, tol=12):
    return np.abs(px.astype(int) - np.array(rgb)).max() <= tol


def test_object_pixels_and_figure_shirt(many):
    checked_obj = checked_fig = 0
    for sc in many:
        if sc.kind == "object":
            for o in sc.objects:
                cx, cy = o.centre
                if o.shape == "ring":
                    thick = max(2, int(round(0.36 * o.radius)))
                    rr = o.radius - thick / 2.0
                    ok = any(
                        _close(sc.image[int(round(cy + dy)), int(round(cx + dx))], A.COLOURS[o.colour])
                        for dx, dy in ((rr, 0), (-rr, 0), (0, rr), (0, -rr))
                    )
                else:
                    ok = _close(sc.image[int(round(cy)), int(round(cx))], A.COLOURS[o.colour])
                assert ok, (sc.caption, o)
                checked_obj += 1
        else:
            col = np.array(A.COLOURS[sc.figure.colour])
            hits = (np.abs(sc.image.astype(int) - col).max(axis=-1) <= 8).sum()
            assert hits >= 6, sc.caption
            checked_fig += 1
    assert checked_obj > 300 and checked_fig > 100


def test_render_batch_workers_identical():
    a_img, a_cap, a_lab = S.render_batch(5, 600, workers=1)
    b_img, b_cap, b_lab = S.render_batch(5, 600, workers=2)
    assert a_img.shape == (600, 64, 64, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    assert set(a_lab) == set(A.LABEL_KEYS)
    for k in A.LABEL_KEYS:
        assert a_lab[k].dtype == np.int64 and np.array_equal(a_lab[k], b_lab[k])
    # consistent with sample_scenes
    sc = S.sample_scenes(5, 300)
    assert all(np.array_equal(s.image, a_img[i]) and s.caption == a_cap[i] for i, s in enumerate(sc))
    assert [A.labels(s)["colour"] for s in sc] == a_lab["colour"][:300].tolist()


def test_render_pose_map_joint_colours():
    sc = S.make_scene(np.random.default_rng(0), kind="figure")
    kp = sc.figure.keypoints
    for size in (64, 512):
        k = kp * (size / 64.0)
        pm = render_pose_map(k, size=(size, size))
        assert pm.shape == (size, size, 3) and pm.dtype == np.uint8
        for i in range(18):
            x, y = int(k[i, 0]), int(k[i, 1])
            # a later joint's circle may overlap an earlier one at 64 px; the last drawn one always wins
            later = [j for j in range(i + 1, 18) if (int(k[j, 0]), int(k[j, 1])) == (x, y)]
            if later:
                continue
            if size == 64:
                # joints closer than the radius can overwrite each other; only check isolated ones
                d = np.hypot(*(kp[i + 1:] - kp[i]).T) if i < 17 else np.array([9.0])
                if (d < 2.5).any():
                    continue
            assert tuple(pm[y, x]) == POSE_COLOURS[i], (size, i, KEYPOINT_NAMES[i])
    # missing joints are not drawn; a limb uses colour * 0.6
    kp2 = np.full((18, 2), np.nan, np.float32)
    kp2[1] = (100, 100)
    kp2[2] = (100, 300)
    pm = render_pose_map(kp2, size=(512, 512))
    assert tuple(pm[200, 100]) == tuple(int(c * 0.6) for c in POSE_COLOURS[0])
    assert tuple(pm[100, 100]) == POSE_COLOURS[1] and tuple(pm[300, 100]) == POSE_COLOURS[2]
    assert pm[400, 400].sum() == 0


def test_canny_edges_square():
    img = np.full((64, 64, 3), 40, np.uint8)
    D.draw_object(img, A.SceneObject("square", "red", "big", (32.0, 32.0), 14.0))
    e = canny(img)
    assert e.shape == (64, 64, 3) and e.dtype == np.uint8
    assert set(np.unique(e)) <= {0, 255}
    h = 0.86 * 14.0
    lo, hi = int(round(32 - h)), int(round(32 + h))
    # edges near each side of the square, none far inside or outside
    assert e[lo - 1:lo + 2, 25:40].any() and e[hi - 2:hi + 2, 25:40].any()
    assert e[25:40, lo - 1:lo + 2].any() and e[25:40, hi - 2:hi + 2].any()
    assert not e[28:37, 28:37].any() and not e[:10].any()
