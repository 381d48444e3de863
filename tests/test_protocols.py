"""Evaluation protocols: manipulation groups, frame sampling, video ids, score files recomputed alone,
training on chosen manipulations, and the crop-protocol robustness report on a trained tiny detector."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import main_finetune
import models_vit
from conftest import write_rows
from util import evaluation, protocols
from util.datasets import Sample
from util.metrics import compute_metrics
from util.metrics import main as metrics_main


def ft_args(argv):
    return main_finetune.get_args_parser().parse_args([str(a) for a in argv])


def read_rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def S(video, label, method='', dataset='d', frame=0):
    return Sample(f'/x/{dataset}/{method}/{video}/{frame:03d}.png', None, label, video, dataset, method)


# ---------------------------------------------------------------------- pure pieces
def test_aliases_selection_groups_and_even_frames():
    assert protocols.resolve_methods('DF, F2F,FS,other') == ['Deepfakes', 'Face2Face', 'FaceSwap', 'other']
    samples = [S('000', 0, 'youtube'), S('000_003', 1, 'Deepfakes'), S('000_003', 1, 'Face2Face'),
               S('001_004', 1, 'NeuralTextures')]
    kept = protocols.select_methods(samples, 'DF,F2F')
    assert [s.method for s in kept] == ['youtube', 'Deepfakes', 'Face2Face']
    g = protocols.groups(samples, 'method')
    assert list(g) == ['Deepfakes', 'Face2Face', 'NeuralTextures'] and g['Deepfakes'] == [0, 1]
    assert g['NeuralTextures'] == [0, 3]
    video = [S('v', 1, 'M', frame=f) for f in range(10)] + [S('w', 0, frame=f) for f in range(3)]
    picked = protocols.even_frames(video, 4)
    assert [s.path[-7:-4] for s in picked] == ['000', '003', '006', '009', '000', '001', '002']
    assert protocols.even_frames(video, 0) is video


def test_video_ids_shared_by_manipulations_are_qualified_not_merged():
    samples = [S('000_003', 1, 'Deepfakes', frame=0), S('000_003', 1, 'Face2Face', frame=0), S('000', 0, 'youtube')]
    out, n = protocols.qualify_videos(samples)
    assert n == 1 and [s.video for s in out] == ['d/Deepfakes/000_003', 'd/Face2Face/000_003', '000']
    assert protocols.qualify_videos(out[2:])[1] == 0
    mixed = [S('x', 0, 'youtube'), S('x', 1, 'Deepfakes')]         # real and fake: left for the caller to refuse
    assert protocols.qualify_videos(mixed) == (mixed, 0)


# ---------------------------------------------------------------------- with a trained tiny detector
@pytest.fixture(scope='module')
def two_methods(finetune_tiny, tmp_path_factory):
    """The test set with its fakes split in two manipulations that share video ids, 4 frames per video."""
    rows = read_rows(finetune_tiny['test'])
    fakes = sorted({r['video'] for r in rows if r['label'] == '1'})
    half = set(fakes[::2])
    out = []
    for r in rows:
        r = dict(r)
        if r['label'] == '1':
            r['method'] = 'A' if r['video'] in half else 'B'
            r['video'] = 'clip_' + str(fakes.index(r['video']) // 2)    # one id under A and under B
        out.append(r)
    return write_rows(Path(finetune_tiny['test']).with_name('two_methods.csv'), out)


def test_group_by_eval_frames_and_score_files_recomputed_alone(finetune_tiny, two_methods, tmp_path, capsys):
    ckpt = finetune_tiny['out'] / 'checkpoint-best.pth'
    argv = ['--eval', '--resume', ckpt, '--test_manifests', two_methods, '--output_dir', tmp_path, '--device', 'cpu',
            '--num_workers', 0, '--quiet', '--batch_size', 32, '--group_by', 'method', '--eval_frames', 2]
    res = main_finetune.main(ft_args(argv))['test']
    assert set(res) == {'two_methods', 'two_methods/A', 'two_methods/B'}
    rows = read_rows(two_methods)
    n_videos = len({(r['method'], r['video']) for r in rows})
    assert res['two_methods']['n'] == 2 * n_videos and res['two_methods']['n_videos'] == n_videos
    n_real = res['two_methods']['n_real']
    assert res['two_methods/A']['n_real'] == res['two_methods/B']['n_real'] == n_real
    assert res['two_methods/A']['n_fake'] + res['two_methods/B']['n_fake'] == res['two_methods']['n_fake']
    doc = json.loads((tmp_path / 'eval.json').read_text())
    assert set(doc['sets']) == set(res) and set(doc['roc']) == set(res)
    assert all((tmp_path / f).is_file() for f in doc['roc'].values())
    assert '| two_methods/A |' in (tmp_path / 'eval.md').read_text()

    frames = read_rows(tmp_path / 'scores_two_methods.csv')
    videos = read_rows(tmp_path / 'videos_two_methods.csv')
    assert list(frames[0]) == ['path', 'video', 'label', 'method', 'score'] and len(frames) == res['two_methods']['n']
    assert list(videos[0]) == ['video', 'label', 'method', 'frames', 'score'] and len(videos) == n_videos
    assert {v['frames'] for v in videos} == {'2'}
    assert len({v['video'] for v in videos if v['label'] == '1'}) == sum(v['label'] == '1' for v in videos)
    v_auc = compute_metrics([int(v['label']) for v in videos], [float(v['score']) for v in videos])['auc']
    assert v_auc == pytest.approx(res['two_methods']['video_auc'])
    capsys.readouterr()
    again = metrics_main([str(tmp_path / 'scores_two_methods.csv'), '--group_by', 'method'])
    printed = capsys.readouterr().out
    assert 'two_methods/A' in printed and 'video_auc' in printed
    for name in res:
        for k in ('auc', 'video_auc', 'eer', 'acc', 'n', 'n_videos'):
            assert again[name][k] == pytest.approx(res[name][k], abs=1e-6), (name, k)


def test_robustness_report_resumes_and_is_deterministic(finetune_tiny, tmp_path, capsys):
    ckpt = tmp_path / 'detector.pth'
    shutil.copy(finetune_tiny['out'] / 'checkpoint-best.pth', ckpt)
    base = ['--eval', '--resume', ckpt, '--test_manifests', finetune_tiny['test'], '--output_dir', tmp_path,
            '--device', 'cpu', '--num_workers', 0, '--batch_size', 32, '--eval_frames', 2]
    clean = main_finetune.main(ft_args(base + ['--quiet', '--perturb', 'blur:5', 'noise:1']))['test']
    doc = json.loads((tmp_path / 'robustness.json').read_text())
    entry = doc['sets']['test']
    assert entry['clean']['auc'] == pytest.approx(clean['test']['auc'])
    assert set(entry['perturbations']) == {'blur', 'noise'} and set(entry['perturbations']['blur']) == {'5'}
    blur = entry['perturbations']['blur']['5']
    assert blur['n'] == clean['test']['n'] and blur['auc'] is not None and blur['video_auc'] is not None
    assert blur['auc'] != pytest.approx(clean['test']['auc'], abs=1e-9)     # the crops really changed
    md = (tmp_path / 'robustness.md').read_text()
    assert '| type | level 1 | level 5 | mean |' in md                  # the levels it holds
    assert f'| blur | - | {blur["auc"]:.4f} / {blur["video_auc"]:.4f} |' in md
    assert '| clean |' in md and (tmp_path / 'robustness.png').stat().st_size > 1000

    capsys.readouterr()
    main_finetune.main(ft_args(base + ['--perturb', 'blur:5', 'noise:1', 'contrast:5']))   # resumes: 1 to go
    out = capsys.readouterr().out
    assert '2 evaluation(s) already in' in out and '1 to go' in out and 'robustness' in out
    doc2 = json.loads((tmp_path / 'robustness.json').read_text())
    assert doc2['sets']['test']['perturbations']['blur'] == entry['perturbations']['blur']
    assert set(doc2['sets']['test']['perturbations']['contrast']) == {'5'}

    fresh = tmp_path / 'fresh'                                  # same perturbation, new run: same numbers
    main_finetune.main(ft_args([a if a != tmp_path else fresh for a in base] + ['--quiet', '--perturb', 'noise:1']))
    noise = json.loads((fresh / 'robustness.json').read_text())['sets']['test']['perturbations']['noise']['1']
    assert noise == entry['perturbations']['noise']['1']

    # other weights at the same path: nothing is reused, every number is the new detector's
    saved = torch.load(ckpt, weights_only=False)
    saved['model']['head.weight'] = -saved['model']['head.weight']
    torch.save(saved, ckpt)
    capsys.readouterr()
    main_finetune.main(ft_args(base + ['--perturb', 'blur:5']))
    assert 'already in' not in capsys.readouterr().out
    doc3 = json.loads((tmp_path / 'robustness.json').read_text())['sets']['test']
    assert set(doc3['perturbations']) == {'blur'}
    assert doc3['perturbations']['blur']['5']['auc'] == pytest.approx(1 - blur['auc'])     # the head flipped


def test_robustness_reuse_fingerprints(tmp_path):
    """The weights' fingerprint follows the tensors, not the file; the faces' follows each file's content stamp."""
    m = models_vit.MIFAEDetector(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                                 decoder_depth=1, decoder_num_heads=2)
    same = models_vit.MIFAEDetector(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                    decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    same.load_state_dict(m.state_dict())
    assert evaluation.weights_fingerprint(m) == evaluation.weights_fingerprint(same)
    with torch.no_grad():
        same.head.bias[0] += 1e-6
    assert evaluation.weights_fingerprint(m) != evaluation.weights_fingerprint(same)
    faces = [tmp_path / f'{i}.png' for i in range(3)]
    for f in faces:
        f.write_bytes(b'face')
    samples = [Sample(str(f), None, i % 2, f'v{i}', 'd') for i, f in enumerate(faces)]
    before = evaluation.samples_fingerprint(samples)
    assert evaluation.samples_fingerprint(samples) == before
    faces[1].write_bytes(b'another face')
    assert evaluation.samples_fingerprint(samples) != before


def test_train_methods_keeps_reals_and_chosen_fakes(synthetic_data, pretrained_tiny, tmp_path, capsys):
    rows = read_rows(synthetic_data['train'])
    fakes = sorted({r['video'] for r in rows if r['label'] == '1'})
    for r in rows:
        if r['label'] == '1':
            r['method'] = 'Deepfakes' if fakes.index(r['video']) % 2 else 'Face2Face'
    train = write_rows(Path(synthetic_data['train']).with_name('train_two_methods.csv'), rows)
    argv = ['--finetune', pretrained_tiny / 'checkpoint-last.pth', '--train_manifest', train, '--output_dir',
            tmp_path / 'ft', '--input_size', 112, '--batch_size', 16, '--epochs', 1, '--num_workers', 0,
            '--device', 'cpu', '--quiet', '--no_auto_resume', '--train_methods', 'DF']
    main_finetune.main(ft_args(argv))
    out = capsys.readouterr().out
    n_df = sum(r['method'] == 'Deepfakes' for r in rows)
    n_real = sum(r['label'] == '0' for r in rows)
    assert f'{n_df} of {n_df + sum(r["method"] == "Face2Face" for r in rows)} fakes' in out
    assert f'all {n_real} reals' in out
    with pytest.raises(SystemExit, match=r'--train_methods NT: no such fake .*Deepfakes, Face2Face'):
        main_finetune.main(ft_args([tmp_path / 'ft2' if a == tmp_path / 'ft' else a for a in argv[:-1]] + ['NT']))


def test_protocol_flags_fail_at_start_in_one_line(tmp_path):
    ckpt, manifest = tmp_path / 'ck.pth', tmp_path / 'm.csv'
    ckpt.write_bytes(b'x')
    manifest.write_text('path,landmarks,label,video,dataset\n')
    argv = ['--finetune', ckpt, '--train_manifest', manifest, '--output_dir', tmp_path / 'ft', '--device', 'cpu']
    evaluate = ['--eval', '--resume', ckpt, '--test_manifests', manifest]
    for bad, msg in ((['--eval_frames', -1], '--eval_frames'), (['--perturb', 'fog'], 'unknown perturbation'),
                     (['--perturb', 'blur:1'], 'with --eval'), (['--train_methods', ','], 'names no manipulation'),
                     (evaluate + ['--perturb', 'h264:2'], 'prepare_faces.py --perturb h264:LEVEL'),
                     (evaluate + ['--train_methods', 'DF'], '--eval trains nothing')):
        with pytest.raises(SystemExit, match=msg) as e:
            main_finetune.main(ft_args(argv + bad))
        assert '\n' not in str(e.value) and str(e.value).startswith('main_finetune.py: error: ')


# ---------------------------------------------------------------------- frame protocol (prepare_faces.py --perturb)
def MiddleFace():
    """A stand-in landmarker: one 'face' in the middle of every frame (keeps these runs fast)."""
    from preprocess import faces as F

    class Stub(F.Landmarker):
        name = 'stub'

        def detect_with_scores(self, img):
            h, w = img.shape[:2]
            return [(w * 0.2, h * 0.2, w * 0.8, h * 0.8)], [1.0]

        def landmarks(self, img, boxes):
            t = np.linspace(0, 1, F.NUM_LANDMARKS, dtype=np.float32)
            return [np.stack([x0 + t * (x1 - x0), y0 + (t * 7 % 1) * (y1 - y0)], 1) for x0, y0, x1, y1 in boxes]
    return Stub()


def test_frame_protocol_writes_its_own_deterministic_manifests(tmp_path, monkeypatch):
    import cv2
    from skimage import data

    import prepare_faces
    from preprocess import faces as F
    monkeypatch.setattr(F, 'build_landmarker', lambda *a, **k: MiddleFace())
    root = tmp_path / 'ffpp'
    (tmp_path / 'splits').mkdir()
    for split, pair in (('train', ['000', '001']), ('val', ['002', '003']), ('test', ['004', '005'])):
        (tmp_path / 'splits' / f'{split}.json').write_text(json.dumps([pair]))
    face = cv2.resize(data.astronaut()[:, :, ::-1], (160, 160))
    for folder, vid in (('original_sequences/youtube', '004'), ('manipulated_sequences/Deepfakes', '004_005'),
                        ('manipulated_sequences/Face2Face', '004_005')):
        path = root / folder / 'c23/videos' / f'{vid}.mp4'
        path.parent.mkdir(parents=True)
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 25, (160, 160))
        for i in range(6):
            w.write(np.roll(face, 3 * i, axis=1))
        w.release()
    out = tmp_path / 'out'

    def run(*extra):
        argv = ['--input', root, '--output', out, '--dataset', 'ffpp', '--splits', tmp_path / 'splits',
                '--frames_per_video', 3, '--landmarker', 'dlib', '--no_progress', '--size', 64, *extra]
        return prepare_faces.main(prepare_faces.get_args_parser().parse_args([str(a) for a in argv]))

    run()
    run('--perturb', 'blur:5')
    run('--perturb', 'h264:5')
    clean = read_rows(out / 'ffpp_test.csv')
    blur = read_rows(out / 'ffpp_test_blur5.csv')
    h264 = read_rows(out / 'ffpp_test_h2645.csv')
    assert {r['method'] for r in clean} == {'youtube', 'Deepfakes', 'Face2Face'}
    for rows, pname in ((blur, 'blur5'), (h264, 'h2645')):
        assert [(r['video'], r['frame'], r['method']) for r in rows] == \
               [(r['video'], r['frame'], r['method']) for r in clean]
        assert all(r['path'].startswith(f'faces/{pname}/ffpp/') for r in rows)
        for r, c in zip(rows, clean):
            a, b = cv2.imread(str(out / r['path'])), cv2.imread(str(out / c['path']))
            assert a.shape == b.shape and not np.array_equal(a, b)
    sharp = lambda p: cv2.Laplacian(cv2.imread(str(out / p), cv2.IMREAD_GRAYSCALE), cv2.CV_64F).var()  # noqa: E731
    assert np.mean([sharp(r['path']) for r in blur]) < 0.5 * np.mean([sharp(r['path']) for r in clean])
    first = {r['path']: cv2.imread(str(out / r['path'])) for r in blur}
    run('--perturb', 'blur:5', '--overwrite')                  # the same frames degrade the same way
    assert all(np.array_equal(cv2.imread(str(out / p)), img) for p, img in first.items())
    assert read_rows(out / 'ffpp_test.csv') == clean          # the clean run's manifests are untouched
    assert not list((out / '.prepare').glob('h264/*.mp4'))     # re-encoded copies removed
    with pytest.raises(ValueError, match='--perturb blur: name one type and level'):
        run('--perturb', 'blur')


