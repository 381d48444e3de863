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

Pipeline (in file order): 1. list the items of the chosen layout, 2. process each item
(decode, detect, landmarks, crop, write) in worker processes, 3. journal the results and
write the manifests and failures.csv atomically, 4. print a summary.
"""
import argparse
import csv
import itertools
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from util import faces as F
from util import formats
from util.fileio import atomic_write

MANIFEST_COLUMNS = [*formats.MANIFEST_COLUMNS,        # the columns every stage reads, then this tool's
                    'method', 'split', 'compression', 'frame', 'source']
PRESETS = ('folder', 'vggface2', 'ffpp', 'celebdf', 'dfdc', 'wilddeepfake', 'deepfakebench')
FFPP_METHODS = ('Deepfakes', 'Face2Face', 'FaceSwap', 'NeuralTextures', 'FaceShifter')
FFPP_COMPRESSIONS = ('raw', 'c23', 'c40')
IMAGES_PER_ITEM = 64          # photos are processed (and journaled) in groups of this size
JOURNAL_DIR = '.prepare'


def get_args_parser():
    p = argparse.ArgumentParser('Face crops + 68 landmarks + manifests', add_help=True)
    p.add_argument('--input', required=True, help='video file, folder of videos/images, or dataset root')
    p.add_argument('--output', required=True, help='output folder (crops, manifests, failures.csv)')
    p.add_argument('--dataset', default='folder', choices=PRESETS, help='layout of --input')
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
                        'by the CNN; hog: upright HOG only; cnn: the CNN on the whole frame). See docs/face_detection.md')
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


class LayoutError(ValueError):
    """The input does not look like the chosen --dataset layout."""


class WorkerError(RuntimeError):
    """A worker process failed (landmarker, killed); the finished items are kept."""


# ---------------------------------------------------------------------------------
# 1. Items: what there is to process
# ---------------------------------------------------------------------------------
# An item is the unit of work and of resumability: one video, one folder of frames,
# one group of photos, or one DeepfakeBench video. Each is a dict with
#   key      unique id (journal key)              kind   video | frames | images | dfb
#   label    '0' | '1' | ''                       method, compression: manifest columns
#   memberships [(dataset, split), ...]           (a row is written for each)
#   video    video id (unique across datasets)    source: input-relative path
#   out      output path (relative to --output) of the crops' folder or stem
# plus kind-specific 'path' / 'frames' / 'images' / 'pad'.

def _rel(path, root):
    return os.path.relpath(path, root).replace(os.sep, '/')


def _strip_ext(rel):
    return os.path.splitext(rel)[0]


def _join(*parts):
    """Relative path from parts, leaving out empty ones and '.' (the --input folder itself)."""
    return '/'.join(p for p in parts if p not in ('', '.'))


def _out_stems(names, taken=()):
    """Output stem of each file name of one folder: the name without its extension, or
    with it where the stem would be shared (x.jpg and x.png; clip.mp4 and a sub-folder
    clip/ in ``taken``), so that no two files write the same crops or video id."""
    stems = {n: _strip_ext(n) for n in names}
    while True:
        count = Counter([*stems.values(), *taken])
        shared = [n for n, s in stems.items() if count[s] > 1 and s != n]
        if not shared:
            return stems
        stems.update((n, n) for n in shared)


def _listdir_files(folder, test):
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if test(f) and os.path.isfile(os.path.join(folder, f)))


def _walk(root, skip=None):
    """os.walk in sorted order, not descending into ``skip`` (the output folder)."""
    skip = os.path.abspath(skip) if skip else None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.')
                             and os.path.abspath(os.path.join(dirpath, d)) != skip)
        yield dirpath, sorted(filenames)


def video_item(path, root, tag, video, label, memberships, method='', compression='', out=None):
    """out: output stem relative to faces/<tag>/ (default: the input-relative path without extension)."""
    rel = _rel(path, root)
    return dict(key=rel, kind='video', path=path, source=rel, out=f'faces/{tag}/{out or _strip_ext(rel)}',
                video=video, label=label, memberships=memberships, method=method, compression=compression)


def image_items(paths, root, tag, video_of, label, memberships, method='', stems=None):
    """Photos of one folder grouped into items of IMAGES_PER_ITEM; each photo gets its own
    row. stems: output stem by file name (default: _out_stems of the photos); video_of:
    output stem relative to faces/<tag>/ -> video id."""
    stems = stems or _out_stems([os.path.basename(p) for p in paths])
    rel_dir = _rel(os.path.dirname(paths[0]), root)
    items = []
    for start in range(0, len(paths), IMAGES_PER_ITEM):
        chunk = paths[start:start + IMAGES_PER_ITEM]
        rel0 = _rel(chunk[0], root)
        outs = [_join(rel_dir, stems[os.path.basename(p)]) for p in chunk]
        images = [dict(path=p, source=_rel(p, root), out=f'faces/{tag}/{out}', video=video_of(out))
                  for p, out in zip(chunk, outs)]
        items.append(dict(key=f'{os.path.dirname(rel0)}#{start // IMAGES_PER_ITEM}:{rel0}', kind='images',
                          images=images, label=label, memberships=memberships, method=method,
                          compression='', video='', source=os.path.dirname(rel0)))
    return items


def frames_item(frame_paths, root, tag, video, label, memberships, method='', pad=0.0):
    rel_dir = _rel(os.path.dirname(frame_paths[0]), root)
    return dict(key=rel_dir, kind='frames', frames=list(frame_paths), source=rel_dir,
                out=_join(f'faces/{tag}', rel_dir), video=video, label=label, memberships=memberships,
                method=method, compression='', pad=pad)


def list_folder(args):
    """Any videos and images under --input, or one file (its folder is then the input, so
    files added one at a time share one journal and manifest); label from --label. With
    --video_per_folder, the images of each folder are the frames of one video."""
    label = args.label if args.label is not None else ''
    if os.path.isfile(args.input):
        root = os.path.dirname(os.path.abspath(args.input))
        only = os.path.abspath(args.input)
        folders = [(root, sorted(f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f))))]
    elif os.path.isdir(args.input):
        root, only = args.input, None
        folders = _walk(root, skip=args.output)
    else:
        raise LayoutError(f'--input {args.input} does not exist')
    name = _safe_name(args.name or os.path.basename(os.path.abspath(root)) or 'folder')
    memberships = [(name, args.split or 'all')]
    method = name if label == '1' else ''              # one unnamed manipulation: the data set's name
    items = []
    for dirpath, filenames in folders:
        media = [f for f in filenames if F.is_video_file(f) or F.is_image_file(f)]
        # stems from the whole folder, so that a file prepared alone gets the same outputs
        stems = _out_stems(media, [d for d in os.listdir(dirpath) if os.path.isdir(os.path.join(dirpath, d))])
        media = [f for f in media if only in (None, os.path.join(dirpath, f))]
        rel_dir = _rel(dirpath, root)
        for f in filter(F.is_video_file, media):
            out = _join(rel_dir, stems[f])
            items.append(video_item(os.path.join(dirpath, f), root, name, f'{name}/{out}', label, memberships,
                                    method, out=out))
        images = [os.path.join(dirpath, f) for f in media if F.is_image_file(f)]
        if only and args.video_per_folder:
            raise LayoutError(f'--video_per_folder takes a folder of frame folders as --input, not the file '
                              f'{args.input}')
        if images and args.video_per_folder:
            items.append(frames_item(sorted(images, key=_natural_key), root, name, _join(name, rel_dir), label,
                                     memberships, method))
        elif images:
            items += image_items(images, root, name, lambda out: f'{name}/{out}', label, memberships, method,
                                 stems=stems)
    if not items:
        raise LayoutError(f'no videos ({", ".join(F.VIDEO_EXTENSIONS)}) or images '
                          f'({", ".join(F.IMAGE_EXTENSIONS)}) found in {args.input}')
    return name, items, [], []


def list_vggface2(args):
    """VGGFace2: [train|test/]<identity>/<photo>.jpg; no labels (pre-training)."""
    root = args.input
    if not os.path.isdir(root):
        raise LayoutError(f'--input {root} does not exist')
    split_dirs = [(s, os.path.join(root, s)) for s in ('train', 'test') if os.path.isdir(os.path.join(root, s))]
    if not split_dirs:
        split_dirs = [('train', root)]
    items = []
    for split, folder in split_dirs:
        for identity in sorted(os.listdir(folder)):
            photos = _listdir_files(os.path.join(folder, identity), F.is_image_file)
            if photos:
                items += image_items(photos, root, 'vggface2', lambda rel, i=identity: f'vggface2/{i}',
                                     '', [('vggface2', split)])
    if not items:
        raise LayoutError(f'vggface2: expected identity folders of photos in {root} '
                          f'(or in its train/ and test/ folders); found none')
    return 'vggface2', items, [], []


def load_ffpp_splits(args):
    """Official FF++ split files -> {video id or 'target_source': split}."""
    candidates = [args.splits] if args.splits else [os.path.join(args.input, 'splits'), args.input]
    for folder in candidates:
        paths = {s: os.path.join(folder, f'{s}.json') for s in ('train', 'val', 'test')}
        if all(os.path.isfile(p) for p in paths.values()):
            break
    else:
        raise LayoutError('ffpp needs the official split files train.json, val.json and test.json: '
                          f'pass --splits FOLDER (looked in {", ".join(candidates)})')
    split_of, pairs = {}, {}
    for split, path in paths.items():
        try:
            with open(path) as f:
                pair_list = json.load(f)
            pair_list = [(str(a), str(b)) for a, b in pair_list]
        except (ValueError, TypeError) as e:
            raise LayoutError(f'{path}: not a list of [target, source] pairs ({e})') from e
        pairs[split] = pair_list
        for a, b in pair_list:
            for vid in (a, b, f'{a}_{b}', f'{b}_{a}'):
                split_of[vid] = split
    return split_of, pairs


def list_ffpp(args):
    """FaceForensics++ (and DFD = DeepFakeDetection + actors, as its own test set)."""
    root = args.input
    comps = list(FFPP_COMPRESSIONS) if args.compression == 'all' else args.compression.split(',')
    bad = [c for c in comps if c not in FFPP_COMPRESSIONS]
    if bad:
        raise LayoutError(f'--compression {",".join(bad)}: use raw, c23, c40 or all')
    split_of, pairs = load_ffpp_splits(args)
    folders = []   # (dataset, method, compression, label, relative folder)
    for c in comps:
        folders.append(('ffpp', 'youtube', c, '0', f'original_sequences/youtube/{c}/videos'))
        folders += [('ffpp', m, c, '1', f'manipulated_sequences/{m}/{c}/videos') for m in FFPP_METHODS]
        folders.append(('dfd', 'actors', c, '0', f'original_sequences/actors/{c}/videos'))
        folders.append(('dfd', 'DeepFakeDetection', c, '1', f'manipulated_sequences/DeepFakeDetection/{c}/videos'))
    present = [f for f in folders if os.path.isdir(os.path.join(root, f[4]))]
    if not present:
        top = sorted(os.listdir(root)) if os.path.isdir(root) else []
        raise LayoutError('ffpp: none of the expected folders is in ' + root + ':\n  '
                          + '\n  '.join(f[4] for f in folders) + f'\n(found: {top})')
    notes = ['ffpp: not found, skipped: ' + ', '.join(f[4] for f in folders
                                                       if f not in present and f[0] == 'ffpp')]
    items, failures = [], []
    for dataset, method, comp, label, rel_folder in present:
        videos = _listdir_files(os.path.join(root, rel_folder), F.is_video_file)
        names = set()
        for v in videos:
            stem = _strip_ext(os.path.basename(v))
            names.add(stem)
            if dataset == 'dfd':
                split = 'test'
            else:
                split = split_of.get(stem)
                if split is None:
                    failures.append((v, 'not in split files'))
                    continue
            items.append(video_item(v, root, 'ffpp', f'{dataset}/{method}/{comp}/{stem}', label,
                                    [(dataset, split)], method, comp))
        if dataset == 'ffpp':   # videos named by the split files but not there: count, go on
            for split, pair_list in pairs.items():
                for a, b in pair_list:
                    expected = (a, b) if method == 'youtube' else (f'{a}_{b}', f'{b}_{a}')
                    failures += [(os.path.join(root, rel_folder, f'{e}.mp4'), f'missing: named in {split}.json')
                                 for e in expected if e not in names]
    return 'ffpp', items, failures, notes


def list_celebdf(args):
    """Celeb-DF v2; List_of_testing_videos.txt says 1 = real, converted to our 1 = fake."""
    root = args.input
    folders = {'Celeb-real': '0', 'YouTube-real': '0', 'Celeb-synthesis': '1'}
    present = [f for f in folders if os.path.isdir(os.path.join(root, f))]
    test_list = os.path.join(root, 'List_of_testing_videos.txt')
    missing = [f for f in folders if f not in present] + ([] if os.path.isfile(test_list)
                                                          else ['List_of_testing_videos.txt'])
    if not present or not os.path.isfile(test_list):
        raise LayoutError(f'celebdf: missing in {root}: {", ".join(missing)}')
    notes = [f'celebdf: not found, skipped: {", ".join(missing)}'] if missing else []
    test_labels, failures = {}, []
    with open(test_list) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[0] not in ('0', '1'):
                raise LayoutError(f'{test_list}:{n}: expected "<1 real|0 fake> <folder>/<video>.mp4", got {line!r}')
            test_labels[parts[1]] = '0' if parts[0] == '1' else '1'     # theirs: 1 = real
    items, seen = [], set()
    for folder in present:
        for v in _listdir_files(os.path.join(root, folder), F.is_video_file):
            rel = _rel(v, root)
            seen.add(rel)
            label = test_labels.get(rel, folders[folder])
            if label != folders[folder]:
                notes.append(f'celebdf: {rel} is labelled {label} by the test list but sits in {folder}')
            split = 'test' if rel in test_labels else 'train'
            items.append(video_item(v, root, 'celebdf', f'celebdf/{folder}/{_strip_ext(os.path.basename(v))}',
                                    label, [('celebdf', split)], folder))
    failures += [(os.path.join(root, rel), 'missing: named in List_of_testing_videos.txt')
                 for rel in test_labels if rel not in seen and rel.split('/')[0] in present]
    return 'celebdf', items, failures, notes


def _find_video(folder, filename):
    for d in (folder, os.path.join(folder, 'videos')):
        if os.path.isfile(os.path.join(d, filename)):
            return os.path.join(d, filename)
    return None


def list_dfdc(args):
    """DFDC: folders with labels.csv (test set: filename,label with 1 = fake) or
    metadata.json (train parts: {"x.mp4": {"label": "FAKE"|"REAL", "split": ...}})."""
    root = args.input
    if not os.path.isdir(root):
        raise LayoutError(f'--input {root} does not exist')
    items, failures, found = [], [], False
    for dirpath, filenames in _walk(root, skip=args.output):
        if os.path.relpath(dirpath, root).count(os.sep) > 2:
            continue
        entries = []    # (filename, label, split)
        if 'labels.csv' in filenames:
            found = True
            with open(os.path.join(dirpath, 'labels.csv'), newline='', encoding=formats.MANIFEST_ENCODING) as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {'filename', 'label'} <= set(reader.fieldnames):
                    raise LayoutError(f'{os.path.join(dirpath, "labels.csv")}: expected columns filename,label')
                entries = [(r['filename'], str(int(float(r['label']))), 'test') for r in reader]
            source = 'labels.csv'
        elif 'metadata.json' in filenames:
            found = True
            with open(os.path.join(dirpath, 'metadata.json')) as f:
                meta = json.load(f)
            default_split = 'test' if 'test' in _rel(dirpath, root).lower() else 'train'
            entries = [(name, '1' if str(m.get('label', '')).upper() == 'FAKE' else '0',
                        m.get('split') or default_split) for name, m in meta.items()]
            source = 'metadata.json'
        for filename, label, split in entries:
            path = _find_video(dirpath, filename)
            if path is None:
                failures.append((os.path.join(dirpath, filename), f'missing: named in {source}'))
                continue
            rel = _rel(path, root)
            items.append(video_item(path, root, 'dfdc', f'dfdc/{_strip_ext(rel)}', label, [('dfdc', split)],
                                    'dfdc' if label == '1' else ''))
    if not found:
        raise LayoutError(f'dfdc: expected labels.csv (test set) or metadata.json (train parts) '
                          f'next to the videos in {root} or its sub-folders; found neither')
    return 'dfdc', items, failures, []


def list_wilddeepfake(args):
    """WildDeepfake: {real,fake}_{train,test}/.../<frames> trees (already face frames)."""
    root = args.input
    expected = {'real_train': ('0', 'train'), 'fake_train': ('1', 'train'),
                'real_test': ('0', 'test'), 'fake_test': ('1', 'test')}
    present = [d for d in expected if os.path.isdir(os.path.join(root, d))]
    if not present:
        archives = [f for f in (os.listdir(root) if os.path.isdir(root) else []) if '.tar' in f]
        hint = f' (found archives {archives[:4]}: extract them first)' if archives else ''
        raise LayoutError(f'wilddeepfake: expected folders {", ".join(expected)} in {root}; found none' + hint)
    items = []
    for d in present:
        label, split = expected[d]
        for dirpath, filenames in _walk(os.path.join(root, d)):
            frames = [os.path.join(dirpath, f) for f in filenames if F.is_image_file(f)]
            if frames:
                frames.sort(key=_natural_key)
                rel = _rel(dirpath, root)
                items.append(frames_item(frames, root, 'wilddeepfake', f'wilddeepfake/{rel}', label,
                                         [('wilddeepfake', split)], 'wilddeepfake' if label == '1' else '',
                                         pad=0.25))
    notes = [f'wilddeepfake: not found, skipped: {", ".join(d for d in expected if d not in present)}'] \
        if len(present) < len(expected) else []
    return 'wilddeepfake', items, [], notes


def _natural_key(path):
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', os.path.basename(path))]


def _dfb_label(value):
    """DeepfakeBench label name ('FF-real', 'CelebDFv2_fake', ...) or int -> '0' | '1'."""
    if isinstance(value, (int, float)):
        return str(int(value))
    return '0' if 'real' in str(value).lower() else '1'


def _dfb_entries(data):
    """Walk {dataset: {label_name: {split: {[compression:] {video: {label, frames}}}}}}.

    Yields (dataset, label_name, split, compression, video, entry); malformed nodes
    (e.g. DeepfakeBench's DFDC 'val' that is a single entry) yield video None."""
    is_entry = lambda v: isinstance(v, dict) and isinstance(v.get('frames'), list)
    for dataset, by_label in data.items():
        for label_name, by_split in (by_label or {}).items():
            for split, node in (by_split or {}).items():
                if is_entry(node) or not isinstance(node, dict):
                    yield dataset, label_name, split, '', None, node
                    continue
                for k, v in node.items():
                    if is_entry(v):
                        yield dataset, label_name, split, '', k, v
                    elif isinstance(v, dict):
                        for video, e in v.items():
                            yield dataset, label_name, split, k, video, e if is_entry(e) else None


class _PathResolver:
    """Map DeepfakeBench frame paths (absolute from another machine, relative to its
    rgb_dir, with '\\' separators or a leading './') onto files under --input."""

    def __init__(self, root):
        self.root = root
        self.strip = None     # number of leading path parts to drop, learnt from the first hit

    def __call__(self, p):
        p = str(p).replace('\\', '/')
        if os.path.isabs(p) and os.path.isfile(p):
            return p
        parts = [q for q in p.split('/') if q not in ('', '.')]
        order = ([self.strip] if self.strip is not None else []) + list(range(len(parts)))
        for i in order:
            cand = os.path.join(self.root, *parts[i:])
            if parts[i:] and os.path.isfile(cand):
                self.strip = i
                return cand
        return None


def _dfb_landmark_path(frame_path):
    parts = frame_path.replace('\\', '/').split('/')
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == 'frames':
            parts[i] = 'landmarks'
            break
    return os.path.splitext('/'.join(parts))[0] + '.npy'


def list_deepfakebench(args):
    """DeepfakeBench dataset JSON(s) + its frames/ and 81-point landmarks/ trees."""
    root = args.input
    if not args.dataset_json:
        raise LayoutError('deepfakebench needs --dataset_json (a DeepfakeBench dataset JSON or a folder of them)')
    if os.path.isdir(args.dataset_json):
        jsons = sorted(os.path.join(args.dataset_json, f) for f in os.listdir(args.dataset_json)
                       if f.endswith('.json'))
    else:
        jsons = [args.dataset_json]
    if not jsons or not all(os.path.isfile(j) for j in jsons):
        raise LayoutError(f'--dataset_json {args.dataset_json}: no JSON file there')
    if not os.path.isdir(root):
        raise LayoutError(f'--input {root} (DeepfakeBench rgb root) does not exist')
    resolve = _PathResolver(root)
    videos, failures, malformed = {}, [], 0
    for path in jsons:
        try:
            with open(path) as f:
                data = json.load(f)
        except ValueError as e:
            raise LayoutError(f'{path}: not valid JSON ({e})') from e
        if not isinstance(data, dict):
            raise LayoutError(f'{path}: expected {{dataset: {{label: {{split: ...}}}}}}')
        for dataset, label_name, split, comp, video, entry in _dfb_entries(data):
            if video is None or entry is None:
                malformed += 1
                continue
            frames = []
            for fp in entry['frames']:
                img = resolve(fp)
                if img is None:
                    failures.append((fp, 'missing frame file'))
                else:
                    frames.append(img)
            if not frames:
                continue
            frames.sort(key=_natural_key)
            rel_dir = _rel(os.path.dirname(frames[0]), root)
            item = videos.get(rel_dir)
            if item is None:
                item = dict(key=rel_dir, kind='dfb', frames=frames, source=rel_dir, out='faces/deepfakebench',
                            video=f'deepfakebench/{rel_dir}', label=_dfb_label(entry.get('label', label_name)),
                            memberships=[], method=label_name, compression=comp, root=root)
                videos[rel_dir] = item
            if (dataset, split) not in item['memberships']:
                item['memberships'].append((_safe_name(dataset), split))
    notes = [f'deepfakebench: {malformed} malformed entries skipped'] if malformed else []
    if not videos and not failures:
        raise LayoutError(f'deepfakebench: no videos in {", ".join(jsons)}')
    return 'deepfakebench', list(videos.values()), failures, notes


LISTERS = dict(folder=list_folder, vggface2=list_vggface2, ffpp=list_ffpp, celebdf=list_celebdf,
               dfdc=list_dfdc, wilddeepfake=list_wilddeepfake, deepfakebench=list_deepfakebench)


def _safe_name(name):
    return re.sub(r'[^A-Za-z0-9_.+-]+', '_', str(name)).strip('_') or 'dataset'


# ---------------------------------------------------------------------------------
# 2. Work on one item (runs in the worker processes)
# ---------------------------------------------------------------------------------

_STATE = {}   # per process: landmarker and options


def init_worker(opts):
    """Build this process's landmarker: for an in-process run, and in the main process
    before a pool starts (a landmarker that cannot be built is then one error line)."""
    landmarker = None
    if opts['needs_landmarker']:
        landmarker = F.build_landmarker(opts['landmarker'], device=opts['device'],
                                        weights_dir=opts['weights_dir'], batch_size=opts['batch_size'],
                                        allow_download=opts['allow_download'],
                                        **({'detector': opts['detector']} if opts['landmarker'] == 'dlib' else {}))
    _STATE.update(opts=opts, landmarker=landmarker)


def init_pool_worker(opts):
    """Pool initializer. A failure is kept and reported by process_item: raised here,
    it would print a traceback in every worker and leave the pool without a reason."""
    import signal
    import cv2
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is handled by the main process
    cv2.setNumThreads(1)
    if opts['landmarker'] == 'face_alignment' and opts['needs_landmarker']:
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // opts['workers']))
    try:
        init_worker(opts)
    except Exception as e:
        _STATE['error'] = f'a worker process could not build its landmarker: {e}'


def _write_face(out_stem, face, opts):
    """Write the crop and its landmarks; return (image path, npy path) as given."""
    import cv2
    os.makedirs(os.path.dirname(os.path.join(opts['output'], out_stem)), exist_ok=True)
    if opts['jpeg_quality'] > 0:
        img_rel = out_stem + '.jpg'
        params = [cv2.IMWRITE_JPEG_QUALITY, opts['jpeg_quality']]
    else:
        img_rel, params = out_stem + '.png', []
    if not cv2.imwrite(os.path.join(opts['output'], img_rel), face['crop'][:, :, ::-1], params):
        raise OSError(f'cannot write {img_rel}')
    np.save(os.path.join(opts['output'], out_stem + '.npy'), face['landmarks'].astype(np.float32))
    return img_rel, out_stem + '.npy'


def _rows(item, img_rel, npy_rel, frame, source, video=None):
    return [[img_rel, npy_rel, item['label'], video or item['video'], dataset, item['method'],
             split, item['compression'], '' if frame is None else str(frame), source]
            for dataset, split in item['memberships']]


def _pad(img, fraction):
    import cv2
    if not fraction:
        return img
    p = int(round(fraction * max(img.shape[:2])))
    return cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_CONSTANT, value=0)


