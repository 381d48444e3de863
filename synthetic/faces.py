"""Procedural face generator with exact iBUG-68 landmarks, and face-swap fakes.

Tests, CI and the demo use this module instead of a real deepfake data set, so
nothing is ever downloaded.  It draws cartoon-like but face-shaped images with
OpenCV (anti-aliased polygons, sub-pixel coordinates) and numpy only:

* An *identity* (:func:`sample_identity`) is a small dict of numbers: jaw
  width/height and chin shape, skin tone, eye size/spacing/iris colour, brow
  thickness/arch/colour, nose length/width, mouth width/lip thickness/colour,
  hair colour and style (cap, long hair, fringe, bald), ears, clothes and a
  background gradient.
* The 68 landmarks are built first in a *canonical face frame* (x to the image
  right, y down, jaw half-width ~1, eyes near y=-0.2, chin near y=1).  Every
  point carries a depth so that a render can apply a slight yaw/pitch (inner
  features shift more than the jaw), then a similarity transform (scale,
  in-plane roll, translation) maps it to pixels.  The landmark bounding box
  covers ~75% of the image, like a face crop made with a 1.3 margin.
* Drawing is done FROM the projected landmark polygons (Catmull-Rom curves
  through the landmarks for jaw, lids, lips, brows), so the landmarks lie on
  the drawn parts by construction: jaw points on the face contour, brow points
  on the brow centre line, eye points on the lid outline, nose points on the
  bridge / nostril line, lip points on the lip outlines.
* Each render (:func:`render_face`) jitters pose, expression (mouth opening,
  smile, eye openness, gaze), lighting direction, blur and sensor noise, so
  frames of one "video" differ.
* :func:`make_fake` renders target and source with the same pose, warps the
  source's inner face (convex hull of landmarks 17-67) onto the target with a
  thin-plate spline through the landmarks (so the result's features sit on the
  target's landmarks), resamples it (down-up scaling, optional JPEG), leaves a
  colour mismatch and blends it with a feathered mask: a blending boundary.
* :func:`generate_dataset` writes PNG frames + ``.npy`` landmark sidecars and
  CSV manifests (all/train/test/pretrain) with identity-disjoint splits.

Conventions: images are RGB uint8 in memory (converted to BGR only for
cv2.imwrite); landmarks are float32 [68, 2] (x, y) in pixels; label 1 = fake,
0 = real.

CLI::

    python -m synthetic.faces --out DIR --num 400 [--size 256] [--frames 4]
        [--seed 0] [--fake_ratio 0.5] [--test_fraction 0.25]
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from util import formats
from util.fileio import atomic_write
from util.landmarks import (
    INNER_FACE,
    INNER_LIPS,
    JAW,
    LEFT_BROW,
    LEFT_EYE,
    NOSE_BRIDGE,
    NOSTRILS,
    OUTER_LIPS,
    RIGHT_BROW,
    RIGHT_EYE,
)

MANIFEST_COLUMNS = [*formats.MANIFEST_COLUMNS, "identity", "split", "method"]   # the shared ones, then ours

_SHIFT = 4                 # sub-pixel bits for cv2 drawing
_ONE = float(1 << _SHIFT)
_AA = cv2.LINE_AA

# ---------------------------------------------------------------------------
# Identity sampling
# ---------------------------------------------------------------------------
_SKIN_ANCHORS = np.array([      # RGB, from very light to very dark
    [242, 212, 190],
    [226, 184, 150],
    [198, 148, 110],
    [160, 110, 75],
    [118, 78, 52],
    [82, 54, 38],
], np.float32)
_HAIR_COLOURS = np.array([
    [22, 18, 16], [45, 32, 24], [75, 50, 32], [110, 75, 45], [150, 110, 70],
    [205, 170, 110], [140, 65, 35], [140, 135, 130], [200, 196, 190],
], np.float32)
_HAIR_P = np.array([0.22, 0.2, 0.16, 0.12, 0.08, 0.08, 0.05, 0.05, 0.04])
_IRIS_COLOURS = np.array([
    [50, 30, 18], [85, 52, 28], [115, 90, 48], [75, 105, 65], [65, 105, 155], [105, 115, 125],
], np.float32)
_IRIS_P = np.array([0.3, 0.25, 0.12, 0.1, 0.15, 0.08])


def _colour(c) -> tuple[float, float, float]:
    """Colour as a tuple of three floats clipped to [0, 255] (what cv2 drawing wants)."""
    return tuple(min(255.0, max(0.0, float(v))) for v in c[:3])


def _random_bg(rng: np.random.Generator) -> tuple[float, float, float]:
    hue = rng.uniform(0, 180)
    hsv = np.uint8([[[hue, rng.uniform(20, 140), rng.uniform(60, 230)]]])
    return _colour(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def sample_identity(rng: np.random.Generator) -> dict:
    """Sample the parameters of one synthetic person (plain floats/tuples/str)."""
    u = rng.uniform
    # skin: piecewise-linear walk through the anchor tones + small hue jitter
    t = u(0, len(_SKIN_ANCHORS) - 1)
    i = min(int(t), len(_SKIN_ANCHORS) - 2)
    skin = _SKIN_ANCHORS[i] * (1 - (t - i)) + _SKIN_ANCHORS[i + 1] * (t - i)
    skin = skin + np.array([u(-8, 10), u(-6, 6), u(-8, 6)])
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_P)] * u(0.85, 1.15)
    iris = _IRIS_COLOURS[rng.choice(len(_IRIS_COLOURS), p=_IRIS_P)] * u(0.8, 1.2)
    lip_mix = u(0.25, 0.5)
    lips = (np.asarray(skin) * (1 - lip_mix) + np.array([175, 70, 80]) * lip_mix) * u(0.78, 0.92)

    eye_y = u(-0.24, -0.16)
    nose_tip_y = u(0.22, 0.32)
    nose_base_y = nose_tip_y + u(0.04, 0.07)
    mouth_y = nose_base_y + u(0.2, 0.28)
    jaw_y0 = u(-0.12, 0.0)
    chin_y = max(u(0.95, 1.1), mouth_y + 0.38)
    style = str(rng.choice(["short", "long", "bald", "cropped"], p=[0.42, 0.33, 0.08, 0.17]))
    brow_gap = u(0.15, 0.22)
    brow_thick = u(0.03, 0.065)
    brow_arch = u(0.015, 0.06)
    brow_top = eye_y - brow_gap - brow_arch - brow_thick / 2
    return {
        # head / jaw
        "jaw_w": u(0.84, 1.0), "jaw_y0": jaw_y0, "chin_y": chin_y,
        "jaw_square": u(0.55, 1.0), "chin_round": u(0.75, 1.3),
        "forehead_top": u(-1.3, -1.15), "ear_size": u(0.85, 1.15),
        "skin": _colour(skin),
        # eyes
        "eye_y": eye_y, "eye_dx": u(0.39, 0.46), "eye_w": u(0.31, 0.39),
        "eye_h": u(0.06, 0.085), "eye_tilt": u(-0.02, 0.03),
        "iris": _colour(iris), "iris_r": u(0.2, 0.25),
        # brows
        "brow_gap": brow_gap, "brow_thick": brow_thick, "brow_arch": brow_arch,
        "brow_len": u(0.95, 1.15), "brow_colour": _colour(hair * u(0.55, 0.9)),
        # nose
        "nose_tip_y": nose_tip_y, "nose_base_y": nose_base_y, "nose_w": u(0.15, 0.22),
        # mouth
        "mouth_y": mouth_y, "mouth_w": u(0.28, 0.36), "lip_up": u(0.05, 0.085),
        "lip_lo": u(0.06, 0.105), "lips": _colour(lips),
        # hair
        "hair": _colour(hair), "hair_style": style,
        "hairline_y": u(-0.88, -0.68),
        "fringe_y": (brow_top - u(0.03, 0.09)) if (style != "bald" and u() < 0.35) else None,
        "hair_sweep": u(-0.15, 0.15),
        # scene
        "bg0": _random_bg(rng), "bg1": _random_bg(rng), "bg_angle": u(0, 2 * math.pi),
        "clothes": _random_bg(rng),
    }


# ---------------------------------------------------------------------------
# Landmark geometry in the canonical face frame
# ---------------------------------------------------------------------------
def _head_depth(ident: dict, x: np.ndarray) -> np.ndarray:
    """Depth of the head surface (ellipsoid-ish), used for yaw/pitch."""
    return 0.55 * np.sqrt(np.clip(1.0 - (x / (ident["jaw_w"] * 1.15)) ** 2, 0.0, None))


def _eye(cx: float, cy: float, w: float, h: float, tilt: float, openness: float, outer_left: bool):
    """Six lid points in iBUG order, starting at the image-left corner, clockwise."""
    hw = w / 2
    hu, hl = h * openness, 0.75 * h * max(openness, 0.15)
    # (tilt raises the outer corner)
    left_y = cy - (tilt if outer_left else 0.0)
    right_y = cy - (0.0 if outer_left else tilt)
    return np.array([
        [cx - hw, left_y],
        [cx - hw * 0.35, cy - hu],
        [cx + hw * 0.35, cy - hu],
        [cx + hw, right_y],
        [cx + hw * 0.35, cy + hl],
        [cx - hw * 0.35, cy + hl],
    ])


def _canonical_landmarks(ident: dict, expr: dict) -> tuple[np.ndarray, np.ndarray]:
    """68 landmarks (x, y) and their depths in the canonical frame."""
    p = np.zeros((68, 2))
    z = np.zeros(68)
    W, y0, cy = ident["jaw_w"], ident["jaw_y0"], ident["chin_y"]
    # jaw 0..16: image left -> chin -> image right
    th = np.pi * (1 - np.arange(17) / 16)
    c, s = np.cos(th), np.sin(th)
    p[JAW, 0] = W * np.sign(c) * np.abs(c) ** ident["jaw_square"]
    p[JAW, 1] = y0 + (cy - y0) * s ** ident["chin_round"]
    z[JAW] = _head_depth(ident, p[JAW, 0]) * 0.75
    # brows: centre lines, outer end -> inner end for the right brow
    ex, ey, ew = ident["eye_dx"], ident["eye_y"], ident["eye_w"]
    inner = 0.1 + 0.03 * (ident["eye_dx"] - 0.39) / 0.07
    outer = ex + ew / 2 * ident["brow_len"] + 0.04
    t = np.linspace(0, 1, 5)                      # 0 = outer, 1 = inner
    bx = outer + (inner - outer) * t
    by = ey - ident["brow_gap"] - expr["brow_raise"] - ident["brow_arch"] * np.sin(np.pi * (0.15 + 0.7 * t)) + 0.015 * t
    p[RIGHT_BROW] = np.stack([-bx, by], 1)
    p[LEFT_BROW] = np.stack([bx[::-1], by[::-1]], 1)
    z[RIGHT_BROW + LEFT_BROW] = 0.02
    # nose
    nt, nb, nw = ident["nose_tip_y"], ident["nose_base_y"], ident["nose_w"]
    p[NOSE_BRIDGE, 0] = 0.0
    p[NOSE_BRIDGE, 1] = np.linspace(ey - 0.02, nt, 4)
    z[NOSE_BRIDGE] = [0.08, 0.15, 0.25, 0.35]
    p[NOSTRILS] = [[-nw, nb - 0.03], [-nw * 0.5, nb - 0.005], [0, nb], [nw * 0.5, nb - 0.005], [nw, nb - 0.03]]
    z[NOSTRILS] = [0.12, 0.18, 0.22, 0.18, 0.12]
    # eyes (openness and gaze are per render)
    op = expr["eye_open"]
    p[RIGHT_EYE] = _eye(-ex, ey, ew, ident["eye_h"], ident["eye_tilt"], op, True)
    p[LEFT_EYE] = _eye(ex, ey, ew, ident["eye_h"], ident["eye_tilt"], op, False)
    z[RIGHT_EYE + LEFT_EYE] = -0.05
    # mouth
    my, mw, lu, ll = ident["mouth_y"], ident["mouth_w"] * expr["mouth_stretch"], ident["lip_up"], ident["lip_lo"]
    o = expr["mouth_open"]

    def bump(x):
        return np.clip(1 - (np.asarray(x) / (0.85 * mw)) ** 2, 0, None)
    xs_out = np.array([-1, -0.55, -0.2, 0, 0.2, 0.55, 1, 0.55, 0.2, 0, -0.2, -0.55]) * mw
    up = my - o / 2 * bump(xs_out[:7])
    lo = my + o / 2 * bump(xs_out[7:])
    ys_out = np.concatenate([
        up - lu * np.array([0, 0.9, 1.12, 0.95, 1.12, 0.9, 0]),
        lo + ll * np.array([0.85, 1.0, 1.0, 1.0, 0.85]),
    ])
    p[OUTER_LIPS] = np.stack([xs_out, ys_out], 1)
    xs_in = np.array([-0.85, -0.35, 0, 0.35, 0.85, 0.35, 0, -0.35]) * mw
    ys_in = np.concatenate([my - o / 2 * bump(xs_in[:5]), my + o / 2 * bump(xs_in[5:])])
    p[INNER_LIPS] = np.stack([xs_in, ys_in], 1)
    m = OUTER_LIPS + INNER_LIPS
    p[m, 1] -= expr["smile"] * (p[m, 0] / mw) ** 2       # raise corners when smiling
    z[m] = 0.1
    return p, z


def _arc(rx, y_top, y_side, n, phi0=0.0, phi1=math.pi, power=1.0):
    """Upper arc centred on x=0, from angle phi0 to phi1 (0 = image right): y_side at the ends, y_top in the middle."""
    phi = np.linspace(phi0, phi1, n)
    x = rx * np.cos(phi)
    y = y_side + (y_top - y_side) * np.sin(phi) ** power
    return np.stack([x, y], 1)


def _ellipse_pts(cx, cy, rx, ry, n=20):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)


def _canonical_outlines(ident: dict) -> dict[str, np.ndarray]:
    """Non-landmark shapes (head top, hair, ears, neck, clothes), canonical frame."""
    W, y0 = ident["jaw_w"], ident["jaw_y0"]
    top = ident["forehead_top"]
    shapes = {}
    shapes["forehead"] = _arc(W, top, y0, 28, 0.0, math.pi, 0.8)[1:-1]   # from point 16 over the top to 0
    es = ident["ear_size"]
    shapes["ear_l"] = _ellipse_pts(-W - 0.03 * es, y0 + 0.1, 0.09 * es, 0.2 * es)
    shapes["ear_r"] = _ellipse_pts(W + 0.03 * es, y0 + 0.1, 0.09 * es, 0.2 * es)
    shapes["neck"] = np.array([[-0.52 * W, 0.2], [0.52 * W, 0.2], [0.6 * W, 2.6], [-0.6 * W, 2.6]])
    shapes["clothes"] = np.array([[-3.5, 1.55], [-0.75, 1.28], [0, 1.55], [0.75, 1.28], [3.5, 1.55],
                                  [3.5, 3.5], [-3.5, 3.5]])
    style = ident["hair_style"]
    if style in ("short", "long", "cropped"):
        outer_w = W * (1.09 if style != "cropped" else 1.03)
        outer = _arc(outer_w, top - (0.14 if style != "cropped" else 0.06), y0 - 0.05, 30)
        hl = ident["hairline_y"] if ident["fringe_y"] is None else ident["fringe_y"]
        inner = _arc(W * 0.97, hl, y0 - 0.14, 30, math.pi, 0.0, 0.6 if ident["fringe_y"] is None else 0.35)
        inner[:, 1] += ident["hair_sweep"] * inner[:, 0] * (0.15 if ident["fringe_y"] is None else 0.4)
        shapes["hair_cap"] = np.concatenate([outer, inner])
    if style == "long":
        back = _arc(W * 1.22, top - 0.2, 0.2, 24)
        shapes["hair_back"] = np.concatenate([[[W * 1.32, 1.6]], back, [[-W * 1.32, 1.6]]])
    return shapes


# ---------------------------------------------------------------------------
# Per-render jitter and projection to pixels
# ---------------------------------------------------------------------------
def sample_pose(rng: np.random.Generator) -> dict:
    """Per-render variation: head pose, expression, lighting, blur and noise."""
    u = rng.uniform
    blink = u() < 0.05
    return {
        "yaw": float(np.clip(rng.normal(0, 0.12), -0.3, 0.3)),
        "pitch": float(np.clip(rng.normal(0, 0.05), -0.12, 0.12)),
        "roll": float(np.clip(rng.normal(0, 0.07), -0.15, 0.15)),
        "scale": u(0.94, 1.04),
        "shift": (float(np.clip(rng.normal(0, 0.015), -0.03, 0.03)),
                  float(np.clip(rng.normal(0, 0.015), -0.03, 0.03))),
        "mouth_open": 0.0 if u() < 0.45 else u(0.0, 0.13),
        "mouth_stretch": u(0.93, 1.08),
        "smile": u(-0.01, 0.045),
        "eye_open": u(0.08, 0.25) if blink else u(0.7, 1.1),
        "brow_raise": u(-0.01, 0.025),
        "gaze": (u(-0.25, 0.25), u(-0.15, 0.15)),
        "light_angle": u(0, 2 * math.pi),
        "light_strength": u(0.05, 0.35),
        "gain": u(0.9, 1.08),
        "blur": u(0.3, 0.8),        # sigma in pixels at size 256
        "noise": u(1.0, 3.5),       # sigma in grey levels
    }


class _Projector:
    """Canonical (x, y, depth) -> pixels: yaw/pitch rotation, then similarity."""

    def __init__(self, ident: dict, pose: dict, size: int, lm: np.ndarray, lm_z: np.ndarray):
        self.ident, self.pose, self.size = ident, pose, size
        self.cy, self.sy = math.cos(pose["yaw"]), math.sin(pose["yaw"])
        self.cp, self.sp = math.cos(pose["pitch"]), math.sin(pose["pitch"])
        rot = self._rotate(lm, lm_z)
        lo, hi = rot.min(0), rot.max(0)
        self.centre = (lo + hi) / 2
        self.scale = 0.75 * size * pose["scale"] / float(max(hi - lo))
        r = pose["roll"]
        self.R = self.scale * np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
        self.t = np.array([size / 2 + pose["shift"][0] * size, size / 2 + pose["shift"][1] * size]) - 0.5

    def _rotate(self, pts: np.ndarray, z: np.ndarray) -> np.ndarray:
        x, y = pts[:, 0], pts[:, 1]
        x1 = x * self.cy + z * self.sy
        z1 = -x * self.sy + z * self.cy
        y1 = y * self.cp - z1 * self.sp
        return np.stack([x1, y1], 1)

    def __call__(self, pts: np.ndarray, z=None) -> np.ndarray:
        pts = np.asarray(pts, np.float64)
        if z is None:
            z = _head_depth(self.ident, pts[:, 0])
        z = np.broadcast_to(np.asarray(z, np.float64), (len(pts),))
        return (self._rotate(pts, z) - self.centre) @ self.R.T + self.t


# ---------------------------------------------------------------------------
# Drawing helpers (all on uint8 RGB canvases, anti-aliased, sub-pixel)
# ---------------------------------------------------------------------------
def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts) * _ONE).astype(np.int32)


def _fill(img, pts, colour):
    cv2.fillPoly(img, [_fix(pts)], _colour(colour), _AA, _SHIFT)


def _line(img, pts, colour, thickness, closed=False):
    cv2.polylines(img, [_fix(pts)], closed, _colour(colour), max(1, int(round(thickness))), _AA, _SHIFT)


def _ellipse(img, centre, axes, angle_deg, colour):
    c = tuple(int(v) for v in _fix(centre))
    a = tuple(max(1, int(v)) for v in _fix(axes))
    cv2.ellipse(img, c, a, float(angle_deg), 0, 360, _colour(colour), -1, _AA, _SHIFT)


_CR_BASIS: dict[int, np.ndarray] = {}


def _catmull_rom(pts: np.ndarray, k: int = 6) -> np.ndarray:
    """Smooth open curve through all `pts` (k samples per segment, passes exactly through pts)."""
    pts = np.asarray(pts, np.float64)
    B = _CR_BASIS.get(k)
    if B is None:       # rows: sample t, columns: weights of p0..p3 (uniform Catmull-Rom)
        t = np.arange(k)[:, None] / k
        B = 0.5 * np.concatenate([-t + 2 * t ** 2 - t ** 3, 2 - 5 * t ** 2 + 3 * t ** 3,
                                  t + 4 * t ** 2 - 3 * t ** 3, -t ** 2 + t ** 3], 1)
        _CR_BASIS[k] = B
    P = np.concatenate([2 * pts[:1] - pts[1:2], pts, 2 * pts[-1:] - pts[-2:-1]])
    n = len(pts) - 1
    idx = np.arange(n)[:, None] + np.arange(4)[None]           # segment i uses P[i .. i+3]
    curve = np.einsum("kj,sjd->skd", B, P[idx]).reshape(-1, 2)
    return np.concatenate([curve, pts[-1:]])


def _clipped(img: np.ndarray, clip_poly: np.ndarray, draw) -> None:
    """Run draw(sub_image, offset) on a copy of the ROI, keep only what falls inside clip_poly."""
    h, w = img.shape[:2]
    x0, y0 = np.floor(clip_poly.min(0)).astype(int) - 2
    x1, y1 = np.ceil(clip_poly.max(0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]
    sub = roi.copy()
    off = np.array([x0, y0], np.float64)
    draw(sub, off)
    mask = np.zeros(roi.shape[:2], np.uint8)
    cv2.fillPoly(mask, [_fix(clip_poly - off)], 255, _AA, _SHIFT)
    a = mask[..., None].astype(np.float32) / 255.0
    img[y0:y1, x0:x1] = (sub * a + roi * (1 - a) + 0.5).astype(np.uint8)


def _scale_col(c, f):
    return np.clip(np.asarray(c, np.float64) * f, 0, 255)


def _draw_background(ident: dict, size: int) -> np.ndarray:
    """Two-colour linear gradient (computed on a coarse grid, bilinearly upsampled)."""
    a = ident["bg_angle"]
    n = max(8, size // 8)
    g = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    t = np.clip(0.5 + math.cos(a) * g[None, :] + math.sin(a) * g[:, None], 0, 1)
    c0, c1 = np.asarray(ident["bg0"], np.float32), np.asarray(ident["bg1"], np.float32)
    small = (c0 + t[..., None] * (c1 - c0) + 0.5).astype(np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def _draw_eye(img, lm, idx, ident, pose, proj, sign, scale):
    eye = lm[idx]
    outline = np.concatenate([_catmull_rom(eye[[0, 1, 2, 3]]), _catmull_rom(eye[[3, 4, 5, 0]])[1:-1]])
    skin = np.asarray(ident["skin"])
    sclera = np.array([236, 232, 226]) * 0.75 + skin * 0.25 * 0.9
    _fill(img, outline, sclera)
    ew = ident["eye_w"]
    centre_c = np.array([[sign * ident["eye_dx"] + pose["gaze"][0] * ew * 0.3,
                          ident["eye_y"] + pose["gaze"][1] * ew * 0.15]])
    c = proj(centre_c, -0.02)[0]
    r = ident["iris_r"] * ew * scale
    iris = np.asarray(ident["iris"])

    def draw(sub, off):
        _ellipse(sub, c - off, (r, r), 0, iris)
        _ellipse(sub, c - off, (r * 0.68, r * 0.68), 0, iris * 0.7)
        _ellipse(sub, c - off, (r * 0.42, r * 0.42), 0, (15, 12, 12))
        _ellipse(sub, c - off + np.array([-0.3, -0.35]) * r, (r * 0.16, r * 0.16), 0, (245, 245, 245))
        # shadow of the upper lid on the eye ball
        _line(sub, outline[: len(outline) // 2 + 1] - off + np.array([0, 0.06 * r]), sclera * 0.7, max(1.0, 0.25 * r))
    _clipped(img, outline, draw)
    # lids: thick dark upper lid (lashes), thin lower lid
    upper = _catmull_rom(eye[[0, 1, 2, 3]])
    lower = _catmull_rom(eye[[3, 4, 5, 0]])
    _line(img, upper, (30, 22, 20), max(1.0, 0.018 * scale))
    _line(img, lower, skin * 0.62, max(1.0, 0.008 * scale))
    # crease above the eye
    crease = upper[2:-2] + np.array([0, -0.045 * scale])
    _line(img, crease, skin * 0.8, max(1.0, 0.007 * scale))


def _draw_brow(img, pts, ident, scale, outer_first: bool):
    """Tapered brow polygon around its landmark centre line."""
    curve = _catmull_rom(pts, 4)
    d = curve[-1] - curve[0]
    d /= np.linalg.norm(d) + 1e-9
    ext = 0.4 * ident["brow_thick"] * scale
    curve = np.concatenate([curve[:1] - d * ext, curve, curve[-1:] + d * ext])
    n = np.stack([d[1], -d[0]])                # normal (points up for left-to-right curves)
    tt = np.linspace(0, 1, len(curve))
    taper = 0.35 + 0.65 * (tt if outer_first else 1 - tt) ** 0.5
    half = (0.5 * ident["brow_thick"] * scale * taper)[:, None]
    poly = np.concatenate([curve + n * half, (curve - n * half)[::-1]])
    _fill(img, poly, ident["brow_colour"])


def _draw_nose(img, lm, ident, proj, scale):
    skin = np.asarray(ident["skin"])
    nw, ey, nt = ident["nose_w"], ident["eye_y"], ident["nose_tip_y"]
    th = max(1.0, 0.016 * scale)
    for sgn, ala in ((-1, 31), (1, 35)):     # side shading lines down to the alae
        side = proj(np.array([[sgn * 0.07, ey + 0.06], [sgn * 0.08, (ey + nt) / 2], [sgn * nw * 0.8, nt - 0.02]]),
                    np.array([0.1, 0.18, 0.2]))
        _line(img, _catmull_rom(np.concatenate([side, lm[[ala]]]), 4), skin * 0.84, th)
    _line(img, _catmull_rom(lm[NOSE_BRIDGE], 4), _scale_col(skin, 1.09), max(1.0, 0.022 * scale))
    _ellipse(img, lm[30], (0.05 * scale, 0.035 * scale), 0, _scale_col(skin, 1.06))
    for a, b in ((31, 32), (35, 34)):           # nostrils, just above the base line
        c = 0.55 * lm[a] + 0.45 * lm[b] + (lm[33] - lm[30]) * -0.15
        ang = math.degrees(math.atan2(*(lm[b] - lm[a])[::-1]))
        _ellipse(img, c, (0.03 * scale, 0.014 * scale), ang, skin * 0.38)
    _line(img, _catmull_rom(lm[NOSTRILS], 4), skin * 0.6, th)


def _draw_mouth(img, lm, ident, scale):
    lips = np.asarray(ident["lips"])
    up_out = _catmull_rom(lm[48:55], 4)
    lo_out = _catmull_rom(lm[[54, 55, 56, 57, 58, 59, 48]], 4)
    up_in = _catmull_rom(lm[[48, 60, 61, 62, 63, 64, 54]], 4)
    lo_in = _catmull_rom(lm[[54, 64, 65, 66, 67, 60, 48]], 4)
    _fill(img, np.concatenate([up_out, lo_out[1:-1]]), _scale_col(lips, 1.06))     # lower lip tone
    _fill(img, np.concatenate([up_out, up_in[::-1][1:-1]]), lips * 0.88)           # upper lip, darker
    gap = float(np.linalg.norm(lm[66] - lm[62]))
    if gap > 1.0:
        cavity = np.concatenate([up_in[4:-4], lo_in[4:-4]])
        teeth_h = 0.035 * scale

        def draw(sub, off):
            _fill(sub, cavity - off, (45, 18, 20))
            top = up_in[4:-4] - off
            _fill(sub, np.concatenate([top, (top + np.array([0, teeth_h]))[::-1]]), (228, 222, 210))
        _clipped(img, cavity, draw)
    _line(img, up_in[3:-3], lips * 0.5, max(1.0, 0.012 * scale))
    _line(img, lo_in[3:-3], lips * 0.6, max(1.0, 0.008 * scale))


def _face_shading(face_px: np.ndarray, size: int) -> np.ndarray:
    """Darkening towards the face contour (gives some volume), computed at low resolution."""
    small = max(16, size // 4)
    f = small / size
    m = np.zeros((small, small), np.uint8)
    cv2.fillPoly(m, [_fix(face_px * f)], 255, _AA, _SHIFT)
    m = m.astype(np.float32) / 255.0
    soft = cv2.GaussianBlur(m, (0, 0), small * 0.06)
    edge = np.clip(m - soft, 0, None)
    return cv2.resize(edge, (size, size), interpolation=cv2.INTER_LINEAR)


def _render_clean(ident: dict, pose: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the face (no blur/noise).  Returns float32 RGB image and float32 landmarks."""
    lm_c, lm_z = _canonical_landmarks(ident, pose)
    proj = _Projector(ident, pose, size, lm_c, lm_z)
    lm = proj(lm_c, lm_z)
    S = proj.scale
    outlines = _canonical_outlines(ident)
    forehead = outlines.pop("forehead")
    shapes = {k: proj(v) for k, v in outlines.items()}
    # face = smooth curve through the jaw landmarks + forehead arc (same depth scaling as the jaw)
    forehead_px = proj(forehead, 0.75 * _head_depth(ident, forehead[:, 0]))
    shapes["face"] = np.concatenate([_catmull_rom(lm[JAW], 3), forehead_px])
    skin = np.asarray(ident["skin"])
    hair = np.asarray(ident["hair"])

    img = _draw_background(ident, size)
    if "hair_back" in shapes:
        _fill(img, shapes["hair_back"], hair * 0.85)
    _fill(img, shapes["neck"], skin * 0.72)
    _fill(img, shapes["clothes"], ident["clothes"])
    for ear in ("ear_l", "ear_r"):
        _fill(img, shapes[ear], skin * 0.9)
        c = shapes[ear].mean(0)
        _ellipse(img, c, (0.035 * S, 0.1 * S), math.degrees(pose["roll"]), skin * 0.7)
    _fill(img, shapes["face"], skin)
    _line(img, _catmull_rom(lm[JAW], 3), skin * 0.8, max(1.0, 0.01 * S))               # jaw contour
    if "hair_cap" in shapes:
        _fill(img, shapes["hair_cap"], hair)
    _draw_brow(img, lm[RIGHT_BROW], ident, S, outer_first=True)
    _draw_brow(img, lm[LEFT_BROW], ident, S, outer_first=False)
    _draw_eye(img, lm, RIGHT_EYE, ident, pose, proj, -1, S)
    _draw_eye(img, lm, LEFT_EYE, ident, pose, proj, 1, S)
    _draw_nose(img, lm, ident, proj, S)
    _draw_mouth(img, lm, ident, S)

    # lighting: directional gradient x gain x contour shading
    g = np.arange(size, dtype=np.float32) / size - 0.5
    a, k = pose["light_angle"], pose["light_strength"]
    light = pose["gain"] * (1 + k * (math.cos(a) * g[None, :] + math.sin(a) * g[:, None]))
    light = light * (1 - 0.35 * _face_shading(shapes["face"], size))
    out = img.astype(np.float32) * light[..., None]
    return out, lm.astype(np.float32)


