"""Facial-region-guided masking, random masking, and how masks follow the augmented face."""
import numpy as np
import pytest
import torch

from util.datasets import FaceTransform
from util.landmarks import FACIAL_REGIONS, FLIP_PERM, hflip_landmarks
from util.masking import REGION_NAMES, facial_region_mask, num_masked, random_mask, region_patches


def random_face_landmarks(rng, size=224):
    """A plausible face layout at a random position/scale: brows, eyes, nose, mouth, jaw."""
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    s = rng.uniform(0.25, 0.45) * size
    lm = np.zeros((68, 2), np.float32)
    t = np.linspace(-1, 1, 17)
    lm[0:17] = np.stack([cx + s * t, cy + s * (0.2 + 0.8 * (1 - t ** 2))], 1)
    for base, ox in ((17, -0.55), (22, 0.15)):
        lm[base:base + 5] = np.stack([cx + s * (ox + np.linspace(0, 0.4, 5)), np.full(5, cy - 0.55 * s)], 1)
    lm[27:31] = np.stack([np.full(4, cx), cy + s * np.linspace(-0.35, 0.1, 4)], 1)
    lm[31:36] = np.stack([cx + s * np.linspace(-0.15, 0.15, 5), np.full(5, cy + 0.15 * s)], 1)
    for base, ox in ((36, -0.45), (42, 0.15)):
        ang = np.linspace(0, 2 * np.pi, 7)[:6]
        lm[base:base + 6] = np.stack([cx + s * (ox + 0.15 + 0.15 * np.cos(ang)),
                                      cy - 0.3 * s + 0.06 * s * np.sin(ang)], 1)
    ang = np.linspace(0, 2 * np.pi, 13)[:12]
    lm[48:60] = np.stack([cx + 0.35 * s * np.cos(ang), cy + 0.45 * s + 0.12 * s * np.sin(ang)], 1)
    ang = np.linspace(0, 2 * np.pi, 9)[:8]
    lm[60:68] = np.stack([cx + 0.25 * s * np.cos(ang), cy + 0.45 * s + 0.05 * s * np.sin(ang)], 1)
    return lm


