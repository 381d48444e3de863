"""Degradations for robustness evaluation: DeeperForensics-1.0's seven distortions at its five levels,
plus true JPEG compression.

Invariant: `perturb(img, kind, level, rng)` takes and returns a uint8 RGB [H, W, 3] image of the same
shape, never modifies its input, and draws randomness only from `rng` (a numpy Generator): the same
generator state gives the same output. Level 1 is the mildest, 5 the strongest; every type gets
stronger with the level. Float results are clipped to [0, 255] and truncated to uint8, as the
reference code does (`astype(np.uint8)`).

The parameters are DeeperForensics-1.0's (perturbation/add_distortion_to_video.py, Jiang et al.,
CVPR 2020), its types renamed by what they do:
    saturation  CS    YCbCr chroma scaled by the parameter
    contrast    CC    pixel values scaled by the parameter
    block       BW    that many grey (128) 8x8 blocks at uniform positions, times min(H, W) // 256
    noise       GNC   white Gaussian noise of that variance on YCbCr in [0, 1] (studio swing)
    blur        GB    cv2.GaussianBlur with that (odd) kernel size and sigma = kernel / 6
    pixelation  JPEG  bilinear down-scaling by that factor and back: the reference calls it "JPEG",
                      but no JPEG coding happens, so it is named for what it is
    h264        VC    the whole video re-encoded by H.264 at that CRF (`compress_video`, not `perturb`)
and one type the reference lacks, since it is what "JPEG" means to most users:
    jpeg              JPEG coding (libjpeg through OpenCV, 4:2:0) at that quality

Two departures from the reference, both where it is degenerate or buggy, never on video frames of
the usual sizes: `block` uses at least one unit (the reference places no block at all on images under
256 pixels, e.g. 224 face crops), and `saturation`/`noise` use the exact BT.601 YCbCr transform
(the reference feeds 0-255 values to OpenCV's float conversion, which offsets chroma by 0.5/255
and shifts the neutral point by 0.002 grey levels).
"""
import os
import subprocess
import zlib
from typing import Callable, NamedTuple, Optional

import cv2
import numpy as np

LEVELS = (1, 2, 3, 4, 5)

# BT.601 full-range RGB -> (Y, Cb, Cr), chroma centred on 0 (the transform of JPEG and of OpenCV)
_RGB2YCC = np.array([[0.299, 0.587, 0.114],
                     [-0.168736, -0.331264, 0.5],
                     [0.5, -0.418688, -0.081312]], np.float64)
_YCC2RGB = np.linalg.inv(_RGB2YCC)
# 1 unit of studio-swing YCbCr in [0, 1] (Y over 16..235, chroma over 16..240) in full-range grey levels
_STUDIO_UNIT = np.array([255.0 * 255.0 / 219.0, 255.0 * 255.0 / 224.0, 255.0 * 255.0 / 224.0])


def parameter(kind, level):
    """The parameter of `kind` at `level` (1-5); ValueError naming the bad one."""
    if kind not in PERTURBATIONS:
        raise ValueError(f'unknown perturbation {kind!r}; choose from {" ".join(PERTURBATIONS)}')
    if int(level) != level or not 1 <= level <= 5:
        raise ValueError(f'perturbation level must be 1-5, got {level!r}')
    return PERTURBATIONS[kind].levels[int(level) - 1]


def _to_uint8(x):
    return np.clip(x, 0, 255).astype(np.uint8)      # truncation, as the reference


def _saturation(img, p, rng):
    # scaling both chroma channels by p and converting back is, the transform being exact, rgb -> Y + p (rgb - Y)
    x = img.astype(np.float64)
    y = x @ _RGB2YCC[0]                             # [H, W] luma
    return _to_uint8(y[..., None] + p * (x - y[..., None]))


def _contrast(img, p, rng):
    return _to_uint8(img.astype(np.float32) * np.float32(p))


