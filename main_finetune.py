"""Stage 2: fine-tune a pre-trained MIFAE encoder into a deepfake detector, and evaluate detectors.

Train:     python main_finetune.py --finetune pretrain/checkpoint-last.pth --train_manifest ffpp_train.csv \
               --val_manifest ffpp_val.csv --output_dir ft [--test_manifests celebdf_test.csv dfdc_test.csv]
Evaluate:  python main_finetune.py --eval --resume ft/checkpoint-best.pth --test_manifests a.csv b.csv \
               --output_dir ft_eval
Several GPUs: torchrun --nproc_per_node 8 main_finetune.py ...   (same flags)

Loss = CE (label smoothing, or timm's soft targets under mixup/cutmix) + recon_weight x reconstruction
loss of the frozen pre-training decoder from the classifier's tokens, on real faces only (`--recon real`),
or also pushing fakes away (`--recon dual`: L1_real - recon_lambda x L1_fake), or off (`--recon none`).
The best checkpoint is chosen by frame AUC on --val_manifest, never on a test set.
"""
import argparse
import datetime
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

import models_vit
import util.misc as misc
from engine_finetune import (BalancedSampler, ShardSampler, ce_criterion, evaluate_samples, train_one_epoch,
                             uses_recon, write_eval_report)
from util.datasets import FaceDataset, FaceTransform, NO_LABEL, Sample, read_manifest
from util.lr_decay import param_groups_lrd


