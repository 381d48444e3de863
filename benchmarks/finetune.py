"""Stage-2 speed: evaluation throughput (GPU-only and end-to-end with the DataLoader), the fine-tuning step,
and predict latency per image on the CPU. One JSON line per configuration.

    python -m benchmarks.finetune --mode eval_gpu eval_e2e train --model vit_base_patch16 --batch_size 256 \
        --num_workers 16 --compile off on
    python -m benchmarks.finetune --mode predict_cpu --model vit_base_patch16
    python -m benchmarks.finetune --device cpu --model vit_tiny_patch16 --input_size 112 --batch_size 8 --steps 3

eval_gpu:    forward + fake probability on uint8 batches already on the device (normalisation included).
eval_e2e:    the same fed by main_finetune's evaluation DataLoader (PNG decode, resize, uint8 collate,
             pinned copy) over stored face crops; also the loader alone (loader_img_s). The GPU waits for data
             when loader_img_s < the eval_gpu figure.
train:       one fine-tuning step (last block + norm + head train, reconstruction of real faces, AdamW).
predict_cpu: per-image latency of predict.py's path on the CPU: the model on one face (batch 1), and, when
             dlib is installed, face detection + landmarks + crop + model on a 512 px photo.
Weights are random (speed does not depend on them). Imports no dlib / face_alignment at module level.
"""
import argparse
import json
import tempfile
import time

import numpy as np
import torch

import models_vit
import util.misc as misc
from benchmarks.common import device_name, sync, time_steps
from engine_finetune import reconstruction_loss
from util.datasets import normalize_batch
from util.lr_decay import param_groups_lrd


def get_args_parser():
    p = argparse.ArgumentParser('MIFAE fine-tuning / evaluation benchmark')
    p.add_argument('--mode', nargs='+', default=['eval_gpu', 'eval_e2e', 'train', 'predict_cpu'],
                   choices=['eval_gpu', 'eval_e2e', 'train', 'predict_cpu'])
    p.add_argument('--model', default='vit_base_patch16', help=f'one of {", ".join(models_vit.MODELS)}')
    p.add_argument('--input_size', default=224, type=int)
    p.add_argument('--batch_size', default=[256], type=int, nargs='+')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--amp', default='auto', choices=['auto', 'bf16', 'none'])
    p.add_argument('--compile', default=['auto'], nargs='+', choices=['auto', 'off', 'on'])
    p.add_argument('--steps', default=20, type=int, help='timed batches')
    p.add_argument('--warmup', default=3, type=int, help='untimed batches first (compilation happens here)')
    p.add_argument('--trainable_blocks', default=1, type=int)
    g = p.add_argument_group('end-to-end data')
    g.add_argument('--num_workers', default=16, type=int)
    g.add_argument('--image_size', default=256, type=int, help='side of the stored face crops')
    g.add_argument('--image_format', default='png', choices=['png', 'jpg'])
    g.add_argument('--unique_images', default=256, type=int, help='distinct face files written (rows repeat them)')
    g.add_argument('--e2e_batches', default=160, type=int, help='batches per end-to-end pass (the first few untimed)')
    g.add_argument('--data_path', default='', help='time these faces (manifest CSV or folder) instead')
    g.add_argument('--threads', default=None, type=int, help='CPU threads for predict_cpu (default: torch default)')
    return p


def use_compile(flag, device):
    return flag == 'on' or (flag == 'auto' and device.type == 'cuda')


def build(args, device, train=False):
    model = models_vit.MODELS[models_vit.resolve_model_name(args.model)](img_size=args.input_size).to(device)
    model.freeze(args.trainable_blocks)
    return model.train(train)


def base_record(args, device, mode, batch, amp_dtype, compiled):
    return dict(mode=mode, device=device_name(device), torch=torch.__version__, model=args.model,
                input_size=args.input_size, batch=batch,
                amp={None: 'fp32', torch.bfloat16: 'bf16'}[amp_dtype], compile=compiled)


