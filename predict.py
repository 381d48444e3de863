"""Real or fake? Verdicts for images, videos and folders with a fine-tuned MIFAE detector.

    python predict.py --checkpoint ft/checkpoint-best.pth photo.jpg clip.mp4 folder/ [--json out.json]
        [--heatmap heatmaps/] [--frames 16] [--landmarker dlib|face_alignment] [--detector hybrid] [--device cpu]

Faces are found and cropped as in data preparation (preprocess.faces: dlib by default, offline, its candidates
verified by dlib's CNN detector; face_alignment on request), the crop is resized and normalised as the
checkpoint says (it records architecture, input size and normalisation, so no model flags are needed).
Only faces the detector verified are scored: the candidates it dropped are counted (`candidates_dropped`)
and never decide a verdict. An image's score is its most fake-looking face (every face is reported).
In a video the faces of the sampled frames are joined into tracks by box overlap (preprocess.face_tracks), one
per person; a track's score is the mean fake probability over its frames, and the video's score is its
most fake-looking track among those seen in at least a quarter of the frames that show a face (or the
longest, when none is; every track is listed). `--heatmap DIR` writes one PNG per face, its panels titled
(HEATMAP_PANELS): input | reconstruction by the frozen decoder from the detector's tokens | |difference| (JET
colours, 0 to --heatmap_max, with its colour bar) | Grad-CAM of the fake logit (pytorch-grad-cam, last block,
over the input, scaled to its own maximum).
A file without a face, an unreadable image or video: said so, and the next file is processed.
"""
import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

import models_vit
import util.misc as misc
from preprocess import faces as face_utils
from preprocess.face_tracks import track_faces
from util import explain
from util.datasets import FaceTransform
from util.fileio import WriteError, output_dir_problem, write_text

error = partial(misc.usage_error, 'predict.py')      # raise error('--flag ...: what to do')
CROP_SIZE = 256          # faces are cropped at prepare_faces.py's default size, then resized like training data
MIN_TRACK_SHARE = 0.25   # a video's track decides its verdict when seen in this share of the frames with a face


def get_args_parser():
    p = argparse.ArgumentParser('MIFAE deepfake detection: verdicts for images, videos and folders', add_help=False)
    p.add_argument('inputs', nargs='+', metavar='INPUT', help='image, video or folder (searched recursively)')
    p.add_argument('--checkpoint', required=True, help='fine-tuning checkpoint written by main_finetune.py')
    p.add_argument('--frames', default=16, type=int, help='frames sampled evenly over each video (0 = all)')
    p.add_argument('--landmarker', default='dlib', choices=['dlib', 'face_alignment'],
                   help='face detector + 68 landmarks (dlib works offline; face_alignment downloads weights once)')
    p.add_argument('--detector', default=face_utils.DEFAULT_DETECTOR, choices=list(face_utils.DETECTORS),
                   help='dlib: face detector (hybrid: rolled HOG proposals verified by the CNN; see '
                        'docs/face_detection.md); face_alignment uses its own S3FD')
    p.add_argument('--weights_dir', default=None, help='folder with the face_alignment weight files')
    p.add_argument('--margin', default=1.3, type=float,
                   help='face crop side / landmark box side (as in prepare_faces.py)')
    p.add_argument('--largest_face_only', action='store_true', help='images: score only the largest face')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch_size', default=32, type=int, help='faces per forward pass')
    p.add_argument('--threshold', default=0.5, type=float, help='fake probability above which the verdict is FAKE')
    p.add_argument('--json', default='', help='write all results to this JSON file')
    p.add_argument('--heatmap', default='', metavar='DIR',
                   help='write input | reconstruction | |difference| | Grad-CAM of the fake logit PNGs here')
    p.add_argument('--heatmap_max', default=0.25, type=float, help='|difference| (pixel units, 0-1) shown as full red')
    p.add_argument('--quiet', action='store_true', help='only the per-file verdict lines')
    return p