def get_args_parser():
    parser = argparse.ArgumentParser('MIFAE fine-tuning (deepfake detection)', add_help=False)
    parser.add_argument('--batch_size', default=64, type=int, help='batch size per GPU (effective: batch_size * accum_iter * #gpus)')
    parser.add_argument('--epochs', default=10, type=int)
    parser.add_argument('--accum_iter', default=1, type=int, help='accumulate gradients over this many iterations')

    g = parser.add_argument_group('model')
    g.add_argument('--model', default=None, type=str, metavar='MODEL',
                   help=f'one of {", ".join(models_vit.MODELS)} or its mae_* pre-training name '
                        f'(default: the one recorded in the --finetune / --resume checkpoint)')
    g.add_argument('--input_size', default=224, type=int, help='image size (pos_embed is resized when it differs '
                                                               'from the pre-training size)')
    g.add_argument('--global_pool', action='store_true', help='classify the mean patch token (fc_norm) instead of cls')
    g.add_argument('--drop_path', default=0.1, type=float, help='drop-path rate (trainable blocks only)')
    g.add_argument('--drop', default=0.0, type=float, help='dropout before the head')
    g.add_argument('--finetune', default='', help='pre-training checkpoint (MIFAE or original MAE) to start from')
    g.add_argument('--decoder', default='', help='take the frozen spatial decoder from this checkpoint instead')
    g.add_argument('--trainable_blocks', default=1, type=int,
                   help='train the last K transformer blocks (plus final norm and head); the rest is frozen')
    g.add_argument('--full_finetune', action='store_true', help='train the whole encoder (the decoder stays frozen)')
    g.add_argument('--recon', default='real', choices=['real', 'dual', 'none'],
                   help='real: L1 reconstruction on real faces; dual: minus recon_lambda x L1 on fakes; none: off')
    g.add_argument('--recon_weight', default=0.5, type=float, help='weight of the reconstruction loss')
    g.add_argument('--recon_lambda', default=0.1, type=float, help='weight of the fake term with --recon dual')
    g.add_argument('--recon_norm_pix', default='auto', choices=['auto', 'on', 'off'],
                   help='reconstruction target in per-patch normalised pixels (auto: as the pre-training run)')

    g = parser.add_argument_group('optimizer')
    g.add_argument('--weight_decay', type=float, default=0.05)
    g.add_argument('--lr', type=float, default=None, metavar='LR', help='absolute lr (default: blr * eff_batch / 256)')
    g.add_argument('--blr', type=float, default=1e-3, metavar='LR', help='base lr per 256 images')
    g.add_argument('--layer_decay', type=float, default=0.75, help='layer-wise lr decay (1 = off)')
    g.add_argument('--min_lr', type=float, default=1e-6, metavar='LR', help='floor of the cosine schedule')
    g.add_argument('--warmup_epochs', type=float, default=1, metavar='N')
    g.add_argument('--clip_grad', type=float, default=None, help='max gradient norm (off by default)')
    g.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')

    g = parser.add_argument_group('mixup / cutmix (timm; off when both alphas are 0)')
    g.add_argument('--mixup', type=float, default=0, help='mixup alpha')
    g.add_argument('--cutmix', type=float, default=0, help='cutmix alpha')
    g.add_argument('--cutmix_minmax', type=float, nargs=2, default=None, help='cutmix box ratio range (overrides alpha)')
    g.add_argument('--mixup_prob', type=float, default=1.0, help='probability of mixing a batch')
    g.add_argument('--mixup_switch_prob', type=float, default=0.5, help='probability of cutmix when both are on')
    g.add_argument('--mixup_mode', type=str, default='batch', choices=['batch', 'pair', 'elem'])

    g = parser.add_argument_group('data')
    g.add_argument('--train_manifest', default='', help='labelled manifest CSV to train on (e.g. FF++ c23 train)')
    g.add_argument('--val_manifest', default='', help='labelled manifest CSV (source domain) that picks the best checkpoint')
    g.add_argument('--test_manifests', nargs='+', default=[], help='manifest CSVs to evaluate (after training, or with --eval)')
    g.add_argument('--balance', action='store_true', help='draw real and fake training faces equally often (default)')
    g.add_argument('--no_balance', action='store_false', dest='balance')
    parser.set_defaults(balance=True)
    g.add_argument('--min_crop_scale', default=0.5, type=float, help='RandomResizedCrop minimum area fraction')
    g.add_argument('--strict_data', action='store_true', help='missing or unreadable images are errors, not skipped')
    g.add_argument('--num_workers', default=10, type=int)
    g.add_argument('--pin_mem', action='store_true', help='pin CPU memory in DataLoader')
    g.add_argument('--no_pin_mem', action='store_false', dest='pin_mem')
    parser.set_defaults(pin_mem=True)
    g.add_argument('--eval_batch_size', default=None, type=int, help='evaluation batch size (default 2 x batch_size)')
    g.add_argument('--threshold', default=0.5, type=float, help='fake probability above which a face counts as fake (ACC)')

    g = parser.add_argument_group('pseudo-fakes (self-blended images: a detector trained from real faces alone)')
    g.add_argument('--pseudo_fakes', default='none', choices=['none', 'sbi'],
                   help='sbi: each real training face with landmarks comes with its self-blended pseudo-fake in '
                        'the same batch, under the same crop and flip (--batch_size counts both)')
    g.add_argument('--pseudo_fakes_ratio', default=None, type=float, metavar='R',
                   help='share of pseudo-fakes among the fake partners when --train_manifest also holds fakes '
                        '(the rest are its fakes; default 0.5); 1 with a reals-only manifest')

    g = misc.add_run_args(parser, 'checkpoints, log.txt, eval.json / eval.md / ROC PNGs',
                          'fine-tuning checkpoint to resume (or, with --eval, to evaluate)')
    g.add_argument('--eval', action='store_true', help='only evaluate --resume on --test_manifests')
    return parser


