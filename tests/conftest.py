"""Shared fixtures: one synthetic face set and one tiny pre-trained MIFAE per test session.

Everything runs on the CPU, offline. The small sizes keep the whole suite within minutes on 2 cores.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('OMP_NUM_THREADS', '2')
torch.set_num_threads(2)

TINY = dict(model='mae_vit_tiny_patch16', input_size=112)


def write_rows(path, rows):
    """Manifest rows (dicts) written as a CSV at `path`. -> path"""
    import csv
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory):
    """Real and fake synthetic faces (128 px) with manifests: all / train / test / pretrain."""
    from synthetic.faces import generate_dataset
    out = tmp_path_factory.mktemp('synthetic')
    return generate_dataset(out, num_identities=40, frames_per_identity=4, size=128, seed=0, fake_ratio=0.5,
                            test_fraction=0.25, progress=False)


def pretrain_args(data_path, output_dir, **overrides):
    """Parsed main_pretrain arguments for a tiny CPU run."""
    import main_pretrain
    argv = ['--data_path', str(data_path), '--output_dir', str(output_dir), '--model', TINY['model'],
            '--input_size', str(TINY['input_size']), '--batch_size', '16', '--epochs', '4', '--warmup_epochs', '1',
            '--blr', '1.5e-3', '--num_workers', '0', '--device', 'cpu', '--quiet', '--print_freq', '2']
    args = main_pretrain.get_args_parser().parse_args(argv)
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


@pytest.fixture(scope='session')
def pretrained_tiny(synthetic_data, tmp_path_factory):
    """A tiny MIFAE pre-trained for 4 epochs on the synthetic real faces: its output folder."""
    import main_pretrain
    out = tmp_path_factory.mktemp('pretrain')
    args = pretrain_args(synthetic_data['pretrain'], out, epochs=4, save_freq=3)
    main_pretrain.main(args)
    return out


# ---------------------------------------------------------------------- stage 2 (fine-tuning)
FINETUNE = dict(input_size=112, epochs=4, lr=1e-3, trainable_blocks=1, batch_size=16)


def finetune_split(train_csv, every=5):
    """Validation identities (every `every`-th of the training identities) apart from the rest:
    (train csv, val csv), both with real and fake faces; the test identities stay untouched."""
    import csv
    with open(train_csv, newline='') as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    ids = sorted({r['identity'] for r in rows})
    val_ids = set(ids[::every])
    paths = {}
    for name, keep in (('finetune_train', lambda r: r['identity'] not in val_ids),
                       ('finetune_val', lambda r: r['identity'] in val_ids)):
        paths[name] = Path(train_csv).with_name(f'{name}.csv')
        with open(paths[name], 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows([r for r in rows if keep(r)])
    return paths['finetune_train'], paths['finetune_val']


@pytest.fixture(scope='session')
def finetune_tiny(pretrained_tiny, synthetic_data, tmp_path_factory):
    """The tiny pre-trained MIFAE fine-tuned into a detector (best epoch on validation identities) and
    evaluated on the held-out test identities: dict(out, result, train, val, test, epochs, input_size)."""
    import main_finetune
    out = tmp_path_factory.mktemp('finetune')
    train, val = finetune_split(synthetic_data['train'])
    argv = ['--finetune', pretrained_tiny / 'checkpoint-last.pth', '--train_manifest', train, '--val_manifest', val,
            '--test_manifests', synthetic_data['test'], '--output_dir', out, '--input_size', FINETUNE['input_size'],
            '--batch_size', FINETUNE['batch_size'], '--epochs', FINETUNE['epochs'], '--lr', FINETUNE['lr'],
            '--trainable_blocks', FINETUNE['trainable_blocks'], '--warmup_epochs', 1, '--num_workers', 0,
            '--recipe', 'light', '--device', 'cpu', '--quiet', '--print_freq', 5, '--no_auto_resume']
    args = main_finetune.get_args_parser().parse_args([str(a) for a in argv])
    result = main_finetune.main(args)
    return dict(out=out, result=result, train=train, val=val, test=synthetic_data['test'],
                epochs=FINETUNE['epochs'], input_size=FINETUNE['input_size'])


# ---------------------------------------------------------------------- the demo's default run (the AUC bar)
@pytest.fixture(scope='session')
def demo_default(tmp_path_factory):
    """`python demo.py` with its defaults (micro MIFAE on 64-px faces: pre-training, whole-encoder fine-tuning
    with real-face reconstruction, evaluation on held-out identities, figures), in-process: (summary, out dir).
    Its time is in docs/demo.md; shared by the stage-2 and demo tests."""
    import demo
    out = tmp_path_factory.mktemp('demo_default')
    summary = demo.main(demo.get_args_parser().parse_args(['--out', str(out), '--device', 'cpu']))
    return summary, out


# ---------------------------------------------------------------------- sharing (export.py, app.py)
@pytest.fixture(scope='session')
def micro_checkpoints(tmp_path_factory):
    """Untrained micro models saved as the two stages save them (nothing learnt: for plumbing, not verdicts):
    dict(detector=fine-tuning checkpoint with an eval.json beside it, autoencoder=pre-training checkpoint,
    manifest=the training manifest they name). The head is drawn wide so that probabilities spread over (0, 1)."""
    import numpy as np

    import models_mae
    import models_vit
    from util.metrics import compute_metrics
    from util.reports import write_eval_report
    out = tmp_path_factory.mktemp('micro')
    manifest = write_rows(out / 'train.csv', [dict(path=f'{i}.png', landmarks='', label=i % 2, video=f'v{i}',
                                                   dataset='synthetic') for i in range(4)])
    torch.manual_seed(0)
    det = models_vit.MODELS['vit_micro_patch8'](img_size=64)
    torch.nn.init.normal_(det.head.weight, std=0.3)
    meta = models_vit.detector_meta(det, 'vit_micro_patch8', decoder=True, trainable_blocks=1, full_finetune=False,
                                    recon='real', recipe='light')
    torch.save(dict(model=det.state_dict(), detector=meta, epoch=3,
                    args=dict(model='vit_micro_patch8', train_manifest=str(manifest), test_manifests=[str(manifest)])),
               out / 'detector.pth')
    rng = np.random.default_rng(0)
    labels, scores = np.arange(40) % 2, rng.random(40)
    write_eval_report({'train': dict(compute_metrics(labels, scores), manifest=str(manifest), missing=0)}, out,
                      out / 'detector.pth')
    mae = models_mae.MODELS['mae_vit_micro_patch8'](img_size=64)
    torch.save(dict(model=mae.state_dict(), epoch=1,
                    args=dict(model='mae_vit_micro_patch8', input_size=64, norm_pix_loss=False, mask_ratio=0.75,
                              mask_radius=None, freq_loss='reference', ffl_alpha=1.0, lamda=1.0,
                              data_path=str(manifest))), out / 'autoencoder.pth')
    return dict(detector=out / 'detector.pth', autoencoder=out / 'autoencoder.pth', manifest=manifest)
