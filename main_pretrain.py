"""Stage 1: MIFAE pre-training on real faces (facial-region-guided masking + high-frequency masking).

One process:      python main_pretrain.py --data_path faces.csv --model mae_vit_base_patch16 ...
Several GPUs:     torchrun --nproc_per_node 8 main_pretrain.py ...
Slurm:            python submitit_pretrain.py --nodes 8 ...   (same flags)
"""
import argparse
import datetime
import json
import math
import time
from functools import partial
from pathlib import Path

import torch

import models_mae
import util.checkpoint as checkpoint
import util.misc as misc
from engine_pretrain import train_one_epoch
from util import loaders
from util.datasets import drop_duplicates, load_samples
from util.fileio import WriteError
from util.freq import max_radius
from util.losses import FREQ_LOSSES
from util.masking import MASK_STRATEGIES, num_masked

error = partial(misc.usage_error, 'main_pretrain.py')     # raise error('--flag ...: what to do')


def get_args_parser():
    parser = argparse.ArgumentParser('MIFAE pre-training', add_help=False)
    parser.add_argument('--batch_size', default=64, type=int,
                        help='batch size per GPU (effective: batch_size * accum_iter * #gpus)')
    parser.add_argument('--epochs', default=400, type=int)
    parser.add_argument('--accum_iter', default=1, type=int, help='accumulate gradients over this many iterations')

    g = parser.add_argument_group('model')
    g.add_argument('--model', default='mae_vit_base_patch16', type=str, metavar='MODEL',
                   help=f'one of: {", ".join(models_mae.MODELS)}')
    g.add_argument('--input_size', default=224, type=int, help='image size')
    g.add_argument('--mask_ratio', default=0.75, type=float, help='fraction of patches removed')
    g.add_argument('--mask_strategy', default='facial', choices=list(MASK_STRATEGIES),
                   help='facial: facial-region-guided masking; random: vanilla MAE masking')
    g.add_argument('--num_mask_regions', default=1, type=int, help='facial regions hidden per image (1-4)')
    g.add_argument('--norm_pix_loss', action='store_true', help='spatial loss on per-patch normalised pixels')
    g.set_defaults(norm_pix_loss=False)
    g.add_argument('--mask_radius', '--radius', dest='mask_radius', default=None, type=float,
                   help='low-frequency disc radius in frequency bins (default 16 at 224 px, scaled with input_size)')
    g.add_argument('--lamda', default=1.0, type=float, help='weight of the frequency loss')
    g.add_argument('--freq_loss', default='reference', choices=list(FREQ_LOSSES),
                   help="reference: the reference code's loss, mean of sqrt(|F(pred[c]) - F(grey)|^2 + 1e-7) over the "
                        "masked bins and the RGB channels; ffl: Jiang et al.'s focal frequency loss of the grey "
                        "prediction")
    g.add_argument('--ffl_alpha', default=1.0, type=float,
                   help='focal frequency loss exponent of --freq_loss ffl (0 = plain mean squared distance)')

    g = parser.add_argument_group('optimizer')
    g.add_argument('--weight_decay', type=float, default=0.05)
    g.add_argument('--lr', type=float, default=None, metavar='LR', help='absolute lr (default: blr * eff_batch / 256)')
    g.add_argument('--blr', type=float, default=1.5e-4, metavar='LR', help='base lr per 256 images')
    g.add_argument('--min_lr', type=float, default=0., metavar='LR', help='floor of the cosine schedule')
    g.add_argument('--warmup_epochs', type=int, default=40, metavar='N')
    g.add_argument('--clip_grad', type=float, default=None, help='max gradient norm (off by default)')

    g = parser.add_argument_group('data')
    g.add_argument('--data_path', default='', type=str,
                   help='manifest CSV or folder of faces with sidecar .npy landmarks')
    g.add_argument('--min_crop_scale', default=0.2, type=float, help='RandomResizedCrop minimum area fraction')
    g.add_argument('--strict_data', action='store_true', help='an unreadable image is an error, not skipped')
    g.add_argument('--include_fakes', action='store_true',
                   help='also pre-train on faces labelled 1 (fake); by default they are left out: stage 1 learns '
                        'real faces (unlabelled faces count as real)')
    g.add_argument('--num_workers', default=10, type=int)
    g.add_argument('--pin_mem', action='store_true', help='pin CPU memory in DataLoader')
    g.add_argument('--no_pin_mem', action='store_false', dest='pin_mem')
    parser.set_defaults(pin_mem=True)

    g = misc.add_run_args(parser, 'where checkpoints and log.txt go', 'checkpoint to resume from')
    g.add_argument('--init_from', default='', help='initialise from a MAE/MIFAE checkpoint (weights only)')
    g.add_argument('--save_freq', default=20, type=int, help='also keep checkpoint-<epoch>.pth every N epochs')
    return parser


