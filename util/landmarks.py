"""iBUG-68 landmark conventions and the geometric transforms that move landmarks with their image.

Landmarks are float32 arrays of shape [68, 2] holding (x, y) in the pixels of the image they belong
to, with the centre of pixel (i, j) at coordinate (j, i) -- the convention of dlib and FAN.
"""
import io

import numpy as np

NUM_LANDMARKS = 68

# Index groups of the iBUG-68 layout ("right" is the subject's right, on the image's left).
JAW = list(range(0, 17))
RIGHT_BROW = list(range(17, 22))
LEFT_BROW = list(range(22, 27))
NOSE_BRIDGE = list(range(27, 31))
NOSTRILS = list(range(31, 36))
NOSE = NOSE_BRIDGE + NOSTRILS
RIGHT_EYE = list(range(36, 42))
LEFT_EYE = list(range(42, 48))
OUTER_LIPS = list(range(48, 60))
INNER_LIPS = list(range(60, 68))
MOUTH = OUTER_LIPS + INNER_LIPS
INNER_FACE = list(range(17, 68))      # brows, eyes, nose and mouth: what a face swap replaces

# The facial regions that region-guided masking hides as a whole.
FACIAL_REGIONS = {
    'right_eye': RIGHT_BROW + RIGHT_EYE,
    'left_eye': LEFT_BROW + LEFT_EYE,
    'nose': NOSE,
    'mouth': MOUTH,
}


def _mirror_permutation():
    """Index permutation that relabels landmarks after a horizontal flip (left <-> right)."""
    perm = list(range(NUM_LANDMARKS))
    pairs = [(i, 16 - i) for i in range(8)]                      # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]                # brows
    pairs += [(31, 35), (32, 34)]                                # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lips
    pairs += [(60, 64), (61, 63), (67, 65)]                      # inner lips
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return np.array(perm)


FLIP_PERM = _mirror_permutation()


def validate_landmarks(landmarks, source='landmarks'):
    """Return `landmarks` as float32 [68, 2]; raise ValueError naming `source` when they are unusable."""
    arr = np.asarray(landmarks)
    if arr.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f'{source}: landmarks must have shape [68, 2], got {list(arr.shape)}')
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f'{source}: landmarks contain NaN or infinite values')
    return arr


def _npy_header(shape, dtype):
    """The bytes np.save writes before the data of an array of this shape and dtype (C order)."""
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, dtype))
    return buf.getvalue()[:-int(np.prod(shape)) * np.dtype(dtype).itemsize]


_LANDMARK_HEADER = _npy_header((NUM_LANDMARKS, 2), '<f4')
_LANDMARK_FILE_SIZE = len(_LANDMARK_HEADER) + NUM_LANDMARKS * 2 * 4


def load_landmarks(path):
    """Read a sidecar .npy landmark file, checked.

    The common file (float32 [68, 2], as prepare_faces.py writes it) is read straight after its known
    header, five times faster than np.load parsing the header (it runs for every sample of every epoch);
    any other .npy goes through np.load.
    """
    try:
        with open(path, 'rb') as f:
            data = f.read(_LANDMARK_FILE_SIZE + 1)
        if len(data) == _LANDMARK_FILE_SIZE and data.startswith(_LANDMARK_HEADER):
            arr = np.frombuffer(bytearray(data), '<f4', offset=len(_LANDMARK_HEADER)).reshape(NUM_LANDMARKS, 2)
        elif not data.startswith(b'\x93NUMPY'):
            raise ValueError('empty file' if not data else 'not a .npy file')
        else:
            arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any read failure is reported with the file name
        raise ValueError(f'{path}: cannot read landmark file ({e})') from e
    return validate_landmarks(arr, str(path))


def crop_resize_landmarks(landmarks, box, out_size):
    """Move landmarks into a crop `box` = (x0, y0, w, h) of the image resized to `out_size` (int or (W, H))."""
    x0, y0, w, h = box
    out_w, out_h = (out_size, out_size) if np.isscalar(out_size) else out_size
    scale = np.array([out_w / w, out_h / h], np.float32)
    # pixel centres sit at integers: map through continuous coordinates (+0.5), scale, and back
    return ((landmarks - np.array([x0, y0], np.float32) + 0.5) * scale - 0.5).astype(np.float32)


def hflip_landmarks(landmarks, width):
    """Landmarks of the horizontally flipped image of width `width`, relabelled left <-> right."""
    out = landmarks[FLIP_PERM].copy()
    out[:, 0] = width - 1 - out[:, 0]
    return out
