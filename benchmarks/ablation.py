"""Ablation of MIFAE's stage 1, read three ways: does facial-region masking, the frequency branch, or both give
an encoder whose features separate forgeries, and do they carry to forgery families never seen? (synthetic faces)

Rule: every stage-1 variant shares the data, the model, the schedule and the seed; only its flags (the
generalisation benchmark's STAGE1 table) differ. Settings are chosen before any cell is read and are the same
for every variant; a rerun with other settings into the same --out is refused.

  stage 1   none (random init) | mae (random masking, no frequency loss) | facial (facial-region masking only)
            | freq (frequency branch only) | mifae (both); one pre-training run per variant, checkpoints kept
            after each fraction of the schedule in --lengths (default 5 %, 25 %, 100 %)
  readings  probe:   frozen encoder, CLS and mean-pooled tokens -> logistic regression (scikit-learn), trained on
                     real + face-swap fakes and on reals + self-blended pseudo-fakes; every checkpoint length
            partial: main_finetune.py's partial fine-tuning (last block + norm + head, reconstruction term),
                     --recipe light; the full-length checkpoint
            full:    the same with --full_finetune (whole encoder)
  scored by frame AUC on held-out identities per forgery family (the training family and the unseen ones), mean
  +/- sd over --seeds draws of the stage-2 training set and stage-2 randomness (the test set is drawn once).

  python -m benchmarks.ablation --out /work/ablation_out            # micro model on the CPU (defaults)
  python -m benchmarks.ablation --quick --out /tmp/ablation_quick   # a tiny grid (seconds; for the tests)
  python -m benchmarks.ablation --device cuda --model mae_vit_small_patch16 --size 128 --input_size 112 \\
      --num_identities 4000 --pre_epochs 100 --train_identities 1000 --test_identities 500 --ft_epochs 20 \\
      --batch_size 128 --seeds 5 --num_workers 8 --out ablation_gpu

Everything lands in --out: data/ (faces and manifests), pretrain/<variant>/ (main_pretrain.py runs, whose
checkpoint-<epoch>.pth are the lengths), cells/<cell>.json (one finished cell each, written atomically), and
results.json, results.md, ablation.png. A rerun reuses all of it: finished cells are read, not recomputed; an
interrupted pre-training continues from its last epoch; an interrupted fine-tuning starts again.
"""
import argparse
import csv
import json
import math
import shutil
import sys
import time
import zlib
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the synthetic-face generator and the generalisation benchmark's tables (stage-1 variants, forgery families):
# imported here only
import synthetic.faces as synthetic  # noqa: E402
from benchmarks import generalisation  # noqa: E402
from benchmarks.common import fill_preset  # noqa: E402

# isort: split
import main_finetune  # noqa: E402
import main_pretrain  # noqa: E402
import models_mae  # noqa: E402
import models_vit  # noqa: E402
import util.checkpoint as checkpoint  # noqa: E402
import util.misc as misc  # noqa: E402
from util import explain  # noqa: E402
from util.fileio import atomic_write  # noqa: E402
from util.self_blend import self_blend  # noqa: E402

error = partial(misc.usage_error, 'benchmarks/ablation.py')     # raise error('--flag ...: what to do')

STAGE1 = generalisation.STAGE1                 # variant -> pre-training flags (None: random init)
STAGE1_NAMES = generalisation.STAGE1_NAMES
SBI = generalisation.SBI_FAMILY
# stage-2 training data: name -> (what it is, the family it trains on: None = the face-swap training family)
DATA = {'swap': ('real + face-swap fakes', None), 'sbi': ('reals + self-blended pseudo-fakes', SBI)}
# readings of an encoder: name -> (what it is, main_finetune.py flags; None = the linear probe)
READINGS = {
    'probe': ('linear probe (frozen encoder, logistic regression)', None),
    'partial': ('partial fine-tuning (last block + norm + head, reconstruction term)', []),
    'full': ('whole-encoder fine-tuning', ['--full_finetune']),
}
POOLS = {'cls': lambda tokens: tokens[:, 0], 'mean': lambda tokens: tokens[:, 1:].mean(dim=1)}
# the flags every fine-tuning cell shares besides the reading's own: main_finetune.py's light recipe, with no
# stochastic depth, crops or label smoothing (a few hundred steps; see docs/self_blending.md)
FT_COMMON = ['--recipe', 'light', '--drop_path', '0', '--min_crop_scale', '1', '--smoothing', '0']