# flags a resumed run may change freely besides the run group's (--epochs: extending a run); --model and
# --input_size never (tensor shapes); any other flag only with --allow_changed_flags
RESUME_HARMLESS = ('epochs', 'num_workers', 'pin_mem', 'strict_data')
RESUME_SHAPE_FLAGS = ('model', 'input_size')


def check_args(args):
    """Every start-up check, before any work: contradictory flags, the run folder and the checkpoint to
    resume (its method flags), each with a one-line reason."""
    def fail(msg):
        raise error(msg)
    if args.model not in models_mae.MODELS:
        fail(f'--model {args.model} is unknown; choose one of {", ".join(models_mae.MODELS)}')
    p = models_mae.arch_of(args.model)['patch_size']
    if args.input_size % p:
        fail(f'--input_size {args.input_size} is not divisible by the patch size {p} of {args.model}')
    num_patches = (args.input_size // p) ** 2
    if not math.isfinite(args.mask_ratio) or not 0 < num_masked(num_patches, args.mask_ratio) < num_patches:
        removed = num_masked(num_patches, args.mask_ratio) if math.isfinite(args.mask_ratio) else 'no number'
        fail(f'--mask_ratio {args.mask_ratio} removes {removed} of the '
             f'{num_patches} patches; at least one must be removed and one stay visible')
    limit = max_radius(args.input_size, args.input_size)
    if args.mask_radius is not None and not 0 < args.mask_radius <= limit:
        fail(f'--mask_radius {args.mask_radius} must lie in (0, {limit:.1f}]: the {args.input_size}x{args.input_size} '
             f'spectrum has no bin farther from its centre')
    if not 1 <= args.num_mask_regions <= 4:
        fail(f'--num_mask_regions {args.num_mask_regions} must be 1 to 4 (eyes, nose, mouth)')
    for flag in ('batch_size', 'accum_iter', 'epochs', 'save_freq', 'print_freq'):
        if getattr(args, flag) < 1:
            fail(f'--{flag} must be at least 1')
    if args.num_workers < 0:
        fail('--num_workers must be >= 0')
    if not 0 < args.min_crop_scale <= 1:
        fail(f'--min_crop_scale {args.min_crop_scale} must lie in (0, 1]')
    if not args.data_path:
        fail('--data_path is required (a manifest CSV or a folder of face images)')
    if not Path(args.data_path).exists():
        fail(f'--data_path {args.data_path} does not exist')
    if args.amp == 'fp16' and not str(args.device).startswith('cuda'):
        fail('--amp fp16 needs a CUDA device (use bf16 or none on CPU)')
    if problem := checkpoint.start_problem(args):
        fail(problem)
    try:
        checkpoint.check_resume_args(args, get_args_parser(), hard=RESUME_SHAPE_FLAGS, harmless=RESUME_HARMLESS,
                                     pretraining=True)
    except (FileNotFoundError, ValueError) as e:
        fail(f'cannot resume: {e}')


def refuse_old_freq_decoder(args):
    """After a failed resume: a one-line reason when the checkpoint has the older frequency decoder."""
    path = checkpoint.find_resume_checkpoint(args)
    note = path and models_mae.old_freq_decoder_note(checkpoint.state_dict_of(checkpoint.load(path)))
    if note:
        raise error(f'cannot resume from {path}: {note}; pass it as --init_from '
                    f'(its encoder and spatial decoder load, the frequency decoder starts fresh)')


def real_samples(args):
    """The faces of --data_path that stage 1 learns from: all but those labelled fake (unless --include_fakes)."""
    try:
        samples = load_samples(args.data_path)
    except (FileNotFoundError, ValueError) as e:
        raise error(f'--data_path {e}') from None
    fakes = sum(s.label == 1 for s in samples)
    if fakes and not args.include_fakes:
        samples = [s for s in samples if s.label != 1]
        if misc.is_main_process():
            print(f'{args.data_path}: {fakes} faces labelled fake left out (pre-training learns real faces; '
                  f'--include_fakes keeps them), {len(samples)} remain')
        if not samples:
            raise error(f'--data_path {args.data_path} holds only faces labelled fake')
    repeats = drop_duplicates(samples)[1]
    if repeats and misc.is_main_process():
        print(f'{args.data_path}: {repeats} rows repeat an earlier row exactly; kept (each is drawn as often as '
              f'it is listed)')
    return samples


def main(args):
    check_args(args)
    device = misc.setup_run(args)
    if args.overwrite:
        checkpoint.move_aside(args.output_dir)

    samples = real_samples(args)
    dataset, sampler, loader = loaders.pretrain_loader(args, samples)

    model = models_mae.build_autoencoder(args).to(device)
    if args.init_from:
        try:
            models_mae.load_pretrained(model, args.init_from)
        except (FileNotFoundError, ValueError) as e:
            raise error(f'--init_from {e}') from None
    model_without_ddp = model

    eff_batch = args.batch_size * args.accum_iter * misc.get_world_size()
    if args.lr is None:
        args.lr = args.blr * eff_batch / 256
    optimizer = misc.make_adamw(misc.param_groups_weight_decay(model_without_ddp, args.weight_decay),
                                lr=args.lr, betas=(0.9, 0.95), device=device)
    amp_dtype, scaler = misc.resolve_amp(args.amp, device)
    try:
        checkpoint.resume_training(args, model_without_ddp, optimizer, scaler)
    except (FileNotFoundError, ValueError) as e:
        refuse_old_freq_decoder(args)                      # the older frequency decoder: say so, and what to do
        raise error(f'cannot resume: {e}') from None
    if (note := misc.schedule_note(args, loader)) and misc.is_main_process():
        print(f'main_pretrain.py: warning: {note}', flush=True)

    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model,
                                                          device_ids=[args.gpu] if device.type == 'cuda' else None)
    model = misc.maybe_compile(model, device, args.compile)

    if misc.is_main_process():
        print(f'{args.model}: {sum(p.numel() for p in model_without_ddp.parameters()) / 1e6:.1f}M parameters, '
              f'{len(dataset)} images, mask {args.mask_strategy} {args.mask_ratio}, '
              f'radius {model_without_ddp.mask_radius:.3g}')
        print(f'effective batch size {eff_batch} = {args.batch_size} x {args.accum_iter} accum x '
              f'{misc.get_world_size()} processes; lr {args.lr:.3e} (blr {args.blr:.3e} x {eff_batch} / 256)')
        print(json.dumps({k: v for k, v in vars(args).items()}, default=str))
    log_writer = misc.make_log_writer(args.log_dir)

    start_time, stats = time.time(), {}
    for epoch in range(args.start_epoch, args.epochs):
        if args.distributed:
            sampler.set_epoch(epoch)
        stats = train_one_epoch(model, loader, optimizer, device, epoch, amp_dtype, scaler, log_writer, args)
        stats['epoch'] = epoch
        if getattr(args, 'changed_flags', None) and epoch == args.start_epoch:     # --allow_changed_flags: on record
            stats['changed_flags'] = args.changed_flags
        # the epoch's log line travels in the checkpoint too (see checkpoint.complete_log)
        names = [checkpoint.LAST] + ([f'checkpoint-{epoch}.pth'] if (epoch + 1) % args.save_freq == 0
                                     or epoch + 1 == args.epochs else [])
        try:
            for name in names:
                checkpoint.save_checkpoint(args.output_dir, name, model_without_ddp, optimizer, epoch, args, scaler,
                                           log_stats=stats)
        except WriteError as e:
            raise error(str(e)) from None
        misc.log_epoch(args.output_dir, epoch, stats)
    if log_writer is not None:
        log_writer.close()
    if args.distributed:       # a cheap proof that every rank ends with the same weights
        checksum = sum(p.detach().double().sum() for p in model_without_ddp.parameters()).item()
        print(f'rank {misc.get_rank()}: final parameter checksum {checksum:.12e}', flush=True)
        torch.distributed.destroy_process_group()
    if misc.is_main_process():
        print(f'Training time {datetime.timedelta(seconds=int(time.time() - start_time))}')
    return stats


if __name__ == '__main__':
    parser = argparse.ArgumentParser('MIFAE pre-training', parents=[get_args_parser()])
    args = parser.parse_args()
    try:
        main(args)
    except KeyboardInterrupt:
        raise SystemExit(checkpoint.report_interrupt('main_pretrain.py', args))