# ---------------------------------------------------------------------- GPU-only evaluation
def time_eval_gpu(args, device, batch, amp_dtype, compiled):
    model = build(args, device)
    net = torch.compile(model) if compiled else model
    pool = [torch.randint(0, 256, (batch, 3, args.input_size, args.input_size), dtype=torch.uint8, device=device)
            for _ in range(2)]

    @torch.no_grad()
    def step(i):
        with misc.autocast(device, amp_dtype):
            return model.fake_prob(net(normalize_batch(pool[i % 2])))

    warm, dt, last = time_steps(step, args.warmup, args.steps, device)
    assert torch.isfinite(last).all()
    rec = base_record(args, device, 'eval_gpu', batch, amp_dtype, compiled)
    rec.update(img_s=round(batch * args.steps / dt, 1), ms_batch=round(dt / args.steps * 1e3, 2),
               warmup_s=round(warm, 1), peak_gib=peak_gib(device))
    return rec


def peak_gib(device):
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == 'cuda' else None


# ---------------------------------------------------------------------- end-to-end evaluation
def face_samples(args, folder):
    """Stored face crops: --data_path, or synthetic faces written as files, rows repeating them."""
    from util.datasets import Sample, load_samples
    if args.data_path:
        return [Sample(s.path, None, max(s.label, 0), s.video, s.dataset) for s in load_samples(args.data_path)]
    import cv2

    from synthetic.faces import render_face, sample_identity
    rng = np.random.default_rng(0)
    ids = [sample_identity(rng) for _ in range(16)]
    paths = []
    for i in range(args.unique_images):
        img, _ = render_face(ids[i % len(ids)], rng, args.image_size)
        path = f'{folder}/{i:05d}.{args.image_format}'
        cv2.imwrite(path, img[:, :, ::-1])
        paths.append(path)
    n = max(args.batch_size) * args.e2e_batches
    return [Sample(paths[i % len(paths)], None, i % 2, f'v{i // 8}', 'bench') for i in range(n)]


def time_eval_e2e(args, device, batch, amp_dtype, compiled, samples):
    """Loader alone, then loader + model, as main_finetune's evaluation runs (uint8 batches, pinned memory,
    normalised on the device). Rates are taken after the first warmup + 2 x num_workers batches, once the
    prefetch queues (2 batches per worker) have filled or drained, over --e2e_batches batches in all."""
    from torch.utils.data import DataLoader

    from util.datasets import FaceDataset, FaceTransform
    from util.loaders import ShardSampler
    ds = FaceDataset(samples, FaceTransform(args.input_size, train=False, normalize=False), require_label=True)
    loader = DataLoader(ds, sampler=ShardSampler(len(ds)), batch_size=batch, num_workers=args.num_workers,
                        pin_memory=device.type == 'cuda', drop_last=True, persistent_workers=args.num_workers > 0)
    n_batches = min(len(loader), args.e2e_batches)
    if n_batches < 1:
        raise SystemExit(f'benchmarks/finetune.py: error: eval_e2e: {len(ds)} images'
                         f'{f" in --data_path {args.data_path}" if args.data_path else ""} and --e2e_batches '
                         f'{args.e2e_batches} give no full batch of --batch_size {batch}')
    skip = min(args.warmup + 2 * max(args.num_workers, 1), n_batches // 2)

    def timed_pass(consume):
        t0, n = None, 0
        for i, b in enumerate(loader):
            if i == skip:
                sync(device)
                t0 = time.perf_counter()
            x = b['img'].to(device, non_blocking=True)
            consume(x)
            if i >= skip:
                n += x.shape[0]
            if i + 1 >= n_batches:
                break
        sync(device)
        return n, n / (time.perf_counter() - t0)

    _, loader_img_s = timed_pass(lambda x: None)
    model = build(args, device)
    net = torch.compile(model) if compiled else model
    with torch.no_grad():
        for _ in range(args.warmup):                             # compile before the timed pass
            with misc.autocast(device, amp_dtype):
                net(normalize_batch(torch.zeros(batch, 3, args.input_size, args.input_size, dtype=torch.uint8,
                                                device=device)))
        probs = []

        def run_model(x):
            with misc.autocast(device, amp_dtype):
                probs.append(model.fake_prob(net(normalize_batch(x))))
        n, img_s = timed_pass(run_model)
    rec = base_record(args, device, 'eval_e2e', batch, amp_dtype, compiled)
    rec.update(img_s=round(img_s, 1), loader_img_s=round(loader_img_s, 1), num_workers=args.num_workers,
               image_size=args.image_size, image_format=args.image_format if not args.data_path else 'data_path',
               images_timed=n)
    return rec


# ---------------------------------------------------------------------- training step
def time_train(args, device, batch, amp_dtype, compiled):
    model = build(args, device, train=True)
    opt = misc.make_adamw(param_groups_lrd(model, 0.05, layer_decay=0.75), lr=1e-4, betas=(0.9, 0.999),
                          device=device)
    net = torch.compile(model) if compiled else model
    pool = [torch.randint(0, 256, (batch, 3, args.input_size, args.input_size), dtype=torch.uint8, device=device)
            for _ in range(2)]
    labels = torch.arange(batch, device=device) % 2

    def step(i):
        x = normalize_batch(pool[i % 2])
        with misc.autocast(device, amp_dtype):
            logits, pred = net(x, return_recon=True)
        ce = torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=0.1)
        rec, _, _ = reconstruction_loss(pred, model.recon_target(x), labels)
        loss = ce + 0.5 * rec
        misc.backward_and_step(loss, opt)
        return loss.detach()

    warm, dt, loss = time_steps(step, args.warmup, args.steps, device)
    rec = base_record(args, device, 'train', batch, amp_dtype, compiled)
    rec.update(img_s=round(batch * args.steps / dt, 1), ms_step=round(dt / args.steps * 1e3, 2),
               warmup_s=round(warm, 1), peak_gib=peak_gib(device), trainable_blocks=args.trainable_blocks,
               final_loss=round(float(loss), 4))
    return rec


