"""The dataset layouts prepare_faces.py reads: one lister per --dataset, in the table LISTERS.

A lister takes the parsed arguments and returns (tag, items, listing failures, notes): the items
(described below) are the units of work and of resumability, the tag names their journal.
"""
import csv
import json
import os
import re
from collections import Counter

from preprocess import faces as F
from util import formats

FFPP_METHODS = ('Deepfakes', 'Face2Face', 'FaceSwap', 'NeuralTextures', 'FaceShifter')
FFPP_COMPRESSIONS = ('raw', 'c23', 'c40')
IMAGES_PER_ITEM = 64          # photos are processed (and journaled) in groups of this size


class LayoutError(ValueError):
    """The input does not look like the chosen --dataset layout."""


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

def rel_path(path, root):
    return os.path.relpath(path, root).replace(os.sep, '/')


def strip_ext(rel):
    return os.path.splitext(rel)[0]


def join_rel(*parts):
    """Relative path from parts, leaving out empty ones and '.' (the --input folder itself)."""
    return '/'.join(p for p in parts if p not in ('', '.'))


def out_stems(names, taken=()):
    """Output stem of each file name of one folder: the name without its extension, or
    with it where the stem would be shared (x.jpg and x.png; clip.mp4 and a sub-folder
    clip/ in ``taken``), so that no two files write the same crops or video id."""
    stems = {n: strip_ext(n) for n in names}
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
    rel = rel_path(path, root)
    return dict(key=rel, kind='video', path=path, source=rel, out=f'faces/{tag}/{out or strip_ext(rel)}',
                video=video, label=label, memberships=memberships, method=method, compression=compression)


def image_items(paths, root, tag, video_of, label, memberships, method='', stems=None):
    """Photos of one folder grouped into items of IMAGES_PER_ITEM; each photo gets its own
    row. stems: output stem by file name (default: out_stems of the photos); video_of:
    output stem relative to faces/<tag>/ -> video id."""
    stems = stems or out_stems([os.path.basename(p) for p in paths])
    rel_dir = rel_path(os.path.dirname(paths[0]), root)
    items = []
    for start in range(0, len(paths), IMAGES_PER_ITEM):
        chunk = paths[start:start + IMAGES_PER_ITEM]
        rel0 = rel_path(chunk[0], root)
        outs = [join_rel(rel_dir, stems[os.path.basename(p)]) for p in chunk]
        images = [dict(path=p, source=rel_path(p, root), out=f'faces/{tag}/{out}', video=video_of(out))
                  for p, out in zip(chunk, outs)]
        items.append(dict(key=f'{os.path.dirname(rel0)}#{start // IMAGES_PER_ITEM}:{rel0}', kind='images',
                          images=images, label=label, memberships=memberships, method=method,
                          compression='', video='', source=os.path.dirname(rel0)))
    return items


def frames_item(frame_paths, root, tag, video, label, memberships, method='', pad=0.0):
    rel_dir = rel_path(os.path.dirname(frame_paths[0]), root)
    return dict(key=rel_dir, kind='frames', frames=list(frame_paths), source=rel_dir,
                out=join_rel(f'faces/{tag}', rel_dir), video=video, label=label, memberships=memberships,
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
    name = safe_name(args.name or os.path.basename(os.path.abspath(root)) or 'folder')
    memberships = [(name, args.split or 'all')]
    method = name if label == '1' else ''              # one unnamed manipulation: the data set's name
    items = []
    for dirpath, filenames in folders:
        media = [f for f in filenames if F.is_video_file(f) or F.is_image_file(f)]
        # stems from the whole folder, so that a file prepared alone gets the same outputs
        stems = out_stems(media, [d for d in os.listdir(dirpath) if os.path.isdir(os.path.join(dirpath, d))])
        media = [f for f in media if only in (None, os.path.join(dirpath, f))]
        rel_dir = rel_path(dirpath, root)
        for f in filter(F.is_video_file, media):
            out = join_rel(rel_dir, stems[f])
            items.append(video_item(os.path.join(dirpath, f), root, name, f'{name}/{out}', label, memberships,
                                    method, out=out))
        images = [os.path.join(dirpath, f) for f in media if F.is_image_file(f)]
        if only and args.video_per_folder:
            raise LayoutError(f'--video_per_folder takes a folder of frame folders as --input, not the file '
                              f'{args.input}')
        if images and args.video_per_folder:
            items.append(frames_item(sorted(images, key=_natural_key), root, name, join_rel(name, rel_dir), label,
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
            stem = strip_ext(os.path.basename(v))
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
            rel = rel_path(v, root)
            seen.add(rel)
            label = test_labels.get(rel, folders[folder])
            if label != folders[folder]:
                notes.append(f'celebdf: {rel} is labelled {label} by the test list but sits in {folder}')
            split = 'test' if rel in test_labels else 'train'
            items.append(video_item(v, root, 'celebdf', f'celebdf/{folder}/{strip_ext(os.path.basename(v))}',
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
            default_split = 'test' if 'test' in rel_path(dirpath, root).lower() else 'train'
            entries = [(name, '1' if str(m.get('label', '')).upper() == 'FAKE' else '0',
                        m.get('split') or default_split) for name, m in meta.items()]
            source = 'metadata.json'
        for filename, label, split in entries:
            path = _find_video(dirpath, filename)
            if path is None:
                failures.append((os.path.join(dirpath, filename), f'missing: named in {source}'))
                continue
            rel = rel_path(path, root)
            items.append(video_item(path, root, 'dfdc', f'dfdc/{strip_ext(rel)}', label, [('dfdc', split)],
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
                rel = rel_path(dirpath, root)
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


def dfb_landmark_path(frame_path):
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
            rel_dir = rel_path(os.path.dirname(frames[0]), root)
            item = videos.get(rel_dir)
            if item is None:
                item = dict(key=rel_dir, kind='dfb', frames=frames, source=rel_dir, out='faces/deepfakebench',
                            video=f'deepfakebench/{rel_dir}', label=_dfb_label(entry.get('label', label_name)),
                            memberships=[], method=label_name, compression=comp, root=root)
                videos[rel_dir] = item
            if (dataset, split) not in item['memberships']:
                item['memberships'].append((safe_name(dataset), split))
    notes = [f'deepfakebench: {malformed} malformed entries skipped'] if malformed else []
    if not videos and not failures:
        raise LayoutError(f'deepfakebench: no videos in {", ".join(jsons)}')
    return 'deepfakebench', list(videos.values()), failures, notes


LISTERS = dict(folder=list_folder, vggface2=list_vggface2, ffpp=list_ffpp, celebdf=list_celebdf,
               dfdc=list_dfdc, wilddeepfake=list_wilddeepfake, deepfakebench=list_deepfakebench)


def safe_name(name):
    return re.sub(r'[^A-Za-z0-9_.+-]+', '_', str(name)).strip('_') or 'dataset'
