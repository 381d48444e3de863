"""Prepare face crops, 68 landmarks and manifests for MIFAE-Forensics.

Turns raw datasets (videos or photos) -- or data already pre-processed by
DeepfakeBench -- into square face crops with their 68 landmarks and CSV manifests:

    <output>/faces/<tag>/...           crops (PNG, or JPEG with --jpeg_quality) + .npy landmarks,
                                       mirroring the input tree
    <output>/<dataset>_<split>.csv     one manifest per dataset and split
    <output>/failures.csv              path,reason for everything that gave no face
    <output>/.prepare/<tag>.jsonl      journal of finished items (makes re-runs resume)

Manifest columns: path,landmarks,label,video,dataset,method,split,compression,frame,source
(paths relative to the CSV's folder; landmarks = float32 [68, 2] .npy in crop pixels,
iBUG-68 order; label 1 = fake, 0 = real, empty when unknown).

Examples:
    python prepare_faces.py --input clip.mp4 --output out --label 1
    python prepare_faces.py --dataset ffpp --input FaceForensics++ --splits splits --output out
    python prepare_faces.py --dataset celebdf --input Celeb-DF-v2 --output out --landmarker dlib
    python prepare_faces.py --dataset deepfakebench --input datasets/rgb \
        --dataset_json preprocessing/dataset_json/FaceForensics++.json --output out

Pipeline: 1. list the items of the chosen layout (preprocess/layouts.py), 2. process each
item (decode, detect, landmarks, crop, write) in worker processes (preprocess/worker.py),
3. journal the results and write the manifests and failures.csv atomically
(preprocess/journal.py), 4. print a summary (here, with the run loop).
"""
import argparse
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from preprocess import faces as F
from preprocess import worker as W
from preprocess.journal import Journal, relabel, write_failures, write_manifests
from preprocess.layouts import LISTERS, LayoutError


def get_args_parser():
    p = argparse.ArgumentParser('Face crops + 68 landmarks + manifests', add_help=True)
    p.add_argument('--input', required=True, help='video file, folder of videos/images, or dataset root')
    p.add_argument('--output', required=True, help='output folder (crops, manifests, failures.csv)')
    p.add_argument('--dataset', default='folder', choices=list(LISTERS), help='layout of --input')
    p.add_argument('--name', default=None,
                   help='dataset name for folder inputs (default: the input folder name)')
    p.add_argument('--label', default=None, choices=['0', '1'], help='folder: label of every item (1 = fake)')
    p.add_argument('--split', default=None, help='folder: split name written in the manifest (default: all)')
    p.add_argument('--video_per_folder', action='store_true',
                   help='folder: the images of each folder are frames of one video (video id = the folder); '
                        '--frames_per_video of them are used')
    p.add_argument('--splits', default=None,
                   help='ffpp: folder holding the official train.json, val.json, test.json')
    p.add_argument('--compression', default='c23',
                   help='ffpp: raw, c23, c40, a comma-separated list, or all')
    p.add_argument('--dataset_json', default=None,
                   help='deepfakebench: dataset JSON file (or a folder of them); --input is the root '
                        'its frame paths are relative to')
    # frames and faces
    p.add_argument('--frames_per_video', default=32, type=int,
                   help='frames evenly spaced over each video (0 = all)')
    p.add_argument('--margin', default=1.3, type=float, help='crop side = margin x face size')
    p.add_argument('--size', default=256, type=int, help='crop size in pixels')
    p.add_argument('--jpeg_quality', default=0, type=int, help='write JPEG of this quality (0 = PNG)')
    p.add_argument('--min_face', default=F.DEFAULT_MIN_FACE, type=int,
                   help='faces smaller than this (pixels, detector box) are "face too small"')
    # landmarker
    p.add_argument('--landmarker', default='face_alignment', choices=['face_alignment', 'dlib'])
    p.add_argument('--detector', default=F.DEFAULT_DETECTOR, choices=list(F.DETECTORS),
                   help='dlib: face detector (hybrid: HOG proposals on the image and rolled copies, each verified '
                        'by the CNN; hog: upright HOG only; cnn: the CNN on the whole frame). '
                        'See docs/face_detection.md')
    p.add_argument('--device', default='auto', help='face_alignment: cuda, cpu or auto')
    p.add_argument('--weights_dir', default=None, help='face_alignment: folder with its weight files')
    p.add_argument('--no_download', action='store_true', help='face_alignment: never download weights')
    p.add_argument('--batch_size', default=32, type=int, help='face_alignment: frames/faces per network call')
    # running
    p.add_argument('--workers', default=1, type=int, help='processes (each builds its own landmarker)')
    p.add_argument('--overwrite', action='store_true',
                   help='forget earlier runs into --output (settings changed) and start again')
    p.add_argument('--no_progress', action='store_true', help='no progress bar')
    # robustness (frame protocol, EVALUATION.md)
    p.add_argument('--perturb', default=None, metavar='TYPE:LEVEL',
                   help='degrade every decoded frame by util/perturb.py before detection and cropping (h264: '
                        're-encode each video first); crops under faces/<TYPE><LEVEL>/, manifests '
                        '<dataset>_<split>_<TYPE><LEVEL>.csv, its own journal')
    return p