# ---------------------------------------------------------------------- inputs
def expand_inputs(inputs):
    """Files in command-line order; folders expand to their images and videos (sorted, recursive).
    -> list of (path, kind) with kind image | video | missing | unsupported."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob('*') if f.is_file() and (face_utils.is_image_file(f) or
                                                                       face_utils.is_video_file(f)))
            if not found:
                out.append((str(p), 'empty_folder'))
            out += [(str(f), 'image' if face_utils.is_image_file(f) else 'video') for f in found]
        elif not p.exists():
            out.append((str(p), 'missing'))
        elif face_utils.is_image_file(p):
            out.append((str(p), 'image'))
        elif face_utils.is_video_file(p):
            out.append((str(p), 'video'))
        else:
            out.append((str(p), 'unsupported'))
    return out


# ---------------------------------------------------------------------- the predictor
class Predictor:
    """Detector + face finder; scores face crops in batches and optionally renders heat maps."""

    def __init__(self, checkpoint, device='cpu', landmarker='dlib', weights_dir=None, margin=1.3, batch_size=32,
                 heatmap_max=0.25, detector=face_utils.DEFAULT_DETECTOR):
        self.device = torch.device(device)
        self.model, self.meta = models_vit.load_detector(checkpoint, self.device)
        self.tf = FaceTransform(self.meta['input_size'], train=False, mean=self.meta['mean'], std=self.meta['std'],
                                crop_pct=self.meta.get('eval_crop_pct'))
        self.amp_dtype = torch.bfloat16 if self.device.type == 'cuda' else None
        self.landmarker_name, self.weights_dir, self.detector = landmarker, weights_dir, detector
        self.margin, self.batch_size, self.heatmap_max = margin, max(1, batch_size), heatmap_max
        self._landmarker = None

    @property
    def landmarker(self):
        if self._landmarker is None:
            kw = dict(detector=self.detector) if self.landmarker_name == 'dlib' else {}
            self._landmarker = face_utils.build_landmarker(self.landmarker_name, device=str(self.device),
                                                           weights_dir=self.weights_dir, **kw)
        return self._landmarker

    @torch.no_grad()
    def score_crops(self, crops, with_heatmaps=False):
        """RGB uint8 face crops -> (fake probabilities [N], heat-map images [N] of uint8 RGB or None)."""
        probs, panels = [], []
        for s in range(0, len(crops), self.batch_size):
            x = torch.stack([self.tf(c)[0] for c in crops[s:s + self.batch_size]]).to(self.device)
            with misc.autocast(self.device, self.amp_dtype):
                if with_heatmaps:
                    r = explain.reconstruction_discrepancy(self.model, x)
                    cams = explain.grad_cam(self.model, x)
                    probs.append(r['prob'])
                    panels += [heatmap_panel(r['input'][i], r['recon'][i], r['diff'][i], self.heatmap_max, cams[i])
                               for i in range(x.shape[0])]
                else:
                    probs.append(self.model.fake_prob(self.model(x)).cpu())
        p = torch.cat(probs).float().numpy() if probs else np.zeros(0, np.float32)
        return p, (panels if with_heatmaps else None)

    def predict_image(self, path, all_faces=True, with_heatmaps=False):
        res = dict(path=path, type='image')
        try:
            img = face_utils.load_image_rgb(path)
        except ValueError as e:
            return dict(res, status='unreadable', message=str(e))
        (found, reason, dropped), = face_utils.extract_faces_batch(
            [img], self.landmarker, margin=self.margin, size=CROP_SIZE, largest_only=not all_faces, with_rejected=True)
        res['candidates_dropped'] = len(dropped)
        if not found:
            return dict(res, **no_face(path, [reason], dropped=len(dropped)))
        probs, panels = self.score_crops([f['crop'] for f in found], with_heatmaps)
        res.update(status='ok', prob=float(probs.max()), faces=[
            dict(face=i, box=[round(v, 1) for v in f['box']], prob=float(p))
            for i, (f, p) in enumerate(zip(found, probs))])
        res['_panels'] = panels
        return res

    def predict_video(self, path, num_frames=16, with_heatmaps=False):
        res = dict(path=path, type='video')
        try:
            frames = face_utils.read_video_frames(path, num_frames)
            indices, images = [], []
            for idx, img in frames:
                indices.append(idx)
                images.append(img)
        except (ValueError, cv2.error) as e:
            return dict(res, status='unreadable', message=str(e))
        res.update(frames_read=len(images), frames_skipped=frames.skipped)
        if not images:
            return dict(res, status='unreadable', message=f'{path}: no frame could be decoded')
        found = face_utils.extract_faces_batch(images, self.landmarker, margin=self.margin, size=CROP_SIZE,
                                               largest_only=False, with_rejected=True)
        res['candidates_dropped'] = sum(len(dropped) for _, _, dropped in found)
        faces = [(idx, f) for idx, (fs, _, _) in zip(indices, found) for f in fs]
        if not faces:
            return dict(res, **no_face(path, [reason for _, reason, _ in found], frames=True,
                                       dropped=res['candidates_dropped']))
        probs, panels = self.score_crops([f['crop'] for _, f in faces], with_heatmaps)
        tracks = track_faces([[f['detector_box'] for f in fs] for fs, _, _ in found])
        offset = np.cumsum([0] + [len(fs) for fs, _, _ in found])       # (frame position, face) -> row of `faces`
        frames_with_face = sum(1 for fs, _, _ in found if fs)
        rows, listed = [None] * len(faces), []
        longest = max(len(t) for t in tracks)     # decides even when every track is brief (faces never matched)
        for k, track in enumerate(tracks):
            idx = [int(offset[t] + i) for t, i in track]
            for j in idx:
                rows[j] = k
            p = probs[idx]
            listed.append(dict(track=k, frames=len(idx), prob=float(p.mean()), min=float(p.min()), max=float(p.max()),
                               decides=len(idx) >= min(longest, MIN_TRACK_SHARE * frames_with_face)))
        verdict = max((t for t in listed if t['decides']), key=lambda t: t['prob'])
        res.update(status='ok', prob=verdict['prob'], track=verdict['track'], frames_with_face=frames_with_face,
                   tracks=listed, frames=[dict(frame=int(idx), track=rows[j], box=[round(v, 1) for v in f['box']],
                                               prob=float(probs[j])) for j, (idx, f) in enumerate(faces)])
        res['_panels'] = panels
        return res


def no_face(path, reasons, frames=False, dropped=0):
    """status and message for an image (one reason) or a video's sampled frames (`frames`, a reason each)
    without a usable face: preprocess.faces tells no face from a face under its minimum size; `dropped` candidates
    failed the detector's verification."""
    small, n = sum(r == face_utils.FACE_TOO_SMALL for r in reasons), len(reasons)
    too_small = f'face too small (under {face_utils.DEFAULT_MIN_FACE} px)'
    if not frames:
        what = too_small if small else 'no face found'
    elif small:
        what = f'{too_small} in {small} of {n} sampled frame(s)' + (f', no face in the other {n - small}'
                                                                     if small < n else '')
    else:
        what = f'no face found in {n} sampled frame(s)'
    if dropped:
        what += f' ({dropped} candidate{"s" if dropped > 1 else ""} failed verification)'
    return dict(status='face_too_small' if small == n else 'no_face', message=f'{path}: {what}')


