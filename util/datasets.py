"""Face data: manifests and folders of face crops with landmarks, augmentation that moves the landmarks,
and per-sample facial-region masks made in the DataLoader workers.

A manifest is a CSV whose header starts `path,landmarks,label,video,dataset` (util/formats.py: more columns
allowed; a byte-order mark is read); paths are relative to the CSV; `landmarks` names a float32 [68, 2] .npy
(empty = none); label 1 = fake, 0 = real, empty = unknown; an optional `method` column names the manipulation
of each fake. A folder is scanned recursively for images, each with an optional sidecar `<same stem>.npy` of
landmarks. Pixels are read by util/formats.read_image_rgb, the reader of every stage.
"""
import csv
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from util.formats import IMAGE_EXTENSIONS, MANIFEST_COLUMNS, MANIFEST_ENCODING, read_image_rgb  # noqa: F401
from util.landmarks import NUM_LANDMARKS, crop_resize_landmarks, hflip_landmarks, load_landmarks
from util.masking import MASK_STRATEGIES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_LABEL = -1

cv2.setNumThreads(1)      # one thread per DataLoader worker; the workers are the parallelism


@dataclass
class Sample:
    path: str
    landmarks: str | None      # path of the .npy, or None
    label: int                 # 1 = fake, 0 = real, NO_LABEL = unknown
    video: str
    dataset: str
    method: str = ''           # manipulation of a fake (optional `method` column), source set of a real or ''


# ---------------------------------------------------------------------- sources
def read_manifest(csv_path):
    """Read a manifest CSV into Samples with absolute paths; a one-line error for a malformed file."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f'{csv_path}: manifest not found')
    root = csv_path.parent
    samples = []
    with open(csv_path, newline='', encoding=MANIFEST_ENCODING) as f:
        reader = csv.DictReader(f)
        try:
            fieldnames, rows = reader.fieldnames or [], list(reader)
        except UnicodeDecodeError as e:
            raise ValueError(f'{csv_path}: manifest is not UTF-8 text ({e.reason} at byte {e.start}); '
                             f'save it as UTF-8') from None
        except csv.Error as e:
            raise ValueError(f'{csv_path}:{reader.line_num}: not a readable CSV file ({e})') from None
        missing = [c for c in MANIFEST_COLUMNS if c not in fieldnames]
        if missing:
            raise ValueError(f'{csv_path}: manifest header lacks column(s) {", ".join(missing)}'
                             f' (expected {",".join(MANIFEST_COLUMNS)},...)')
        for line, row in enumerate(rows, start=2):
            label = (row['label'] or '').strip()
            if label not in ('', '0', '1'):
                raise ValueError(f'{csv_path}:{line}: label must be 0 (real), 1 (fake) or empty, got {label!r}')
            lm, path = (row['landmarks'] or '').strip(), (row['path'] or '').strip()
            if not path:
                raise ValueError(f'{csv_path}:{line}: the row has no path')
            samples.append(Sample(
                path=str(root / path),
                landmarks=str(root / lm) if lm else None,
                label=int(label) if label else NO_LABEL,
                video=row['video'] or path,
                dataset=row['dataset'] or csv_path.stem,
                method=(row.get('method') or '').strip()))
    if not samples:
        raise ValueError(f'{csv_path}: manifest has no rows')
    return samples


def scan_folder(folder):
    """Images below `folder` (recursively), each with its sidecar landmarks when one exists."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder}: data folder not found')
    samples = []
    for dirpath, _, files in os.walk(folder):
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = Path(dirpath) / name
                lm = path.with_suffix('.npy')
                samples.append(Sample(str(path), str(lm) if lm.is_file() else None, NO_LABEL,
                                      str(path.parent.relative_to(folder)), folder.name))
    samples.sort(key=lambda s: s.path)
    if not samples:
        raise ValueError(f'{folder}: no images ({", ".join(IMAGE_EXTENSIONS)}) found')
    return samples


