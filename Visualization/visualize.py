"""Figures of MIFAE reconstructions, written headless as PNGs (the notebook calls the same functions).

  1. fig1_spatial_facial.png  original | facial-region-masked input | prediction | reconstruction + visible
  2. fig2_spatial_random.png  the same with vanilla MAE random masking
  3. fig3_frequency.png       original | low-pass input | prediction | full reconstruction, each with its
                              centred log-magnitude spectrum under it
  4. fig4_discrepancy.png     one column per dataset / manipulation: input, reconstruction from the
                              fine-tuned detector's tokens through the frozen decoder, |difference|
  5. fig5_self_blending.png   one column per real face: the face, the blend mask, its self-blended
                              pseudo-fake (util/self_blend.py) and |difference| (needs landmarks only)

  python Visualization/visualize.py --checkpoint pretrain/checkpoint-last.pth --manifest faces/test.csv \
      [--detector finetune/checkpoint-best.pth] --out figures/

Masks are fixed by --seed: image i of a figure is masked with torch.Generator().manual_seed(seed + i), so a
figure is regenerated exactly. Images are shown de-normalised; with --norm_pix_loss the predicted patches
are de-normalised with the mean and variance of the corresponding target patch before display.

Every panel is a square of `display` pixels at a fixed place in the PNG (see `Layout`), so a figure's size
is a function of its rows and columns only (a figure too narrow to hold its title in the header at 5 pt gets
a taller header).
"""
import argparse
import csv
import io
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ''):                      # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models_mae  # noqa: E402
import util.hub as hub  # noqa: E402
import util.misc as misc  # noqa: E402
from util import explain  # noqa: E402
from util.datasets import IMAGENET_MEAN, IMAGENET_STD, NO_LABEL, FaceTransform, Sample, load_samples, read_image_rgb  # noqa: E402
from util.fileio import WriteError, atomic_write  # noqa: E402
from util.freq import filter_spectrum, log_magnitude_spectrum  # noqa: E402
from util.landmarks import load_landmarks  # noqa: E402
from util.losses import denormalize_patches, to_gray  # noqa: E402
from util.masking import MASK_STRATEGIES, REGION_NAMES, visible_regions  # noqa: E402

error = partial(misc.usage_error, 'visualize.py')      # raise error('--flag ...: what to do')
FIGURE_FILES = {1: 'fig1_spatial_facial.png', 2: 'fig2_spatial_random.png', 3: 'fig3_frequency.png',
                4: 'fig4_discrepancy.png', 5: 'fig5_self_blending.png'}
MASK_FILL = 0.5                     # grey of removed patches in the masked-input panels (display space)
SPECTRUM_CMAP, HEAT_CMAP = 'viridis', 'inferno'


# ---------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    """Pixel layout of a grid figure: a header band, then rows x cols cells of title + square panel."""
    rows: int
    cols: int
    display: int                    # side of a panel in pixels
    pad: int = 6
    title_h: int = 16
    header_h: int = 30
    dpi: int = 100

    @property
    def cell(self):
        return self.display + 2 * self.pad, self.title_h + self.display + self.pad

    @property
    def size(self):
        """(width, height) of the PNG in pixels."""
        cw, ch = self.cell
        return self.cols * cw, self.header_h + self.rows * ch

    def panel_box(self, row, col):
        """(x0, y0, side) of panel (row, col) in PNG pixels, origin at the top left."""
        cw, ch = self.cell
        return col * cw + self.pad, self.header_h + row * ch + self.title_h, self.display


def display_size(img_size, target=128):
    """Integer up-scaling of small inputs so that panels are at least ~target px."""
    return img_size * max(1, int(round(target / img_size)))


def fit_title(title, width, height, dpi, sizes=(8, 7, 6, 5), linespacing=1.1):
    """The title's lines and font size (bold points) that fit a band of width x height pixels: the largest of
    `sizes` at which the words wrap, as measured by the renderer, into the band; else the smallest size and the
    height its lines need. Every word is kept. -> (lines, size, height)"""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties
    renderer = RendererAgg(1, 1, dpi)
    for size in sizes:
        font = FontProperties(size=size, weight='bold')
        measure = lambda text: renderer.get_text_width_height_descent(text, font, ismath=False)[0]
        lines = []
        for word in title.split():
            if lines and measure(f'{lines[-1]} {word}') <= width:
                lines[-1] += f' {word}'
            else:
                lines.append(word)
        need = len(lines) * size * linespacing * dpi / 72 + 4
        if need <= height and max(map(measure, lines)) <= width:
            break
    return lines, size, max(height, int(need + 0.999))


