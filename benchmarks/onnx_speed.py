"""Per-face time of the detector's classification path on the CPU: onnxruntime against PyTorch eager, in one run.

    python -m benchmarks.onnx_speed [--model vit_base_patch16] [--input_size 224] [--batch 1 16] [--rounds 9]

The detector is built with random weights (speed does not depend on their values), exported as
export.py --format onnx does it (util.onnx_runtime.export, which also checks its probabilities against
PyTorch on 32 faces), and both run on the same batch of normalised faces with the same number of threads.
Fair on a machine shared with other work: each round times PyTorch and onnxruntime back to back (the order
alternating between rounds), one warm-up call each first, and the table gives the median over rounds of the
seconds per face, and the median of the per-round ratios.
"""
import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models_vit  # noqa: E402
import util.onnx_runtime as onnx_runtime  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser('onnxruntime vs PyTorch eager, per face, on the CPU')
    p.add_argument('--model', default='vit_base_patch16')
    p.add_argument('--input_size', default=224, type=int)
    p.add_argument('--batch', nargs='+', default=[1, 16], type=int, help='faces per call')
    p.add_argument('--rounds', default=9, type=int, help='timed calls per backend and batch size')
    p.add_argument('--threads', default=2, type=int, help='intra-op threads of both')
    p.add_argument('--json', default='', help='append the results as one JSON line here')
    return p


def main(args):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    # random weights; a head at std 0.02 (not the 2e-5 of a fresh fine-tune) so the export check compares
    # probabilities away from 0.5
    model = models_vit.MODELS[args.model](img_size=args.input_size, head_init_std=0.02).eval()
    meta = models_vit.detector_meta(model, args.model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'detector.onnx'
        diff = onnx_runtime.export(model, meta, path, threshold=0.5)
        ort = onnx_runtime.OnnxDetector(path, threads=args.threads)
        faces = onnx_runtime.check_faces(meta, n=max(args.batch))
        rows = []
        for n in args.batch:
            x, xn = faces[:n], faces[:n].numpy()

            def run_torch():
                with torch.no_grad():
                    model.fake_prob(model(x))

            def run_ort():
                ort.probs(xn)
            backends = dict(pytorch=run_torch, onnxruntime=run_ort)
            for fn in backends.values():                                           # warm-up
                fn()
            times = {k: [] for k in backends}
            for r in range(args.rounds):
                for k in (list(backends) if r % 2 == 0 else list(backends)[::-1]):
                    t = time.perf_counter()
                    backends[k]()
                    times[k].append((time.perf_counter() - t) / n)
            ratios = [a / b for a, b in zip(times['pytorch'], times['onnxruntime'])]
            rows.append(dict(batch=n, pytorch_ms=1e3 * statistics.median(times['pytorch']),
                             onnxruntime_ms=1e3 * statistics.median(times['onnxruntime']),
                             speedup=statistics.median(ratios), min_speedup=min(ratios), max_speedup=max(ratios)))
    env = dict(model=args.model, input_size=args.input_size, threads=args.threads, rounds=args.rounds,
               cpu=platform.processor() or platform.machine(), torch=torch.__version__,
               onnxruntime=__import__('onnxruntime').__version__, max_prob_diff=diff,
               date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
    print(f'{args.model} at {args.input_size} px, random weights, {args.threads} threads, {args.rounds} rounds; '
          f'export check: largest p(fake) difference {diff:.1e}')
    print('| faces per call | PyTorch eager, ms per face | onnxruntime, ms per face | speed-up (median; min-max) |')
    print('|---|---|---|---|')
    for r in rows:
        print(f'| {r["batch"]} | {r["pytorch_ms"]:.1f} | {r["onnxruntime_ms"]:.1f} | {r["speedup"]:.2f}x '
              f'({r["min_speedup"]:.2f}-{r["max_speedup"]:.2f}) |')
    if args.json:
        with open(args.json, 'a') as f:
            f.write(json.dumps(dict(env, rows=rows)) + '\n')
    return rows


if __name__ == '__main__':
    main(get_args_parser().parse_args())