def check_args(args):
    """Reject contradictory flags at start with a one-line reason."""
    def fail(msg):
        raise SystemExit(f'main_finetune.py: error: {msg}')
    if args.model is not None:
        try:
            models_vit.resolve_model_name(args.model)
        except ValueError as e:
            fail(str(e))
        p = models_vit.patch_size_of(args.model)
        if args.input_size % p:
            fail(f'--input_size {args.input_size} is not divisible by the patch size {p} of {args.model}')
        check_trainable_blocks(args, args.model)
    for flag in ('batch_size', 'accum_iter', 'epochs', 'print_freq'):
        if getattr(args, flag) < 1:
            fail(f'--{flag} must be at least 1')
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        fail('--eval_batch_size must be at least 1')
    if args.num_workers < 0:
        fail('--num_workers must be >= 0')
    if args.recon_weight < 0 or args.recon_lambda < 0:
        fail('--recon_weight and --recon_lambda must be >= 0')
    if args.trainable_blocks < 0:
        fail('--trainable_blocks must be >= 0')
    if not 0 < args.layer_decay <= 1:
        fail(f'--layer_decay {args.layer_decay} must lie in (0, 1]')
    if not 0 <= args.smoothing < 1:
        fail(f'--smoothing {args.smoothing} must lie in [0, 1)')
    if not 0 < args.min_crop_scale <= 1:
        fail(f'--min_crop_scale {args.min_crop_scale} must lie in (0, 1]')
    if (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax) and args.batch_size % 2:
        fail(f'--mixup/--cutmix need an even --batch_size, got {args.batch_size}')
    if args.amp == 'fp16' and not str(args.device).startswith('cuda'):
        fail('--amp fp16 needs a CUDA device (use bf16 or none on CPU)')
    manifests = list(args.test_manifests)
    if manifests and not args.output_dir:
        fail('--test_manifests need an --output_dir (eval.json, eval.md and the ROC curves are written there)')
    if args.eval:
        if not args.resume:
            fail('--eval needs --resume <fine-tuning checkpoint>')
        if not manifests:
            fail('--eval needs --test_manifests a.csv [b.csv ...]')
        if not Path(args.resume).is_file():
            fail(f'--resume {args.resume} does not exist')
    else:
        if not args.train_manifest:
            fail('--train_manifest is required to train (or pass --eval to evaluate)')
        manifests += [args.train_manifest] + ([args.val_manifest] if args.val_manifest else [])
        resuming = misc.find_resume_checkpoint(args)
        if not args.finetune and not resuming:
            fail('--finetune <pre-training checkpoint> is required (unless resuming a fine-tuning run)')
        for flag in ('finetune', 'decoder', 'resume'):
            if getattr(args, flag) and not Path(getattr(args, flag)).is_file():
                fail(f'--{flag} {getattr(args, flag)} does not exist')
    for m in manifests:
        if not Path(m).is_file():
            fail(f'manifest {m} does not exist')
        if not str(m).lower().endswith('.csv'):
            fail(f'{m}: a labelled manifest CSV is needed here (path,landmarks,label,video,dataset)')


def check_trainable_blocks(args, model_name):
    depth = models_vit.depth_of(model_name)
    if not args.full_finetune and args.trainable_blocks > depth:
        raise SystemExit(f'main_finetune.py: error: --trainable_blocks {args.trainable_blocks} exceeds the {depth} '
                         f'blocks of {models_vit.resolve_model_name(model_name)} (all of them: --full_finetune)')


# ---------------------------------------------------------------------- data
def read_labelled(manifest, videos=False):
    """Samples of a labelled manifest; one-line errors for a malformed file, rows without a label and, with
    `videos` (sets that get video metrics), a video id holding both real and fake frames."""
    try:
        samples = read_manifest(manifest)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'main_finetune.py: error: {e}') from None
    unlabelled = [s.path for s in samples if s.label == NO_LABEL]
    if unlabelled:
        raise SystemExit(f'main_finetune.py: error: {manifest}: {len(unlabelled)} row(s) have no label, '
                         f'e.g. {unlabelled[0]} (stage 2 needs 0 = real / 1 = fake)')
    if videos:
        label_of = {}
        for s in samples:
            if label_of.setdefault(s.video, s.label) != s.label:
                raise SystemExit(f'main_finetune.py: error: {manifest}: video {s.video!r} has both real and fake '
                                 f'frames: the video column must be unique per video')
    return samples


def load_labelled(manifest, strict=False, videos=False):
    """read_labelled's samples with image files that exist; landmarks are not needed in stage 2.

    Missing files: counted and listed (first few) and skipped, or an error with `strict`. -> (samples, missing)"""
    samples = read_labelled(manifest, videos)
    missing = [s.path for s in samples if not Path(s.path).is_file()]
    if missing:
        msg = (f'{manifest}: {len(missing)} of {len(samples)} image file(s) missing, e.g. '
               f'{", ".join(missing[:3])}')
        if strict:
            raise SystemExit(f'main_finetune.py: error: {msg} (--strict_data)')
        if misc.is_main_process():
            print(f'[data] {msg}; continuing without them (--strict_data makes this an error)', flush=True)
        gone = set(missing)
        samples = [s for s in samples if s.path not in gone]
        if not samples:
            raise SystemExit(f'main_finetune.py: error: {manifest}: none of its {len(missing)} image files exist')
    samples = [Sample(s.path, None, s.label, s.video, s.dataset) for s in samples]
    return samples, len(missing)


