"""Self-blended pseudo-fakes: the blend contract (exact outside the mask, changed inside), where the mask may
lie, determinism per random stream, and unusable landmarks."""
import cv2
import numpy as np
import pytest

from synthetic.faces import render_face, sample_identity
from util.self_blend import UnusableLandmarks, self_blend


@pytest.fixture(scope='module')
def faces():
    rng = np.random.default_rng(3)
    return [render_face(sample_identity(rng), rng, size=128) for _ in range(6)]


def test_fake_equals_input_outside_mask_and_differs_inside(faces):
    for i, (img, lm) in enumerate(faces):
        fake, mask = self_blend(img, lm, np.random.default_rng(i))
        assert fake.dtype == np.uint8 and fake.shape == img.shape
        assert mask.dtype == np.float32 and mask.shape == img.shape[:2]
        assert 0 <= mask.min() and mask.max() <= 1 and mask.max() >= 0.25
        assert np.array_equal(fake[mask == 0], img[mask == 0])
        inside = mask >= 0.2
        assert inside.sum() > 100
        diff = np.abs(fake.astype(int) - img.astype(int)).max(axis=2)
        assert diff[inside].mean() > 1.0, f'face {i}: the blend barely changes the face'
        assert (diff[inside] > 0).mean() > 0.5


def test_mask_lies_inside_dilated_landmark_hull(faces):
    for i, (img, lm) in enumerate(faces):
        for seed in range(2):
            _, mask = self_blend(img, lm, np.random.default_rng(100 * i + seed))
            hull = np.zeros(img.shape[:2], np.uint8)
            cv2.fillConvexPoly(hull, cv2.convexHull(lm.round().astype(np.int32)), 1)
            margin = int(0.08 * img.shape[0])
            dilated = cv2.dilate(hull, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
            assert mask[dilated == 0].max(initial=0) == 0
            assert (mask > 0).sum() > 0.3 * hull.sum()


def test_deterministic_per_seed(faces):
    img, lm = faces[0]
    a = self_blend(img, lm, np.random.default_rng(7))
    b = self_blend(img, lm, np.random.default_rng(7))
    c = self_blend(img, lm, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_unusable_landmarks_are_refused(faces):
    img, lm = faces[0]
    rng = np.random.default_rng(0)
    bad = lm.copy()
    bad[5] = np.nan
    for landmarks in (None, lm[:60], bad, np.zeros_like(lm), lm + 1000):
        with pytest.raises(UnusableLandmarks):
            self_blend(img, landmarks, rng)
    with pytest.raises(ValueError):
        self_blend(img.astype(np.float32), lm, rng)


def test_figure_5_draws_self_blended_examples(faces, tmp_path):
    from PIL import Image

    from Visualization import visualize as viz
    for i, (img, lm) in enumerate(faces[:3]):
        cv2.imwrite(str(tmp_path / f'face{i}.png'), img[:, :, ::-1])
        np.save(tmp_path / f'face{i}.npy', lm)
    cv2.imwrite(str(tmp_path / 'no_landmarks.png'), faces[3][0][:, :, ::-1])      # never chosen: no landmarks
    args = viz.get_args_parser().parse_args(['--images', str(tmp_path), '--figures', '5', '--num_images', '3',
                                             '--out', str(tmp_path / 'fig')])
    path = viz.main(args)[5]
    png = np.asarray(Image.open(path).convert('RGB')).astype(np.float32)
    layout = viz.Layout(4, 3, viz.display_size(128))
    assert png.shape[:2] == layout.size[::-1]
    for c in range(3):
        real, mask, fake, diff = (png[y:y + s, x:x + s] for x, y, s in (layout.panel_box(r, c) for r in range(4)))
        assert real.std() > 10 and fake.std() > 10 and mask.std() > 10 and diff.std() > 1
        assert np.abs(real - fake).mean() > 0.5


def test_real_photo_astronaut_crops_blend_inside_the_face():
    """On a real photo with dlib's landmarks (skimage's astronaut): crops at several framings blend inside the
    face only, and their loader pairs differ only there."""
    pytest.importorskip('dlib')
    import skimage.data
    import torch

    from preprocess.faces import DlibLandmarker, crop_face
    from util.datasets import FaceTransform
    from util.self_blend import PseudoFakePairs
    photo = skimage.data.astronaut()
    dlib = DlibLandmarker()
    lm = dlib.landmarks(photo, dlib.detect(photo))[0]
    rng = np.random.default_rng(0)
    for i in range(4):
        c = lm.mean(0) + rng.uniform(-10, 10, 2)
        side = (lm.max(0) - lm.min(0)).max() * rng.uniform(1.2, 1.6)
        crop, lmc, _ = crop_face(photo, lm, size=128, box=(c[0] - side / 2, c[1] - side / 2,
                                                             c[0] + side / 2, c[1] + side / 2), margin=1.0)
        fake, mask = self_blend(crop, lmc, np.random.default_rng(i))
        hull = np.zeros((128, 128), np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(lmc.round().astype(np.int32)), 1)
        dilated = cv2.dilate(hull, np.ones((21, 21), np.uint8))
        assert mask[dilated == 0].max(initial=0) == 0 and (mask > 0).sum() > 0.3 * hull.sum()
        assert np.array_equal(fake[mask == 0], crop[mask == 0])
        assert np.abs(fake.astype(int) - crop.astype(int))[mask >= 0.2].mean() > 1.0
    # the face's pair through the training loader: same crop, different face, identical background corners
    import tempfile
    from pathlib import Path

    from util.datasets import Sample
    with tempfile.TemporaryDirectory() as d:
        cv2.imwrite(str(Path(d) / 'a.png'), crop[:, :, ::-1])
        np.save(Path(d) / 'a.npy', lmc)
        ds = PseudoFakePairs([Sample(str(Path(d) / 'a.png'), str(Path(d) / 'a.npy'), 0, 'a', 'astronaut')],
                             FaceTransform(64, train=False, normalize=False))
        torch.manual_seed(0)
        pair = ds[0]['img'].int()
    diff = (pair[0] - pair[1]).abs().amax(0)
    assert diff.float().mean() > 0.5 and diff[:4, :4].max() == 0 and diff[-4:, :4].max() == 0
