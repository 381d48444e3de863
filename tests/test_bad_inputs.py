"""The bad-input corpus (tests/bad_inputs.py) through every stage: each case works, is skipped and counted, or
is a one-line error, as docs/failures.md says, and no run loses what its output folder held.

Micro model, 32-px input, one epoch: the module takes a few seconds on 2 cores (dlib tests a few more).
"""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import IMAGE_CASES, build_corpus, snapshot, write_manifest
from skimage.data import astronaut

import main_finetune
import main_pretrain
from util import loaders
from util.datasets import FaceDataset, FaceTransform, read_manifest
from util.formats import read_image_rgb

ROOT = Path(__file__).resolve().parents[1]
MICRO = ['--model', 'mae_vit_micro_patch8', '--input_size', '32', '--epochs', '1', '--warmup_epochs', '1',
         '--num_workers', '0', '--device', 'cpu', '--quiet']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp('bad_inputs'))


def expected(corpus, stage):
    """Unique rows of the corpus manifest -> (usable, unusable, missing) counts for stage 1 or 2."""
    rows = {tuple(r.values()) for r in corpus.rows}
    bad = missing = 0
    for path, lm, *_ in rows:
        p, npy = str(corpus.root / path), str(corpus.root / lm) if lm else None
        if not Path(p).exists():
            missing += 1
        elif p in corpus.bad_images or (stage == 1 and npy in corpus.bad_landmarks):
            bad += 1
    return len(rows) - bad - missing, bad, missing


def pretrain(corpus, out, *extra, data=None):
    n_real = sum(r['label'] != '1' for r in corpus.rows)         # one batch holding every row once
    argv = ['--data_path', str(data or corpus.manifest), '--output_dir', str(out), '--batch_size', str(n_real),
            *MICRO, *extra]
    return main_pretrain.main(main_pretrain.get_args_parser().parse_args(argv))


@pytest.fixture(scope='module')
def pretrained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp('pretrain')
    (out / 'notes.txt').write_text('kept')
    stats = pretrain(corpus, out)
    return out, stats


# ---------------------------------------------------------------------- the reader and the data set
def test_reader_outcome_of_every_image_case(corpus):
    face = read_image_rgb(corpus.images['png'])
    for name, (fname, _, usable, _) in IMAGE_CASES.items():
        path = corpus.images[name]
        if not usable:
            with pytest.raises(ValueError) as err:
                read_image_rgb(path)
            assert str(err.value).startswith(f'{path}: ') and '\n' not in str(err.value), name
            continue
        img = read_image_rgb(path)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        if name in ('wrong_extension', 'rgba', 'sixteen_bit'):             # exact: alpha dropped, 16 -> 8 bits
            np.testing.assert_array_equal(img, face)
        if name == 'grayscale':
            assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
        if name == 'tiny':
            assert img.shape == (1, 1, 3)
    assert 'larger than the decoder' in _error(corpus.images['huge'])
    assert 'zero-byte' in _error(corpus.images['zero_byte'])
    assert 'truncated' in _error(corpus.images['truncated_jpeg'])


def _error(path):
    try:
        read_image_rgb(path)
    except ValueError as e:
        return str(e)
    return ''


def test_dataset_marks_each_case_and_names_each_bad_file_once(corpus, capsys):
    samples = read_manifest(corpus.manifest)                           # saved with a byte-order mark
    assert len(samples) == len(corpus.rows)
    ds = FaceDataset(samples, FaceTransform(32, train=False, normalize=False), mask_strategy='facial',
                     patch_size=8, drop_unusable=True)
    for _ in range(2):                                                 # a second pass reports nothing new
        items = [ds[i] for i in range(len(ds))]
    for s, it in zip(samples, items):
        bad = (s.path in corpus.bad_images or s.landmarks in corpus.bad_landmarks or not Path(s.path).exists())
        assert it['unusable'] == bad, s
        if not bad:
            assert it['has_landmarks'] == (s.path not in corpus.no_landmarks), s
            assert it['mask'].sum() == round(16 * 0.75)
    lines = capsys.readouterr().out.splitlines()
    for bad in corpus.bad_images | corpus.bad_landmarks:
        assert sum(line.startswith(f'[data] skipped: {bad}: ') for line in lines) == 1, bad


def test_broken_manifests_are_one_line_errors(corpus):
    for name, (path, words) in corpus.broken_manifests.items():
        with pytest.raises(SystemExit) as err:
            loaders.read_labelled(path)
        msg = str(err.value.code)
        assert msg.startswith('main_finetune.py: error: ') and words in msg and '\n' not in msg, name


