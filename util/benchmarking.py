"""Timing helpers shared by the benchmark scripts (no dependencies beyond torch)."""
import platform
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
