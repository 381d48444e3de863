"""Self-blended images (SBI; Shiohara & Yamasaki, CVPR 2022): a pseudo-fake made from one real face alone.

Invariant: `fake` equals `img` exactly wherever `mask` is 0. The target of the blend is the untouched image;
only the source copy is altered, so every difference between a pair lies inside the (blurred, deformed)
landmark hull, and a detector can learn nothing from it but blending boundaries and source/target mismatch.

    self_blend(img, landmarks, rng) -> (fake, mask)
        img uint8 [H, W, 3] RGB; landmarks float32 [68, 2] iBUG-68 in img's pixels; rng a numpy Generator
        fake uint8 [H, W, 3]; mask float32 [H, W] in [0, 1]; fake = source * mask + img * (1 - mask)

Three parts, as in the paper:
  source-target generator  a copy of the face with its colour (RGB shift, hue / saturation, brightness /
                           contrast) and frequency content (downscale or sharpen) changed, then slightly
                           rescaled and translated;
  mask generator           the convex hull of the landmarks, moved with the source, elastically deformed,
                           blurred twice with random Gaussian kernels, times a blend ratio from
                           {0.25, 0.5, 0.75, 1, 1, 1};
  blending                 fake = source * M + target * (1 - M).
All randomness comes from `rng` (the same Generator state gives the same pair). The colour and frequency
transforms are torchvision's (v2 functional) with their parameters drawn here; albumentations, which the
authors use, would install opencv-python-headless over this project's opencv-python.

In stage 2 (`main_finetune.py --pseudo_fakes sbi`), PseudoFakePairs makes the pairs in the DataLoader workers:
each real face with its fake partner under one crop and flip; collate_pairs puts the pairs side by side.
Differences from the paper: docs/self_blending.md.
"""
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from util.datasets import DataError, ReportOnce, probe_usable, read_image_rgb, read_replacing
from util.landmarks import NUM_LANDMARKS, load_landmarks
from util.misc import num_threads

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
MIN_HULL_FRACTION = 0.01        # a landmark hull below 1% of the image is no usable face
MASK_WORK_SIZE = (192, 257)     # the mask is shaped at a random size in [192, 256] px, whatever the image size
BLUR_KERNELS = np.arange(5, 26, 2)


class UnusableLandmarks(ValueError):
    """The landmarks cannot define a face region to blend (missing, non-finite, degenerate or off-image)."""


# ---------------------------------------------------------------------- landmarks
def check_landmarks(landmarks, height, width):
    """float32 [68, 2] landmarks usable for blending on an H x W image, or UnusableLandmarks saying why."""
    if landmarks is None:
        raise UnusableLandmarks('no landmarks')
    lm = np.asarray(landmarks, np.float32)
    if lm.shape != (NUM_LANDMARKS, 2):
        raise UnusableLandmarks(f'landmarks of shape {lm.shape}, expected ({NUM_LANDMARKS}, 2)')
    if not np.isfinite(lm).all():
        raise UnusableLandmarks('landmarks with NaN or inf')
    inside = (lm[:, 0] >= 0) & (lm[:, 0] <= width - 1) & (lm[:, 1] >= 0) & (lm[:, 1] <= height - 1)
    if inside.mean() < 0.5:
        raise UnusableLandmarks(f'{int((~inside).sum())} of {NUM_LANDMARKS} landmarks lie off the image')
    area = cv2.contourArea(cv2.convexHull(lm))
    if area < MIN_HULL_FRACTION * height * width:
        raise UnusableLandmarks(f'landmark hull of {area:.0f} px^2 is under {MIN_HULL_FRACTION:.0%} of the image')
    return lm


# ---------------------------------------------------------------------- source-target generator
def _alter_source(img, rng):
    """The source copy: colour, then frequency (downscale or sharpen). uint8 [H, W, 3] -> same.

    One face is far too small to share among threads: with several (the main process of a loader without
    workers) the threads' hand-offs cost ten times the work, so it runs on one, as in a DataLoader worker."""
    with num_threads(1, opencv=False):
        return _alter_source_1thread(img, rng)


