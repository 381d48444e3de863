"""Runs and checkpoints when things go wrong (docs/failures.md): one-line errors before any work, atomic
saves on a full disk, resuming after kills, truncated checkpoints, changed flags, fresh runs over old ones.

Micro models on a few 32-px synthetic faces keep each run to seconds; the crash test kills real processes.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main_finetune
import main_pretrain
import models_mae
import predict
import util.checkpoint as checkpoint
import util.fileio as fileio
from conftest import ROOT
from util import recipes

READ_ONLY = Path('/sys')            # a folder no process may write to, root included (Linux)


# ---------------------------------------------------------------------- tiny data and checkpoints
def subset(src, name, n_real, n_fake, skip=0):
    """A manifest of n_real + n_fake rows of `src` (after skipping `skip` of each class), next to it."""
    with open(src, newline='') as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    real = [r for r in rows if r['label'] in ('0', '')][skip:skip + n_real]
    fake = [r for r in rows if r['label'] == '1'][skip:skip + n_fake]
    out = Path(src).with_name(name)
    with open(out, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(real + fake)
    return out


@pytest.fixture(scope='module')
def micro(synthetic_data, tmp_path_factory):
    """A freshly initialised micro MIFAE saved as a pre-training checkpoint, and small train / val / test /
    pre-training manifests (distinct faces)."""
    folder = tmp_path_factory.mktemp('micro')
    torch.manual_seed(0)
    model = models_mae.mae_vit_micro_patch8(img_size=32)
    pre = folder / 'pre.pth'
    torch.save(dict(model=model.state_dict(), args=dict(model='mae_vit_micro_patch8', input_size=32,
                                                        norm_pix_loss=False, mask_ratio=0.75)), pre)
    train = synthetic_data['train']
    return dict(pre=pre, folder=folder, train=subset(train, 'runs_train.csv', 16, 16),
                val=subset(train, 'runs_val.csv', 8, 8, skip=16),
                test=subset(synthetic_data['test'], 'runs_test.csv', 8, 8),
                pretrain=subset(synthetic_data['pretrain'], 'runs_pretrain.csv', 16, 0))


def ft_argv(micro, out, *extra, epochs=3):
    return [str(a) for a in ['--finetune', micro['pre'], '--train_manifest', micro['train'], '--val_manifest',
                             micro['val'], '--test_manifests', micro['test'], '--output_dir', out, '--input_size', 32,
                             '--batch_size', 8, '--epochs', epochs, '--lr', 2e-3, '--warmup_epochs', 1,
                             '--full_finetune', '--device', 'cpu', '--num_workers', 0, '--quiet', '--print_freq', 2,
                             '--seed', 0, '--recipe', 'light', *extra]]


def ft_args(micro, out, *extra, epochs=3):
    return main_finetune.get_args_parser().parse_args(ft_argv(micro, out, *extra, epochs=epochs))


def pre_args(micro, out, *extra, epochs=2):
    argv = ['--data_path', micro['pretrain'], '--output_dir', out, '--model', 'mae_vit_micro_patch8',
            '--input_size', 32, '--batch_size', 8, '--epochs', epochs, '--warmup_epochs', 1, '--device', 'cpu',
            '--num_workers', 0, '--quiet', '--print_freq', 1, *extra]
    return main_pretrain.get_args_parser().parse_args([str(a) for a in argv])


def filled(args):
    """Parsed stage-2 args with the --recipe's values, as main_finetune.main has them before check_args."""
    recipes.apply_recipe(args)
    return args


def one_line(fn, *a, match=None):
    """The message of the SystemExit fn(*a) raises; it is one line (and matches `match`)."""
    with pytest.raises(SystemExit) as e:
        fn(*a)
    msg = str(e.value)
    assert '\n' not in msg, msg
    if match:
        assert match in msg, msg
    return msg


def epochs_in_log(folder):
    return [json.loads(line)['epoch'] for line in (Path(folder) / 'log.txt').read_text().splitlines()]


