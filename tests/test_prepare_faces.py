"""Tests for preprocess/faces.py and prepare_faces.py: CPU, offline.

* the real dlib landmarker on skimage's astronaut photo;
* a short video written here with OpenCV, prepared twice (the second run does nothing);
* tiny fake directory trees for every --dataset preset (a stub landmarker keeps these fast);
* face_alignment plumbing with random FAN / S3FD weights in a temporary TORCH_HOME;
* bad input: corrupt / truncated / zero-byte / gray / RGBA / 16-bit files, no face,
  unknown layouts, split files naming absent videos, missing weights, interruption.
"""
import csv
import json
import os
import sys

import cv2
import numpy as np
import pytest
import skimage.data

import prepare_faces
from preprocess import faces as F
from preprocess import worker
from preprocess.journal import JOURNAL_DIR, Journal

ASTRONAUT_BOX = (179.0, 83.0, 266.0, 170.0)     # dlib's face box on the 512 x 512 astronaut


# ---------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def prep_dlib():
    """One real dlib landmarker for the module (building one takes seconds)."""
    return F.build_landmarker('dlib')


@pytest.fixture
def prep_use_dlib(monkeypatch, prep_dlib):
    """prepare_faces runs (in-process) reuse the module's dlib landmarker."""
    monkeypatch.setattr(F, 'build_landmarker', lambda *a, **k: prep_dlib)
    return prep_dlib


class StubLandmarker(F.Landmarker):
    """Finds one 'face' in the middle of every image, with a fixed 68-point layout."""
    name = 'stub'

    def detect_with_scores(self, img):
        h, w = img.shape[:2]
        return [(w * 0.2, h * 0.2, w * 0.8, h * 0.8)], [1.0]

    def landmarks(self, img, boxes):
        out = []
        for x0, y0, x1, y1 in boxes:
            t = np.linspace(0, 1, F.NUM_LANDMARKS, dtype=np.float32)
            out.append(np.stack([x0 + t * (x1 - x0), y0 + (t * 7 % 1) * (y1 - y0)], 1))
        return out


@pytest.fixture
def prep_stub(monkeypatch):
    monkeypatch.setattr(F, 'build_landmarker', lambda *a, **k: StubLandmarker())


def astronaut():
    return skimage.data.astronaut()


