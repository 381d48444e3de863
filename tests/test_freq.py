"""High-frequency masking (low-pass filter) and the frequency losses."""
import numpy as np
import torch

from util.freq import filter_spectrum, low_pass, low_pass_mask, max_radius
from util.losses import FREQ_LOSSES, focal_frequency_loss, masked_patch_mse, reference_frequency_loss, to_gray


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


def numpy_reference_loss(pred, img, radius):
    """Independent transcription of the reference code's loss: grey target of the RGB input, centred
    spectra (fftshift over H, W), bins outside the disc, sqrt(|d|^2 + 1e-7), mean per (image, channel)."""
    h, w = pred.shape[-2:]
    gray = 0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]
    fp = np.fft.fftshift(np.fft.fft2(pred, norm='ortho'), axes=(-2, -1))
    ft = np.fft.fftshift(np.fft.fft2(gray, norm='ortho'), axes=(-2, -1))
    yy, xx = np.mgrid[0:h, 0:w]
    outside = ~(np.hypot(yy - h / 2, xx - w / 2) < radius)
    dist = np.sqrt(np.abs(ft - fp) ** 2 + 1e-7)
    return np.mean([[dist[n, c][outside].mean() for c in range(pred.shape[1])] for n in range(pred.shape[0])])


def numpy_ffl(pred_gray, target_gray, scored, alpha):
    """Independent transcription of Jiang et al.'s focal frequency loss over the scored bins."""
    d = np.abs(np.fft.fft2(pred_gray, norm='ortho') - np.fft.fft2(target_gray, norm='ortho')) ** 2
    out = []
    for n in range(d.shape[0]):
        wgt = np.sqrt(d[n]) ** alpha * scored
        wgt = wgt / wgt.max()
        out.append((wgt * d[n]).sum() / scored.sum())
    return np.mean(out)


def test_reference_frequency_loss_matches_numpy_transcription():
    rng = np.random.default_rng(2)
    for size, radius in ((32, 5), (64, 16 * 64 / 224)):
        pred = rng.standard_normal((3, 3, size, size))
        img = rng.standard_normal((3, 3, size, size))
        _, keep_unshifted = low_pass_mask(size, size, radius)
        got = reference_frequency_loss(torch.from_numpy(pred).float(), to_gray(torch.from_numpy(img).float()),
                                       1 - keep_unshifted)
        np.testing.assert_allclose(float(got), numpy_reference_loss(pred, img, radius), rtol=1e-5)


def test_ffl_matches_numpy_transcription():
    rng = np.random.default_rng(3)
    pred, img = rng.standard_normal((2, 3, 32, 32)), rng.standard_normal((2, 3, 32, 32))
    _, keep_unshifted = low_pass_mask(32, 32, 6)
    scored = 1 - keep_unshifted
    gray = lambda x: 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]    # noqa: E731
    for alpha in (0.0, 1.0, 2.0):
        got = FREQ_LOSSES['ffl'](torch.from_numpy(pred).float(), to_gray(torch.from_numpy(img).float()), scored, alpha)
        np.testing.assert_allclose(float(got), numpy_ffl(gray(pred), gray(img), scored.numpy(), alpha), rtol=1e-5)


def test_reference_loss_scores_each_colour_channel_against_the_grey_image():
    """The reference's behaviour: three grey channels score ~sqrt(1e-7); the true colour image does not."""
    img = torch.randn(2, 3, 32, 32)
    _, keep_unshifted = low_pass_mask(32, 32, 5)
    scored, gray = 1 - keep_unshifted, to_gray(img)
    grey_pred = gray[:, None].expand(-1, 3, -1, -1)
    assert float(reference_frequency_loss(grey_pred, gray, scored)) < 1e-3
    assert float(reference_frequency_loss(img, gray, scored)) > 0.1
    # ffl compares the grey of the prediction: the colour image scores 0 there
    assert float(FREQ_LOSSES['ffl'](img, gray, scored, 1.0)) < 1e-8
