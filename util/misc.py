"""Run plumbing shared by both stages: flags, one-line errors, distributed set-up, mixed precision, logging.

Checkpoints and resuming: util/checkpoint.py."""
import datetime
import json
import math
import os
import random
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from util.fileio import output_dir_problem


# ---------------------------------------------------------------------- flags shared by both entry points
def add_run_args(parser, output_help, resume_help):
    """The run and distributed flags of main_pretrain.py and main_finetune.py (one definition).

    Returns the 'run' argument group so an entry point can add its own run flags to it.
    """
    g = parser.add_argument_group('run')
    g.add_argument('--output_dir', default='./output_dir', help=output_help)
    g.add_argument('--log_dir', default=None, help='TensorBoard folder (default: output_dir)')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--seed', default=0, type=int)
    g.add_argument('--resume', default='', help=resume_help)
    g.add_argument('--auto_resume', action='store_true', default=True,
                   help='resume from output_dir/checkpoint-last.pth when it exists (default)')
    g.add_argument('--no_auto_resume', action='store_false', dest='auto_resume')
    g.add_argument('--overwrite', action='store_true',
                   help='start afresh in an --output_dir that holds another run: its files are moved aside '
                        '(into replaced-<date-time>/), never deleted')
    g.add_argument('--allow_changed_flags', action='store_true',
                   help='resume although method flags differ from the checkpoint\'s (noted in log.txt)')
    g.add_argument('--start_epoch', default=0, type=int, metavar='N')
    g.add_argument('--amp', default='auto', choices=['auto', 'bf16', 'fp16', 'none'],
                   help='autocast precision (auto: bf16 on CUDA, fp32 on CPU)')
    g.add_argument('--compile', default='auto', choices=['auto', 'on', 'off'],
                   help='torch.compile the model (auto: on for CUDA, off on CPU)')
    g.add_argument('--print_freq', default=20, type=int, help='iterations between loss read-backs and logs')
    g.add_argument('--quiet', action='store_true', help='no progress bars')

    d = parser.add_argument_group('distributed')
    d.add_argument('--world_size', default=1, type=int,
                   help='number of processes (informative: the launcher\'s WORLD_SIZE is what counts)')
    d.add_argument('--local_rank', '--local-rank', default=-1, type=int,
                   help='accepted from torch.distributed.launch; the LOCAL_RANK variable is what counts')
    d.add_argument('--dist_url', default='env://', help='rendezvous for init_process_group')
    d.add_argument('--dist_timeout', default=600, type=int, help='seconds to wait for the other processes')
    return g


# ---------------------------------------------------------------------- one-line errors and start-up checks
def usage_error(script, msg):
    """The one-line exit of an entry point: `error = partial(usage_error, 'x.py')`, then `raise error('...')`."""
    return SystemExit(f'{script}: error: {msg}')


def device_problem(name):
    """Why --device `name` cannot be used here, or None."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        return f'--device {name}: {e}'
    if device.type == 'cuda' and not torch.cuda.is_available():
        return f'--device {name}: no CUDA GPU is available here (use --device cpu)'
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        return f'--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) here'
    return None


def number_problem(args, non_negative=(), unit_interval=()):
    """The first flag of `non_negative` (finite, >= 0) or `unit_interval` ([0, 1]) whose value breaks its
    rule (nan included), as one line; None when all hold. Flags left at None are not checked."""
    for flag in non_negative:
        v = getattr(args, flag)
        if v is not None and not (math.isfinite(v) and v >= 0):
            return f'--{flag} {v} must be a finite number >= 0'
    for flag in unit_interval:
        v = getattr(args, flag)
        if v is not None and not 0 <= v <= 1:
            return f'--{flag} {v} must lie in [0, 1]'
    return None


def run_problem(args):
    """The first problem with the run flags both training stages share, as one line, or None: the device,
    --output_dir (a folder this run can write; '' would train and save nothing), --start_epoch, and the
    optimizer's numbers."""
    problem = device_problem(args.device)
    if problem:
        return problem
    if not args.output_dir:
        return "--output_dir '' would train and save nothing: name a folder for the checkpoints and log.txt"
    problem = output_dir_problem(args.output_dir)
    if problem:
        return f'--output_dir {args.output_dir}: {problem}'
    if not 0 <= args.start_epoch < args.epochs:
        return (f'--start_epoch {args.start_epoch} is not in [0, --epochs {args.epochs}): nothing would train '
                f'(resuming sets the start epoch by itself)')
    problem = number_problem(args, ('lr', 'blr', 'min_lr', 'weight_decay', 'warmup_epochs'))
    if problem:
        return problem
    if args.clip_grad is not None and not args.clip_grad > 0:
        return f'--clip_grad {args.clip_grad} must be > 0 (leave it out for no clipping)'
    return None


def accum_problem(args, loader):
    """Why --accum_iter cannot work with this training loader (more steps accumulated than an epoch has: the
    effective batch and the lr scaled from it would never happen), or None."""
    if args.accum_iter <= len(loader):
        return None
    return (f'--accum_iter {args.accum_iter} exceeds the {len(loader)} steps of an epoch ({len(loader.dataset)} '
            f'images / {args.batch_size} x {get_world_size()} processes): the effective batch would never happen; '
            f'use at most {len(loader)}')