def write_video(path, frames, size=(96, 80), fourcc='mp4v', content=None):
    """A small video: ``content(i)`` (BGR frame) or a gradient with a moving bar."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        if content is not None:
            frame = content(i)
        else:
            frame = np.full((h, w, 3), 40, np.uint8)
            frame[:, (i * 3) % w] = 255
        writer.write(frame)
    writer.release()
    return str(path)


def moving_astronaut(i, width=640, height=512):
    frame = np.zeros((height, width, 3), np.uint8)
    x = i * 3
    frame[:, x:x + 512] = astronaut()[:, :, ::-1]
    return frame


def args_for(input_dir, output_dir, *extra):
    argv = ['--input', str(input_dir), '--output', str(output_dir), '--landmarker', 'dlib',
            '--no_progress', *[str(e) for e in extra]]
    return prepare_faces.get_args_parser().parse_args(argv)


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def eye_nose_mouth_chin(lm):
    lm = np.asarray(lm)
    return lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48:68].mean(0), lm[8]


# ---------------------------------------------------------------------------------
# preprocess/faces.py
# ---------------------------------------------------------------------------------

def test_dlib_astronaut_one_face_in_anatomical_order(prep_dlib):
    img = astronaut()
    boxes = prep_dlib.detect(img)
    assert len(boxes) == 1
    faces = F.extract_faces(img, prep_dlib, margin=1.3, size=256)
    assert len(faces) == 1
    face = faces[0]
    assert face['crop'].shape == (256, 256, 3) and face['crop'].dtype == np.uint8
    assert face['landmarks'].shape == (68, 2) and face['landmarks'].dtype == np.float32
    for lm in (prep_dlib.landmarks(img, boxes)[0], face['landmarks']):
        left_eye, right_eye, nose, mouth, chin = eye_nose_mouth_chin(lm)
        assert left_eye[0] < nose[0] < right_eye[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < mouth[1] < chin[1]
    # the face sits in the middle of the crop
    assert np.all(face['landmarks'] > 0) and np.all(face['landmarks'] < 256)


def test_dlib_crop_and_landmarks_consistent(prep_dlib):
    """Landmarks moved into the crop land where dlib finds them on the crop itself,
    and the crop pixels under them are the face (skin), not the background."""
    img = astronaut()
    lm_img = prep_dlib.landmarks(img, prep_dlib.detect(img))[0]
    crop, lm_crop, box = F.crop_face(img, lm_img, margin=1.3, size=256)
    again = prep_dlib.landmarks(crop, prep_dlib.detect(crop))[0]
    assert np.abs(again - lm_crop).mean() < 4.0
    # back to the image: the inverse of the crop mapping
    side = box[2] - box[0]
    back = (lm_crop + 0.5) * side / 256 - 0.5 + np.array(box[:2])
    np.testing.assert_allclose(back, lm_img, atol=1e-3)
    # nose bridge and cheeks are skin coloured: red > green > blue and bright
    for k in (28, 29, 30, 31, 35):
        r, g, b = crop[int(round(lm_crop[k, 1])), int(round(lm_crop[k, 0]))].astype(int)
        assert r > g > b and r > 120


def test_crop_face_pads_outside_and_maps_points_exactly():
    img = np.full((100, 120, 3), 200, np.uint8)
    img[10, 5] = (255, 0, 0)
    lm = np.array([[0.0, 0.0], [40.0, 40.0]], np.float32)          # face at the top-left corner
    crop, lm_crop, box = F.crop_face(img, lm, margin=2.0, size=80)
    assert box == (-20.0, -20.0, 60.0, 60.0)                         # side 80 -> scale 1
    assert crop.shape == (80, 80, 3)
    assert (crop[:20, :20] == 0).all()                               # padded with black
    np.testing.assert_allclose(lm_crop, lm + 20)
    assert tuple(crop[30, 25]) == (255, 0, 0)                        # the red pixel moved by +20
    # with a box instead of landmarks, and a downscale
    crop, lm_crop, box = F.crop_face(img, lm, margin=1.0, size=20, box=(20, 20, 60, 60))
    assert box == (20.0, 20.0, 60.0, 60.0) and crop.shape == (20, 20, 3)
    np.testing.assert_allclose(lm_crop, (lm - 20 + 0.5) * 0.5 - 0.5)


def test_extract_faces_reasons(prep_dlib):
    img = astronaut()
    [(faces, reason)] = F.extract_faces_batch([img], prep_dlib, min_face=400)
    assert faces == [] and reason == F.FACE_TOO_SMALL
    [(faces, reason)] = F.extract_faces_batch([np.zeros((120, 160, 3), np.uint8)], prep_dlib)
    assert faces == [] and reason == F.NO_FACE


class FixedDetections(StubLandmarker):
    """Returns the given (boxes, scores) for every image."""

    def __init__(self, boxes, scores):
        self.dets = boxes, scores

    def detect_with_scores(self, img):
        return self.dets


def test_weak_large_detection_does_not_win_over_the_face():
    img = np.zeros((400, 400, 3), np.uint8)
    face, false_positive = (150.0, 150.0, 230.0, 230.0), (0.0, 0.0, 300.0, 300.0)
    dlib_like = FixedDetections([false_positive, face], [0.03, 1.48])     # scores as dlib gives them
    [chosen] = F.extract_faces(img, dlib_like, largest_only=True)
    assert chosen['detector_box'] == face and chosen['score'] == 1.48
    # every face (predict.py): weak detections stay, largest first (a pasted face may score lower)
    assert [f['detector_box'] for f in F.extract_faces(img, dlib_like, largest_only=False)] == [false_positive, face]
    # faces that score alike (S3FD: all above 0.5): the largest first, as before
    both = FixedDetections([face, false_positive], [0.97, 0.6])
    assert [f['detector_box'] for f in F.extract_faces(img, both, largest_only=False)] == [false_positive, face]
    # the best-scoring box is too small: the others compete among themselves
    small = (10.0, 10.0, 30.0, 30.0)
    [chosen] = F.extract_faces(img, FixedDetections([small, face], [2.5, 0.4]), min_face=40)
    assert chosen['detector_box'] == face


def test_load_image_rgb_conversions_and_errors(tmp_path):
    img = astronaut()
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / 'gray.png'), gray)
    rgba = np.dstack([img[:, :, ::-1], np.full(img.shape[:2], 128, np.uint8)])
    cv2.imwrite(str(tmp_path / 'rgba.png'), rgba)
    cv2.imwrite(str(tmp_path / 'deep.png'), img[:, :, ::-1].astype(np.uint16) * 257)
    for name in ('gray.png', 'rgba.png', 'deep.png'):
        out = F.load_image_rgb(tmp_path / name)
        assert out.shape == (512, 512, 3) and out.dtype == np.uint8, name
    np.testing.assert_array_equal(F.load_image_rgb(tmp_path / 'rgba.png'), img)
    np.testing.assert_array_equal(F.load_image_rgb(tmp_path / 'deep.png'), img)
    assert (F.load_image_rgb(tmp_path / 'gray.png')[:, :, 0] == gray).all()

    (tmp_path / 'empty.jpg').write_bytes(b'')
    (tmp_path / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + os.urandom(300))
    for name, words in (('empty.jpg', 'zero-byte'), ('corrupt.png', 'cannot decode'), ('absent.png', 'not found')):
        with pytest.raises(ValueError) as err:
            F.load_image_rgb(tmp_path / name)
        assert name in str(err.value) and words in str(err.value)


def test_read_video_frames_even_spacing_short_and_broken(tmp_path):
    video = write_video(tmp_path / 'v.mp4', 40)
    reader = F.read_video_frames(video, 8)
    frames = list(reader)
    expected = np.linspace(0, 39, 8).round().astype(int).tolist()
    assert [i for i, _ in frames] == expected == reader.indices
    assert frames[0][1].shape == (80, 96, 3) and frames[0][1].dtype == np.uint8
    assert reader.skipped == 0 and reader.read == 8

    short = F.read_video_frames(write_video(tmp_path / 's.mp4', 5), 32)
    assert [i for i, _ in short] == [0, 1, 2, 3, 4]

    everything = F.read_video_frames(video, 0)
    assert len(list(everything)) == 40

    # a truncated AVI opens; the frames past the cut are skipped and counted
    avi = write_video(tmp_path / 'full.avi', 40, fourcc='MJPG',
                      content=lambda i: np.random.default_rng(i).integers(0, 255, (80, 96, 3), dtype=np.uint8))
    data = open(avi, 'rb').read()
    (tmp_path / 'cut.avi').write_bytes(data[:len(data) // 2])
    cut = F.read_video_frames(tmp_path / 'cut.avi', 8)
    got = list(cut)
    assert 0 < len(got) < 8 and cut.skipped == 8 - len(got)

    (tmp_path / 'junk.mp4').write_bytes(os.urandom(2000))
    (tmp_path / 'empty.mp4').write_bytes(b'')
    for name in ('junk.mp4', 'empty.mp4'):
        with pytest.raises(ValueError, match=name):
            list(F.read_video_frames(tmp_path / name, 4))


def test_modules_import_without_dlib_and_face_alignment(tmp_path):
    """preprocess.faces, synthetic.faces and prepare_faces import where dlib / face_alignment / torch
    are absent."""
    import subprocess
    code = ('import sys\n'
            'class Block:\n'
            '    def find_spec(self, name, path=None, target=None):\n'
            '        if name.split(".")[0] in ("dlib", "face_alignment", "torch", "_dlib_pybind11"):\n'
            '            raise ImportError("blocked " + name)\n'
            'sys.meta_path.insert(0, Block())\n'
            'import preprocess.faces, synthetic.faces, prepare_faces\n'
            'assert not {"dlib", "face_alignment", "torch"} & set(sys.modules)\n'
            'try:\n'
            '    preprocess.faces.build_landmarker("dlib")\n'
            'except RuntimeError as e:\n'
            '    assert "dlib-bin" in str(e)\n'
            'else:\n'
            '    raise AssertionError("no error")\n'
            'print("ok")\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and 'ok' in out.stdout, out.stderr


# ---------------------------------------------------------------------------------
# face_alignment plumbing (random weights, offline)
# ---------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def prep_fa_home(tmp_path_factory):
    """A TORCH_HOME holding random FAN and S3FD state dicts under face_alignment's names."""
    torch = pytest.importorskip('torch')
    pytest.importorskip('face_alignment')
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN
    home = tmp_path_factory.mktemp('torch_home')
    folder = home / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    files = F.face_alignment_weight_files()
    assert files['fan'][0] == '2DFAN4-11f355bf06.pth.tar' and files['s3fd'][0] == 's3fd-619a316812.pth'
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), folder / files['fan'][0])
    torch.save(s3fd().state_dict(), folder / files['s3fd'][0])
    return home