class GridFigure:
    """A matplotlib figure (no pyplot: works headless and in notebooks) with panels placed by a Layout; the
    title is fitted into the header band (fit_title), which grows only for a figure too narrow for it."""

    def __init__(self, layout, title):
        from matplotlib.figure import Figure
        lines, size, header_h = fit_title(title, layout.size[0] - 2 * layout.pad, layout.header_h, layout.dpi)
        self.layout = layout = replace(layout, header_h=header_h)
        w, h = layout.size
        self.fig = Figure(figsize=(w / layout.dpi, h / layout.dpi), dpi=layout.dpi)
        self.fig.text(0.5, 1 - (layout.header_h / 2) / h, '\n'.join(lines), ha='center', va='center',
                      fontsize=size, fontweight='bold', linespacing=1.1)

    def panel(self, row, col, img, title='', **imshow_kw):
        """Show an [H, W(, 3)] array in panel (row, col) with nearest-neighbour up-scaling. -> Axes"""
        lo = self.layout
        w, h = lo.size
        x0, y0, side = lo.panel_box(row, col)
        ax = self.fig.add_axes((x0 / w, 1 - (y0 + side) / h, side / w, side / h))
        ax.imshow(img, interpolation='nearest', **imshow_kw)
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=7, pad=2)
        return ax

    def save(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image
        buf = io.BytesIO()
        self.fig.savefig(buf, format='png', dpi=self.layout.dpi)   # no tight bbox: exactly layout.size
        buf.seek(0)
        img = Image.open(buf).convert('RGB')                         # RGB: a third smaller than RGBA
        try:
            return atomic_write(path, lambda f: img.save(f, format='PNG', optimize=True), mode='wb')
        except WriteError as e:
            raise error(str(e)) from None


# ---------------------------------------------------------------------- loading
def load_autoencoder(path, device='cpu'):
    """models_mae.load_autoencoder, its refusals as one line."""
    try:
        return models_mae.load_autoencoder(path, device)
    except (FileNotFoundError, ValueError) as e:
        hint = '; figures 1-3 need a pre-training checkpoint (pass this one as --detector)' \
            if 'fine-tuning' in str(e) else ''
        raise error(f'{e}{hint}') from None


def image_samples(paths):
    """Samples for image files (with sidecar <stem>.npy landmarks when present) and/or folders."""
    samples = []
    for p in map(Path, paths):
        if p.is_dir():
            samples += load_samples(p)
        elif p.is_file():
            lm = p.with_suffix('.npy')
            samples.append(Sample(str(p), str(lm) if lm.is_file() else None, NO_LABEL, p.stem, 'images'))
        else:
            raise error(f'--images: {p} does not exist')
    return samples


def manifest_groups(csv_path):
    """Column name of each manifest row for figure 4: 'real' or the manipulation (the `method` column when the
    manifest has one and it is not 'real', else 'fake'), prefixed with the dataset when there are several."""
    with open(csv_path, newline='') as f:
        rows = list(csv.DictReader(f))
    datasets = [(r.get('dataset') or Path(csv_path).stem).strip() for r in rows]
    several = len(set(datasets)) > 1
    groups = []
    for r, dataset in zip(rows, datasets):
        label, method = (r.get('label') or '').strip(), (r.get('method') or '').strip()
        kind = {'0': 'real', '1': method if method and method != 'real' else 'fake'}.get(label, 'unlabelled')
        groups.append(f'{dataset} {kind}' if several else kind)
    return groups


def read_face(sample, landmarks=True):
    """A sample's image (RGB uint8) and, with `landmarks`, its [68, 2] landmarks or None; an unreadable file
    is a one-line error naming it. -> image, or (image, landmarks)"""
    try:
        img = read_image_rgb(sample.path)
        if not landmarks:
            return img
        return img, load_landmarks(sample.landmarks) if sample.landmarks else None
    except ValueError as e:
        raise error(f'{e}; leave it out of --images or the manifest, or pick other faces with --seed') from None


def load_batch(samples, input_size):
    """Read and resize samples (no augmentation). -> (imgs [N, 3, S, S] normalised, list of [68, 2] or None)"""
    transform = FaceTransform(input_size, train=False)
    imgs, lms = [], []
    for s in samples:
        x, lm = transform(*read_face(s))
        imgs.append(x)
        lms.append(lm)
    return torch.stack(imgs), lms


def pick_samples(samples, num, seed=0, prefer_real=True):
    """`num` samples chosen by `seed`, real (or unlabelled) faces first, in manifest order."""
    rng = np.random.default_rng(seed)
    pool = [i for i, s in enumerate(samples) if s.label != 1] if prefer_real else []
    if len(pool) < num:
        pool = list(range(len(samples)))
    chosen = sorted(rng.choice(len(pool), size=min(num, len(pool)), replace=False).tolist())
    return [samples[pool[i]] for i in chosen]


# ---------------------------------------------------------------------- masks
def mask_generator(seed, index):
    """The generator that fixes the mask of image `index` of a figure."""
    return torch.Generator().manual_seed(int(seed) + int(index))


def chosen_regions(seed, index, num_regions=1, landmarks=None, img_size=None):
    """Names of the facial regions facial_region_mask hides for image `index` (it draws them first, among
    the regions visible in the img_size image; all four when no landmarks are given)."""
    visible = (visible_regions(np.asarray(landmarks), img_size) if landmarks is not None
               else list(range(len(REGION_NAMES))))
    order = torch.randperm(len(visible), generator=mask_generator(seed, index))[:num_regions]
    return [REGION_NAMES[visible[i]] for i in order.tolist()]


def make_masks(landmarks, img_size, patch_size, mask_ratio, strategy='facial', seed=0, num_regions=1):
    """Seeded masks for a batch. strategy 'facial' (images without landmarks fall back to random) or 'random'.

    -> [N, L] bool, True = removed.
    """
    if strategy not in MASK_STRATEGIES:
        raise ValueError(f'unknown mask strategy {strategy!r} ({" | ".join(MASK_STRATEGIES)})')
    return torch.stack([MASK_STRATEGIES[strategy](lm, img_size, patch_size, mask_ratio, num_regions,
                                                  mask_generator(seed, i))[0] for i, lm in enumerate(landmarks)])


# ---------------------------------------------------------------------- reconstructions
def to_pixels(x, clamp=True):
    """Normalised [..., 3, H, W] -> display space [0, 1] (unclamped for spectra)."""
    m = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    x = x.float() * s + m
    return x.clamp(0, 1) if clamp else x


def unnormalize_pred(model, imgs, pred):
    """Predicted patches in the normalised image space; with norm_pix_loss each patch gets its target's
    own mean and variance back (the statistics masked_patch_mse normalised the target with)."""
    if not model.norm_pix_loss:
        return pred
    return denormalize_patches(pred, model.patchify(imgs))             # [N, L, p*p*C]


@torch.no_grad()
def spatial_reconstruction(model, imgs, mask):
    """Spatial branch on given masks. -> dict of [N, 3, H, W] in display space [0, 1]:
    original, masked (removed patches grey), pred (every patch predicted), full (visible patches pasted)."""
    imgs = imgs.to(next(model.parameters()).device)
    mask = mask.to(imgs.device)
    latent, ids_restore = model.forward_encoder(imgs, mask)
    pred = unnormalize_pred(model, imgs, model.forward_decoder(latent, ids_restore).float())  # [N, L, p*p*C]
    m = mask[..., None].float()                                         # [N, L, 1], 1 = removed
    full = model.unpatchify(model.patchify(imgs) * (1 - m) + pred * m)
    pix_mask = model.unpatchify(m.expand(-1, -1, pred.shape[-1]))      # [N, 3, H, W], 1 = removed
    original = to_pixels(imgs)
    masked = original * (1 - pix_mask) + MASK_FILL * pix_mask
    return dict(original=original.cpu(), masked=masked.cpu(), pred=to_pixels(model.unpatchify(pred)).cpu(),
                full=to_pixels(full).cpu(), mask=mask.cpu())


@torch.no_grad()
def frequency_reconstruction(model, imgs):
    """Frequency branch. -> dict of [N, 3, H, W] normalised-space tensors:
    original, low (high frequencies masked: the encoder's input), pred (the frequency decoder's image),
    full (the input's low frequencies inside the disc + the prediction's high frequencies outside it)."""
    imgs = imgs.to(next(model.parameters()).device)
    low = model.low_pass(imgs)
    pred = model.forward_freq_decoder(model.forward_freq_encoder(low)).float()
    full = low + filter_spectrum(pred, 1 - model.freq_keep)
    return dict(original=imgs.float().cpu(), low=low.cpu(), pred=pred.cpu(), full=full.cpu())


def spectrum(x):
    """Centred log(1 + |DFT|) of the 8-bit-scaled luma of normalised images [N, 3, H, W] -> [N, H, W]
    (on the 0-255 scale the weak high frequencies stand out of the black, as in the usual spectrum plots)."""
    return log_magnitude_spectrum(255 * to_gray(to_pixels(x, clamp=False)))


def hwc(x):
    """[3, H, W] tensor -> [H, W, 3] numpy for imshow."""
    return x.permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------- figures 1-3
def figure_spatial(model, imgs, landmarks, strategy='facial', seed=0, num_regions=1, display=None):
    """Figures 1 (strategy 'facial') and 2 ('random'): one row per image. -> (GridFigure, panels dict)"""
    size, p = model.img_size, model.patch_size
    masks = make_masks(landmarks, size, p, model.mask_ratio, strategy, seed, num_regions)
    out = spatial_reconstruction(model, imgs, masks)
    n = imgs.shape[0]
    layout = Layout(n, 4, display or display_size(size))
    pct = int(round(100 * model.mask_ratio))
    title = (f'Spatial branch, facial-region-guided masking ({pct}% of patches)' if strategy == 'facial'
             else f'Spatial branch, vanilla MAE random masking ({pct}% of patches)')
    g = GridFigure(layout, title + (' [norm_pix_loss]' if model.norm_pix_loss else ''))
    for i in range(n):
        if strategy == 'random':
            how = 'random'
        elif landmarks[i] is None:
            how = 'random: no landmarks'
        else:
            how = (' + '.join(chosen_regions(seed, i, num_regions, landmarks[i], size)).replace('_', ' ')
                   or 'random: regions cropped out')
        g.panel(i, 0, hwc(out['original'][i]), 'original')
        g.panel(i, 1, hwc(out['masked'][i]), f'masked ({how})')
        g.panel(i, 2, hwc(out['pred'][i]), 'prediction')
        g.panel(i, 3, hwc(out['full'][i]), 'recon. + visible')
    return g, out


def _circle(ax, centre, radius):
    from matplotlib.patches import Circle
    ax.add_patch(Circle(centre, radius, fill=False, ec='white', lw=0.6, ls='--', alpha=0.8))


def figure_frequency(model, imgs, display=None):
    """Figure 3: per image a row of images and a row of their spectra (4 columns). -> (GridFigure, panels)"""
    out = frequency_reconstruction(model, imgs)
    n, size = imgs.shape[0], model.img_size
    layout = Layout(2 * n, 4, display or display_size(size))
    g = GridFigure(layout, f'Frequency branch: high frequencies masked outside radius {model.mask_radius:.3g} '
                           f'(dashed circle); spectra: centred log(1 + |DFT|) of the luma')
    names = [('original', 'original', 'original'), ('low', 'low-pass input', 'low-pass input'),
             ('pred', 'prediction', 'prediction'), ('full', 'low in + high pred', 'full recon.')]
    specs = {k: spectrum(out[k]) for k, _, _ in names}
    centre = (size // 2, size // 2)
    for i in range(n):
        vmax = float(specs['original'][i].max())                     # one colour scale per image
        for c, (k, label, short) in enumerate(names):
            g.panel(2 * i, c, hwc(to_pixels(out[k][i])), label)
            ax = g.panel(2 * i + 1, c, specs[k][i].numpy(), f'DFT: {short}',
                         cmap=SPECTRUM_CMAP, vmin=0, vmax=vmax)
            _circle(ax, centre, model.mask_radius)
    out['spectra'] = specs
    return g, out


# ---------------------------------------------------------------------- figure 4
def pick_per_group(groups, per_group=1, seed=0):
    """`per_group` indices per group, chosen by `seed`; groups by dataset, within one the real column first,
    then the manipulations in order of appearance. -> list of (group name, index)"""
    rng = np.random.default_rng(seed)
    members = {}
    for i, name in enumerate(groups):
        members.setdefault(name, []).append(i)
    order = list(members)                                  # first appearance
    prefixes = [n.rpartition(' ')[0] for n in order]       # the dataset, '' with one dataset
    names = sorted(order, key=lambda n: (prefixes.index(n.rpartition(' ')[0]), n.rpartition(' ')[2] != 'real',
                                         order.index(n)))
    picked = []
    for n in names:
        chosen = rng.choice(len(members[n]), size=min(per_group, len(members[n])), replace=False)
        picked += [(n, members[n][int(j)]) for j in sorted(chosen)]
    return picked


def figure_discrepancy(result, column_titles, display=None):
    """Figure 4 from the detector's outputs (util.explain.reconstruction_discrepancy): one column per dataset or
    manipulation; rows: input, reconstruction, |difference| heat map (one colour scale for the whole figure) and,
    when `result` has 'cam', the Grad-CAM of the fake logit over the input (as the reference's figure).

    result: dict(input, recon [G, 3, H, W] in [0, 1], diff [G, H, W], prob [G], cam [G, H, W] optional).
    -> (GridFigure, result)
    """
    x, r, diff, prob = (result[k].float().cpu() for k in ('input', 'recon', 'diff', 'prob'))
    vmax = max(float(diff.max()), 1e-6)
    cam = result.get('cam')
    layout = Layout(3 + (cam is not None), len(column_titles), display or display_size(x.shape[-1]), title_h=26)
    g = GridFigure(layout, 'Reconstruction discrepancy: detector tokens -> frozen decoder (heat maps share '
                           f'one scale, 0 to {vmax:.2f})')
    for c, name in enumerate(column_titles):
        g.panel(0, c, hwc(x[c]), f'{name}\np(fake) = {float(prob[c]):.2f}')
        g.panel(1, c, hwc(r[c]), 'reconstruction')
        g.panel(2, c, diff[c].numpy(), f'|difference|, mean {float(diff[c].mean()):.3f}',
                cmap=HEAT_CMAP, vmin=0, vmax=vmax)
        if cam is not None:
            g.panel(3, c, explain.cam_overlay(x[c], cam[c].float()), 'Grad-CAM (fake)')
    return g, result


def load_detector(path, device='cpu'):
    """The detector of a fine-tuning checkpoint for figure 4; refused when its decoder is not the pre-trained
    one (fine-tuned from an encoder-only checkpoint with --recon none): it would show a random decoder."""
    import models_vit  # stage 2; imported here so figures 1-3 do not need it
    try:
        model, meta = models_vit.load_detector(path, device)
    except (FileNotFoundError, ValueError) as e:
        raise error(f'--detector {e}') from None
    if not meta.get('decoder', True):
        raise error(f'--detector {path}: holds no pre-trained decoder (fine-tuned from an encoder-only '
                         f'checkpoint with --recon none), so figure 4 would show a random decoder\'s output')
    return model


def write_discrepancy_figure(detector, samples, out_dir, groups=None, seed=0, display=None, device='cpu',
                             per_group=1, max_columns=8):
    """Figure 4 for a fine-tuning checkpoint (path, or the model load_detector gives): `per_group` faces per
    group (e.g. manifest_groups of the manifest; None: one column per sample), at most `max_columns`
    columns. -> PNG path"""
    model = load_detector(detector, device) if isinstance(detector, (str, Path)) else detector
    if groups is None:
        picked = [(Path(s.path).stem, i) for i, s in enumerate(samples[:max_columns])]
    else:
        picked = pick_per_group(groups, per_group, seed)[:max_columns]
    tf = FaceTransform(model.img_size, train=False, mean=model.mean, std=model.std, crop_pct=model.crop_pct)
    imgs = torch.stack([tf(read_face(samples[i], landmarks=False))[0] for _, i in picked])
    result = explain.reconstruction_discrepancy(model, imgs.to(device))
    result['cam'] = explain.grad_cam(model, imgs.to(device))
    g, _ = figure_discrepancy(result, [name for name, _ in picked], display)
    return g.save(Path(out_dir) / FIGURE_FILES[4])


# ---------------------------------------------------------------------- figure 5
def figure_self_blend(reals, masks, fakes, titles=None, display=None):
    """Figure 5: one column per face; rows: real, blend mask, self-blended pseudo-fake, |difference| (mean over
    the channels, one colour scale for the whole figure).

    reals, fakes: uint8 [N, S, S, 3]; masks: float32 [N, S, S] in [0, 1]. -> GridFigure"""
    diff = np.abs(fakes.astype(np.float32) - reals.astype(np.float32)).mean(-1) / 255      # [N, S, S]
    vmax = max(float(diff.max()), 1e-6)
    layout = Layout(4, len(reals), display or display_size(reals.shape[1]))
    g = GridFigure(layout, f'Self-blended pseudo-fakes from real faces (|difference| from 0 to {vmax:.2f})')
    for c in range(len(reals)):
        g.panel(0, c, reals[c], titles[c] if titles else 'real')
        g.panel(1, c, masks[c], f'mask, max {float(masks[c].max()):.2f}', cmap='gray', vmin=0, vmax=1)
        g.panel(2, c, fakes[c], 'pseudo-fake')
        g.panel(3, c, diff[c], f'|difference|, mean {float(diff[c].mean()):.3f}', cmap=HEAT_CMAP, vmin=0, vmax=vmax)
    return g


def write_self_blend_figure(samples, out_dir, num_images=4, seed=0, size=128, display=None):
    """Figure 5 for `num_images` faces with landmarks chosen by `seed` (real ones first); face i is blended with
    np.random.default_rng(seed + i), at its own resolution, then shown at `size` px. -> PNG path"""
    import cv2

    from util.self_blend import self_blend
    with_lm = [s for s in samples if s.landmarks]
    if not with_lm:
        raise error('figure 5 needs faces with landmarks (sidecar .npy files or a manifest landmarks column)')
    reals, masks, fakes, titles = [], [], [], []
    for i, s in enumerate(pick_samples(with_lm, num_images, seed)):
        img, lm = read_face(s)
        fake, mask = self_blend(img, lm, np.random.default_rng(seed + i))
        shrink = cv2.INTER_AREA if max(img.shape[:2]) > size else cv2.INTER_LINEAR
        reals.append(cv2.resize(img, (size, size), interpolation=shrink))
        fakes.append(cv2.resize(fake, (size, size), interpolation=shrink))
        masks.append(cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR))
        titles.append(Path(s.path).stem)
    g = figure_self_blend(np.stack(reals), np.stack(masks), np.stack(fakes), titles, display)
    return g.save(Path(out_dir) / FIGURE_FILES[5])


# ---------------------------------------------------------------------- command line
def get_args_parser():
    parser = argparse.ArgumentParser('MIFAE visualization', add_help=False)
    parser.add_argument('--checkpoint', default='', help='pre-training checkpoint (main_pretrain.py): figures 1-3')
    parser.add_argument('--detector', default='', help='fine-tuning checkpoint (main_finetune.py): figure 4')
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--images', nargs='+', default=None,
                     help='face crops and/or folders (landmarks from sidecar <stem>.npy files)')
    src.add_argument('--manifest', default=None, help='manifest CSV (path,landmarks,label,video,dataset,...)')
    parser.add_argument('--out', default='figures', help='folder for the PNGs')
    parser.add_argument('--figures', nargs='+', type=int, default=[1, 2, 3, 4], choices=[1, 2, 3, 4, 5])
    parser.add_argument('--num_images', default=4, type=int, help='rows of figures 1 and 2, columns of figure 5')
    parser.add_argument('--num_freq_images', default=2, type=int, help='images in figure 3 (two rows each)')
    parser.add_argument('--num_regions', default=1, type=int, help='facial regions hidden per image in figure 1')
    parser.add_argument('--per_group', default=1, type=int,
                        help='figure 4: faces per dataset / manipulation (columns per group)')
    parser.add_argument('--seed', default=0, type=int, help='fixes the choice of images and every mask')
    parser.add_argument('--display', default=None, type=int, help='panel side in pixels (default: input size, '
                                                                  'up-scaled to at least ~128)')
    parser.add_argument('--device', default='cpu')
    return parser


