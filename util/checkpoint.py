"""Checkpoints of both stages, predict.py and the figures: saving, loading, metadata, shape checks, resuming.

Invariants a change here must keep:
- A checkpoint file on disk is always complete: written through util.fileio.atomic_write, so a kill or a
  full disk leaves the previous file.
- checkpoint-last.pth never records more than is on disk: fine-tuning writes checkpoint-best.pth first,
  and a resumed run takes the best validation AUC from checkpoint-best.pth itself (`reconcile_best`), so
  the AUC a run reports is the one of the model it tests.
- A run never writes over another run's files: a fresh run in a folder holding them is refused, or with
  --overwrite they are moved aside (`move_aside`), never deleted.
- Resuming with flags that change what the model learns is refused with the list of what differs, or
  accepted with --allow_changed_flags and recorded in log.txt (`check_resume_args`).

Errors are ValueError / FileNotFoundError / WriteError with one-line messages naming the file; each entry
point turns them into its own `<script>: error: ...` line.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

import util.misc as misc
from util.fileio import atomic_write, write_text

LAST, BEST = 'checkpoint-last.pth', 'checkpoint-best.pth'
RUN_FILES = ('checkpoint-*.pth', 'log.txt')                    # what makes a folder hold a run
EVAL_OUTPUTS = ('eval.json', 'eval.md', 'roc_*.png', 'scores_*.csv', 'videos_*.csv')     # an evaluation report
RUN_OUTPUTS = RUN_FILES + ('events.out.tfevents.*',) + EVAL_OUTPUTS                         # moved by --overwrite


# ---------------------------------------------------------------------- saving
def save(obj, path):
    """torch.save, atomically (util.fileio.atomic_write). -> Path"""
    return atomic_write(path, lambda f: torch.save(obj, f), mode='wb')


def copy(src, dst):
    """A byte-identical copy of a checkpoint file, atomically. -> Path"""
    with open(src, 'rb') as f:
        return atomic_write(dst, lambda out: shutil.copyfileobj(f, out), mode='wb')


def save_checkpoint(output_dir, name, model_without_ddp, optimizer, epoch, args, scaler=None, **extra):
    """Write `output_dir/name` atomically (rank 0 writes; every rank calls it, for the random states)."""
    rng = misc.rng_states()
    if not misc.is_main_process():
        return None
    state = dict(model=model_without_ddp.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                 scaler=scaler.state_dict() if scaler is not None else None, args=vars(args), rng=rng, **extra)
    return save(state, Path(output_dir) / name)


# ---------------------------------------------------------------------- loading and metadata
def load(path, mmap=False):
    """A checkpoint (a dict) on the CPU; FileNotFoundError / ValueError with a one-line message naming the file
    when it is missing, unreadable (e.g. truncated) or holds something else than a dict.
    mmap: map the tensors instead of reading them (cheap when only the metadata is wanted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: checkpoint not found')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False, mmap=mmap)
    except Exception as e:  # noqa: BLE001
        why = (str(e).strip().splitlines() or [''])[0][:200]
        raise ValueError(f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {why})') from e
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: holds a {type(ckpt).__name__}, not a checkpoint (a dict with a "model" '
                         f'state dict, or a state dict)')
    return ckpt


def args_of(ckpt):
    """The training arguments a checkpoint records, as a dict: MIFAE and this code save vars(args), the
    original MAE the argparse.Namespace itself. {} when it records none."""
    args = ckpt.get('args') if isinstance(ckpt, dict) else None
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    return args if isinstance(args, dict) else {}


def epoch_of(path):
    """The epoch stored in a checkpoint, read without loading its tensors; None if unreadable."""
    try:
        return load(path, mmap=True).get('epoch')
    except (FileNotFoundError, ValueError):
        return None


def state_dict_of(ckpt):
    """The state dict inside a checkpoint ({'model': ...} as MAE/MIFAE/this code write it, or bare)."""
    state = ckpt.get('model', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError('holds no state dict of tensors')
    return state


def norm_pix_of(ckpt):
    """Whether the decoder in `ckpt` learnt per-patch normalised pixels: a fine-tuning checkpoint's
    detector.norm_pix, else the pre-training run's norm_pix_loss; None when it records neither."""
    meta = ckpt.get('detector') if isinstance(ckpt, dict) else None
    if isinstance(meta, dict) and 'norm_pix' in meta:
        return bool(meta['norm_pix'])
    return args_of(ckpt).get('norm_pix_loss')


# ---------------------------------------------------------------------- shape checks
def shape_mismatches(state, own, keys=None, source='file', target='the model'):
    """'key: (shape) in <source>, (shape) in <target>' for each of `keys` (default: every key of `state`
    that `own` has too) whose shapes differ."""
    keys = [k for k in state if k in own] if keys is None else keys
    return [f'{k}: {tuple(state[k].shape)} in {source}, {tuple(own[k].shape)} in {target}'
            for k in keys if tuple(state[k].shape) != tuple(own[k].shape)]


def shape_report(path, mismatched, what):
    """One line for shape_mismatches' list: the count and the first four."""
    shown = '; '.join(mismatched[:4]) + (f'; ... ({len(mismatched) - 4} more)' if len(mismatched) > 4 else '')
    return f'{path}: {len(mismatched)} tensor(s) differ in shape from {what}: {shown}'


# ---------------------------------------------------------------------- which checkpoint a run continues from
def _newest_loadable(folder, skip):
    """(path, epoch) of the checkpoint-*.pth in `folder` with the latest epoch that loads; None if none."""
    found = []
    for p in folder.glob('checkpoint-*.pth'):
        if p.name != skip and (epoch := epoch_of(p)) is not None:
            found.append((epoch, p.name != BEST, str(p)))          # equal epochs: a numbered one first
    return (max(found)[2], max(found)[0]) if found else None


def find_resume_checkpoint(args):
    """--resume PATH, or with --auto_resume the output folder's checkpoint-last.pth.

    With both, checkpoint-last.pth wins when it holds a later epoch than PATH: re-running the same command
    after an interruption continues instead of going back to PATH. When checkpoint-last.pth is missing or
    cannot be read (cut short), auto-resume falls back to the newest checkpoint of the folder that loads,
    and says so. args.resume then names the choice, so later calls agree without reading files again.
    """
    out = Path(args.output_dir) if args.output_dir else None
    last = out / LAST if out else None
    auto = getattr(args, 'auto_resume', False) and out is not None and out.is_dir()
    if args.resume and auto and last.is_file() and Path(args.resume).resolve() != last.resolve() \
            and Path(args.resume).is_file():
        given, newer = epoch_of(args.resume), epoch_of(last)
        if given is not None and newer is not None and newer > given:
            print(f'{last} (epoch {newer}) is newer than --resume {args.resume} (epoch {given}): continuing from '
                  f'it (--no_auto_resume to start from {args.resume})', flush=True)
            args.resume = str(last)
    if args.resume:
        return args.resume
    if not auto:
        return None
    if last.is_file() and epoch_of(last) is not None:
        return str(last)
    fallback = _newest_loadable(out, LAST)
    if fallback is None:
        return str(last) if last.is_file() else None       # unreadable and nothing else: its load says why
    why = 'is missing' if not last.is_file() else 'cannot be read (cut short?)'
    if misc.is_main_process():
        print(f'{last} {why}: resuming from {fallback[0]} (epoch {fallback[1]}), the newest checkpoint here '
              f'that loads', flush=True)
    args.resume = fallback[0]
    return args.resume


def report_interrupt(script, args):
    """Ctrl-C in a training run or an evaluation: one line on stderr saying what is kept and that the same
    command continues. -> the exit status, 130 (as a shell reports SIGINT)"""
    out = Path(args.output_dir) if getattr(args, 'output_dir', '') else None
    if getattr(args, 'eval', False):
        kept = 'the evaluation report (eval.json, eval.md) is written at its end; run the same command again'
    elif out is not None and (out / LAST).is_file() and (epoch := epoch_of(out / LAST)) is not None:
        kept = f'{out / LAST} (epoch {epoch}) is kept; run the same command again to continue from it'
    else:
        kept = 'no epoch had been saved yet; run the same command again to start'
    if misc.is_main_process():
        print(f'\n{script}: interrupted: {kept}', file=sys.stderr, flush=True)
    return 130


# ---------------------------------------------------------------------- flags a resumed run may change
def method_flags(parser, harmless=()):
    """The flags that change what a model learns: every flag of `parser` but the run and distributed flags
    (misc.add_run_args), less `harmless` (workers, memory pinning, evaluation-only flags, ...)."""
    run = argparse.ArgumentParser(add_help=False)
    misc.add_run_args(run, '', '')
    skip = set(vars(run.parse_args([]))) | set(harmless)
    return [k for k in vars(parser.parse_args([])) if k not in skip]


def _same(a, b):
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b and os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)                              # the same file named another way
    return False


def show_flag(flag, value):
    """How a flag's value is shown in messages: --x on/off for switches."""
    if isinstance(value, bool):
        return f'--{flag} {"on" if value else "off"}'
    return f'--{flag} {" ".join(map(str, value)) if isinstance(value, (list, tuple)) else value}'


def changed_flags(saved, args, flags, derived=()):
    """{flag: (checkpoint's value, this run's value)} for the `flags` whose value differs from the one the
    checkpoint recorded; a flag in `derived` left at None (e.g. --lr from --blr) is not compared."""
    out = {}
    for k in flags:
        if k not in saved or not hasattr(args, k):
            continue
        given = getattr(args, k)
        if k in derived and given is None:
            continue
        if not _same(given, saved[k]):
            out[k] = (saved[k], given)
    return out


def check_resume_args(args, parser, hard=(), skip=(), harmless=(), derived=('lr', 'model'), pretraining=False):
    """Before any work: the checkpoint a run resumes from must have been written with the same method flags.

    `hard` flags (tensor shapes) can never differ; other method flags (`method_flags(parser, harmless)`
    less `skip`) only with --allow_changed_flags, which notes them and sets args.changed_flags (the first
    epoch's log.txt line records them). With `pretraining`, a fine-tuning checkpoint is refused as such.
    Raises ValueError with the list of what differs. -> path or None"""
    path = find_resume_checkpoint(args)
    args.changed_flags = None
    if not path:
        return None
    ckpt = load(path, mmap=True)
    if pretraining and isinstance(ckpt.get('detector'), dict):
        raise ValueError(f'{path} is a fine-tuning (stage 2) checkpoint: continue it with main_finetune.py '
                         f'--resume; pre-training resumes from a pre-training checkpoint (or choose another '
                         f'--output_dir)')
    saved = args_of(ckpt)
    flags = [k for k in method_flags(parser, harmless) if k not in skip]
    changed = changed_flags(saved, args, flags, derived)
    def listed(keys):                                          # --mask_ratio 0.5 (checkpoint: 0.75), ...
        return ', '.join(f'{show_flag(k, changed[k][1])} (checkpoint: {show_flag(k, changed[k][0]).split(" ", 1)[1]})'
                         for k in keys)
    fixed = [k for k in changed if k in hard]
    if fixed:
        raise ValueError(f'{path} holds a model of another shape: {listed(fixed)}; use the checkpoint\'s '
                         f'values, another --output_dir, or --overwrite to start afresh here')
    if changed and not getattr(args, 'allow_changed_flags', False):
        raise ValueError(f'{path} was trained with other method flags: {listed(changed)}; use the checkpoint\'s '
                         f'values, or --allow_changed_flags to continue with these (noted in log.txt)')
    if changed:
        args.changed_flags = {k: dict(checkpoint=old, now=new) for k, (old, new) in changed.items()}
        if misc.is_main_process():
            print(f'{path}: resuming with changed flags {listed(changed)} (--allow_changed_flags; noted in '
                  f'log.txt)', flush=True)
    return path


# ---------------------------------------------------------------------- fresh runs: never over another run
def run_files(folder, patterns=RUN_FILES):
    folder = Path(folder)
    return sorted(p for pat in patterns for p in folder.glob(pat)) if folder.is_dir() else []


def start_problem(args):
    """The first problem of a training run's flags and folder, as one line, or None: misc.run_problem (device,
    --output_dir, numbers), then check_fresh_output (another run's files in the folder)."""
    if problem := misc.run_problem(args):
        return problem
    try:
        check_fresh_output(args)
    except ValueError as e:
        return str(e)
    return None


def check_fresh_output(args):
    """A run that resumes nothing must not write over another run's checkpoints and log.txt: ValueError
    unless --overwrite, which starts afresh (no auto-resume; `move_aside` is due after set-up)."""
    if getattr(args, 'overwrite', False):
        args.auto_resume = False
        return
    if not args.output_dir or find_resume_checkpoint(args):
        return
    found = run_files(args.output_dir)
    if found:
        names = ', '.join(p.name for p in found[:3]) + (f' and {len(found) - 3} more' if len(found) > 3 else '')
        raise ValueError(f'--output_dir {args.output_dir} holds another run ({names}): continue it without '
                         f'--no_auto_resume, choose another --output_dir, or pass --overwrite to move its files '
                         f'aside')


def move_aside(output_dir, patterns=RUN_OUTPUTS):
    """Move a previous run's files (checkpoints, log.txt, TensorBoard events, eval reports; `patterns`) into
    output_dir/replaced-<date-time>/ (rank 0). -> that folder, or None when there was nothing to move."""
    found = run_files(output_dir, patterns)
    if not found or not misc.is_main_process():
        return None
    dest = Path(output_dir) / time.strftime('replaced-%Y%m%d-%H%M%S')
    while dest.exists():
        dest = dest.with_name(dest.name + '_')
    dest.mkdir()
    for p in found:
        os.replace(p, dest / p.name)
    print(f'--overwrite: moved {len(found)} file(s) of the previous run in {output_dir} to {dest}', flush=True)
    return dest


# ---------------------------------------------------------------------- resuming
def resume_training(args, model_without_ddp, optimizer, scaler=None):
    """Restore model, optimizer, scaler, random states and epoch; training continues at the next epoch.
    -> the checkpoint dict, or None for a fresh run."""
    path = find_resume_checkpoint(args)
    if not path:
        return None
    ckpt = load(path)
    try:
        model_without_ddp.load_state_dict(ckpt['model'])
    except (KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f'{path}: does not fit this model ({first[:200]}); is it a checkpoint of this run?') from e
    if 'optimizer' in ckpt and 'epoch' in ckpt and not getattr(args, 'eval', False):
        optimizer.load_state_dict(ckpt['optimizer'])
        args.start_epoch = ckpt['epoch'] + 1
        if scaler is not None and ckpt.get('scaler'):
            scaler.load_state_dict(ckpt['scaler'])
        if ckpt.get('rng'):         # a resumed run draws the same shuffles, crops and masks as one never stopped
            misc.restore_rng_states(ckpt['rng'], path)
    if misc.is_main_process():
        print(f'Resumed from {path} (epoch {ckpt.get("epoch")}); continuing at epoch {args.start_epoch}'
              + (': nothing left to train (--epochs {args.epochs})'.format(args=args)
                 if args.start_epoch >= getattr(args, 'epochs', float('inf')) else ''),
              flush=True)
    if ckpt.get('log_stats') and args.output_dir:
        complete_log(args.output_dir, ckpt['log_stats'])
    return ckpt


def reconcile_best(output_dir, ckpt):
    """The best validation AUC so far and its epoch, as checkpoint-best.pth on disk holds them, for a run
    resumed from `ckpt`. -> (best_val_auc or None, best_epoch or None)

    - checkpoint-best.pth newer than `ckpt` (killed between the best and the last write): it is a model
      this run validated, better than any before, so it stays the best.
    - `ckpt` is itself the best epoch but checkpoint-best.pth is older, missing or unreadable (its write
      was lost): it is copied to checkpoint-best.pth.
    - checkpoint-best.pth lost otherwise: said so; the best is chosen again among the epochs still to run."""
    path = Path(output_dir) / BEST
    try:
        best = load(path, mmap=True)
    except (FileNotFoundError, ValueError) as e:
        best = None
        if path.exists() and misc.is_main_process():
            print(f'{e}; ignoring it', flush=True)
    own = (ckpt.get('val') or {}).get('auc')
    if best is not None and best.get('epoch', -1) > ckpt.get('epoch', -1):
        if misc.is_main_process():
            print(f'{path} (epoch {best["epoch"]}, validation AUC {best.get("best_val_auc")}) was written after '
                  f'the checkpoint resumed from (epoch {ckpt.get("epoch")}): it stays the best so far', flush=True)
        return best.get('best_val_auc'), best['epoch']
    if own is not None and ckpt.get('best_val_auc') == own and (best is None or best.get('epoch', -1) < ckpt['epoch']):
        if misc.is_main_process():
            src = Path(output_dir) / LAST
            src = src if src.is_file() and epoch_of(src) == ckpt['epoch'] else None
            if src is None:
                save(ckpt, path)
            else:
                copy(src, path)
            print(f'{path}: restored from epoch {ckpt["epoch"]} (validation AUC {own:.4f}), the best so far, '
                  f'whose write had not completed', flush=True)
        return own, ckpt['epoch']
    if best is not None:
        return best.get('best_val_auc'), best.get('epoch')
    if ckpt.get('best_val_auc') is not None and misc.is_main_process():
        print(f'{path} (validation AUC {ckpt["best_val_auc"]:.4f}) is gone: the best is chosen again among the '
              f'epochs still to run', flush=True)
    return None, None


def complete_log(output_dir, stats):
    """Make log.txt end at the resumed checkpoint's epoch.

    Appends the checkpoint's epoch line if an interruption came between the two writes; drops lines of
    later epochs (a resume from an older checkpoint repeats them) and lines that do not parse (a line cut
    short by a crash). Rewritten atomically, rank 0 only.
    """
    log = Path(output_dir) / 'log.txt'
    if not misc.is_main_process():
        return
    lines, changed = [], False
    for line in (log.read_text().splitlines() if log.is_file() else []):
        try:
            entry = json.loads(line)
            epoch = entry.get('epoch')
        except (json.JSONDecodeError, AttributeError):
            changed = True
            continue
        if isinstance(epoch, int) and epoch > stats.get('epoch', epoch):
            changed = True
            continue
        lines.append((epoch, line))
    if stats.get('epoch') not in [e for e, _ in lines]:
        lines.append((stats.get('epoch'), json.dumps(stats)))
        changed = True
    if changed:
        write_text(log, ''.join(line + '\n' for _, line in lines))