class WorkerError(RuntimeError):
    """A worker process failed (landmarker, killed); the finished items are kept."""


# ---------------------------------------------------------------------------------
# 4. main
# ---------------------------------------------------------------------------------

def perturb_spec(text):
    """--perturb TYPE:LEVEL -> (type, level); ValueError naming the flag."""
    from util.perturb import parse_spec
    try:
        specs = parse_spec(text)
    except ValueError as e:
        raise ValueError(f'--perturb {text}: {e}') from None
    if len(specs) != 1:
        raise ValueError(f'--perturb {text}: name one type and level, e.g. blur:3')
    return specs[0]


def perturbed_items(args, tag, items):
    """Frame protocol: items of a --perturb run write their crops under faces/<TYPE><LEVEL>/ and journal
    apart, their manifests carry the suffix _<TYPE><LEVEL>. -> (journal tag, manifest suffix)"""
    if not args.perturb:
        return tag, ''
    from util.perturb import VIDEO_KINDS, name
    kind, level = perturb_spec(args.perturb)
    pname = name(kind, level)
    if kind in VIDEO_KINDS and any(it['kind'] != 'video' for it in items):
        raise ValueError(f'--perturb {args.perturb} re-encodes videos: --dataset {args.dataset} holds frames '
                         f'or photos (use a frame type, e.g. jpeg:{level})')
    for it in items:
        it['out'] = f'faces/{pname}/{it["out"].removeprefix("faces/")}'
    return f'{tag}_{pname}', f'_{pname}'


def _settings(args):
    """What the crops depend on (labels and splits do not: manifests follow the latest
    command). Flags only when set, so journals written before they existed still match."""
    keys = ('dataset', 'landmarker', 'frames_per_video', 'margin', 'size', 'jpeg_quality', 'min_face')
    s = {k: getattr(args, k) for k in keys}
    s.update({k: True for k in ('video_per_folder',) if getattr(args, k)})
    if args.landmarker == 'dlib' and args.detector != 'hog':      # dlib runs before --detector used hog
        s['detector'] = args.detector
    s.update({k: getattr(args, k) for k in ('perturb',) if getattr(args, k, None)})
    path = os.path.abspath(args.input)
    s['input'] = path if os.path.isdir(path) else os.path.dirname(path)    # one file: its folder
    return s


def _same_settings(old, new):
    """Whether a journal's settings are this run's. A journal of one file written before single files
    were keyed by their folder (its input is the file) matches that folder."""
    if old.get('input') != new['input'] and os.path.dirname(old.get('input') or '') == new['input']:
        old = dict(old, input=new['input'])
    return old == new


