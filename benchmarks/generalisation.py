"""Ablation: what each part of MIFAE buys a detector on forgery families it never saw (synthetic faces).

A grid of
  stage 1  none (random init) | mae (random masking, frequency loss weight 0) | facial (facial-region masking
           only) | freq (random masking + frequency branch) | mifae (facial-region masking + frequency branch)
  stage 2  swap: real + face-swap fakes of one family | sbi: reals + self-blended pseudo-fakes (no fake at all)
scored by frame AUC on held-out identities, per forgery family: the training family (the swap family, or the
self-blended fakes for sbi) and the others (unseen), mean +/- sd over --seeds (each seed draws its own faces and
training randomness). Every run goes through main_pretrain.main / main_finetune.main with their own parsers.

  python -m benchmarks.generalisation                                # micro model on 2 CPU cores, 3 seeds
  python -m benchmarks.generalisation --seeds 1 --out bench_gen      # one seed
  python -m benchmarks.generalisation --device cuda --model mae_vit_small_patch16 --size 128 --input_size 112 \
      --num_identities 400 --pre_epochs 40 --ft_epochs 20
  python -m benchmarks.generalisation --quick                        # a tiny grid (seconds; for the tests)

Forgery families come from synthetic/faces.py: its FORGERY_FAMILIES (or FAMILIES) table of
name -> fn(target identity, source identity, rng, size) -> (RGB uint8, landmarks) when it has one, else face
swaps at the `strong` and `subtle` artefact levels (SWAP_ARTEFACTS). Self-blended fakes of held-out reals
(`sbi`) are always a family. A real-photo test set (`photo_sbi`: crops of skimage's astronaut with dlib's
landmarks, and their self-blended fakes) is scored as well where dlib is installed (--no_photo: not).
Writes --out/results.json, results.md and generalisation.png.
"""
import argparse
import csv
import json
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import main_finetune  # noqa: E402
import main_pretrain  # noqa: E402
import models_mae  # noqa: E402
import synthetic.faces as sf  # noqa: E402
import util.checkpoint as checkpoint  # noqa: E402
from benchmarks.common import fill_preset  # noqa: E402
from util import recipes  # noqa: E402
from util.misc import num_threads  # noqa: E402
from util.self_blend import self_blend  # noqa: E402

# stage-1 variants: pre-training flags, or None for no pre-training (a randomly initialised checkpoint)
STAGE1 = {
    'none': None,
    'mae': dict(mask_strategy='random', lamda=0.0),
    'facial': dict(mask_strategy='facial', lamda=0.0),
    'freq': dict(mask_strategy='random', lamda=1.0),
    'mifae': dict(mask_strategy='facial', lamda=1.0),
}
STAGE1_NAMES = dict(none='no pre-training', mae='vanilla MAE', facial='facial-region masking only',
                    freq='frequency branch only', mifae='full MIFAE')
STAGE2 = {'swap': 'real + face-swap fakes', 'sbi': 'reals + self-blended pseudo-fakes'}
SBI_FAMILY = 'sbi'
PHOTO = 'photo_sbi'      # a real photo's face crops and their self-blended fakes (needs dlib for landmarks)

# (defaults, --quick)
PRESETS = dict(
    default=dict(num_identities=96, test_identities=32, frames=3, size=64, input_size=64, pre_epochs=10,
                 ft_epochs=15, batch_size=32),
    quick=dict(num_identities=8, test_identities=4, frames=1, size=32, input_size=32, pre_epochs=1,
               ft_epochs=1, batch_size=4),
)