def eval_loader(samples, input_size, mean, std, args):
    """Every sample once, in order; an unreadable image is left out and counted, never replaced."""
    ds = FaceDataset(samples, FaceTransform(input_size, train=False, mean=mean, std=std, normalize=False),
                     strict=args.strict_data, require_label=True, drop_unusable=True)   # uint8; normalised on the device
    sampler = ShardSampler(len(ds), misc.get_rank(), misc.get_world_size())
    return DataLoader(ds, sampler=sampler, batch_size=args.eval_batch_size or 2 * args.batch_size,
                      num_workers=args.num_workers, pin_memory=args.pin_mem and str(args.device).startswith('cuda'),
                      drop_last=False)


def check_pseudo_fake_args(args):
    """One-line errors for --pseudo_fakes flags that cannot work together with the others."""
    if args.pseudo_fakes == 'none':
        if args.pseudo_fakes_ratio is not None:
            raise SystemExit('main_finetune.py: error: --pseudo_fakes_ratio needs --pseudo_fakes sbi')
        return
    if args.pseudo_fakes_ratio is not None and not 0 < args.pseudo_fakes_ratio <= 1:
        raise SystemExit(f'main_finetune.py: error: --pseudo_fakes_ratio {args.pseudo_fakes_ratio} must lie in (0, 1]')
    if args.batch_size < 2 or args.batch_size % 2:
        raise SystemExit(f'main_finetune.py: error: --pseudo_fakes sbi needs an even --batch_size (real + fake '
                         f'pairs), got {args.batch_size}')
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        raise SystemExit('main_finetune.py: error: --pseudo_fakes sbi does not combine with --mixup / --cutmix '
                         '(a face that cannot be self-blended leaves an odd batch)')


def pseudo_fake_loader(samples, args):
    """Training pairs (real, pseudo-fake or manifest fake) from the real faces of --train_manifest; the sampler
    runs over the reals, batches hold --batch_size / 2 pairs. -> (sampler, loader)"""
    from util.self_blend import PseudoFakePairs, collate_pairs, count_unusable_landmarks
    landmarks = {s.path: s.landmarks for s in read_manifest(args.train_manifest)}      # load_labelled drops them
    reals = [Sample(s.path, landmarks.get(s.path), 0, s.video, s.dataset) for s in samples if s.label == 0]
    fakes = [s for s in samples if s.label == 1]
    if not reals:
        raise SystemExit(f'main_finetune.py: error: --train_manifest {args.train_manifest} holds no real faces: '
                         f'--pseudo_fakes sbi makes its fakes from real ones')
    ratio = args.pseudo_fakes_ratio if args.pseudo_fakes_ratio is not None else (0.5 if fakes else 1.0)
    ds = PseudoFakePairs(reals, FaceTransform(args.input_size, train=True, scale=(args.min_crop_scale, 1.0),
                                              normalize=False), fakes, ratio, strict=args.strict_data)
    pairs, world = args.batch_size // 2, misc.get_world_size()
    if len(ds) < pairs * world:
        raise SystemExit(f'main_finetune.py: error: --train_manifest {args.train_manifest}: {len(ds)} real faces '
                         f'are fewer than one batch of pairs ({pairs} x {world} processes)')
    if misc.is_main_process():
        bad = count_unusable_landmarks(reals)
        print(f'[data] pseudo-fakes: {len(reals)} real faces, each with a fake partner: self-blended with '
              f'probability {ds.ratio:g}{f", else one of {len(fakes)} manifest fakes" if ds.ratio < 1 else ""}'
              + (f'; {bad} without usable landmarks are used as plain reals' if bad else ''), flush=True)
    if args.distributed:
        sampler = DistributedSampler(ds, num_replicas=world, rank=misc.get_rank(), shuffle=True, seed=args.seed)
    else:
        sampler = RandomSampler(ds)
    return sampler, DataLoader(ds, sampler=sampler, batch_size=pairs, num_workers=args.num_workers,
                               collate_fn=collate_pairs, drop_last=True,
                               pin_memory=args.pin_mem and str(args.device).startswith('cuda'),
                               persistent_workers=args.num_workers > 0)