# ---------------------------------------------------------------------- one-line errors before any work
BAD_RUN_FLAGS = [
    (['--lr', 'nan'], '--lr nan must be a finite number >= 0'),
    (['--lr', '-1'], '--lr -1.0 must be a finite number >= 0'),
    (['--blr', '-0.001'], '--blr -0.001 must be a finite number >= 0'),
    (['--weight_decay', '-0.05'], '--weight_decay -0.05 must be a finite number >= 0'),
    (['--warmup_epochs', '-1'], '--warmup_epochs -1'),
    (['--start_epoch', '3', '--epochs', '3'], '--start_epoch 3 is not in [0, --epochs 3): nothing would train'),
    (['--device', 'cuda:99'], '--device cuda:99: '),
    (['--output_dir', ''], "--output_dir '' would train and save nothing"),
    (['--output_dir', str(READ_ONLY)], f'--output_dir {READ_ONLY}: cannot write to {READ_ONLY}'),
]
if not torch.cuda.is_available():
    BAD_RUN_FLAGS.append((['--device', 'cuda'], '--device cuda: no CUDA GPU is available here (use --device cpu)'))


@pytest.mark.parametrize('extra,msg', BAD_RUN_FLAGS + [(['--mask_ratio', 'nan'], '--mask_ratio nan removes no number')])
def test_pretraining_refuses_bad_run_flags_in_one_line(micro, tmp_path, extra, msg):
    args = pre_args(micro, tmp_path / 'o', *extra)
    one_line(main_pretrain.check_args, args, match=f'main_pretrain.py: error: {msg}')


@pytest.mark.parametrize('extra,msg', BAD_RUN_FLAGS + [(['--threshold', '1.5'], '--threshold 1.5 must lie in [0, 1]'),
                                                       (['--threshold', 'nan'], '--threshold nan must lie in [0, 1]'),
                                                       (['--recon_weight', 'nan'], '--recon_weight nan must be')])
def test_finetuning_refuses_bad_run_flags_in_one_line(micro, tmp_path, extra, msg):
    args = ft_args(micro, tmp_path / 'o', *extra)
    if args.output_dir == '':
        args.test_manifests = []                               # (these have their own message: covered elsewhere)
    one_line(main_finetune.check_args, filled(args), match=f'main_finetune.py: error: {msg}')


