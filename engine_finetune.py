"""Stage 2 steps: one fine-tuning epoch (classification + real-face reconstruction) and evaluation.

Neither loop waits for the device per step: losses are summed on the device and read every
`--print_freq` iterations; evaluation keeps the fake probabilities on the device and reads them once.
"""
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import util.lr_sched as lr_sched
import util.misc as misc
from util.augment import device_random_erasing
from util.datasets import normalize_batch
from util.metrics import compute_metrics

LOSS_NAMES = ('loss', 'ce_loss', 'recon_loss', 'l1_real', 'l1_fake')


NonFiniteLossError = misc.NonFiniteLossError


# ---------------------------------------------------------------------- losses
def per_image_l1(pred, target):
    """Mean absolute error per image. [N, L, P] x2 -> [N] float32"""
    return (pred.float() - target.float()).abs().mean(dim=(1, 2))


def reconstruction_loss(pred, target, labels, mode='real', lam=0.1):
    """L1 reconstruction loss on real faces (label 0) only; `dual` also subtracts lam x L1 on fakes (label 1).

    labels: [N] long; other values (e.g. -1 for a mixup pair of a real and a fake) count as neither.
    A batch without reals gives exactly 0 (a tensor in the graph, so backward still works).
    Returns (loss, l1_real, l1_fake), the last two detached means (0 where the batch has none).
    """
    l1 = per_image_l1(pred, target)                                     # [N]
    real = (labels == 0).to(l1.dtype)
    fake = (labels == 1).to(l1.dtype)
    l1_real = (l1 * real).sum() / real.sum().clamp_min(1)
    l1_fake = (l1 * fake).sum() / fake.sum().clamp_min(1)
    if mode == 'real':
        loss = l1_real
    elif mode == 'dual':
        loss = l1_real - lam * l1_fake
    else:
        raise ValueError(f'reconstruction mode must be real or dual, got {mode!r}')
    return loss, l1_real.detach(), l1_fake.detach()


def recon_labels_after_mixing(labels, mixing):
    """Un-mixed labels deciding real vs fake for the reconstruction loss. timm's Mixup blends sample i
    with sample N-1-i (batch.flip(0)); a blend of a real and a fake face is neither (-1)."""
    if not mixing:
        return labels
    partner = labels.flip(0)
    return torch.where(labels == partner, labels, torch.full_like(labels, -1))


# ---------------------------------------------------------------------- training
def uses_recon(args):
    """Whether training computes the reconstruction term (not with --recon none or --recon_weight 0)."""
    return args.recon != 'none' and args.recon_weight > 0


def train_one_epoch(model, criterion, data_loader, optimizer, device, epoch, amp_dtype=None, scaler=None,
                    mixup_fn=None, log_writer=None, args=None):
    """One epoch; loss = CE (label smoothing / soft mixup targets) + recon_weight x reconstruction loss.

    Batches hold uint8 images, normalised here on the device. `model` may be compiled / DDP-wrapped;
    `bare` is the detector itself (its reconstruction target and normalisation)."""
    model.train(True)
    bare = misc_unwrap(model)
    use_recon = uses_recon(args)
    accum_iter, steps = args.accum_iter, len(data_loader)
    optimizer.zero_grad(set_to_none=True)

    meter = misc.LossMeter(LOSS_NAMES, epoch, steps, device)
    replaced, start = 0, time.time()
    alone = 0 if getattr(args, 'pseudo_fakes', 'none') != 'none' else None   # self-blended pairs: reals left alone
    lr = optimizer.param_groups[0]['lr']
    zero = torch.zeros((), device=device)
    eraser = device_random_erasing(getattr(args, 'reprob', 0), getattr(args, 'remode', 'pixel'),
                                   getattr(args, 'recount', 1), device)

    bar = tqdm(data_loader, desc=f'epoch {epoch}', disable=not misc.is_main_process() or args.quiet,
               dynamic_ncols=True, mininterval=2.0, file=sys.stdout)
    for it, batch in enumerate(bar):
        if it % accum_iter == 0:
            lr = lr_sched.adjust_learning_rate(optimizer, it / steps + epoch, args)
        imgs = normalize_batch(batch['img'].to(device, non_blocking=True), bare.mean, bare.std)
        if eraser is not None:                                       # timm's erasing, on the normalised batch
            imgs = eraser(imgs)
        labels = batch['label'].to(device, non_blocking=True)
        replaced += int(batch['replaced'].sum())
        if alone is not None:
            alone += int(batch['no_blend'].sum())
        targets = labels
        if mixup_fn is not None:
            imgs, targets = mixup_fn(imgs, labels)
        rec_labels = recon_labels_after_mixing(labels, mixup_fn is not None)

        update = (it + 1) % accum_iter == 0 or it + 1 == steps
        sync_ctx = model.no_sync() if (args.distributed and not update) else nullcontext()
        with sync_ctx:
            with misc.autocast(device, amp_dtype):
                if use_recon:
                    logits, pred = model(imgs, return_recon=True)
                else:
                    logits = model(imgs)
            ce = criterion(logits.float(), targets)
            if use_recon:
                rec, l1_real, l1_fake = reconstruction_loss(pred, bare.recon_target(imgs), rec_labels,
                                                            args.recon, args.recon_lambda)
                loss = ce + args.recon_weight * rec
            else:
                rec = l1_real = l1_fake = zero
                loss = ce
            misc.backward_and_step(loss / accum_iter, optimizer, scaler, update=update,
                                   clip_grad=args.clip_grad, parameters=bare.parameters())

        meter.add(it, (loss, ce, rec, l1_real, l1_fake))
        if (it + 1) % args.print_freq == 0 or it + 1 == steps:        # the only host synchronisation
            mean = meter.flush(log_writer, it, lr)
            bar.set_postfix(ce=f'{mean[1]:.4f}', rec=f'{mean[2]:.4f}', lr=f'{lr:.2e}')

    stats = {f'train_{k}' if k == 'loss' else k: v for k, v in meter.epoch_mean().items()}
    stats.update(lr=lr, unreadable_images=replaced, epoch_time_s=round(time.time() - start, 2))
    if alone is not None:
        stats['reals_without_fake'] = alone       # not self-blendable, or the crop cut the blend away
    return stats