# ---------------------------------------------------------------------- synthetic forgery families
def test_forgery_families_are_deterministic_local_and_recorded(tmp_path):
    from synthetic.faces import (
        FORGERY_FAMILIES,
        family_method,
        generate_dataset,
        render_face,
        sample_identity,
    )
    target, source = sample_identity(np.random.default_rng(1)), sample_identity(np.random.default_rng(2))
    real, lm_real = render_face(target, np.random.default_rng(5), 96)
    assert set(FORGERY_FAMILIES) == {'swap', 'reenact', 'local_edit', 'upsample', 'resynth'}
    for name, fake in FORGERY_FAMILIES.items():
        a, lm = fake(target, source, np.random.default_rng(5), 96, artefacts='strong')
        b, _ = fake(target, source, np.random.default_rng(5), 96, artefacts='strong')
        assert a.dtype == np.uint8 and a.shape == (96, 96, 3) and np.array_equal(a, b), name
        assert np.allclose(lm, lm_real), name                    # the target's landmarks, same pose
        diff = np.abs(a.astype(int) - real.astype(int)).max(-1)
        assert diff[:4, :4].max() <= 1 and diff.mean() > 0.5, name   # the corner stays, the face changes
    up, _ = FORGERY_FAMILIES['upsample'](target, source, np.random.default_rng(5), 96, artefacts='strong')
    nyquist = lambda img: np.abs(np.fft.fft2(img[30:62, 30:62].mean(-1).astype(float)))[16, 16]  # noqa: E731
    assert nyquist(up) > 3 * nyquist(real)                      # the checkerboard of the upsampling
    m = generate_dataset(tmp_path, num_identities=8, frames_per_identity=1, size=48, seed=0, progress=False,
                         families=('swap', 'local_edit'), test_families=('reenact', 'swap'))
    train, test, cross = (read_rows(m[k]) for k in ('train', 'test', 'families_test'))
    assert {r['method'] for r in train if r['label'] == '1'} == {'synthetic_swap', 'synthetic_local_edit'}
    assert {r['method'] for r in test if r['label'] == '1'} <= {'synthetic_swap', 'synthetic_local_edit'}
    assert [r for r in cross if r['method'] != 'synthetic_reenact'] == test
    n_pairs = len({r['video'] for r in test if r['label'] == '1'})
    assert len({r['video'] for r in cross if r['method'] == family_method('reenact')}) == n_pairs
    assert len({r['video'] for r in cross}) == len({(r['method'], r['video']) for r in cross})   # ids unique
    with pytest.raises(ValueError, match='unknown forgery family gan'):
        generate_dataset(tmp_path / 'x', num_identities=8, families=('gan',), progress=False)


