"""Stage 2 from real faces alone: self-blended pairs in the loader (one crop and flip per pair, unusable landmarks
as plain reals) and a micro run of main_finetune.py --pseudo_fakes sbi on a reals-only manifest."""
import csv
import re

import numpy as np
import pytest
import torch

import main_finetune
import main_pretrain
import util.checkpoint as checkpoint
import util.self_blend as sb
from synthetic.faces import generate_dataset, render_face, sample_identity
from util import recipes
from util.datasets import FaceTransform, Sample


@pytest.fixture(scope='module')
def face_files(tmp_path_factory):
    import cv2
    d = tmp_path_factory.mktemp('faces')
    rng = np.random.default_rng(5)
    samples = []
    for i in range(4):
        img, lm = render_face(sample_identity(rng), rng, size=96)
        cv2.imwrite(str(d / f'{i}.png'), img[:, :, ::-1])
        np.save(d / f'{i}.npy', lm)
        samples.append(Sample(str(d / f'{i}.png'), str(d / f'{i}.npy'), 0, f'v{i}', 'd'))
    return samples


def test_pairs_share_crop_and_flip(face_files):
    ds = sb.PseudoFakePairs(face_files, FaceTransform(48, train=True, scale=(0.3, 1.0), normalize=False))
    img = sb.read_image_rgb(face_files[0].path)
    seen = set()
    for seed in range(12):
        real, partner = ds.augment((img, img.copy()), seed)     # one face twice: one crop and flip, one image
        assert real.shape == (3, 48, 48) and torch.equal(real, partner)
        seen.add(real.float().mean().item())
    assert len(seen) > 4                             # crops and flips do vary from draw to draw


def test_pairs_share_randaugment_and_leave_global_streams_alone(face_files):
    """--aa: timm's crop, flip and RandAugment, seeded per pair from the loader's stream, are one for the pair."""
    import random

    from util.augment import TimmTrainTransform
    ds = sb.PseudoFakePairs(face_files, TimmTrainTransform(48, (0.3, 1.0), 'rand-m9-mstd0.5-inc1'))
    img = sb.read_image_rgb(face_files[1].path)
    random.seed(1)
    np.random.seed(1)
    py, npy = random.random(), np.random.random()
    random.seed(1)
    np.random.seed(1)
    seen = set()
    for seed in range(12):
        real, partner = ds.augment((img, img.copy()), seed)
        assert real.dtype == torch.uint8 and real.shape == (3, 48, 48) and torch.equal(real, partner)
        seen.add(real.float().mean().item())
    assert len(seen) > 4
    assert random.random() == py and np.random.random() == npy          # seeded for the call, then restored
    torch.manual_seed(0)
    item = ds[1]                                                         # a real pair through RandAugment
    assert item['img'].shape == (2, 3, 48, 48) and not torch.equal(item['img'][0], item['img'][1])


def test_crop_without_the_blend_leaves_the_real_alone(face_files):
    """A crop outside the blended region would make a "fake" identical to its real: the item keeps the real only."""
    def corner(img, landmarks=None, generator=None):                  # the top-left corner: never blended
        torch.rand(1, generator=generator)
        return torch.from_numpy(np.ascontiguousarray(img[:8, :8])).permute(2, 0, 1), None
    ds = sb.PseudoFakePairs(face_files, corner)
    item = ds[0]
    assert item['img'].shape == (1, 3, 8, 8) and item['label'].tolist() == [0] and item['no_blend'] == 1


def test_mostly_unreadable_reals_are_refused_when_built(face_files, tmp_path):
    from util.datasets import DataError
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not a png')
    bad = [Sample(str(broken), None, 0, f'b{i}', 'd') for i in range(5)]
    with pytest.raises(DataError, match=r'5 of 7 samples checked \(evenly spaced over 7\) are unusable'):
        sb.PseudoFakePairs(bad + face_files[:2], FaceTransform(48, normalize=False))
    assert len(sb.PseudoFakePairs(bad[:1] + face_files, FaceTransform(48, normalize=False))) == 5