# ---------------------------------------------------------------------- predict latency on the CPU
def time_predict_cpu(args):
    device = torch.device('cpu')
    model = build(args, device)
    from util.datasets import FaceTransform
    tf = FaceTransform(args.input_size, train=False)
    crop = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)

    @torch.no_grad()
    def model_only(c):
        return float(model.fake_prob(model(tf(c)[0][None]))[0])

    def timed(fn, n):
        fn()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return round(float(np.median(ts)) * 1e3, 1)

    rec = dict(mode='predict_cpu', device=device_name(device), torch=torch.__version__, model=args.model,
               input_size=args.input_size, model_ms_per_face=timed(lambda: model_only(crop), max(3, args.steps)))
    try:
        from skimage import data as skdata

        from preprocess import faces as face_utils
        landmarker = face_utils.build_landmarker('dlib')
    except (ImportError, RuntimeError) as e:
        rec['full_ms_per_image'] = None
        rec['note'] = f'no face detection timed: {e}'
        return rec
    photo = skdata.astronaut()                                       # 512 x 512 RGB, one face

    def full():
        found = face_utils.extract_faces(photo, landmarker, margin=1.3, size=256, largest_only=False)
        return [model_only(f['crop']) for f in found]

    n_faces = len(full())
    rec.update(full_ms_per_image=timed(full, max(3, args.steps // 2)), faces=n_faces, photo='skimage astronaut 512x512',
               detect_ms_per_image=timed(lambda: face_utils.extract_faces(photo, landmarker, largest_only=False),
                                         max(3, args.steps // 2)))
    return rec


def main(args):
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype, _ = misc.resolve_amp(args.amp, device)
    compiles = sorted({use_compile(c, device) for c in args.compile})
    with tempfile.TemporaryDirectory() as tmp:
        samples = face_samples(args, tmp) if 'eval_e2e' in args.mode else None
        for mode in args.mode:
            if mode == 'predict_cpu':
                with misc.num_threads(args.threads):
                    print(json.dumps(time_predict_cpu(args)), flush=True)
                continue
            for compiled in compiles:
                for bs in args.batch_size:
                    if mode == 'eval_gpu':
                        rec = time_eval_gpu(args, device, bs, amp_dtype, compiled)
                    elif mode == 'eval_e2e':
                        rec = time_eval_e2e(args, device, bs, amp_dtype, compiled, samples)
                    else:
                        rec = time_train(args, device, bs, amp_dtype, compiled)
                    print(json.dumps(rec), flush=True)
                    if device.type == 'cuda':
                        torch.cuda.empty_cache()


if __name__ == '__main__':
    main(get_args_parser().parse_args())
