"""Time the full MIFAE pre-training step, or the input pipeline, and print one JSON line per configuration.

Model step (masks already made, FFT low-pass, both branches, both losses, backward, AdamW) on synthetic
on-device data:
    python -m benchmarks.pretrain --model mae_vit_base_patch16 --batch_size 64 256 --compile off on --amp bf16
    python -m benchmarks.pretrain --device cpu --model mae_vit_tiny_patch16 --input_size 112 --batch_size 8
    python -m benchmarks.pretrain --compile on --batch_size 256 --profile 5     # where the step's time goes
A `--variant reference` run emulates the released reference code's step on current libraries: fp16 with a
GradScaler, unfused (explicit softmax) attention, a for-loop AdamW, no compilation.

Input pipeline, per DataLoader worker (decode, crop, flip, landmark transform, facial-region mask):
    python -m benchmarks.pretrain --data_only --num_images 256 --image_size 256
Imports nothing beyond torch, timm, numpy and OpenCV (runs on the GPU machine as is).
"""
import argparse
import json
import tempfile
import time

import torch

import models_mae
import util.misc as misc
from benchmarks.common import device_name, flop_categories, profile_steps, time_steps


def get_args_parser():
    p = argparse.ArgumentParser('MIFAE pre-training benchmark')
    p.add_argument('--model', default='mae_vit_base_patch16', choices=list(models_mae.MODELS))
    p.add_argument('--batch_size', default=[64], type=int, nargs='+')
    p.add_argument('--input_size', default=224, type=int)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--amp', default=['auto'], nargs='+', choices=['auto', 'bf16', 'fp16', 'none'])
    p.add_argument('--compile', default=['off'], nargs='+', choices=['off', 'on'])
    p.add_argument('--compile_mode', default='default', help='torch.compile mode (e.g. max-autotune-no-cudagraphs)')
    p.add_argument('--variant', default='mifae', choices=['mifae', 'reference'])
    p.add_argument('--steps', default=20, type=int, help='timed steps')
    p.add_argument('--warmup', default=5, type=int, help='untimed steps first (compilation happens here)')
    p.add_argument('--peak_tflops', default=None, type=float, help='bf16 peak of the device (default: measured)')
    p.add_argument('--check_loss', action='store_true', help='also compare the loss with an eager fp32 step')
    p.add_argument('--profile', default=0, type=int, metavar='N',
                   help='also profile N steps: time per step by kernel category (matmul, attention, fft, fused, '
                        'optimizer, ...) with achieved TFLOP/s, and the top kernels')
    g = p.add_argument_group('input pipeline')
    g.add_argument('--data_only', action='store_true', help='time the input pipeline of one worker instead')
    g.add_argument('--num_images', default=256, type=int)
    g.add_argument('--image_size', default=256, type=int, help='side of the stored face crops')
    g.add_argument('--image_format', default='png', choices=['png', 'jpg'])
    g.add_argument('--data_path', default='', help='time these faces instead of generated ones')
    return p