# (defaults, --quick); the settings that define a grid (a rerun must use the same)
PRESETS = dict(
    default=dict(num_identities=640, frames=2, train_identities=200, test_identities=100, size=32, input_size=32,
                 pre_epochs=20, ft_epochs=10, batch_size=32),
    quick=dict(num_identities=12, frames=1, train_identities=8, test_identities=6, size=32, input_size=32,
               pre_epochs=2, ft_epochs=1, batch_size=4),
)
GRID_SETTINGS = ('seed', 'model', 'num_identities', 'frames', 'train_identities', 'test_identities', 'size',
                 'input_size', 'pre_epochs', 'ft_epochs', 'batch_size', 'lr', 'lengths', 'train_family')


def get_args_parser():
    p = argparse.ArgumentParser('MIFAE stage-1 ablation (synthetic faces)', add_help=False)
    p.add_argument('--quick', action='store_true', help='a tiny grid (for tests)')
    p.add_argument('--out', required=True, help='folder of the grid (data, checkpoints, cells, results)')
    p.add_argument('--report', action='store_true',
                   help='only write results.json, results.md and ablation.png from the cells finished so far')
    p.add_argument('--seeds', default=3, type=int, help='draws of the stage-2 training set and randomness')
    p.add_argument('--seed', default=0, type=int, help='seed of the data and of pre-training')
    p.add_argument('--stage1', nargs='+', default=list(STAGE1), choices=list(STAGE1))
    p.add_argument('--readings', nargs='+', default=list(READINGS), choices=list(READINGS))
    p.add_argument('--ft_data', nargs='+', default=list(DATA), choices=list(DATA),
                   help='training data of the fine-tuning readings (the probe always trains on both)')
    p.add_argument('--model', default='mae_vit_micro_patch8')
    p.add_argument('--num_identities', default=None, type=int, help='pre-training identities (default 640)')
    p.add_argument('--frames', default=None, type=int, help='pre-training images per identity (default 2)')
    p.add_argument('--train_identities', default=None, type=int,
                   help='stage-2 training identities drawn per seed from the pre-training ones (default 200)')
    p.add_argument('--test_identities', default=None, type=int, help='held-out identities (default 100)')
    p.add_argument('--size', default=None, type=int, help='side of the synthetic images (default 32)')
    p.add_argument('--input_size', default=None, type=int, help='network input (default 32)')
    p.add_argument('--pre_epochs', default=None, type=int, help='pre-training epochs (default 20)')
    p.add_argument('--lengths', nargs='+', default=[0.05, 0.25, 1.0], type=float,
                   help='fractions of the pre-training schedule whose checkpoints are read (rounded up to epochs)')
    p.add_argument('--ft_epochs', default=None, type=int, help='fine-tuning epochs (default 10, the light recipe\'s)')
    p.add_argument('--batch_size', default=None, type=int, help='both stages (default 32)')
    p.add_argument('--lr', default=5e-4, type=float, help='absolute learning rate of both stages')
    p.add_argument('--train_family', default=None,
                   help='forgery family of the face-swap training fakes (default: the first of the table)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--num_workers', default=0, type=int, help='data-loading processes of both stages')
    p.add_argument('--threads', default=1, type=int,
                   help='torch CPU threads (1: on a shared machine two threads were slower than one)')
    return p