def test_face_alignment_plumbing_random_weights(prep_fa_home, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(prep_fa_home))
    landmarker = F.build_landmarker('face_alignment', device='cpu', compile=False, allow_download=False,
                                    batch_size=4)
    assert landmarker.name == 'face_alignment'
    img = astronaut()
    [lm] = landmarker.landmarks(img, [ASTRONAUT_BOX])      # a given face box: no random detector run
    assert lm.shape == (68, 2) and lm.dtype == np.float32 and np.isfinite(lm).all()
    # FAN looks at a square of 200 * scale px around the box centre, raised by 12 % of its
    # height (scale = (width + height) / 195): the points come back in image pixels, in there
    x0, y0, x1, y1 = ASTRONAUT_BOX
    half = 100 * (x1 - x0 + y1 - y0) / 195
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2 - 0.12 * (y1 - y0)])
    assert np.all(np.abs(lm - centre) <= half + 2)
    crop, lm_crop, box = F.crop_face(img, lm, margin=1.3, size=256)
    assert crop.shape == (256, 256, 3)
    assert lm_crop.shape == (68, 2) and np.all(lm_crop >= 0) and np.all(lm_crop < 256)
    side = box[2] - box[0]
    np.testing.assert_allclose((lm_crop + 0.5) * side / 256 - 0.5 + np.array(box[:2]), lm, atol=1e-3)


