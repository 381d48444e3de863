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
import time
from functools import partial
from pathlib import Path

import torch

import models_vit
import util.checkpoint as checkpoint
import util.hub as hub
import util.misc as misc
from engine_finetune import ce_criterion, evaluate_samples, train_one_epoch, uses_recon
from util import evaluation, loaders, protocols, recipes
from util.fileio import WriteError, output_dir_problem
from util.lr_decay import param_groups_lrd

error = partial(misc.usage_error, 'main_finetune.py')     # raise error('--flag ...: what to do')


def get_args_parser():
    parser = argparse.ArgumentParser('MIFAE fine-tuning (deepfake detection)', add_help=False)
    parser.add_argument('--batch_size', default=None, type=int,
                        help='batch size per GPU (effective: batch_size * accum_iter * #gpus)')
    add_training_args(parser)

    g = parser.add_argument_group('data')
    g.add_argument('--test_manifests', nargs='+', default=[],
                   help='manifest CSVs to evaluate (after training, or with --eval)')
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

    add_pseudo_fake_args(parser)

    g = misc.add_run_args(parser, 'checkpoints, log.txt, eval.json / eval.md / ROC PNGs',
                          'fine-tuning checkpoint to resume (or, with --eval, to evaluate)')
    g.add_argument('--eval', action='store_true', help='only evaluate --resume on --test_manifests')
    return parser


def add_training_args(parser):
    """The flags only training reads (--eval takes the model from its checkpoint and trains nothing)."""
    t = parser.add_argument_group('training (--eval ignores these, and the model, optimizer and mixup groups)')
    t.add_argument('--epochs', default=None, type=int)
    t.add_argument('--accum_iter', default=None, type=int, help='accumulate gradients over this many iterations')
    t.add_argument('--recipe', default='reference', choices=list(recipes.RECIPES),
                   help='the values of every flag left unset that util/recipes.py governs (flags given explicitly '
                        'win): reference = the reference code\'s stage-2 values; light = a short recipe without '
                        'mixup, RandAugment or erasing')
    t.add_argument('--train_manifest', default='', help='labelled manifest CSV to train on (e.g. FF++ c23 train)')
    t.add_argument('--val_manifest', default='',
                   help='labelled manifest CSV (source domain) that picks the best checkpoint')
    t.add_argument('--balance', action='store_true', default=None,
                   help='draw real and fake training faces equally often (--no_balance: the natural class ratio)')
    t.add_argument('--no_balance', action='store_false', dest='balance', default=None)
    t.add_argument('--min_crop_scale', default=None, type=float, help='RandomResizedCrop minimum area fraction')
    t.add_argument('--aa', default=None, type=str, metavar='NAME',
                   help="timm RandAugment policy (none: off, and the crop + flip run in OpenCV instead of timm's PIL)")
    t.add_argument('--reprob', default=None, type=float, help='random erasing probability (timm; 0 = off)')
    t.add_argument('--remode', default=None, choices=['pixel', 'rand', 'const'], help='random erasing fill')
    t.add_argument('--recount', default=None, type=int, help='random erasing: at most this many boxes per image')
    t.add_argument('--eval_crop_pct', default=None, type=float,
                   help='evaluation: resize the shorter side to input_size / crop_pct, centre crop '
                        '(0 = resize the whole image)')

    g = parser.add_argument_group('model')
    g.add_argument('--model', default=None, type=str, metavar='MODEL',
                   help=f'one of {", ".join(models_vit.MODELS)} or its mae_* pre-training name '
                        f'(default: the one recorded in the --finetune / --resume checkpoint)')
    g.add_argument('--input_size', default=224, type=int, help='image size (pos_embed is resized when it differs '
                                                               'from the pre-training size)')
    g.add_argument('--global_pool', action='store_true', default=None,
                   help='classify the mean patch token (fc_norm) instead of cls')
    g.add_argument('--drop_path', default=None, type=float, help='drop-path rate (trainable blocks only)')
    g.add_argument('--drop', default=0.0, type=float, help='dropout before the head')
    g.add_argument('--head_init_std', default=None, type=float, help='std of the fresh head\'s truncated normal init')
    g.add_argument('--finetune', default='', help='pre-training checkpoint (MIFAE or original MAE) to start from')
    g.add_argument('--decoder', default='', help='take the frozen spatial decoder from this checkpoint instead')
    g.add_argument('--trainable_blocks', default=None, type=int,
                   help='train the last K transformer blocks (plus final norm and head); the rest is frozen')
    g.add_argument('--full_finetune', action='store_true', default=None,
                   help='train the whole encoder (the decoder stays frozen)')
    g.add_argument('--recon', default='real', choices=['real', 'dual', 'none'],
                   help='real: L1 reconstruction on real faces; dual: minus recon_lambda x L1 on fakes; none: off')
    g.add_argument('--recon_weight', default=None, type=float, help='weight of the reconstruction loss')
    g.add_argument('--recon_lambda', default=None, type=float, help='weight of the fake term with --recon dual')
    g.add_argument('--recon_norm_pix', default='auto', choices=['auto', 'on', 'off'],
                   help='reconstruction target in per-patch normalised pixels (auto: as the pre-training run)')

    g = parser.add_argument_group('optimizer')
    g.add_argument('--weight_decay', type=float, default=None)
    g.add_argument('--lr', type=float, default=None, metavar='LR', help='absolute lr (default: blr * eff_batch / 256)')
    g.add_argument('--blr', type=float, default=None, metavar='LR', help='base lr per 256 images')
    g.add_argument('--layer_decay', type=float, default=None, help='layer-wise lr decay (1 = off)')
    g.add_argument('--min_lr', type=float, default=None, metavar='LR', help='floor of the cosine schedule')
    g.add_argument('--warmup_epochs', type=float, default=None, metavar='N')
    g.add_argument('--clip_grad', type=float, default=None, help='max gradient norm (off by default)')
    g.add_argument('--smoothing', type=float, default=None, help='label smoothing')

    g = parser.add_argument_group('mixup / cutmix (timm; off when both alphas are 0)')
    g.add_argument('--mixup', type=float, default=None, help='mixup alpha')
    g.add_argument('--cutmix', type=float, default=None, help='cutmix alpha')
    g.add_argument('--cutmix_minmax', type=float, nargs=2, default=None,
                   help='cutmix box ratio range (overrides alpha)')
    g.add_argument('--mixup_prob', type=float, default=None, help='probability of mixing a batch')
    g.add_argument('--mixup_switch_prob', type=float, default=None, help='probability of cutmix when both are on')
    g.add_argument('--mixup_mode', type=str, default=None, choices=['batch', 'pair', 'elem'])