def train_loader(samples, args):
    ds = FaceDataset(samples, FaceTransform(args.input_size, train=True, scale=(args.min_crop_scale, 1.0),
                                            normalize=False), strict=args.strict_data, require_label=True)
    world = misc.get_world_size()
    if len(ds) < args.batch_size * world:
        raise SystemExit(f'main_finetune.py: error: --train_manifest {args.train_manifest}: {len(ds)} images are '
                         f'fewer than one batch ({args.batch_size} x {world} processes)')
    if args.balance:
        sampler = BalancedSampler([s.label for s in samples], len(ds), args.seed, misc.get_rank(), world)
    elif args.distributed:
        sampler = DistributedSampler(ds, num_replicas=world, rank=misc.get_rank(), shuffle=True, seed=args.seed)
    else:
        sampler = RandomSampler(ds)
    return sampler, DataLoader(ds, sampler=sampler, batch_size=args.batch_size, num_workers=args.num_workers,
                               pin_memory=args.pin_mem and str(args.device).startswith('cuda'), drop_last=True,
                               persistent_workers=args.num_workers > 0)


# ---------------------------------------------------------------------- model
RESUME_FLAGS = ('model', 'input_size', 'global_pool', 'full_finetune', 'trainable_blocks')   # shape model / optimizer


def resume_meta(path, args):
    """The `detector` entry of the fine-tuning checkpoint to resume. One-line errors when it has none (e.g.
    the pre-training checkpoint, auto-resumed from a shared --output_dir) and naming each flag that differs
    from the checkpoint's run in what shapes the model or its optimizer."""
    try:
        ckpt = misc.load_checkpoint(path, mmap=True)          # the metadata only: tensors stay on disk
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'main_finetune.py: error: {e}') from None
    meta = ckpt.get('detector') if isinstance(ckpt, dict) else None
    how = '--resume' if args.resume else 'auto-resume (--output_dir)'
    if not isinstance(meta, dict):
        raise SystemExit(f'main_finetune.py: error: {how} {path} is not a fine-tuning checkpoint (no "detector" '
                         f'entry): pass the pre-training checkpoint as --finetune and choose a new --output_dir')
    given = dict(model=args.model and models_vit.resolve_model_name(args.model), input_size=args.input_size,
                 global_pool=args.global_pool, full_finetune=args.full_finetune,
                 trainable_blocks=None if args.full_finetune else args.trainable_blocks)
    show = lambda v: ('on' if v else 'off') if isinstance(v, bool) else v  # noqa: E731
    differ = [f'--{k} {show(given[k])} (checkpoint: {show(meta[k])})' for k in RESUME_FLAGS
              if given[k] is not None and k in meta and given[k] != meta[k]
              and not (k == 'trainable_blocks' and meta.get('full_finetune'))]
    if differ:
        raise SystemExit(f'main_finetune.py: error: cannot {how} {path} with {", ".join(differ)}: use the '
                         f'checkpoint\'s values, or another --output_dir / --no_auto_resume to start afresh')
    return meta


