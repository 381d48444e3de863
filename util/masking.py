"""Patch masks for the spatial branch: facial-region-guided masking and vanilla MAE random masking.

A mask is a BoolTensor [L] over the patches of one image in row-major order, True = removed
(MAE's "1 is remove"). Every mask removes exactly `num_masked(L, mask_ratio)` patches, so a batch of
masks always has a static shape and the model can pick visible tokens with `gather`.

Strategies are looked up by name in MASK_STRATEGIES (--mask_strategy); each takes the augmented image's
landmarks (or None) and returns (mask, fell_back): fell_back is True when a facial mask had to be random
because no facial region survived the crop (images without landmarks are counted apart by the caller).
"""
import cv2
import numpy as np
import torch

from util.landmarks import FACIAL_REGIONS

REGION_NAMES = tuple(FACIAL_REGIONS)          # right_eye, left_eye, nose, mouth
_REGION_INDICES = [np.array(FACIAL_REGIONS[k]) for k in REGION_NAMES]
_REGION_ALL = np.concatenate(_REGION_INDICES)
_REGION_SIZES = np.array([len(i) for i in _REGION_INDICES])
_REGION_STARTS = np.concatenate([[0], np.cumsum(_REGION_SIZES)[:-1]])


def num_masked(num_patches, mask_ratio):
    """How many of `num_patches` a mask removes: round(L * mask_ratio)."""
    return int(round(num_patches * mask_ratio))


def check_mask_count(mask, mask_ratio):
    """Raise ValueError unless every row of `mask` [N, L] (True = removed) removes num_masked(L, mask_ratio)
    patches: the model keeps a fixed number of tokens (static shapes), so another count would silently drop
    visible patches or keep removed ones. Meant for CPU masks (on a GPU it would be a host synchronisation)."""
    want = num_masked(mask.shape[1], mask_ratio)
    counts = mask.sum(dim=1)
    if not bool((counts == want).all()):
        raise ValueError(f'a mask removes {int(counts.min())} to {int(counts.max())} of {mask.shape[1]} patches; '
                         f'mask ratio {mask_ratio} needs exactly {want}')


def random_mask(num_patches, mask_ratio, generator=None):
    """Vanilla MAE masking: a uniformly random subset of round(L * mask_ratio) patches. -> [L] bool"""
    mask = torch.zeros(num_patches, dtype=torch.bool)
    perm = torch.randperm(num_patches, generator=generator)
    mask[perm[:num_masked(num_patches, mask_ratio)]] = True
    return mask


def region_patches(landmarks, region, img_size, patch_size=16, dilate=4):
    """Patches touched by one facial region: the convex hull of its landmarks, dilated by `dilate` px.

    landmarks: [68, 2] in pixels of the img_size x img_size image; region: a name of REGION_NAMES.
    Returns a numpy bool array [L] in row-major patch order. Only the patch-aligned bounding box of
    the dilated hull is rasterised, which keeps this cheap enough for every sample of every epoch.
    """
    grid = img_size // patch_size
    touched = np.zeros((grid, grid), bool)
    pts = np.asarray(landmarks, np.float32)[FACIAL_REGIONS[region]]
    lo = np.floor((pts.min(0) - dilate - 1) / patch_size).astype(int).clip(0, grid)   # patch box (x, y)
    hi = np.ceil((pts.max(0) + dilate + 2) / patch_size).astype(int).clip(0, grid)
    if (hi <= lo).any():                                  # the region lies outside the image
        return touched.reshape(-1)
    canvas = np.zeros(((hi[1] - lo[1]) * patch_size, (hi[0] - lo[0]) * patch_size), np.uint8)
    shift = 4                                             # sub-pixel vertex precision (1/16 px)
    local = (pts - lo * patch_size) * (1 << shift)
    hull = cv2.convexHull(np.round(local).astype(np.int32))
    cv2.fillConvexPoly(canvas, hull, 1, lineType=cv2.LINE_8, shift=shift)
    if dilate > 0:
        cv2.polylines(canvas, [hull], True, 1, thickness=2 * dilate + 1, lineType=cv2.LINE_8, shift=shift)
    h, w = hi[1] - lo[1], hi[0] - lo[0]
    touched[lo[1]:hi[1], lo[0]:hi[0]] = canvas.reshape(h, patch_size, w, patch_size).max(axis=(1, 3)) > 0
    return touched.reshape(-1)


