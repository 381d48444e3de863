"""Figures of Visualization/visualize.py: grid size, not blank, facial-region masks hide the right patches,
norm-pix de-normalisation and the frequency recombination."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models_mae
from util.datasets import load_samples
from util.masking import REGION_NAMES, num_masked, region_patches
from Visualization import visualize as viz

SEED = 3


def png(path):
    return np.asarray(Image.open(path).convert('RGB')).astype(np.float32)


def panel(img, layout, row, col):
    x0, y0, side = layout.panel_box(row, col)
    return img[y0:y0 + side, x0:x0 + side]


def patch_centre(panel_img, index, grid):
    """The central half of patch `index` of a panel (away from resampling edges)."""
    step = panel_img.shape[0] / grid
    r, c = divmod(int(index), grid)
    y0, y1 = int(round((r + .25) * step)), int(round((r + .75) * step))
    x0, x1 = int(round((c + .25) * step)), int(round((c + .75) * step))
    return panel_img[y0:y1, x0:x1]


def assert_not_blank(img, layout):
    assert img.std() > 20
    for r in range(layout.rows):
        for c in range(layout.cols):
            assert panel(img, layout, r, c).std() > 1, f'panel ({r}, {c}) is blank'


@pytest.fixture(scope='module')
def figures(pretrained_tiny, synthetic_data, tmp_path_factory):
    model = viz.load_autoencoder(pretrained_tiny / 'checkpoint-last.pth')
    samples = load_samples(synthetic_data['test'])
    out = tmp_path_factory.mktemp('figures')
    written = viz.write_pretrain_figures(model, samples, out, (1, 2, 3), num_images=3, num_freq_images=2, seed=SEED)
    return model, samples, written


def test_figures_1_to_3_written_with_their_grids(figures):
    model, _, written = figures
    assert sorted(written) == [1, 2, 3]
    side = viz.display_size(model.img_size)
    for num, rows in ((1, 3), (2, 3), (3, 4)):                 # fig 3: an image row + a spectrum row each
        layout = viz.Layout(rows, 4, side)
        img = png(written[num])
        assert img.shape[1::-1] == layout.size, f'figure {num}'
        assert_not_blank(img, layout)


def test_figure1_hides_the_chosen_facial_region(figures):
    model, samples, written = figures
    size, p = model.img_size, model.patch_size
    grid = size // p
    chosen = viz.pick_samples(samples, 3, SEED)
    _, lms = viz.load_batch(chosen, size)
    img = png(written[1])
    layout = viz.Layout(3, 4, viz.display_size(size))
    grey = viz.MASK_FILL * 255
    for i, lm in enumerate(lms):
        g = torch.Generator().manual_seed(SEED + i)               # the seed of row i, as documented
        region = REGION_NAMES[int(torch.randperm(len(REGION_NAMES), generator=g)[0])]
        hidden_region = np.flatnonzero(region_patches(lm, region, size, p))
        assert len(hidden_region) > 0
        masked, original = panel(img, layout, i, 1), panel(img, layout, i, 0)
        is_grey = np.array([np.abs(patch_centre(masked, j, grid) - grey).max() <= 2 for j in range(grid * grid)])
        assert is_grey[hidden_region].all(), f'row {i}: {region} patches are not all hidden'
        assert is_grey.sum() == num_masked(grid * grid, model.mask_ratio)
        for j in np.flatnonzero(~is_grey):                         # visible patches show the original
            assert np.abs(patch_centre(masked, j, grid) - patch_centre(original, j, grid)).max() <= 2


def test_masks_are_fixed_by_the_seed(figures):
    model, samples, _ = figures
    _, lms = viz.load_batch(viz.pick_samples(samples, 2, SEED), model.img_size)
    a = viz.make_masks(lms, model.img_size, model.patch_size, model.mask_ratio, 'facial', SEED)
    b = viz.make_masks(lms, model.img_size, model.patch_size, model.mask_ratio, 'facial', SEED)
    c = viz.make_masks(lms, model.img_size, model.patch_size, model.mask_ratio, 'facial', SEED + 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    r = viz.make_masks(lms, model.img_size, model.patch_size, model.mask_ratio, 'random', SEED)
    assert not torch.equal(a, r)


def test_norm_pix_prediction_gets_each_patch_statistics_back():
    torch.manual_seed(0)
    model = models_mae.mae_vit_tiny_patch16(img_size=32, norm_pix_loss=True)
    imgs = torch.randn(2, 3, 32, 32) * 2 + 1
    target = model.patchify(imgs)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    perfect = (target - mean) / (var + 1e-6) ** .5                # what a perfect norm-pix model predicts
    torch.testing.assert_close(viz.unnormalize_pred(model, imgs, perfect), target, rtol=1e-4, atol=1e-4)
    model.norm_pix_loss = False
    assert viz.unnormalize_pred(model, imgs, perfect) is perfect


def test_frequency_full_reconstruction_combines_input_low_and_predicted_high():
    torch.manual_seed(0)
    model = models_mae.mae_vit_tiny_patch16(img_size=32).eval()
    imgs = torch.randn(2, 3, 32, 32)
    out = viz.frequency_reconstruction(model, imgs)
    keep = model.freq_keep.bool()                                 # FFT order, True = low frequency
    f = lambda x: torch.fft.fft2(x, norm='ortho')                 # noqa: E731
    full, orig, pred = f(out['full']), f(out['original']), f(out['pred'])
    torch.testing.assert_close(full[..., keep], orig[..., keep], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full[..., ~keep], pred[..., ~keep], atol=1e-4, rtol=1e-4)
    assert f(out['low'])[..., ~keep].abs().max() < 1e-4            # the input has no high frequencies


def test_command_line_on_image_files(pretrained_tiny, synthetic_data, tmp_path):
    faces = [s.path for s in load_samples(synthetic_data['test'])[:2]]   # with sidecar .npy landmarks
    args = viz.get_args_parser().parse_args(['--checkpoint', str(pretrained_tiny / 'checkpoint-last.pth'),
                                             '--images', *faces, '--out', str(tmp_path), '--figures', '1',
                                             '--num_images', '2'])
    written = viz.main(args)
    assert list(written) == [1] and written[1].is_file()
    assert png(written[1]).shape[1::-1] == viz.Layout(2, 4, viz.display_size(112)).size


def test_bad_inputs_are_one_line_errors(pretrained_tiny, synthetic_data, tmp_path):
    parser = viz.get_args_parser()
    with pytest.raises(SystemExit, match='figures 1-3 need --checkpoint'):
        viz.main(parser.parse_args(['--manifest', str(synthetic_data['test'])]))
    with pytest.raises(SystemExit, match='does not exist'):
        viz.main(parser.parse_args(['--checkpoint', str(tmp_path / 'none.pth'), '--manifest',
                                    str(synthetic_data['test'])]))
    bogus = tmp_path / 'bogus.pth'
    torch.save({'model': {}}, bogus)
    with pytest.raises(SystemExit, match='no training arguments'):
        viz.load_autoencoder(bogus)


def test_data_mistakes_are_one_line_errors(synthetic_data, tmp_path):
    """A manifest header typo, an empty folder, a text file named .jpg: one line naming the file, no traceback
    (figure 5 needs no checkpoint, so the command gets as far as reading the faces)."""
    import shutil
    face = load_samples(synthetic_data['test'])[0]
    text = tmp_path / 'text.jpg'
    text.write_text('path,landmarks,label\n' * 20)
    shutil.copyfile(face.landmarks, tmp_path / 'text.npy')
    typo = tmp_path / 'typo.csv'
    typo.write_text('path,landmark,label,video,dataset\nx.png,x.npy,0,v,d\n')
    (tmp_path / 'empty').mkdir()
    cases = ((['--manifest', typo], f'{typo}: manifest header lacks column(s) landmarks'),
             (['--images', tmp_path / 'empty'], f'{tmp_path / "empty"}: no images'),
             (['--images', text], f'{text}: cannot decode image'))
    for argv, words in cases:
        args = viz.get_args_parser().parse_args([*map(str, argv), '--figures', '5', '--out', str(tmp_path)])
        with pytest.raises(SystemExit) as e:
            viz.main(args)
        line = str(e.value.code)
        assert line.startswith('visualize.py: error: ') and words in line and '\n' not in line


@pytest.mark.slow
def test_data_mistake_on_the_command_line_prints_no_traceback(synthetic_data, tmp_path):
    import shutil
    import subprocess
    import sys
    text = tmp_path / 'text.jpg'
    text.write_text('path,landmarks,label\n' * 20)
    shutil.copyfile(load_samples(synthetic_data['test'])[0].landmarks, tmp_path / 'text.npy')
    run = subprocess.run([sys.executable, 'Visualization/visualize.py', '--images', str(text), '--figures', '5',
                          '--out', str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=Path(viz.__file__).resolve().parents[1])
    assert run.returncode == 1 and 'Traceback' not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f'visualize.py: error: {text}: cannot decode image')


@pytest.mark.parametrize('cols, side', [(1, 16), (2, 16), (2, 32), (3, 32)])
def test_figure4_title_is_whole_and_inside_the_figure(cols, side):
    """Narrow figures: every word of the title is drawn, inside the figure and its header band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    x = torch.rand(cols, 3, side, side)
    result = dict(input=x, recon=x, diff=x.mean(1), prob=torch.rand(cols), cam=torch.rand(cols, side, side))
    g, _ = viz.figure_discrepancy(result, [f'set {c}' for c in range(cols)])
    canvas = FigureCanvasAgg(g.fig)
    canvas.draw()
    [title] = g.fig.texts
    box, (w, h) = title.get_window_extent(canvas.get_renderer()), g.layout.size
    assert 0 <= box.x0 and box.x1 <= w and h - g.layout.header_h <= box.y0 and box.y1 <= h
    assert title.get_text().split() == ('Reconstruction discrepancy: detector tokens -> frozen decoder (heat maps '
                                        f'share one scale, 0 to {float(result["diff"].max()):.2f})').split()