def test_face_alignment_weights_from_weights_dir_and_missing(prep_fa_home, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty_home'))
    # flat folder given with --weights_dir
    found = F.find_face_alignment_weights(str(prep_fa_home / 'hub' / 'checkpoints'), allow_download=False)
    assert found['fan'].endswith('2DFAN4-11f355bf06.pth.tar') and found['s3fd'].endswith('s3fd-619a316812.pth')
    # nothing anywhere, no download: a message naming the files, the folder and dlib
    with pytest.raises(F.WeightsNotFoundError) as err:
        F.find_face_alignment_weights(None, allow_download=False)
    msg = str(err.value)
    assert '2DFAN4-11f355bf06.pth.tar' in msg and 's3fd-619a316812.pth' in msg
    assert str(tmp_path / 'empty_home') in msg and '--landmarker dlib' in msg
    # the download fails (offline): said so
    import face_alignment.utils

    def no_network(*a, **k):
        raise OSError('Name or service not known')
    monkeypatch.setattr(face_alignment.utils, 'load_file_from_url', no_network)
    with pytest.raises(F.WeightsNotFoundError, match='could not be downloaded'):
        F.find_face_alignment_weights(str(tmp_path / 'w'), allow_download=True)
    # prepare_faces stops at once, before touching any item
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'), astronaut())
    args = prepare_faces.get_args_parser().parse_args(
        ['--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'out'), '--no_download', '--no_progress'])
    with pytest.raises(F.WeightsNotFoundError, match='--landmarker dlib'):
        prepare_faces.main(args)
    assert not (tmp_path / 'out' / 'faces').exists()


def test_run_that_produced_nothing_does_not_block_a_rerun(tmp_path, prep_stub, monkeypatch):
    """Offline, the default landmarker stops before any item with a hint to use dlib; the rerun with the hint
    (other settings) goes ahead, where a run that wrote faces keeps its protection."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty_home'))
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'), astronaut())
    out = tmp_path / 'out'
    first = ['--input', str(tmp_path / 'in'), '--output', str(out), '--no_download', '--no_progress']
    with pytest.raises(F.WeightsNotFoundError, match='--landmarker dlib'):
        prepare_faces.main(prepare_faces.get_args_parser().parse_args(first))
    summary = prepare_faces.main(args_for(tmp_path / 'in', out))
    assert summary['processed'] == 1 and summary['faces'] == 1
    with pytest.raises(prepare_faces.LayoutError, match='other settings'):
        prepare_faces.main(args_for(tmp_path / 'in', out, '--size', 128))


# ---------------------------------------------------------------------------------
# prepare_faces.py: a real video with dlib, resumability, interruption
# ---------------------------------------------------------------------------------

def test_video_end_to_end_and_second_run_does_nothing(tmp_path, prep_use_dlib):
    write_video(tmp_path / 'in' / 'clip.mp4', 40, size=(640, 512), content=moving_astronaut)
    out = tmp_path / 'out'
    summary = prepare_faces.main(args_for(tmp_path / 'in', out, '--frames_per_video', 6, '--label', 1))
    assert summary['processed'] == 1 and summary['faces'] == 6 and summary['failures'] == {}
    rows = read_csv(out / 'in_all.csv')
    assert list(rows[0].keys())[:5] == ['path', 'landmarks', 'label', 'video', 'dataset']
    assert [int(r['frame']) for r in rows] == np.linspace(0, 39, 6).round().astype(int).tolist()
    for r in rows:
        assert r['label'] == '1' and r['video'] == 'in/clip' and r['dataset'] == 'in'
        crop = cv2.imread(str(out / r['path']))
        lm = np.load(out / r['landmarks'])
        assert crop.shape == (256, 256, 3) and lm.shape == (68, 2) and lm.dtype == np.float32
        assert os.path.splitext(r['path'])[0] == os.path.splitext(r['landmarks'])[0]
        left_eye, right_eye, nose, mouth, chin = eye_nose_mouth_chin(lm)
        assert max(left_eye[1], right_eye[1]) < nose[1] < mouth[1] < chin[1]
    stamps = {p: os.stat(p).st_mtime_ns for p in (out / 'faces').rglob('*')}

    again = prepare_faces.main(args_for(tmp_path / 'in', out, '--frames_per_video', 6, '--label', 1))
    assert again['processed'] == 0 and again['already_done'] == 1 and again['faces'] == 6
    assert {p: os.stat(p).st_mtime_ns for p in (out / 'faces').rglob('*')} == stamps
    assert read_csv(out / 'in_all.csv') == rows

    # other settings into the same output: refused, unless --overwrite
    with pytest.raises(prepare_faces.LayoutError, match='--overwrite'):
        prepare_faces.main(args_for(tmp_path / 'in', out, '--frames_per_video', 3, '--label', 1))


def test_interrupted_run_keeps_finished_items_and_resumes(tmp_path, prep_stub, monkeypatch):
    for k in range(3):
        write_video(tmp_path / 'in' / f'v{k}.mp4', 6)
    out = tmp_path / 'out'
    real = worker.process_item
    calls = []

    def flaky(item):
        calls.append(item['key'])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(item)
    monkeypatch.setattr(worker, 'process_item', flaky)
    summary = prepare_faces.main(args_for(tmp_path / 'in', out, '--frames_per_video', 2))
    assert summary['interrupted'] and summary['processed'] == 1
    assert len(read_csv(out / 'in_all.csv')) == 2                    # manifest of what finished
    assert not [p for p in os.listdir(out) if p.endswith('.tmp')]    # no half-written file left
    # a crash in the middle of a journal line loses nothing else
    with open(out / '.prepare' / 'in.jsonl', 'a') as f:
        f.write('{"key": "v1.mp4", "rows": [[')
    monkeypatch.setattr(worker, 'process_item', real)
    summary = prepare_faces.main(args_for(tmp_path / 'in', out, '--frames_per_video', 2))
    assert summary['processed'] == 2 and summary['already_done'] == 1 and not summary['interrupted']
    assert len(read_csv(out / 'in_all.csv')) == 6
    # the cut line was dropped, not continued: every line reads back and nothing is redone
    lines = (out / '.prepare' / 'in.jsonl').read_text().splitlines()
    assert len([json.loads(line) for line in lines]) == 1 + 2 + 3      # settings, 2 listings, 3 items
    again = prepare_faces.main(args_for(tmp_path / 'in', out, '--frames_per_video', 2))
    assert again['processed'] == 0 and again['already_done'] == 3


def test_all_frames_stream_through_detection(tmp_path, prep_stub, monkeypatch):
    """--frames_per_video 0: frames are decoded one batch ahead of detection, not all first."""
    write_video(tmp_path / 'in' / 'long.mp4', 40)
    readers, seen = [], []
    real_read, real_extract = F.read_video_frames, F.extract_faces_batch

    def read(*a):
        readers.append(real_read(*a))
        return readers[-1]

    def extract(images, *a, **k):
        seen.append((len(images), readers[-1].read))
        return real_extract(images, *a, **k)
    monkeypatch.setattr(F, 'read_video_frames', read)
    monkeypatch.setattr(F, 'extract_faces_batch', extract)
    summary = prepare_faces.main(args_for(tmp_path / 'in', tmp_path / 'out', '--frames_per_video', 0))
    assert summary['frames'] == summary['faces'] == 40
    assert seen == [(8, 8), (8, 16), (8, 24), (8, 32), (8, 40)]     # (batch, frames decoded so far)


@pytest.mark.slow
def test_workers_pool_matches_single_process(tmp_path):
    (tmp_path / 'in').mkdir()
    img = astronaut()[:, :, ::-1]
    for k in range(3):
        cv2.imwrite(str(tmp_path / 'in' / f'p{k}.jpg'), np.roll(img, 20 * k, axis=1))
    summary = prepare_faces.main(args_for(tmp_path / 'in', tmp_path / 'out', '--workers', 2))
    assert summary['faces'] == 3 and summary['processed'] == 1
    rows = read_csv(tmp_path / 'out' / 'in_all.csv')
    assert [r['video'] for r in rows] == ['in/p0', 'in/p1', 'in/p2'] and {r['label'] for r in rows} == {''}


def test_workers_landmarker_checked_before_the_pool(tmp_path, monkeypatch):
    def cannot_build(*a, **k):
        raise RuntimeError('--landmarker dlib needs dlib')

    def no_pool(*a, **k):
        raise AssertionError('a pool was started')
    monkeypatch.setattr(F, 'build_landmarker', cannot_build)
    monkeypatch.setattr(prepare_faces, 'ProcessPoolExecutor', no_pool)
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'p.jpg'), astronaut())
    with pytest.raises(RuntimeError, match='needs dlib'):
        prepare_faces.main(args_for(tmp_path / 'in', tmp_path / 'out', '--workers', 2))


# Run as a script: the worker processes (which import it as __mp_main__) cannot build their
# landmarker (CASE=init) or die on v2.mp4 as if killed when out of memory (CASE=killed).
WORKER_FAILURE_SCRIPT = '''
import os
import sys
sys.path.insert(0, {root!r})
import prepare_faces
from preprocess import faces as F
from preprocess import worker


def cannot_build(*a, **k):
    raise RuntimeError('CUDA error: out of memory')


def killed_on_v2(item, process_item=worker.process_item):
    if item['key'] == 'v2.mp4':
        os._exit(9)
    return process_item(item)


if __name__ == '__mp_main__':
    if os.environ['CASE'] == 'init':
        F.build_landmarker = cannot_build
    else:
        worker.process_item = killed_on_v2
elif __name__ == '__main__':
    try:
        prepare_faces.main(prepare_faces.get_args_parser().parse_args(sys.argv[1:]))
    except (ValueError, RuntimeError) as e:
        print(f'error: {{e}}', file=sys.stderr)
        sys.exit(2)
'''


@pytest.mark.slow
@pytest.mark.parametrize('case', ['init', 'killed'])
def test_worker_failure_is_one_error_and_finished_items_are_kept(tmp_path, case, prep_use_dlib):
    import subprocess
    for k in range(3):
        write_video(tmp_path / 'in' / f'v{k}.mp4', 2, size=(640, 512), content=moving_astronaut)
    script = tmp_path / 'run.py'
    script.write_text(WORKER_FAILURE_SCRIPT.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    out = tmp_path / 'out'
    argv = ['--input', tmp_path / 'in', '--output', out, '--landmarker', 'dlib', '--no_progress', '--workers', 2]
    proc = subprocess.run([sys.executable, str(script), *map(str, argv)], capture_output=True, text=True,
                          timeout=180, env=dict(os.environ, CASE=case))
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()       # one line, no traceback, no hang
    kept = len(Journal(out, 'in').items)
    if case == 'init':
        assert line.startswith('error: a worker process could not build its landmarker: CUDA error: out of memory')
        assert kept == 0
    else:
        assert line.startswith('error: a worker process died (killed, out of memory?)')
        assert 1 <= kept <= 2 and len(read_csv(out / 'in_all.csv')) == 2 * kept     # v2 was taken by a finished worker
    assert f'{kept} items finished and are kept' in line
    summary = prepare_faces.main(args_for(tmp_path / 'in', out))
    assert summary['already_done'] == kept and summary['processed'] == 3 - kept and summary['faces'] == 6


# ---------------------------------------------------------------------------------
# bad input: nothing stops the run, nothing disappears
# ---------------------------------------------------------------------------------

def test_bad_inputs_land_in_failures_csv(tmp_path, prep_use_dlib):
    src = tmp_path / 'in'
    src.mkdir()
    img = astronaut()
    cv2.imwrite(str(src / 'gray.png'), cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(src / 'rgba.png'), np.dstack([img[:, :, ::-1], np.full((512, 512), 255, np.uint8)]))
    cv2.imwrite(str(src / 'deep16.png'), img[:, :, ::-1].astype(np.uint16) * 257)
    (src / 'empty.jpg').write_bytes(b'')
    (src / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff' + os.urandom(500))
    (src / 'junk.mp4').write_bytes(os.urandom(3000))
    write_video(src / 'noface.mp4', 10, size=(128, 96))
    avi = write_video(tmp_path / 'full.avi', 30, fourcc='MJPG', size=(640, 512), content=moving_astronaut)
    data = open(avi, 'rb').read()
    (src / 'cut.avi').write_bytes(data[:len(data) // 2])

    out = tmp_path / 'out'
    summary = prepare_faces.main(args_for(src, out, '--frames_per_video', 4))
    failures = {(os.path.basename(r['path']), r['reason'].split(' (')[0].split(':')[0])
                for r in read_csv(out / 'failures.csv')}
    assert ('empty.jpg', 'unreadable image') in failures
    assert ('corrupt.jpg', 'unreadable image') in failures
    assert ('junk.mp4', 'unreadable video') in failures
    assert ('cut.avi', 'unreadable frames') in failures
    assert {p for p, r in failures if r == 'no face'} == {f'noface.mp4#frame={i}' for i in (0, 3, 6, 9)}
    rows = read_csv(out / 'in_all.csv')
    assert {r['source'] for r in rows} >= {'gray.png', 'rgba.png', 'deep16.png', 'cut.avi'}
    assert summary['frames_unreadable'] >= 2 + 1       # two bad photos + the frames past the cut
    assert summary['failures']['no face'] == 4


def test_summary_counts_this_runs_failures(tmp_path, prep_use_dlib, capsys):
    """Two inputs into one folder: the second's summary counts its own failures and points to the file that
    lists every run's."""
    (tmp_path / 'blank').mkdir()
    cv2.imwrite(str(tmp_path / 'blank' / 'wall.png'), np.full((120, 160, 3), 128, np.uint8))
    (tmp_path / 'photos').mkdir()
    cv2.imwrite(str(tmp_path / 'photos' / 'a.png'), astronaut()[:, :, ::-1])
    out = tmp_path / 'out'
    first = prepare_faces.main(args_for(tmp_path / 'blank', out))
    assert first['failures'] == {'no face': 1}
    capsys.readouterr()
    second = prepare_faces.main(args_for(tmp_path / 'photos', out))
    assert second['faces'] == 1 and second['failures'] == {} and second['failures_in_folder'] == 1
    assert f'failures: none  (every run\'s into {out}: 1, listed in {out / "failures.csv"})' in capsys.readouterr().out
    assert len(read_csv(out / 'failures.csv')) == 1


def test_unknown_layouts_say_what_is_missing(tmp_path):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'splits').mkdir()
    for s in ('train', 'val', 'test'):
        (tmp_path / 'splits' / f'{s}.json').write_text('[["000", "001"]]')
    cases = [
        (['--dataset', 'ffpp', '--splits', tmp_path / 'splits'], 'original_sequences/youtube/c23/videos'),
        (['--dataset', 'ffpp'], 'train.json'),
        (['--dataset', 'celebdf'], 'List_of_testing_videos.txt'),
        (['--dataset', 'dfdc'], 'labels.csv'),
        (['--dataset', 'wilddeepfake'], 'real_test'),
        (['--dataset', 'vggface2'], 'identity folders'),
        (['--dataset', 'deepfakebench'], '--dataset_json'),
        (['--dataset', 'folder'], 'no videos'),
    ]
    for extra, words in cases:
        with pytest.raises(prepare_faces.LayoutError, match=words.replace('.', r'\.')):
            prepare_faces.main(args_for(tmp_path / 'empty', tmp_path / 'out', *extra))


# ---------------------------------------------------------------------------------
# dataset presets on tiny fake trees (stub landmarker)
# ---------------------------------------------------------------------------------

def manifest_rows(out):
    """{manifest file name: {video id: row}}."""
    return {p: {r['video']: r for r in read_csv(out / p)}
            for p in os.listdir(out) if p.endswith('.csv') and p != 'failures.csv'}


def test_preset_ffpp_splits_labels_and_dfd(tmp_path, prep_stub):
    root = tmp_path / 'FaceForensics++'
    (tmp_path / 'splits').mkdir()
    for split, pair in (('train', ['000', '001']), ('val', ['002', '003']), ('test', ['004', '005'])):
        (tmp_path / 'splits' / f'{split}.json').write_text(json.dumps([pair]))
    for vid in ('000', '001', '002', '003', '004'):                  # 005 is missing
        write_video(root / 'original_sequences/youtube/c23/videos' / f'{vid}.mp4', 3)
    for vid in ('000_001', '001_000', '003_002', '004_005', '999_998'):
        write_video(root / 'manipulated_sequences/Deepfakes/c23/videos' / f'{vid}.mp4', 3)
    write_video(root / 'manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walk__ABC.mp4', 3)
    write_video(root / 'original_sequences/actors/c23/videos/01__walk.mp4', 3)
    out = tmp_path / 'out'
    summary = prepare_faces.main(args_for(root, out, '--dataset', 'ffpp', '--splits', tmp_path / 'splits',
                                          '--frames_per_video', 2))
    m = manifest_rows(out)
    assert set(m) == {'ffpp_train.csv', 'ffpp_val.csv', 'ffpp_test.csv', 'dfd_test.csv'}
    assert set(m['ffpp_train.csv']) == {'ffpp/youtube/c23/000', 'ffpp/youtube/c23/001',
                                        'ffpp/Deepfakes/c23/000_001', 'ffpp/Deepfakes/c23/001_000'}
    assert set(m['ffpp_val.csv']) == {'ffpp/youtube/c23/002', 'ffpp/youtube/c23/003', 'ffpp/Deepfakes/c23/003_002'}
    assert set(m['ffpp_test.csv']) == {'ffpp/youtube/c23/004', 'ffpp/Deepfakes/c23/004_005'}
    assert set(m['dfd_test.csv']) == {'dfd/actors/c23/01__walk', 'dfd/DeepFakeDetection/c23/01_02__walk__ABC'}
    for rows in m.values():
        for vid, r in rows.items():
            assert r['label'] == ('0' if '/youtube/' in vid or '/actors/' in vid else '1')
            assert r['compression'] == 'c23' and r['method'] == vid.split('/')[1]
            assert r['path'].startswith('faces/ffpp/') and (out / r['path']).is_file()
    failures = {(os.path.basename(r['path']), r['reason']) for r in read_csv(out / 'failures.csv')}
    assert ('999_998.mp4', 'not in split files') in failures
    assert ('005.mp4', 'missing: named in test.json') in failures
    assert ('005_004.mp4', 'missing: named in test.json') in failures
    assert ('002_003.mp4', 'missing: named in val.json') in failures
    assert summary['failures']['missing'] == 3     # 005, 002_003, 005_004


def test_preset_celebdf_converts_test_list_labels(tmp_path, prep_stub):
    root = tmp_path / 'Celeb-DF-v2'
    write_video(root / 'Celeb-real/id0_0000.mp4', 3)
    write_video(root / 'YouTube-real/00000.mp4', 3)
    write_video(root / 'Celeb-synthesis/id0_id1_0000.mp4', 3)
    write_video(root / 'Celeb-synthesis/id0_id1_0001.mp4', 3)
    (root / 'List_of_testing_videos.txt').write_text(
        '1 YouTube-real/00000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n1 Celeb-real/id9_0009.mp4\n')
    out = tmp_path / 'out'
    prepare_faces.main(args_for(root, out, '--dataset', 'celebdf', '--frames_per_video', 2))
    m = manifest_rows(out)
    assert {v: r['label'] for v, r in m['celebdf_test.csv'].items()} == {
        'celebdf/YouTube-real/00000': '0', 'celebdf/Celeb-synthesis/id0_id1_0000': '1'}
    assert {v: r['label'] for v, r in m['celebdf_train.csv'].items()} == {
        'celebdf/Celeb-real/id0_0000': '0', 'celebdf/Celeb-synthesis/id0_id1_0001': '1'}
    failures = read_csv(out / 'failures.csv')
    assert [(os.path.basename(r['path']), r['reason']) for r in failures] == [
        ('id9_0009.mp4', 'missing: named in List_of_testing_videos.txt')]


def test_preset_dfdc_labels_csv_and_metadata(tmp_path, prep_stub):
    root = tmp_path / 'dfdc'
    write_video(root / 'test/videos/aaa.mp4', 3)
    write_video(root / 'test/videos/bbb.mp4', 3)
    (root / 'test/labels.csv').write_text('filename,label\naaa.mp4,1\nbbb.mp4,0\n')
    write_video(root / 'train/dfdc_train_part_0/ccc.mp4', 3)
    write_video(root / 'train/dfdc_train_part_0/ddd.mp4', 3)
    (root / 'train/dfdc_train_part_0/metadata.json').write_text(json.dumps({
        'ccc.mp4': {'label': 'FAKE', 'split': 'train', 'original': 'ddd.mp4'},
        'ddd.mp4': {'label': 'REAL', 'split': 'train'},
        'eee.mp4': {'label': 'FAKE', 'split': 'train'}}))
    out = tmp_path / 'out'
    prepare_faces.main(args_for(root, out, '--dataset', 'dfdc', '--frames_per_video', 2))
    m = manifest_rows(out)
    assert {v: r['label'] for v, r in m['dfdc_test.csv'].items()} == {
        'dfdc/test/videos/aaa': '1', 'dfdc/test/videos/bbb': '0'}
    assert {v: r['label'] for v, r in m['dfdc_train.csv'].items()} == {
        'dfdc/train/dfdc_train_part_0/ccc': '1', 'dfdc/train/dfdc_train_part_0/ddd': '0'}
    assert [os.path.basename(r['path']) for r in read_csv(out / 'failures.csv')] == ['eee.mp4']


def test_preset_wilddeepfake_frame_folders(tmp_path, prep_stub):
    root = tmp_path / 'wild'
    for tree, seq in (('real_test', '1/real/0'), ('fake_test', '2/fake/3'), ('fake_train', '5/fake/1')):
        folder = root / tree / seq
        folder.mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(folder / f'{i}.png'), np.full((64, 64, 3), 100 + i, np.uint8))
    out = tmp_path / 'out'
    prepare_faces.main(args_for(root, out, '--dataset', 'wilddeepfake', '--frames_per_video', 4))
    m = manifest_rows(out)
    assert {v: r['label'] for v, r in m['wilddeepfake_test.csv'].items()} == {
        'wilddeepfake/real_test/1/real/0': '0', 'wilddeepfake/fake_test/2/fake/3': '1'}
    assert {v: r['label'] for v, r in m['wilddeepfake_train.csv'].items()} == {'wilddeepfake/fake_train/5/fake/1': '1'}
    rows = read_csv(out / 'wilddeepfake_test.csv')
    assert len(rows) == 8
    assert sorted(int(r['frame']) for r in rows if r['label'] == '0') == [0, 3, 6, 9]


def test_preset_vggface2_and_folder_labels(tmp_path, prep_stub):
    root = tmp_path / 'vggface2'
    for split, ident in (('train', 'n000001'), ('train', 'n000002'), ('test', 'n000009')):
        (root / split / ident).mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(root / split / ident / f'000{k}_01.jpg'), np.full((80, 60, 3), 128, np.uint8))
    out = tmp_path / 'out'
    prepare_faces.main(args_for(root, out, '--dataset', 'vggface2'))
    train, test = read_csv(out / 'vggface2_train.csv'), read_csv(out / 'vggface2_test.csv')
    assert len(train) == 4 and len(test) == 2
    assert {r['video'] for r in train} == {'vggface2/n000001', 'vggface2/n000002'}
    assert {r['label'] for r in train + test} == {''}
    assert train[0]['path'] == 'faces/vggface2/train/n000001/0000_01.png'

    folder = tmp_path / 'mine'
    write_video(folder / 'a/clip.mp4', 4)
    (folder / 'b').mkdir()
    cv2.imwrite(str(folder / 'b/photo.png'), np.full((80, 60, 3), 128, np.uint8))
    prepare_faces.main(args_for(folder, tmp_path / 'out2', '--label', 0, '--split', 'test', '--name', 'custom'))
    rows = read_csv(tmp_path / 'out2' / 'custom_test.csv')
    assert {r['video'] for r in rows} == {'custom/a/clip', 'custom/b/photo'}
    assert {r['label'] for r in rows} == {'0'} and len(rows) == 4 + 1


