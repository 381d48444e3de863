"""predict.py on a real photo (skimage's astronaut), a short video written here, folders and bad input.

dlib finds the astronaut's face offline; the detector is the session's fine-tuned tiny model.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip('dlib')
import predict  # noqa: E402


@pytest.fixture(scope='module')
def media(tmp_path_factory):
    from skimage import data as skdata
    d = tmp_path_factory.mktemp('predict_media')
    photo = skdata.astronaut()                                          # 512 x 512 RGB, one face
    cv2.imwrite(str(d / 'astronaut.png'), photo[:, :, ::-1])
    # a short video: the astronaut's face drifting to the right
    vw = cv2.VideoWriter(str(d / 'clip.avi'), cv2.VideoWriter_fourcc(*'MJPG'), 10, (320, 320))
    assert vw.isOpened()
    face = cv2.resize(photo[0:320, 100:420], (240, 240))              # head and shoulders
    for i in range(12):
        frame = np.zeros((320, 320, 3), np.uint8)
        x = 5 * i
        frame[40:280, x:x + 240] = face
        vw.write(np.ascontiguousarray(frame[:, :, ::-1]))
    vw.release()
    cv2.imwrite(str(d / 'blank.png'), np.full((200, 200, 3), 127, np.uint8))       # no face
    (d / 'broken.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + b'\x00' * 200)   # not a decodable video
    (d / 'notes.txt').write_text('not media')
    return d


def test_image_video_heatmaps_and_json(finetune_tiny, media, tmp_path, capsys):
    ckpt = finetune_tiny['out'] / 'checkpoint-best.pth'
    out_json, heat = tmp_path / 'out.json', tmp_path / 'heat'
    code = predict.main(['--checkpoint', str(ckpt), str(media / 'astronaut.png'), str(media / 'clip.avi'),
                         '--frames', '4', '--json', str(out_json), '--heatmap', str(heat), '--device', 'cpu'])
    assert code == 0
    printed = capsys.readouterr().out
    assert 'astronaut.png: ' in printed and 'p(fake) = ' in printed and 'clip.avi: ' in printed
    doc = json.loads(out_json.read_text())
    assert doc['complete'] is True
    img, vid = doc['results']
    assert img['status'] == 'ok' and len(img['faces']) == 1 and 0 <= img['faces'][0]['prob'] <= 1
    assert img['verdict'] in ('real', 'fake') and img['prob'] == img['faces'][0]['prob']
    assert vid['status'] == 'ok' and vid['frames_read'] == 4 and vid['frames_with_face'] >= 3
    assert 0 <= vid['prob'] <= 1 and vid['prob'] == pytest.approx(np.mean([f['prob'] for f in vid['frames']]))
    pngs = sorted(heat.glob('*.png'))
    assert len(pngs) == 1 + vid['frames_with_face']
    panel = cv2.imread(str(heat / 'astronaut_face0.png'))
    side = finetune_tiny['input_size'] * -(-predict.HEATMAP_MIN_SIDE // finetune_tiny['input_size'])
    assert panel.shape == (predict.HEATMAP_LABEL_H + side, 4 * side + 46 + 4 * predict.HEATMAP_GAP, 3)
    assert panel.std() > 5                         # input | reconstruction | heat map, colour bar | Grad-CAM
    assert all(f['heatmap'].endswith('.png') for f in vid['frames'])


def test_heatmap_panels_are_titled_with_a_colour_bar():
    """Four titled panels (the docs list the same titles) and the |difference| colour scale beside its panel."""
    side, vmax = 64, 0.25
    x = torch.rand(3, side, side)
    diff = torch.linspace(0, 0.5, side)[None].repeat(side, 1)          # 0 at the left, past vmax at the right
    img = predict.heatmap_panel(x, x, diff, vmax, cam=torch.rand(side, side))
    k, lab, gap = 2, predict.HEATMAP_LABEL_H, predict.HEATMAP_GAP          # 64 px panels shown at 128
    lefts = [0, side * k + gap, 2 * (side * k + gap), 3 * (side * k + gap) + 46 + gap]
    assert img.shape == (lab + side * k, lefts[-1] + side * k, 3)
    for left in lefts:                                                     # a title in black over each panel
        band = img[:lab, left:left + side * k]
        assert band.min() < 100 and (band == 255).mean() > 0.5
        assert (img[:lab, left + side * k:left + side * k + gap] == 255).all()
    jet = lambda v: cv2.applyColorMap(np.array([[v]], np.uint8), cv2.COLORMAP_JET)[0, 0, ::-1]
    bar = lefts[2] + side * k + gap
    np.testing.assert_array_equal(img[lab, bar], jet(255))                   # the bar: vmax at the top ...
    np.testing.assert_array_equal(img[-1, bar], jet(0))                      # ... 0 at the bottom
    np.testing.assert_array_equal(img[lab + 5, lefts[2] + side * k - 1], jet(255))   # |difference| >= vmax
    np.testing.assert_array_equal(img[lab + 5, lefts[2]], jet(0))
    assert img[lab:2 * lab, bar + 12:bar + 46].min() < 100 and img[-lab:, bar + 12:bar + 46].min() < 100  # 0.25, 0
    guide = (Path(predict.__file__).parent / 'FINETUNE.md').read_text()
    sentence = guide[guide.index('`--heatmap DIR` writes'):][:400]
    assert [sentence.index(f'`{t}`') for t in predict.HEATMAP_PANELS] == sorted(
        sentence.index(f'`{t}`') for t in predict.HEATMAP_PANELS)


def test_no_face_unreadable_and_folders_continue(finetune_tiny, media, capsys):
    ckpt = finetune_tiny['out'] / 'checkpoint-best.pth'
    results = predict.run(predict.get_args_parser().parse_args(
        ['--checkpoint', str(ckpt), str(media / 'blank.png'), str(media / 'broken.mp4'), str(media / 'notes.txt'),
         str(media / 'missing.jpg'), str(media / 'astronaut.png'), '--device', 'cpu', '--quiet']))
    status = [r['status'] for r in results]
    assert status == ['no_face', 'unreadable', 'unsupported', 'missing', 'ok']
    printed = capsys.readouterr().out
    assert 'blank.png: no face found' in printed and 'broken.mp4: ' in printed
    # a folder expands to its images and videos
    found = predict.expand_inputs([str(media)])
    assert {p.split('/')[-1] for p, _ in found} == {'astronaut.png', 'blank.png', 'clip.avi', 'broken.mp4'}


def test_wrong_checkpoint_kind(pretrained_tiny, media):
    with pytest.raises(SystemExit, match='not a fine-tuning checkpoint.*pre-training checkpoint'):
        predict.main(['--checkpoint', str(pretrained_tiny / 'checkpoint-last.pth'), str(media / 'astronaut.png')])


class SmallFaces:
    """A landmarker that finds one 20-px face in every image: below preprocess.faces' minimum face size."""

    def detect_batch(self, images):
        return [([(10.0, 10.0, 30.0, 30.0)], [1.0]) for _ in images]

    def landmarks_batch(self, images, boxes_per_image):
        return [[np.zeros((68, 2), np.float32) for _ in boxes] for boxes in boxes_per_image]