def _faces_for(pairs, opts, landmarker):
    """(key, image) pairs -> (key, faces, reason), extract_faces_batch on one batch at a
    time: the pairs are consumed as they go (a video's frames are never all in memory)."""
    step = opts['batch_size'] if opts['landmarker'] == 'face_alignment' else 8
    pairs = iter(pairs)
    while True:
        chunk = list(itertools.islice(pairs, step))
        if not chunk:
            return
        found = F.extract_faces_batch([img for _, img in chunk], landmarker, margin=opts['margin'],
                                      size=opts['size'], largest_only=True, min_face=opts['min_face'])
        for (key, _), (faces, reason) in zip(chunk, found):
            yield key, faces, reason


def process_item(item):
    """Decode, detect, landmark, crop and write one item. Never raises: problems
    become failures; unexpected errors mark the item for retry on the next run; a
    worker without a landmarker returns {'key', 'fatal': reason} (the run stops)."""
    if 'error' in _STATE:
        return dict(key=item['key'], fatal=_STATE['error'])
    opts, landmarker = _STATE['opts'], _STATE['landmarker']
    result = dict(key=item['key'], rows=[], failures=[], retry=False,
                  stats=Counter(videos=0, images=0, frames=0, frames_unreadable=0, faces=0))
    try:
        handler = dict(video=_process_video, frames=_process_images, images=_process_images,
                       dfb=_process_dfb)[item['kind']]
        handler(item, opts, landmarker, result)
    except Exception as e:   # a bug or a transient error (disk full, CUDA OOM): retry next time
        result['failures'].append((item.get('path') or item['source'], f'error: {type(e).__name__}: {e}'))
        result['retry'] = True
    result['stats'] = dict(result['stats'])
    return result