def test_preset_deepfakebench_json_81_to_68(tmp_path, prep_stub):
    rgb = tmp_path / 'datasets' / 'rgb'
    rng = np.random.default_rng(0)
    landmarks = {}

    def frames(rel_dir, n, skip_landmark=None):
        paths = []
        for i in range(n):
            img = rgb / rel_dir / f'{i:03d}.png'
            img.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(img), np.full((256, 256, 3), 50 + i, np.uint8))
            lm_path = rgb / rel_dir.replace('frames', 'landmarks') / f'{i:03d}.npy'
            lm_path.parent.mkdir(parents=True, exist_ok=True)
            if i != skip_landmark:
                lm = rng.uniform(0, 256, (81, 2)).astype(np.float32)
                np.save(lm_path, lm)
                landmarks[f'{rel_dir}/{i:03d}'] = lm
            paths.append(f'{rel_dir}/{i:03d}.png')
        return paths
    real = frames('FaceForensics++/original_sequences/youtube/c23/frames/000', 3)
    fake = frames('FaceForensics++/manipulated_sequences/Deepfakes/c23/frames/000_003', 3, skip_landmark=1)
    celeb = frames('Celeb-DF-v2/Celeb-synthesis/frames/id0_id1_0000', 2)
    # the three path styles DeepfakeBench JSONs come with
    windows = [p.replace('/', '\\') for p in real]                              # relative, '\'
    foreign = ['/home/someone/DeepfakeBench/datasets/rgb/' + p for p in fake]  # absolute, another machine
    dotted = ['./' + p for p in celeb]
    (tmp_path / 'json').mkdir()
    (tmp_path / 'json' / 'FF-DF.json').write_text(json.dumps({'FF-DF': {
        'FF-real': {'train': {'c23': {'000': {'label': 'FF-real', 'frames': windows}}}, 'val': {'c23': {}}},
        'FF-DF': {'train': {'c23': {'000_003': {'label': 'FF-DF', 'frames': foreign, 'masks': []}}},
                  'test': {'c23': {'000_003': {'label': 'FF-DF', 'frames': foreign}}}}}}))
    (tmp_path / 'json' / 'Celeb-DF-v2.json').write_text(json.dumps({'Celeb-DF-v2': {
        'CelebDFv2_fake': {'test': {'id0_id1_0000': {'label': 'CelebDFv2_fake', 'frames': dotted + ['gone.png']}},
                           'val': {'label': 'CelebDFv2_fake', 'frames': dotted}}}}))   # malformed 'val'
    out = tmp_path / 'out'
    summary = prepare_faces.main(args_for(rgb, out, '--dataset', 'deepfakebench', '--dataset_json', tmp_path / 'json'))
    m = manifest_rows(out)
    assert set(m) == {'FF-DF_train.csv', 'FF-DF_test.csv', 'Celeb-DF-v2_test.csv'}
    ff = read_csv(out / 'FF-DF_train.csv')
    assert {(r['video'], r['label']) for r in ff} == {
        ('deepfakebench/FaceForensics++/original_sequences/youtube/c23/frames/000', '0'),
        ('deepfakebench/FaceForensics++/manipulated_sequences/Deepfakes/c23/frames/000_003', '1')}
    assert len(ff) == 3 + 2 and {r['compression'] for r in ff} == {'c23'}
    assert {r['label'] for r in read_csv(out / 'Celeb-DF-v2_test.csv')} == {'1'}
    for r in ff:
        lm = np.load(out / r['landmarks'])
        assert lm.shape == (68, 2) and lm.dtype == np.float32
        key = r['source'][:-len('.png')]
        np.testing.assert_array_equal(lm, landmarks[key][:68])
        assert cv2.imread(str(out / r['path'])).shape == (256, 256, 3)
    failures = {(os.path.basename(r['path']), r['reason']) for r in read_csv(out / 'failures.csv')}
    assert ('001.png', 'no landmarks file') in failures and ('gone.png', 'missing frame file') in failures
    assert summary['faces'] == 3 + 2 + 2