# ---------------------------------------------------------------------- pre-training
def test_pretraining_skips_and_counts(corpus, pretrained, capsys):
    out, stats = pretrained
    usable, bad, _ = expected(corpus, stage=1)
    n_real = sum(r['label'] != '1' for r in corpus.rows)
    # every row once: each unusable one (and the missing file) replaced at least once, and counted
    assert stats['unreadable_images'] >= bad + 1
    no_lm = sum(str(corpus.root / r['path']) in corpus.no_landmarks for r in corpus.rows)
    assert stats['images_without_landmarks'] >= no_lm
    log = (out / 'log.txt').read_text()
    assert '"unreadable_images"' in log and '"images_without_landmarks"' in log
    assert (out / 'checkpoint-last.pth').is_file() and (out / 'notes.txt').read_text() == 'kept'
    assert n_real > 2 * (bad + 1)


def test_pretraining_says_how_many_rows_repeat(corpus, capsys):
    args = main_pretrain.get_args_parser().parse_args(['--data_path', str(corpus.manifest)])
    assert len(main_pretrain.real_samples(args)) == sum(r['label'] != '1' for r in corpus.rows)   # all kept
    assert f'{corpus.repeats} rows repeat an earlier row exactly; kept' in capsys.readouterr().out


def test_pretraining_strict_data_names_the_file(corpus, tmp_path):
    with pytest.raises(SystemExit) as err:
        pretrain(corpus, tmp_path / 'strict', '--strict_data')
    msg = str(err.value.code)
    assert msg.startswith('main_pretrain.py: error: --data_path ') and msg.endswith('(--strict_data)')
    assert any(p in msg for p in corpus.bad_images | corpus.bad_landmarks) and '\n' not in msg


def test_mostly_unusable_data_is_one_line_with_counts(corpus, tmp_path):
    rows = [dict(r) for r in corpus.rows if r['path'].startswith('cases/')]
    good = [r for r in rows if str(corpus.root / r['path']) not in corpus.bad_images and 'absent' not in r['path']]
    mostly_bad = [r for r in rows if r not in good] * 3 + good[:2]
    manifest = corpus.root / 'mostly_bad.csv'
    write_manifest(manifest, mostly_bad)
    with pytest.raises(SystemExit) as err:
        pretrain(corpus, tmp_path / 'bad', data=manifest)
    msg = str(err.value.code)
    assert msg.startswith(f'main_pretrain.py: error: --data_path {manifest}: ') and '\n' not in msg
    assert f'samples checked (evenly spaced over {len(mostly_bad)}) are unusable, e.g. ' in msg
    assert str(corpus.root / 'cases') in msg


def test_unusable_draws_in_a_row_end_in_one_line_from_a_worker(corpus):
    from torch.utils.data import DataLoader

    from util.datasets import ExitOnDataError
    bad = [s for s in read_manifest(corpus.manifest) if s.path in corpus.bad_images]
    ds = FaceDataset(bad, FaceTransform(32, normalize=False), probe=0)       # not checked when built
    loader = ExitOnDataError(DataLoader(ds, batch_size=2, num_workers=1), 'main_pretrain.py')
    with pytest.raises(SystemExit) as err:
        next(iter(loader))
    msg = str(err.value.code)
    assert msg.startswith('main_pretrain.py: error: 51 unusable samples drawn in a row, the last ')
    assert msg.endswith('most of the data set is unusable') and '\n' not in msg