def _process_video(item, opts, landmarker, result):
    stats = result['stats']
    stats['videos'] += 1
    path = item['path']
    if (opts.get('perturb') or ('',))[0] == 'h264':                    # frame protocol: re-encode first
        from util.perturb import compress_video, parameter
        path = os.path.join(opts['output'], JOURNAL_DIR, 'h264', f'{_safe_name(item["key"])}.mp4')
        try:
            compress_video(item['path'], path, parameter(*opts['perturb']))
        except RuntimeError as e:
            result['failures'].append((item['path'], f'unreadable video ({e})'))
            return
    try:
        try:
            reader = F.read_video_frames(path, opts['frames_per_video'])
        except ValueError as e:
            result['failures'].append((item['path'], f'unreadable video ({e})'))
            return
        _faces_of_video(item, reader, opts, landmarker, result)
    finally:
        if path != item['path'] and os.path.exists(path):
            os.remove(path)


def _faces_of_video(item, reader, opts, landmarker, result):
    stats = result['stats']
    for index, faces, reason in _faces_for(_perturbed(reader, item, opts), opts, landmarker):
        if not faces:
            result['failures'].append((f'{item["path"]}#frame={index}', reason))
            continue
        img_rel, npy_rel = _write_face(f'{item["out"]}/{index:06d}', faces[0], opts)
        stats['faces'] += 1
        result['rows'] += _rows(item, img_rel, npy_rel, index, item['source'])
    stats['frames'] += reader.read
    stats['frames_unreadable'] += reader.skipped
    if reader.skipped:
        result['failures'].append((item['path'], f'unreadable frames: {reader.skipped} of {len(reader)}'))
    if not reader.read:
        result['failures'].append((item['path'], 'unreadable video (no frame decoded)'))


