"""Losses of the two MIFAE pretext tasks (pure functions of tensors, shared by training and tests)."""
import torch

# ITU-R BT.601 luma weights; the frequency target is the spectrum of the grayscale image.
_GRAY = (0.299, 0.587, 0.114)


def to_gray(imgs):
    """[N, 3, H, W] -> [N, H, W] luma."""
    return imgs[:, 0] * _GRAY[0] + imgs[:, 1] * _GRAY[1] + imgs[:, 2] * _GRAY[2]


def masked_patch_mse(pred, target, mask, norm_pix_loss=False):
    """MAE reconstruction loss: per-patch mean squared error, averaged over the removed patches.

    pred, target: [N, L, p*p*C]; mask: [N, L], True = removed.
    With norm_pix_loss the target patches are normalised by their own mean and variance.
    """
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.e-6) ** .5
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
