"""One epoch of MIFAE pre-training.

The step never waits for the GPU: losses are summed on the device and read back only every
`--print_freq` iterations (and at the end of the epoch), which is also when a non-finite loss is caught,
with the number of the first step that produced it.
"""
import sys
import time
from contextlib import nullcontext

import torch
from tqdm import tqdm

import util.lr_sched as lr_sched
import util.misc as misc
from util.datasets import normalize_batch

LOSS_NAMES = ('train_loss', 'spat_loss', 'freq_loss')


NonFiniteLossError = misc.NonFiniteLossError


def train_one_epoch(model, data_loader, optimizer, device, epoch, amp_dtype=None, scaler=None,
                    log_writer=None, args=None):
    model.train(True)
    accum_iter = args.accum_iter
    steps = len(data_loader)
    optimizer.zero_grad(set_to_none=True)

    sums = torch.zeros(len(LOSS_NAMES), device=device)           # running sums since the last read-back
    epoch_sums = torch.zeros(len(LOSS_NAMES), device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
    n_since, n_epoch, replaced, no_landmarks, start = 0, 0, 0, 0, time.time()
    lr = optimizer.param_groups[0]['lr']

    bar = tqdm(data_loader, desc=f'epoch {epoch}', disable=not misc.is_main_process() or args.quiet,
               dynamic_ncols=True, mininterval=2.0, file=sys.stdout)
    for it, batch in enumerate(bar):
        if it % accum_iter == 0:                                   # per-iteration schedule
            lr = lr_sched.adjust_learning_rate(optimizer, it / steps + epoch, args)
        imgs = normalize_batch(batch['img'].to(device, non_blocking=True))   # uint8 -> normalised, on device
        mask = batch['mask'].to(device, non_blocking=True)
        replaced += int(batch['replaced'].sum())
        no_landmarks += int((~batch['has_landmarks']).sum())

        update = (it + 1) % accum_iter == 0 or it + 1 == steps
        sync_ctx = model.no_sync() if (args.distributed and not update) else nullcontext()
        with sync_ctx:
            with misc.autocast(device, amp_dtype):
                loss, out = model(imgs, mask)
            misc.backward_and_step(loss / accum_iter, optimizer, scaler, update=update,
                                   clip_grad=args.clip_grad, parameters=model.parameters())

        values = torch.stack([loss.detach(), out['spat_loss'].detach(), out['freq_loss'].detach()]).float()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(values).all(),
                                torch.tensor(epoch * steps + it, device=device), first_bad)
        sums += values
        n_since += 1

        if (it + 1) % args.print_freq == 0 or it + 1 == steps:   # the only host synchronisation
            misc.raise_if_nonfinite(first_bad, epoch, steps)
            mean = (sums / n_since).tolist()
            epoch_sums += sums
            n_epoch += n_since
            sums.zero_()
            n_since = 0
            bar.set_postfix(loss=f'{mean[0]:.4f}', spat=f'{mean[1]:.4f}', freq=f'{mean[2]:.4f}', lr=f'{lr:.2e}')
            if log_writer is not None:
                step = epoch * steps + it
                for name, v in zip(LOSS_NAMES, mean):
                    log_writer.add_scalar(name, v, step)
                log_writer.add_scalar('lr', lr, step)

    epoch_mean = misc.all_reduce_mean(epoch_sums / max(n_epoch, 1)).tolist()
    counts = torch.tensor([replaced, no_landmarks], dtype=torch.float64)
    if misc.is_dist():
        counts = counts.to(device)
        torch.distributed.all_reduce(counts)
    stats = dict(zip(LOSS_NAMES, epoch_mean))
    stats.update(lr=lr, unreadable_images=int(counts[0]), images_without_landmarks=int(counts[1]),
                 epoch_time_s=round(time.time() - start, 2))
    return stats
