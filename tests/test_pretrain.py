"""Stage 1 training: losses fall, resume, torchrun (gloo), bad input, flag checks, compiled vs eager."""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import main_pretrain
import models_mae
import util.checkpoint as checkpoint
import util.misc as misc
from conftest import ROOT, pretrain_args
from engine_pretrain import NonFiniteLossError
from util.datasets import FaceDataset, FaceTransform, read_manifest


def small_manifest(synthetic_data, tmp_path, n=32):
    """The first n rows of the pre-training manifest, re-rooted in tmp_path (paths stay valid)."""
    src = Path(synthetic_data['pretrain'])
    rows = list(csv.DictReader(open(src)))[:n]
    out = tmp_path / 'small.csv'
    with open(out, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            r['path'] = str(src.parent / r['path'])
            r['landmarks'] = str(src.parent / r['landmarks']) if r['landmarks'] else ''
            w.writerow(r)
    return out


def read_log(folder):
    return [json.loads(line) for line in open(Path(folder) / 'log.txt')]


def test_both_losses_fall(pretrained_tiny):
    log = read_log(pretrained_tiny)
    assert [e['epoch'] for e in log] == list(range(4))
    assert all(e['facial_regions_cropped_out'] >= 0 and e['images_without_landmarks'] >= 0 for e in log)
    assert log[-1]['spat_loss'] < 0.85 * log[0]['spat_loss']      # 1.06 -> 0.86: decoder_embed serves both branches
    assert log[-1]['freq_loss'] < 0.8 * log[0]['freq_loss']
    assert (pretrained_tiny / 'checkpoint-last.pth').is_file() and (pretrained_tiny / 'checkpoint-3.pth').is_file()
    assert (pretrained_tiny / 'checkpoint-2.pth').is_file()
    assert any(p.name.startswith('events.out.tfevents') for p in pretrained_tiny.iterdir())


@pytest.mark.slow
def test_resume_continues_at_next_epoch_with_same_optimizer_state(synthetic_data, tmp_path):
    data = small_manifest(synthetic_data, tmp_path)
    out = tmp_path / 'run'
    main_pretrain.main(pretrain_args(data, out, epochs=1, batch_size=8))
    saved = checkpoint.load(out / 'checkpoint-last.pth')
    assert saved['epoch'] == 0

    # the state a resumed run starts from is exactly the saved one
    args = pretrain_args(data, out, epochs=2, batch_size=8)
    model = models_mae.build_autoencoder(args)
    opt = misc.make_adamw(misc.param_groups_weight_decay(model, 0.05), 1e-4, (0.9, 0.95), torch.device('cpu'))
    checkpoint.resume_training(args, model, opt)
    assert args.start_epoch == 1
    for k, v in saved['optimizer']['state'].items():
        for name, t in v.items():
            assert torch.equal(opt.state_dict()['state'][k][name], t)
    for k, v in saved['model'].items():
        assert torch.equal(model.state_dict()[k], v)

    (out / 'log.txt').unlink()                   # as if interrupted between checkpoint and log line
    main_pretrain.main(pretrain_args(data, out, epochs=2, batch_size=8))      # auto-resume
    assert [e['epoch'] for e in read_log(out)] == [0, 1]
    resumed = checkpoint.load(out / 'checkpoint-last.pth')
    assert resumed['epoch'] == 1

    # the random streams (shuffle, crops, flips, masks) continue too: the same weights as a run never stopped
    main_pretrain.main(pretrain_args(data, tmp_path / 'straight', epochs=2, batch_size=8))
    straight = checkpoint.load(tmp_path / 'straight' / 'checkpoint-last.pth')
    for k, v in straight['model'].items():
        assert torch.equal(resumed['model'][k], v), k


@pytest.mark.slow
def test_torchrun_two_processes_gloo(synthetic_data, tmp_path):
    data = small_manifest(synthetic_data, tmp_path)
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29531',
           'main_pretrain.py', '--data_path', str(data), '--output_dir', str(out), '--model', 'mae_vit_tiny_patch16',
           '--input_size', '64', '--batch_size', '4', '--epochs', '1', '--warmup_epochs', '1', '--num_workers', '0',
           '--device', 'cpu', '--quiet', '--print_freq', '2']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    sums = sorted(line for line in (res.stdout + res.stderr).splitlines() if 'parameter checksum' in line)
    assert len(sums) == 2, res.stdout[-2000:]
    assert sums[0].split('checksum')[1] == sums[1].split('checksum')[1]      # both ranks hold the same weights
    assert {'rank 0', 'rank 1'} == {s.split(':')[0].strip() for s in sums}
    log = read_log(out)
    assert len(log) == 1 and log[0]['epoch'] == 0                             # rank 0 alone writes logs
    assert (out / 'checkpoint-last.pth').is_file()