# ---------------------------------------------------------------------- EVALUATION.md
def test_evaluation_md_commands_parse_with_the_scripts_parsers():
    import shlex

    import prepare_faces
    import util.metrics
    text = (Path(__file__).resolve().parents[1] / 'EVALUATION.md').read_text()
    blocks = [b.split('```', 1)[0].replace('\\\n', ' ') for b in text.split('```bash\n')[1:]]
    parsers = {'prepare_faces.py': prepare_faces.get_args_parser(), 'main_finetune.py': main_finetune.get_args_parser()}
    seen = set()
    for line in (ln for b in blocks for ln in b.splitlines() if 'python ' in ln):
        cmd = line[line.index('python '):].split('; done')[0].replace('$p', 'blur:3')
        argv = shlex.split(cmd)[1:]
        if argv[:2] == ['-m', 'synthetic.faces']:
            continue                                        # tests/test_docs.py parses it with its own parser
        if argv[:2] == ['-m', 'util.metrics']:
            seen.add('metrics')
            continue                                        # its parser runs the files: checked below
        args = parsers[argv[0]].parse_args(argv[1:])
        seen.add(argv[0])
        if argv[0] == 'main_finetune.py':
            evaluation.check_protocol_args(args, lambda msg: pytest.fail(f'{line}: {msg}'))
        else:
            assert args.perturb is None or prepare_faces.perturb_spec(args.perturb)
    assert seen == {'prepare_faces.py', 'main_finetune.py', 'metrics'}
    loop = text.split('for p in ', 1)[1].split('; do', 1)[0].split()
    assert len(loop) == 40 and all(prepare_faces.perturb_spec(p) for p in loop)
    assert 'python -m util.metrics eval_cross_dataset/scores_celebdf_test.csv --group_by method' in text
    with pytest.raises(SystemExit):                         # the documented flags exist in util.metrics
        util.metrics.main(['--help'])