def add_pseudo_fake_args(parser):
    """The self-blending flags (training only)."""
    g = parser.add_argument_group('pseudo-fakes (self-blended images: a detector trained from real faces alone)')
    g.add_argument('--pseudo_fakes', default='none', choices=['none', 'sbi'],
                   help='sbi: each real training face with landmarks comes with its self-blended pseudo-fake in '
                        'the same batch, under the same crop and flip (--batch_size counts both)')
    g.add_argument('--pseudo_fakes_ratio', default=None, type=float, metavar='R',
                   help='share of pseudo-fakes among the fake partners when --train_manifest also holds fakes '
                        '(the rest are its fakes; default 0.5); 1 with a reals-only manifest')


def training_only_flags():
    """A parser of the flags --eval ignores, with their defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    add_training_args(parser)
    add_pseudo_fake_args(parser)
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
        check_model_shape(args, args.model)
    for flag in ('batch_size', 'accum_iter', 'epochs', 'print_freq', 'eval_batch_size'):
        if (value := getattr(args, flag)) is not None and value < 1:      # eval_batch_size None: 2 x batch_size
            fail(f'--{flag} must be at least 1')
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
        if not args.overwrite and (problem := evaluation.earlier_report_problem(args)):
            fail(problem)
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
    evaluation.check_protocol_args(args, fail)
    for m in manifests:
        if Path(m).is_dir():
            found = sorted(p.name for p in Path(m).glob('*.csv'))
            fail(f'{m} is a folder: stage 2 needs the label of every face (1 = fake, 0 = real), which only a manifest '
                 f'CSV gives (DATA.md); ' + (f'it holds {", ".join(found[:4])}: pass one of them' if found else
                                             'prepare_faces.py --label writes one'))
        if not Path(m).is_file():
            fail(f'manifest {m} does not exist')
        if not str(m).lower().endswith('.csv'):
            fail(f'{m}: a labelled manifest CSV is needed here (path,landmarks,label,video,dataset)')
    for m in args.test_manifests:
        loaders.read_labelled(m, videos=True)
    if not args.eval and resuming:
        resume_meta(resuming, args)                            # a fine-tuning checkpoint of this model shape
        try:
            checkpoint.check_resume_args(args, get_args_parser(), skip=RESUME_FLAGS, harmless=RESUME_HARMLESS)
        except (FileNotFoundError, ValueError) as e:
            fail(f'cannot resume: {e}')


def check_model_shape(args, model_name):
    """--input_size and --trainable_blocks against the model (named or taken from the checkpoint)."""
    p = models_vit.patch_size_of(model_name)
    if args.input_size % p:
        raise error(f'--input_size {args.input_size} is not divisible by the patch size {p} of {model_name}')
    depth = models_vit.depth_of(model_name)
    if not args.full_finetune and args.trainable_blocks > depth:
        raise error(f'--trainable_blocks {args.trainable_blocks} exceeds the {depth} '
                    f'blocks of {models_vit.resolve_model_name(model_name)} (all of them: --full_finetune)')


# ---------------------------------------------------------------------- checkpoints: what a resumed run may change
RESUME_FLAGS = ('model', 'input_size', 'global_pool', 'full_finetune', 'trainable_blocks')   # shape model / optimizer
# besides the run group's, flags a resumed run may change freely (--epochs: extending a run; --finetune and
# --decoder: the weights come from the checkpoint); any other only with --allow_changed_flags
RESUME_HARMLESS = ('epochs', 'finetune', 'decoder', 'test_manifests', 'num_workers', 'pin_mem', 'strict_data',
                   'eval_batch_size', 'threshold', 'eval')


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
    check_model_shape(args, name)
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


# ---------------------------------------------------------------------- main
def prepare_args(args):
    """The first step of main (and of submitit_finetune.py before it submits): the --recipe's values on the recipe
    flags left unset, the pseudo-fake flags, then every start-up check. -> the effective recipe"""
    recipe, from_recipe = recipes.apply_recipe(args)
    recipes.check_pseudo_fake_args(args, from_recipe)          # before check_args: it may turn mixup off
    check_args(args)
    return {k: getattr(args, k) for k in recipe}               # as --pseudo_fakes left it


def main(args):
    ignored = evaluation.eval_ignored_flags(args, training_only_flags()) if args.eval else []   # as given
    recipe = prepare_args(args)
    device = misc.setup_run(args)
    if args.overwrite:                                          # --eval: the earlier evaluation report only
        checkpoint.move_aside(args.output_dir, checkpoint.EVAL_OUTPUTS if args.eval else checkpoint.RUN_OUTPUTS)
    amp_dtype, scaler = misc.resolve_amp(args.amp, device)
    if args.eval:
        results = evaluation.run_eval(args, device, amp_dtype, ignored)
        if args.distributed:
            torch.distributed.destroy_process_group()
        return dict(test=results)

    train_samples, val_samples = loaders.finetune_sets(args)
    model, decoder_loaded = build_model(args)
    model.to(device)
    model_without_ddp = model
    sampler, loader = (loaders.pseudo_fake_loader if args.pseudo_fakes != 'none' else
                       loaders.finetune_loader)(train_samples, args)
    val_loader = (loaders.eval_loader(val_samples, args.input_size, model.mean, model.std, args, model.crop_pct)
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
    if (note := misc.schedule_note(args, loader)) and misc.is_main_process():
        print(f'main_finetune.py: warning: {note}', flush=True)

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
        result['test'] = evaluation.evaluate_sets(model_net, args.test_manifests, args.input_size,
                                                  model_without_ddp.mean, model_without_ddp.std, device, amp_dtype,
                                                  args, ckpt_path=best, crop_pct=model_without_ddp.crop_pct)
    if (note := evaluation.untrained_note(best_auc, best_epoch)) and misc.is_main_process():
        print(note, flush=True)                                # the closing line
    if args.distributed:
        torch.distributed.destroy_process_group()
    return result


if __name__ == '__main__':
    args = argparse.ArgumentParser('MIFAE fine-tuning (deepfake detection)', parents=[get_args_parser()]).parse_args()
    try:
        main(args)
    except KeyboardInterrupt:
        raise SystemExit(checkpoint.report_interrupt('main_finetune.py', args))