# ---------------------------------------------------------------------- bad input
def folder_with_bad_files(tmp_path, synthetic_data, n=12):
    """A folder dataset: n good faces, one corrupt image, one image without landmarks."""
    folder = tmp_path / 'faces'
    folder.mkdir()
    samples = read_manifest(synthetic_data['pretrain'])[:n]
    for i, s in enumerate(samples):
        shutil.copy(s.path, folder / f'{i:03d}.png')
        shutil.copy(s.landmarks, folder / f'{i:03d}.npy')
    (folder / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    np.save(folder / 'corrupt.npy', np.zeros((68, 2), np.float32))
    shutil.copy(samples[0].path, folder / 'nolm.png')
    return folder


def test_corrupt_image_is_replaced_and_counted_strict_is_error(synthetic_data, tmp_path, capsys):
    folder = folder_with_bad_files(tmp_path, synthetic_data)
    stats = main_pretrain.main(pretrain_args(folder, tmp_path / 'o', epochs=1, batch_size=14))
    assert stats['unreadable_images'] >= 1
    assert stats['images_without_landmarks'] >= 1
    assert 'corrupt.png: cannot decode image' in capsys.readouterr().out

    with pytest.raises(SystemExit, match=r'^main_pretrain.py: error: --data_path .*corrupt.png: cannot decode image '
                                         r'.*\(--strict_data\)$'):
        main_pretrain.main(pretrain_args(folder, tmp_path / 'o2', epochs=1, batch_size=14, strict_data=True))


@pytest.mark.parametrize('bad', [np.zeros((5, 2), np.float32), np.full((68, 2), np.nan, np.float32)])
def test_bad_landmark_file_is_an_error_naming_it_when_strict(synthetic_data, tmp_path, bad):
    folder = folder_with_bad_files(tmp_path, synthetic_data)
    np.save(folder / '003.npy', bad)
    ds = FaceDataset(main_pretrain.load_samples(folder), FaceTransform(64), mask_strategy='facial', strict=True,
                     probe=0)                                    # the sample itself, not the check when built
    idx = [i for i, s in enumerate(ds.samples) if s.path.endswith('003.png')][0]
    with pytest.raises(ValueError, match=r'003\.npy'):
        ds[idx]


def test_image_without_landmarks_gets_random_mask(synthetic_data, tmp_path):
    folder = folder_with_bad_files(tmp_path, synthetic_data)
    ds = FaceDataset(main_pretrain.load_samples(folder), FaceTransform(64), mask_strategy='facial')
    idx = [i for i, s in enumerate(ds.samples) if s.path.endswith('nolm.png')][0]
    item = ds[idx]
    assert not item['has_landmarks'] and int(item['mask'].sum()) == 12
    assert not item['mask_fallback']                          # counted as an image without landmarks instead


def test_face_cropped_out_falls_back_to_random_and_is_counted(synthetic_data, tmp_path):
    """Landmarks in the image whose facial regions the crop leaves out: random mask, flagged as mask_fallback
    (counted per epoch as facial_regions_cropped_out); landmarks mostly outside the image count as no
    landmarks instead (images_without_landmarks)."""
    from util.datasets import Sample
    s = read_manifest(synthetic_data['pretrain'])[0]

    class Corner(FaceTransform):                 # the image's top-left eighth: no eye, nose or mouth in it
        def crop_box(self, h, w, generator=None):
            return 0, 0, w // 8, h // 8
    item = FaceDataset([s], Corner(64, hflip=0), mask_strategy='facial')[0]
    assert item['has_landmarks'] and item['mask_fallback'] and int(item['mask'].sum()) == 12
    far = tmp_path / 'far.npy'
    np.save(far, np.load(s.landmarks) + 5000)
    ds = FaceDataset([Sample(s.path, str(far), s.label, s.video, s.dataset)], FaceTransform(64), mask_strategy='facial')
    item = ds[0]
    assert not item['has_landmarks'] and not item['mask_fallback'] and int(item['mask'].sum()) == 12


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_checkpoint(synthetic_data, tmp_path):
    data = small_manifest(synthetic_data, tmp_path, n=16)
    out = tmp_path / 'nan'
    main_pretrain.main(pretrain_args(data, out, epochs=1, batch_size=8))
    digest = hashlib.sha256((out / 'checkpoint-last.pth').read_bytes()).hexdigest()
    with pytest.raises(NonFiniteLossError, match=r'non-finite loss at step 2 \(epoch 1, iteration 0\)'):
        main_pretrain.main(pretrain_args(data, out, epochs=2, batch_size=8, lamda=float('nan'),
                                         allow_changed_flags=True))     # a changed method flag, on purpose
    assert hashlib.sha256((out / 'checkpoint-last.pth').read_bytes()).hexdigest() == digest


@pytest.mark.parametrize('flags,reason', [
    (['--input_size', '100'], 'not divisible by the patch size 16'),
    (['--mask_ratio', '1.0'], '--mask_ratio 1.0 removes 196 of the 196 patches'),
    (['--mask_ratio', '0'], '--mask_ratio 0.0 removes 0 of the 196 patches'),
    (['--mask_ratio', '0.002'], '--mask_ratio 0.002 removes 0 of the 196 patches'),
    (['--mask_radius', '500'], '--mask_radius 500.0 must lie in'),
    (['--num_mask_regions', '5'], '--num_mask_regions 5 must be 1 to 4'),
    (['--model', 'vit_nope'], '--model vit_nope is unknown'),
    (['--data_path', '/no/such/place'], '--data_path /no/such/place does not exist'),
])
def test_contradicting_flags_are_rejected_with_one_line(flags, reason, tmp_path):
    argv = ['--data_path', str(tmp_path), '--output_dir', str(tmp_path / 'o'), '--device', 'cpu'] + flags
    args = main_pretrain.get_args_parser().parse_args(argv)
    with pytest.raises(SystemExit) as e:
        main_pretrain.check_args(args)
    msg = str(e.value)
    assert reason in msg and '\n' not in msg


def test_seed_readme_command_parses_and_radius_alias():
    argv = ['--batch_size', '64', '--model', 'mae_vit_base_patch16', '--norm_pix_loss', '--mask_ratio', '0.75',
            '--mask_radius', '16', '--epochs', '800', '--warmup_epochs', '40', '--blr', '1.5e-4',
            '--weight_decay', '0.05']
    args = main_pretrain.get_args_parser().parse_args(argv)
    assert args.mask_radius == 16 and args.norm_pix_loss and args.epochs == 800
    assert main_pretrain.get_args_parser().parse_args(['--radius', '12']).mask_radius == 12


def test_init_from_original_mae_checkpoint(tmp_path):
    """An encoder-only MAE state dict initialises the shared encoder; the frequency head starts fresh."""
    mifae = models_mae.mae_vit_tiny_patch16(img_size=64)
    mae_like = {k: v.clone() + 1.0 for k, v in mifae.state_dict().items()
                if k.startswith(('patch_embed', 'blocks', 'norm.', 'cls_token', 'pos_embed'))}
    torch.save({'model': mae_like}, tmp_path / 'mae_pretrain_vit_tiny.pth')
    fresh = models_mae.mae_vit_tiny_patch16(img_size=64)
    models_mae.load_pretrained(fresh, tmp_path / 'mae_pretrain_vit_tiny.pth')
    assert torch.equal(fresh.blocks[3].attn.qkv.weight, mae_like['blocks.3.attn.qkv.weight'])
    assert torch.equal(fresh.pos_embed, mae_like['pos_embed'])          # the positions the weights learnt with
    other_grid = models_mae.mae_vit_tiny_patch16(img_size=32)
    models_mae.load_pretrained(other_grid, tmp_path / 'mae_pretrain_vit_tiny.pth')
    assert torch.equal(other_grid.pos_embed, models_mae.mae_vit_tiny_patch16(img_size=32).pos_embed)   # rebuilt
    assert torch.equal(other_grid.blocks[3].attn.qkv.weight, mae_like['blocks.3.attn.qkv.weight'])
    bad = {'blocks.0.attn.qkv.weight': torch.zeros(3, 3)}
    torch.save(bad, tmp_path / 'wrong.pth')
    with pytest.raises(ValueError, match='differ in shape'):
        models_mae.load_pretrained(fresh, tmp_path / 'wrong.pth')


def test_masks_per_seed_are_deterministic(synthetic_data):
    samples = read_manifest(synthetic_data['pretrain'])[:4]
    ds = FaceDataset(samples, FaceTransform(112), mask_strategy='facial')
    torch.manual_seed(3)
    a = [ds[i]['mask'] for i in range(4)]
    torch.manual_seed(3)
    b = [ds[i]['mask'] for i in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_facial_mask_lands_on_the_augmented_face(synthetic_data):
    """In the augmented image, the patches at the landmarks of some facial region are all removed."""
    from util.landmarks import FACIAL_REGIONS
    samples = read_manifest(synthetic_data['pretrain'])[:8]
    torch.manual_seed(0)
    t = FaceTransform(112, train=True, scale=(0.6, 1.0))
    for s in samples:
        img = cv2.cvtColor(cv2.imread(s.path), cv2.COLOR_BGR2RGB)
        x, lm = t(img, np.load(s.landmarks))
        from util.masking import facial_region_mask
        mask = facial_region_mask(lm, 112, 16, 0.75, 1).reshape(7, 7).numpy()
        hits = []
        for idx in FACIAL_REGIONS.values():
            pts = lm[idx]
            pts = pts[(pts >= 0).all(1) & (pts < 112).all(1)].astype(int) // 16
            hits.append(len(pts) > 0 and mask[pts[:, 1], pts[:, 0]].all())
        assert any(hits)


@pytest.mark.slow
def test_compiled_and_eager_step_give_the_same_loss():
    """torch.compile (inductor on CPU) computes the same loss as eager on the same batch and seed."""
    torch.manual_seed(0)
    model = models_mae.MaskedImageFrequencyAutoencoder(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    x = torch.randn(2, 3, 32, 32)
    mask = model.random_masks(2, 'cpu')
    eager, _ = model(x, mask)
    compiled, _ = torch.compile(model)(x, mask)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_model_compiles_into_one_graph():
    """No graph breaks: static shapes, gather on index tensors, no data-dependent Python control flow."""
    import torch._dynamo as dynamo
    model = models_mae.mae_vit_tiny_patch16(img_size=64)
    x = torch.randn(2, 3, 64, 64)
    explanation = dynamo.explain(model)(x, model.random_masks(2, 'cpu'))
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons


# ---------------------------------------------------------------------- run plumbing
def test_pretraining_leaves_out_faces_labelled_fake(synthetic_data, tmp_path, capsys):
    rows = list(csv.DictReader(open(small_manifest(synthetic_data, tmp_path, n=24))))
    for r in rows[:8]:
        r['label'] = '1'
    mixed = tmp_path / 'mixed.csv'
    with open(mixed, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    kept = main_pretrain.real_samples(pretrain_args(mixed, tmp_path / 'o'))
    assert len(kept) == 16 and all(s.label != 1 for s in kept)
    assert '8 faces labelled fake left out' in capsys.readouterr().out
    assert len(main_pretrain.real_samples(pretrain_args(mixed, tmp_path / 'o', include_fakes=True))) == 24


def test_bad_paths_and_resume_mismatch_are_one_line(synthetic_data, tmp_path):
    def one_line(args):
        with pytest.raises(SystemExit) as e:
            main_pretrain.main(args)
        msg = str(e.value)
        assert '\n' not in msg, msg
        return msg
    broken = tmp_path / 'broken.csv'
    broken.write_text('path,label\nx.png,1\n')
    assert 'broken.csv' in one_line(pretrain_args(broken, tmp_path / 'o'))
    data = small_manifest(synthetic_data, tmp_path, n=16)
    assert '--init_from' in one_line(pretrain_args(data, tmp_path / 'o', init_from=str(tmp_path / 'none.pth')))
    assert 'cannot resume' in one_line(pretrain_args(data, tmp_path / 'o', resume=str(tmp_path / 'none.pth')))

    out = tmp_path / 'run'
    main_pretrain.main(pretrain_args(data, out, epochs=1, batch_size=8))
    msg = one_line(pretrain_args(data, out, epochs=2, batch_size=8, input_size=32))   # auto-resume, other size
    assert '--input_size 32 (checkpoint: 112)' in msg

    # a checkpoint with the older frequency decoder (own embedding, biased Linear) is refused for resuming
    # and accepted by --init_from, with its frequency decoder fresh
    ckpt = torch.load(out / 'checkpoint-last.pth', weights_only=False)
    state = ckpt['model']
    state['freq_decoder_embed.weight'] = state['decoder_embed.weight'].clone()
    state['freq_decoder_embed.bias'] = state['decoder_embed.bias'].clone()
    state['freq_decoder_fc.weight'] = state.pop('freq_decoder.weight')
    state['freq_decoder_fc.bias'] = torch.zeros(state['freq_decoder_fc.weight'].shape[0])
    old = tmp_path / 'old.pth'
    torch.save(ckpt, old)
    msg = one_line(pretrain_args(data, tmp_path / 'o2', epochs=2, batch_size=8, resume=str(old)))
    assert 'older layout' in msg and '--init_from' in msg
    model = models_mae.build_autoencoder(pretrain_args(data, tmp_path / 'o3'))
    models_mae.load_pretrained(model, old)
    assert torch.equal(model.blocks[0].attn.qkv.weight, state['blocks.0.attn.qkv.weight'])


def test_checkpoint_writes_are_atomic_and_clean_up(tmp_path):
    path = tmp_path / 'checkpoint-last.pth'
    checkpoint.save({'epoch': 1}, path)
    (tmp_path / '.checkpoint-last.pth.tmp99999999').write_bytes(b'left by a killed save')
    checkpoint.save({'epoch': 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint-last.pth']

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('cannot pickle')
    with pytest.raises(RuntimeError):
        checkpoint.save({'epoch': 3, 'x': Unpicklable()}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint-last.pth']
    assert checkpoint.load(path)['epoch'] == 2                     # the old file is untouched


def test_resume_trims_the_log_and_prefers_the_newer_last_checkpoint(tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    args = argparse_namespace(output_dir=str(out), resume='', auto_resume=True, start_epoch=0)
    for epoch in range(4):
        checkpoint.save_checkpoint(out, 'checkpoint-last.pth', model, opt, epoch, args, log_stats={'epoch': epoch})
        if epoch == 1:
            checkpoint.save_checkpoint(out, 'checkpoint-1.pth', model, opt, epoch, args, log_stats={'epoch': epoch})
        misc.append_log(out, {'epoch': epoch})
    with open(out / 'log.txt', 'a') as f:
        f.write('{"epoch": 4, "loss"')                                   # cut short by a crash
    args.resume = str(out / 'checkpoint-1.pth')
    assert checkpoint.find_resume_checkpoint(args) == str(out / 'checkpoint-last.pth')   # epoch 3 beats epoch 1
    assert 'is newer than --resume' in capsys.readouterr().out
    assert args.resume == str(out / 'checkpoint-last.pth')              # later calls agree without re-reading
    args.resume, args.auto_resume = str(out / 'checkpoint-1.pth'), False   # the explicit choice: back to epoch 1
    checkpoint.resume_training(args, model, opt)
    assert args.start_epoch == 2
    assert [e['epoch'] for e in read_log(out)] == [0, 1]               # later epochs and the broken line gone


def argparse_namespace(**kw):
    import argparse
    return argparse.Namespace(**kw)


class ThirdTaskMIFAE(models_mae.MaskedImageFrequencyAutoencoder):
    """A third pretext task added by touching the model alone: its loss and its weight."""

    def pretext_losses(self, imgs, mask):
        losses, out = super().pretext_losses(imgs, mask)
        losses['dummy_loss'] = out['freq_pred'].float().square().mean()
        return losses, out

    @property
    def loss_weights(self):
        return dict(super().loss_weights, dummy_loss=0.25)


def test_a_third_pretext_loss_is_summed_logged_and_shown(synthetic_data, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    name = pretrain_args("x", "y").model
    monkeypatch.setitem(models_mae.MODELS, name, models_mae.factory(ThirdTaskMIFAE, name[len('mae_'):], name))
    torch.manual_seed(0)
    model = models_mae.MODELS[name](img_size=32)
    loss, out = model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(loss, out['spat_loss'] + out['freq_loss'] + 0.25 * out['dummy_loss'])
    data = small_manifest(synthetic_data, tmp_path, n=16)
    out_dir = tmp_path / 'third'
    main_pretrain.main(pretrain_args(data, out_dir, epochs=1, batch_size=8, print_freq=1))
    log = read_log(out_dir)
    assert log[0]['dummy_loss'] > 0 and {'train_loss', 'spat_loss', 'freq_loss'} <= set(log[0])
    events = EventAccumulator(str(out_dir)).Reload()
    assert 'dummy_loss' in events.Tags()['scalars']