def test_exact_count_for_many_landmark_sets():
    rng = np.random.default_rng(0)
    for i in range(200):
        size = int(rng.choice([112, 224]))
        ratio = float(rng.choice([0.5, 0.75, 0.9]))
        regions = int(rng.integers(1, 5))
        lm = random_face_landmarks(rng, size)
        m = facial_region_mask(lm, size, 16, ratio, regions, generator=torch.Generator().manual_seed(i))
        L = (size // 16) ** 2
        assert m.dtype == torch.bool and m.shape == (L,)
        assert int(m.sum()) == num_masked(L, ratio) == round(L * ratio)


def test_every_patch_of_the_chosen_region_is_removed():
    rng = np.random.default_rng(1)
    for i in range(50):
        lm = random_face_landmarks(rng)
        g = torch.Generator().manual_seed(i)
        chosen = REGION_NAMES[int(torch.randperm(4, generator=torch.Generator().manual_seed(i))[0])]
        m = facial_region_mask(lm, 224, 16, 0.75, 1, generator=g).numpy()
        touched = region_patches(lm, chosen, 224, 16)
        assert touched.sum() > 0
        assert m[touched].all(), f'region {chosen} not fully removed'


def test_region_patches_cover_the_landmarks():
    rng = np.random.default_rng(2)
    lm = random_face_landmarks(rng)
    for name in REGION_NAMES:
        touched = region_patches(lm, name, 224, 16).reshape(14, 14)
        from util.landmarks import FACIAL_REGIONS
        for x, y in lm[FACIAL_REGIONS[name]]:
            assert touched[int(y) // 16, int(x) // 16]


def test_regions_exceeding_budget_keep_a_subset():
    lm = random_face_landmarks(np.random.default_rng(3))
    m = facial_region_mask(lm, 224, 16, mask_ratio=0.05, num_regions=4, generator=torch.Generator().manual_seed(0))
    union = np.zeros(196, bool)
    for name in REGION_NAMES:
        union |= region_patches(lm, name, 224, 16)
    assert int(m.sum()) == round(196 * 0.05)
    assert union[m.numpy()].all()               # only region patches were removed


def test_no_landmarks_gives_random_masking():
    m = facial_region_mask(None, 224, 16, 0.75, generator=torch.Generator().manual_seed(0))
    assert int(m.sum()) == 147


def test_masks_are_deterministic_per_seed():
    lm = random_face_landmarks(np.random.default_rng(4))
    a = facial_region_mask(lm, 224, 16, 0.75, 2, generator=torch.Generator().manual_seed(7))
    b = facial_region_mask(lm, 224, 16, 0.75, 2, generator=torch.Generator().manual_seed(7))
    c = facial_region_mask(lm, 224, 16, 0.75, 2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_strategy_is_uniform_over_positions():
    L, n = 49, 4000
    g = torch.Generator().manual_seed(0)
    counts = torch.stack([random_mask(L, 0.75, g) for _ in range(n)]).float().sum(0)
    expected = n * num_masked(L, 0.75) / L
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 90        # chi-square, 48 degrees of freedom: p ~ 1e-4 at 90
    assert all(int(random_mask(L, 0.75, g).sum()) == 37 for _ in range(20))


def test_flip_moves_the_mask_with_the_face():
    """Masking the flipped face equals flipping the mask of the face (same regions, mirrored)."""
    lm = random_face_landmarks(np.random.default_rng(5))
    flipped = hflip_landmarks(lm, 224)
    # left/right relabelling: the flipped right eye sits where the mirrored left eye was
    assert np.allclose(flipped[36:42], np.stack([223 - lm[FLIP_PERM[36:42], 0], lm[FLIP_PERM[36:42], 1]], 1))
    for name, mirrored in (('right_eye', 'left_eye'), ('left_eye', 'right_eye'), ('nose', 'nose'), ('mouth', 'mouth')):
        a = region_patches(flipped, name, 224, 16).reshape(14, 14)
        b = region_patches(lm, mirrored, 224, 16).reshape(14, 14)[:, ::-1]
        assert (a != b).sum() <= 2, name      # equal up to rasterisation at patch borders


def test_crop_moves_landmarks_and_mask_with_the_face():
    """After RandomResizedCrop the landmarks still point at the same image content."""
    rng = np.random.default_rng(6)
    img = np.zeros((256, 256, 3), np.uint8)
    lm = random_face_landmarks(rng, 256)
    for x, y in lm.astype(int):                  # paint each landmark as a bright dot
        img[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = 255
    t = FaceTransform(224, train=True, scale=(0.5, 1.0), hflip=0.5)
    torch.manual_seed(0)
    for _ in range(10):
        x, lm2 = t(img, lm)
        pix = x * t.std + t.mean                 # back to [0, 1]
        inside = (lm2[:, 0] >= 2) & (lm2[:, 0] < 222) & (lm2[:, 1] >= 2) & (lm2[:, 1] < 222)
        for (px, py) in lm2[inside]:
            assert pix[:, int(round(py)) - 2:int(round(py)) + 3, int(round(px)) - 2:int(round(px)) + 3].max() > 0.5
        mask = facial_region_mask(lm2, 224, 16, 0.75, 4).reshape(14, 14)
        gx = np.clip(lm2[inside, 0] // 16, 0, 13).astype(int)
        gy = np.clip(lm2[inside, 1] // 16, 0, 13).astype(int)
        region_pts = np.isin(np.flatnonzero(inside), np.arange(17, 68))
        assert mask[gy[region_pts], gx[region_pts]].all()


def test_check_mask_count_names_the_wrong_count():
    from util.masking import check_mask_count, random_mask
    good = torch.stack([random_mask(16, 0.75) for _ in range(3)])
    check_mask_count(good, 0.75)
    bad = good.clone()
    bad[1, bad[1].nonzero()[0]] = False                   # one removed patch fewer in row 1
    with pytest.raises(ValueError, match='removes 11 to 12 of 16 patches; mask ratio 0.75 needs exactly 12'):
        check_mask_count(bad, 0.75)


@pytest.mark.parametrize('stored', ['<f4', 'float64', 'fortran', '>f4'])
def test_landmark_files_read_fast_or_through_np_load_give_the_same_array(tmp_path, stored):
    """float32 [68, 2] files take the fast path after their known header; others go through np.load."""
    from util.landmarks import load_landmarks
    lm = random_face_landmarks(np.random.default_rng(9))
    arr = np.asfortranarray(lm) if stored == 'fortran' else lm.astype(stored)
    np.save(tmp_path / 'a.npy', arr)
    got = load_landmarks(tmp_path / 'a.npy')
    assert got.dtype == np.float32 and got.shape == (68, 2) and got.flags.writeable
    np.testing.assert_array_equal(got, np.load(tmp_path / 'a.npy').astype(np.float32))


def test_truncated_landmark_file_is_an_error_naming_it(tmp_path):
    from util.landmarks import load_landmarks
    np.save(tmp_path / 'a.npy', random_face_landmarks(np.random.default_rng(9)))
    (tmp_path / 'cut.npy').write_bytes((tmp_path / 'a.npy').read_bytes()[:-4])
    with pytest.raises(ValueError, match=r'cut\.npy: cannot read landmark file'):
        load_landmarks(tmp_path / 'cut.npy')


def test_hwc_to_chw_equals_a_permuted_copy():
    from util.datasets import hwc_to_chw
    img = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for view in (img, img[3:30, 5:25], img[:, ::-1]):          # contiguous, cropped, negative stride
        out = hwc_to_chw(view)
        assert out.dtype == torch.uint8 and out.is_contiguous()
        assert torch.equal(out, torch.from_numpy(np.ascontiguousarray(view)).permute(2, 0, 1))


def test_regions_cut_by_the_crop_are_not_chosen_and_none_visible_falls_back():
    """Only regions with at least half of their landmarks inside the image are hidden; when none is, the
    mask is random (flagged as a fallback), still of the exact count."""
    from util.masking import MASK_STRATEGIES, visible_regions
    rng = np.random.default_rng(5)
    lm = random_face_landmarks(rng, 224)
    shifted = lm.copy()
    shifted[:, 1] -= lm[FACIAL_REGIONS["nose"]].max(0)[1] + 1    # everything down to the nostrils leaves the image
    vis = visible_regions(shifted, 224)
    assert vis and REGION_NAMES.index('right_eye') not in vis and REGION_NAMES.index('mouth') in vis
    for seed in range(20):
        m, fell_back = MASK_STRATEGIES['facial'](shifted, 224, 16, 0.75, 1, torch.Generator().manual_seed(seed))
        assert not fell_back and int(m.sum()) == num_masked(196, 0.75)
        # the chosen region is one of the visible ones: all its patches are removed
        chosen = [r for r in vis if m.numpy()[region_patches(shifted, REGION_NAMES[r], 224, 16)].all()]
        assert chosen
    gone = lm + 1000                                              # the face cropped out entirely
    m, fell_back = MASK_STRATEGIES['facial'](gone, 224, 16, 0.75, 1, torch.Generator().manual_seed(0))
    assert fell_back and int(m.sum()) == num_masked(196, 0.75)
    torch.testing.assert_close(m, random_mask(196, 0.75, torch.Generator().manual_seed(0)))
    m, fell_back = MASK_STRATEGIES['facial'](None, 224, 16, 0.75, 1, torch.Generator().manual_seed(0))
    assert not fell_back                                          # no landmarks: counted apart
    assert MASK_STRATEGIES['random'](lm, 224, 16, 0.75)[1] is False


def test_under_strong_crops_the_hidden_region_is_inside_the_image():
    """RandomResizedCrop at scale 0.2: whenever a region is visible the facial mask removes visible patches
    of it, and the fallback happens exactly when no region is visible."""
    from util.masking import MASK_STRATEGIES, visible_regions
    rng = np.random.default_rng(6)
    tf = FaceTransform(112, train=True, scale=(0.2, 1.0))
    fallbacks = 0
    for i in range(150):
        lm = random_face_landmarks(rng, 224)
        img = np.zeros((224, 224, 3), np.uint8)
        g = torch.Generator().manual_seed(i)
        _, lm2 = tf(img, lm, g)
        m, fell_back = MASK_STRATEGIES['facial'](lm2, 112, 16, 0.75, 1, g)
        assert fell_back == (not visible_regions(lm2, 112))
        fallbacks += fell_back
        if not fell_back:
            hidden = [r for r in visible_regions(lm2, 112)
                      if region_patches(lm2, REGION_NAMES[r], 112, 16).any()
                      and m.numpy()[region_patches(lm2, REGION_NAMES[r], 112, 16)].all()]
            assert hidden, i
    assert fallbacks < 150 * 0.2
