"""Faces in the wild (preprocess/faces.py detectors, preprocess/face_tracks.py): CPU, offline, dlib's own models.

* a few scenes of benchmarks/detect.py's roll x size grid and its photos without faces: the default
  detector finds every face and no false face;
* the astronaut's suit rolled by 20 deg, where the HOG detector alone reports its mission patch as a
  face: the default detector drops that candidate and says so;
* landmarks of rolled faces in the original image's pixels, frontal faces unchanged from HOG's;
* tracks of two people whose sizes alternate.
"""
import cv2
import numpy as np
import pytest

from benchmarks import detect as B
from preprocess import faces as F
from preprocess.face_tracks import box_iou, track_faces

pytest.importorskip('dlib')


@pytest.fixture(scope='module')
def default_dlib():
    return F.build_landmarker('dlib')


@pytest.fixture(scope='module')
def hog_dlib():
    return F.build_landmarker('dlib', detector='hog')


def test_default_is_hybrid_and_options_are_checked():
    assert F.DEFAULT_DETECTOR == 'hybrid' and set(F.DETECTORS) == {'hog', 'hybrid', 'cnn'}
    with pytest.raises(ValueError, match="unknown detector 'mtcnn'"):
        F.build_landmarker('dlib', detector='mtcnn')


def test_grid_subset_all_found_no_false_face(default_dlib):
    cells = [(0, 64), (35, 160), (50, 96), (-50, 300)]
    scenes = [dict(name=f'{a}_{s}', image=B.grid_scene(a, s)[0], truth=B.grid_scene(a, s)[2]) for a, s in cells]
    scenes += [dict(name=n, image=B.negative_scene(n), truth=None) for n in ('suit_rolled', 'chelsea')]
    res = B.evaluate(default_dlib, scenes)
    assert (res['found'], res['grid'], res['false_faces']) == (4, 4, 0), res['scenes']


def test_hog_alone_misses_the_50_degree_roll(hog_dlib):
    """What the grid measures: the upright HOG pass misses a face rolled by 50 deg."""
    img, _, truth = B.grid_scene(50, 160)
    assert not any(B.matches(b, truth) for b in hog_dlib.detect(img))


def test_a_candidate_failing_verification_is_dropped_and_counted(default_dlib, hog_dlib):
    img = B.negative_scene('suit_rolled')      # HOG's upright pass takes the mission patch for a face
    assert hog_dlib.detect(img), 'the HOG detector alone reports a face on the suit'
    [(faces, reason, dropped)] = F.extract_faces_batch([img], default_dlib, with_rejected=True)
    assert faces == [] and reason == F.NO_FACE and len(dropped) >= 1
    assert all(len(b) == 5 for b in dropped)                    # (x0, y0, x1, y1, roll)


@pytest.mark.parametrize('roll,size', [(50, 160), (-35, 96)])
def test_rolled_face_landmarks_in_image_pixels(default_dlib, hog_dlib, roll, size):
    upright = B._astronaut()
    reference = hog_dlib.landmarks(upright, hog_dlib.detect(upright))[0]
    img, m, truth = B.grid_scene(roll, size)
    [face] = F.extract_faces(img, default_dlib)
    expected = F._apply(m, reference)                            # the upright landmarks moved into the scene
    err = np.linalg.norm(face['image_landmarks'] - expected, axis=1) / size
    assert err.mean() < 0.03 and err.max() < 0.08
    assert abs(F.eye_roll(face['image_landmarks']) - F.eye_roll(expected)) < 8
    # the crop is the axis-aligned square around the landmarks; its landmarks are the same points
    x0, y0, x1, y1 = face['box']
    moved = (face['image_landmarks'] - [x0, y0] + 0.5) * 256 / (x1 - x0) - 0.5
    assert np.abs(moved - face['landmarks']).max() < 1e-3


def test_frontal_faces_are_unchanged(default_dlib, hog_dlib):
    """The frontal test faces: the same chosen face and 68 landmarks as the HOG detector's (within 2 px)."""
    photo = B._astronaut()
    moving = np.zeros((512, 640, 3), np.uint8)
    moving[:, 60:572] = photo
    clip = np.zeros((320, 320, 3), np.uint8)
    clip[40:280, 20:260] = cv2.resize(photo[0:320, 100:420], (240, 240))
    for img in (photo, moving, clip):
        [old], [new] = F.extract_faces(img, hog_dlib), F.extract_faces(img, default_dlib)
        assert np.abs(np.subtract(old['detector_box'], new['detector_box'])).max() <= 2
        assert np.abs(old['image_landmarks'] - new['image_landmarks']).max() <= 2


def test_tracks_keep_each_person_when_the_largest_alternates():
    left = [(40 + 2 * t, 50, 140 + 2 * t + (20 if t % 2 else 0), 150 + (20 if t % 2 else 0)) for t in range(6)]
    right = [(300 - 3 * t, 60, 410 - 3 * t, 170) for t in range(6)]
    frames = [[left[t], right[t]] if t % 2 else [right[t], left[t]] for t in range(6)]   # order varies too
    frames[3] = [right[3]]                                      # the left person missed in one frame
    tracks = track_faces(frames)
    assert len(tracks) == 2
    sides = [{frames[t][i][0] < 200 for t, i in tr} for tr in tracks]
    assert sorted(map(len, tracks)) == [5, 6] and all(len(s) == 1 for s in sides)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    # a face far from every track, or after a long gap, starts a new one
    assert len(track_faces([[(0, 0, 50, 50)], [(300, 300, 350, 350)]])) == 2
    assert len(track_faces([[(0, 0, 50, 50)], [], [], [], [], [(0, 0, 50, 50)]], max_gap=3)) == 2


def test_benchmark_prints_one_line_per_detector(capsys, tmp_path):
    import json
    args = B.get_args_parser().parse_args(['--detector', 'hog', '--angles', '0', '--sizes', '96',
                                           '--json', str(tmp_path / 'r.json')])
    [res] = B.main(args)
    assert (res['found'], res['grid'], res['false_faces']) == (1, 1, 1)     # HOG's false face: the rolled suit
    assert res['cpu_ms_per_frame'] > 0 and len(res['scenes']) == 1 + len(B.NEGATIVES)
    assert capsys.readouterr().out.splitlines()[-1].split()[:3] == ['hog', '1/1', '1']
    assert json.loads((tmp_path / 'r.json').read_text())[0]['detector'] == 'hog'