# ---------------------------------------------------------------------- model step
def flops_per_image(model, input_size, device):
    """Forward + backward FLOPs of one image, counted by torch.utils.flop_counter on a batch of 2.

    Returns (total, {category: FLOPs}) with the categories of benchmarks.common.flop_categories."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(2, 3, input_size, input_size, device=device)
    mask = model.random_masks(2, device)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = model(x, mask)
        loss.backward()
    model.zero_grad(set_to_none=True)
    per_cat = flop_categories(counter.get_flop_counts().get('Global', {}))
    return counter.get_total_flops() / 2, {cat: flops / 2 for cat, flops in per_cat.items()}


def measured_peak_tflops(device):
    """bf16 matmul rate of the device (8192^3 products), the ceiling the step is compared with."""
    if device.type != 'cuda':
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * 10 / (start.elapsed_time(end) / 1e3) / 1e12


def make_reference_like(model):
    """The reference's step on today's timm: explicit-softmax attention instead of fused SDPA."""
    for blk in list(model.blocks) + list(model.decoder_blocks):
        blk.attn.fused_attn = False
    return model


def time_step(args, batch_size, amp, compiled, device, peak):
    torch.manual_seed(0)
    model = models_mae.MODELS[args.model](img_size=args.input_size).to(device)
    if args.variant == 'reference':
        model = make_reference_like(model)
        amp = 'fp16' if device.type == 'cuda' else 'none'
    flops, flops_by_cat = flops_per_image(model, args.input_size, device)
    gflop = flops / 1e9
    groups = misc.param_groups_weight_decay(model, 0.05)
    if args.variant == 'reference':
        optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), foreach=False)
    else:
        optimizer = misc.make_adamw(groups, lr=1e-4, betas=(0.9, 0.95), device=device)
    amp_dtype, scaler = misc.resolve_amp(amp, device)
    step_model = torch.compile(model, mode=args.compile_mode, dynamic=False) if compiled else model

    # a pool of batches, made up front, so the timed loop measures the step alone
    imgs = [torch.randn(batch_size, 3, args.input_size, args.input_size, device=device) for _ in range(2)]
    masks = [model.random_masks(batch_size, device) for _ in range(2)]

    def step(i):
        with misc.autocast(device, amp_dtype):
            loss, _ = step_model(imgs[i % 2], masks[i % 2])
        misc.backward_and_step(loss, optimizer, scaler)
        return loss

    loss_check = None
    if args.check_loss:
        with torch.no_grad():
            ref, _ = model.float()(imgs[0], masks[0])
            with misc.autocast(device, amp_dtype):
                got, _ = step_model(imgs[0], masks[0])
        loss_check = dict(eager_fp32=float(ref), this=float(got),
                          rel_diff=abs(float(got) - float(ref)) / abs(float(ref)))

    warmup_s, elapsed, loss = time_steps(step, args.warmup, args.steps, device)
    ms = elapsed / args.steps * 1e3
    img_s = batch_size * args.steps / elapsed
    out = dict(device=device_name(device), torch=torch.__version__, model=args.model, variant=args.variant,
               batch=batch_size, input_size=args.input_size,
               amp={None: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}[amp_dtype],
               compile=compiled, img_s=round(img_s, 1), ms_step=round(ms, 2),
               peak_gib=round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == 'cuda' else None,
               gflop_img=round(gflop, 1), tflops=round(gflop * img_s / 1e3, 1), warmup_s=round(warmup_s, 1),
               final_loss=round(float(loss.detach()), 4))
    if peak:
        out.update(peak_tflops=round(peak, 1), peak_share=round(gflop * img_s / 1e3 / peak, 3))
    if loss_check:
        out['loss_check'] = loss_check
    if args.profile:
        out['profile'] = profile_steps(step, args.profile, device,
                                       {cat: f * batch_size for cat, f in flops_by_cat.items()})
    return out


# ---------------------------------------------------------------------- input pipeline
def time_data(args):
    """Images per second of one worker: decode + RandomResizedCrop + flip + landmarks + facial mask."""
    from util.datasets import FaceDataset, FaceTransform, load_samples
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_path:
            samples = load_samples(args.data_path)[:args.num_images]
        else:
            samples = write_faces(tmp, args.num_images, args.image_size, args.image_format)
        ds = FaceDataset(samples, FaceTransform(args.input_size, train=True, normalize=False), mask_strategy='facial',
                         patch_size=16, mask_ratio=0.75)
        for i in range(min(16, len(ds))):         # warm caches
            ds[i]
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 3.0 or n < len(ds):
            ds[n % len(ds)]
            n += 1
        elapsed = time.perf_counter() - t0
    return dict(device=device_name(torch.device('cpu')), mode='data_only', image_size=args.image_size,
                image_format=args.image_format, input_size=args.input_size, images=n,
                img_s_per_worker=round(n / elapsed, 1), ms_img=round(elapsed / n * 1e3, 3))


def write_faces(folder, num, size, fmt):
    """Synthetic face crops with landmarks, stored as a folder dataset."""
    import cv2
    import numpy as np

    from synthetic.faces import render_face, sample_identity
    from util.datasets import scan_folder
    rng = np.random.default_rng(0)
    ids = [sample_identity(rng) for _ in range(16)]
    for i in range(num):
        img, lm = render_face(ids[i % len(ids)], rng, size)
        cv2.imwrite(f'{folder}/{i:05d}.{fmt}', img[:, :, ::-1])
        np.save(f'{folder}/{i:05d}.npy', lm)
    return scan_folder(folder)


def main(args):
    if args.data_only:
        with misc.num_threads(1):                 # a DataLoader worker runs single-threaded
            print(json.dumps(time_data(args)), flush=True)
        return
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = args.peak_tflops or measured_peak_tflops(device)
    for amp in args.amp:
        for compiled in args.compile:
            for bs in args.batch_size:
                print(json.dumps(time_step(args, bs, amp, compiled == 'on', device, peak)), flush=True)
                if device.type == 'cuda':
                    torch.cuda.empty_cache()


if __name__ == '__main__':
    main(get_args_parser().parse_args())