def misc_unwrap(model):
    """The bare module under torch.compile and DDP wrappers."""
    m = getattr(model, '_orig_mod', model)
    m = getattr(m, 'module', m)
    return getattr(m, '_orig_mod', m)


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_probs(model, data_loader, device, amp_dtype=None, desc='eval', quiet=False):
    """Fake probability of every item the loader yields (uint8 images, normalised on the device).
    -> (dataset indices [M] int64, probs [M] float32, usable [M] bool) as numpy arrays; `usable` is False
    for items the dataset could not read (FaceDataset's drop_unusable; their probs mean nothing). With
    several processes, every rank gets all ranks' items (util.loaders.ShardSampler order)."""
    model.eval()
    probs, indices, usable = [], [], []
    bare = misc_unwrap(model)
    for batch in tqdm(data_loader, desc=desc, disable=not misc.is_main_process() or quiet,
                      dynamic_ncols=True, mininterval=2.0, file=sys.stdout):
        imgs = normalize_batch(batch['img'].to(device, non_blocking=True), bare.mean, bare.std)
        with misc.autocast(device, amp_dtype):
            logits = model(imgs)
        probs.append(bare.fake_prob(logits))                          # stays on the device
        indices.append(batch['index'])
        bad = batch.get('unusable')
        usable.append(~bad if bad is not None else torch.ones(len(batch['index']), dtype=torch.bool))
    p = torch.cat(probs).cpu().numpy() if probs else np.zeros(0, np.float32)   # one read-back
    i = torch.cat(indices).numpy() if indices else np.zeros(0, np.int64)
    ok = torch.cat(usable).numpy() if usable else np.zeros(0, bool)
    if misc.is_dist():
        parts = [None] * misc.get_world_size()
        torch.distributed.all_gather_object(parts, (i, p, ok))
        i, p, ok = (np.concatenate([part[k] for part in parts]) for k in range(3))
    return i, p, ok


def evaluate_samples(model, samples, data_loader, device, amp_dtype=None, name='eval', quiet=False,
                     threshold=0.5):
    """Metrics (util.metrics.compute_metrics, frame and video) over a labelled sample list; frames that
    could not be read are left out and counted (`unreadable`), never replaced by others.
    -> (metrics dict, labels, scores) with labels/scores per evaluated frame."""
    metrics, _, labels, scores = evaluate_frames(model, samples, data_loader, device, amp_dtype, name, quiet,
                                                 threshold)
    return metrics, labels, scores


def evaluate_frames(model, samples, data_loader, device, amp_dtype=None, name='eval', quiet=False,
                    threshold=0.5):
    """evaluate_samples, also giving which samples were evaluated. -> (metrics, indices [M], labels, scores)"""
    idx, scores, ok = predict_probs(model, data_loader, device, amp_dtype, desc=name, quiet=quiet)
    idx, scores = idx[ok], scores[ok]
    labels = np.array([samples[j].label for j in idx], np.int64)
    videos = [samples[j].video for j in idx]
    metrics = (compute_metrics(labels, scores, videos, threshold=threshold) if len(idx) else
               dict(n=0, auc=None, eer=None, acc=None, note='no readable frame'))
    metrics['unreadable'] = int((~ok).sum())
    return metrics, idx, labels, scores


def ce_criterion(smoothing, mixing):
    """Soft-target CE under mixup/cutmix (the smoothing is in timm's targets), else CE with label smoothing."""
    if mixing:
        from timm.loss import SoftTargetCrossEntropy
        return SoftTargetCrossEntropy()
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing)
