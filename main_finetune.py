"""Stage 2: fine-tune a pre-trained MIFAE encoder into a deepfake detector, and evaluate detectors.

Train:     python main_finetune.py --finetune pretrain/checkpoint-last.pth --train_manifest ffpp_train.csv \
               --val_manifest ffpp_val.csv --output_dir ft [--test_manifests celebdf_test.csv dfdc_test.csv]
Evaluate:  python main_finetune.py --eval --resume ft/checkpoint-best.pth --test_manifests a.csv b.csv \
               --output_dir ft_eval
Several GPUs: torchrun --nproc_per_node 8 main_finetune.py ...   (same flags)

Recipe: the reference code's stage-2 values by default (--recipe; explicit flags win): timm's crop, flip,
RandAugment and random erasing, mixup/cutmix, layer decay 0.65, centre-crop evaluation, natural class ratio.
Loss = CE (label smoothing, or timm's soft targets under mixup/cutmix) + recon_weight x reconstruction
loss of the frozen pre-training decoder from the classifier's tokens, on real faces only (`--recon real`),
or also pushing fakes away (`--recon dual`: L1_real - recon_lambda x L1_fake), or off (`--recon none`).
The best checkpoint is chosen by frame AUC on --val_manifest, never on a test set.
"""
import argparse
import datetime
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

import models_vit
import util.checkpoint as checkpoint
import util.hub as hub
import util.misc as misc
from engine_finetune import (
    BalancedSampler,
    ShardSampler,
    ce_criterion,
    evaluate_frames,
    evaluate_samples,
    format_table,
    train_one_epoch,
    uses_recon,
    write_eval_report,
)
from util import protocols
from util.augment import TimmTrainTransform
from util.datasets import NO_LABEL, ExitOnDataError, FaceDataset, FaceTransform, Sample, drop_duplicates, read_manifest
from util.fileio import WriteError, output_dir_problem
from util.lr_decay import param_groups_lrd
from util.metrics import compute_metrics
from util.perturb import VIDEO_KINDS, parse_spec

error = partial(misc.usage_error, 'main_finetune.py')     # raise error('--flag ...: what to do')


# ---------------------------------------------------------------------- recipes
# The reference's stage-2 values (partial_finetuning_with_reconstruction.py's flags, util/datasets.py's
# build_transform, the head's trunc_normal_(std=2e-5), Recon_Loss.DualReconLoss(lambda_fake=1.0)).
REFERENCE_RECIPE = dict(
    epochs=100, batch_size=64, accum_iter=1, blr=5e-4, layer_decay=0.65, warmup_epochs=5, min_lr=1e-6,
    weight_decay=0.05, clip_grad=None, drop_path=0.1, smoothing=0.1,
    mixup=0.8, cutmix=1.0, cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode='batch',
    aa='rand-m9-mstd0.5-inc1', reprob=0.25, remode='pixel', recount=1, min_crop_scale=0.08,
    eval_crop_pct=224 / 256, balance=False, head_init_std=2e-5, recon_weight=0.5, recon_lambda=1.0,
    trainable_blocks=1, full_finetune=False, global_pool=False)
RECIPES = {
    'reference': REFERENCE_RECIPE,
    'light': dict(REFERENCE_RECIPE, epochs=10, blr=1e-3, layer_decay=0.75, warmup_epochs=1, mixup=0, cutmix=0,
                  aa='none', reprob=0, min_crop_scale=0.5, eval_crop_pct=0, balance=True, head_init_std=0.02,
                  recon_lambda=0.1),
}


def given_flags(parser, argv):
    """The dests that `argv` sets explicitly: parsed once more with every default suppressed."""
    saved = [(a, a.default) for a in parser._actions]
    saved_defaults = dict(parser._defaults)
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        parser._defaults.clear()
        return set(vars(parser.parse_args(argv)))
    finally:
        for a, d in saved:
            a.default = d
        parser._defaults.update(saved_defaults)


def apply_recipe(args, given=None):
    """Set the --recipe's values on every recipe flag not given explicitly. `given`: the dests named on the
    command line (given_flags); None (args built in code): a flag counts as given when it differs from its
    default. Returns the effective recipe {flag: value}."""
    defaults = get_args_parser()
    recipe = RECIPES[getattr(args, 'recipe', 'reference')]
    for k, v in recipe.items():
        explicit = k in given if given is not None else getattr(args, k) != defaults.get_default(k)
        if not explicit:
            setattr(args, k, v)
    return {k: getattr(args, k) for k in recipe}