FEW_STEPS = 5          # an epoch of fewer optimiser steps than this is said to be short


def schedule_note(args, loader):
    """One line when the schedule trains little or nothing without an error: an epoch of fewer than FEW_STEPS
    optimiser steps, or a run whose steps all fall in the linear warm-up (util.lr_sched: the lr never reaches
    --lr, and the run's first step is taken at lr 0); None otherwise."""
    steps = -(-len(loader) // args.accum_iter)                  # optimiser steps of an epoch
    run = (args.epochs - args.start_epoch) * steps
    warm = min(run, max(0, math.ceil((args.warmup_epochs - args.start_epoch) * steps)))
    notes, advice = [], []
    if steps < FEW_STEPS:
        notes.append(f'an epoch is only {steps} optimiser step{"s" if steps > 1 else ""} ({len(loader.dataset)} '
                     f'images / {args.batch_size} x {args.accum_iter} accum x {get_world_size()} processes)')
        advice.append('a smaller --batch_size or more data')
    if run and warm == run:
        notes.append(('the run\'s only step falls' if run == 1 else f'all {run} steps of the run fall')
                     + f' in the warm-up (--warmup_epochs {args.warmup_epochs:g}, --epochs {args.epochs}), so the '
                     f'learning rate never reaches --lr' + (' and the first step is taken at lr 0'
                                                            if args.start_epoch == 0 else ''))
        advice.append('fewer --warmup_epochs or more --epochs')
    elif notes and warm:
        notes.append(f'{warm} of the run\'s {run} steps {"falls" if warm == 1 else "fall"} in the warm-up')
    if not notes:
        return None
    return '; '.join(notes) + f': {" and ".join(advice)} train more'


# ---------------------------------------------------------------------- distributed
def init_distributed_mode(args):
    """Join a process group when the launcher (torchrun, or submitit through the same variables) asked.

    Reads RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT for env://). NCCL on CUDA, gloo on CPU.
    Sets args.distributed, args.rank, args.world_size, args.gpu.
    """
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ or int(os.environ['WORLD_SIZE']) < 2:
        args.distributed, args.rank, args.world_size, args.gpu = False, 0, 1, 0
        return
    args.rank = int(os.environ['RANK'])
    args.world_size = int(os.environ['WORLD_SIZE'])
    args.gpu = int(os.environ.get('LOCAL_RANK', 0))
    args.distributed = True
    use_cuda = str(args.device).startswith('cuda') and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(args.gpu)
    backend = 'nccl' if use_cuda else 'gloo'
    where = args.dist_url
    if where == 'env://':
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    timeout = datetime.timedelta(seconds=getattr(args, 'dist_timeout', 600))
    try:
        dist.init_process_group(backend, init_method=args.dist_url, world_size=args.world_size,
                                rank=args.rank, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - name the rendezvous instead of a bare stack
        raise RuntimeError(f'rank {args.rank}: could not join the process group at {where} '
                           f'within {timeout.seconds} s ({type(e).__name__}: {e})') from e
    print(f'| distributed init (rank {args.rank} of {args.world_size}, {backend}): {where}', flush=True)
    dist.barrier()


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main_process():
    return get_rank() == 0


def all_reduce_mean(t):
    """Mean of a tensor over ranks (identity when not distributed)."""
    if is_dist():
        t = t.clone()
        dist.all_reduce(t)
        t /= get_world_size()
    return t


def setup_run(args):
    """What every entry point does first: processes (torchrun/Slurm), device, per-rank seed, output and log
    folders. -> torch.device of this process"""
    init_distributed_mode(args)
    device = torch.device(args.device)
    if args.distributed and device.type == 'cuda':
        device = torch.device('cuda', args.gpu)
    seed_everything(args.seed + get_rank())
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    args.log_dir = args.log_dir or args.output_dir
    return device


def maybe_compile(model, device, mode):
    """torch.compile for --compile on, or auto on CUDA (off on the CPU)."""
    if mode == 'on' or (mode == 'auto' and device.type == 'cuda'):
        return torch.compile(model)
    return model


@contextmanager
def num_threads(n, opencv=True):
    """torch's (and with `opencv`, OpenCV's) thread counts set to `n` for the block (None or 0: unchanged), then
    restored.

    The thread count is process state that changes results: a matmul split over another number of threads sums
    in another order, so a run after a block that left one thread set trains to other weights. Whatever changes
    it goes through here."""
    if not n:
        yield
        return
    import cv2
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(n)
    if opencv:
        cv2.setNumThreads(n)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        if opencv:
            cv2.setNumThreads(cv2_threads)


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def rng_states():
    """Every rank's random-number state (torch, this rank's CUDA device, numpy, python), gathered as a list
    indexed by rank. A collective: every rank calls it."""
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate(),
                 cuda=torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
    if not is_dist():
        return [state]
    states = [None] * get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_rng_states(states, source):
    """Continue this rank's random streams from a checkpoint's `rng_states()`; with another number of processes
    they cannot be matched, and the streams stay as seeded (said once)."""
    if len(states) != get_world_size():
        if is_main_process():
            print(f'{source}: random state saved by {len(states)} process(es), this run has {get_world_size()}: '
                  f'shuffling, augmentation and masks continue from --seed instead', flush=True)
        return
    state = states[get_rank()]
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    if state.get('cuda') is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


# ---------------------------------------------------------------------- mixed precision
def resolve_amp(amp, device):
    """'auto' -> bf16 on CUDA, none on CPU. Returns (dtype or None, GradScaler or None)."""
    if amp == 'auto':
        amp = 'bf16' if device.type == 'cuda' else 'none'
    if amp == 'none':
        return None, None
    if amp == 'bf16':
        return torch.bfloat16, None
    if amp == 'fp16':
        return torch.float16, torch.amp.GradScaler(device.type)
    raise ValueError(f'--amp must be bf16, fp16, none or auto, got {amp!r}')


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def backward_and_step(loss, optimizer, scaler=None, update=True, clip_grad=None, parameters=None):
    """loss.backward() (scaled for fp16) and, when `update`, an optimizer step with optional clipping."""
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    if not update:
        return
    if clip_grad:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def param_groups_weight_decay(model, weight_decay, skip=()):
    """Two AdamW groups: no decay for biases, norms, tokens and embeddings (1-D or named in `skip`)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith('.bias') or name in skip else decay).append(p)
    return [{'params': no_decay, 'weight_decay': 0.0}, {'params': decay, 'weight_decay': weight_decay}]


def make_adamw(param_groups, lr, betas, device):
    """AdamW, fused on CUDA (one kernel for all parameters), foreach elsewhere."""
    kw = dict(fused=True) if device.type == 'cuda' else dict(foreach=True)
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, **kw)


# ---------------------------------------------------------------------- numerics
class NonFiniteLossError(RuntimeError):
    pass


def raise_if_nonfinite(first_bad, epoch, steps):
    """Stop at the first non-finite step (a device scalar, -1 = none); reading it is a host sync."""
    bad = int(first_bad)
    if bad >= 0:
        raise NonFiniteLossError(
            f'non-finite loss at step {bad} (epoch {bad // steps}, iteration {bad % steps}); training stopped, '
            f'the checkpoints on disk are from before epoch {epoch} and were not touched')


class LossMeter:
    """Per-step loss values summed on the device and read back only by `flush` (every --print_freq steps: the
    epoch's one host synchronisation). Remembers the first step whose values were not finite, and `flush`
    stops there with NonFiniteLossError."""

    def __init__(self, names, epoch, steps, device):
        self.names, self.epoch, self.steps = tuple(names), epoch, steps
        self.sums = torch.zeros(len(self.names), device=device)
        self.epoch_sums = torch.zeros_like(self.sums)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.step_ids = torch.arange(steps, device=device) + epoch * steps     # made once: no copy per step
        self.n = self.n_epoch = 0

    def add(self, it, values):
        """Iteration `it`'s values (0-d tensors, in the order of `names`); no host synchronisation."""
        values = torch.stack([v.detach() for v in values]).float()
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(values).all(), self.step_ids[it],
                                     self.first_bad)
        self.sums += values
        self.n += 1

    def flush(self, log_writer=None, it=0, lr=None):
        """Means since the last flush as floats (also to TensorBoard at this step, with the lr)."""
        raise_if_nonfinite(self.first_bad, self.epoch, self.steps)
        mean = (self.sums / max(self.n, 1)).tolist()
        self.epoch_sums += self.sums
        self.n_epoch += self.n
        self.sums.zero_()
        self.n = 0
        if log_writer is not None:
            step = self.epoch * self.steps + it
            for name, v in zip(self.names, mean):
                log_writer.add_scalar(name, v, step)
            if lr is not None:
                log_writer.add_scalar('lr', lr, step)
        return mean

    def epoch_mean(self):
        """Means over the epoch's flushed steps, averaged over the processes: {name: float}."""
        return dict(zip(self.names, all_reduce_mean(self.epoch_sums / max(self.n_epoch, 1)).tolist()))


# ---------------------------------------------------------------------- logs
def append_log(output_dir, stats):
    """One JSON line per epoch in output_dir/log.txt (rank 0 only)."""
    if output_dir and is_main_process():
        with open(Path(output_dir) / 'log.txt', 'a') as f:
            f.write(json.dumps(stats) + '\n')


def log_epoch(output_dir, epoch, stats):
    """The epoch's stats to log.txt and, on rank 0, to the console as one line."""
    append_log(output_dir, stats)
    if is_main_process():
        print(f'epoch {epoch}: ' + ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                                            for k, v in stats.items()), flush=True)


def make_log_writer(log_dir):
    """A TensorBoard SummaryWriter on rank 0, None elsewhere or without log_dir."""
    if not log_dir or not is_main_process():
        return None
    from torch.utils.tensorboard import SummaryWriter
    os.makedirs(log_dir, exist_ok=True)
    return SummaryWriter(log_dir=log_dir)