def test_adding_a_perturbation_anywhere_leaves_the_others_draws(monkeypatch):
    """Random streams are keyed by the perturbation's name: a new type at the head of the table changes no
    other type's seed or degraded frame, in the crop protocol (frame_seed) and the frame protocol (worker)."""
    from preprocess import worker
    from util import perturb as P
    img = (np.random.default_rng(1).random((40, 48, 3)) * 255).astype(np.uint8)
    sample = Sample('clip/0001.png', None, 1, 'v1', 'ffpp', 'Deepfakes')

    def draws():
        seeds = {k: protocols.frame_seed(sample, 7, k, 3) for k in P.FRAME_KINDS if k != 'sharpen'}
        crops = {k: P.perturb(img, k, 3, np.random.default_rng(s)) for k, s in seeds.items()}
        frames = {k: next(worker._perturbed([(0, img)], {'key': 'ffpp/v1'}, {'perturb': (k, 3)}))[1]
                  for k in seeds}
        return seeds, crops, frames

    seeds, crops, frames = draws()
    assert len({s[1] for s in seeds.values()}) == len(seeds)             # one stream per type
    monkeypatch.setattr(P, 'PERTURBATIONS', {'sharpen': P.Perturbation((1, 2, 3, 4, 5), lambda x, p, rng: x.copy()),
                                             **P.PERTURBATIONS})
    monkeypatch.setattr(P, 'FRAME_KINDS', ('sharpen',) + P.FRAME_KINDS)
    seeds2, crops2, frames2 = draws()
    assert seeds2 == seeds
    assert all(np.array_equal(crops[k], crops2[k]) and np.array_equal(frames[k], frames2[k]) for k in seeds)