# ---------------------------------------------------------------------------------
# folder preset: labels of re-runs, single files, shared stems, frame folders
# ---------------------------------------------------------------------------------

def test_rerun_with_another_label_and_split_rewrites_manifests_only(tmp_path, prep_stub):
    for k in range(2):
        write_video(tmp_path / 'in' / f'v{k}.mp4', 3)
    out = tmp_path / 'out'
    prepare_faces.main(args_for(tmp_path / 'in', out, '--label', 1))
    assert {r['label'] for r in read_csv(out / 'in_all.csv')} == {'1'}
    stamps = {p: os.stat(p).st_mtime_ns for p in (out / 'faces').rglob('*')}
    summary = prepare_faces.main(args_for(tmp_path / 'in', out, '--label', 0, '--split', 'test'))
    assert summary['processed'] == 0 and summary['already_done'] == 2
    rows = read_csv(out / 'in_test.csv')
    assert len(rows) == 6 and {(r['label'], r['split']) for r in rows} == {('0', 'test')}
    assert not (out / 'in_all.csv').exists()                       # nothing left under the old split
    assert {p: os.stat(p).st_mtime_ns for p in (out / 'faces').rglob('*')} == stamps
    # the new labels are journaled once: a third run reads them back and appends no item
    journal = (out / '.prepare' / 'in.jsonl').read_text().splitlines()
    prepare_faces.main(args_for(tmp_path / 'in', out, '--label', 0, '--split', 'test'))
    assert read_csv(out / 'in_test.csv') == rows
    assert len((out / '.prepare' / 'in.jsonl').read_text().splitlines()) == len(journal) + 1     # listing only