def resolve(args):
    fill_preset(args, PRESETS, ('seeds', 'num_identities', 'frames', 'train_identities', 'test_identities', 'size',
                                'input_size', 'pre_epochs', 'ft_epochs', 'batch_size', 'threads'), error)
    if min(args.num_identities, args.test_identities, args.train_identities) < 2:
        raise error('--num_identities, --train_identities and --test_identities must be >= 2 (a swap needs two faces)')
    if args.train_identities > args.num_identities:
        raise error(f'--train_identities {args.train_identities} exceeds --num_identities {args.num_identities}')
    if not all(0 < f <= 1 for f in args.lengths):
        raise error(f'--lengths {" ".join(map(str, args.lengths))}: each must lie in (0, 1]')
    if args.num_identities * args.frames < args.batch_size:
        raise error(f'--batch_size {args.batch_size} exceeds the {args.num_identities * args.frames} pre-training '
                    f'images')
    args.lengths = sorted(set(args.lengths))
    families = generalisation.forgery_families()
    swaps = [f for f in families if f != SBI]
    args.train_family = args.train_family or swaps[0]
    if args.train_family not in swaps:
        raise error(f'--train_family {args.train_family} is not one of {", ".join(swaps)}')
    return args, families


def length_epochs(args):
    """The pre-training lengths read, in epochs: ceil(fraction x --pre_epochs), at least 1, without repeats."""
    return sorted({max(1, math.ceil(f * args.pre_epochs - 1e-9)) for f in args.lengths})


def stream(*names):
    """A numpy Generator keyed by names (adding a name elsewhere never shifts this one's draws)."""
    return np.random.default_rng([zlib.crc32(str(n).encode()) for n in names])


# ---------------------------------------------------------------------- data
def write_manifest(path, rows):
    def fill(fh):
        w = csv.DictWriter(fh, fieldnames=['path', 'landmarks', 'label', 'video', 'dataset'])
        w.writeheader()
        w.writerows(rows)
    return atomic_write(path, fill)


def write_data(root, args, families):
    """The grid's faces, once: pre-training reals (num_identities x frames), held-out identities (one real each
    and one fake per family), and per stage-2 seed a draw of train_identities pre-training identities, each with
    a fresh real, a face-swap fake (the training family) and a self-blended fake of that real.
    -> {manifest name: path}; data/done.json is written last, so an interrupted write is redone."""
    names = ['pretrain', *[f'test_{f}' for f in families],
             *[f'seed{k}_{d}' for k in range(args.seeds) for d in (*DATA, 'reals')]]
    paths = {n: root / f'{n}.csv' for n in names}
    done = root / 'done.json'
    if done.exists() and json.loads(done.read_text()).get('seeds', 0) >= args.seeds:
        return paths

    def save(img, lm, rel, label, video):
        png = root / f'{rel}.png'
        png.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(png), img[:, :, ::-1])
        np.save(png.with_suffix('.npy'), np.asarray(lm, np.float32))
        return dict(path=f'{rel}.png', landmarks=f'{rel}.npy', label=label, video=video, dataset='synthetic')

    n_tr, n_te = args.num_identities, args.test_identities
    ids = [synthetic.sample_identity(r) for r in [stream(args.seed, 'identities')] for _ in range(n_tr + n_te)]
    rng = stream(args.seed, 'pretrain')
    write_manifest(paths['pretrain'], [save(*synthetic.render_face(ids[i], rng, args.size), f'pre/id{i:04d}_{f}', 0,
                                            f'real_{i:04d}') for i in range(n_tr) for f in range(args.frames)])
    rng = stream(args.seed, 'test', 'real')
    reals = [synthetic.render_face(ids[i], rng, args.size) for i in range(n_tr, n_tr + n_te)]
    real_rows = [save(img, lm, f'test/real/id{n_tr + j:04d}', 0, f'real_{n_tr + j:04d}')
                 for j, (img, lm) in enumerate(reals)]
    for fam, fn in families.items():
        rng, rows = stream(args.seed, 'test', fam), []
        for j, (_, lm) in enumerate(reals):
            source = n_tr + int(rng.choice([k for k in range(n_te) if k != j]))
            fake = generalisation.make_forgery(fn, ids[n_tr + j], ids[source], rng, args.size)
            rows.append(save(fake, lm, f'test/{fam}/id{n_tr + j:04d}', 1, f'{fam}_{n_tr + j:04d}'))
        write_manifest(paths[f'test_{fam}'], real_rows + rows)
    for k in range(args.seeds):
        rng = stream(args.seed, 'stage2', k)
        chosen = [int(i) for i in rng.choice(n_tr, args.train_identities, replace=False)]
        rows = {d: [] for d in (*DATA, 'reals')}
        for j, i in enumerate(chosen):
            img, lm = synthetic.render_face(ids[i], rng, args.size)
            real = save(img, lm, f'seed{k}/real/id{i:04d}', 0, f'real_{i:04d}')
            source = chosen[(j + 1 + int(rng.integers(len(chosen) - 1))) % len(chosen)]
            swap = generalisation.make_forgery(families[args.train_family], ids[i], ids[source], rng, args.size)
            rows['swap'] += [real, save(swap, lm, f'seed{k}/swap/id{i:04d}', 1, f'swap_{i:04d}')]
            rows['sbi'] += [real, save(self_blend(img, lm, rng)[0], lm, f'seed{k}/sbi/id{i:04d}', 1, f'sbi_{i:04d}')]
            rows['reals'].append(real)
        for d, rs in rows.items():
            write_manifest(paths[f'seed{k}_{d}'], rs)
    atomic_write(done, lambda fh: fh.write(json.dumps(dict(seeds=args.seeds))))
    return paths