def _finish(img: np.ndarray, pose: dict, noise_rng: np.random.Generator) -> np.ndarray:
    """Camera: slight blur + sensor noise, quantise to uint8."""
    size = img.shape[0]
    sigma = pose["blur"] * size / 256
    if sigma >= 0.2:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    else:
        img = img.copy()
    noise = noise_rng.standard_normal(img.shape, dtype=np.float32)
    noise *= np.float32(pose["noise"])
    img += noise
    img += np.float32(0.5)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def render_face(identity: dict, rng: np.random.Generator, size: int = 256, *,
                pose: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame of `identity`.  Returns (RGB uint8 [size,size,3], landmarks float32 [68,2]).

    Consumes from `rng` exactly: the pose (unless given), then one integer seeding the sensor noise,
    in the same order as :func:`make_fake`, so the same rng state gives the same pose and noise.
    """
    if pose is None:
        pose = sample_pose(rng)
    noise_rng = np.random.default_rng(int(rng.integers(2 ** 63)))
    clean, lm = _render_clean(identity, pose, size)
    return _finish(clean, pose, noise_rng), lm


# ---------------------------------------------------------------------------
# Face-swap fakes
# ---------------------------------------------------------------------------
# Ranges of the swap settings. "subtle": a careful swap (mostly colour-corrected, mild resampling);
# "strong": a careless one (half the tone difference left, a 25-45% resolution generator, sharper seam),
# whose artefacts survive at 64 px: what the demo and the end-to-end test train a micro ViT on in minutes.
SWAP_ARTEFACTS = {
    "subtle": dict(hull_scale=(1.0, 1.12), feather=(0.012, 0.03), colour_fix=(0.8, 0.95), tone=(3, 9),
                   down=(0.4, 0.75), jpeg=(45, 85)),
    "strong": dict(hull_scale=(1.0, 1.08), feather=(0.006, 0.015), colour_fix=(0.5, 0.75), tone=(10, 20),
                   down=(0.25, 0.45), jpeg=(30, 60)),
}


def sample_swap(rng: np.random.Generator, artefacts: str = "subtle") -> dict:
    """Settings of the face-swap pipeline (fixed per fake video in generate_dataset); `artefacts` picks the
    ranges in SWAP_ARTEFACTS."""
    if artefacts not in SWAP_ARTEFACTS:
        raise ValueError(f"artefacts must be one of {', '.join(SWAP_ARTEFACTS)}, got {artefacts!r}")
    r = SWAP_ARTEFACTS[artefacts]
    u = rng.uniform
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-9
    return {
        "hull_scale": u(*r["hull_scale"]),      # mask = inner-face hull scaled about its centre
        "feather": u(*r["feather"]),            # mask blur sigma, fraction of image size
        "colour_fix": u(*r["colour_fix"]),      # fraction of the mean colour difference corrected
        "tone": tuple(float(v) for v in direction * u(*r["tone"])),   # residual tone shift (grey levels)
        "down": u(*r["down"]),                  # down-up scale factor of the pasted face
        "jpeg": int(u(*r["jpeg"])) if u() < 0.5 else 0,
    }


def _tps_map(dst: np.ndarray, src: np.ndarray, size: int, step: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Thin-plate spline backward map: for every output pixel, where to sample the source image.

    `dst` are the landmarks in the output frame, `src` the same landmarks in the source image.
    Evaluated on a coarse grid aligned with cv2.resize's sampling, then bilinearly upsampled.
    """
    n = len(dst)
    P = dst / size
    d2 = ((P[:, None] - P[None]) ** 2).sum(-1)
    K = d2 * np.log(d2 + 1e-12) + 1e-4 * np.eye(n)        # small ridge: coincident points (closed mouth)
    A = np.concatenate([np.ones((n, 1)), P], 1)
    L = np.zeros((n + 3, n + 3))
    L[:n, :n], L[:n, n:], L[n:, :n] = K, A, A.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = src / size
    coef = np.linalg.solve(L, rhs)
    g = max(8, min(size // step, 48))
    f = size / g
    c = ((np.arange(g) + 0.5) * f - 0.5) / size
    G = np.stack(np.meshgrid(c, c), -1).reshape(-1, 2)
    gd2 = np.maximum((G * G).sum(1)[:, None] + (P * P).sum(1)[None] - 2 * G @ P.T, 0)
    val = (gd2 * np.log(gd2 + 1e-12)) @ coef[:n] + coef[n] + G @ coef[n + 1:]
    val = (val * size).astype(np.float32).reshape(g, g, 2)
    m = cv2.resize(val, (size, size), interpolation=cv2.INTER_LINEAR)
    return m[..., 0].copy(), m[..., 1].copy()


def _inner_face_mask(lm: np.ndarray, size: int, hull_scale: float, feather: float) -> tuple[np.ndarray, np.ndarray]:
    """(hard uint8 hull mask, soft float32 blending mask) for landmarks 17-67."""
    hull = cv2.convexHull(lm[INNER_FACE].astype(np.float32))[:, 0]
    c = hull.mean(0)
    hull = c + (hull - c) * hull_scale
    hard = np.zeros((size, size), np.uint8)
    cv2.fillPoly(hard, [_fix(hull)], 255, _AA, _SHIFT)
    soft = cv2.GaussianBlur(hard.astype(np.float32) / 255.0, (0, 0), max(0.5, feather * size))
    return hard, soft


def make_fake(target: dict, source: dict, rng: np.random.Generator, size: int = 256, *,
              pose: dict | None = None, swap: dict | None = None,
              artefacts: str = "subtle") -> tuple[np.ndarray, np.ndarray]:
    """Face-swap-like fake: source's inner face pasted onto target.  Returns (RGB uint8, target landmarks).

    rng use: pose, noise seed (as render_face), then swap settings if not given.  With the same rng
    state as a render_face call on `target`, everything outside the blended region is identical.
    """
    if pose is None:
        pose = sample_pose(rng)
    noise_rng = np.random.default_rng(int(rng.integers(2 ** 63)))
    if swap is None:
        swap = sample_swap(rng, artefacts)
    tgt, lm_t = _render_clean(target, pose, size)
    src, lm_s = _render_clean(source, pose, size)
    # 1. warp the source so its landmarks land on the target's (TPS through landmarks 17-67)
    mx, my = _tps_map(lm_t[INNER_FACE].astype(np.float64), lm_s[INNER_FACE].astype(np.float64), size)
    warped = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    hard, soft = _inner_face_mask(lm_t, size, swap["hull_scale"], swap["feather"])
    # 2. partial colour correction, leaving a tone mismatch
    mt = np.array(cv2.mean(tgt, hard)[:3], np.float32)
    ms = np.array(cv2.mean(warped, hard)[:3], np.float32)
    warped = warped + (swap["colour_fix"] * (mt - ms) + np.asarray(swap["tone"], np.float32))
    # 3. resampling artefacts: down-up scaling, optional JPEG
    small = max(8, int(round(size * swap["down"])))
    warped = cv2.resize(cv2.resize(warped, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                        interpolation=cv2.INTER_LINEAR)
    if swap["jpeg"]:
        u8 = np.clip(warped + 0.5, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, swap["jpeg"]])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        warped = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)
    # 4. blend with the feathered mask
    a = soft[..., None]
    out = tgt * (1 - a) + warped * a
    return _finish(out, pose, noise_rng), lm_t


# ---------------------------------------------------------------------------
# Other forgery families (cross-manipulation tests): each leaves its own artefact
# ---------------------------------------------------------------------------
# Every family renders (target, source) with one pose and returns (RGB uint8, target landmarks). rng use:
# pose, noise seed (as render_face), then the family's own draws. "subtle" / "strong" as SWAP_ARTEFACTS.
_PARTS = {"eyes": RIGHT_EYE + LEFT_EYE + RIGHT_BROW + LEFT_BROW, "nose": NOSE_BRIDGE + NOSTRILS,
          "mouth": OUTER_LIPS + INNER_LIPS}


def _frame(target, rng, size, pose):
    pose = sample_pose(rng) if pose is None else pose
    return pose, np.random.default_rng(int(rng.integers(2 ** 63)))


def _blend(base, new, soft):
    a = soft[..., None]
    return base * (1 - a) + new * a


def make_reenact(target: dict, source: dict, rng: np.random.Generator, size: int = 256, *,
                 pose: dict | None = None, artefacts: str = "subtle"):
    """Expression / reenactment-like: the target's own inner face under another expression, warped (TPS) onto
    this frame's landmarks, resampled and blended back. Same identity, so no colour or identity mismatch:
    the artefacts are the warp's stretched texture, the resampling and the blending boundary."""
    pose, noise_rng = _frame(target, rng, size, pose)
    other = dict(pose, **{k: v for k, v in sample_pose(rng).items()
                          if k in ("mouth_open", "mouth_stretch", "smile", "eye_open", "brow_raise", "gaze")})
    strong = artefacts == "strong"
    tgt, lm_t = _render_clean(target, pose, size)
    src, lm_s = _render_clean(target, other, size)
    mx, my = _tps_map(lm_t[INNER_FACE].astype(np.float64), lm_s[INNER_FACE].astype(np.float64), size)
    warped = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    small = max(8, int(round(size * rng.uniform(*((0.3, 0.5) if strong else (0.5, 0.8))))))
    warped = cv2.resize(cv2.resize(warped, (small, small), interpolation=cv2.INTER_AREA), (size, size))
    _, soft = _inner_face_mask(lm_t, size, rng.uniform(1.0, 1.1), rng.uniform(0.006, 0.02))
    return _finish(_blend(tgt, warped, soft), pose, noise_rng), lm_t


def make_local_edit(target: dict, source: dict, rng: np.random.Generator, size: int = 256, *,
                    pose: dict | None = None, artefacts: str = "subtle"):
    """Local edit: one facial part (eyes and brows, nose or mouth) of the source pasted on the target, with a
    small feathered mask around that part only and a partial colour correction."""
    pose, noise_rng = _frame(target, rng, size, pose)
    part = list(_PARTS)[int(rng.integers(len(_PARTS)))]
    tgt, lm_t = _render_clean(target, pose, size)
    src, lm_s = _render_clean(source, pose, size)
    mx, my = _tps_map(lm_t[INNER_FACE].astype(np.float64), lm_s[INNER_FACE].astype(np.float64), size)
    warped = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    hull = cv2.convexHull(lm_t[_PARTS[part]].astype(np.float32))[:, 0]
    c = hull.mean(0)
    hard = np.zeros((size, size), np.uint8)
    cv2.fillPoly(hard, [_fix(c + (hull - c) * rng.uniform(1.3, 1.6))], 255, _AA, _SHIFT)
    soft = cv2.GaussianBlur(hard.astype(np.float32) / 255, (0, 0), max(0.5, rng.uniform(0.008, 0.02) * size))
    fix = rng.uniform(*((0.4, 0.7) if artefacts == "strong" else (0.7, 0.95)))
    mt, ms = (np.array(cv2.mean(x, hard)[:3], np.float32) for x in (tgt, warped))
    warped = warped + fix * (mt - ms)
    small = max(8, int(round(size * rng.uniform(0.35, 0.7))))
    warped = cv2.resize(cv2.resize(warped, (small, small), interpolation=cv2.INTER_AREA), (size, size))
    return _finish(_blend(tgt, warped, soft), pose, noise_rng), lm_t


def make_upsample(target: dict, source: dict, rng: np.random.Generator, size: int = 256, *,
                  pose: dict | None = None, artefacts: str = "subtle"):
    """Upsampling artefacts: the target's face re-rendered through a low-resolution bottleneck and brought
    back by nearest-neighbour (transposed-convolution-like) upsampling that leaves a checkerboard of the
    upsampling period, as GAN generators do; blended over the whole face (jaw and brows)."""
    pose, noise_rng = _frame(target, rng, size, pose)
    tgt, lm_t = _render_clean(target, pose, size)
    factor = int(rng.choice([2, 4]))
    small = cv2.resize(tgt, (max(4, size // factor), max(4, size // factor)), interpolation=cv2.INTER_AREA)
    up = cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST)
    yy, xx = np.mgrid[0:size, 0:size]
    checker = np.where((yy % 2) ^ (xx % 2), 1.0, -1.0).astype(np.float32)     # period-2 pattern
    amp = rng.uniform(*((0.04, 0.07) if artefacts == "strong" else (0.02, 0.04)))
    up = up * (1 + amp * checker[..., None])
    hull = cv2.convexHull(lm_t.astype(np.float32))[:, 0]
    hard = np.zeros((size, size), np.uint8)
    cv2.fillPoly(hard, [_fix(hull)], 255, _AA, _SHIFT)
    soft = cv2.GaussianBlur(hard.astype(np.float32) / 255, (0, 0), max(0.5, 0.02 * size))
    return _finish(_blend(tgt, up, soft), pose, noise_rng), lm_t


def make_resynth(target: dict, source: dict, rng: np.random.Generator, size: int = 256, *,
                 pose: dict | None = None, artefacts: str = "subtle"):
    """Whole-face re-synthesis: the target's face smoothed (a generator's missing fine detail) and given
    band-pass noise -- another spectrum than the camera's white sensor noise -- over the whole face."""
    pose, noise_rng = _frame(target, rng, size, pose)
    tgt, lm_t = _render_clean(target, pose, size)
    smooth = cv2.GaussianBlur(tgt, (0, 0), max(0.5, rng.uniform(0.8, 1.4) * size / 128))
    white = rng.standard_normal((size, size)).astype(np.float32)
    s1 = max(0.5, size / 128)
    band = cv2.GaussianBlur(white, (0, 0), s1) - cv2.GaussianBlur(white, (0, 0), 3 * s1)
    band *= rng.uniform(*((10, 16) if artefacts == "strong" else (5, 9))) / (band.std() + 1e-6)
    hull = cv2.convexHull(lm_t.astype(np.float32))[:, 0]
    hard = np.zeros((size, size), np.uint8)
    cv2.fillPoly(hard, [_fix(hull)], 255, _AA, _SHIFT)
    soft = cv2.GaussianBlur(hard.astype(np.float32) / 255, (0, 0), max(0.5, 0.02 * size))
    return _finish(_blend(tgt, smooth + band[..., None], soft), pose, noise_rng), lm_t


# family name -> fake(target, source, rng, size, *, pose=None, artefacts) -> (RGB uint8, target landmarks);
# the manifest's method column holds "synthetic_<family>"
FORGERY_FAMILIES = {
    "swap": make_fake,
    "reenact": make_reenact,
    "local_edit": make_local_edit,
    "upsample": make_upsample,
    "resynth": make_resynth,
}


def family_method(family: str) -> str:
    """The manifest's method value of a forgery family."""
    return f"synthetic_{family}"


# ---------------------------------------------------------------------------
# Dataset writer
# ---------------------------------------------------------------------------
def _write_csv_atomic(path: Path, rows: list[dict]) -> None:
    def fill(f):
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    atomic_write(path, fill)


def _save_frame(img: np.ndarray, lm: np.ndarray, png: Path) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(png), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"cv2.imwrite failed for {png}")
    np.save(png.with_suffix(".npy"), np.asarray(lm, np.float32))


def _fake_pairs(ids: list[int], n_fake: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n_fake distinct (target, source) pairs, targets used in turn, source != target."""
    n = len(ids)
    if n_fake == 0:
        return []
    if n < 2 or n_fake > n * (n - 1):
        raise ValueError(f"cannot make {n_fake} distinct fake pairs from {n} identities")
    perm = [ids[i] for i in rng.permutation(n)]
    return [(perm[k % n], perm[(k % n + 1 + k // n) % n]) for k in range(n_fake)]


def generate_dataset(out_dir, num_identities: int = 40, frames_per_identity: int = 4, size: int = 256,
                     seed: int = 0, fake_ratio: float = 0.5, test_fraction: float = 0.25,
                     dataset: str = "synthetic", progress: bool = True,
                     artefacts: str = "subtle", families=("swap",), test_families=()) -> dict[str, Path]:
    """Write a synthetic real/fake face data set and its manifests.

    Layout: ``out_dir/faces/{real,fake}/<video>/<frame:03d>.{png,npy}``; manifests ``all.csv``,
    ``train.csv``, ``test.csv`` and ``pretrain.csv`` (train reals, empty label) in ``out_dir`` with
    paths relative to ``out_dir``.  One real video per identity (``real_0007``); fake videos are
    (target, source) pairs from the same split (``fake_0007_0012``), ``round(num_identities *
    fake_ratio / (1 - fake_ratio))`` of them.  Test identities never appear in train, neither as
    real, target nor source.  `artefacts` ("subtle" or "strong", see SWAP_ARTEFACTS) sets how visible
    the swaps are.  Deterministic given the arguments (byte-identical PNGs).

    `families` (names in FORGERY_FAMILIES) make the fakes of both splits, in turn over the fake videos
    (``fake_0007_0012`` for swaps, ``<family>_0007_0012`` for the others); `test_families` add, for every
    test pair, one more fake video of each family not already in `families`, written only to
    ``families_test.csv`` (all test reals and every test fake): the cross-manipulation test set.
    """
    unknown = [f for f in (*families, *test_families) if f not in FORGERY_FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown forgery family {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(FORGERY_FAMILIES)}")
    if artefacts not in SWAP_ARTEFACTS:
        raise ValueError(f"artefacts must be one of {', '.join(SWAP_ARTEFACTS)}, got {artefacts!r}")
    if not 0 <= fake_ratio < 1:
        raise ValueError("fake_ratio must be in [0, 1)")
    if not 0 <= test_fraction < 1:
        raise ValueError("test_fraction must be in [0, 1)")
    if frames_per_identity < 1:
        raise ValueError("frames_per_identity must be >= 1")
    n = int(num_identities)
    min_split = 2 if fake_ratio > 0 else 1
    n_test = 0
    if test_fraction > 0:
        n_test = min(max(int(round(test_fraction * n)), min_split), n - min_split)
        if n < 2 * min_split:
            raise ValueError(f"need at least {2 * min_split} identities for a train/test split"
                             f"{' with fakes' if fake_ratio > 0 else ''}, got {n}")
    elif n < min_split:
        raise ValueError(f"need at least {min_split} identities, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(n)
    test_ids = sorted(int(i) for i in order[:n_test])
    train_ids = sorted(int(i) for i in order[n_test:])
    n_fake = int(round(n * fake_ratio / (1 - fake_ratio)))
    n_fake_test = int(round(n_fake * n_test / n))
    pairs = {"train": _fake_pairs(train_ids, n_fake - n_fake_test, rng),
             "test": _fake_pairs(test_ids, n_fake_test, rng)}
    identities = [sample_identity(np.random.default_rng([seed, 1, i])) for i in range(n)]

    def fake_id(family, t, s):
        return f"{'fake' if family == 'swap' else family}_{t:04d}_{s:04d}"

    videos = []   # (split, kind, video id, target, source, family, cross-manipulation test only)
    for split, ids in (("train", train_ids), ("test", test_ids)):
        videos += [(split, "real", f"real_{i:04d}", i, None, None, False) for i in ids]
        for k, (t, s) in enumerate(pairs[split]):
            fam = families[k % len(families)]
            videos.append((split, "fake", fake_id(fam, t, s), t, s, fam, False))
    extra = [f for f in dict.fromkeys(test_families) if f not in families]
    videos += [("test", "fake", fake_id(f, t, s), t, s, f, True) for t, s in pairs["test"] for f in extra]

    try:
        from tqdm import tqdm
        bar = tqdm(total=len(videos) * frames_per_identity, desc="synthetic faces", unit="img",
                   disable=not progress)
    except ImportError:     # tqdm is in requirements.txt; keep working without it
        bar = None
    rows, cross = [], []
    for split, kind, vid, t, s, fam, cross_only in videos:
        if kind == "real":
            vrng = np.random.default_rng([seed, 2, t])
        elif fam == "swap":
            vrng = np.random.default_rng([seed, 3, t, s])
            swap = sample_swap(vrng, artefacts)
        else:
            vrng = np.random.default_rng([seed, 4, list(FORGERY_FAMILIES).index(fam), t, s])
        for f in range(frames_per_identity):
            if kind == "real":
                img, lm = render_face(identities[t], vrng, size)
            elif fam == "swap":
                img, lm = make_fake(identities[t], identities[s], vrng, size, swap=swap)
            else:
                img, lm = FORGERY_FAMILIES[fam](identities[t], identities[s], vrng, size, artefacts=artefacts)
            rel = Path("faces") / kind / vid / f"{f:03d}.png"
            _save_frame(img, lm, out_dir / rel)
            (cross if cross_only else rows).append(
                {"path": rel.as_posix(), "landmarks": rel.with_suffix(".npy").as_posix(),
                 "label": 1 if kind == "fake" else 0, "video": vid, "dataset": dataset,
                 "identity": f"id{t:04d}", "split": split,
                 "method": family_method(fam) if kind == "fake" else "real"})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    manifests = {name: out_dir / f"{name}.csv" for name in ("all", "train", "test", "pretrain")}
    _write_csv_atomic(manifests["all"], rows)
    _write_csv_atomic(manifests["train"], [r for r in rows if r["split"] == "train"])
    _write_csv_atomic(manifests["test"], [r for r in rows if r["split"] == "test"])
    _write_csv_atomic(manifests["pretrain"], [dict(r, label="") for r in rows
                                             if r["split"] == "train" and r["method"] == "real"])
    if test_families:
        manifests["families_test"] = out_dir / "families_test.csv"
        _write_csv_atomic(manifests["families_test"], [r for r in rows if r["split"] == "test"] + cross)
    return manifests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate a synthetic real/fake face data set with iBUG-68 landmarks.")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--num", type=int, required=True, help="approximate total number of face images (real + fake)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=4, help="frames per video")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fake_ratio", type=float, default=0.5, help="fraction of images that are fake, in [0, 1)")
    ap.add_argument("--test_fraction", type=float, default=0.25, help="fraction of identities held out for test")
    ap.add_argument("--dataset", default="synthetic", help="value of the manifests' dataset column")
    ap.add_argument("--artefacts", default="subtle", choices=list(SWAP_ARTEFACTS),
                    help="how visible the face swaps are (strong: for small models at 64 px)")
    ap.add_argument("--families", nargs="+", default=["swap"], choices=list(FORGERY_FAMILIES), metavar="FAMILY",
                    help=f"forgery families of the fakes of both splits, in turn over the fake videos "
                         f"({', '.join(FORGERY_FAMILIES)}; default: swap)")
    ap.add_argument("--test_families", nargs="+", default=[], choices=list(FORGERY_FAMILIES), metavar="FAMILY",
                    help="for every test pair, one more fake of each of these families not in --families, "
                         "written to families_test.csv with all the test faces (cross-manipulation test set)")
    ap.add_argument("--no_progress", action="store_true")
    args = ap.parse_args(argv)
    if not 0 <= args.fake_ratio < 1:
        ap.error("--fake_ratio must be in [0, 1)")
    videos = max(1, round(args.num / max(1, args.frames)))
    n_id = round(videos * (1 - args.fake_ratio))
    min_id = (2 if args.fake_ratio > 0 else 1) * (2 if args.test_fraction > 0 else 1)
    if n_id < min_id:
        print(f"note: --num {args.num} too small for the splits; using {min_id} identities", file=sys.stderr)
        n_id = min_id
    paths = generate_dataset(args.out, num_identities=n_id, frames_per_identity=args.frames, size=args.size,
                             seed=args.seed, fake_ratio=args.fake_ratio, test_fraction=args.test_fraction,
                             dataset=args.dataset, progress=not args.no_progress, artefacts=args.artefacts,
                             families=tuple(dict.fromkeys(args.families)), test_families=tuple(args.test_families))
    with open(paths["all"], newline="", encoding="utf-8") as f:
        total = sum(1 for _ in f) - 1
    print(f"wrote {total} images ({n_id} identities) under {Path(args.out).resolve()}")
    for name, p in paths.items():
        print(f"  {name:8s} {p.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