def test_single_files_of_one_folder_build_one_mixed_manifest(tmp_path, prep_stub):
    clips = tmp_path / 'clips'
    write_video(clips / 'real.mp4', 3)
    write_video(clips / 'fake.mp4', 3)
    out = tmp_path / 'out'
    prepare_faces.main(args_for(clips / 'real.mp4', out, '--label', 0))
    summary = prepare_faces.main(args_for(clips / 'fake.mp4', out, '--label', 1))
    assert summary['processed'] == 1
    assert {(r['video'], r['label']) for r in read_csv(out / 'clips_all.csv')} == {
        ('clips/real', '0'), ('clips/fake', '1')}
    # the same file again is already done; the whole folder afterwards too
    assert prepare_faces.main(args_for(clips / 'fake.mp4', out, '--label', 1))['processed'] == 0
    assert prepare_faces.main(args_for(clips, out, '--label', 1))['already_done'] == 2
    # a journal in the older format, which keyed a single file by itself, still matches
    journal = out / JOURNAL_DIR / 'clips.jsonl'
    lines = journal.read_text().splitlines()
    for k, line in enumerate(lines):
        rec = json.loads(line)
        if 'settings' in rec:
            rec['settings']['input'] = str(clips / 'fake.mp4')
            lines[k] = json.dumps(rec)
    journal.write_text('\n'.join(lines[:1] + [ln for ln in lines[1:] if '"settings"' not in ln]) + '\n')
    assert prepare_faces.main(args_for(clips / 'fake.mp4', out, '--label', 1))['processed'] == 0
    with pytest.raises(prepare_faces.LayoutError, match='--video_per_folder takes a folder'):
        prepare_faces.main(args_for(clips / 'fake.mp4', out, '--video_per_folder'))
    # a file of another folder under the same name: refused, saying what to do
    write_video(tmp_path / 'more' / 'other.mp4', 3)
    with pytest.raises(prepare_faces.LayoutError, match='another --name'):
        prepare_faces.main(args_for(tmp_path / 'more' / 'other.mp4', out, '--name', 'clips'))