def test_discrepancy_figure_grid_and_group_columns(tmp_path):
    g = 3
    x = torch.rand(g, 3, 32, 32)
    result = dict(input=x, recon=(x + 0.2 * torch.rand_like(x)).clamp(0, 1), prob=torch.tensor([.1, .8, .9]))
    result['diff'] = (result['input'] - result['recon']).abs().mean(1)
    fig, _ = viz.figure_discrepancy(result, ['real', 'Deepfakes', 'FaceSwap'])
    path = fig.save(tmp_path / 'fig4.png')
    layout = viz.Layout(3, g, viz.display_size(32), title_h=26)
    img = png(path)
    assert img.shape[1::-1] == layout.size
    assert_not_blank(img, layout)
    result['cam'] = torch.rand(g, 32, 32)                     # with a Grad-CAM: a fourth row
    fig, _ = viz.figure_discrepancy(result, ['real', 'Deepfakes', 'FaceSwap'])
    img = png(fig.save(tmp_path / 'fig4_cam.png'))
    layout = viz.Layout(4, g, viz.display_size(32), title_h=26)
    assert img.shape[1::-1] == layout.size
    assert_not_blank(img, layout)
    groups = ['ff Deepfakes', 'ff real', 'cdf fake', 'ff real', 'cdf real']
    picked = viz.pick_per_group(groups, 1, seed=0)
    assert [n for n, _ in picked] == ['ff real', 'ff Deepfakes', 'cdf real', 'cdf fake']
    assert all(groups[i] == n for n, i in picked)
    assert [n for n, _ in viz.pick_per_group(groups, 2, seed=0)] == ['ff real', 'ff real', 'ff Deepfakes',
                                                                     'cdf real', 'cdf fake']