def _alter_source_1thread(img, rng):
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)            # [3, H, W] uint8
    if rng.random() < 0.3:                                                     # RGB shift of up to 20 levels
        shift = torch.from_numpy(rng.integers(-20, 21, 3).astype(np.int16)).view(3, 1, 1)
        t = (t.to(torch.int16) + shift).clamp_(0, 255).to(torch.uint8)
    t = TF.adjust_hue(t, float(rng.uniform(-0.015, 0.015)))
    t = TF.adjust_saturation(t, float(rng.uniform(0.85, 1.15)))
    t = TF.adjust_brightness(t, float(rng.uniform(0.9, 1.1)))
    t = TF.adjust_contrast(t, float(rng.uniform(0.9, 1.1)))
    h, w = t.shape[-2:]
    if rng.random() < 0.5:                                                     # downscale by 2 or 4 and back
        r = int(rng.choice([2, 4]))
        small = TF.resize(t, [max(1, h // r), max(1, w // r)], interpolation=TF.InterpolationMode.NEAREST)
        t = TF.resize(small, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    else:
        t = TF.adjust_sharpness(t, float(rng.uniform(1.5, 3.0)))
    return t.permute(1, 2, 0).contiguous().numpy()


def _random_affine(h, w, rng):
    """2 x 3 matrix: scale in [0.95, 1/0.95] about the centre, shift up to 3% (x) and 1.5% (y) of the size."""
    s = rng.uniform(0.95, 1 / 0.95)
    tx, ty = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.015, 0.015) * h
    cx, cy = (w - 1) / 2, (h - 1) / 2
    return np.array([[s, 0, cx - s * cx + tx], [0, s, cy - s * cy + ty]], np.float64)


# ---------------------------------------------------------------------- mask generator
def _elastic(mask, rng, alpha=50.0, sigma=7.0):
    """Warp `mask` by a smooth random displacement field (alpha px x Gaussian-smoothed noise of scale sigma)."""
    h, w = mask.shape
    d = [cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma) * alpha for _ in range(2)]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mask, gx + d[0], gy + d[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _blend_mask(lm, h, w, affine, rng):
    """float32 [H, W] in [0, 1]: hull -> affine (as the source) -> elastic -> blur, cut, blur -> x ratio."""
    mh, mw = (int(v) for v in rng.integers(*MASK_WORK_SIZE, 2))               # shaped at a random working size
    sx, sy = mw / w, mh / h
    hull = cv2.convexHull(((lm + 0.5) * np.array([sx, sy], np.float32) - 0.5).round().astype(np.int32))
    m = np.zeros((mh, mw), np.float32)
    cv2.fillConvexPoly(m, hull, 1.0)
    a = affine.copy()
    a[0, 2] *= sx                                                              # the same move at the working size
    a[1, 2] *= sy
    m = cv2.warpAffine(m, a, (mw, mh), flags=cv2.INTER_LINEAR, borderValue=0)
    m = _elastic(m, rng)
    k1, k2 = (int(k) for k in rng.choice(BLUR_KERNELS, 2))
    m = cv2.GaussianBlur(m, (k1, k1), 0)
    if m.max() <= 0:
        raise UnusableLandmarks('the deformed landmark hull vanished')
    m = m / m.max()
    m[m < 1] = 0                                                               # keep the core: erodes by ~k1/2
    m = cv2.GaussianBlur(m, (k2, k2), float(rng.integers(5, 46)))
    if m.max() <= 0:
        raise UnusableLandmarks('the deformed landmark hull vanished')
    m = cv2.resize(m / m.max(), (w, h), interpolation=cv2.INTER_LINEAR)
    m[m < 1e-3] = 0                                                            # no invisible tails
    return np.clip(m * float(rng.choice(BLEND_RATIOS)), 0, 1).astype(np.float32)


# ---------------------------------------------------------------------- blending
def self_blend(img, landmarks, rng):
    """A self-blended pseudo-fake of `img` -> (fake uint8 [H, W, 3], mask float32 [H, W] in [0, 1]).

    UnusableLandmarks (a ValueError) when the landmarks cannot define a face region."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'self_blend needs a uint8 [H, W, 3] image, got {img.dtype} {img.shape}')
    h, w = img.shape[:2]
    lm = check_landmarks(landmarks, h, w)
    source = _alter_source(img, rng)
    affine = _random_affine(h, w, rng)
    source = cv2.warpAffine(source, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = _blend_mask(lm, h, w, affine, rng)
    m = mask[..., None]
    blended = np.rint(source.astype(np.float32) * m + img.astype(np.float32) * (1 - m)).astype(np.uint8)
    fake = np.where(m > 0, blended, img)                                       # exact outside the mask
    return fake, mask


# ---------------------------------------------------------------------- stage-2 training pairs
class PseudoFakePairs(Dataset):
    """Stage-2 training items from real faces: each real face with its fake partner, both under one crop and flip.

    The partner is the face's self-blended pseudo-fake, or, with probability 1 - `ratio` when `fakes` (real
    fake Samples) are given, a random one of those. A real face whose landmarks are unusable (missing,
    unreadable, degenerate) cannot be self-blended: its item is the real face alone, with `no_blend` 1; so is a
    face whose crop leaves its partner identical to it (the blended region cut away: a "fake" that is the real).
    An unreadable real image is replaced by another real and counted in `replaced`, as FaceDataset does, and
    the reals are probed when built (DataError when more than half of `probe` evenly spaced ones are unreadable).
    `transform(img, None, generator=g)` gets the same seeded generator for both faces of a pair (FaceTransform,
    or util.augment.TimmTrainTransform for RandAugment), so they share every random choice of the augmentation.
    Item: img uint8 [K, 3, S, S] (real first), label [K] (0, 1), index, replaced, no_blend; K = 2 (or 1).
    All randomness comes from torch's stream (restored on resume; DataLoader seeds it per worker).
    """

    def __init__(self, reals, transform, fakes=(), ratio=1.0, strict=False, probe=64):
        if not reals:
            raise ValueError('no real faces to self-blend')
        self.reals, self.fakes, self.transform = list(reals), list(fakes), transform
        self.ratio = 1.0 if not self.fakes else ratio
        self.strict, self._report_once = strict, ReportOnce()
        if probe:
            probe_usable(lambda i: read_image_rgb(self.reals[i].path), len(self.reals), probe, strict)

    def __len__(self):
        return len(self.reals)

    def _read_real(self, index):
        """(image, sample, index, replaced): an unreadable real is replaced as FaceDataset replaces it."""
        img, idx, replaced = read_replacing(lambda i: read_image_rgb(self.reals[i].path), index, len(self.reals),
                                            self.strict, lambda msg: self._report_once(f'skipped: {msg}'))
        return img, self.reals[idx], idx, replaced

    def _partner(self, img, sample, seed):
        """(fake uint8 [H, W, 3], or None when the face cannot be self-blended)."""
        if self.fakes and torch.rand(1).item() >= self.ratio:
            fake = self.fakes[int(torch.randint(len(self.fakes), (1,)).item())]
            try:
                return read_image_rgb(fake.path)
            except ValueError as e:
                if self.strict:
                    raise DataError(f'{e} (--strict_data)') from None
                self._report_once(f'skipped: {e}')                            # fall back to a pseudo-fake
        try:
            lm = load_landmarks(sample.landmarks) if sample.landmarks else None
            return self_blend(img, lm, np.random.default_rng(seed))[0]
        except ValueError as e:                                                # UnusableLandmarks, bad .npy
            self._report_once(f'{sample.path}: used as a plain real (not self-blended): {e}')
            return None

    def augment(self, faces, seed):
        """Each face under the transform with one generator state: the same crop, flip, ... -> [uint8 [3, S, S]]"""
        g, out = torch.Generator(), []
        for face in faces:
            g.manual_seed(seed)
            out.append(self.transform(face, None, generator=g)[0])
        return out

    def __getitem__(self, index):
        img, sample, idx, replaced = self._read_real(index)
        seed = int(torch.randint(2 ** 62, (1,)).item())
        fake = self._partner(img, sample, seed)
        xs = self.augment((img, fake) if fake is not None else (img,), seed)
        if len(xs) == 2 and torch.equal(xs[0], xs[1]):     # the crop cut the blended region away: no fake left
            xs.pop()
        return dict(img=torch.stack(xs), label=torch.tensor([0, 1][:len(xs)]), index=idx, replaced=replaced,
                    no_blend=int(len(xs) == 1))


def collate_pairs(items):
    """PseudoFakePairs items -> one batch of their images, pairs side by side (img [sum K, 3, S, S], label,
    index per image; replaced and no_blend per item)."""
    return dict(img=torch.cat([it['img'] for it in items]), label=torch.cat([it['label'] for it in items]),
                index=torch.tensor([it['index'] for it in items for _ in range(len(it['label']))]),
                replaced=torch.tensor([it['replaced'] for it in items]),
                no_blend=torch.tensor([it['no_blend'] for it in items]))


def count_unusable_landmarks(samples):
    """How many of the Samples have no landmark file or one that cannot be read (checked as the loader reads it)."""
    bad = 0
    for s in samples:
        try:
            if not s.landmarks:
                raise ValueError('no landmarks')
            load_landmarks(s.landmarks)
        except ValueError:
            bad += 1
    return bad
