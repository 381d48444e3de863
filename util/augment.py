"""Stage-2 training augmentation as timm builds it for ViT fine-tuning (the reference recipe), on this
pipeline's terms: workers hand out uint8 images, the device normalises them.

timm's training transform is three parts (create_transform(..., separate=True)): RandomResizedCrop
(bicubic) + horizontal flip, RandAugment, then ToTensor / Normalize / RandomErasing. The first two run in
the worker on a PIL image and return uint8 [3, S, S]; random erasing needs the normalised image
(its 'pixel' mode draws N(0, 1) noise in normalised units), so it runs on the device batch right after
normalisation, as timm's own prefetching loader does.
"""
import contextlib
import random

import numpy as np
import torch
from PIL import Image

from util.datasets import IMAGENET_MEAN, IMAGENET_STD


def check_posterize_zero_bits():
    """RandAugment's increasing posterize keeps 4 down to 0 bits; at magnitude 9 + std 0.5 about 1 draw in 500
    asks for 0 (a black image). Pillow 13 refuses bits=0 with a ValueError, which would end an epoch at random;
    requirements.txt pins a Pillow that accepts it. Checked here once, so that a wrong Pillow fails at start."""
    from PIL import ImageOps
    try:
        ImageOps.posterize(Image.new('RGB', (1, 1)), 0)
    except ValueError:
        import PIL
        raise RuntimeError(f'RandAugment needs a Pillow that posterizes to 0 bits (Pillow {PIL.__version__} '
                         'refuses it); install the pinned pillow from requirements.txt, or pass --aa none') from None


@contextlib.contextmanager
def seeded_global_streams(seed):
    """Python's, NumPy's and torch's global streams (the ones timm draws from) seeded with `seed` for the block,
    then put back as they were."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class TimmTrainTransform:
    """timm's RandomResizedCrop (scale, bicubic) + flip + RandAugment `aa` ('none': off) on an RGB uint8
    [H, W, 3] array. -> (uint8 tensor [3, S, S], None); landmarks are not moved (stage 2 needs none).

    timm draws from Python's, NumPy's and torch's global streams. With a torch `generator`, all three are
    seeded from it for this call and restored afterwards: one generator state, one crop, flip and set of
    RandAugment operations (a real face and its self-blended partner are augmented alike)."""

    def __init__(self, input_size, scale=(0.08, 1.0), aa='rand-m9-mstd0.5-inc1'):
        from timm.data import create_transform
        primary, secondary, _ = create_transform(
            input_size, is_training=True, scale=scale, auto_augment=None if aa in (None, 'none') else aa,
            interpolation='bicubic', mean=IMAGENET_MEAN, std=IMAGENET_STD, separate=True)
        if aa not in (None, 'none'):
            check_posterize_zero_bits()
        self.size, self.normalize = input_size, False          # uint8 out, as FaceTransform(normalize=False)
        self.parts = [*primary.transforms, *secondary.transforms]

    def __call__(self, img, landmarks=None, generator=None):
        pil = Image.fromarray(np.ascontiguousarray(img))
        if generator is None:
            pil = self._apply(pil)
        else:
            with seeded_global_streams(int(torch.randint(2 ** 31, (1,), generator=generator).item())):
                pil = self._apply(pil)
        return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous(), None

    def _apply(self, pil):
        for t in self.parts:
            pil = t(pil)
        return pil


def device_random_erasing(prob, mode='pixel', count=1, device='cpu'):
    """timm's RandomErasing for a normalised batch [N, 3, H, W] on `device` (in place), or None when prob is 0."""
    if prob <= 0:
        return None
    from timm.data.random_erasing import RandomErasing
    return RandomErasing(prob, mode=mode, max_count=count, device=device)