def test_face_too_small_is_not_called_no_face(finetune_tiny, media):
    predictor = predict.Predictor(finetune_tiny['out'] / 'checkpoint-best.pth', 'cpu')
    predictor._landmarker = SmallFaces()
    img = predictor.predict_image(str(media / 'astronaut.png'))
    assert img['status'] == 'face_too_small' and img['message'].endswith('astronaut.png: face too small (under 40 px)')
    vid = predictor.predict_video(str(media / 'clip.avi'), 4)
    assert vid['status'] == 'face_too_small' and vid['message'].endswith('face too small (under 40 px) in 4 of 4 '
                                                                         'sampled frame(s)')
    mixed = predict.no_face('v.mp4', ['no face', 'face too small'], frames=True)
    assert mixed == dict(status='no_face',
                         message='v.mp4: face too small (under 40 px) in 1 of 2 sampled frame(s), '
                                 'no face in the other 1')


def test_outputs_and_device_are_checked_before_any_work(finetune_tiny, media, tmp_path, capsys):
    ckpt, photo = str(finetune_tiny['out'] / 'checkpoint-best.pth'), str(media / 'astronaut.png')
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    cases = [(['--json', str(blocker / 'out.json')], '--json .*cannot write to'),
             (['--json', str(tmp_path)], '--json .* is a folder'),
             (['--heatmap', str(blocker / 'heat')], '--heatmap .*cannot write to'),
             (['--device', 'gpu'], '--device gpu: ')]
    if not torch.cuda.is_available():
        cases.append((['--device', 'cuda'], '--device cuda: no CUDA GPU is available here'))
    for extra, msg in cases:
        with pytest.raises(SystemExit, match=f'^predict.py: error: {msg}') as e:
            predict.main(['--checkpoint', ckpt, photo, '--device', 'cpu', *extra])
        assert '\n' not in str(e.value) and 'p(fake)' not in capsys.readouterr().out     # before any scoring
    predict.main(['--checkpoint', ckpt, photo, '--device', 'cpu', '--quiet', '--json', str(tmp_path / 'new' / 'o.json'),
                  '--heatmap', str(tmp_path / 'new' / 'heat')])
    assert (tmp_path / 'new' / 'o.json').is_file() and list((tmp_path / 'new' / 'heat').glob('*.png'))


