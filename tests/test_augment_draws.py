"""Every augmentation path of both stages survives many random draws.

A rare draw that raises (RandAugment's posterize to 0 bits under Pillow 13: 6 in 3,000 calls) ends a
100k-face epoch with near certainty, and a handful of draws never finds it. Tiny images keep 20,000 draws
to seconds. Every stream used here is a local generator: the process's global streams are left as found.
"""
import copy
import math
import types

import numpy as np
import pytest
import torch

from util import loaders, recipes
from util.augment import seeded_global_streams

DRAWS = 20_000


def _images(n, size, seed):
    """n random uint8 [size, size, 3] images, mostly noise, some flat (the edge cases of contrast/equalize)."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    imgs[::7] = rng.integers(0, 256, (len(imgs[::7]), 1, 1, 3), dtype=np.uint8)
    return imgs


@pytest.mark.slow
@pytest.mark.parametrize('recipe', ['reference', 'light'])
def test_stage2_training_transform_of_every_recipe_survives_20000_draws(recipe):
    from util.recipes import RECIPES
    r = RECIPES[recipe]
    args = types.SimpleNamespace(aa=r['aa'], min_crop_scale=r['min_crop_scale'], input_size=16)
    transform = loaders.train_transform(args)
    imgs = _images(64, 20, seed=1)
    with seeded_global_streams(0):       # timm draws from the global streams, as in a loader worker
        for i in range(DRAWS):
            x, _ = transform(imgs[i % len(imgs)], None)
            assert x.shape == (3, 16, 16) and x.dtype == torch.uint8


def test_randaugment_posterize_to_zero_bits_is_drawn_and_runs():
    """The draw that crashed: the reference policy asks for 0 bits, and the pinned Pillow answers it."""
    from timm.data.auto_augment import rand_augment_ops

    from util.augment import check_posterize_zero_bits
    check_posterize_zero_bits()
    op = next(o for o in rand_augment_ops(magnitude=10, hparams={}, transforms=['PosterizeIncreasing'])
              if o.name == 'PosterizeIncreasing')
    from PIL import Image
    img = Image.fromarray(_images(1, 8, 0)[0])
    op.prob, op.magnitude_std = 1.0, 0
    out = np.asarray(op(img))
    assert out.max() == 0                              # 0 bits kept: a black image, as the reference's Pillow gave


def test_a_pillow_that_refuses_zero_bits_fails_at_start(monkeypatch):
    from PIL import ImageOps

    real = ImageOps.posterize

    def strict_posterize(img, bits):
        if not 1 <= bits <= 8:
            raise ValueError('bits must be between or equal to 1 and 8')
        return real(img, bits)
    monkeypatch.setattr(ImageOps, 'posterize', strict_posterize)
    args = types.SimpleNamespace(aa='rand-m9-mstd0.5-inc1', min_crop_scale=0.08, input_size=16)
    with pytest.raises(SystemExit) as e:
        loaders.train_transform(args)
    assert 'pillow' in str(e.value).lower() and 'requirements.txt' in str(e.value)
    args.aa = 'none'                                   # without RandAugment, no posterize and no check
    loaders.train_transform(args)


@pytest.mark.slow
def test_stage1_transform_survives_20000_draws():
    from util.datasets import FaceTransform
    t = FaceTransform(16, train=True, scale=(0.2, 1.0), normalize=False)
    lm = np.stack(np.meshgrid(np.linspace(4, 15, 17), np.linspace(4, 15, 4)), -1).reshape(-1, 2)[:68]
    lm = lm.astype(np.float32)
    g = torch.Generator().manual_seed(0)
    imgs = _images(64, 20, seed=2)
    for i in range(DRAWS):
        x, out_lm = t(imgs[i % len(imgs)], lm, generator=g)
        assert x.shape == (3, 16, 16) and out_lm.shape == (68, 2)


@pytest.mark.slow
def test_batch_augmentations_survive_many_draws():
    """Mixup / cutmix (the reference's alphas) and random erasing on normalised batches."""
    from timm.data import Mixup

    from util.augment import device_random_erasing
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch', label_smoothing=0.1,
                num_classes=2)
    erase = device_random_erasing(0.25)
    g = torch.Generator().manual_seed(0)
    with seeded_global_streams(0):
        for _ in range(2_000):
            x = torch.randn(4, 3, 8, 8, generator=g)
            x, y = mix(x, torch.randint(0, 2, (4,), generator=g))
            x = erase(x)
            assert torch.isfinite(x).all() and torch.allclose(y.sum(1), torch.ones(4))


