"""What the files on disk look like, defined once for every stage: image files, the one image reader, and the
columns of a manifest. (The landmark count and layout live in util/landmarks.py.)

Invariant: every stage reads pixels through `read_image_rgb`, so a file is usable everywhere or nowhere --
preparation, pre-training, fine-tuning, evaluation, prediction and the figures cannot disagree about it.

The file's bytes are decoded from memory (cv2.imdecode). That is what makes truncation visible: reading a
file by name, libjpeg pads a stream that ends early with grey and only prints "Premature end of JPEG file"
(without the path), whereas the memory decoder fails on a JPEG or PNG stream that ends before its end
marker. It costs no more than imread + cvtColor (the decoder writes RGB directly). Corruption that keeps
the stream's length and structure (flipped bits inside the entropy-coded data) is not detectable without a
second decoder and is read as the decoder renders it.
"""
import os

import cv2
import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')

# A manifest is a CSV with these columns first (more are allowed and ignored by training): paths relative to
# the CSV; `landmarks` a float32 [68, 2] .npy (empty = none); label 1 = fake, 0 = real, empty = unknown.
MANIFEST_COLUMNS = ('path', 'landmarks', 'label', 'video', 'dataset')
MANIFEST_ENCODING = 'utf-8-sig'     # reads files with and without a byte-order mark (spreadsheet exports)


def is_image_file(path):
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def read_image_rgb(path):
    """Read an image file as RGB uint8 [H, W, 3]; ValueError naming the file when it is not usable.

    The format is taken from the content, not the extension (a PNG named .jpg is read). Grayscale is
    replicated to three channels, alpha is dropped, 16-bit samples are scaled to 8 bits, and the EXIF
    orientation is applied. Any size the decoder accepts is returned as it is (a 1 x 1 image too: the stages
    resize); images of more than 2^30 pixels (OpenCV's CV_IO_MAX_IMAGE_PIXELS) are refused before decoding.
    Unusable: missing, zero bytes, not an image, truncated, corrupt beyond decoding.
    """
    path = os.fspath(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)         # also works for non-ASCII paths on every platform
    except FileNotFoundError:
        raise ValueError(f'{path}: image file not found') from None
    except OSError as e:
        raise ValueError(f'{path}: cannot read image file ({e.strerror or e})') from None
    if data.size == 0:
        raise ValueError(f'{path}: zero-byte image file')
    level = cv2.utils.logging.getLogLevel()        # OpenCV's warnings do not name the file: this error does
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
    except cv2.error as e:
        if 'CV_IO_MAX_IMAGE_PIXELS' in str(e):
            raise ValueError(f'{path}: image larger than the decoder\'s limit of 2^30 pixels') from None
        raise ValueError(f'{path}: cannot decode image ({str(e).strip().splitlines()[-1]})') from None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if img is None or img.size == 0:
        raise ValueError(f'{path}: cannot decode image (truncated, corrupt or not an image)')
    return img