def test_output_dir_that_is_a_file_is_refused_by_every_stage(micro, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    msg = f'--output_dir {blocker}: cannot write to {blocker}: it is a file, not a folder'
    one_line(main_pretrain.check_args, pre_args(micro, blocker), match=msg)
    one_line(main_finetune.check_args, filled(ft_args(micro, blocker)), match=msg)
    ev = ['--eval', '--resume', str(micro['pre']), '--test_manifests', str(micro['test']), '--device', 'cpu']
    parse = main_finetune.get_args_parser().parse_args
    one_line(main_finetune.check_args, filled(parse(ev + ['--output_dir', str(blocker)])), match=msg)
    one_line(main_finetune.check_args,
             filled(parse(ev + ['--output_dir', str(READ_ONLY)])),
             match=f'cannot write to {READ_ONLY}')


def test_predict_refuses_a_threshold_outside_0_1(tmp_path):
    for t in ('-0.1', '1.01', 'nan'):
        one_line(predict.main, ['--checkpoint', str(tmp_path / 'x.pth'), 'a.png', '--threshold', t, '--device', 'cpu'],
                 match=f'predict.py: error: --threshold {t.lstrip("+")}')


def test_a_checkpoint_holding_no_dict_is_one_line_everywhere(micro, tmp_path):
    bad = tmp_path / 'list.pth'
    torch.save([1, 2, 3], bad)
    with pytest.raises(ValueError, match=r'list.pth: holds a list, not a checkpoint'):
        checkpoint.load(bad)
    ev = ['--eval', '--resume', bad, '--test_manifests', micro['test'], '--output_dir', tmp_path / 'e',
          '--device', 'cpu', '--num_workers', 0, '--quiet']
    one_line(main_finetune.main, main_finetune.get_args_parser().parse_args([str(a) for a in ev]),
             match='holds a list, not a checkpoint')
    one_line(main_finetune.main, ft_args(micro, tmp_path / 'f', '--finetune', bad, '--no_auto_resume'),
             match='holds a list, not a checkpoint')
    one_line(main_pretrain.main, pre_args(micro, tmp_path / 'p', '--resume', bad), match='holds a list')
    one_line(predict.main, ['--checkpoint', str(bad), 'a.png', '--device', 'cpu'], match='holds a list')
    import Visualization.visualize as viz
    one_line(viz.load_autoencoder, bad, match='holds a list')


# ---------------------------------------------------------------------- a full disk: one line, old file kept
def full_disk(monkeypatch):
    """Every atomic write goes to /dev/full (each write fails with ENOSPC, as on a full disk)."""
    real_open = open
    monkeypatch.setattr(fileio, 'open', lambda tmp, mode, **kw: real_open('/dev/full', mode, **kw), raising=False)


def test_disk_full_while_saving_names_the_file_and_keeps_the_previous_one(micro, tmp_path, monkeypatch):
    path = tmp_path / 'checkpoint-last.pth'
    checkpoint.save({'epoch': 1, 'w': torch.zeros(1000)}, path)
    full_disk(monkeypatch)
    with pytest.raises(fileio.WriteError) as e:
        checkpoint.save({'epoch': 2, 'w': torch.ones(1000)}, path)
    assert str(e.value) == (f'no space left on {fileio.mount_point(tmp_path)} while writing {path}; the previous '
                            f'checkpoint-last.pth is intact')
    monkeypatch.undo()
    assert checkpoint.load(path)['epoch'] == 1 and sorted(p.name for p in tmp_path.iterdir()) == [path.name]

    out = tmp_path / 'run'                                     # through a training run: one line, exit
    full_disk(monkeypatch)
    msg = one_line(main_pretrain.main, pre_args(micro, out, epochs=1))
    assert (msg.startswith('main_pretrain.py: error: no space left on ')
            and 'checkpoint-last.pth; nothing was written' in msg)


# ---------------------------------------------------------------------- numbered cases
def test_accum_iter_beyond_the_steps_of_an_epoch_is_refused(micro, tmp_path):
    """32 images in batches of 8: 4 steps an epoch, so --accum_iter 5 never completes an effective batch."""
    one_line(main_finetune.main, ft_args(micro, tmp_path / 'f', '--accum_iter', 5),
             match='--accum_iter 5 exceeds the 4 steps of an epoch (32 images / 8 x 1 processes)')
    one_line(main_pretrain.main, pre_args(micro, tmp_path / 'p', '--accum_iter', 3),
             match='--accum_iter 3 exceeds the 2 steps of an epoch (16 images / 8 x 1 processes)')


def test_resuming_with_changed_method_flags(micro, tmp_path, capsys):
    out = tmp_path / 'pre'
    main_pretrain.main(pre_args(micro, out, epochs=1))
    msg = one_line(main_pretrain.main, pre_args(micro, out, '--mask_ratio', 0.5, '--lamda', 2, '--norm_pix_loss'))
    assert ('was trained with other method flags: --mask_ratio 0.5 (checkpoint: 0.75), --norm_pix_loss on '
            '(checkpoint: off), --lamda 2.0 (checkpoint: 1.0); use the checkpoint\'s values, or '
            '--allow_changed_flags') in msg
    one_line(main_pretrain.main, pre_args(micro, out, '--data_path', micro['test']), match='--data_path ')
    one_line(main_pretrain.main, pre_args(micro, out, '--input_size', 64), match='--input_size 64 (checkpoint: 32)')
    main_pretrain.main(pre_args(micro, out, '--mask_ratio', 0.5, '--allow_changed_flags', '--print_freq', 2))
    log = [json.loads(line) for line in (out / 'log.txt').read_text().splitlines()]
    assert [e['epoch'] for e in log] == [0, 1]
    assert log[1]['changed_flags'] == {'mask_ratio': {'checkpoint': 0.75, 'now': 0.5}} and 'changed_flags' not in log[0]

    ft = tmp_path / 'ft'                                       # stage 2: the same rule
    main_finetune.main(ft_args(micro, ft, epochs=1))
    one_line(main_finetune.main, ft_args(micro, ft, '--recon_weight', 0.1, '--blr', 1e-2, epochs=2),
             match='--recon_weight 0.1 (checkpoint: 0.5)')
    capsys.readouterr()
    main_finetune.main(ft_args(micro, ft, '--num_workers', 0, '--print_freq', 3, '--threshold', 0.4, epochs=2))
    assert 'changed flags' not in capsys.readouterr().out      # harmless flags pass without a word


@pytest.mark.slow
def test_fresh_run_over_another_run_is_refused_or_moves_it_aside(micro, tmp_path):
    out = tmp_path / 'run'
    main_pretrain.main(pre_args(micro, out, epochs=1))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    one_line(main_pretrain.main, pre_args(micro, out, '--no_auto_resume'),
             match=f'--output_dir {out} holds another run (checkpoint-0.pth, checkpoint-last.pth, log.txt)')
    main_pretrain.main(pre_args(micro, out, '--overwrite', epochs=1))
    aside = [p for p in out.iterdir() if p.name.startswith('replaced-')]
    assert len(aside) == 1 and {p.name: p.read_bytes() for p in aside[0].iterdir()} == before   # moved, intact
    assert epochs_in_log(out) == [0] and checkpoint.load(out / 'checkpoint-last.pth')['epoch'] == 0

    ft = tmp_path / 'ft'
    main_finetune.main(ft_args(micro, ft, epochs=1))
    one_line(main_finetune.main, ft_args(micro, ft, '--no_auto_resume', epochs=1), match='holds another run')


def test_eval_prints_the_table_before_writing_and_checks_the_folder_first(micro, tmp_path, capsys, monkeypatch):
    ft = tmp_path / 'ft'
    main_finetune.main(ft_args(micro, ft, epochs=1))
    ev = ['--eval', '--resume', ft / 'checkpoint-best.pth', '--test_manifests', micro['test'], '--device', 'cpu',
          '--num_workers', 0, '--quiet']
    capsys.readouterr()
    one_line(main_finetune.main, main_finetune.get_args_parser().parse_args([str(a) for a in ev + [
        '--output_dir', READ_ONLY / 'eval']]), match='main_finetune.py: error: --output_dir /sys/eval: cannot write')
    assert 'Evaluating' not in capsys.readouterr().out        # refused before any work
    full_disk(monkeypatch)                                     # the folder fills up during the evaluation
    msg = one_line(main_finetune.main, main_finetune.get_args_parser().parse_args([str(a) for a in ev + [
        '--output_dir', tmp_path / 'eval']]))
    assert msg.startswith('main_finetune.py: error: no space left on ') and f'while writing {tmp_path / "eval"}/' in msg
    printed = capsys.readouterr().out
    assert 'runs_test' in printed and 'auc' in printed         # the results were printed first


def test_truncated_last_checkpoint_falls_back_to_the_newest_that_loads(micro, tmp_path, capsys):
    out = tmp_path / 'run'
    main_pretrain.main(pre_args(micro, out, '--save_freq', 1, epochs=2))
    last = out / 'checkpoint-last.pth'
    last.write_bytes(last.read_bytes()[:5000])                 # cut short
    capsys.readouterr()
    main_pretrain.main(pre_args(micro, out, '--save_freq', 1, epochs=3))
    said = [line for line in capsys.readouterr().out.splitlines() if 'newest checkpoint' in line]
    assert said == [f'{last} cannot be read (cut short?): resuming from {out / "checkpoint-1.pth"} (epoch 1), the '
                    f'newest checkpoint here that loads']
    assert checkpoint.load(last)['epoch'] == 2 and epochs_in_log(out) == [0, 1, 2]


def test_lost_best_checkpoint_is_repaired_from_the_last_one(micro, tmp_path, capsys):
    """Written in the old order (last, then best) and killed in between: checkpoint-last.pth is the best
    epoch, checkpoint-best.pth is missing. The rerun restores it and tests it, where it used to fail."""
    out = tmp_path / 'ft'
    main_finetune.main(ft_args(micro, out, epochs=1))
    (out / 'checkpoint-best.pth').unlink()
    capsys.readouterr()
    result = main_finetune.main(ft_args(micro, out, epochs=1))
    assert 'checkpoint-best.pth: restored from epoch 0' in capsys.readouterr().out
    assert checkpoint.load(out / 'checkpoint-best.pth')['epoch'] == 0 and result['best_epoch'] == 0
    assert result['test']['runs_test']['auc'] is not None


# ---------------------------------------------------------------------- the crash test
def run_killed(micro, out, kill_after, epochs):
    """main_finetune.py in its own process, SIGKILLed right after `kill_after` (file[:k]) is in place
    (tests/kill_after.py wraps the checkpoint writes of that process)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))    # as here
    res = subprocess.run([sys.executable, str(ROOT / 'tests' / 'kill_after.py'), kill_after, 'main_finetune.py',
                          *ft_argv(micro, out, epochs=epochs)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == -9, res.stdout[-2000:] + res.stderr[-2000:]       # killed, not failed


@pytest.mark.slow
def test_finetuning_killed_anywhere_resumes_to_the_same_best_checkpoint_and_test_metrics(micro, tmp_path):
    """Uninterrupted run vs. runs SIGKILLed between the best and the last write (the first and a later
    improvement) and after the last write (before the log line): each rerun of the same command ends with
    the same checkpoint-best.pth (weights, optimizer, epoch, AUC) and the same test metrics."""
    epochs = 4
    straight = tmp_path / 'straight'
    ref = main_finetune.main(ft_args(micro, straight, epochs=epochs))
    best = checkpoint.load(straight / 'checkpoint-best.pth')
    improved = [e['epoch'] for e, prev in zip(
        [json.loads(x) for x in (straight / 'log.txt').read_text().splitlines()],
        [None] + [json.loads(x) for x in (straight / 'log.txt').read_text().splitlines()])
        if prev is None or e['best_val_auc'] != prev['best_val_auc']]
    assert improved[0] == 0 and len(improved) >= 2, improved   # a later improvement to kill at, too
    kills = [f'checkpoint-best.pth:{len(improved)}', 'checkpoint-best.pth:1', 'checkpoint-last.pth:2']
    for i, kill in enumerate(kills):
        out = tmp_path / f'killed{i}'
        run_killed(micro, out, kill, epochs)
        result = main_finetune.main(ft_args(micro, out, epochs=epochs))   # the same command, run again
        got = checkpoint.load(out / 'checkpoint-best.pth')
        assert got['epoch'] == best['epoch'] and got['best_val_auc'] == best['best_val_auc'], kill
        assert all(torch.equal(got['model'][k], v) for k, v in best['model'].items()), kill
        assert result['best_val_auc'] == ref['best_val_auc'] and result['best_epoch'] == ref['best_epoch'], kill
        assert result['test'] == ref['test'], kill
        assert epochs_in_log(out) == list(range(epochs)), kill


# ---------------------------------------------------------------------- Ctrl-C: one line, exit status 130
def run_as_script(script, argv, monkeypatch):
    """`python <script> argv...` in this process (its `if __name__ == '__main__'` block). -> exit status"""
    import runpy
    monkeypatch.setattr(sys, 'argv', [script, *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / script), run_name='__main__')
    return e.value.code


def interrupt_at(monkeypatch, module, epoch):
    """Ctrl-C as `module`'s train_one_epoch starts epoch `epoch`."""
    import importlib
    engine = importlib.import_module(module)
    real = engine.train_one_epoch

    def train(*a, **k):
        if a[4 if module == 'engine_pretrain' else 5] == epoch:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(engine, 'train_one_epoch', train)


def test_ctrl_c_is_one_line_and_exit_130_and_the_same_command_continues(micro, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'pre'
    argv = ['--data_path', micro['pretrain'], '--output_dir', out, '--model', 'mae_vit_micro_patch8', '--input_size',
            32, '--batch_size', 8, '--epochs', 2, '--warmup_epochs', 1, '--device', 'cpu', '--num_workers', 0,
            '--quiet']
    interrupt_at(monkeypatch, 'engine_pretrain', 1)
    assert run_as_script('main_pretrain.py', argv, monkeypatch) == 130
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.strip().splitlines()[-1] == (
        f'main_pretrain.py: interrupted: {out / "checkpoint-last.pth"} (epoch 0) is kept; run the same command '
        f'again to continue from it')
    monkeypatch.undo()
    main_pretrain.main(main_pretrain.get_args_parser().parse_args(list(map(str, argv))))
    assert epochs_in_log(out) == [0, 1]

    ft = tmp_path / 'ft'
    interrupt_at(monkeypatch, 'engine_finetune', 0)
    assert run_as_script('main_finetune.py', ft_argv(micro, ft, epochs=1), monkeypatch) == 130
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.strip().splitlines()[-1] == (
        'main_finetune.py: interrupted: no epoch had been saved yet; run the same command again to start')


def test_a_fine_tuning_checkpoint_given_to_pre_training_is_named_as_such(micro, tmp_path):
    ft = tmp_path / 'ft'
    main_finetune.main(ft_args(micro, ft, epochs=1))
    best = ft / 'checkpoint-best.pth'
    msg = one_line(main_pretrain.main, pre_args(micro, tmp_path / 'pre', '--resume', best))
    assert msg == (f'main_pretrain.py: error: cannot resume: {best} is a fine-tuning (stage 2) checkpoint: continue '
                   f'it with main_finetune.py --resume; pre-training resumes from a pre-training checkpoint (or '
                   f'choose another --output_dir)')
    one_line(main_pretrain.main, pre_args(micro, ft), match=f'{ft / "checkpoint-last.pth"} is a fine-tuning (stage 2)')


def test_a_model_mismatch_names_the_checkpoints_own_model(micro, tmp_path):
    msg = one_line(main_finetune.main, ft_args(micro, tmp_path / 'ft', '--model', 'vit_tiny_patch16'))
    assert msg == (f'main_finetune.py: error: {micro["pre"]} holds a vit_micro_patch8 (its training arguments), not '
                   f'vit_tiny_patch16: leave --model out, or pass --model vit_micro_patch8')


def test_a_schedule_that_trains_little_is_said_in_one_line(micro, tmp_path, capsys):
    """16 faces in batches of 8: 2 steps an epoch, and with --epochs 1 --warmup_epochs 1 both in the warm-up
    (the first at lr 0)."""
    import types

    import util.misc as misc
    main_pretrain.main(pre_args(micro, tmp_path / 'pre', epochs=1))
    [line] = [x for x in capsys.readouterr().out.splitlines() if 'warning' in x]
    assert line == ('main_pretrain.py: warning: an epoch is only 2 optimiser steps (16 images / 8 x 1 accum x 1 '
                    'processes); all 2 steps of the run fall in the warm-up (--warmup_epochs 1, --epochs 1), so the '
                    'learning rate never reaches --lr and the first step is taken at lr 0: a smaller --batch_size or '
                    'more data and fewer --warmup_epochs or more --epochs train more')

    class Loader(list):                                     # 8 batches of 2 of 16 images
        dataset = range(16)
    quiet = types.SimpleNamespace(accum_iter=1, batch_size=2, epochs=2, start_epoch=0, warmup_epochs=1)
    assert misc.schedule_note(quiet, Loader(range(8))) is None      # 8 steps an epoch, half of the run warm


# ---------------------------------------------------------------------- a run that learns nothing; earlier reports
@pytest.fixture(scope='module')
def chance_run(micro):
    """One epoch of fine-tuning whose validation set holds every face twice, as real and as fake (so its AUC is
    0.5 whatever the detector), tested on micro's test set: (output folder, what it printed)."""
    import contextlib
    import io
    with open(micro['val'], newline='') as f:
        rows = list(csv.DictReader(f))
    both = [dict(r, label=label, video=f'{r["video"]}_{label}') for r in rows for label in '01']
    val = micro['val'].with_name('runs_val_chance.csv')
    with open(val, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(both)
    out, printed = micro['folder'] / 'chance', io.StringIO()
    with contextlib.redirect_stdout(printed):
        main_finetune.main(ft_args(micro, out, '--val_manifest', val, epochs=1))
    return out, printed.getvalue()


UNTRAINED = ('main_finetune.py: note: the best validation AUC is 0.500 (epoch 0), within 0.05 of chance: the detector '
             'has not learned to separate real from fake faces; more epochs, --recipe light, or a checkpoint from a '
             'longer pre-training usually help')


def eval_args(ckpt, out, *manifests, extra=()):
    argv = ['--eval', '--resume', ckpt, '--test_manifests', *manifests, '--output_dir', out, '--device', 'cpu',
            '--num_workers', 0, '--quiet', *extra]
    return main_finetune.get_args_parser().parse_args([str(a) for a in argv])


def test_a_run_that_learns_nothing_says_so_in_its_closing_lines(micro, chance_run, tmp_path, capsys):
    out, printed = chance_run
    assert printed.rstrip().splitlines()[-1] == UNTRAINED                  # after the test table
    main_finetune.main(eval_args(out / 'checkpoint-best.pth', tmp_path / 'e', micro['test']))
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == UNTRAINED
    from util.evaluation import untrained_note
    assert untrained_note(0.56) is None and untrained_note(0.44) is None and untrained_note(None) is None


def test_a_short_fine_tuning_schedule_is_said_in_one_line(chance_run):
    """32 faces in batches of 8: 4 steps an epoch, the first in the warm-up at lr 0."""
    [line] = [x for x in chance_run[1].splitlines() if 'warning' in x]
    assert line == ('main_finetune.py: warning: an epoch is only 4 optimiser steps (32 images / 8 x 1 accum x 1 '
                    'processes); all 4 steps of the run fall in the warm-up (--warmup_epochs 1, --epochs 1), so the '
                    'learning rate never reaches --lr and the first step is taken at lr 0: a smaller --batch_size or '
                    'more data and fewer --warmup_epochs or more --epochs train more')


def test_eval_keeps_the_earlier_evaluation_report(micro, chance_run, tmp_path):
    import shutil
    out = tmp_path / 'ft'
    shutil.copytree(chance_run[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    best = json.loads((out / 'eval.json').read_text())['checkpoint']      # the checkpoint its test report names
    assert {'eval.json', 'eval.md', 'scores_runs_test.csv'} <= set(before)
    msg = one_line(main_finetune.main, eval_args(best, out, micro['val']))
    assert msg == (f'main_finetune.py: error: --output_dir {out} holds the evaluation report of {best} (eval.json, '
                   f'eval.md, score files): choose another --output_dir, or --overwrite to move it into '
                   f'{out}/replaced-<date-time>/')
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    main_finetune.main(eval_args(best, out, micro['test']))             # the same checkpoint and sets: rewritten
    main_finetune.main(eval_args(best, out, micro['val'], extra=['--overwrite']))
    [aside] = [p for p in out.iterdir() if p.name.startswith('replaced-')]
    assert {p.name for p in aside.iterdir()} >= {'eval.json', 'eval.md', 'scores_runs_test.csv'}
    assert json.loads((out / 'eval.json').read_text())['sets'].keys() == {'runs_val'}
    assert (out / 'checkpoint-best.pth').is_file() and (out / 'log.txt').is_file()     # the run itself stays


def test_a_folder_given_as_a_stage_2_manifest_is_named_as_such(micro, tmp_path):
    folder = micro['train'].parent
    found = sorted(p.name for p in folder.glob('*.csv'))
    msg = one_line(main_finetune.main, ft_args(micro, tmp_path / 'f', '--train_manifest', folder))
    assert msg == (f'main_finetune.py: error: {folder} is a folder: stage 2 needs the label of every face (1 = fake, '
                   f'0 = real), which only a manifest CSV gives (DATA.md); it holds {", ".join(found[:4])}: pass one '
                   f'of them')
    (tmp_path / 'faces').mkdir()
    one_line(main_finetune.main, eval_args(micro['pre'], tmp_path / 'e', tmp_path / 'faces'),
             match='is a folder: stage 2 needs the label of every face (1 = fake, 0 = real), which only a manifest CSV '
                   'gives (DATA.md); prepare_faces.py --label writes one')
