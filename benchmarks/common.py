"""Timing helpers shared by the benchmark scripts (no dependencies beyond torch)."""
import platform
import re
import time

import torch


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_steps(step, warmup, steps, device):
    """Run `step(i)` warmup times untimed (compilation happens there), then `steps` times timed.

    Returns (warmup seconds, timed seconds, the last step's return value); peak memory is reset
    after the warm-up, so torch.cuda.max_memory_allocated then covers the timed steps only.
    """
    t0 = time.time()
    for i in range(warmup):
        step(i)
    sync(device)
    warmup_s = time.time() - t0
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    out = None
    t0 = time.perf_counter()
    for i in range(steps):
        out = step(i)
    sync(device)
    return warmup_s, time.perf_counter() - t0, out


# ---------------------------------------------------------------------- where the time goes
# Kernel (CUDA) or operator (CPU) names -> a few categories; first match wins, names lower-cased.
CATEGORIES = (
    ('attention', r'flash|fmha|attention|sdpa'),
    ('matmul', r'gemm|nvjet|xmma|cutlass|cublas|fprop|dgrad|wgrad|triton_tem_|'
               r'^aten::(mm|addmm|bmm|baddbmm|linear|matmul|mkldnn_convolution|convolution_backward)$'),
    ('fft', r'fft'),
    ('optimizer', r'adam|multi_tensor|foreach|optimizer'),
    ('fused (compiled)', r'^triton_|cpp_fused|compiledfxgraph'),
    ('copies', r'memcpy|memset|^aten::(copy_|_to_copy|fill_|cat)$'),
)


def category(name):
    """The CATEGORIES entry a kernel or operator name falls in ('other': eager pointwise and reductions)."""
    name = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name):
            return cat
    return 'other'


def flop_categories(flop_counts):
    """FLOPs per category from FlopCounterMode.get_flop_counts()['Global'] ({op: flops})."""
    out = {}
    for op, flops in flop_counts.items():
        name = str(op).split('.')[-1]
        cat = 'attention' if 'attention' in name else 'matmul' if re.fullmatch(
            r'_?(mm|addmm|bmm|baddbmm|convolution|convolution_backward|scaled_mm)', name) else 'other'
        out[cat] = out.get(cat, 0) + flops
    return out


def timed_kernels(prof, device):
    """(name, microseconds) of every device kernel on CUDA, of every operator's own time on the CPU."""
    from torch.autograd import DeviceType
    averages = prof.key_averages()
    if device.type != 'cuda':
        return [(e.key, e.self_cpu_time_total) for e in averages]
    rows = [(e.key, e.self_device_time_total) for e in averages if e.device_type == DeviceType.CUDA]
    if not rows:                                     # layouts that attach kernels to their launching operator
        rows = [(k.name, k.duration) for e in prof.events() for k in e.kernels]
    return rows


def breakdown(rows, steps, flops=None, top=8):
    """Milliseconds per step by category (with achieved TFLOP/s where FLOPs are given) and the top kernels.

    rows: (name, microseconds) summed over `steps` steps; flops: {category: FLOPs per step}.
    """
    total = sum(us for _, us in rows) or 1.0
    by_cat, by_name = {}, {}
    for name, us in rows:
        by_cat[category(name)] = by_cat.get(category(name), 0.0) + us
        by_name[name] = by_name.get(name, 0.0) + us
    cats = {}
    for cat, us in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        ms = us / steps / 1e3
        cats[cat] = dict(ms=round(ms, 3), share=round(us / total, 3))
        if flops and flops.get(cat) and ms > 0:
            cats[cat]['tflops'] = float(f'{flops[cat] / (ms / 1e3) / 1e12:.3g}')   # a slow CPU: never 0.0
    top_names = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
    return dict(ms_step=round(total / steps / 1e3, 3), categories=cats,
                top=[[name[:90], round(us / steps / 1e3, 3)] for name, us in top_names])


def profile_steps(step, steps, device, flops=None):
    """Run `step(i)` `steps` times under torch.profiler and return `breakdown` of the recorded time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(i)
        sync(device)
    return breakdown(timed_kernels(prof, device), steps, flops)


def fill_preset(args, presets, at_least_one, error):
    """A grid benchmark's options left unset (None) filled from presets['quick' | 'default'], then every flag of
    `at_least_one` checked >= 1 (a one-line `error(msg)` otherwise). -> args"""
    for k, v in presets['quick' if args.quick else 'default'].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for flag in at_least_one:
        if getattr(args, flag) < 1:
            raise error(f'--{flag} must be at least 1')
    return args