def check_args(args):
    def fail(msg):
        raise error(msg)
    want_pre = any(f in args.figures for f in (1, 2, 3))
    if want_pre and not args.checkpoint:
        fail('figures 1-3 need --checkpoint (a pre-training checkpoint); or choose --figures 4')
    if 4 in args.figures and not args.detector and not want_pre:
        fail('figure 4 needs --detector (a fine-tuning checkpoint)')
    if min(args.num_images, args.num_freq_images, args.per_group) < 1:
        fail('--num_images, --num_freq_images and --per_group must be at least 1')
    if not 1 <= args.num_regions <= len(REGION_NAMES):
        fail(f'--num_regions must be 1 to {len(REGION_NAMES)}')
    for flag in ('checkpoint', 'detector'):                   # a file, a Hub-format folder or a Hub id
        if getattr(args, flag) and (problem := hub.source_problem(getattr(args, flag), flag)):
            fail(problem)
    if args.manifest and not Path(args.manifest).is_file():
        fail(f'--manifest {args.manifest} does not exist')


def write_pretrain_figures(model, samples, out_dir, figures=(1, 2, 3), num_images=4, num_freq_images=2, seed=0,
                           num_regions=1, display=None):
    """Figures 1-3 of a pre-trained MIFAE on samples chosen by `seed`. -> {figure number: PNG path}"""
    written = {}
    chosen = pick_samples(samples, max(num_images, num_freq_images), seed)
    imgs, lms = load_batch(chosen, model.img_size)
    for strategy, num in (('facial', 1), ('random', 2)):
        if num in figures:
            g, _ = figure_spatial(model, imgs[:num_images], lms[:num_images], strategy, seed, num_regions, display)
            written[num] = g.save(Path(out_dir) / FIGURE_FILES[num])
    if 3 in figures:
        g, _ = figure_frequency(model, imgs[:num_freq_images], display)
        written[3] = g.save(Path(out_dir) / FIGURE_FILES[3])
    return written