def get_args_parser():
    p = argparse.ArgumentParser('MIFAE generalisation ablation (synthetic faces)', add_help=False)
    p.add_argument('--quick', action='store_true', help='a tiny grid (for tests)')
    p.add_argument('--seeds', default=3, type=int, help='repetitions (faces and training randomness per seed)')
    p.add_argument('--stage1', nargs='+', default=list(STAGE1), choices=list(STAGE1))
    p.add_argument('--stage2', nargs='+', default=list(STAGE2), choices=list(STAGE2))
    p.add_argument('--train_family', default=None,
                   help='forgery family of the swap training fakes (default: the first of the table)')
    p.add_argument('--model', default='mae_vit_micro_patch8', help=f'one of {", ".join(models_mae.MODELS)}')
    p.add_argument('--num_identities', default=None, type=int, help='training identities (default 96; quick 8)')
    p.add_argument('--test_identities', default=None, type=int, help='held-out identities (default 32; quick 4)')
    p.add_argument('--frames', default=None, type=int, help='images per identity (default 3; quick 1)')
    p.add_argument('--size', default=None, type=int, help='side of the synthetic images (default 64; quick 32)')
    p.add_argument('--input_size', default=None, type=int, help='network input (default 64; quick 32)')
    p.add_argument('--pre_epochs', default=None, type=int, help='pre-training epochs (default 10; quick 1)')
    p.add_argument('--ft_epochs', default=None, type=int, help='fine-tuning epochs (default 15; quick 1)')
    p.add_argument('--batch_size', default=None, type=int, help='both stages (default 32; quick 4)')
    p.add_argument('--lr', default=5e-4, type=float, help='absolute learning rate of both stages')
    p.add_argument('--no_photo', dest='photo', action='store_false',
                   help=f'leave out the real-photo test set ({PHOTO}: astronaut crops and their self-blended fakes)')
    p.add_argument('--recipe', default='light', choices=list(recipes.RECIPES),
                   help="main_finetune.py's stage-2 recipe (light: no mixup / RandAugment); every recipe runs with "
                        "--drop_path 0 --min_crop_scale 1 here")
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', default=2, type=int, help='torch CPU threads')
    p.add_argument('--out', default=str(ROOT / 'benchmark_generalisation_output'), help='output folder')
    return p


def resolve(args):
    fill_preset(args, PRESETS, ('seeds', 'num_identities', 'test_identities', 'frames', 'size', 'input_size',
                                'pre_epochs', 'ft_epochs', 'batch_size', 'threads'),
                lambda msg: SystemExit(f'benchmarks/generalisation.py: error: {msg}'))
    if args.test_identities < 2 or args.num_identities < 2:
        raise SystemExit('benchmarks/generalisation.py: error: --num_identities and --test_identities must be >= 2 '
                         '(a swap needs two faces)')
    if args.batch_size % 2:
        raise SystemExit(f'benchmarks/generalisation.py: error: --batch_size {args.batch_size} must be even '
                         f'(self-blended runs take real + fake pairs)')
    return args


# ---------------------------------------------------------------------- forgery families
def _swap(level):
    def fake(target, source, rng, size):
        pose, swap = sf.sample_pose(rng), sf.sample_swap(rng, level)
        return sf.make_fake(target, source, rng, size, pose=pose, swap=swap)
    return fake


def _sbi(target, source, rng, size):
    img, lm = sf.render_face(target, rng, size)
    return self_blend(img, lm, rng)[0], lm


def forgery_families():
    """name -> fn(target identity, source identity, rng, size) -> (RGB uint8, landmarks); the synthetic-face
    generator's own table when it has one, else its face swaps at each artefact level; always `sbi`."""
    table = getattr(sf, 'FORGERY_FAMILIES', None) or getattr(sf, 'FAMILIES', None)
    if table:
        families = dict(table)
    else:
        families = {f'swap_{level}': _swap(level) for level in sorted(sf.SWAP_ARTEFACTS, key=lambda k: k != 'strong')}
    families.setdefault(SBI_FAMILY, _sbi)
    return families


def make_forgery(fn, target, source, rng, size):
    out = fn(target, source, rng, size)
    img = out[0] if isinstance(out, tuple) else out
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (size, size, 3)):
        raise SystemExit(f'benchmarks/generalisation.py: error: a forgery family returned {type(img).__name__} '
                         f'{getattr(img, "shape", "")}, expected RGB uint8 [{size}, {size}, 3]')
    return img


# ---------------------------------------------------------------------- data
def photo_face():
    """skimage's astronaut (a real photo) and dlib's 68 landmarks of its face, or None where dlib is missing."""
    try:
        import skimage.data

        from preprocess.faces import DlibLandmarker
        dlib = DlibLandmarker()
    except (ImportError, RuntimeError):
        return None
    photo = skimage.data.astronaut()
    faces = dlib.landmarks(photo, dlib.detect(photo))
    return (photo, faces[0]) if len(faces) else None


def photo_crops(photo, num, size, rng):
    """`num` crops of the photo's face at random framings (centre moved by up to 10% of the face, side 1.2-1.6
    faces) with their landmarks -> [(RGB uint8 [size, size, 3], landmarks [68, 2])]"""
    from preprocess.faces import crop_face
    image, lm = photo
    extent = float((lm.max(0) - lm.min(0)).max())
    crops = []
    for _ in range(num):
        c, side = lm.mean(0) + rng.uniform(-0.1, 0.1, 2) * extent, extent * rng.uniform(1.2, 1.6)
        crop, lmc, _ = crop_face(image, lm, size=size, box=(c[0] - side / 2, c[1] - side / 2, c[0] + side / 2,
                                                            c[1] + side / 2), margin=1.0)
        crops.append((crop, lmc))
    return crops