def test_files_sharing_a_stem_keep_distinct_outputs(tmp_path, prep_stub):
    src = tmp_path / 'in'
    (src / 'clip').mkdir(parents=True)
    cv2.imwrite(str(src / 'x.jpg'), np.full((80, 60, 3), 60, np.uint8))
    cv2.imwrite(str(src / 'x.png'), np.full((80, 60, 3), 200, np.uint8))
    cv2.imwrite(str(src / 'y.png'), np.full((80, 60, 3), 100, np.uint8))
    write_video(src / 'clip.mp4', 2)
    cv2.imwrite(str(src / 'clip' / '000000.png'), np.full((80, 60, 3), 30, np.uint8))
    out = tmp_path / 'out'
    summary = prepare_faces.main(args_for(src, out, '--frames_per_video', 1))
    rows = read_csv(out / 'in_all.csv')
    assert summary['faces'] == len(rows) == 5
    assert {r['source']: (r['path'], r['video']) for r in rows} == {
        'x.jpg': ('faces/in/x.jpg.png', 'in/x.jpg'), 'x.png': ('faces/in/x.png.png', 'in/x.png'),
        'y.png': ('faces/in/y.png', 'in/y'), 'clip.mp4': ('faces/in/clip.mp4/000000.png', 'in/clip.mp4'),
        'clip/000000.png': ('faces/in/clip/000000.png', 'in/clip/000000')}
    assert cv2.imread(str(out / 'faces/in/x.jpg.png')).mean() < cv2.imread(str(out / 'faces/in/x.png.png')).mean()
    # one of them prepared alone gets the same outputs
    prepare_faces.main(args_for(src / 'x.png', tmp_path / 'alone'))
    assert [r['path'] for r in read_csv(tmp_path / 'alone' / 'in_all.csv')] == ['faces/in/x.png.png']


def test_video_per_folder_makes_each_frame_folder_one_video(tmp_path, prep_stub, monkeypatch):
    src = tmp_path / 'frames'
    for folder in ('a', 'b'):
        (src / folder).mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(src / folder / f'{i}.png'), np.full((80, 80, 3), 100 + i, np.uint8))
    cv2.imwrite(str(src / 'top.png'), np.full((80, 80, 3), 50, np.uint8))
    out = tmp_path / 'out'
    prepare_faces.main(args_for(src, out, '--video_per_folder', '--frames_per_video', 4, '--label', 1))
    rows = read_csv(out / 'frames_all.csv')
    assert {v: sorted(int(r['frame']) for r in rows if r['video'] == v) for v in {r['video'] for r in rows}} == {
        'frames/a': [0, 3, 6, 9], 'frames/b': [0, 3, 6, 9], 'frames': [0]}
    assert {r['path'] for r in rows if r['video'] == 'frames'} == {'faces/frames/top.png'}
    assert {r['source'] for r in rows if r['video'] == 'frames/b'} == {'b/0.png', 'b/3.png', 'b/6.png', 'b/9.png'}
    # a setting of its own: the same output without it is refused
    with pytest.raises(prepare_faces.LayoutError, match='video_per_folder'):
        prepare_faces.main(args_for(src, out, '--frames_per_video', 4))
    # all frames of a folder: read one batch ahead of detection, not all first
    loads, seen = [], []
    real_load, real_extract = F.load_image_rgb, F.extract_faces_batch
    monkeypatch.setattr(F, 'load_image_rgb', lambda p: loads.append(p) or real_load(p))
    monkeypatch.setattr(F, 'extract_faces_batch',
                        lambda imgs, *a, **k: seen.append(len(loads)) or real_extract(imgs, *a, **k))
    prepare_faces.main(args_for(src / 'a', tmp_path / 'all', '--video_per_folder', '--frames_per_video', 0))
    assert seen == [8, 10]