HEATMAP_PANELS = ('input', 'reconstruction', '|difference|', 'Grad-CAM (fake)')   # titles, left to right
HEATMAP_LABEL_H, HEATMAP_GAP, HEATMAP_MIN_SIDE = 16, 4, 128     # pixels: title band, gaps, smallest panel side


def _label(text, width, height=HEATMAP_LABEL_H, align='center'):
    """A white band [height, width, 3] with `text` in black, set as large as fits (OpenCV's simplex font)."""
    band = np.full((height, width, 3), 255, np.uint8)
    scale = 0.4
    while scale > 0.2 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 2:
        scale -= 0.025
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = max(1, (width - w) // 2) if align == 'center' else 1
    cv2.putText(band, text, (x, (height + h) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def _jet(u8):
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def heatmap_panel(inp, recon, diff, vmax=0.25, cam=None):
    """[3, H, W] input and reconstruction in [0, 1], [H, W] |difference| and optionally [H, W] Grad-CAM
    -> uint8 RGB image: the panels of HEATMAP_PANELS side by side (up-scaled, nearest neighbour, to at least
    HEATMAP_MIN_SIDE px), each titled, and after |difference| its colour bar from 0 to `vmax` (JET).
    The Grad-CAM is scaled to its own maximum, so it shows where the detector looked, not how much."""
    to_u8 = lambda t: (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)  # noqa: E731
    d = (diff.clamp(0, vmax) / vmax * 255 + 0.5).to(torch.uint8).numpy()
    images = [to_u8(inp), to_u8(recon), _jet(d)] + ([explain.cam_overlay(inp, cam)] if cam is not None else [])
    k = max(1, -(-HEATMAP_MIN_SIDE // images[0].shape[0]))
    images = [np.repeat(np.repeat(im, k, 0), k, 1) for im in images]
    side = images[0].shape[0]
    bar = _jet(np.linspace(255, 0, side).round().astype(np.uint8)[:, None].repeat(10, 1))
    ticks = np.full((side, 34, 3), 255, np.uint8)
    ticks[:HEATMAP_LABEL_H] = _label(f'{vmax:g}', 34, align='left')
    ticks[-HEATMAP_LABEL_H:] = _label('0', 34, align='left')
    columns = [(title, im) for title, im in zip(HEATMAP_PANELS, images)]
    columns.insert(3, ('', np.concatenate([bar, np.full((side, 2, 3), 255, np.uint8), ticks], axis=1)))
    gap = np.full((HEATMAP_LABEL_H + side, HEATMAP_GAP, 3), 255, np.uint8)
    parts = [p for title, im in columns for p in (gap, np.concatenate([_label(title, im.shape[1]), im]))]
    return np.concatenate(parts[1:], axis=1)


def write_heatmaps(res, out_dir, stem):
    """One PNG per face: <stem>_face<k>.png (images) or <stem>_frame<index>.png (videos; with several tracks
    <stem>_frame<index>_track<k>.png)."""
    panels = res.pop('_panels', None)
    if not panels:
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = res['faces'] if res['type'] == 'image' else res['frames']
    tracked = res['type'] == 'video' and len(res['tracks']) > 1
    for item, panel in zip(items, panels):
        name = (f'{stem}_face{item["face"]}.png' if res['type'] == 'image' else
                f'{stem}_frame{item["frame"]:05d}' + (f'_track{item["track"]}' if tracked else '') + '.png')
        path = out_dir / name
        if not cv2.imwrite(str(path), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)):
            raise OSError(f'{path}: could not write the heat map')
        item['heatmap'] = str(path)


def verdict_line(res, threshold):
    if res['status'] != 'ok':
        return f'{res["path"]}: {res["message"].split(": ", 1)[-1] if res.get("message") else res["status"]}'
    word = 'FAKE' if res['prob'] > threshold else 'REAL'
    if res['type'] == 'image':
        per = ', '.join(f'{f["prob"]:.3f}' for f in res['faces'])
        n = len(res['faces'])
        how = f'{n} face{"s" if n > 1 else ""}: {per}' + ('; the most fake-looking counts' if n > 1 else '')
    else:
        skipped = f', {res["frames_skipped"]} unreadable' if res.get('frames_skipped') else ''
        seen = f'{res["frames_with_face"]} frame(s) with a face of {res["frames_read"]} read{skipped}'
        if len(res['tracks']) == 1:
            t = res['tracks'][0]
            how = f'mean over {seen}; min {t["min"]:.3f}, max {t["max"]:.3f}'
        else:
            per = ', '.join(f'{t["prob"]:.3f} ({t["frames"]} frame(s){"" if t["decides"] else ", too brief to count"})'
                            for t in res['tracks'])
            how = f'{len(res["tracks"])} people over {seen}: {per}; the most fake-looking counts'
    if res.get('candidates_dropped'):
        how += f'; {res["candidates_dropped"]} candidate(s) failed verification'
    return f'{res["path"]}: {word}  p(fake) = {res["prob"]:.3f}  ({how})'


def unique_stem(path, used):
    stem = Path(path).stem
    name, k = stem, 1
    while name in used:
        k += 1
        name = f'{stem}_{k}'
    used.add(name)
    return name


def check_run(args):
    """Device and outputs, before any work: one-line errors. The output folders are created here."""
    def fail(msg):
        raise error(msg)
    if problem := misc.device_problem(args.device) or misc.number_problem(args, unit_interval=('threshold',)):
        fail(problem)
    if args.json and Path(args.json).is_dir():
        fail(f'--json {args.json} is a folder; name the JSON file')
    outputs = [('json', Path(args.json).parent)] if args.json else []
    outputs += [('heatmap', Path(args.heatmap))] if args.heatmap else []
    for flag, folder in outputs:
        if problem := output_dir_problem(folder):
            fail(f'--{flag} {getattr(args, flag)}: {problem}')


def write_json(path, predictor, args, results, complete):
    doc = dict(checkpoint=str(args.checkpoint), model=predictor.meta['model'], threshold=args.threshold,
               landmarker=args.landmarker, detector=args.detector if args.landmarker == 'dlib' else 's3fd',
               complete=complete, results=results)
    try:
        write_text(path, json.dumps(doc, indent=2))
    except WriteError as e:
        raise error(f'--json {e}') from None


JSON_EVERY_S = 60        # --json is rewritten at least this often during a run, and when it ends or is stopped


def run(args):
    check_run(args)
    try:
        predictor = Predictor(args.checkpoint, args.device, args.landmarker, args.weights_dir, args.margin,
                              args.batch_size, args.heatmap_max, args.detector)
    except (ValueError, FileNotFoundError) as e:
        raise error(f'--checkpoint {e}') from None
    heat = bool(args.heatmap)
    if heat and not predictor.meta.get('decoder', True):
        print(f'predict.py: note: {args.checkpoint} has no pre-trained decoder (fine-tuned with --recon none from '
              f'an encoder-only checkpoint): no heat maps', file=sys.stderr)
        heat = False
    if not args.quiet:
        m = predictor.meta
        print(f'{args.checkpoint}: {m["model"]} at {m["input_size"]} px on {predictor.device}; '
              f'faces by {args.landmarker}' + (f' ({args.detector} detector)' if args.landmarker == 'dlib' else ''),
              file=sys.stderr)
    results, used, complete, saved = [], set(), False, time.time()
    try:
        for path, kind in expand_inputs(args.inputs):
            t = time.time()
            if kind == 'image':
                res = predictor.predict_image(path, all_faces=not args.largest_face_only, with_heatmaps=heat)
            elif kind == 'video':
                res = predictor.predict_video(path, args.frames, with_heatmaps=heat)
            else:
                why = {'missing': 'no such file or folder', 'empty_folder': 'folder holds no image or video',
                       'unsupported': 'not an image or video file (by extension)'}[kind]
                res = dict(path=path, type=kind, status=kind, message=f'{path}: {why}')
            if res['status'] == 'ok':
                res['verdict'] = 'fake' if res['prob'] > args.threshold else 'real'
                if heat:
                    try:
                        write_heatmaps(res, args.heatmap, unique_stem(path, used))
                    except OSError as e:
                        raise error(f'--heatmap {args.heatmap}: {e}') from None
            res.pop('_panels', None)
            res['seconds'] = round(time.time() - t, 3)
            results.append(res)
            print(verdict_line(res, args.threshold), flush=True)
            if args.json and time.time() - saved > JSON_EVERY_S:
                write_json(args.json, predictor, args, results, complete=False)
                saved = time.time()
        complete = True
    finally:                                                   # stopped or failed: what is done is kept
        if args.json:
            write_json(args.json, predictor, args, results, complete)
            if not complete:
                print(f'predict.py: {len(results)} result(s) so far written to {args.json}', file=sys.stderr)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser('MIFAE deepfake detection', parents=[get_args_parser()])
    args = parser.parse_args(argv)
    if args.frames < 0:
        parser.error('--frames must be >= 0')
    if args.heatmap_max <= 0:
        parser.error('--heatmap_max must be > 0')
    results = run(args)
    return 0 if any(r['status'] == 'ok' for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
