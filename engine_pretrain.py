"""One epoch of MIFAE pre-training: the loss the model returns is the step's; every pretext loss the model
names (outputs['losses']) is logged to log.txt and TensorBoard and shown in the progress bar.

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
from util.masking import check_mask_count

NonFiniteLossError = misc.NonFiniteLossError


def train_one_epoch(model, data_loader, optimizer, device, epoch, amp_dtype=None, scaler=None,
                    log_writer=None, args=None):
    model.train(True)
    accum_iter = args.accum_iter
    steps = len(data_loader)
    optimizer.zero_grad(set_to_none=True)

    meter = None            # read back every print_freq steps only; names: the total, then the model's losses
    replaced, no_landmarks, fallbacks, start = 0, 0, 0, time.time()
    lr = optimizer.param_groups[0]['lr']

    bar = tqdm(data_loader, desc=f'epoch {epoch}', disable=not misc.is_main_process() or args.quiet,
               dynamic_ncols=True, mininterval=2.0, file=sys.stdout)
    for it, batch in enumerate(bar):
        if it % accum_iter == 0:                                   # per-iteration schedule
            lr = lr_sched.adjust_learning_rate(optimizer, it / steps + epoch, args)
        imgs = normalize_batch(batch['img'].to(device, non_blocking=True))   # uint8 -> normalised, on device
        if it == 0:                                                # the model keeps a fixed token count
            check_mask_count(batch['mask'], args.mask_ratio)
        mask = batch['mask'].to(device, non_blocking=True)
        replaced += int(batch['replaced'].sum())
        no_landmarks += int((~batch['has_landmarks']).sum())
        fallbacks += int(batch['mask_fallback'].sum())

        update = (it + 1) % accum_iter == 0 or it + 1 == steps
        sync_ctx = model.no_sync() if (args.distributed and not update) else nullcontext()
        with sync_ctx:
            with misc.autocast(device, amp_dtype):
                loss, out = model(imgs, mask)
            misc.backward_and_step(loss / accum_iter, optimizer, scaler, update=update,
                                   clip_grad=args.clip_grad, parameters=model.parameters())

        if meter is None:
            meter = misc.LossMeter(('train_loss', *out['losses']), epoch, steps, device)
        meter.add(it, (loss, *out['losses'].values()))
        if (it + 1) % args.print_freq == 0 or it + 1 == steps:   # the only host synchronisation
            mean = meter.flush(log_writer, it, lr)
            bar.set_postfix({name.removesuffix('_loss'): f'{v:.4f}' for name, v in zip(meter.names, mean)},
                            lr=f'{lr:.2e}')

    counts = torch.tensor([replaced, no_landmarks, fallbacks], dtype=torch.float64)
    if misc.is_dist():
        counts = counts.to(device)
        torch.distributed.all_reduce(counts)
    stats = meter.epoch_mean()
    stats.update(lr=lr, unreadable_images=int(counts[0]), images_without_landmarks=int(counts[1]),
                 facial_regions_cropped_out=int(counts[2]),
                 epoch_time_s=round(time.time() - start, 2))
    return stats