def parse_args(argv=None):
    """Command line -> args with the --recipe applied (explicit flags win)."""
    parser = argparse.ArgumentParser('MIFAE fine-tuning (deepfake detection)', parents=[get_args_parser()])
    args = parser.parse_args(argv)
    args.given = sorted(given_flags(parser, argv))
    return args


def get_args_parser():
    parser = argparse.ArgumentParser('MIFAE fine-tuning (deepfake detection)', add_help=False)
    parser.add_argument('--batch_size', default=64, type=int,
                        help='batch size per GPU (effective: batch_size * accum_iter * #gpus)')
    t = parser.add_argument_group('training (--eval ignores these, and the model, optimizer and mixup groups)')
    t.add_argument('--epochs', default=100, type=int)
    t.add_argument('--accum_iter', default=1, type=int, help='accumulate gradients over this many iterations')
    t.add_argument('--recipe', default='reference', choices=list(RECIPES),
                   help='set every recipe flag at once (flags given explicitly win): reference = the reference '
                        'code\'s stage-2 values (the defaults); light = a short recipe without mixup, '
                        'RandAugment or erasing (the earlier defaults)')

    g = parser.add_argument_group('model')
    g.add_argument('--model', default=None, type=str, metavar='MODEL',
                   help=f'one of {", ".join(models_vit.MODELS)} or its mae_* pre-training name '
                        f'(default: the one recorded in the --finetune / --resume checkpoint)')
    g.add_argument('--input_size', default=224, type=int, help='image size (pos_embed is resized when it differs '
                                                               'from the pre-training size)')
    g.add_argument('--global_pool', action='store_true', help='classify the mean patch token (fc_norm) instead of cls')
    g.add_argument('--drop_path', default=0.1, type=float, help='drop-path rate (trainable blocks only)')
    g.add_argument('--drop', default=0.0, type=float, help='dropout before the head')
    g.add_argument('--head_init_std', default=2e-5, type=float, help='std of the fresh head\'s truncated normal init')
    g.add_argument('--finetune', default='', help='pre-training checkpoint (MIFAE or original MAE) to start from')
    g.add_argument('--decoder', default='', help='take the frozen spatial decoder from this checkpoint instead')
    g.add_argument('--trainable_blocks', default=1, type=int,
                   help='train the last K transformer blocks (plus final norm and head); the rest is frozen')
    g.add_argument('--full_finetune', action='store_true', help='train the whole encoder (the decoder stays frozen)')
    g.add_argument('--recon', default='real', choices=['real', 'dual', 'none'],
                   help='real: L1 reconstruction on real faces; dual: minus recon_lambda x L1 on fakes; none: off')
    g.add_argument('--recon_weight', default=0.5, type=float, help='weight of the reconstruction loss')
    g.add_argument('--recon_lambda', default=1.0, type=float, help='weight of the fake term with --recon dual')
    g.add_argument('--recon_norm_pix', default='auto', choices=['auto', 'on', 'off'],
                   help='reconstruction target in per-patch normalised pixels (auto: as the pre-training run)')

    g = parser.add_argument_group('optimizer')
    g.add_argument('--weight_decay', type=float, default=0.05)
    g.add_argument('--lr', type=float, default=None, metavar='LR', help='absolute lr (default: blr * eff_batch / 256)')
    g.add_argument('--blr', type=float, default=5e-4, metavar='LR', help='base lr per 256 images')
    g.add_argument('--layer_decay', type=float, default=0.65, help='layer-wise lr decay (1 = off)')
    g.add_argument('--min_lr', type=float, default=1e-6, metavar='LR', help='floor of the cosine schedule')
    g.add_argument('--warmup_epochs', type=float, default=5, metavar='N')
    g.add_argument('--clip_grad', type=float, default=None, help='max gradient norm (off by default)')
    g.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')

    g = parser.add_argument_group('mixup / cutmix (timm; off when both alphas are 0)')
    g.add_argument('--mixup', type=float, default=0.8, help='mixup alpha')
    g.add_argument('--cutmix', type=float, default=1.0, help='cutmix alpha')
    g.add_argument('--cutmix_minmax', type=float, nargs=2, default=None,
                   help='cutmix box ratio range (overrides alpha)')
    g.add_argument('--mixup_prob', type=float, default=1.0, help='probability of mixing a batch')
    g.add_argument('--mixup_switch_prob', type=float, default=0.5, help='probability of cutmix when both are on')
    g.add_argument('--mixup_mode', type=str, default='batch', choices=['batch', 'pair', 'elem'])

    g = parser.add_argument_group('data')
    t.add_argument('--train_manifest', default='', help='labelled manifest CSV to train on (e.g. FF++ c23 train)')
    t.add_argument('--val_manifest', default='',
                   help='labelled manifest CSV (source domain) that picks the best checkpoint')
    g.add_argument('--test_manifests', nargs='+', default=[],
                   help='manifest CSVs to evaluate (after training, or with --eval)')
    t.add_argument('--balance', action='store_true', help='draw real and fake training faces equally often '
                                                          '(default: the natural class ratio)')
    t.add_argument('--no_balance', action='store_false', dest='balance')
    parser.set_defaults(balance=False)
    t.add_argument('--min_crop_scale', default=0.08, type=float, help='RandomResizedCrop minimum area fraction')
    t.add_argument('--aa', default='rand-m9-mstd0.5-inc1', type=str, metavar='NAME',
                   help="timm RandAugment policy (none: off, and the crop + flip run in OpenCV instead of timm's PIL)")
    t.add_argument('--reprob', default=0.25, type=float, help='random erasing probability (timm; 0 = off)')
    t.add_argument('--remode', default='pixel', choices=['pixel', 'rand', 'const'], help='random erasing fill')
    t.add_argument('--recount', default=1, type=int, help='random erasing: at most this many boxes per image')
    t.add_argument('--eval_crop_pct', default=224 / 256, type=float,
                   help='evaluation: resize the shorter side to input_size / crop_pct, centre crop '
                        '(0 = resize the whole image)')
    g.add_argument('--strict_data', action='store_true', help='missing or unreadable images are errors, not skipped')
    g.add_argument('--num_workers', default=10, type=int)
    g.add_argument('--pin_mem', action='store_true', help='pin CPU memory in DataLoader')
    g.add_argument('--no_pin_mem', action='store_false', dest='pin_mem')
    parser.set_defaults(pin_mem=True)
    g.add_argument('--eval_batch_size', default=None, type=int, help='evaluation batch size (default 2 x batch_size)')
    g.add_argument('--threshold', default=0.5, type=float,
                   help='fake probability above which a face counts as fake (ACC)')

    g = parser.add_argument_group('evaluation protocols (EVALUATION.md)')
    g.add_argument('--group_by', default=None, choices=protocols.GROUP_KEYS,
                   help='also score each manipulation (method column) or data set\'s fakes against all the reals '
                        'of the same test set: rows set/group in the table, eval.json and ROC curves')
    g.add_argument('--train_methods', default='', metavar='M1,M2',
                   help='train and validate on these manipulations only, all reals kept (e.g. DF,F2F,FS: '
                        'FF++ short names or method-column values); the leave-one-out protocol')
    g.add_argument('--eval_frames', default=0, type=int, metavar='N',
                   help='evaluate N evenly spaced frames per video of each test set (0 = all its frames)')
    g.add_argument('--perturb', nargs='+', default=[], metavar='TYPE[:LEVEL]',
                   help='with --eval: also evaluate under util/perturb.py degradations of the crops (crop '
                        'protocol): all, TYPE (its five levels) or TYPE:LEVEL; writes robustness.json/.md/.png '
                        'and resumes where it stopped')

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
    """Every start-up check, before any work: contradictory flags, the output folder, the manifests (test
    sets in full: a bad one fails now, not after training) and the checkpoint to resume, each with a
    one-line reason."""
    def fail(msg):
        raise error(msg)
    resuming = None
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
    if problem := misc.number_problem(args, ('recon_weight', 'recon_lambda'), ('threshold', 'drop', 'drop_path')):
        fail(problem)
    if not 0 <= args.reprob <= 1 or args.recount < 1:
        fail(f'--reprob {args.reprob} must lie in [0, 1] and --recount {args.recount} be at least 1')
    if not 0 <= args.eval_crop_pct <= 1:
        fail(f'--eval_crop_pct {args.eval_crop_pct} must lie in [0, 1] (0: the whole image)')
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
        if problem := hub.source_problem(args.resume, 'resume'):       # a file, a Hub-format folder or a Hub id
            fail(problem)
        if problem := misc.device_problem(args.device) or output_dir_problem(args.output_dir):
            fail(problem if problem.startswith('--') else f'--output_dir {args.output_dir}: {problem}')
    else:
        if not args.train_manifest:
            fail('--train_manifest is required to train (or pass --eval to evaluate)')
        manifests += [args.train_manifest] + ([args.val_manifest] if args.val_manifest else [])
        if problem := checkpoint.start_problem(args):
                fail(problem)
        resuming = checkpoint.find_resume_checkpoint(args)
        if not args.finetune and not resuming:
            fail('--finetune <pre-training checkpoint> is required (unless resuming a fine-tuning run)')
        for flag in ('finetune', 'decoder'):                       # a file, a Hub-format folder or a Hub id
            if getattr(args, flag) and (problem := hub.source_problem(getattr(args, flag), flag)):
                fail(problem)
        if args.resume and not Path(args.resume).is_file():
            fail(f'--resume {args.resume} does not exist')
    check_protocol_args(args, fail)
    for m in manifests:
        if not Path(m).is_file():
            fail(f'manifest {m} does not exist')
        if not str(m).lower().endswith('.csv'):
            fail(f'{m}: a labelled manifest CSV is needed here (path,landmarks,label,video,dataset)')
    for m in args.test_manifests:
        read_labelled(m, videos=True)
    if not args.eval and resuming:
        resume_meta(resuming, args)                            # a fine-tuning checkpoint of this model shape
        try:
            checkpoint.check_resume_args(args, get_args_parser(), skip=RESUME_FLAGS, harmless=RESUME_HARMLESS)
        except (FileNotFoundError, ValueError) as e:
            fail(f'cannot resume: {e}')