def write_faces(out, seed, args, families, train_family, photo=None):
    """Faces of one seed: training identities (reals; swap fakes of `train_family` among them), held-out
    identities (reals and one fake per real for every family) and, with `photo` (image, landmarks), as many
    crops of that real photo's face and their self-blended fakes (test set PHOTO). -> dict of manifest paths"""
    rng = np.random.default_rng(seed)
    n_tr, n_te = args.num_identities, args.test_identities
    ids = [sf.sample_identity(rng) for _ in range(n_tr + n_te)]
    rows = {k: [] for k in ('pretrain', 'train_swap', 'train_reals')}
    rows.update({f'test_{f}': [] for f in families})

    def save(img, lm, rel):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path.with_suffix('.png')), img[:, :, ::-1])
        np.save(path.with_suffix('.npy'), np.asarray(lm, np.float32))
        return dict(path=f'{rel}.png', landmarks=f'{rel}.npy')

    for i in range(n_tr + n_te):
        test = i >= n_tr
        pool = range(n_tr, n_tr + n_te) if test else range(n_tr)
        for f in range(args.frames):
            img, lm = sf.render_face(ids[i], rng, args.size)
            real = dict(save(img, lm, f'faces/real/id{i:04d}_{f}'), label=0, video=f'real_{i:04d}', dataset='synthetic')
            source = int(rng.choice([j for j in pool if j != i]))
            if test:
                for fam, fn in families.items():
                    fake = make_forgery(fn, ids[i], ids[source], rng, args.size)
                    rows[f'test_{fam}'] += [real, dict(save(fake, lm, f'faces/{fam}/id{i:04d}_{f}'), label=1,
                                                       video=f'{fam}_{i:04d}', dataset='synthetic')]
            else:
                fake = make_forgery(families[train_family], ids[i], ids[source], rng, args.size)
                rows['pretrain'].append(real)
                rows['train_reals'].append(real)
                rows['train_swap'] += [real, dict(save(fake, lm, f'faces/train_{train_family}/id{i:04d}_{f}'),
                                                  label=1, video=f'train_fake_{i:04d}', dataset='synthetic')]
    if photo is not None:
        rows[f'test_{PHOTO}'] = []
        for k, (crop, lm) in enumerate(photo_crops(photo, n_te * args.frames, args.size, rng)):
            fake = self_blend(crop, lm, rng)[0]
            rows[f'test_{PHOTO}'] += [dict(save(crop, lm, f'faces/photo/real_{k:04d}'), label=0, video=f'photo_{k:04d}',
                                           dataset='photo'),
                                      dict(save(fake, lm, f'faces/photo/sbi_{k:04d}'), label=1,
                                           video=f'photo_sbi_{k:04d}', dataset='photo')]
    paths = {}
    for name, rs in rows.items():
        paths[name] = out / f'{name}.csv'
        with open(paths[name], 'w', newline='') as fh:
            w = csv.DictWriter(fh, fieldnames=['path', 'landmarks', 'label', 'video', 'dataset'])
            w.writeheader()
            w.writerows(rs)
    return paths