def _process_images(item, opts, landmarker, result):
    """Photos (each its own output) or a folder of frames (sampled evenly), read as
    they are needed."""
    stats = result['stats']
    if item['kind'] == 'frames':
        stats['videos'] += 1
        paths = item['frames']
        keep = F.evenly_spaced_indices(len(paths), opts['frames_per_video'])
        stems = _out_stems([os.path.basename(p) for p in paths])
        entries = [dict(path=paths[i], source=_rel_to(paths[i], item), frame=i,
                        out=f'{item["out"]}/{stems[os.path.basename(paths[i])]}', video=None)
                   for i in keep]
    else:
        entries = [dict(e, frame=None) for e in item['images']]

    def load():
        for e in entries:
            try:
                img = _pad(F.load_image_rgb(e['path']), item.get('pad', 0.0))
            except ValueError as err:
                why = str(err).removeprefix(f'{e["path"]}: ')                # the row names the file already
                result['failures'].append((e['path'], f'unreadable image ({why})'))
                stats['frames_unreadable'] += 1
                continue
            stats['images' if item['kind'] == 'images' else 'frames'] += 1
            yield e, img

    for e, faces, reason in _faces_for(_perturbed(load(), item, opts), opts, landmarker):
        if not faces:
            result['failures'].append((e['path'], reason))
            continue
        img_rel, npy_rel = _write_face(e['out'], faces[0], opts)
        stats['faces'] += 1
        result['rows'] += _rows(item, img_rel, npy_rel, e['frame'], e['source'], e['video'])