def load_samples(data_path):
    """A manifest CSV or a folder of images -> list of Samples."""
    return read_manifest(data_path) if str(data_path).lower().endswith('.csv') else scan_folder(data_path)


def drop_duplicates(samples):
    """Samples without exact repeats (same image, landmarks, label, video and dataset), first occurrence kept,
    order unchanged. -> (samples, number of repeats left out)"""
    unique = list(dict.fromkeys((s.path, s.landmarks, s.label, s.video, s.dataset) for s in samples))
    return [Sample(*u) for u in unique], len(samples) - len(unique)


def landmarks_in_image(landmarks, h, w):
    """Whether at least half of the points lie inside the h x w image. Landmarks that do not (all at -1000,
    or given in the pixels of another image) cannot guide masking and count as absent."""
    x, y = landmarks[:, 0], landmarks[:, 1]
    inside = (x > -0.5) & (x < w - 0.5) & (y > -0.5) & (y < h - 0.5)
    return 2 * int(inside.sum()) >= NUM_LANDMARKS


def hwc_to_chw(img):
    """uint8 [H, W, 3] numpy -> contiguous uint8 tensor [3, H, W]. cv2.split writes each channel straight into
    its plane of the output (about 15x faster than a permuted copy on one core, ~10% of a worker's time)."""
    out = np.empty((3, *img.shape[:2]), np.uint8)
    cv2.split(img, list(out))
    return torch.from_numpy(out)


# ---------------------------------------------------------------------- augmentation
class FaceTransform:
    """RandomResizedCrop + horizontal flip (train) or a plain resize (eval), landmarks moved along.

    Eval with `crop_pct` (e.g. 224/256): the central square that a resize of the shorter side to
    int(S / crop_pct) followed by an S x S centre crop keeps (timm's / MAE's evaluation), resized to S.

    Returns (normalised float tensor [3, S, S], landmarks [68, 2] in pixels of the S x S output or None).
    """

    def __init__(self, input_size, train=True, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, normalize=True, crop_pct=None):
        self.size, self.train, self.scale, self.ratio, self.hflip = input_size, train, scale, ratio, hflip
        self.crop_pct = crop_pct
        self.normalize = normalize          # False: uint8 [3, S, S], normalised on the GPU (normalize_batch)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def crop_box(self, h, w, generator=None):
        """A RandomResizedCrop box (x0, y0, cw, ch): area fraction in `scale`, aspect ratio in `ratio`."""
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            u = torch.rand(4, generator=generator).tolist()
            target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return int(u[2] * (w - cw + 1)), int(u[3] * (h - ch + 1)), cw, ch
        side = min(h, w)                                  # fallback: central square
        return (w - side) // 2, (h - side) // 2, side, side

    def eval_box(self, h, w):
        """The whole image, or with crop_pct the centre crop's box in source pixels (x0, y0, cw, ch)."""
        if not self.crop_pct:
            return 0, 0, w, h
        scale = int(self.size / self.crop_pct) / min(h, w)                  # the resize of the shorter side
        cw, ch = min(w, int(round(self.size / scale))), min(h, int(round(self.size / scale)))
        return (w - cw) // 2, (h - ch) // 2, cw, ch

    def __call__(self, img, landmarks=None, generator=None):
        h, w = img.shape[:2]
        box = self.crop_box(h, w, generator) if self.train else self.eval_box(h, w)
        x0, y0, cw, ch = box
        crop = img[y0:y0 + ch, x0:x0 + cw]
        # area averaging only where it matters against aliasing (shrinking by more than 1.5x)
        strong_shrink = max(cw, ch) > 1.5 * self.size
        crop = cv2.resize(crop, (self.size, self.size),
                          interpolation=cv2.INTER_AREA if strong_shrink else cv2.INTER_LINEAR)
        if landmarks is not None:
            landmarks = crop_resize_landmarks(landmarks, box, self.size)
        if self.train and self.hflip > 0 and torch.rand(1, generator=generator).item() < self.hflip:
            crop = cv2.flip(crop, 1)
            if landmarks is not None:
                landmarks = hflip_landmarks(landmarks, self.size)
        x = hwc_to_chw(crop)                                           # [3, S, S] uint8
        if not self.normalize:
            return x, landmarks
        return x.float().div_(255).sub_(self.mean).div_(self.std), landmarks


