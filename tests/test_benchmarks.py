"""The benchmark scripts run (CPU) and their kernel-time breakdown sorts kernels into the right categories."""
import json

import numpy as np
import pytest
import torch

from benchmarks import pretrain as benchmark_pretrain
from benchmarks.common import breakdown, category


@pytest.mark.parametrize('name,cat', [
    ('sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1', 'matmul'),
    ('nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTN', 'matmul'),
    ('triton_tem_fused_addmm_gelu_3', 'matmul'),
    ('aten::addmm', 'matmul'),
    ('void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>', 'attention'),
    ('aten::_scaled_dot_product_flash_attention_for_cpu', 'attention'),
    ('triton_red_fused_native_layer_norm_7', 'fused (compiled)'),
    ('void regular_fft<512u, EPT_8, 16u, 4u, CallbackType 0, float>', 'fft'),
    ('void at::native::multi_tensor_apply_kernel<at::native::FusedAdamMathFunctor<float, 4>>', 'optimizer'),
    ('Memcpy DtoD (Device -> Device)', 'copies'),
    ('void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>', 'other'),
])
def test_kernel_categories(name, cat):
    assert category(name) == cat


def test_breakdown_sums_per_step_and_rates():
    rows = [('aten::mm', 3000.0), ('aten::addmm', 1000.0), ('triton_poi_fused_add_0', 500.0), ('aten::gelu', 500.0)]
    out = breakdown(rows, steps=2, flops={'matmul': 4e9})
    assert out['ms_step'] == 2.5
    assert out['categories']['matmul'] == dict(ms=2.0, share=0.8, tflops=2.0)     # 4 GFLOP in 2 ms
    assert list(out['categories']) == ['matmul', 'fused (compiled)', 'other']   # slowest first
    assert out['top'][0] == ['aten::mm', 1.5]


@pytest.mark.slow
def test_pretrain_benchmark_runs_on_cpu_with_profile(capsys):
    args = benchmark_pretrain.get_args_parser().parse_args(
        ['--device', 'cpu', '--model', 'mae_vit_micro_patch8', '--input_size', '32', '--batch_size', '2',
         '--steps', '2', '--warmup', '1', '--profile', '1', '--check_loss'])
    benchmark_pretrain.main(args)
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r['batch'] == 2 and r['img_s'] > 0 and r['gflop_img'] > 0 and r['loss_check']['rel_diff'] < 1e-6
    cats = r['profile']['categories']
    assert cats['matmul']['ms'] > 0 and cats['matmul']['tflops'] > 0
    assert abs(sum(c['share'] for c in cats.values()) - 1) < 0.01


def test_data_only_mode_times_one_worker(capsys):
    args = benchmark_pretrain.get_args_parser().parse_args(
        ['--data_only', '--num_images', '8', '--image_size', '128', '--input_size', '112', '--image_format', 'jpg'])
    benchmark_pretrain.main(args)
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r['mode'] == 'data_only' and r['images'] >= 8 and r['img_s_per_worker'] > 0


def test_benchmarks_and_self_blending_leave_the_thread_count_as_found(capsys):
    """The thread count changes a run's numbers (sums split otherwise): whatever sets it for a while restores it,
    so a demo or training run after a benchmark in the same process trains as it would alone."""
    import cv2

    from synthetic.faces import render_face, sample_identity
    from util.self_blend import self_blend
    before = torch.get_num_threads(), cv2.getNumThreads()
    benchmark_pretrain.main(benchmark_pretrain.get_args_parser().parse_args(
        ['--data_only', '--num_images', '4', '--image_size', '64', '--input_size', '32']))
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before
    rng = np.random.default_rng(0)
    img, lm = render_face(sample_identity(rng), rng, size=64)
    self_blend(img, lm, rng)
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before