def _rel_to(path, item):
    return _join(item['source'], os.path.basename(path))


def _process_dfb(item, opts, landmarker, result):
    """DeepfakeBench: keep its frames as they are, write the first 68 of its 81 points."""
    stats = result['stats']
    stats['videos'] += 1
    root, paths = item['root'], item['frames']
    keep = F.evenly_spaced_indices(len(paths), opts['frames_per_video'])
    for i in keep:
        img_path = paths[i]
        lmk_path = _dfb_landmark_path(img_path)
        try:
            F.load_image_rgb(img_path)      # unreadable frames are failures, as elsewhere
        except ValueError as err:
            why = str(err).removeprefix(f'{img_path}: ')                 # the row names the file already
            result['failures'].append((img_path, f'unreadable image ({why})'))
            stats['frames_unreadable'] += 1
            continue
        stats['frames'] += 1
        if not os.path.isfile(lmk_path):
            result['failures'].append((img_path, 'no landmarks file'))
            continue
        try:
            lm = np.load(lmk_path).astype(np.float32).reshape(-1, 2)
        except (ValueError, OSError) as err:
            result['failures'].append((lmk_path, f'unreadable landmarks ({err})'))
            continue
        if lm.shape[0] < F.NUM_LANDMARKS or not np.isfinite(lm[:F.NUM_LANDMARKS]).all():
            result['failures'].append((lmk_path, f'bad landmarks shape {lm.shape}'))
            continue
        rel = _rel(img_path, root)
        img_rel = f'{item["out"]}/{rel}'
        npy_rel = f'{item["out"]}/{_strip_ext(rel)}.npy'
        dst = os.path.join(opts['output'], img_rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if opts.get('perturb'):                        # frame protocol: the degraded frame, not a link
            import cv2
            (_, img), = _perturbed([(i, F.load_image_rgb(img_path))], item, opts)
            if not cv2.imwrite(dst, np.ascontiguousarray(img[:, :, ::-1])):
                raise OSError(f'cannot write {dst}')
        else:
            _link_or_copy(img_path, dst)
        np.save(os.path.join(opts['output'], npy_rel), lm[:F.NUM_LANDMARKS])   # iBUG-68 = first 68 of 81
        stats['faces'] += 1
        frame = int(_strip_ext(os.path.basename(rel))) if _strip_ext(os.path.basename(rel)).isdigit() else i
        result['rows'] += _rows(item, img_rel, npy_rel, frame, rel)


def _link_or_copy(src, dst):
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ---------------------------------------------------------------------------------
# 3. Journal (resumability), manifests and failures.csv (atomic writes)
# ---------------------------------------------------------------------------------

def write_atomic(path, write_fn):
    """util.fileio.atomic_write for text, creating the folder: never a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, write_fn)


def write_csv(path, header, rows):
    def fill(f):
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    write_atomic(path, fill)


class Journal:
    """Append-only JSON-lines record of finished items, one file per input tag.

    Lines: {"settings": ...} first, then {"listing_failures": [...]} and one
    {"key", "rows", "failures", "stats", "retry"} per finished item (the last one
    of a key counts). A line cut short by a crash is ignored, and dropped before the
    next append, so at most the item in flight is lost. Only the run of this tag
    appends; other runs read it (write_failures) and leave it as it is."""

    def __init__(self, output, tag):
        self.path = os.path.join(output, JOURNAL_DIR, f'{tag}.jsonl')
        self.settings, self.items, self.listing_failures = None, {}, []
        self._whole = None     # length of the whole lines, when the last one was cut short
        data = b''
        if os.path.isfile(self.path):
            with open(self.path, 'rb') as f:
                data = f.read()
        end = data.rfind(b'\n') + 1
        if end < len(data):
            self._whole = end
        for line in data[:end].decode('utf-8', 'replace').splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if 'settings' in rec:
                self.settings = rec['settings']
            elif 'listing_failures' in rec:
                self.listing_failures = rec['listing_failures']
            elif 'key' in rec:
                self.items[rec['key']] = rec

    def done(self, key):
        rec = self.items.get(key)
        return rec is not None and not rec.get('retry')

    def reset(self):
        if os.path.exists(self.path):
            os.remove(self.path)
        self.settings, self.items, self.listing_failures, self._whole = None, {}, [], None

    def append(self, rec):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if self._whole is not None:     # drop the cut line, or the next record would continue it
            os.truncate(self.path, self._whole)
            self._whole = None
        with open(self.path, 'a') as f:
            f.write(json.dumps(rec) + '\n')
            f.flush()
            os.fsync(f.fileno())
        if 'settings' in rec:
            self.settings = rec['settings']
        elif 'listing_failures' in rec:
            self.listing_failures = rec['listing_failures']
        else:
            self.items[rec['key']] = rec


def _manifest_path(output, dataset, split, suffix=''):
    return os.path.join(output, f'{_safe_name(dataset)}_{_safe_name(split)}{suffix}.csv')


def _groups(journal):
    return {(row[4], row[6]) for rec in journal.items.values() for row in rec['rows']}


def relabel(output, journal, items, suffix=''):
    """Give the finished items' rows the label, dataset, split, method and compression of
    the current listing (journaled), so that a re-run with a corrected --label, --split or
    --splits rewrites the manifests without detecting anything again; remove the
    manifests that none of this journal's rows goes to any more. Rows of items not in
    the listing (other files of a single-file input's folder) stay as they were."""
    current = {it['key']: it for it in items}
    before = _groups(journal)
    for key, rec in list(journal.items.items()):
        item = current.get(key)
        if item is None:
            continue
        faces = {row[0]: row for row in rec['rows']}     # one per face (a row per membership)
        rows = [r for f in faces.values() for r in _rows(item, f[0], f[1], f[8], f[9], f[3])]
        if rows != rec['rows']:
            journal.append(dict(rec, rows=rows))
    for dataset, split in sorted(before - _groups(journal)):
        path = _manifest_path(output, dataset, split, suffix)
        if os.path.exists(path):
            os.remove(path)
            print(f'{path}: removed, its rows now go to other manifests', file=sys.stderr)


def write_manifests(output, journal, suffix=''):
    """<output>/<dataset>_<split>.csv from the journal (rows de-duplicated by path)."""
    groups = {}
    for rec in journal.items.values():
        for row in rec['rows']:
            groups.setdefault((row[4], row[6]), {})[row[0]] = row
    written = {}
    for (dataset, split), rows in sorted(groups.items()):
        path = _manifest_path(output, dataset, split, suffix)
        write_csv(path, MANIFEST_COLUMNS, [rows[k] for k in sorted(rows)])
        written[os.path.basename(path)] = len(rows)
    return written


def write_failures(output):
    """<output>/failures.csv from every journal in <output>/.prepare."""
    rows = []
    folder = os.path.join(output, JOURNAL_DIR)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith('.jsonl'):
            j = Journal(output, name[:-len('.jsonl')])
            rows += [list(r) for r in j.listing_failures]
            for rec in j.items.values():
                rows += [list(r) for r in rec['failures']]
    write_csv(os.path.join(output, 'failures.csv'), ['path', 'reason'], rows)
    return rows


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


def _perturbed(pairs, item, opts):
    """(key, RGB frame) pairs degraded by --perturb: each frame's generator seeded by the item and the
    frame, so a re-run degrades every frame the same way."""
    import zlib
    from util.perturb import PERTURBATIONS, VIDEO_KINDS, perturb
    kind, level = opts.get('perturb') or (None, None)
    if kind is None or kind in VIDEO_KINDS:
        yield from pairs
        return
    seed = [list(PERTURBATIONS).index(kind), level, zlib.crc32(item['key'].encode())]
    for n, (key, img) in enumerate(pairs):
        frame = key if isinstance(key, int) else key.get('frame') if isinstance(key, dict) else None
        yield key, perturb(img, kind, level, np.random.default_rng(seed + [n if frame is None else frame]))


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
    util.faces.WeightsNotFoundError, or WorkerError after writing the manifests of
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
        if not args.overwrite:
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
    failure_rows = write_failures(args.output)

    # 4. summary
    total = Counter()
    for rec in journal.items.values():
        total.update(rec['stats'])
    reasons = Counter(_reason_kind(r[1]) for r in failure_rows)
    summary = dict(items=len(items), already_done=len(items) - len(pending), processed=run['items'],
                   interrupted=interrupted, seconds=round(time.time() - t0, 1),
                   this_run={k: run[k] for k in ('videos', 'images', 'frames', 'faces')},
                   videos=total['videos'], images=total['images'], frames=total['frames'],
                   frames_unreadable=total['frames_unreadable'], faces=total['faces'],
                   failures=dict(reasons), manifests=manifests)
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
        init_worker(opts)
        if opts['workers'] == 1:
            results = map(process_item, pending)
        else:
            _STATE.clear()                  # the check's landmarker: its GPU memory back for the workers
            if 'torch' in sys.modules and sys.modules['torch'].cuda.is_available():
                sys.modules['torch'].cuda.empty_cache()
            # spawn, not fork: a forked child can deadlock on thread pools (OpenCV, OpenMP, CUDA)
            # that the parent had started. A worker that dies (killed when out of memory)
            # breaks this pool at once (BrokenProcessPool), where multiprocessing.Pool would hang.
            pool = ProcessPoolExecutor(opts['workers'], mp_context=mp.get_context('spawn'),
                                       initializer=init_pool_worker, initargs=(opts,))
            results = (f.result() for f in as_completed([pool.submit(process_item, it) for it in pending]))
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
        _STATE.clear()


def _print_summary(s, args):
    lines = [f'done in {s["seconds"]} s: {s["processed"]} items processed now, {s["already_done"]} were done '
             f'before ({s["items"]} in all)' + (' -- INTERRUPTED' if s['interrupted'] else ''),
             f'  totals: videos {s["videos"]}, photos {s["images"]}, frames {s["frames"]} '
             f'(+{s["frames_unreadable"]} unreadable), faces {s["faces"]}',
             '  failures: ' + (', '.join(f'{k} {v}' for k, v in sorted(s['failures'].items())) or 'none')
             + f'  (see {os.path.join(args.output, "failures.csv")})']
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