def test_pairs_differ_inside_face_only_and_collate(face_files):
    ds = sb.PseudoFakePairs(face_files, FaceTransform(48, train=False, normalize=False))
    torch.manual_seed(1)
    batch = sb.collate_pairs([ds[i] for i in range(len(ds))])
    assert batch['img'].shape == (8, 3, 48, 48) and batch['label'].tolist() == [0, 1] * 4
    real, fake = batch['img'][0::2].int(), batch['img'][1::2].int()
    diff = (real - fake).abs().amax(1)                                   # [4, 48, 48]
    assert (diff.flatten(1).float().mean(1) > 0).all()
    assert (diff[:, :3, :] == 0).all() and (diff[:, :, :3] == 0).all()   # the image border is untouched
    assert batch['no_blend'].sum() == 0 and batch['replaced'].sum() == 0


def test_face_without_landmarks_is_a_plain_real(face_files, capsys):
    bad = [Sample(face_files[0].path, None, 0, 'v', 'd')]
    ds = sb.PseudoFakePairs(bad, FaceTransform(48, train=False, normalize=False))
    item = ds[0]
    assert item['img'].shape == (1, 3, 48, 48) and item['label'].tolist() == [0] and item['no_blend'] == 1
    assert 'used as a plain real' in capsys.readouterr().out
    assert sb.count_unusable_landmarks(bad + face_files) == 1


