"""Frequency-domain pieces of the MIFAE frequency branch: the low-pass (high-frequency masking) filter.

The spectrum is the orthonormal 2-D FFT, "centred" so that the zero frequency sits at (H/2, W/2).
A disc of radius r around that centre is kept (distance strictly less than r); the rest -- the high
frequencies -- is masked. The filters are computed in float32 whatever the autocast state.
"""
import functools
import math

import numpy as np
import torch


@functools.lru_cache(maxsize=16)
def _disc(h, w, radius, device_str):
    yy, xx = np.mgrid[0:h, 0:w]
    keep = (np.hypot(yy - h // 2, xx - w // 2) < radius).astype(np.float32)   # [H, W] centred, 1 = kept
    return (torch.from_numpy(keep).to(device_str),
            torch.from_numpy(np.ascontiguousarray(np.fft.ifftshift(keep))).to(device_str))


def low_pass_mask(h, w, radius, device='cpu'):
    """The centred keep-disc [H, W] (1 = kept low frequency) and the same disc in FFT (unshifted) order."""
    return _disc(int(h), int(w), float(radius), str(torch.device(device)))


def max_radius(h, w):
    """Distance from the spectrum's centre to its farthest bin: a radius above it masks nothing."""
    return math.hypot(h - h // 2, w - w // 2)


def low_pass(imgs, radius):
    """High-frequency masking: keep the centred spectrum's disc of `radius` bins, back to pixels.

    imgs: [N, C, H, W] on any device. Returns (low-passed imgs [N, C, H, W] float32, keep_mask [H, W]).
    """
    h, w = imgs.shape[-2:]
    keep, keep_unshifted = low_pass_mask(h, w, radius, imgs.device)
    return filter_spectrum(imgs, keep_unshifted), keep


def filter_spectrum(imgs, keep_unshifted):
    """Multiply the spectrum of `imgs` [N, C, H, W] by a filter given in FFT (unshifted) order; back to pixels.

    Masking the unshifted spectrum with the unshifted disc equals shift, mask, shift back. The filter must be
    symmetric (f[k] = f[-k]), as every disc and its complement are: the filtered spectrum of a real image then
    stays Hermitian, the result is real, and the half spectrum of rfft2 does the work with half the FFTs.
    """
    w = imgs.shape[-1]
    with torch.autocast(imgs.device.type, enabled=False):
        spec = torch.fft.rfft2(imgs.float(), norm='ortho')                   # [N, C, H, W//2+1]
        return torch.fft.irfft2(spec * keep_unshifted[..., :w // 2 + 1], s=imgs.shape[-2:], norm='ortho')


def log_magnitude_spectrum(img):
    """Centred log(1 + |FFT|) of an [..., H, W] tensor, for display."""
    spec = torch.fft.fftshift(torch.fft.fft2(img.float(), norm='ortho'), dim=(-2, -1))
    return torch.log1p(spec.abs())
