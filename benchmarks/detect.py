"""Faces in the wild: recall, false faces and time per frame of each face detector option.

The scenes are built here from ``skimage.data`` (no download):

* the grid: ``skimage.data.astronaut()`` placed in a 640 x 480 frame, rolled in-plane by each
  of ``--angles`` degrees and scaled so that her face box (dlib's upright box, 87 px on the
  512 px photo) is each of ``--sizes`` pixels; the face sits off-centre so that it is not
  always where a detector looks first. The truth is her face centre and size in the frame.
* the negatives, photos without a face, each fitted into 640 x 480: ``coffee``, ``chelsea`` (a
  cat), ``rocket``, ``hubble_deep_field`` and the astronaut's suit below her chin with the
  mission patch (``suit``), and that photo rolled by -20 deg (``suit_rolled``), where dlib's HOG
  detector takes the patch for a face.

A grid scene counts as found when a reported face's centre lies within half the true face
size of the true centre and its size is within a factor 2 of it; every other reported face
(on the grid or on a negative) is a false face. Time is wall-clock detection per frame
(detect + verify, without landmarks), the landmarker built beforehand, one warm-up frame; the
CPU time of the process (all its threads) is printed beside it, a figure a busy machine disturbs less.

    python -m benchmarks.detect                       # every option, the whole grid
    python -m benchmarks.detect --detector hybrid --threads 1
"""
import argparse
import json
import math
import os
import platform
import time

import cv2
import numpy as np

from util.misc import num_threads

FRAME = (640, 480)                                 # width, height of every scene
ASTRONAUT_FACE = (179.0, 83.0, 266.0, 170.0)       # dlib's box on the 512 x 512 astronaut
SUIT = (280, 512, 20, 380)                         # rows, cols of the astronaut's suit: patch, no face
NEGATIVES = ('coffee', 'chelsea', 'rocket', 'hubble_deep_field', 'suit', 'suit_rolled')
SUIT_ROLL = -20                                    # suit_rolled: where HOG takes the mission patch for a face
ANGLES = (0, 20, 35, 50)
SIZES = (64, 96, 160, 300)


def get_args_parser():
    p = argparse.ArgumentParser('Benchmark face detection on rolled / scaled faces and photos without faces')
    p.add_argument('--detector', default='hog,hybrid,cnn', help='comma-separated detector options of preprocess.faces')
    p.add_argument('--angles', default=','.join(map(str, ANGLES)), help='in-plane roll of the face, degrees')
    p.add_argument('--sizes', default=','.join(map(str, SIZES)), help='face box side in the frame, pixels')
    p.add_argument('--threads', default=0, type=int, help='OpenCV threads (0 = library default)')
    p.add_argument('--json', default='', help='also write the results (and per-scene detail) here')
    return p


def _astronaut():
    from skimage import data
    return data.astronaut()


def grid_scene(angle, size, frame=FRAME):
    """The astronaut rolled by ``angle`` degrees (counter-clockwise on screen) with a face box of
    ``size`` px -> (RGB uint8 [H, W, 3], affine [2, 3] from astronaut to scene pixels,
    dict(center=(x, y), size=size))."""
    w, h = frame
    x0, y0, x1, y1 = ASTRONAUT_FACE
    c = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
    # off-centre by a quarter of the free room, in a direction that changes with the cell
    k = int(angle) // 5 + int(size) // 16
    free_x, free_y = max(0.0, (w - 1.6 * size) / 2), max(0.0, (h - 1.6 * size) / 2)
    target = (w / 2.0 + 0.5 * free_x * math.cos(k), h / 2.0 + 0.5 * free_y * math.sin(k))
    m = cv2.getRotationMatrix2D(c, angle, size / (x1 - x0))      # about the face centre
    m[:, 2] += np.array(target) - np.array(c)
    img = cv2.warpAffine(_astronaut(), m, (w, h), flags=cv2.INTER_AREA if size < x1 - x0 else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(60, 60, 60))
    return img, m, dict(center=target, size=float(size))


def fit_frame(img, frame=FRAME):
    """Scale (keeping the aspect) and pad with gray into the frame."""
    w, h = frame
    s = min(w / img.shape[1], h / img.shape[0])
    small = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)),
                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out = np.full((h, w, 3), 60, np.uint8)
    top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[top:top + small.shape[0], left:left + small.shape[1]] = small
    return out


