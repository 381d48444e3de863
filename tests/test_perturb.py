"""util/perturb.py: each degradation against an independent computation, strength by level, determinism,
and H.264 re-encoding through the FFmpeg imageio-ffmpeg ships."""
import math
import os

import cv2
import numpy as np
import pytest
from skimage import data

from util.perturb import FRAME_KINDS, PERTURBATIONS, compress_video, parse_spec, perturb


@pytest.fixture(scope='module')
def img():
    return data.astronaut()[::2, ::2].copy()                # uint8 RGB [256, 256, 3]


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_table_holds_the_reference_parameters():
    assert PERTURBATIONS['saturation'].levels == (0.4, 0.3, 0.2, 0.1, 0.0)
    assert PERTURBATIONS['contrast'].levels == (0.85, 0.725, 0.6, 0.475, 0.35)
    assert PERTURBATIONS['block'].levels == (16, 32, 48, 64, 80)
    assert PERTURBATIONS['noise'].levels == (0.001, 0.002, 0.005, 0.01, 0.05)
    assert PERTURBATIONS['blur'].levels == (7, 9, 13, 17, 21)
    assert PERTURBATIONS['pixelation'].levels == (2, 3, 4, 5, 6)
    assert PERTURBATIONS['jpeg'].levels == (90, 70, 50, 30, 10)
    assert PERTURBATIONS['h264'].levels == (30, 32, 35, 38, 40)
    assert set(FRAME_KINDS) == {'saturation', 'contrast', 'block', 'noise', 'blur', 'pixelation', 'jpeg'}


def test_contrast_is_the_scaled_array_truncated(img):
    for lv, p in enumerate(PERTURBATIONS['contrast'].levels, 1):
        assert np.array_equal(perturb(img, 'contrast', lv, rng()), (img.astype(np.float32) * p).astype(np.uint8))


def test_blur_is_opencv_gaussian_with_the_level_kernel(img):
    for lv, k in enumerate(PERTURBATIONS['blur'].levels, 1):
        assert np.array_equal(perturb(img, 'blur', lv, rng()), cv2.GaussianBlur(img, (k, k), k / 6))


def test_pixelation_is_bilinear_down_and_up_scaling(img):
    for lv, f in enumerate(PERTURBATIONS['pixelation'].levels, 1):
        small = cv2.resize(img, (256 // f, 256 // f))
        assert np.array_equal(perturb(img, 'pixelation', lv, rng()), cv2.resize(small, (256, 256)))


def test_jpeg_matches_pillow_at_the_same_quality(img):
    import io

    from PIL import Image
    for lv, q in enumerate(PERTURBATIONS['jpeg'].levels, 1):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format='JPEG', quality=q)
        ref = np.asarray(Image.open(buf).convert('RGB'))
        out = perturb(img, 'jpeg', lv, rng())
        assert psnr(out, ref) > 38, (q, psnr(out, ref))     # two libjpeg builds: near, not bit-equal
        assert abs(psnr(out, img) - psnr(ref, img)) < 0.5


def _ycbcr_by_opencv(img):
    # OpenCV's float YCrCb (chroma offset 0.5 for float input) of 0-1 RGB, in the order Y, Cb, Cr
    ycrcb = cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_RGB2YCrCb)
    return ycrcb[..., (0, 2, 1)].astype(np.float64)


def _rgb_by_opencv(ycbcr):
    return cv2.cvtColor(ycbcr[..., (0, 2, 1)].astype(np.float32), cv2.COLOR_YCrCb2RGB).astype(np.float64) * 255


def assert_truncation_of(got, want):
    # OpenCV (float32, coefficients to 3 digits) and the exact float64 path truncate alike but next to integers
    d = np.abs(got.astype(np.int64) - np.floor(want).astype(np.int64))
    assert d.max() <= 1 and (d > 0).mean() < 0.03, ((d > 0).mean(), d.max())


def test_saturation_scales_chroma_in_ycbcr(img):
    for lv, p in enumerate(PERTURBATIONS['saturation'].levels, 1):
        ycc = _ycbcr_by_opencv(img)
        ycc[..., 1:] = 0.5 + (ycc[..., 1:] - 0.5) * p
        want = np.clip(_rgb_by_opencv(ycc), 0, 255)
        got = perturb(img, 'saturation', lv, rng())
        assert_truncation_of(got, want)
    grey = perturb(img, 'saturation', 5, rng()).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1 and np.abs(grey[..., 1] - grey[..., 2]).max() <= 1