def build_model(args):
    """The detector from --finetune (a pre-training checkpoint), or an empty one to resume into.
    Sets args.model (from the checkpoints when not given) and args.norm_pix. -> (model, decoder_loaded)"""
    resume = misc.find_resume_checkpoint(args)
    meta = resume_meta(resume, args) if resume else None
    if args.model is None:
        src = meta.get('model') if meta else None
        if src is None and args.finetune:
            try:
                src = misc.checkpoint_args(misc.load_checkpoint(args.finetune)).get('model')
            except (ValueError, FileNotFoundError) as e:
                raise SystemExit(f'main_finetune.py: error: {e}') from None
        if src is None:
            raise SystemExit('main_finetune.py: error: --model is needed: the checkpoint does not record its model')
        args.model = src
    try:
        name = models_vit.resolve_model_name(args.model)
    except ValueError as e:
        raise SystemExit(f'main_finetune.py: error: {e}') from None
    if args.input_size % models_vit.patch_size_of(name):
        raise SystemExit(f'main_finetune.py: error: --input_size {args.input_size} is not divisible by the patch '
                         f'size of {name}')
    check_trainable_blocks(args, name)
    make = lambda norm_pix: models_vit.MODELS[name](  # noqa: E731
        img_size=args.input_size, global_pool=args.global_pool, drop_rate=args.drop, drop_path_rate=args.drop_path,
        norm_pix=norm_pix)
    decoder_loaded = True
    if meta is None:
        model = make(False)
        try:
            info = models_vit.load_pretrained(model, args.finetune, args.decoder or None, name)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f'main_finetune.py: error: {e}') from None
        decoder_loaded = info['decoder_loaded']
        if not decoder_loaded and args.recon != 'none':
            raise SystemExit(f'main_finetune.py: error: {args.decoder or args.finetune} holds no spatial decoder '
                             f'(an encoder-only MAE checkpoint?): pass --decoder <file with the decoder> or --recon none')
        norm_pix = {'on': True, 'off': False}.get(args.recon_norm_pix, bool(info['norm_pix_loss']))
        model.norm_pix = norm_pix
    else:                                                      # resume: the checkpoint's meta decides
        norm_pix = {'on': True, 'off': False}.get(args.recon_norm_pix, bool(meta.get('norm_pix', False)))
        decoder_loaded = bool(meta.get('decoder', True))
        model = make(norm_pix)
    args.model, args.norm_pix = name, model.norm_pix
    model.freeze(args.trainable_blocks, args.full_finetune)
    return model, decoder_loaded


def ddp_find_unused(args):
    """Whether DDP must look for parameters without a gradient: under --global_pool the final norm feeds only
    the decoder, which the training loop skips without reconstruction (--recon none or --recon_weight 0)."""
    return args.global_pool and not uses_recon(args)


def trainable_summary(model):
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return f'{n_train / 1e6:.2f}M of {n_all / 1e6:.1f}M parameters train'


# ---------------------------------------------------------------------- evaluation on test sets
def evaluate_sets(model, manifests, input_size, mean, std, device, amp_dtype, args, checkpoint=None):
    """Frame/video metrics per test manifest; table printed, eval.json / eval.md / ROC PNGs written (rank 0)."""
    results, curves, names = {}, {}, set()
    for m in manifests:
        name = Path(m).stem
        if name in names:
            name = f'{Path(m).parent.name}_{name}'
        while name in names:
            name += '_'
        names.add(name)
        samples, missing = load_labelled(m, args.strict_data)
        loader = eval_loader(samples, input_size, mean, std, args)
        try:
            metrics, labels, scores = evaluate_samples(model, samples, loader, device, amp_dtype, name=name,
                                                       quiet=args.quiet, threshold=args.threshold)
        except ValueError as e:                                # the metrics' own checks (video ids: checked up front)
            raise SystemExit(f'main_finetune.py: error: {m}: {e}') from None
        metrics.update(manifest=str(m), missing=missing)
        results[name], curves[name] = metrics, (labels, scores)
    if misc.is_main_process():
        table = write_eval_report(results, args.output_dir, checkpoint, curves)
        print(table, flush=True)
        print(f'Wrote {Path(args.output_dir) / "eval.json"}, eval.md and ROC curves', flush=True)
    return results


# flags --eval does not use: the checkpoint decides the model, and nothing trains
EVAL_IGNORED = ('model', 'input_size', 'global_pool', 'drop_path', 'drop', 'finetune', 'decoder', 'trainable_blocks',
                'full_finetune', 'recon', 'recon_weight', 'recon_lambda', 'recon_norm_pix', 'epochs', 'accum_iter',
                'weight_decay', 'lr', 'blr', 'layer_decay', 'min_lr', 'warmup_epochs', 'clip_grad', 'smoothing',
                'mixup', 'cutmix', 'cutmix_minmax', 'mixup_prob', 'mixup_switch_prob', 'mixup_mode',
                'train_manifest', 'val_manifest', 'balance', 'min_crop_scale', 'pseudo_fakes', 'pseudo_fakes_ratio')