def main(args):
    check_args(args)
    try:
        samples = image_samples(args.images) if args.images else load_samples(args.manifest)
    except (FileNotFoundError, ValueError) as e:       # a manifest's header or rows, a folder without images
        raise error(str(e)) from None
    detector = load_detector(args.detector, args.device) if 4 in args.figures and args.detector else None
    written = {}
    if any(f in args.figures for f in (1, 2, 3)):
        model = load_autoencoder(args.checkpoint, args.device)
        if 3 in args.figures and model.old_freq_decoder:
            raise error(f'--checkpoint {args.checkpoint}: {model.old_freq_decoder}; '
                        f'figure 3 needs a checkpoint trained with it (figures 1, 2 and 4 still work)')
        written.update(write_pretrain_figures(model, samples, args.out, args.figures, args.num_images,
                                              args.num_freq_images, args.seed, args.num_regions, args.display))
    if 4 in args.figures:
        if detector is None:
            print('figure 4 skipped: it needs --detector (a fine-tuning checkpoint)')
        else:
            groups = manifest_groups(args.manifest) if args.manifest else None
            written[4] = write_discrepancy_figure(detector, samples, args.out, groups, args.seed,
                                                  args.display, args.device, args.per_group)
    if 5 in args.figures:
        written[5] = write_self_blend_figure(samples, args.out, args.num_images, args.seed, display=args.display)
    for num, path in sorted(written.items()):
        print(f'figure {num}: {path}')
    return written


if __name__ == '__main__':
    main(argparse.ArgumentParser('MIFAE visualization', parents=[get_args_parser()]).parse_args())