def test_noise_is_white_gaussian_of_the_variance_on_studio_swing_ycbcr(img):
    for lv, var in enumerate(PERTURBATIONS['noise'].levels, 1):
        n = rng(3).standard_normal(img.shape) * math.sqrt(var)            # same draws, Y Cb Cr order
        ycc = _ycbcr_by_opencv(img)
        studio = ycc.copy()                                               # to [16/255, 235/255] and [16/255, 240/255]
        studio[..., 0] = (ycc[..., 0] * 219 + 16) / 255
        studio[..., 1:] = ((ycc[..., 1:] - 0.5) * 224 + 128) / 255
        studio += n
        back = studio.copy()
        back[..., 0] = (studio[..., 0] * 255 - 16) / 219
        back[..., 1:] = (studio[..., 1:] * 255 - 128) / 224 + 0.5
        want = np.clip(_rgb_by_opencv(back), 0, 255)
        got = perturb(img, 'noise', lv, rng(3))
        assert_truncation_of(got, want)


def test_block_places_grey_8x8_blocks_scaled_by_size(img):
    for lv, n in enumerate(PERTURBATIONS['block'].levels, 1):
        g = rng(5)
        want = img.copy()
        for _ in range(n):                                  # 256 px: min side // 256 = 1 unit
            x, y = g.integers(0, 256 - 9, endpoint=True), g.integers(0, 256 - 9, endpoint=True)
            want[y:y + 8, x:x + 8] = 128
        assert np.array_equal(perturb(img, 'block', lv, rng(5)), want)
    big = cv2.resize(img, (512, 600))                       # min side // 256 = 2 units: twice the blocks
    out = perturb(big, 'block', 1, rng(5))
    g = rng(5)
    want = big.copy()
    for _ in range(32):
        x, y = g.integers(0, 512 - 9, endpoint=True), g.integers(0, 600 - 9, endpoint=True)
        want[y:y + 8, x:x + 8] = 128
    assert np.array_equal(out, want)
    small = img[:100, :120].copy()                          # under 256 px: one unit, not none
    assert not np.array_equal(perturb(small, 'block', 1, rng()), small)


@pytest.mark.parametrize('kind', sorted(FRAME_KINDS))
def test_every_type_gets_stronger_with_level(img, kind):
    scores = [psnr(perturb(img, kind, lv, rng(1)), img) for lv in range(1, 6)]
    assert all(a > b for a, b in zip(scores, scores[1:])), (kind, scores)
    assert scores[0] < math.inf


def test_deterministic_per_seed_and_input_untouched(img):
    before = img.copy()
    for kind in FRAME_KINDS:
        a, b = perturb(img, kind, 3, rng(7)), perturb(img, kind, 3, rng(7))
        assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b)
    assert not np.array_equal(perturb(img, 'noise', 3, rng(7)), perturb(img, 'noise', 3, rng(8)))
    assert not np.array_equal(perturb(img, 'block', 3, rng(7)), perturb(img, 'block', 3, rng(8)))
    assert np.array_equal(img, before)


def test_bad_kind_level_and_spec_fail_with_one_line(img):
    for call in (lambda: perturb(img, 'sharpen', 1, rng()), lambda: perturb(img, 'blur', 6, rng()),
                 lambda: perturb(img, 'h264', 1, rng()), lambda: perturb(img.astype(np.float32), 'blur', 1, rng()),
                 lambda: parse_spec('blur:x'), lambda: parse_spec('fog')):
        with pytest.raises(ValueError) as e:
            call()
        assert '\n' not in str(e.value)
    assert parse_spec('blur:2') == [('blur', 2)]
    assert parse_spec('jpeg') == [('jpeg', lv) for lv in range(1, 6)]
    assert len(parse_spec('all')) == 35


def test_h264_compression_is_smaller_and_decodes(tmp_path, img):
    src = str(tmp_path / 'clip.avi')
    w = cv2.VideoWriter(src, cv2.VideoWriter_fourcc(*'MJPG'), 25, (256, 256))
    g = rng(0)
    for i in range(12):
        frame = np.roll(img, 4 * i, axis=1)
        w.write(np.ascontiguousarray(perturb(frame, 'noise', 1, g)[..., ::-1]))
    w.release()
    sizes = []
    for crf in (PERTURBATIONS['h264'].levels[0], PERTURBATIONS['h264'].levels[4]):
        dst = str(tmp_path / f'clip_crf{crf}.mp4')
        compress_video(src, dst, crf)
        cap = cv2.VideoCapture(dst)
        frames = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(f)
        assert len(frames) == 12 and frames[0].shape == (256, 256, 3)
        sizes.append(os.path.getsize(dst))
    assert sizes[0] < os.path.getsize(src) and sizes[1] < sizes[0]
    with pytest.raises(RuntimeError) as e:
        compress_video(str(tmp_path / 'missing.mp4'), str(tmp_path / 'x.mp4'), 30)
    assert 'missing.mp4' in str(e.value) and '\n' not in str(e.value)