def check_protocol_args(args, fail):
    if args.eval_frames < 0:
        fail('--eval_frames must be >= 0 (0 = every frame)')
    if args.perturb:
        try:
            specs = [p for spec in args.perturb for p in parse_spec(spec)]
        except ValueError as e:
            fail(f'--perturb: {e}')
        if not args.eval:
            fail('--perturb evaluates a trained detector: use it with --eval --resume <checkpoint>')
        video = sorted({k for k, _ in specs if k in VIDEO_KINDS})
        if video:
            fail(f'--perturb {video[0]} re-encodes whole videos: degrade them before cropping with '
                 f'prepare_faces.py --perturb {video[0]}:LEVEL (frame protocol, EVALUATION.md)')
    if args.train_methods and args.eval:
        fail('--train_methods selects training data; --eval trains nothing (use --group_by method to score '
             'each manipulation)')
    if args.train_methods and not protocols.resolve_methods(args.train_methods):
        fail('--train_methods names no manipulation (e.g. DF,F2F,FS)')


def check_trainable_blocks(args, model_name):
    depth = models_vit.depth_of(model_name)
    if not args.full_finetune and args.trainable_blocks > depth:
        raise error(f'--trainable_blocks {args.trainable_blocks} exceeds the {depth} '
                    f'blocks of {models_vit.resolve_model_name(model_name)} (all of them: --full_finetune)')