def eval_ignored_flags(args):
    """The EVAL_IGNORED flags given with a value other than their default, as they would be typed."""
    parser = get_args_parser()
    shown = []
    for k in EVAL_IGNORED:
        v = getattr(args, k)
        if v != parser.get_default(k):
            shown.append((f'--{k}' if v else f'--no_{k}') if isinstance(v, bool) else
                         f'--{k} {" ".join(map(str, v)) if isinstance(v, (list, tuple)) else v}')
    return shown


def run_eval(args, device, amp_dtype):
    try:
        model, meta = models_vit.load_detector(args.resume, device)
    except ValueError as e:
        raise SystemExit(f'main_finetune.py: error: {e}') from None
    if misc.is_main_process():
        ignored = eval_ignored_flags(args)
        if ignored:
            print(f'main_finetune.py: note: --eval takes the model from {args.resume} and trains nothing: '
                  f'ignoring {", ".join(ignored)}', flush=True)
        print(f'Evaluating {args.resume}: {meta["model"]} at {meta["input_size"]} px'
              f'{" (global pool)" if meta.get("global_pool") else ""}')
    net = misc.maybe_compile(model, device, args.compile)
    return evaluate_sets(net, args.test_manifests, meta['input_size'], meta['mean'], meta['std'], device,
                         amp_dtype, args, checkpoint=args.resume)


