"""Losses of the two MIFAE pretext tasks (pure functions of tensors, shared by training and tests).

Frequency losses take the prediction [N, C, H, W], the grey target [N, H, W] and the scored bins [H, W]
in FFT (unshifted) order; FREQ_LOSSES looks them up by the name --freq_loss gives. Every one is a mean
over a set of bins symmetric about the zero frequency, so the spectra need no fftshift.
"""
import torch

# ITU-R BT.601 luma weights; the frequency target is the spectrum of the grayscale image.
_GRAY = (0.299, 0.587, 0.114)


def to_gray(imgs):
    """[N, 3, H, W] -> [N, H, W] luma."""
    return imgs[:, 0] * _GRAY[0] + imgs[:, 1] * _GRAY[1] + imgs[:, 2] * _GRAY[2]


def patch_stats(patches):
    """Per-patch mean and standard deviation of [..., p*p*C] patches -> (mean, std), each [..., 1].
    std = sqrt(unbiased variance + 1e-6), MAE's norm_pix_loss: a flat patch is not divided by zero."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1.e-6) ** .5


def normalize_patches(patches):
    """Each patch [..., p*p*C] by its own mean and std (patch_stats): the norm_pix_loss target."""
    mean, std = patch_stats(patches)
    return (patches - mean) / std


def denormalize_patches(pred, patches):
    """Predictions of normalize_patches(patches) back to the pixel space of `patches` (both [..., p*p*C])."""
    mean, std = patch_stats(patches)
    return pred * std + mean


def masked_patch_mse(pred, target, mask, norm_pix_loss=False):
    """MAE reconstruction loss: per-patch mean squared error, averaged over the removed patches.

    pred, target: [N, L, p*p*C]; mask: [N, L], True = removed.
    With norm_pix_loss the target patches are normalised by their own mean and variance.
    """
    if norm_pix_loss:
        target = normalize_patches(target)
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)     # [N, L]
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum()


def focal_frequency_loss(pred, target, freq_mask, alpha=1.0):
    """Focal frequency loss (Jiang et al., ICCV 2021) restricted to the bins of `freq_mask`.

    pred, target: [N, H, W] real images; freq_mask: [H, W] in FFT (unshifted) order, 1 = scored bin.
    Per bin, the distance is |F_pred - F_target|^2 of the orthonormal 2-D FFT; it is weighted by
    |F_pred - F_target|^alpha normalised to [0, 1] by its maximum over the scored bins of each image,
    and detached. alpha = 0 gives the plain mean distance over the scored bins.
    """
    with torch.autocast(pred.device.type, enabled=False):
        diff = torch.fft.fft2(pred.float() - target.float(), norm='ortho')  # = F(pred) - F(target), one FFT
        dist = torch.view_as_real(diff).square().sum(-1)                    # [N, H, W] |F_pred - F_target|^2
        m = freq_mask.to(dist.dtype)
        if alpha == 0:
            weight = m.expand_as(dist)
        else:
            with torch.no_grad():
                weight = dist.sqrt().pow(alpha) * m
                weight = weight / weight.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        return (weight * dist).sum() / (m.sum() * dist.shape[0])


def reference_frequency_loss(pred, target, freq_mask, eps=1e-7):
    """The reference code's frequency loss (its FocalFrequencyLoss with gamma = 1: no focal weight).

    pred: [N, C, H, W], each channel compared with the grey target [N, H, W]; freq_mask: [H, W] in FFT
    (unshifted) order, 1 = scored bin. Per image and channel, the mean over the scored bins of
    sqrt(|F(pred[n, c]) - F(target[n])|^2 + eps) of the orthonormal 2-D FFT; then the mean over channels
    and images. A prediction whose every channel equals the grey target scores ~sqrt(eps); a perfect colour
    prediction does not (its channels differ from their luma).
    """
    with torch.autocast(pred.device.type, enabled=False):
        diff = torch.fft.fft2(pred.float() - target.float()[:, None], norm='ortho')    # [N, C, H, W], one FFT
        dist = (torch.view_as_real(diff).square().sum(-1) + eps).sqrt()
        m = freq_mask.to(dist.dtype)
        return (dist * m).sum() / (m.sum() * dist.shape[0] * dist.shape[1])


def _ffl_of_gray(pred, target, freq_mask, alpha=1.0):
    return focal_frequency_loss(to_gray(pred), target, freq_mask, alpha)


# --freq_loss name -> loss(pred [N, C, H, W], grey target [N, H, W], scored bins [H, W], alpha)
FREQ_LOSSES = {
    'reference': lambda pred, target, freq_mask, alpha: reference_frequency_loss(pred, target, freq_mask),
    'ffl': _ffl_of_gray,            # Jiang et al.'s focal frequency loss of the grey prediction (alpha = --ffl_alpha)
}