def test_json_keeps_finished_results_when_stopped(finetune_tiny, media, tmp_path, monkeypatch):
    done, score = [], predict.Predictor.predict_image

    def stopped_after_one(self, path, **kw):
        if done:
            raise KeyboardInterrupt
        done.append(path)
        return score(self, path, **kw)
    monkeypatch.setattr(predict.Predictor, 'predict_image', stopped_after_one)
    out = tmp_path / 'partial.json'
    with pytest.raises(KeyboardInterrupt):
        predict.main(['--checkpoint', str(finetune_tiny['out'] / 'checkpoint-best.pth'), str(media / 'astronaut.png'),
                      str(media / 'blank.png'), '--json', str(out), '--device', 'cpu', '--quiet'])
    doc = json.loads(out.read_text())
    assert doc['complete'] is False and [r['path'] for r in doc['results']] == [str(media / 'astronaut.png')]


def test_grad_cam_of_a_partly_frozen_detector_leaves_it_as_it_was():
    """pytorch-grad-cam on the fake logit: one [0, 1] map per image at input size, that depends on the image;
    the frozen prefix, train/eval mode and gradients are as before."""
    import models_vit
    from util import explain
    torch.manual_seed(0)
    model = models_vit.vit_micro_patch8(img_size=32).freeze(1).train()
    before = {k: v.requires_grad for k, v in model.named_parameters()}
    x = torch.randn(2, 3, 32, 32)
    cams = explain.grad_cam(model, x)
    assert cams.shape == (2, 32, 32) and float(cams.min()) >= 0 and float(cams.max()) <= 1 + 1e-6
    assert float(cams.max()) > 0.5 and not torch.allclose(cams[0], cams[1])
    assert model.training and model.first_trainable == len(model.blocks) - 1
    assert before == {k: v.requires_grad for k, v in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    overlay = explain.cam_overlay(torch.rand(3, 32, 32), cams[0])
    assert overlay.shape == (32, 32, 3) and overlay.dtype == np.uint8


# ---------------------------------------------------------------------- verified faces only, tracks
class VerifyingStub:
    """A landmarker whose detector verified one face per image and dropped two candidates."""

    def detect_batch(self, images):
        return [([(100.0, 60.0, 260.0, 220.0, 0.0)], [1.0],
                 [(10.0, 10.0, 60.0, 60.0, 0.0), (300.0, 20.0, 380.0, 100.0, 40.0)])
                for _ in images]

    def landmarks_batch(self, images, boxes_per_image):
        t = np.linspace(0, 1, 68, dtype=np.float32)
        return [[np.stack([b[0] + t * (b[2] - b[0]), b[1] + (t * 7 % 1) * (b[3] - b[1])], 1) for b in boxes]
                for boxes in boxes_per_image]


def test_a_rejected_candidate_is_never_scored(finetune_tiny, media, monkeypatch):
    predictor = predict.Predictor(finetune_tiny['out'] / 'checkpoint-best.pth', 'cpu')
    predictor._landmarker = VerifyingStub()
    scored, score = [], predictor.score_crops
    monkeypatch.setattr(predictor, 'score_crops', lambda crops, h=False: scored.append(len(crops)) or score(crops, h))
    img = predictor.predict_image(str(media / 'astronaut.png'))
    assert img['status'] == 'ok' and len(img['faces']) == 1 and img['candidates_dropped'] == 2 and scored == [1]
    assert '2 candidate(s) failed verification' in predict.verdict_line(img, 0.5)
    vid = predictor.predict_video(str(media / 'clip.avi'), 4)
    assert vid['candidates_dropped'] == 8 and scored[-1] == 4 and len(vid['tracks']) == 1


def test_suit_patch_is_not_a_face(finetune_tiny, tmp_path):
    """The astronaut's suit rolled by 20 deg: HOG alone scores its mission patch; the default detector drops it."""
    from benchmarks import detect as benchmark_detect
    path = tmp_path / 'suit.png'
    cv2.imwrite(str(path), benchmark_detect.negative_scene('suit_rolled')[:, :, ::-1])
    res = predict.Predictor(finetune_tiny['out'] / 'checkpoint-best.pth', 'cpu').predict_image(str(path))
    assert res['status'] == 'no_face' and res['candidates_dropped'] >= 1 and 'failed verification' in res['message']


@pytest.fixture(scope='module')
def two_people(tmp_path_factory):
    """Two synthetic people side by side; the left one's face is larger in every other frame."""
    from synthetic import faces as S
    rng = np.random.default_rng(1)
    people = [S.sample_identity(rng) for _ in range(2)]
    path = tmp_path_factory.mktemp('two_people') / 'two.avi'
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (480, 240))
    for i in range(6):
        frame = np.full((240, 480, 3), 90, np.uint8)
        for person, x, size in ((people[0], 10 + 3 * i, 200 if i % 2 else 150), (people[1], 260 - 3 * i, 180)):
            pose = S.sample_pose(rng)
            pose.update(yaw=pose['yaw'] / 3, pitch=pose['pitch'] / 3)        # turned little: dlib finds them
            face, _ = S.render_face(person, rng, size=size, pose=pose)
            y = (240 - size) // 2
            frame[y:y + size, x:x + size] = face
        vw.write(np.ascontiguousarray(frame[:, :, ::-1]))
    vw.release()
    return path


def test_video_scores_each_person_on_its_own_track(finetune_tiny, two_people):
    res = predict.Predictor(finetune_tiny['out'] / 'checkpoint-best.pth', 'cpu').predict_video(str(two_people), 0)
    assert res['status'] == 'ok' and res['frames_read'] == 6 and len(res['tracks']) == 2
    for track in res['tracks']:
        rows = [f for f in res['frames'] if f['track'] == track['track']]
        centres = [(f['box'][0] + f['box'][2]) / 2 for f in rows]
        assert len(rows) == 6 and (max(centres) < 240 or min(centres) > 240)      # one person, every frame
        assert track['prob'] == pytest.approx(np.mean([f['prob'] for f in rows])) and track['decides']
    assert res['prob'] == max(t['prob'] for t in res['tracks'])
    assert res['track'] == max(res['tracks'], key=lambda t: t['prob'])['track']
    assert '2 people over 6 frame(s)' in predict.verdict_line(res, 0.5)
