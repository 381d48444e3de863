"""The loaders of both stages, built in one place: the training loaders of stage 1 and 2 and the self-blended
pairs, and stage 2's evaluation loader.

Every training loader draws a shuffled order (DistributedSampler under torchrun, else RandomSampler, or
--balance's BalancedSampler), drops the last incomplete batch, pins memory on CUDA, keeps its workers, refuses a
set smaller than one batch and an --accum_iter beyond one epoch, and ends the run with one line of its entry
point on a DataError (ExitOnDataError); each unusable file is reported once (util.datasets.ReportOnce).
The evaluation loader visits every sample once, in order, split over the ranks without padding.
"""
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

import models_mae
import util.misc as misc
from util import protocols
from util.augment import TimmTrainTransform
from util.datasets import NO_LABEL, ExitOnDataError, FaceDataset, FaceTransform, Sample, drop_duplicates, read_manifest

FINETUNE, PRETRAIN = 'main_finetune.py', 'main_pretrain.py'
error = partial(misc.usage_error, FINETUNE)                 # stage 2's one-line errors


# ---------------------------------------------------------------------- labelled samples (stage 2)
def read_labelled(manifest, videos=False):
    """Samples of a labelled manifest; one-line errors for a malformed file, rows without a label and, with
    `videos` (sets that get video metrics), a video id holding both real and fake frames."""
    try:
        samples = read_manifest(manifest)
    except (ValueError, FileNotFoundError) as e:
        raise error(str(e)) from None
    unlabelled = [s.path for s in samples if s.label == NO_LABEL]
    if unlabelled:
        raise error(f'{manifest}: {len(unlabelled)} row(s) have no label, '
                    f'e.g. {unlabelled[0]} (stage 2 needs 0 = real / 1 = fake)')
    samples, _ = protocols.qualify_videos(samples)     # one video = one (dataset, method, video id)
    if videos:
        label_of = {}
        for s in samples:
            if label_of.setdefault(s.video, s.label) != s.label:
                raise error(f'{manifest}: video {s.video!r} has both real and fake '
                            f'frames: the video column must be unique per video')
    return samples


def load_labelled(manifest, strict=False, videos=False, keep_repeats=False):
    """read_labelled's samples with image files that exist; landmarks are not needed in stage 2.

    Rows that repeat an earlier row exactly are left out and counted (each image is scored once), or with
    `keep_repeats` (training) kept and counted.
    Missing files: counted and listed (first few) and skipped, or an error with `strict`. -> (samples, missing)"""
    samples = read_labelled(manifest, videos)
    unique, repeats = drop_duplicates(samples)
    if repeats:
        if misc.is_main_process():
            print(f'[data] {manifest}: {repeats} rows repeat an earlier row exactly; '
                  f'{"kept" if keep_repeats else "left out: each image is scored once"}', flush=True)
        samples = samples if keep_repeats else unique
    missing = [s.path for s in samples if not Path(s.path).is_file()]
    if missing:
        msg = (f'{manifest}: {len(missing)} of {len(samples)} image file(s) missing, e.g. '
               f'{", ".join(missing[:3])}')
        if strict:
            raise error(f'{msg} (--strict_data)')
        if misc.is_main_process():
            print(f'[data] {msg}; continuing without them (--strict_data makes this an error)', flush=True)
        gone = set(missing)
        samples = [s for s in samples if s.path not in gone]
        if not samples:
            raise error(f'{manifest}: none of its {len(missing)} image files exist')
    samples = [Sample(s.path, None, s.label, s.video, s.dataset, s.method) for s in samples]
    return samples, len(missing)


def select_train_methods(samples, manifest, args):
    """The reals and the --train_methods fakes of a training / validation manifest."""
    kept = protocols.select_methods(samples, args.train_methods)
    if not any(s.label == 1 for s in kept):
        found = sorted({s.method for s in samples if s.label == 1})
        raise error(f'--train_methods {args.train_methods}: no such fake in {manifest} '
                         f'(its methods: {", ".join(found) or "none: no method column"})')
    if misc.is_main_process():
        print(f'[data] {manifest}: {sum(s.label == 1 for s in kept)} of {sum(s.label == 1 for s in samples)} fakes '
              f'from --train_methods {args.train_methods}; all {sum(s.label == 0 for s in kept)} reals', flush=True)
    return kept