def _reason_kind(reason):
    return reason.split(' (')[0].split(':')[0]


def main(args):
    """Run the preparation; returns a summary dict. Raises LayoutError,
    preprocess.faces.WeightsNotFoundError, or WorkerError after writing the manifests of
    what finished (the command line prints them as errors)."""
    t0 = time.time()
    if args.workers < 1:
        raise ValueError('--workers must be >= 1')
    os.makedirs(args.output, exist_ok=True)

    # 1. list the items
    tag, items, listing_failures, notes = LISTERS[args.dataset](args)
    for note in notes:
        print(note, file=sys.stderr)
    tag, suffix = perturbed_items(args, tag, items)
    journal = Journal(args.output, tag)
    settings = _settings(args)
    if journal.settings is not None and not _same_settings(journal.settings, settings):
        produced = any(rec['rows'] for rec in journal.items.values())
        if not args.overwrite and produced:
            changed = {k: (journal.settings.get(k), settings.get(k))
                       for k in sorted(journal.settings.keys() | settings.keys())
                       if journal.settings.get(k) != settings.get(k)}
            other = ', another --name' if args.dataset == 'folder' and 'input' in changed else ''
            raise LayoutError(f'{args.output} holds a run ({tag}) with other settings {changed} (old, new): '
                              f'use another --output{other}, or --overwrite to start again')
        journal.reset()
    elif args.overwrite:
        journal.reset()
    if journal.settings != settings:        # a new journal, or an old single-file one now keyed by folder
        journal.append({'settings': settings})
    journal.append({'listing_failures': [list(f) for f in listing_failures]})
    relabel(args.output, journal, items, suffix)
    pending = [it for it in items if not journal.done(it['key'])]

    # 2. process what is missing
    needs_landmarker = args.dataset != 'deepfakebench' and bool(pending)
    opts = dict(output=args.output, landmarker=args.landmarker, detector=args.detector, device=args.device,
                weights_dir=args.weights_dir, batch_size=args.batch_size, workers=args.workers,
                allow_download=not args.no_download, frames_per_video=args.frames_per_video,
                margin=args.margin, size=args.size, jpeg_quality=args.jpeg_quality,
                min_face=args.min_face, needs_landmarker=needs_landmarker,
                perturb=perturb_spec(args.perturb) if args.perturb else None)
    if needs_landmarker and args.landmarker == 'face_alignment':
        # fail at once (and download once) before any worker starts
        F.find_face_alignment_weights(args.weights_dir, allow_download=not args.no_download)
    run = Counter()
    interrupted, error = False, None
    if pending:
        interrupted, error = _run_items(pending, opts, journal, run, args)

    # 3. manifests and failures
    manifests = write_manifests(args.output, journal, suffix)
    failure_rows = write_failures(args.output)     # every run's into this folder

    # 4. summary (of this input; other runs into the folder have their own)
    total = Counter()
    for rec in journal.items.values():
        total.update(rec['stats'])
    own = [*journal.listing_failures, *(f for rec in journal.items.values() for f in rec['failures'])]
    reasons = Counter(_reason_kind(r[1]) for r in own)
    summary = dict(items=len(items), already_done=len(items) - len(pending), processed=run['items'],
                   interrupted=interrupted, seconds=round(time.time() - t0, 1),
                   this_run={k: run[k] for k in ('videos', 'images', 'frames', 'faces')},
                   videos=total['videos'], images=total['images'], frames=total['frames'],
                   frames_unreadable=total['frames_unreadable'], faces=total['faces'],
                   failures=dict(reasons), failures_in_folder=len(failure_rows), manifests=manifests)
    _print_summary(summary, args)
    if error:
        raise WorkerError(f'{error}; {run["items"]} items finished and are kept: run the same command '
                          f'again to continue')
    return summary


