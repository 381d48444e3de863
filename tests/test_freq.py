"""High-frequency masking (low-pass filter) and the focal frequency loss."""
import numpy as np
import torch

from util.freq import filter_spectrum, low_pass, low_pass_mask, max_radius
from util.losses import focal_frequency_loss, masked_patch_mse


def numpy_low_pass(img, radius):
    """Independent reference: centred FFT, disc, inverse, real part (per channel)."""
    h, w = img.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w]
    disc = np.hypot(yy - h // 2, xx - w // 2) < radius
    spec = np.fft.fftshift(np.fft.fft2(img, norm='ortho'), axes=(-2, -1))
    out = np.fft.ifft2(np.fft.ifftshift(spec * disc, axes=(-2, -1)), norm='ortho').real
    return out, disc


def test_radius_covering_the_spectrum_returns_the_input():
    x = torch.randn(2, 3, 32, 32)
    low, keep = low_pass(x, max_radius(32, 32) + 1e-3)
    assert keep.all()
    torch.testing.assert_close(low, x, atol=1e-5, rtol=1e-5)


def test_kept_bins_equal_the_disc():
    for h, w, r in ((224, 224, 16), (112, 112, 8), (64, 48, 10.5)):
        _, keep = low_pass(torch.zeros(1, 1, h, w), r)
        yy, xx = np.mgrid[0:h, 0:w]
        assert int(keep.sum()) == int((np.hypot(yy - h // 2, xx - w // 2) < r).sum())
        assert keep[h // 2, w // 2] == 1 and keep[0, 0] == 0


def test_matches_numpy_reference():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 3, 56, 56)).astype(np.float32)
    ref, disc = numpy_low_pass(img.astype(np.float64), 7)
    low, keep = low_pass(torch.from_numpy(img), 7)
    np.testing.assert_allclose(low.numpy(), ref, atol=1e-5)
    np.testing.assert_array_equal(keep.numpy().astype(bool), disc)


def test_half_spectrum_filter_matches_the_full_spectrum_at_odd_and_even_sizes():
    """filter_spectrum works on rfft2's half spectrum: exact for the symmetric disc and its complement."""
    rng = np.random.default_rng(1)
    for h, w, r in ((33, 33, 6), (31, 40, 9.5), (64, 48, 10.5), (17, 16, 3)):
        img = rng.standard_normal((2, 3, h, w))
        ref, disc = numpy_low_pass(img, r)
        _, keep_unshifted = low_pass_mask(h, w, r)
        low = filter_spectrum(torch.from_numpy(img).float(), keep_unshifted)
        np.testing.assert_allclose(low.numpy(), ref, atol=2e-5)
        high = filter_spectrum(torch.from_numpy(img).float(), 1 - keep_unshifted)
        np.testing.assert_allclose(high.numpy(), img - ref, atol=2e-5)


def test_low_pass_keeps_negative_values():
    """Real part, not abs(): a zero-mean image stays zero-mean and keeps its sign."""
    x = torch.randn(1, 1, 64, 64)
    low, _ = low_pass(x, 12)
    assert low.min() < 0
    assert abs(float(low.mean() - x.mean())) < 1e-5


def test_focal_frequency_loss_zero_when_equal_and_masked_bins_only():
    x = torch.randn(2, 32, 32)
    mask = torch.ones(32, 32)
    assert float(focal_frequency_loss(x, x.clone(), mask)) == 0.0
    # a difference confined to the unscored bins costs nothing
    keep = torch.zeros(32, 32)
    keep[0, 0] = 1                                        # the DC bin, in FFT order
    scored = 1 - keep
    assert float(focal_frequency_loss(x + 3.0, x, scored)) < 1e-8
    assert float(focal_frequency_loss(x + 3.0, x, keep)) > 1.0


def test_focal_frequency_loss_alpha_zero_is_mean_distance():
    a, b = torch.randn(2, 16, 16), torch.randn(2, 16, 16)
    mask = (torch.rand(16, 16) > 0.5).float()
    d = (torch.fft.fft2(a, norm='ortho') - torch.fft.fft2(b, norm='ortho')).abs() ** 2
    expected = (d * mask).sum() / (mask.sum() * 2)
    torch.testing.assert_close(focal_frequency_loss(a, b, mask, alpha=0), expected)
    # with alpha = 1 each bin is weighted by its normalised distance, at most 1
    assert float(focal_frequency_loss(a, b, mask, alpha=1)) < float(expected)


def test_masked_patch_mse_counts_removed_patches_only():
    target = torch.randn(2, 4, 12)
    pred = target.clone()
    pred[:, 0] += 1.0                                     # error only on patch 0
    mask = torch.tensor([[True, False, False, False], [False, True, False, False]])
    # sample 0: patch 0 removed, error 1 per pixel; sample 1: patch 1 removed, no error
    assert abs(float(masked_patch_mse(pred, target, mask)) - 0.5) < 1e-6
    assert float(masked_patch_mse(target, target, mask, norm_pix_loss=False)) == 0.0