# ---------------------------------------------------------------------- stages
def pretrain(variant, data_csv, out_dir, seed, args):
    """A stage-1 checkpoint: main_pretrain with the variant's flags, or a randomly initialised model. -> path"""
    argv = ['--data_path', str(data_csv), '--output_dir', str(out_dir), '--model', args.model,
            '--input_size', str(args.input_size), '--batch_size', str(args.batch_size),
            '--epochs', str(args.pre_epochs), '--warmup_epochs', str(max(1, args.pre_epochs // 10)),
            '--lr', str(args.lr), '--num_workers', '0', '--device', args.device, '--seed', str(seed),
            '--save_freq', str(args.pre_epochs), '--no_auto_resume', '--quiet']
    flags = STAGE1[variant]
    if flags is not None:
        argv += ['--mask_strategy', flags['mask_strategy'], '--lamda', str(flags['lamda'])]
    pre_args = main_pretrain.get_args_parser().parse_args(argv)
    if flags is None:
        torch.manual_seed(seed)
        model = models_mae.build_autoencoder(pre_args)
        out_dir.mkdir(parents=True, exist_ok=True)
        return checkpoint.save_checkpoint(out_dir, 'checkpoint-last.pth', model, torch.optim.AdamW(model.parameters()),
                                    0, pre_args)
    main_pretrain.main(pre_args)
    return out_dir / 'checkpoint-last.pth'


def finetune(checkpoint, data, paths, out_dir, seed, variant, args):
    """Stage 2 on `data` (swap | sbi), tested on every family. -> {family: AUC}"""
    tests = sorted(k for k in paths if k.startswith('test_'))
    argv = ['--finetune', str(checkpoint), '--train_manifest', str(paths['train_swap' if data == 'swap' else
                                                                         'train_reals']),
            '--test_manifests', *[str(paths[t]) for t in tests], '--output_dir', str(out_dir),
            '--input_size', str(args.input_size), '--batch_size', str(args.batch_size), '--epochs', str(args.ft_epochs),
            '--lr', str(args.lr), '--warmup_epochs', '1', '--smoothing', '0', '--layer_decay', '1', '--full_finetune',
            '--num_workers', '0', '--device', args.device, '--seed', str(seed), '--no_auto_resume', '--quiet',
            '--recipe', args.recipe, '--drop_path', '0', '--min_crop_scale', '1',   # a few hundred steps: no
            # stochastic depth, no crops (both kept a micro ViT from learning self-blended fakes at all)
            '--recon', 'none' if STAGE1[variant] is None else 'real']     # no pre-training: no decoder to ask
    if data == 'sbi':
        argv += ['--pseudo_fakes', 'sbi']
    result = main_finetune.main(main_finetune.get_args_parser().parse_args(argv))
    return {t[len('test_'):]: result['test'][t]['auc'] for t in tests}


# ---------------------------------------------------------------------- report
def summarise(runs, families, train_family):
    """Per (stage 1, stage 2): mean / sd over seeds of the training-family AUC, the mean unseen-family AUC and
    every family's AUC."""
    cells = {}
    for r in runs:
        cells.setdefault((r['stage1'], r['stage2']), []).append(r)
    out = []
    for (s1, s2), rs in cells.items():
        trained = train_family if s2 == 'swap' else SBI_FAMILY
        unseen = [f for f in families if f != trained]
        per_seed_unseen = [float(np.mean([r['auc'][f] for f in unseen])) for r in rs]
        stat = lambda v: dict(mean=float(np.mean(v)), sd=float(np.std(v, ddof=1)) if len(v) > 1 else None)  # noqa: E731
        out.append(dict(stage1=s1, stage2=s2, train_family=trained, unseen_families=unseen, seeds=len(rs),
                        train_auc=stat([r['auc'][trained] for r in rs]), unseen_auc=stat(per_seed_unseen),
                        family_auc={f: stat([r['auc'][f] for r in rs]) for f in families},
                        photo_auc=stat([r['auc'][PHOTO] for r in rs]) if PHOTO in rs[0]['auc'] else None))
    return out


def fmt(s):
    return f'{s["mean"]:.3f}' + (f' ± {s["sd"]:.3f}' if s['sd'] is not None else '')


def markdown(summary, families, meta):
    head = ['stage 1', 'stage 2 data', 'training family', 'AUC training family', 'AUC unseen families (mean)']
    head += [f'AUC {f}' for f in families]
    photo = any(c['photo_auc'] for c in summary)
    head += ['AUC real photo (sbi)'] if photo else []
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for c in summary:
        lines.append('| ' + ' | '.join([STAGE1_NAMES[c['stage1']], STAGE2[c['stage2']], c['train_family'],
                                        fmt(c['train_auc']), fmt(c['unseen_auc'])]
                                       + [fmt(c['family_auc'][f]) for f in families]
                                       + ([fmt(c['photo_auc']) if c['photo_auc'] else '–'] if photo else [])) + ' |')
    lines.append('')
    lines.append(f'Frame AUC on {meta["test_faces"]} held-out real faces and as many fakes per family; mean ± sd over '
                 f'{meta["seeds"]} seed(s); {meta["model"]} at {meta["input_size"]} px, {meta["pre_epochs"]} + '
                 f'{meta["ft_epochs"]} epochs; {meta["total_s"]:.0f} s on {meta["device"]}.'
                 + (' Real photo: as many crops of one real photo (skimage\'s astronaut, dlib landmarks) at random '
                    'framings and their self-blended fakes.' if photo else ''))
    return '\n'.join(lines) + '\n'


def figure(summary, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 3.6), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    s1 = [k for k in STAGE1 if any(c['stage1'] == k for c in summary)]
    s2 = [k for k in STAGE2 if any(c['stage2'] == k for c in summary)]
    width = 0.8 / len(s2)
    for j, data in enumerate(s2):
        cells = {c['stage1']: c for c in summary if c['stage2'] == data}
        xs = [i + (j - (len(s2) - 1) / 2) * width for i, k in enumerate(s1) if k in cells]
        ks = [k for k in s1 if k in cells]
        sds = [cells[k]['unseen_auc']['sd'] for k in ks]
        ax.bar(xs, [cells[k]['unseen_auc']['mean'] for k in ks], width * 0.9, label=f'{STAGE2[data]}: unseen',
               yerr=None if None in sds else sds, capsize=3, color=f'C{j}')
        ax.plot(xs, [cells[k]['train_auc']['mean'] for k in ks], 'k_', markersize=14, mew=2,
                label='training family' if j == 0 else None)
        if all(cells[k]['photo_auc'] for k in ks):
            ax.plot(xs, [cells[k]['photo_auc']['mean'] for k in ks], 'rx', markersize=7, mew=1.5,
                    label='real photo (sbi)' if j == 0 else None)
    ax.axhline(0.5, color='grey', lw=0.8, ls='--')
    ax.set_xticks(range(len(s1)), [textwrap.fill(STAGE1_NAMES[k], 16) for k in s1], fontsize=8)
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel('frame AUC (held-out identities)')
    ax.set_title('Generalisation to unseen forgery families, per stage-1 variant', fontsize=9)
    ax.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------- main
def main(args):
    args = resolve(args)
    with num_threads(args.threads):
        return run_grid(args)


def run_grid(args):
    families = forgery_families()
    swaps = [f for f in families if f != SBI_FAMILY]
    train_family = args.train_family or (swaps[0] if swaps else None)
    if train_family not in families or train_family == SBI_FAMILY:
        raise SystemExit(f'benchmarks/generalisation.py: error: --train_family {train_family} is not one of '
                         f'{", ".join(swaps)}')
    out = Path(args.out)
    earlier = sorted(out.glob('seed*'))
    if earlier:
        raise SystemExit(f'benchmarks/generalisation.py: error: --out {out} holds an earlier grid ({earlier[0].name}, '
                         f'...): choose another --out or delete it')
    out.mkdir(parents=True, exist_ok=True)
    grid = [(seed, s1, s2) for seed in range(args.seeds) for s1 in args.stage1 for s2 in args.stage2]
    print(f'{len(grid)} runs: stage 1 {", ".join(args.stage1)} x stage 2 {", ".join(args.stage2)} x {args.seeds} '
          f'seed(s); families {", ".join(families)} (training swaps: {train_family})', flush=True)
    photo = photo_face() if args.photo else None
    if args.photo and photo is None:
        print(f'no {PHOTO} column: dlib (or its face in the photo) is missing', flush=True)
    runs, start, data, ckpts = [], time.time(), {}, {}
    bar = tqdm(grid, desc='ablation', dynamic_ncols=True, file=sys.stdout)
    for seed, s1, s2 in bar:
        bar.set_postfix_str(f'seed {seed}: {s1} -> {s2}')
        root = out / f'seed{seed}'
        if seed not in data:
            data[seed] = write_faces(root / 'data', seed, args, families, train_family, photo)
        t = time.time()
        if (seed, s1) not in ckpts:
            ckpts[seed, s1] = pretrain(s1, data[seed]['pretrain'], root / f'pre_{s1}', seed, args)
        auc = finetune(ckpts[seed, s1], s2, data[seed], root / f'ft_{s1}_{s2}', seed, s1, args)
        runs.append(dict(seed=seed, stage1=s1, stage2=s2, auc=auc, time_s=round(time.time() - t, 1)))
        tqdm.write(f'seed {seed} {s1:>6s} -> {s2:4s}: ' + ', '.join(f'{f} {v:.3f}' for f, v in auc.items()),
                   file=sys.stdout)
    summary = summarise(runs, list(families), train_family)
    meta = dict(seeds=args.seeds, model=args.model, input_size=args.input_size, pre_epochs=args.pre_epochs,
                ft_epochs=args.ft_epochs, device=args.device, threads=args.threads,
                test_faces=args.test_identities * args.frames, total_s=time.time() - start,
                date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), argv=sys.argv[1:])
    (out / 'results.json').write_text(json.dumps(dict(meta=meta, summary=summary, runs=runs), indent=2))
    table = markdown(summary, list(families), meta)
    (out / 'results.md').write_text(table)
    figure(summary, out / 'generalisation.png')
    print('\n' + table + f'\nWrote {out / "results.json"}, results.md and generalisation.png', flush=True)
    return dict(meta=meta, summary=summary, runs=runs)


if __name__ == '__main__':
    main(argparse.ArgumentParser('MIFAE generalisation ablation', parents=[get_args_parser()]).parse_args())