def test_figure4_from_a_detector_checkpoint(finetune_tiny, pretrained_tiny, tmp_path):
    """Command line with --detector: one column per group of the manifest (real, synthetic_swap)."""
    test_csv = finetune_tiny['test']
    args = viz.get_args_parser().parse_args(['--detector', str(finetune_tiny['out'] / 'checkpoint-best.pth'),
                                             '--manifest', str(test_csv), '--figures', '4', '--per_group', '2',
                                             '--out', str(tmp_path)])
    written = viz.main(args)
    assert list(written) == [4]
    # 2 real + 2 fake; + Grad-CAM row
    layout = viz.Layout(4, 4, viz.display_size(finetune_tiny['input_size']), title_h=26)
    img = png(written[4])
    assert img.shape[1::-1] == layout.size
    assert_not_blank(img, layout)
    assert sorted(set(viz.manifest_groups(test_csv))) == ['real', 'synthetic_swap']
    with pytest.raises(SystemExit, match='fine-tuning'):     # a detector is not a pre-training checkpoint
        viz.load_autoencoder(finetune_tiny['out'] / 'checkpoint-best.pth')
    with pytest.raises(SystemExit, match='--detector'):      # and vice versa
        viz.write_discrepancy_figure(pretrained_tiny / 'checkpoint-last.pth', load_samples(test_csv), tmp_path)


def test_figure4_refuses_a_detector_without_the_pretrained_decoder(finetune_tiny, pretrained_tiny, tmp_path):
    """Fine-tuned from an encoder-only checkpoint (--recon none), the decoder is random: no figure 4 from it,
    and the refusal comes before any figure is drawn."""
    ckpt = torch.load(finetune_tiny['out'] / 'checkpoint-best.pth', map_location='cpu', weights_only=False)
    ckpt['detector']['decoder'] = False
    torch.save(ckpt, tmp_path / 'no_decoder.pth')
    args = viz.get_args_parser().parse_args(['--detector', str(tmp_path / 'no_decoder.pth'), '--figures', '1', '4',
                                             '--checkpoint', str(pretrained_tiny / 'checkpoint-last.pth'),
                                             '--manifest', str(finetune_tiny['test']), '--out', str(tmp_path / 'f')])
    with pytest.raises(SystemExit, match=r'no_decoder.pth: holds no pre-trained decoder .* random decoder'):
        viz.main(args)
    with pytest.raises(SystemExit, match='holds no pre-trained decoder'):
        viz.write_discrepancy_figure(tmp_path / 'no_decoder.pth', load_samples(finetune_tiny['test']), tmp_path / 'f')
    assert not (tmp_path / 'f').exists()