def finetune_sets(args):
    """Stage 2's training and validation samples (--train_methods applied); a training set of one class is
    refused with --balance and noted otherwise, a validation set of one class refused. -> (train, val or None)"""
    train_samples, _ = load_labelled(args.train_manifest, args.strict_data, keep_repeats=True)
    if args.train_methods:
        train_samples = select_train_methods(train_samples, args.train_manifest, args)
    classes = {s.label for s in train_samples}
    if len(classes) < 2 and args.pseudo_fakes == 'none':
        only = f'--train_manifest {args.train_manifest} holds {"fake" if 1 in classes else "real"} faces only'
        if args.balance:
            raise error(f'{only}: --balance needs both classes '
                        f'(--no_balance trains on it anyway)')
        if misc.is_main_process():
            print(f'{FINETUNE}: warning: {only}: the detector learns a single class', flush=True)
    val_samples = (load_labelled(args.val_manifest, args.strict_data, videos=True)[0]
                   if args.val_manifest else None)
    if val_samples is not None and args.train_methods:
        val_samples = select_train_methods(val_samples, args.val_manifest, args)
    if val_samples is not None and len({s.label for s in val_samples}) < 2:
        raise error(f'--val_manifest {args.val_manifest} holds one class only: '
                    f'its AUC is undefined, so it cannot pick the best checkpoint')
    return train_samples, val_samples


# ---------------------------------------------------------------------- sampling
class BalancedSampler(Sampler):
    """Draws real and fake samples equally often (with replacement), `num_samples` per epoch in total,
    split over the distributed ranks (each rank takes every world-th index of one shared draw)."""

    def __init__(self, labels, num_samples=None, seed=0, rank=0, world_size=1):
        labels = torch.as_tensor(labels)
        counts = torch.bincount(labels.clamp_min(0), minlength=2).double()
        if (counts == 0).any():
            raise ValueError('--balance needs both real and fake samples in the training manifest')
        self.weights = 1.0 / counts[labels]
        self.total = int(num_samples or len(labels))
        self.seed, self.rank, self.world, self.epoch = seed, rank, world_size, 0
        self.per_rank = self.total // world_size

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        draw = torch.multinomial(self.weights, self.per_rank * self.world, replacement=True, generator=g)
        return iter(draw[self.rank::self.world].tolist())

    def __len__(self):
        return self.per_rank


class ShardSampler(Sampler):
    """Evaluation order: indices rank, rank + world, ... (no padding, no duplicates)."""

    def __init__(self, n, rank=0, world_size=1):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)

# ---------------------------------------------------------------------- training
def training_loader(ds, args, prog, what, batch_size=None, sampler=None, collate_fn=None, unit='images',
                    batch='one batch'):
    """The shuffled training DataLoader of `ds` (see the top of this file). `what` names the data in messages
    (e.g. '--data_path faces.csv'). -> (sampler, loader)"""
    batch_size, world = batch_size or args.batch_size, misc.get_world_size()
    if len(ds) < batch_size * world:
        raise misc.usage_error(prog, f'{what}: {len(ds)} {unit} are fewer than {batch} '
                                     f'({batch_size} x {world} processes)')
    if sampler is None and args.distributed:
        sampler = DistributedSampler(ds, num_replicas=world, rank=misc.get_rank(), shuffle=True, seed=args.seed)
    elif sampler is None:
        sampler = RandomSampler(ds)
    loader = DataLoader(ds, sampler=sampler, batch_size=batch_size, num_workers=args.num_workers,
                        collate_fn=collate_fn, drop_last=True,
                        pin_memory=args.pin_mem and str(args.device).startswith('cuda'),
                        persistent_workers=args.num_workers > 0)
    if problem := misc.accum_problem(args, loader):
        raise misc.usage_error(prog, problem)
    return sampler, ExitOnDataError(loader, prog)


def pretrain_loader(args, samples):
    """Stage 1: the faces of --data_path with their facial / random patch masks. -> (dataset, sampler, loader)"""
    transform = FaceTransform(args.input_size, train=True, scale=(args.min_crop_scale, 1.0), normalize=False)
    try:        # a mostly unusable set, or with --strict_data an unusable sample: one line naming files
        dataset = FaceDataset(samples, transform,
                              mask_strategy=args.mask_strategy, patch_size=models_mae.arch_of(args.model)['patch_size'],
                              mask_ratio=args.mask_ratio, num_regions=args.num_mask_regions, strict=args.strict_data)
    except ValueError as e:
        raise misc.usage_error(PRETRAIN, f'--data_path {args.data_path}: {e}') from None
    return (dataset,) + training_loader(dataset, args, PRETRAIN, f'--data_path {args.data_path}')