@pytest.fixture(scope='module')
def micro(tmp_path_factory):
    """Synthetic faces (64 px), a reals-only training manifest and a micro MIFAE pre-trained for one epoch."""
    tmp = tmp_path_factory.mktemp('micro')
    m = generate_dataset(tmp / 'data', num_identities=16, frames_per_identity=1, size=64, seed=1,
                         fake_ratio=0.5, test_fraction=0.25, progress=False, artefacts='strong')
    with open(m['train'], newline='') as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if r['label'] == '0']
    reals = tmp / 'data' / 'reals.csv'
    with open(reals, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    pre = main_pretrain.get_args_parser().parse_args(
        ['--data_path', str(m['pretrain']), '--output_dir', str(tmp / 'pre'), '--model', 'mae_vit_micro_patch8',
         '--input_size', '32', '--batch_size', '4', '--epochs', '1', '--num_workers', '0', '--device', 'cpu',
         '--quiet', '--no_auto_resume'])
    main_pretrain.main(pre)
    return dict(reals=reals, n_reals=len(rows), test=m['test'], checkpoint=tmp / 'pre' / 'checkpoint-last.pth')


def sbi_argv(micro, out, *extra):
    return ['--finetune', str(micro['checkpoint']), '--train_manifest', str(micro['reals']), '--output_dir', str(out),
            '--input_size', '32', '--batch_size', '4', '--num_workers', '0', '--device', 'cpu',
            '--pseudo_fakes', 'sbi', '--quiet', *extra]


def test_reals_only_manifest_trains_and_evaluates(micro, tmp_path, capsys):
    args = main_finetune.get_args_parser().parse_args(sbi_argv(
        micro, tmp_path / 'ft', '--val_manifest', str(micro['test']), '--test_manifests', str(micro['test']),
        '--epochs', '1', '--recon', 'real', '--no_auto_resume'))
    result = main_finetune.main(args)
    out = capsys.readouterr().out
    assert f'{micro["n_reals"]} real faces, each with a fake partner' in out
    assert 'learns a single class' not in out
    assert np.isfinite(result['train_loss']) and result['l1_fake'] > 0 and result['l1_real'] > 0
    assert 0 <= result['reals_without_fake'] < micro['n_reals']
    test = next(iter(result['test'].values()))
    assert test['auc'] is not None and (tmp_path / 'ft' / 'eval.json').is_file()


@pytest.mark.slow
def test_resume_draws_the_same_pairs_as_a_run_never_stopped(micro, tmp_path):
    parse = main_finetune.get_args_parser().parse_args
    main_finetune.main(parse(sbi_argv(micro, tmp_path / 'a', '--epochs', '1', '--recon', 'none')))
    resumed = main_finetune.main(parse(sbi_argv(micro, tmp_path / 'a', '--epochs', '2', '--recon', 'none')))
    straight = main_finetune.main(parse(sbi_argv(micro, tmp_path / 'b', '--epochs', '2', '--recon', 'none')))
    assert resumed['epoch'] == 1 and resumed['train_loss'] == straight['train_loss']
    a = checkpoint.load(tmp_path / 'a' / 'checkpoint-last.pth')['model']
    b = checkpoint.load(tmp_path / 'b' / 'checkpoint-last.pth')['model']
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize('extra,msg', [
    (['--batch_size', '3'], 'even --batch_size'),
    (['--mixup', '0.2'], 'does not combine with --mixup'),
    (['--pseudo_fakes_ratio', '0'], 'must lie in (0, 1]'),
])
def test_pseudo_fake_flag_errors(extra, msg):
    args = main_finetune.get_args_parser().parse_args(['--pseudo_fakes', 'sbi', '--train_manifest', 'x.csv'] + extra)
    _, from_recipe = recipes.apply_recipe(args)
    with pytest.raises(SystemExit, match=re.escape(msg)):
        recipes.check_pseudo_fake_args(args, from_recipe)


def test_self_blending_doc_commands_parse():
    """Every command of docs/self_blending.md parses with its script's own parser, and the paths chain."""
    import shlex
    from pathlib import Path

    import prepare_faces
    from benchmarks import generalisation as benchmark_generalisation
    doc = (Path(__file__).resolve().parents[1] / 'docs' / 'self_blending.md').read_text()
    blocks = re.findall(r'```bash\n(.*?)```', doc, re.S)
    commands = [c for b in blocks for c in b.replace('\\\n', ' ').splitlines() if c.strip() and not c.startswith('#')]
    parsers = {'prepare_faces.py': prepare_faces.get_args_parser, 'main_pretrain.py': main_pretrain.get_args_parser,
               'main_finetune.py': main_finetune.get_args_parser,
               'benchmarks.generalisation': benchmark_generalisation.get_args_parser}
    parsed = {}
    for cmd in commands:
        words = shlex.split(cmd, comments=True)
        script, argv = (words[2], words[3:]) if words[1] == '-m' else (words[1], words[2:])
        assert words[0] == 'python' and script in parsers, cmd
        parsed.setdefault(script, []).append(parsers[script]().parse_args(argv))
    assert len(parsed['main_finetune.py']) == 3        # the ablation's commands live in docs/ablation.md
    pre, (ft, ev, ffpp) = parsed['main_pretrain.py'][0], parsed['main_finetune.py']
    assert ft.finetune == f'{pre.output_dir}/checkpoint-last.pth' and ft.train_manifest == pre.data_path
    assert ft.pseudo_fakes == 'sbi' and ffpp.pseudo_fakes_ratio == 1
    assert ev.eval and ev.resume == f'{ft.output_dir}/checkpoint-last.pth'


@pytest.mark.slow
def test_torchrun_two_processes_with_loader_workers(micro, tmp_path):
    """--pseudo_fakes sbi under torchrun (gloo, two processes), pairs made in a DataLoader worker."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29571',
           'main_finetune.py', *sbi_argv(micro, out, '--epochs', '1', '--no_auto_resume')]
    cmd[cmd.index('--num_workers') + 1] = '1'
    res = subprocess.run(cmd, cwd=Path(main_finetune.__file__).parent, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert torch.load(out / 'checkpoint-last.pth', map_location='cpu', weights_only=False)['epoch'] == 0
    assert 'each with a fake partner' in res.stdout