# ---------------------------------------------------------------------- stage 1
def pretrain_argv(variant, data_csv, out_dir, args):
    flags = STAGE1[variant]
    return ['--data_path', str(data_csv), '--output_dir', str(out_dir), '--model', args.model,
            '--input_size', str(args.input_size), '--batch_size', str(args.batch_size),
            '--epochs', str(args.pre_epochs), '--warmup_epochs', str(max(1, args.pre_epochs // 10)),
            '--lr', str(args.lr), '--num_workers', str(args.num_workers), '--device', args.device,
            '--seed', str(args.seed), '--save_freq', '1', '--quiet',
            '--mask_strategy', flags['mask_strategy'], '--lamda', str(flags['lamda'])]


def stage1_checkpoints(variant, data_csv, out_dir, args):
    """{epochs: checkpoint path} of a variant: its main_pretrain.py run (continued where it stopped) at every
    length, or {0: a randomly initialised model} for `none`."""
    out_dir = Path(out_dir)
    if STAGE1[variant] is None:
        path = out_dir / 'checkpoint-init.pth'
        if not path.exists():
            pre_args = main_pretrain.get_args_parser().parse_args(pretrain_argv('mae', data_csv, out_dir, args))
            torch.manual_seed(args.seed)
            model = models_mae.build_autoencoder(pre_args)
            out_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.save_checkpoint(out_dir, path.name, model, torch.optim.AdamW(model.parameters()), 0, pre_args)
        return {0: path}
    ckpts = {e: out_dir / f'checkpoint-{e - 1}.pth' for e in length_epochs(args)}
    if not (out_dir / f'checkpoint-{args.pre_epochs - 1}.pth').exists():
        main_pretrain.main(main_pretrain.get_args_parser().parse_args(pretrain_argv(variant, data_csv, out_dir, args)))
    return ckpts


def loss_curves(out_dir):
    """The pre-training log of a run: [{epoch, spat_loss, freq_loss, ...}] (empty without one)."""
    log = Path(out_dir) / 'log.txt'
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


# ---------------------------------------------------------------------- readings
def encoder(ckpt, args):
    name = models_vit.resolve_model_name(args.model)
    model = models_vit.MODELS[name](img_size=args.input_size)
    models_vit.load_pretrained(model, ckpt, model_name=name)
    return model.to(args.device).eval()


@torch.no_grad()
def features(model, manifest, args):
    """Frozen encoder features of a manifest's faces -> ({pool: float64 [N, D]}, labels [N])"""
    with open(manifest, newline='') as fh:
        rows = list(csv.DictReader(fh))
    out = {p: [] for p in POOLS}
    for i in range(0, len(rows), 256):
        imgs = explain.load_images_for(model, [Path(manifest).parent / r['path'] for r in rows[i:i + 256]])
        tokens = model.forward_tokens(imgs.to(args.device)).float()
        for p, pool in POOLS.items():
            out[p].append(pool(tokens).cpu().double().numpy())
    return {p: np.concatenate(v) for p, v in out.items()}, np.array([int(r['label']) for r in rows])


def probe_cell(feats, data, seed, families):
    """Logistic regression on the seed's training features of `data`, per pool -> {pool: {family: AUC}}"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    auc = {}
    for p in POOLS:
        x, y = feats[f'seed{seed}_{data}']
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[p], y)
        auc[p] = {}
        for fam in families:
            xt, yt = feats[f'test_{fam}']
            auc[p][fam] = float(roc_auc_score(yt, clf.predict_proba(xt[p])[:, 1]))
    return auc


def finetune_cell(reading, variant, ckpt, data, seed, paths, run_dir, families, args):
    """main_finetune.py from the checkpoint with the reading's flags, tested on every family -> {family: AUC}"""
    shutil.rmtree(run_dir, ignore_errors=True)                  # an interrupted run starts again
    train = paths[f'seed{seed}_{"swap" if data == "swap" else "reals"}']
    tests = [paths[f'test_{f}'] for f in families]
    argv = ['--finetune', str(ckpt), '--train_manifest', str(train), '--test_manifests', *map(str, tests),
            '--output_dir', str(run_dir), '--input_size', str(args.input_size), '--batch_size', str(args.batch_size),
            '--epochs', str(args.ft_epochs), '--lr', str(args.lr), '--num_workers', str(args.num_workers),
            '--device', args.device,
            '--seed', str(seed), '--no_auto_resume', '--quiet', *FT_COMMON, *READINGS[reading][1],
            '--recon', 'none' if STAGE1[variant] is None else 'real']     # no pre-training: no decoder to ask
    if data == 'sbi':
        argv += ['--pseudo_fakes', 'sbi']
    result = main_finetune.main(main_finetune.get_args_parser().parse_args(argv))
    auc = {f: result['test'][Path(t).stem]['auc'] for f, t in zip(families, tests)}
    shutil.rmtree(run_dir, ignore_errors=True)
    return auc


# ---------------------------------------------------------------------- the grid
def cell_name(reading, variant, epochs, data, seed):
    return f'{reading}_{variant}_ep{epochs}_{data}_seed{seed}'


def plan(args, families):
    """Every cell of the grid in running order: [(reading, variant, epochs, data, seed)]"""
    cells = []
    for v in args.stage1:
        lengths = [0] if STAGE1[v] is None else length_epochs(args)
        for r in args.readings:
            for e in (lengths if r == 'probe' else lengths[-1:]):
                for d in (DATA if r == 'probe' else args.ft_data):
                    cells += [(r, v, e, d, k) for k in range(args.seeds)]
    return cells


def cell_weight(cell, args):
    """Rough cost of a cell in images through the network (for the progress bar's ETA)."""
    reading = cell[0]
    if reading == 'probe':
        return 0
    return args.ft_epochs * 2 * args.train_identities * (2 if reading == 'full' else 1)


def check_settings(out, args):
    """A grid's settings are fixed by its first run: a rerun with others is refused before any work."""
    path = out / 'settings.json'
    now = {k: getattr(args, k) for k in GRID_SETTINGS}
    if path.exists():
        before = json.loads(path.read_text())
        changed = [k for k in GRID_SETTINGS if before.get(k) != now[k]]
        if changed:
            was = ', '.join(f'--{k} {before.get(k)}' for k in changed)
            raise error(f'--out {out} holds a grid with other settings ({was}): rerun with those, or choose another '
                        f'--out')
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: fh.write(json.dumps(now, indent=2)))


def main(args):
    args, families = resolve(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run_grid(args, families)
    finally:
        torch.set_num_threads(threads)


def run_grid(args, families):
    out = Path(args.out)
    check_settings(out, args)
    start = time.time()
    cells = plan(args, families)
    done = {c: out / 'cells' / f'{cell_name(*c)}.json' for c in cells}
    todo = [c for c in cells if not done[c].exists()]
    pre_weight = args.pre_epochs * args.num_identities * args.frames * 2
    todo_pre = [v for v in args.stage1 if STAGE1[v] is not None
                and not (out / 'pretrain' / v / f'checkpoint-{args.pre_epochs - 1}.pth').exists()]
    total = (pre_weight * sum(STAGE1[v] is not None for v in args.stage1)
             + sum(cell_weight(c, args) + 100 for c in cells))
    initial = total - pre_weight * len(todo_pre) - sum(cell_weight(c, args) + 100 for c in todo)
    print(f'{len(cells)} cells ({len(cells) - len(todo)} done): stage 1 {", ".join(args.stage1)}; readings '
          f'{", ".join(args.readings)}; lengths {length_epochs(args)} of {args.pre_epochs} epochs; {args.seeds} '
          f'seed(s); families {", ".join(families)} (training swaps: {args.train_family})', flush=True)
    if args.report:
        return report(out, args, families, cells, done, {}, time.time() - start)
    paths = write_data(out / 'data', args, families) if todo or todo_pre else None
    bar = tqdm(total=total, initial=initial, desc='ablation', unit='img', unit_scale=True, dynamic_ncols=True,
               file=sys.stdout, smoothing=0)
    timings, ckpts = {}, {}
    for v in args.stage1:                           # 1. pre-training, every variant (the longest part)
        if v in todo_pre or any(c[1] == v for c in todo):
            t = time.time()
            bar.set_postfix_str(f'pre-training {v}')
            ckpts[v] = stage1_checkpoints(v, paths['pretrain'], out / 'pretrain' / v, args)
            if v in todo_pre:
                bar.update(pre_weight)
                timings[f'pretrain_{v}'] = round(time.time() - t, 1)
    for v, e in sorted({c[1:3] for c in todo if c[0] == 'probe'}, key=lambda k: (args.stage1.index(k[0]), k[1])):
        t = time.time()                             # 2. linear probes: each encoder's features once
        bar.set_postfix_str(f'features {v} {e} epochs')
        model = encoder(ckpts[v][e], args)
        feats = {n: features(model, paths[n], args) for n in paths if n.startswith(('test_', 'seed'))}
        for c in [c for c in todo if c[0] == 'probe' and c[1:3] == (v, e)]:
            write_cell(done[c], c, probe_cell(feats, c[3], c[4], families), time.time() - t, args)
            bar.update(100)
            t = time.time()
    # 3. fine-tuning, seed by seed: a grid cut short has the same seeds of every variant
    for c in sorted([c for c in todo if c[0] != 'probe'], key=lambda c: (c[4], c[3], c[0], args.stage1.index(c[1]))):
        bar.set_postfix_str(cell_name(*c))
        t = time.time()
        auc = finetune_cell(c[0], c[1], ckpts[c[1]][c[2]], c[3], c[4], paths, out / 'ft_runs' / cell_name(*c),
                            families, args)
        write_cell(done[c], c, auc, time.time() - t, args)
        bar.update(cell_weight(c, args) + 100)
    bar.close()
    return report(out, args, families, cells, done, timings, time.time() - start)


def write_cell(path, cell, auc, seconds, args):
    reading, variant, epochs, data, seed = cell
    doc = dict(reading=reading, stage1=variant, epochs=epochs,
               images_seen=epochs * (args.num_identities * args.frames // args.batch_size) * args.batch_size,
               data=data, seed=seed, auc=auc, time_s=round(seconds, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write(json.dumps(doc, indent=1)))


# ---------------------------------------------------------------------- report
def stat(values):
    return dict(mean=float(np.mean(values)), sd=float(np.std(values, ddof=1)) if len(values) > 1 else None,
                n=len(values))


def summarise(cells, families, args):
    """Mean / sd over seeds per (reading, pool, variant, epochs, data): every family, the training family and
    the mean over the unseen families (averaged per seed first)."""
    groups = {}
    for c in cells:
        for pool, auc in (c['auc'].items() if c['reading'] == 'probe' else [(None, c['auc'])]):
            groups.setdefault((c['reading'], pool, c['stage1'], c['epochs'], c['data']), []).append(
                (c['seed'], auc, c['images_seen']))
    rows = []
    for (reading, pool, variant, epochs, data), runs in groups.items():
        runs.sort(key=lambda r: r[0])
        trained = DATA[data][1] or args.train_family
        unseen = [f for f in families if f != trained]
        rows.append(dict(reading=reading, pool=pool, stage1=variant, epochs=epochs, images_seen=runs[0][2],
                         data=data, train_family=trained, seeds=[r[0] for r in runs],
                         train_auc=stat([r[1][trained] for r in runs]),
                         unseen_auc=stat([np.mean([r[1][f] for f in unseen]) for r in runs]),
                         family_auc={f: stat([r[1][f] for r in runs]) for f in families}))
    return rows


def fmt(s):
    return f'{s["mean"]:.3f}' + (f' ± {s["sd"]:.3f}' if s['sd'] is not None else '')


def markdown(summary, families, meta):
    head = ['stage 1', 'pre-training (epochs / images)', 'seeds', 'AUC training family', 'AUC unseen (mean)',
            *[f'AUC {f}' for f in families]]
    order = {v: i for i, v in enumerate(STAGE1)}
    parts = []
    sections = [('probe', pool, d) for d in DATA for pool in POOLS] + [(r, None, d) for r in READINGS if r != 'probe'
                                                                          for d in DATA]
    for reading, pool, data in sections:
        rows = sorted([r for r in summary if (r['reading'], r['pool'], r['data']) == (reading, pool, data)],
                      key=lambda r: (order[r['stage1']], r['epochs']))
        if not rows:
            continue
        title = READINGS[reading][0] + (f', {pool} token' if pool == 'cls' else ', mean-pooled tokens' if pool else '')
        parts += [f'**{title}; trained on {DATA[data][0]}** (training family `{rows[0]["train_family"]}`)', '',
                  '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for r in rows:
            parts.append('| ' + ' | '.join([STAGE1_NAMES[r['stage1']], f'{r["epochs"]} / {r["images_seen"]:,}',
                                            str(len(r['seeds'])), fmt(r['train_auc']), fmt(r['unseen_auc'])]
                                           + [fmt(r['family_auc'][f]) for f in families]) + ' |')
        parts.append('')
    parts.append(f'Frame AUC on {meta["test_identities"]} held-out identities (one real and one fake per family '
                 f'each); mean ± sd over the finished stage-2 draws (column `seeds`, of {meta["seeds"]}) of '
                 f'{meta["train_identities"]} training identities each; {meta["model"]} at {meta["input_size"]} px, '
                 f'pre-training {meta["pre_epochs"]} epochs on {meta["pretrain_images"]:,} images, fine-tuning '
                 f'{meta["ft_epochs"]} epochs.'
                 + (f' {meta["finished"]} of {meta["cells"]} cells finished; missing: {", ".join(meta["missing"])}.'
                    if meta['missing'] else ''))
    return '\n'.join(parts) + '\n'


def figure(summary, curves, path, args):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(13, 3.6), dpi=110)
    axes = [fig.add_subplot(1, 4, i + 1) for i in range(4)]
    variants = [v for v in STAGE1 if any(r['stage1'] == v for r in summary)]
    for ax, data in zip(axes[:2], DATA):
        for i, v in enumerate(variants):
            for pool, ls in (('cls', '-'), ('mean', '--')):
                rows = sorted([r for r in summary if (r['reading'], r['pool'], r['stage1'], r['data'])
                               == ('probe', pool, v, data)], key=lambda r: r['epochs'])
                if not rows:
                    continue
                xs, ms = [r['images_seen'] for r in rows], np.array([r['unseen_auc']['mean'] for r in rows])
                sds = np.array([r['unseen_auc']['sd'] or 0 for r in rows])
                if STAGE1[v] is None:
                    ax.axhline(ms[0], color=f'C{i}', ls=ls, lw=1, label=f'{v} ({pool})')
                    continue
                ax.errorbar(xs, ms, yerr=sds, color=f'C{i}', ls=ls, marker='o', ms=3, capsize=2, label=f'{v} ({pool})')
        ax.axhline(0.5, color='grey', lw=0.6, ls=':')
        ax.set_xscale('log')
        ticks = sorted({r['images_seen'] for r in summary if r['reading'] == 'probe' and r['epochs']})
        ax.set_xticks(ticks, [f'{x:,}' for x in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel('pre-training images seen')
        ax.set_ylabel('probe AUC, unseen families')
        ax.set_title(f'linear probe trained on {data}', fontsize=9)
    axes[0].legend(fontsize=6, ncol=2)
    for ax, key, title in ((axes[2], 'spat_loss', 'spatial loss'), (axes[3], 'freq_loss', 'frequency loss')):
        for i, v in enumerate(variants):
            log = curves.get(v) or []
            if log and key in log[0]:
                lam = STAGE1[v]['lamda']
                ax.plot([r['epoch'] + 1 for r in log], [r[key] for r in log], color=f'C{i}',
                        ls='-' if key == 'spat_loss' or lam else ':', label=v + ('' if key == 'spat_loss' or lam
                                                                               else ' (not trained)'))
        ax.set_xlabel('pre-training epoch')
        ax.set_title(f'{title} per epoch (training)', fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    return path


def report(out, args, families, cells, done, timings, seconds):
    finished = [json.loads(done[c].read_text()) for c in cells if done[c].exists()]
    summary = summarise(finished, list(families), args)
    curves = {v: loss_curves(out / 'pretrain' / v) for v in args.stage1 if STAGE1[v] is not None}
    steps = args.num_identities * args.frames // args.batch_size
    meta = dict({k: getattr(args, k) for k in GRID_SETTINGS}, seeds=args.seeds, device=args.device,
                threads=args.threads, pretrain_images=args.pre_epochs * steps * args.batch_size,
                length_epochs=length_epochs(args), cells=len(cells), finished=len(finished),
                missing=[cell_name(*c) for c in cells if not done[c].exists()],
                run_s=round(seconds, 1), timings=timings,
                pretrain_s={v: round(sum(r.get('epoch_time_s', 0) for r in log), 1) for v, log in curves.items()},
                cell_s={r: round(sum(c['time_s'] for c in finished if c['reading'] == r), 1) for r in READINGS},
                date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), argv=sys.argv[1:])
    doc = dict(meta=meta, summary=summary, curves=curves)
    atomic_write(out / 'results.json', lambda fh: fh.write(json.dumps(doc, indent=1)))
    table = markdown(summary, list(families), meta)
    atomic_write(out / 'results.md', lambda fh: fh.write(table))
    figure(summary, curves, out / 'ablation.png', args)
    print('\n' + table + f'\n{len(finished)} of {len(cells)} cells; wrote {out / "results.json"}, results.md and '
          f'ablation.png', flush=True)
    return doc


if __name__ == '__main__':
    main(argparse.ArgumentParser('MIFAE stage-1 ablation', parents=[get_args_parser()]).parse_args())