def train_transform(args):
    """The training crop + flip (uint8 out): timm's with RandAugment --aa (PIL), or FaceTransform's (OpenCV)."""
    if args.aa == 'none':
        return FaceTransform(args.input_size, train=True, scale=(args.min_crop_scale, 1.0), normalize=False)
    try:
        return TimmTrainTransform(args.input_size, (args.min_crop_scale, 1.0), args.aa)
    except (ValueError, KeyError, AssertionError) as e:
        raise error(f'--aa {args.aa} is not a timm augmentation policy ({e})') from None
    except RuntimeError as e:                                  # a Pillow the recipe cannot run on
        raise error(str(e)) from None


def finetune_loader(samples, args):
    """Stage 2: the labelled faces of --train_manifest, --balance'd or in their natural ratio. -> (sampler, loader)"""
    try:        # a mostly unusable set, or with --strict_data an unusable sample: one line naming files
        ds = FaceDataset(samples, train_transform(args), strict=args.strict_data, require_label=True)
    except ValueError as e:
        raise error(f'--train_manifest {args.train_manifest}: {e}') from None
    sampler = (BalancedSampler([s.label for s in samples], len(ds), args.seed, misc.get_rank(), misc.get_world_size())
               if args.balance else None)
    return training_loader(ds, args, FINETUNE, f'--train_manifest {args.train_manifest}', sampler=sampler)


def pseudo_fake_loader(samples, args):
    """Training pairs (real, pseudo-fake or manifest fake) from the real faces of --train_manifest; the sampler
    runs over the reals, batches hold --batch_size / 2 pairs. -> (sampler, loader)"""
    from util.self_blend import PseudoFakePairs, collate_pairs, count_unusable_landmarks
    landmarks = {s.path: s.landmarks for s in read_manifest(args.train_manifest)}      # load_labelled drops them
    reals = [Sample(s.path, landmarks.get(s.path), 0, s.video, s.dataset) for s in samples if s.label == 0]
    fakes = [s for s in samples if s.label == 1]
    if not reals:
        raise error(f'--train_manifest {args.train_manifest} holds no real faces: '
                    f'--pseudo_fakes sbi makes its fakes from real ones')
    ratio = args.pseudo_fakes_ratio if args.pseudo_fakes_ratio is not None else (0.5 if fakes else 1.0)
    try:        # mostly unreadable reals, or with --strict_data one: one line naming files
        ds = PseudoFakePairs(reals, train_transform(args), fakes, ratio, strict=args.strict_data)
    except ValueError as e:
        raise error(f'--train_manifest {args.train_manifest}: {e}') from None
    sampler, loader = training_loader(ds, args, FINETUNE, f'--train_manifest {args.train_manifest}',
                                      batch_size=args.batch_size // 2, collate_fn=collate_pairs, unit='real faces',
                                      batch='one batch of pairs')
    if misc.is_main_process():
        bad = count_unusable_landmarks(reals)
        print(f'[data] pseudo-fakes: {len(reals)} real faces, each with a fake partner: self-blended with '
              f'probability {ds.ratio:g}{f", else one of {len(fakes)} manifest fakes" if ds.ratio < 1 else ""}'
              + (f'; {bad} without usable landmarks are used as plain reals' if bad else ''), flush=True)
    return sampler, loader


# ---------------------------------------------------------------------- evaluation
def eval_loader(samples, input_size, mean, std, args, crop_pct=None, perturbation=None):
    """Every sample once, in order; an unreadable image is left out and counted, never replaced.
    `perturbation` (type, level): the crops degraded as read (crop protocol)."""
    transform = FaceTransform(input_size, train=False, mean=mean, std=std, normalize=False, crop_pct=crop_pct)
    kw = dict(strict=args.strict_data, require_label=True, drop_unusable=True)       # uint8; normalised on the device
    ds = (FaceDataset(samples, transform, **kw) if perturbation is None else
          protocols.PerturbedFaces(samples, transform, *perturbation, seed=args.seed, **kw))
    sampler = ShardSampler(len(ds), misc.get_rank(), misc.get_world_size())
    return ExitOnDataError(DataLoader(ds, sampler=sampler, batch_size=args.eval_batch_size or 2 * args.batch_size,
                                      num_workers=args.num_workers, drop_last=False,
                                      pin_memory=args.pin_mem and str(args.device).startswith('cuda')), FINETUNE)