def negative_scene(name, frame=FRAME):
    """A photo from skimage.data without a human face, fitted into the frame (RGB uint8)."""
    from skimage import data
    if name == 'suit_rolled':
        m = cv2.getRotationMatrix2D(((frame[0] - 1) / 2.0, (frame[1] - 1) / 2.0), SUIT_ROLL, 1.0)
        return cv2.warpAffine(negative_scene('suit', frame), m, frame, borderValue=(60, 60, 60))
    if name == 'suit':
        (r0, r1), (c0, c1) = SUIT[:2], SUIT[2:]
        img = _astronaut()[r0:r1, c0:c1]
    else:
        img = getattr(data, name)()
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return fit_frame(img[:, :, :3], frame)


def build_scenes(angles=ANGLES, sizes=SIZES, negatives=NEGATIVES):
    """-> list of dict(name, image, truth) with truth None for the negatives."""
    scenes = []
    for a in angles:
        for s in sizes:
            img, _, truth = grid_scene(a, s)
            scenes.append(dict(name=f'roll{a}_face{s}', image=img, truth=truth))
    scenes += [dict(name=n, image=negative_scene(n), truth=None) for n in negatives]
    return scenes


def matches(box, truth):
    """Is the reported box (x0, y0, x1, y1) the true face? (centre within half its size, size within x2)."""
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    side = max(box[2] - box[0], box[3] - box[1])
    tx, ty = truth['center']
    return math.hypot(cx - tx, cy - ty) <= 0.5 * truth['size'] and 0.5 <= side / truth['size'] <= 2.0


def evaluate(landmarker, scenes, min_face=40):
    """Detect on every scene (one warm-up first) -> dict(found, grid, false_faces, rejected, ms_per_frame,
    scenes=[per scene: name, ms, faces, false, rejected])."""
    landmarker.detect_batch([scenes[0]['image']])
    rows = []
    for sc in scenes:
        t, cpu = time.perf_counter(), time.process_time()
        boxes, scores, *rest = landmarker.detect_batch([sc['image']])[0]
        ms, cpu_ms = 1000 * (time.perf_counter() - t), 1000 * (time.process_time() - cpu)
        boxes = [b for b in boxes if max(b[2] - b[0], b[3] - b[1]) >= min_face]
        hit = [sc['truth'] is not None and matches(b, sc['truth']) for b in boxes]
        rows.append(dict(name=sc['name'], ms=round(ms, 1), cpu_ms=round(cpu_ms, 1), found=any(hit),
                         false=hit.count(False), rejected=len(rest[0]) if rest else 0,
                         faces=[[round(float(v), 1) for v in b] + [round(s, 2)] for b, s in zip(boxes, scores)]))
    grid = [r for r, sc in zip(rows, scenes) if sc['truth'] is not None]
    return dict(found=sum(r['found'] for r in grid), grid=len(grid), false_faces=sum(r['false'] for r in rows),
                rejected=sum(r['rejected'] for r in rows),
                ms_per_frame=round(float(np.mean([r['ms'] for r in rows])), 1),
                ms_max=round(max(r['ms'] for r in rows), 1),
                cpu_ms_per_frame=round(float(np.mean([r['cpu_ms'] for r in rows])), 1), scenes=rows)


def _machine():
    try:
        with open('/proc/cpuinfo') as f:
            model = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    except OSError:
        model = []
    return f'{model[0] if model else platform.machine()}, {os.cpu_count()} cores'


def main(args):
    with num_threads(args.threads):
        return run(args)


def run(args):
    from preprocess import faces as F
    scenes = build_scenes([float(a) for a in args.angles.split(',')], [int(s) for s in args.sizes.split(',')])
    results = []
    print(f'{len(scenes)} scenes of {FRAME[0]}x{FRAME[1]} on {_machine()}')
    print(f'{"detector":10s} {"found":>7s} {"false faces":>12s} {"rejected":>9s} {"ms/frame":>9s} {"max ms":>8s} '
          f'{"cpu ms/frame":>13s}')
    for name in args.detector.split(','):
        res = evaluate(F.build_landmarker('dlib', detector=name), scenes)
        res.update(detector=name, machine=_machine())
        results.append(res)
        print(f'{name:10s} {res["found"]:>3d}/{res["grid"]:<3d} {res["false_faces"]:>12d} {res["rejected"]:>9d} '
              f'{res["ms_per_frame"]:>9.1f} {res["ms_max"]:>8.1f} {res["cpu_ms_per_frame"]:>13.1f}', flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == '__main__':
    main(get_args_parser().parse_args())