# ---------------------------------------------------------------------- data
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
                                      pin_memory=args.pin_mem and str(args.device).startswith('cuda')),
                           'main_finetune.py')


def check_pseudo_fake_args(args):
    """One-line errors for --pseudo_fakes flags that cannot work together with the others. Mixup / cutmix that
    came from the --recipe are turned off (a face that cannot be self-blended leaves an odd batch; SBI trains
    without them); given explicitly, they are refused."""
    if args.pseudo_fakes == 'none':
        if args.pseudo_fakes_ratio is not None:
            raise error('--pseudo_fakes_ratio needs --pseudo_fakes sbi')
        return
    if args.pseudo_fakes_ratio is not None and not 0 < args.pseudo_fakes_ratio <= 1:
        raise error(f'--pseudo_fakes_ratio {args.pseudo_fakes_ratio} must lie in (0, 1]')
    if args.batch_size < 2 or args.batch_size % 2:
        raise error(f'--pseudo_fakes sbi needs an even --batch_size (real + fake pairs), got {args.batch_size}')
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        given, parser = getattr(args, 'given', None), get_args_parser()
        if any(k in given if given is not None else getattr(args, k) != parser.get_default(k)
               for k in ('mixup', 'cutmix', 'cutmix_minmax')):
            raise error('--pseudo_fakes sbi does not combine with --mixup / --cutmix '
                        '(a face that cannot be self-blended leaves an odd batch)')
        args.mixup, args.cutmix, args.cutmix_minmax = 0.0, 0.0, None
        if misc.is_main_process():
            print(f'main_finetune.py: note: --pseudo_fakes sbi turns off the --recipe {args.recipe} mixup / cutmix',
                  flush=True)


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
    pairs, world = args.batch_size // 2, misc.get_world_size()
    if len(ds) < pairs * world:
        raise error(f'--train_manifest {args.train_manifest}: {len(ds)} real faces '
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
    return sampler, ExitOnDataError(DataLoader(ds, sampler=sampler, batch_size=pairs, num_workers=args.num_workers,
                                               collate_fn=collate_pairs, drop_last=True,
                                               pin_memory=args.pin_mem and str(args.device).startswith('cuda'),
                                               persistent_workers=args.num_workers > 0), 'main_finetune.py')


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


def train_loader(samples, args):
    try:        # a mostly unusable set, or with --strict_data an unusable sample: one line naming files
        ds = FaceDataset(samples, train_transform(args), strict=args.strict_data, require_label=True)
    except ValueError as e:
        raise error(f'--train_manifest {args.train_manifest}: {e}') from None
    world = misc.get_world_size()
    if len(ds) < args.batch_size * world:
        raise error(f'--train_manifest {args.train_manifest}: {len(ds)} images are '
                    f'fewer than one batch ({args.batch_size} x {world} processes)')
    if args.balance:
        sampler = BalancedSampler([s.label for s in samples], len(ds), args.seed, misc.get_rank(), world)
    elif args.distributed:
        sampler = DistributedSampler(ds, num_replicas=world, rank=misc.get_rank(), shuffle=True, seed=args.seed)
    else:
        sampler = RandomSampler(ds)
    return sampler, ExitOnDataError(DataLoader(ds, sampler=sampler, batch_size=args.batch_size,
                                               num_workers=args.num_workers, drop_last=True,
                                               pin_memory=args.pin_mem and str(args.device).startswith('cuda'),
                                               persistent_workers=args.num_workers > 0), 'main_finetune.py')


# ---------------------------------------------------------------------- checkpoints: what a resumed run may change
RESUME_FLAGS = ('model', 'input_size', 'global_pool', 'full_finetune', 'trainable_blocks')   # shape model / optimizer
# besides the run group's, flags a resumed run may change freely (--epochs: extending a run; --finetune and
# --decoder: the weights come from the checkpoint); any other only with --allow_changed_flags
RESUME_HARMLESS = ('epochs', 'finetune', 'decoder', 'test_manifests', 'num_workers', 'pin_mem', 'strict_data',
                   'eval_batch_size', 'threshold')


def resume_meta(path, args):
    """The `detector` entry of the fine-tuning checkpoint to resume. One-line errors when it has none (e.g.
    the pre-training checkpoint, auto-resumed from a shared --output_dir) and naming each flag that differs
    from the checkpoint's run in what shapes the model or its optimizer."""
    try:
        ckpt = checkpoint.load(path, mmap=True)               # the metadata only: tensors stay on disk
    except (ValueError, FileNotFoundError) as e:
        raise error(str(e)) from None
    meta = ckpt.get('detector') if isinstance(ckpt, dict) else None
    how = '--resume' if args.resume else 'auto-resume (--output_dir)'
    if not isinstance(meta, dict):
        raise error(f'{how} {path} is not a fine-tuning checkpoint (no "detector" '
                    f'entry): pass the pre-training checkpoint as --finetune and choose a new --output_dir')
    given = dict(model=args.model and models_vit.resolve_model_name(args.model), input_size=args.input_size,
                 global_pool=args.global_pool, full_finetune=args.full_finetune,
                 trainable_blocks=None if args.full_finetune else args.trainable_blocks)
    show = lambda v: ('on' if v else 'off') if isinstance(v, bool) else v  # noqa: E731
    differ = [f'--{k} {show(given[k])} (checkpoint: {show(meta[k])})' for k in RESUME_FLAGS
              if given[k] is not None and k in meta and given[k] != meta[k]
              and not (k == 'trainable_blocks' and meta.get('full_finetune'))]
    if differ:
        raise error(f'cannot {how} {path} with {", ".join(differ)}: use the '
                    f'checkpoint\'s values, or another --output_dir / --overwrite to start afresh')
    return meta


def save_epoch(args, model_without_ddp, optimizer, epoch, scaler, improved, **extra):
    """checkpoint-best.pth (when the epoch improved) and then checkpoint-last.pth: in this order a kill at any
    instant leaves a checkpoint-last.pth whose best is on disk (see checkpoint.reconcile_best)."""
    names = ([checkpoint.BEST] if improved else []) + [checkpoint.LAST]
    try:
        for name in names:
            checkpoint.save_checkpoint(args.output_dir, name, model_without_ddp, optimizer, epoch, args, scaler,
                                       **extra)
    except WriteError as e:
        raise error(str(e)) from None


# ---------------------------------------------------------------------- model
def build_model(args):
    """The detector from --finetune (a pre-training checkpoint), or an empty one to resume into.
    Sets args.model (from the checkpoints when not given) and args.norm_pix. -> (model, decoder_loaded)"""
    resume = checkpoint.find_resume_checkpoint(args)
    meta = resume_meta(resume, args) if resume else None
    if args.model is None:
        src = meta.get('model') if meta else None
        if src is None and args.finetune:
            try:
                src = checkpoint.args_of(hub.load_checkpoint(args.finetune, mmap=True)).get('model')
            except (ValueError, FileNotFoundError) as e:
                raise error(str(e)) from None
        if src is None:
            raise error('--model is needed: the checkpoint does not record its model')
        args.model = src
    try:
        name = models_vit.resolve_model_name(args.model)
    except ValueError as e:
        raise error(str(e)) from None
    if args.input_size % models_vit.patch_size_of(name):
        raise error(f'--input_size {args.input_size} is not divisible by the patch '
                    f'size of {name}')
    check_trainable_blocks(args, name)
    make = lambda norm_pix: models_vit.MODELS[name](  # noqa: E731
        img_size=args.input_size, global_pool=args.global_pool, drop_rate=args.drop, drop_path_rate=args.drop_path,
        norm_pix=norm_pix, crop_pct=args.eval_crop_pct or None, head_init_std=args.head_init_std)
    decoder_loaded = True
    if meta is None:
        model = make(False)
        try:
            info = models_vit.load_pretrained(model, args.finetune, args.decoder or None, name)
        except (ValueError, FileNotFoundError) as e:
            raise error(str(e)) from None
        decoder_loaded = info['decoder_loaded']
        if not decoder_loaded and args.recon != 'none':
            raise error(f'{args.decoder or args.finetune} holds no spatial decoder '
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
def evaluate_sets(model, manifests, input_size, mean, std, device, amp_dtype, args, ckpt_path=None, crop_pct=None):
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
        samples = protocols.even_frames(samples, args.eval_frames)
        loader = eval_loader(samples, input_size, mean, std, args, crop_pct)
        try:
            metrics, idx, labels, scores = evaluate_frames(model, samples, loader, device, amp_dtype, name=name,
                                                           quiet=args.quiet, threshold=args.threshold)
        except ValueError as e:                                # the metrics' own checks (video ids: checked up front)
            raise error(f'{m}: {e}') from None
        metrics.update(manifest=str(m), missing=missing)
        results[name], curves[name] = metrics, (labels, scores)
        evaluated = [samples[j] for j in idx]
        if args.group_by:
            for key, (metrics_g, curve) in group_results(name, evaluated, labels, scores, args).items():
                results[key], curves[key] = metrics_g, curve
        if misc.is_main_process() and args.output_dir:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            protocols.write_scores(args.output_dir, name, evaluated, scores)
    if misc.is_main_process():
        print(format_table(results), flush=True)              # first: a failing write loses no result
        try:
            write_eval_report(results, args.output_dir, ckpt_path, curves)
        except WriteError as e:
            raise error(str(e)) from None
        print(f'Wrote {Path(args.output_dir) / "eval.json"}, eval.md, ROC curves and per-frame / per-video score '
              f'files (scores_<set>.csv, videos_<set>.csv)', flush=True)
    return results


# ---------------------------------------------------------------------- evaluation protocols (EVALUATION.md)
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


def group_results(name, samples, labels, scores, args):
    """{'set/group': (metrics, (labels, scores))}: each --group_by group of fakes against all the set's reals."""
    out = {}
    for g, rows in protocols.groups(samples, args.group_by).items():
        metrics = compute_metrics(labels[rows], scores[rows], [samples[r].video for r in rows],
                                  threshold=args.threshold)
        metrics.update(group=g, group_by=args.group_by)
        out[f'{name}/{g}'] = (metrics, (labels[rows], scores[rows]))
    return out


class _CountingLoader:
    """A loader that advances one shared progress bar by the frames of each batch."""

    def __init__(self, loader, bar):
        self.loader, self.bar = loader, bar

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            self.bar.update(len(batch['index']))


def run_robustness(model, results, input_size, mean, std, device, amp_dtype, args, ckpt_path, crop_pct=None):
    """Crop protocol: every --perturb (type, level) on every test set; robustness.json / .md / .png written
    after each evaluation, and evaluations already in robustness.json (same checkpoint, seed and frames)
    skipped, so an interrupted run resumes where it stopped."""
    from tqdm import tqdm
    todo = list(dict.fromkeys(p for spec in args.perturb for p in parse_spec(spec)))
    out = Path(args.output_dir)
    setting = dict(checkpoint=str(ckpt_path), seed=args.seed, eval_frames=args.eval_frames)
    doc = dict(setting, protocol='crop', sets={})
    old = out / 'robustness.json'
    if old.is_file():
        prev = json.loads(old.read_text())
        if all(prev.get(k) == v for k, v in setting.items()):
            doc['sets'] = prev.get('sets', {})
    sets = {}
    for name, m in results.items():
        if 'group' in m:
            continue
        samples, _ = load_labelled(m['manifest'], args.strict_data)
        sets[name] = protocols.even_frames(samples, args.eval_frames)
        entry = doc['sets'].setdefault(name, {})
        entry['clean'] = {k: m.get(k) for k in ('auc', 'video_auc', 'eer', 'n', 'n_videos')}
        entry.setdefault('perturbations', {})
    pending = [(name, k, lv) for name in sets for k, lv in todo
               if str(lv) not in doc['sets'][name]['perturbations'].get(k, {})]
    if misc.is_main_process() and len(pending) < len(todo) * len(sets):
        print(f'robustness: {len(todo) * len(sets) - len(pending)} evaluation(s) already in {old}; '
              f'{len(pending)} to go', flush=True)
    bar = tqdm(total=sum(len(sets[n]) for n, _, _ in pending), desc='robustness', unit='frame',
               disable=not misc.is_main_process() or args.quiet, dynamic_ncols=True, mininterval=2.0,
               file=sys.stdout)
    for name, kind, level in pending:
        samples = sets[name]
        bar.set_postfix_str(f'{name} {kind}:{level}')
        loader = _CountingLoader(eval_loader(samples, input_size, mean, std, args, crop_pct, (kind, level)), bar)
        metrics, _, _, _ = evaluate_frames(model, samples, loader, device, amp_dtype, name=f'{name} {kind}:{level}',
                                           quiet=True, threshold=args.threshold)
        per = doc['sets'][name]['perturbations'].setdefault(kind, {})
        per[str(level)] = {k: metrics.get(k) for k in ('auc', 'video_auc', 'eer', 'n', 'unreadable')}
        if misc.is_main_process():
            protocols.write_robustness_json(out, doc)
    bar.close()
    if misc.is_main_process():
        text = protocols.write_robustness(out, doc)
        print(text.split('\n## ', 1)[-1].split('![')[0].rstrip(), flush=True)
        print(f'Wrote {out / "robustness.json"}, robustness.md and robustness.png', flush=True)
    return doc


# the argument groups --eval does not use: the checkpoint decides the model, and nothing trains
EVAL_IGNORED_GROUPS = ('training', 'model', 'optimizer', 'mixup', 'pseudo-fakes')


def eval_ignored_flags(args):
    """The flags of EVAL_IGNORED_GROUPS given with a value other than their default, as they would be typed."""
    parser = get_args_parser()
    ignored = [a.dest for g in parser._action_groups if g.title.startswith(EVAL_IGNORED_GROUPS)
               for a in g._group_actions]
    shown = []
    for k in dict.fromkeys(ignored):                           # --balance / --no_balance: one dest
        v = getattr(args, k)
        if v != parser.get_default(k):
            shown.append((f'--{k}' if v else f'--no_{k}') if isinstance(v, bool) else
                         f'--{k} {" ".join(map(str, v)) if isinstance(v, (list, tuple)) else v}')
    return shown


def run_eval(args, device, amp_dtype):
    try:
        model, meta = models_vit.load_detector(args.resume, device)
    except ValueError as e:
        raise error(str(e)) from None
    if misc.is_main_process():
        ignored = eval_ignored_flags(args)
        if ignored:
            print(f'main_finetune.py: note: --eval takes the model from {args.resume} and trains nothing: '
                  f'ignoring {", ".join(ignored)}', flush=True)
        print(f'Evaluating {args.resume}: {meta["model"]} at {meta["input_size"]} px'
              f'{" (global pool)" if meta.get("global_pool") else ""}')
    net = misc.maybe_compile(model, device, args.compile)
    results = evaluate_sets(net, args.test_manifests, meta['input_size'], meta['mean'], meta['std'], device,
                            amp_dtype, args, ckpt_path=args.resume, crop_pct=model.crop_pct)
    if args.perturb:
        run_robustness(net, results, meta['input_size'], meta['mean'], meta['std'], device, amp_dtype, args,
                       args.resume, model.crop_pct)
    return results


# ---------------------------------------------------------------------- main
def main(args):
    recipe = None if args.eval else apply_recipe(args, set(args.given) if hasattr(args, 'given') else None)
    check_pseudo_fake_args(args)                               # before check_args: it may turn mixup off
    check_args(args)
    if recipe is not None:                                     # as --pseudo_fakes left it
        recipe = {k: getattr(args, k) for k in recipe}
    device = misc.setup_run(args)
    if args.overwrite and not args.eval:
        checkpoint.move_aside(args.output_dir)
    amp_dtype, scaler = misc.resolve_amp(args.amp, device)
    if args.eval:
        results = run_eval(args, device, amp_dtype)
        if args.distributed:
            torch.distributed.destroy_process_group()
        return dict(test=results)

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
            print(f'main_finetune.py: warning: {only}: the detector learns a single class', flush=True)
    val_samples = load_labelled(args.val_manifest, args.strict_data, videos=True)[0] if args.val_manifest else None
    if val_samples is not None and args.train_methods:
        val_samples = select_train_methods(val_samples, args.val_manifest, args)
    if val_samples is not None and len({s.label for s in val_samples}) < 2:
        raise error(f'--val_manifest {args.val_manifest} holds one class only: '
                    f'its AUC is undefined, so it cannot pick the best checkpoint')
    model, decoder_loaded = build_model(args)
    model.to(device)
    model_without_ddp = model
    sampler, loader = (pseudo_fake_loader if args.pseudo_fakes != 'none' else train_loader)(train_samples, args)
    if problem := misc.accum_problem(args, loader):
        raise error(problem)
    val_loader = (eval_loader(val_samples, args.input_size, model.mean, model.std, args, model.crop_pct)
                  if val_samples else None)

    eff_batch = args.batch_size * args.accum_iter * misc.get_world_size()
    if args.lr is None:
        args.lr = args.blr * eff_batch / 256
    groups = param_groups_lrd(model_without_ddp, args.weight_decay, layer_decay=args.layer_decay)
    optimizer = misc.make_adamw(groups, lr=args.lr, betas=(0.9, 0.999), device=device)
    try:
        ckpt = checkpoint.resume_training(args, model_without_ddp, optimizer, scaler)
    except (FileNotFoundError, ValueError) as e:
        raise error(f'cannot resume: {e}') from None
    best_auc, best_epoch = checkpoint.reconcile_best(args.output_dir, ckpt) if ckpt else (None, None)

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
                                    recon=args.recon, recipe=args.recipe)

    if misc.is_main_process():
        print(f'{args.model} at {args.input_size} px: {trainable_summary(model_without_ddp)} '
              f'({"full" if args.full_finetune else f"last {args.trainable_blocks} block(s) + norm + head"}); '
              f'recon {args.recon} x {args.recon_weight}{" (norm-pix target)" if args.norm_pix else ""}')
        print(f'{len(train_samples)} training faces ({sum(s.label for s in train_samples)} fake)'
              f'{", balanced sampling" if args.balance and args.pseudo_fakes == "none" else ""}; '
              f'{len(val_samples) if val_samples else 0} validation faces')
        print(f'effective batch size {eff_batch}; lr {args.lr:.3e} (blr {args.blr:.3e} x {eff_batch} / 256), '
              f'layer decay {args.layer_decay}')
        print(f'recipe {args.recipe} (explicit flags win): ' + json.dumps(recipe, default=str))
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
            best_auc, best_epoch = val['auc'], epoch
        stats.update(best_val_auc=best_auc, best_epoch=best_epoch)
        if getattr(args, 'changed_flags', None) and epoch == args.start_epoch:     # --allow_changed_flags: on record
            stats['changed_flags'] = args.changed_flags
        save_epoch(args, model_without_ddp, optimizer, epoch, scaler, improved, detector=meta, recipe=recipe,
                   best_val_auc=best_auc, best_epoch=best_epoch, val=val,
                   log_stats=stats)        # log_stats: see checkpoint.complete_log
        misc.log_epoch(args.output_dir, epoch, stats)
    if log_writer is not None:
        log_writer.close()
    if misc.is_main_process():
        print(f'Training time {datetime.timedelta(seconds=int(time.time() - start_time))}'
              + (f'; best validation AUC {best_auc:.4f} (epoch {best_epoch})' if best_auc is not None else ''))

    result = dict(stats, best_val_auc=best_auc, best_epoch=best_epoch)
    if args.test_manifests:
        best = Path(args.output_dir) / ('checkpoint-best.pth' if best_auc is not None else 'checkpoint-last.pth')
        if val_loader is not None and best_auc is None and misc.is_main_process():
            print('No epoch had a validation AUC (no readable validation frame): testing the last checkpoint')
        if args.distributed:
            torch.distributed.barrier()
        model_without_ddp.load_state_dict(checkpoint.load(best)['model'])
        if misc.is_main_process():
            print(f'Testing {best}')
        result['test'] = evaluate_sets(model_net, args.test_manifests, args.input_size, model_without_ddp.mean,
                                       model_without_ddp.std, device, amp_dtype, args, ckpt_path=best,
                                       crop_pct=model_without_ddp.crop_pct)
    if args.distributed:
        torch.distributed.destroy_process_group()
    return result


if __name__ == '__main__':
    main(parse_args())
