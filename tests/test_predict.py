"""predict.py on a real photo (skimage's astronaut), a short video written here, folders and bad input.

dlib finds the astronaut's face offline; the detector is the session's fine-tuned tiny model.
"""
import json

import cv2
import numpy as np
import pytest

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
    img, vid = doc['results']
    assert img['status'] == 'ok' and len(img['faces']) == 1 and 0 <= img['faces'][0]['prob'] <= 1
    assert img['verdict'] in ('real', 'fake') and img['prob'] == img['faces'][0]['prob']
    assert vid['status'] == 'ok' and vid['frames_read'] == 4 and vid['frames_with_face'] >= 3
    assert 0 <= vid['prob'] <= 1 and vid['prob'] == pytest.approx(np.mean([f['prob'] for f in vid['frames']]))
    pngs = sorted(heat.glob('*.png'))
    assert len(pngs) == 1 + vid['frames_with_face']
    panel = cv2.imread(str(heat / 'astronaut_face0.png'))
    s = finetune_tiny['input_size']
    assert panel.shape == (s, 3 * s + 8, 3) and panel.std() > 5         # input | reconstruction | heat map
    assert all(f['heatmap'].endswith('.png') for f in vid['frames'])


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