def _run_items(pending, opts, journal, run, args):
    """Process pending items (in-process or in a pool); journal each result as it
    arrives. Returns (interrupted with Ctrl-C, reason why the pool failed or None)."""
    from tqdm import tqdm
    kinds = {it['kind'] for it in pending}
    unit = 'photo' if kinds == {'images'} else 'video' if 'images' not in kinds else 'item'
    weight = lambda it: len(it['images']) if it['kind'] == 'images' else 1
    bar = tqdm(total=sum(weight(it) for it in pending), unit=unit, dynamic_ncols=True,
               disable=args.no_progress, desc=f'{args.dataset} ({args.landmarker})')
    pool, finished = None, False
    try:
        W.init_worker(opts)
        if opts['workers'] == 1:
            results = map(W.process_item, pending)
        else:
            W.release_worker()                # the check's landmarker: its GPU memory back for the workers
            if 'torch' in sys.modules and sys.modules['torch'].cuda.is_available():
                sys.modules['torch'].cuda.empty_cache()
            # spawn, not fork: a forked child can deadlock on thread pools (OpenCV, OpenMP, CUDA)
            # that the parent had started. A worker that dies (killed when out of memory)
            # breaks this pool at once (BrokenProcessPool), where multiprocessing.Pool would hang.
            pool = ProcessPoolExecutor(opts['workers'], mp_context=mp.get_context('spawn'),
                                       initializer=W.init_pool_worker, initargs=(opts,))
            results = (f.result() for f in as_completed([pool.submit(W.process_item, it) for it in pending]))
        weights = {it['key']: weight(it) for it in pending}
        for res in results:
            if 'fatal' in res:
                return False, res['fatal']
            journal.append(res)
            run.update(res['stats'])
            run['items'] += 1
            run['failures'] += len(res['failures'])
            bar.update(weights[res['key']])
            bar.set_postfix(faces=run['faces'], failures=run['failures'], refresh=False)
        finished = True
        return False, None
    except BrokenProcessPool:
        return False, ('a worker process died (killed, out of memory?): try fewer --workers'
                       + (' or a smaller --batch_size' if args.landmarker == 'face_alignment' else ''))
    except KeyboardInterrupt:
        print(f'\ninterrupted: {run["items"]} items finished and kept; run the same command again to '
              f'continue', file=sys.stderr)
        return True, None
    finally:
        bar.close()
        if pool is not None:
            if not finished:    # stop the items in flight now (public from Python 3.14, private before)
                if hasattr(pool, 'terminate_workers'):
                    pool.terminate_workers()
                else:
                    for p in (pool._processes or {}).values():
                        p.terminate()
            pool.shutdown(cancel_futures=True)
        W.release_worker()


def _print_summary(s, args):
    lines = [f'done in {s["seconds"]} s: {s["processed"]} items processed now, {s["already_done"]} were done '
             f'before ({s["items"]} in all)' + (' -- INTERRUPTED' if s['interrupted'] else ''),
             f'  totals: videos {s["videos"]}, photos {s["images"]}, frames {s["frames"]} '
             f'(+{s["frames_unreadable"]} unreadable), faces {s["faces"]}',
             '  failures: ' + (', '.join(f'{k} {v}' for k, v in sorted(s['failures'].items())) or 'none')
             + f'  (every run\'s into {args.output}: {s["failures_in_folder"]}, listed in '
               f'{os.path.join(args.output, "failures.csv")})']
    lines += [f'  {os.path.join(args.output, name)}: {n} rows' for name, n in s['manifests'].items()]
    print('\n'.join(lines))


if __name__ == '__main__':
    args = get_args_parser().parse_args()
    try:
        summary = main(args)
    except (ValueError, RuntimeError) as e:    # LayoutError, WeightsNotFoundError, bad options
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    if summary['interrupted']:
        sys.exit(130)
    if summary['faces'] == 0:                   # every input failed: nothing for the next stage
        print(f'error: no input of {args.input} gave a face ({summary["videos"]} videos, {summary["images"]} '
              f'photos); the reasons are in {os.path.join(args.output, "failures.csv")}', file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