# ---------------------------------------------------------------------- fine-tuning and evaluation
@pytest.fixture(scope='module')
def finetuned(corpus, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp('finetune')
    m = str(corpus.manifest)
    argv = ['--finetune', str(pretrained[0] / 'checkpoint-last.pth'), '--train_manifest', m, '--val_manifest', m,
            '--test_manifests', m, '--output_dir', str(out), '--batch_size', '8', '--lr', '1e-3',
            '--trainable_blocks', '1', '--no_auto_resume', *MICRO]
    return out, main_finetune.main(main_finetune.get_args_parser().parse_args(argv))


def test_finetuning_and_test_sets_leave_out_and_count(corpus, finetuned):
    out, result = finetuned
    usable, bad, missing = expected(corpus, stage=2)
    assert result['unreadable_images'] >= 1 and result['val_unreadable'] == bad
    m = result['test']['corpus']
    assert (m['n'], m['unreadable'], m['missing']) == (usable, bad, missing)   # each repeated row scored once
    assert m['n_real'] + m['n_fake'] == usable


def test_eval_on_a_training_folder_loses_nothing(corpus, finetuned, capsys):
    out, result = finetuned
    before = {k: v for k, v in snapshot(out).items() if k.endswith('.pth') or k == 'log.txt'}
    argv = ['--eval', '--resume', str(out / 'checkpoint-best.pth'), '--test_manifests', str(corpus.manifest),
            '--output_dir', str(out), '--num_workers', '0', '--device', 'cpu', '--quiet']
    res = main_finetune.main(main_finetune.get_args_parser().parse_args(argv))['test']['corpus']
    assert (res['n'], res['unreadable']) == (result['test']['corpus']['n'], result['test']['corpus']['unreadable'])
    assert f'{corpus.repeats} rows repeat an earlier row exactly; left out' in capsys.readouterr().out
    after = snapshot(out)
    assert all(after.get(k) == v for k, v in before.items())


# ---------------------------------------------------------------------- prediction and preparation (dlib)
def test_predict_reports_each_case(corpus, finetuned, tmp_path, dlib_once):
    import cv2

    import predict
    photo = tmp_path / 'astronaut.png'
    cv2.imwrite(str(photo), astronaut()[..., ::-1])
    paths = [str(corpus.images[n]) for n in IMAGE_CASES] + [str(photo)]
    results = predict.run(predict.get_args_parser().parse_args(
        ['--checkpoint', str(finetuned[0] / 'checkpoint-best.pth'), *paths, '--device', 'cpu', '--quiet']))
    status = dict(zip(IMAGE_CASES, [r['status'] for r in results]))
    for name, (_, _, usable, _) in IMAGE_CASES.items():
        assert status[name] in (('ok', 'no_face') if usable else ('unreadable',)), name
    assert results[-1]['status'] == 'ok'


@pytest.fixture(scope='module')
def dlib_landmarker():
    pytest.importorskip('dlib')
    from preprocess import faces as F
    return F.build_landmarker('dlib')                           # built once: it takes seconds


@pytest.fixture
def dlib_once(monkeypatch, dlib_landmarker):
    from preprocess import faces as F
    monkeypatch.setattr(F, 'build_landmarker', lambda *a, **k: dlib_landmarker)


def test_prepare_faces_fails_each_bad_file_and_keeps_earlier_output(corpus, tmp_path, dlib_once):
    import cv2

    import prepare_faces
    inp, out = tmp_path / 'photos', tmp_path / 'out'
    inp.mkdir()
    cv2.imwrite(str(inp / 'astronaut.png'), astronaut()[..., ::-1])
    args = lambda: prepare_faces.get_args_parser().parse_args(   # noqa: E731
        ['--input', str(inp), '--output', str(out), '--landmarker', 'dlib', '--no_progress', '--name', 'photos'])
    assert prepare_faces.main(args())['faces'] == 1
    kept = snapshot(out / 'faces')
    (inp / 'cases').mkdir()
    for name in IMAGE_CASES:                                     # the corpus joins the folder; a second run
        (inp / 'cases' / corpus.images[name].name).write_bytes(corpus.images[name].read_bytes())
    summary = prepare_faces.main(args())
    with open(out / 'failures.csv', newline='') as f:
        failures = {r['path']: r['reason'] for r in csv.DictReader(f)}
    for name, (fname, _, usable, _) in IMAGE_CASES.items():
        reason = failures.get(str(inp / 'cases' / fname), 'read')
        assert reason.startswith('unreadable image (') != usable, (name, reason)
        assert fname not in reason                                   # the path is named once, in its column
    assert summary['frames_unreadable'] == sum(not c[2] for c in IMAGE_CASES.values())
    assert summary['images'] == 1 + sum(c[2] for c in IMAGE_CASES.values())     # every readable one was searched
    after = snapshot(out / 'faces')
    assert all(after.get(k) == v for k, v in kept.items())


def test_prepare_faces_exits_nonzero_when_every_input_failed(corpus, tmp_path):
    pytest.importorskip('dlib')
    inp = tmp_path / 'broken'
    inp.mkdir()
    for name in ('zero_byte', 'truncated_jpeg', 'not_an_image'):
        (inp / corpus.images[name].name).write_bytes(corpus.images[name].read_bytes())
    proc = subprocess.run([sys.executable, str(ROOT / 'prepare_faces.py'), '--input', str(inp), '--output',
                           str(tmp_path / 'out'), '--landmarker', 'dlib', '--no_progress'],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: no input of {inp} gave a face (0 videos, 0 photos); the reasons are in ')
    with open(tmp_path / 'out' / 'failures.csv', newline='') as f:
        assert [r['reason'].split(' (')[0] for r in csv.DictReader(f)] == ['unreadable image'] * 3


def test_eval_strict_data_is_one_line_naming_the_file(corpus, finetuned, tmp_path):
    manifest = corpus.root / 'strict.csv'                        # paths are relative to the manifest
    write_manifest(manifest, [r for r in corpus.rows if 'absent' not in r['path']])
    argv = ['--eval', '--resume', str(finetuned[0] / 'checkpoint-best.pth'), '--test_manifests', str(manifest),
            '--output_dir', str(tmp_path / 'eval'), '--strict_data', '--num_workers', '1', '--device', 'cpu',
            '--quiet']
    with pytest.raises(SystemExit) as err:                       # raised in a worker process, one line here
        main_finetune.main(main_finetune.get_args_parser().parse_args(argv))
    msg = str(err.value.code)
    assert msg.startswith('main_finetune.py: error: ') and msg.endswith(' (--strict_data)') and '\n' not in msg
    assert any(msg.startswith(f'main_finetune.py: error: {p}: ') for p in corpus.bad_images)
