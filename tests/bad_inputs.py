"""A corpus of broken inputs, written at test time (nothing binary is committed).

The expected outcome of every case is stated here once, next to how the file is made; the tests run the
corpus through every stage and compare. `usable` is what util/formats.read_image_rgb (every stage's reader)
makes of an image; `lm` what the landmark file gives stage 1: 'ok', 'none' (random masking, counted as
without landmarks) or 'bad' (the sample is unusable in stage 1; stage 2 never reads landmarks).
"""
import csv
import io
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from util.formats import MANIFEST_COLUMNS


def _png_claiming(width, height):
    """A valid PNG header and one row of data for an image of width x height gray pixels: what a
    decompression bomb looks like to a decoder before it allocates."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'\x00' * (width + 1))) + chunk(b'IEND', b''))


def _encode(img, ext):
    """RGB [H, W, 3], RGBA [H, W, 4] or gray [H, W] -> bytes of the file (OpenCV wants BGR / BGRA)."""
    if img.ndim == 3:
        img = img[..., [2, 1, 0, 3][:img.shape[2]]]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img))
    assert ok
    return buf.tobytes()


# name: (file name, how its bytes are made from the face (RGB uint8) -> bytes, usable, has its face's landmarks)
IMAGE_CASES = {
    'png': ('png.png', lambda f: _encode(f, '.png'), True, True),
    'jpeg': ('jpeg.jpg', lambda f: _encode(f, '.jpg'), True, True),
    'zero_byte': ('zero_byte.jpg', lambda f: b'', False, True),
    'truncated_jpeg': ('truncated_jpeg.jpg', lambda f: _encode(f, '.jpg')[:-200], False, True),
    'truncated_png': ('truncated_png.png', lambda f: _encode(f, '.png')[:len(_encode(f, '.png')) * 2 // 3],
                      False, True),
    'not_an_image': ('not_an_image.jpg', lambda f: b'path,landmarks,label\n' * 20, False, True),
    'wrong_extension': ('png_named.jpg', lambda f: _encode(f, '.png'), True, True),
    'grayscale': ('grayscale.png', lambda f: _encode(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), '.png'), True, True),
    'rgba': ('rgba.png', lambda f: _encode(np.dstack([f, np.full(f.shape[:2], 90, np.uint8)]), '.png'), True, True),
    'sixteen_bit': ('sixteen_bit.png', lambda f: _encode(f.astype(np.uint16) * 257, '.png'), True, True),
    'tiny': ('tiny.png', lambda f: _encode(f[:1, :1], '.png'), True, False),
    'huge': ('huge.png', lambda f: _png_claiming(50000, 50000), False, False),
}


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _pickled_npy(lm):
    buf = io.BytesIO()
    np.save(buf, np.array([lm, 'x'], dtype=object), allow_pickle=True)
    return buf.getvalue()


# name: (how the landmark file's bytes are made from the face's landmarks [68, 2] -> bytes or None (no file),
#        outcome in stage 1)
LANDMARK_CASES = {
    'lm_absent_file': (lambda lm: None, 'bad'),
    'lm_zero_byte': (lambda lm: b'', 'bad'),
    'lm_not_npy': (lambda lm: b'not a numpy file' * 10, 'bad'),
    'lm_pickled': (_pickled_npy, 'bad'),
    'lm_wrong_shape': (lambda lm: _npy(lm[:5]), 'bad'),
    'lm_transposed': (lambda lm: _npy(np.ascontiguousarray(lm.T)), 'bad'),
    'lm_nan': (lambda lm: _npy(np.where(np.arange(68)[:, None] == 30, np.nan, lm).astype(np.float32)), 'bad'),
    'lm_inf': (lambda lm: _npy(np.where(np.arange(68)[:, None] == 30, np.inf, lm).astype(np.float32)), 'bad'),
    'lm_far_outside': (lambda lm: _npy(np.full((68, 2), -1000, np.float32)), 'none'),
    'lm_other_image_pixels': (lambda lm: _npy((lm * 8).astype(np.float32)), 'none'),
    'lm_float64': (lambda lm: _npy(lm.astype(np.float64)), 'ok'),
    'lm_int': (lambda lm: _npy(lm.round().astype(np.int64)), 'ok'),
}


@dataclass
class Corpus:
    root: Path
    manifest: Path                  # every case and the good faces, saved with a UTF-8 byte-order mark
    rows: list                      # the manifest's rows (dicts), repeats included
    repeats: int                    # rows that repeat an earlier row exactly
    missing: int                    # rows whose image file does not exist
    images: dict                    # case name -> image path
    bad_images: set                 # absolute paths of unusable images (missing file excluded)
    bad_landmarks: set              # absolute paths of landmark files that make a stage-1 sample unusable
    no_landmarks: set               # absolute image paths whose sample has no usable landmarks in stage 1
    broken_manifests: dict = field(default_factory=dict)   # name -> (path, words of its one-line error)


def write_manifest(path, rows, bom=False):
    with open(path, 'w', newline='', encoding='utf-8-sig' if bom else 'utf-8') as f:
        w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
        w.writeheader()
        w.writerows(rows)


def build_corpus(root, faces=4):
    """Write the corpus under `root`: synthetic 64-px faces (`faces` identities x 2 frames, real and fake)
    as the good part, every image and landmark case, a listed file that does not exist, two repeated rows,
    and broken manifests. -> Corpus"""
    from synthetic.faces import generate_dataset
    root = Path(root)
    data = generate_dataset(root / 'synthetic', num_identities=faces, frames_per_identity=2, size=64, seed=1,
                            fake_ratio=0.5, test_fraction=0, progress=False)
    with open(data['all'], newline='') as f:
        good = [{k: r[k] for k in MANIFEST_COLUMNS} for r in csv.DictReader(f)]
    for r in good:                                   # make the rows relative to root
        r['path'], r['landmarks'] = f'synthetic/{r["path"]}', f'synthetic/{r["landmarks"]}'
    base = next(r for r in good if r['label'] == '0')
    face = cv2.imread(str(root / base['path']))[..., ::-1].copy()
    lm = np.load(root / base['landmarks'])

    cases = root / 'cases'
    cases.mkdir()
    rows, images, bad_images, bad_landmarks, no_landmarks = [], {}, set(), set(), set()
    for name, (fname, make, usable, with_lm) in IMAGE_CASES.items():
        path = cases / fname
        path.write_bytes(make(face))
        images[name] = path
        rows.append(dict(path=f'cases/{fname}', landmarks=base['landmarks'] if with_lm else '', label='0',
                         video=f'case_{name}', dataset='corpus'))
        if not usable:
            bad_images.add(str(path))
        elif not with_lm:
            no_landmarks.add(str(path))
    for name, (make, outcome) in LANDMARK_CASES.items():
        img, npy = cases / f'{name}.png', cases / f'{name}.npy'
        shutil.copyfile(root / base['path'], img)
        content = make(lm)
        if content is not None:
            npy.write_bytes(content)
        rows.append(dict(path=f'cases/{img.name}', landmarks=f'cases/{npy.name}', label='0', video=f'case_{name}',
                         dataset='corpus'))
        if outcome == 'bad':
            bad_landmarks.add(str(npy))
        elif outcome == 'none':
            no_landmarks.add(str(img))
    rows.append(dict(path='cases/absent.png', landmarks='', label='0', video='case_absent', dataset='corpus'))
    reals = [r for r in good if r['label'] == '0']
    rows = good + rows + [dict(reals[0]), dict(reals[-1])]       # two exact repeats (real: kept in stage 1)
    manifest = root / 'corpus.csv'
    write_manifest(manifest, rows, bom=True)

    broken = {}
    header = ','.join(MANIFEST_COLUMNS)
    for name, text, words in (
            ('missing_columns', 'path,label,video\ncases/png.png,0,v\n', 'lacks column(s) landmarks, dataset'),
            ('bad_label', f'{header}\ncases/png.png,,fake,v,d\n', "label must be 0 (real), 1 (fake) or empty"),
            ('empty', f'{header}\n', 'manifest has no rows'),
            ('no_path', f'{header}\n,,0,v,d\n', 'the row has no path')):
        broken[name] = (root / f'{name}.csv', words)
        broken[name][0].write_text(text, encoding='utf-8')
    broken['latin1'] = (root / 'latin1.csv', 'is not UTF-8 text')
    broken['latin1'][0].write_bytes(f'{header}\ncases/caf\xe9.png,,0,v,d\n'.encode('latin-1'))
    return Corpus(root, manifest, rows, repeats=2, missing=1, images=images, bad_images=bad_images,
                  bad_landmarks=bad_landmarks, no_landmarks=no_landmarks, broken_manifests=broken)


def snapshot(folder):
    """{relative path: bytes} of every file below `folder`: what a later run must not lose."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}