@pytest.mark.slow
def test_self_blended_pairs_survive_many_draws(tmp_path):
    """The pseudo-fake path end to end: self-blending + RandAugment on both faces, 600 items."""
    import cv2

    from synthetic.faces import render_face, sample_identity
    from util.augment import TimmTrainTransform
    from util.datasets import Sample
    from util.self_blend import PseudoFakePairs
    rng, samples = np.random.default_rng(3), []
    for i in range(6):
        img, lm = render_face(sample_identity(rng), rng, size=48)
        cv2.imwrite(str(tmp_path / f'{i}.png'), img[:, :, ::-1])
        np.save(tmp_path / f'{i}.npy', lm)
        samples.append(Sample(str(tmp_path / f'{i}.png'), str(tmp_path / f'{i}.npy'), 0, f'v{i}', 'd'))
    ds = PseudoFakePairs(samples, TimmTrainTransform(24, (0.08, 1.0), 'rand-m9-mstd0.5-inc1'))
    with seeded_global_streams(0):
        for i in range(600):
            item = ds[i % len(ds)]
            assert item['img'].shape[1:] == (3, 24, 24)


@pytest.mark.slow
def test_reference_recipe_trains_a_micro_model_for_256_steps(synthetic_data, tmp_path):
    """`--recipe reference` with only its length and batch made small: RandAugment, mixup / cutmix, random
    erasing, stochastic depth and the reconstruction loss, 8 epochs of 32 steps on 32-px synthetic faces."""
    import csv
    import json

    import main_finetune
    import models_mae
    from conftest import write_rows
    with open(synthetic_data['train'], newline='') as f:
        rows = list(csv.DictReader(f))
    real, fake = [r for r in rows if r['label'] == '0'], [r for r in rows if r['label'] == '1']
    folder = synthetic_data['train'].parent                    # the paths are relative to the manifest
    train = write_rows(folder / 'recipe_train.csv', real[:32] + fake[:32])
    val = write_rows(folder / 'recipe_val.csv', real[32:36] + fake[32:36])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pre = models_mae.mae_vit_micro_patch8(img_size=32)
    torch.save(dict(model=pre.state_dict(), args=dict(model='mae_vit_micro_patch8', input_size=32)),
               tmp_path / 'pre.pth')
    args = main_finetune.get_args_parser().parse_args([str(a) for a in (
        '--recipe', 'reference', '--epochs', 8, '--batch_size', 2, '--finetune', tmp_path / 'pre.pth',
        '--train_manifest', train, '--val_manifest', val, '--output_dir', tmp_path / 'ft', '--input_size', 32,
        '--device', 'cpu', '--num_workers', 0, '--quiet', '--seed', 0)])
    filled = copy.deepcopy(args)
    recipes.apply_recipe(filled)                                       # as main() fills the recipe's flags
    assert (filled.aa, filled.mixup, filled.cutmix, filled.reprob) == ('rand-m9-mstd0.5-inc1', 0.8, 1.0, 0.25)
    with seeded_global_streams(0):
        result = main_finetune.main(args)
    log = [json.loads(line) for line in (tmp_path / 'ft' / 'log.txt').read_text().splitlines()]
    assert [e['epoch'] for e in log] == list(range(8))                       # 8 x 64 / 2 = 256 steps
    assert all(math.isfinite(e['train_loss']) for e in log) and result['best_val_auc'] is not None