@functools.lru_cache(maxsize=8)
def _scaled_stats(device, mean, std):
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255
    s = torch.tensor(std).view(1, 3, 1, 1) * 255
    return m.to(device), s.to(device)


def normalize_batch(x, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 [N, 3, H, W] (on any device) -> normalised float32, as FaceTransform(normalize=True) gives.

    The constants are cached per device, so the call adds no host-to-device copy to the step.
    """
    m, s = _scaled_stats(x.device, tuple(mean), tuple(std))
    return (x.float() - m) / s


def denormalize(x, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Normalised [..., 3, H, W] -> [0, 1] for display."""
    m = torch.tensor(mean, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, device=x.device).view(3, 1, 1)
    return (x * s + m).clamp(0, 1)


# ---------------------------------------------------------------------- dataset
class DataError(ValueError):
    """Data that must stop the run: most of a data set unusable, or with `strict` one unusable sample.
    One line: raised again in the main process by a DataLoader, the message it is rebuilt from (which carries
    the worker's traceback) is cut back to the original line."""

    def __init__(self, msg):
        if 'Traceback' in msg:
            msg = msg.rstrip().splitlines()[-1].split(f'{type(self).__name__}: ', 1)[-1]
        super().__init__(msg)


def read_replacing(read, index, num, strict, report):
    """`read(index)`, or when it raises ValueError: the reason reported (`report(msg)`) and another index among
    `num` drawn at random from torch's stream, at most 50 times in a row. -> (value, index, replaced).
    DataError (one line) with `strict`, or on the 51st unusable sample: most of the data set is unusable."""
    replaced, idx = 0, index
    while True:
        try:
            return read(idx), idx, replaced
        except ValueError as e:
            if strict:
                raise DataError(f'{e} (--strict_data)') from None
            report(str(e))
            replaced += 1
            if replaced > 50:
                raise DataError(f'{replaced} unusable samples drawn in a row, the last {e}: most of '
                                f'the data set is unusable') from None
            idx = int(torch.randint(num, (1,)).item())


class ReportOnce:
    """report(msg): prints `[data] <prefix><msg>` the first time `msg` comes (per process: each loader worker
    names a bad file once)."""

    def __init__(self, prefix=''):
        self.prefix, self.seen = prefix, set()

    def __call__(self, msg):
        if msg not in self.seen:
            self.seen.add(msg)
            print(f'[data] {self.prefix}{msg}', flush=True)


def probe_usable(read, num_items, num, strict):
    """Read `num` of `num_items` evenly spaced items with `read(index)`; DataError (one line with the counts and
    the first reasons) when more than half of them raise ValueError, or with `strict` when one does."""
    picks = sorted(set(np.linspace(0, num_items - 1, min(num, num_items)).round().astype(int)))
    bad = []
    for i in picks:
        try:
            read(int(i))
        except ValueError as e:
            if strict:
                raise DataError(f'{e} (--strict_data)') from None
            bad.append(str(e))
    if 2 * len(bad) > len(picks):
        raise DataError(f'{len(bad)} of {len(picks)} samples checked (evenly spaced over '
                        f'{num_items}) are unusable, e.g. {"; ".join(bad[:3])}')


class ExitOnDataError:
    """A DataLoader whose DataError (from any worker) ends the program with one line `<prog>: error: <msg>`
    instead of a stack trace; everything else is the loader's."""

    def __init__(self, loader, prog):
        self.loader, self.prog = loader, prog

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        if name == 'loader':                   # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        try:
            yield from self.loader
        except DataError as e:
            raise SystemExit(f'{self.prog}: error: {e}') from None


class FaceDataset(Dataset):
    """Face crops with landmarks, labels and (optionally) per-sample patch masks.

    Each item is a dict: img [3, S, S], label (NO_LABEL when unknown), index, has_landmarks,
    replaced (how many unusable samples were skipped to produce it) and, when `mask_strategy` is set,
    mask [L] bool (True = removed) built from the augmented landmarks, and mask_fallback (a facial mask made
    random because no facial region survived the crop).
    An unusable sample (unreadable image; landmark file unreadable, of the wrong shape or with NaNs) is
    reported once (naming the file) and, for training, replaced by another sample and counted. With
    `drop_unusable` (evaluation) it is never replaced: its item keeps its index, holds a black image and
    `unusable` True, for the caller to drop and count (every item then has `unusable`). With `strict`
    an unusable sample is a DataError naming the file. Landmarks mostly outside their image are read as none
    (random masking; counted by has_landmarks False, like a sample without landmarks).
    A training set (not `drop_unusable`) is probed when built: DataError, one line with the counts and the
    first few files, when more than half of `probe` evenly spaced samples are unusable. Every DataError is one
    line; ExitOnDataError makes a loader end the program with it.
    """

    def __init__(self, samples, transform, mask_strategy=None, patch_size=16, mask_ratio=0.75,
                 num_regions=1, strict=False, require_label=False, drop_unusable=False, probe=64):
        if mask_strategy is not None and mask_strategy not in MASK_STRATEGIES:
            raise ValueError(f'unknown mask strategy {mask_strategy!r} ({" | ".join(MASK_STRATEGIES)})')
        if require_label:
            unlabelled = [s.path for s in samples if s.label == NO_LABEL]
            if unlabelled:
                raise ValueError(f'{len(unlabelled)} sample(s) have no label, e.g. {unlabelled[0]}')
        self.samples, self.transform = samples, transform
        self.mask_strategy, self.patch_size = mask_strategy, patch_size
        self.mask_ratio, self.num_regions, self.strict = mask_ratio, num_regions, strict
        self.drop_unusable = drop_unusable
        self._report_once = ReportOnce('skipped: ')
        if not drop_unusable and probe:
            probe_usable(lambda i: self._read(self.samples[i]), len(samples), probe, strict)

    def __len__(self):
        return len(self.samples)

    def _read(self, sample):
        """(RGB image, landmarks [68, 2] or None); ValueError naming the file when either is unusable.
        Landmarks are read only for masks (stage 1): a detector's frames never fail over their sidecar."""
        img = read_image_rgb(sample.path)
        if not (sample.landmarks and self.mask_strategy is not None):
            return img, None
        lm = load_landmarks(sample.landmarks)
        return img, lm if landmarks_in_image(lm, *img.shape[:2]) else None

    def __getitem__(self, index):
        unusable = False
        if self.drop_unusable:                         # evaluation: left out and counted, never replaced
            idx, replaced = index, 0
            try:
                img, lm = self._read(self.samples[idx])
            except ValueError as e:
                if self.strict:
                    raise DataError(f'{e} (--strict_data)') from None
                self._report_once(str(e))
                unusable, lm = True, None
        else:
            (img, lm), idx, replaced = read_replacing(lambda i: self._read(self.samples[i]), index,
                                                      len(self.samples), self.strict, self._report_once)
        sample = self.samples[idx]
        if unusable:
            size = self.transform.size
            x = torch.zeros(3, size, size, dtype=torch.float32 if self.transform.normalize else torch.uint8)
        else:
            x, lm = self.transform(img, lm)
        item = dict(img=x, label=sample.label, index=idx, has_landmarks=lm is not None, replaced=replaced)
        if self.drop_unusable:
            item['unusable'] = unusable
        if self.mask_strategy is not None:
            size = x.shape[-1]
            item['mask'], item['mask_fallback'] = MASK_STRATEGIES[self.mask_strategy](
                lm, size, self.patch_size, self.mask_ratio, self.num_regions)
        return item