# ---------------------------------------------------------------------- main
def main(args):
    check_args(args)
    check_pseudo_fake_args(args)
    for m in args.test_manifests:                              # a bad test set fails now, not after training
        read_labelled(m, videos=True)
    device = misc.setup_run(args)
    amp_dtype, scaler = misc.resolve_amp(args.amp, device)
    if args.eval:
        results = run_eval(args, device, amp_dtype)
        if args.distributed:
            torch.distributed.destroy_process_group()
        return dict(test=results)

    train_samples, _ = load_labelled(args.train_manifest, args.strict_data)
    classes = {s.label for s in train_samples}
    if len(classes) < 2 and args.pseudo_fakes == 'none':
        only = f'--train_manifest {args.train_manifest} holds {"fake" if 1 in classes else "real"} faces only'
        if args.balance:
            raise SystemExit(f'main_finetune.py: error: {only}: --balance needs both classes '
                             f'(--no_balance trains on it anyway)')
        if misc.is_main_process():
            print(f'main_finetune.py: warning: {only}: the detector learns a single class', flush=True)
    val_samples = load_labelled(args.val_manifest, args.strict_data, videos=True)[0] if args.val_manifest else None
    if val_samples is not None and len({s.label for s in val_samples}) < 2:
        raise SystemExit(f'main_finetune.py: error: --val_manifest {args.val_manifest} holds one class only: '
                         f'its AUC is undefined, so it cannot pick the best checkpoint')
    model, decoder_loaded = build_model(args)
    model.to(device)
    model_without_ddp = model
    sampler, loader = (pseudo_fake_loader if args.pseudo_fakes != 'none' else train_loader)(train_samples, args)
    val_loader = eval_loader(val_samples, args.input_size, model.mean, model.std, args) if val_samples else None

    eff_batch = args.batch_size * args.accum_iter * misc.get_world_size()
    if args.lr is None:
        args.lr = args.blr * eff_batch / 256
    groups = param_groups_lrd(model_without_ddp, args.weight_decay, layer_decay=args.layer_decay)
    optimizer = misc.make_adamw(groups, lr=args.lr, betas=(0.9, 0.999), device=device)
    ckpt = misc.resume_training(args, model_without_ddp, optimizer, scaler)
    best_auc = ckpt.get('best_val_auc') if ckpt else None

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        from timm.data import Mixup
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=2)
    criterion = ce_criterion(args.smoothing, mixup_fn is not None)

    model_net = model
    if args.distributed:
        model_net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if device.type == 'cuda' else None,
            find_unused_parameters=ddp_find_unused(args))
    model_net = misc.maybe_compile(model_net, device, args.compile)
    meta = models_vit.detector_meta(model_without_ddp, args.model, decoder=decoder_loaded,
                                    trainable_blocks=args.trainable_blocks, full_finetune=args.full_finetune,
                                    recon=args.recon)

    if misc.is_main_process():
        print(f'{args.model} at {args.input_size} px: {trainable_summary(model_without_ddp)} '
              f'({"full" if args.full_finetune else f"last {args.trainable_blocks} block(s) + norm + head"}); '
              f'recon {args.recon} x {args.recon_weight}{" (norm-pix target)" if args.norm_pix else ""}')
        print(f'{len(train_samples)} training faces ({sum(s.label for s in train_samples)} fake)'
              f'{", balanced sampling" if args.balance and args.pseudo_fakes == "none" else ""}; '
              f'{len(val_samples) if val_samples else 0} validation faces')
        print(f'effective batch size {eff_batch}; lr {args.lr:.3e} (blr {args.blr:.3e} x {eff_batch} / 256), '
              f'layer decay {args.layer_decay}')
        print(json.dumps(vars(args), default=str))
    log_writer = misc.make_log_writer(args.log_dir)

    start_time, stats = time.time(), {}
    for epoch in range(args.start_epoch, args.epochs):
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
        stats = train_one_epoch(model_net, criterion, loader, optimizer, device, epoch, amp_dtype, scaler,
                                mixup_fn, log_writer, args)
        stats['epoch'] = epoch
        val = None
        if val_loader is not None:
            val, _, _ = evaluate_samples(model_net, val_samples, val_loader, device, amp_dtype, name='val',
                                         quiet=args.quiet, threshold=args.threshold)
            stats.update(val_auc=val['auc'], val_video_auc=val.get('video_auc'), val_eer=val['eer'],
                         val_acc=val['acc'], val_unreadable=val['unreadable'])
            if log_writer is not None and val['auc'] is not None:      # None: no readable validation frame
                log_writer.add_scalar('val_auc', val['auc'], epoch)
        improved = val is not None and val['auc'] is not None and (best_auc is None or val['auc'] > best_auc)
        if improved:
            best_auc = val['auc']
        stats['best_val_auc'] = best_auc
        if args.output_dir:
            extra = dict(detector=meta, best_val_auc=best_auc, val=val, log_stats=stats)   # log_stats: see misc.complete_log
            misc.save_checkpoint(args.output_dir, 'checkpoint-last.pth', model_without_ddp, optimizer, epoch,
                                 args, scaler, **extra)
            if improved:
                misc.save_checkpoint(args.output_dir, 'checkpoint-best.pth', model_without_ddp, optimizer, epoch,
                                     args, scaler, **extra)
        misc.log_epoch(args.output_dir, epoch, stats)
    if log_writer is not None:
        log_writer.close()
    if misc.is_main_process():
        print(f'Training time {datetime.timedelta(seconds=int(time.time() - start_time))}'
              + (f'; best validation AUC {best_auc:.4f}' if best_auc is not None else ''))

    result = dict(stats, best_val_auc=best_auc)
    if args.test_manifests:
        best = Path(args.output_dir) / ('checkpoint-best.pth' if best_auc is not None else 'checkpoint-last.pth')
        if val_loader is not None and best_auc is None and misc.is_main_process():
            print('No epoch had a validation AUC (no readable validation frame): testing the last checkpoint')
        if args.distributed:
            torch.distributed.barrier()
        model_without_ddp.load_state_dict(misc.load_checkpoint(best)['model'])
        if misc.is_main_process():
            print(f'Testing {best}')
        result['test'] = evaluate_sets(model_net, args.test_manifests, args.input_size, model_without_ddp.mean,
                                       model_without_ddp.std, device, amp_dtype, args, checkpoint=best)
    if args.distributed:
        torch.distributed.destroy_process_group()
    return result


if __name__ == '__main__':
    parser = argparse.ArgumentParser('MIFAE fine-tuning (deepfake detection)', parents=[get_args_parser()])
    main(parser.parse_args())