def visible_regions(landmarks, img_size, min_inside=0.5):
    """Indices into REGION_NAMES of the regions with at least `min_inside` of their landmarks inside the
    img_size x img_size image (after the crop); landmarks: numpy [68, 2]."""
    pts = landmarks[_REGION_ALL]                                               # the regions' landmarks, in order
    if pts.min() >= 0 and pts.max() < img_size:                                 # the common case: all inside
        return list(range(len(REGION_NAMES)))
    inside = ((pts >= 0) & (pts < img_size)).all(axis=1)
    counts = np.add.reduceat(inside, _REGION_STARTS)
    return np.flatnonzero(counts >= min_inside * _REGION_SIZES).tolist()


def facial_region_mask(landmarks, img_size, patch_size=16, mask_ratio=0.75, num_regions=1,
                       generator=None, dilate=4, return_fallback=False):
    """Facial-region-guided mask: hide whole facial parts, then fill the budget at random.

    Picks `num_regions` at random among the regions (right eye+brow, left eye+brow, nose, mouth) still
    visible in the image (at least half of their landmarks inside; fewer when fewer are visible), removes
    every patch their dilated convex hulls touch, and fills the rest of the budget uniformly from the other
    patches. If the chosen regions alone exceed the budget, a random subset of their patches is removed.
    `landmarks=None`, or no visible region, gives plain random masking. Exactly round(L * mask_ratio)
    patches are removed. landmarks: [68, 2] (numpy or torch) in pixels of the img_size x img_size input.
    -> [L] bool, or (mask, fell_back) with `return_fallback` (fell_back: landmarks given, no region visible)
    """
    grid = img_size // patch_size
    L = grid * grid
    if torch.is_tensor(landmarks):
        landmarks = landmarks.detach().cpu().numpy()
    visible = visible_regions(landmarks, img_size) if landmarks is not None else []
    if not visible:
        mask = random_mask(L, mask_ratio, generator)
        return (mask, landmarks is not None) if return_fallback else mask
    budget = num_masked(L, mask_ratio)

    chosen = [visible[i] for i in torch.randperm(len(visible), generator=generator)[:num_regions].tolist()]
    in_region = np.zeros(L, bool)
    for r in chosen:
        in_region |= region_patches(landmarks, REGION_NAMES[r], img_size, patch_size, dilate)
    region_idx, other_idx = np.flatnonzero(in_region), np.flatnonzero(~in_region)

    mask = np.zeros(L, bool)                          # numpy indexing: a third of torch's cost at this size
    if len(region_idx) >= budget:                     # regions alone exceed the budget
        mask[region_idx[torch.randperm(len(region_idx), generator=generator)[:budget].numpy()]] = True
    else:
        mask[region_idx] = True
        fill = other_idx[torch.randperm(len(other_idx), generator=generator)[:budget - len(region_idx)].numpy()]
        mask[fill] = True
    mask = torch.from_numpy(mask)
    return (mask, False) if return_fallback else mask


def _facial(landmarks, img_size, patch_size, mask_ratio, num_regions=1, generator=None):
    return facial_region_mask(landmarks, img_size, patch_size, mask_ratio, num_regions, generator,
                              return_fallback=True)


def _random(landmarks, img_size, patch_size, mask_ratio, num_regions=1, generator=None):
    return random_mask((img_size // patch_size) ** 2, mask_ratio, generator), False


# --mask_strategy name -> (landmarks or None, img_size, patch_size, mask_ratio, num_regions, generator)
#                          -> (mask [L] bool, fell_back)
MASK_STRATEGIES = {
    'facial': _facial,          # facial-region-guided masking (the paper's)
    'random': _random,          # vanilla MAE random masking
}