def _block(img, p, rng, width=8):
    h, w = img.shape[:2]
    out = img.copy()
    for _ in range(max(1, min(h, w) // 256) * p):
        x = int(rng.integers(0, w - 1 - width, endpoint=True))   # the reference draws x then y
        y = int(rng.integers(0, h - 1 - width, endpoint=True))
        out[y:y + width, x:x + width] = 128
    return out


def _noise(img, p, rng):
    n = rng.standard_normal(img.shape) * (np.sqrt(p) * _STUDIO_UNIT)   # [H, W, (Y, Cb, Cr)] full range
    return _to_uint8(img.astype(np.float64) + n @ _YCC2RGB.T)


def _blur(img, p, rng):
    return cv2.GaussianBlur(img, (p, p), p / 6.0)


def _pixelation(img, p, rng):
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // p), max(1, h // p)), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _jpeg(img, p, rng):
    ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(p)])
    if not ok:
        raise RuntimeError('OpenCV could not encode a JPEG')
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


class Perturbation(NamedTuple):
    levels: tuple                     # the parameter of levels 1..5
    frame: Optional[Callable]         # (img, parameter, rng) -> img; None: whole videos (compress_video)


PERTURBATIONS = {                     # one entry per type, looked up by name; order is only for listing
    'saturation': Perturbation((0.4, 0.3, 0.2, 0.1, 0.0), _saturation),
    'contrast': Perturbation((0.85, 0.725, 0.6, 0.475, 0.35), _contrast),
    'block': Perturbation((16, 32, 48, 64, 80), _block),
    'noise': Perturbation((0.001, 0.002, 0.005, 0.01, 0.05), _noise),
    'blur': Perturbation((7, 9, 13, 17, 21), _blur),
    'pixelation': Perturbation((2, 3, 4, 5, 6), _pixelation),
    'jpeg': Perturbation((90, 70, 50, 30, 10), _jpeg),
    'h264': Perturbation((30, 32, 35, 38, 40), None),
}
VIDEO_KINDS = tuple(k for k, p in PERTURBATIONS.items() if p.frame is None)   # applied by compress_video
FRAME_KINDS = tuple(k for k in PERTURBATIONS if k not in VIDEO_KINDS)


def stream_key(kind):
    """The number that keys a type's random streams: derived from its name, never from its place in the table,
    so that adding a type anywhere leaves every other type's draws as they were."""
    return zlib.crc32(kind.encode())


def perturb(img, kind, level, rng):
    """Degrade a uint8 RGB image [H, W, 3] by `kind` at `level` (1-5), randomness from `rng` only."""
    p = parameter(kind, level)
    if kind in VIDEO_KINDS:
        raise ValueError(f'{kind!r} degrades whole videos: use compress_video')
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'perturb needs a uint8 [H, W, 3] image, got {img.dtype} {img.shape}')
    return PERTURBATIONS[kind].frame(img, p, rng)


def parse_spec(spec):
    """'TYPE:LEVEL' -> [(type, level)]; 'TYPE' -> its five levels; 'all' -> every frame type at every level."""
    if spec == 'all':
        return [(k, lv) for k in FRAME_KINDS for lv in LEVELS]
    kind, _, level = spec.partition(':')
    if not level:
        parameter(kind, 1)
        return [(kind, lv) for lv in LEVELS]
    try:
        lv = int(level)
    except ValueError:
        raise ValueError(f'perturbation level must be 1-5, got {level!r}') from None
    parameter(kind, lv)
    return [(kind, lv)]


def name(kind, level):
    """File-name suffix of one perturbation: 'blur3'."""
    return f'{kind}{level}'


# ---------------------------------------------------------------------------------------------------
# video compression: the FFmpeg that imageio-ffmpeg ships (no system install needed)

def ffmpeg_exe():
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def compress_video(src, dst, crf):
    """Re-encode the video `src` to `dst` with H.264 (libx264, preset medium, yuv420p) at constant rate
    factor `crf`, video stream only -- the reference's `ffmpeg -i src -crf crf dst`. Returns dst."""
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    cmd = [ffmpeg_exe(), '-nostdin', '-loglevel', 'error', '-y', '-i', str(src), '-map', '0:v:0',
           '-c:v', 'libx264', '-preset', 'medium', '-crf', str(int(crf)), '-pix_fmt', 'yuv420p',
           # yuv420p needs even sides: drop a last odd row or column
           '-vf', 'crop=trunc(iw/2)*2:trunc(ih/2)*2', '-an', str(dst)]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ['no message'])[-1]
        raise RuntimeError(f'{src}: FFmpeg could not re-encode it at CRF {crf}: {last}')
    return dst
