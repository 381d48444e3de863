"""Face tracks: the faces of a video's sampled frames joined into one track per person.

Rule: a face joins the track whose last box (within ``max_gap`` sampled frames) it overlaps
best, when that overlap is an IoU of at least ``min_iou`` or its centre lies within
``max_shift`` box sides of that box's centre (sampled frames can be far apart in time);
each track takes at most one face per frame, each face joins at most one track, pairs are
made best first. A face that joins no track starts a new one. Tracks are numbered in the
order they start (ties: largest face first).

Pure: boxes in, indices out; nothing is read or scored here.
"""
import numpy as np


def box_iou(a, b):
    """IoU of two boxes (x0, y0, x1, y1[, ...])."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _shift(a, b):
    """Distance between the boxes' centres, in sides of the larger box."""
    side = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1], 1e-6)
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2.0, (a[1] + a[3] - b[1] - b[3]) / 2.0)) / side


def track_faces(boxes_per_frame, min_iou=0.2, max_shift=0.5, max_gap=3):
    """boxes_per_frame: per sampled frame, the list of its face boxes.
    -> tracks: list of lists of (frame position, face index), each in frame order."""
    tracks, last = [], []                   # last[k] = (frame position, box) of track k's newest face
    for t, boxes in enumerate(boxes_per_frame):
        pairs = []
        for k, (tk, bk) in enumerate(last):
            if t - tk > max_gap:
                continue
            for i, b in enumerate(boxes):
                iou, shift = box_iou(bk, b), _shift(bk, b)
                if iou >= min_iou or shift <= max_shift:
                    pairs.append((-iou, shift, k, i))
        used_k, used_i = set(), set()
        for _, _, k, i in sorted(pairs):
            if k in used_k or i in used_i:
                continue
            used_k.add(k)
            used_i.add(i)
            tracks[k].append((t, i))
            last[k] = (t, boxes[i])
        new = sorted((i for i in range(len(boxes)) if i not in used_i),
                     key=lambda i: -(boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]))
        for i in new:
            tracks.append([(t, i)])
            last.append((t, boxes[i]))
    return tracks
