"""The whole MIFAE pipeline in one command, offline, on synthetic faces (no data set to download):

  1. synthetic real and face-swapped fake faces with landmarks (synthetic.faces), identity-disjoint
     train / validation / test splits (a fake's swap target and source on the same side)
  2. MIFAE pre-training on the real training faces (main_pretrain.main)
  3. fine-tuning the detector with reconstruction of real faces (main_finetune.main), best epoch picked on
     the validation identities
  4. evaluation on held-out identities (frame / video AUC, EER, AP, ACC), then the evaluation protocols of
     EVALUATION.md: the AUC per forgery family never seen in training (synthetic.faces.FORGERY_FAMILIES;
     the detector is fine-tuned on swaps only) and a robustness table (crop protocol, util/perturb.py)
  5. the five figures (Visualization/visualize.py)

  python demo.py                      # micro model on 64-px faces, under 3 minutes on 2 idle CPU cores
  python demo.py --quick              # the same pipeline, much smaller (seconds; used by the tests)
  python demo.py --device cuda --model mae_vit_small_patch16 --epochs 100 --num_faces 8000 --size 256 \
      --input_size 224 --artefacts subtle

The default recipe (1,200 faces of 600 identities, 5 + 18 epochs, whole encoder fine-tuned) is the one the
test suite holds to AUC >= 0.9 on the held-out identities (tests/test_demo.py).

Every stage calls the entry point's own main() with arguments from its own parser; the demo adds no
training code. Outputs go to --out (default demo_output/), which each run overwrites.
"""
import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import main_finetune  # noqa: E402
import main_pretrain  # noqa: E402
from synthetic.faces import FORGERY_FAMILIES, family_method, generate_dataset  # noqa: E402
from util.perturb import FRAME_KINDS  # noqa: E402
from Visualization import visualize as viz  # noqa: E402

# (defaults, --quick) -- the quick run is the same pipeline at a size the test suite can afford
PRESETS = dict(
    default=dict(num_faces=1200, frames=1, size=64, input_size=64, epochs=5, ft_epochs=18, batch_size=16,
                 ft_batch_size=32, lr=1e-3, ft_lr=1e-3, num_images=4),
    quick=dict(num_faces=64, frames=2, size=64, input_size=64, epochs=2, ft_epochs=1, batch_size=8,
               ft_batch_size=8, lr=1e-3, ft_lr=1e-3, num_images=2),
)
VAL_FRACTION = 0.2               # of the training identities, for picking the best fine-tuning epoch
ROBUSTNESS_LEVELS = (1, 3, 5)    # of util/perturb.py's five, for every degradation (EVALUATION.md runs all five)


def get_args_parser():
    p = argparse.ArgumentParser('MIFAE demo: synthetic faces -> pre-training -> fine-tuning -> evaluation -> '
                                'figures', add_help=False)
    p.add_argument('--quick', action='store_true', help='a much smaller run of the same pipeline (for tests)')
    p.add_argument('--model', default='mae_vit_micro_patch8', help='pre-training model (see models_mae.MODELS); '
                                                                  'the detector uses the matching ViT')
    p.add_argument('--epochs', default=None, type=int, help='pre-training epochs (default 5; quick 2)')
    p.add_argument('--ft_epochs', default=None, type=int, help='fine-tuning epochs (default 18; quick 1)')
    p.add_argument('--num_faces', default=None, type=int,
                   help='synthetic images, half real, half fake (default 1200; quick 64)')
    p.add_argument('--frames', default=None, type=int, help='frames per synthetic video (default 1; quick 2)')
    p.add_argument('--size', default=None, type=int, help='side of the synthetic images (default 64)')
    p.add_argument('--artefacts', default='strong', choices=['subtle', 'strong'],
                   help='how visible the synthetic face swaps are (synthetic.faces.SWAP_ARTEFACTS)')
    p.add_argument('--input_size', default=None, type=int, help='network input size (default 64)')
    p.add_argument('--batch_size', default=None, type=int, help='pre-training batch size (default 16; quick 8)')
    p.add_argument('--ft_batch_size', default=None, type=int, help='fine-tuning batch size (default 32; quick 8)')
    p.add_argument('--lr', default=None, type=float, help='pre-training learning rate (absolute)')
    p.add_argument('--ft_lr', default=None, type=float, help='fine-tuning learning rate (absolute)')
    p.add_argument('--trainable_blocks', default=None, type=int,
                   help='fine-tune only the last K encoder blocks (default: the whole encoder; a few CPU epochs of '
                        'pre-training are too few for frozen features)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--num_workers', default=0, type=int, help='DataLoader workers (0: load in the main process)')
    p.add_argument('--out', default=str(ROOT / 'demo_output'), help='output folder (overwritten)')
    p.add_argument('--seed', default=0, type=int)
    p.add_argument('--verbose', action='store_true', help='progress bars and the stages\' full logs')
    return p


def resolve(args):
    """Fill the options left unset from the preset; reject impossible values with a one-line reason."""
    preset = PRESETS['quick' if args.quick else 'default']
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for flag in ('epochs', 'ft_epochs', 'batch_size', 'ft_batch_size', 'size', 'input_size', 'frames'):
        if getattr(args, flag) < 1:
            raise SystemExit(f'demo.py: error: --{flag} must be at least 1')
    if args.num_faces < 16 * args.frames:
        raise SystemExit(f'demo.py: error: --num_faces {args.num_faces} is too small: at least {16 * args.frames} '
                         f'(8 identities with {args.frames} frame(s), real and fake)')
    if args.trainable_blocks is not None and args.trainable_blocks < 0:
        raise SystemExit('demo.py: error: --trainable_blocks must be >= 0')
    return args


# ---------------------------------------------------------------------- data
def swap_identities(row):
    """Every identity a manifest row shows: its own (a fake's swap target) and, for a fake of
    synthetic.faces (video fake_<target>_<source>), the source whose inner face was pasted in."""
    kind, *ends = row['video'].split('_')
    source = row['label'] == '1' and kind == 'fake' and len(ends) == 2
    return {row['identity']} | ({f'id{ends[1]}'} if source else set())


def split_validation(train_csv, fraction=VAL_FRACTION, seed=0):
    """Move `fraction` of the training identities (their real videos and the fakes made of them) from train.csv
    into val.csv, next to it, with no identity on both sides, swap sources included. The validation identities
    grow along the (target, source) pairs from random starts, so few fakes pair a validation identity with a
    training one; those few are left out. -> (fine-tuning train manifest, validation manifest)"""
    train_csv = Path(train_csv)
    with open(train_csv, newline='') as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    partners = {}
    for r in rows:
        ends = swap_identities(r)
        for i in ends:
            partners.setdefault(i, set()).update(ends - {i})
    rng = np.random.default_rng(seed)
    n_val = max(2, int(round(fraction * len(partners))))
    val_ids, queue = set(), []
    while len(val_ids) < n_val:
        if not queue:
            queue.append(str(rng.choice(sorted(set(partners) - val_ids))))
        i = queue.pop(0)
        if i not in val_ids:
            val_ids.add(i)
            queue += sorted(partners[i] - val_ids)
    side = [{i in val_ids for i in swap_identities(r)} for r in rows]
    out = {}
    for name, keep in (('finetune_train', {False}), ('val', {True})):
        part = [r for r, s in zip(rows, side) if s == keep]
        if len({r['label'] for r in part}) < 2:
            raise SystemExit(f'demo.py: error: the {name} split holds one class only; raise --num_faces')
        out[name] = train_csv.with_name(f'{name}.csv')
        with open(out[name], 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(part)
    across = sum(len(s) > 1 for s in side)
    print(f'validation identities: {len(val_ids)} of {len(partners)}; {across} fake image(s) pairing one with a '
          f'training identity left out')
    return out['finetune_train'], out['val']


def count_rows(csv_path):
    with open(csv_path, newline='') as f:
        rows = list(csv.DictReader(f))
    return len(rows), sum(r['label'] == '1' for r in rows), len({r['identity'] for r in rows if r.get('identity')})


# ---------------------------------------------------------------------- stages
def pretrain_argv(args, data_csv, out_dir):
    return ['--data_path', str(data_csv), '--output_dir', str(out_dir), '--model', args.model,
            '--input_size', str(args.input_size), '--batch_size', str(args.batch_size),
            '--epochs', str(args.epochs), '--warmup_epochs', str(max(1, args.epochs // 10)),
            '--lr', str(args.lr), '--num_workers', str(args.num_workers), '--device', args.device,
            '--seed', str(args.seed), '--save_freq', str(args.epochs), '--print_freq', '5', '--no_auto_resume'] \
        + ([] if args.verbose else ['--quiet'])


def finetune_argv(args, pretrained, train_csv, val_csv, test_csv, out_dir):
    # the demo's own CPU recipe, explicit: --recipe light (no mixup, RandAugment or erasing, whole-image
    # evaluation, balanced sampling) and the flags below; the reference recipe is main_finetune.py's default
    return ['--finetune', str(pretrained), '--train_manifest', str(train_csv), '--val_manifest', str(val_csv),
            '--test_manifests', str(test_csv), '--output_dir', str(out_dir), '--input_size', str(args.input_size),
            '--batch_size', str(args.ft_batch_size), '--epochs', str(args.ft_epochs), '--lr', str(args.ft_lr),
            '--warmup_epochs', '1', '--smoothing', '0', '--layer_decay', '1', '--recipe', 'light',
            '--num_workers', str(args.num_workers), '--device', args.device, '--seed', str(args.seed),
            '--print_freq', '5', '--no_auto_resume'] \
        + (['--full_finetune'] if args.trainable_blocks is None
           else ['--trainable_blocks', str(args.trainable_blocks)]) \
        + ([] if args.verbose else ['--quiet'])


def evaluation_protocols(args, detector, manifests, out):
    """Cross-manipulation (each forgery family's held-out fakes against all held-out reals) and robustness at
    crop protocol (every util/perturb.py type at ROBUSTNESS_LEVELS on the swap test set), through main_finetune --eval;
    both tables printed. -> dict(families={family: frame/video AUC}, robustness={type: {level: AUC}})"""
    common = ['--eval', '--resume', str(detector), '--device', args.device, '--num_workers', str(args.num_workers),
              '--batch_size', str(max(args.batch_size, 64)), '--seed', str(args.seed), '--quiet']
    fam = main_finetune.main(main_finetune.get_args_parser().parse_args(common + [
        '--test_manifests', str(manifests['families_test']), '--group_by', 'method', '--output_dir',
        str(out / 'families')]))['test']
    families = {}
    for name in FORGERY_FAMILIES:
        m = fam.get(f'families_test/{family_method(name)}')
        if m is not None:
            families[name] = dict(auc=m['auc'], video_auc=m['video_auc'], n_fake=m['n_fake'])
    print('\nheld-out AUC per forgery family (fine-tuned on swaps only):')
    print('\n'.join(f'  {k:11s} {v["auc"]:.3f}  ({v["n_fake"]} fakes)' if v['auc'] is not None else f'  {k:11s} n/a'
                     for k, v in families.items()))
    main_finetune.main(main_finetune.get_args_parser().parse_args(common + [
        '--test_manifests', str(manifests['test']), '--output_dir', str(out / 'robustness'),
        '--perturb', *[f'{kind}:{level}' for kind in FRAME_KINDS for level in ROBUSTNESS_LEVELS]]))
    doc = json.loads((out / 'robustness' / 'robustness.json').read_text())
    entry = next(iter(doc['sets'].values()))
    robustness = {k: {lv: m['auc'] for lv, m in per.items()} for k, per in entry['perturbations'].items()}
    return dict(families=families, robustness=dict(clean=entry['clean']['auc'], auc=robustness))


def run_stage(name, fn, timings):
    print(f'\n=== {name} ===', flush=True)
    t = time.time()
    result = fn()
    timings[name] = time.time() - t
    print(f'--- {name}: {timings[name]:.0f} s', flush=True)
    return result


def train(args, timings):
    """Stages 1-4 into args.out: data, pre-training, fine-tuning, held-out evaluation.
    -> (manifests, pre-trained checkpoint, detector checkpoint, main_finetune's result)"""
    torch.manual_seed(args.seed)
    out = Path(args.out)
    for sub in ('data', 'pretrain', 'finetune', 'families', 'robustness', 'figures'):     # each run starts afresh
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / 'summary.json').unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    # 1. data: num_faces images = identities x frames real + as many fake
    n_ids = max(8, int(round(args.num_faces / (2 * args.frames))))
    manifests = run_stage('synthetic faces', lambda: generate_dataset(
        out / 'data', num_identities=n_ids, frames_per_identity=args.frames, size=args.size, seed=args.seed,
        fake_ratio=0.5, test_fraction=0.25, progress=args.verbose, artefacts=args.artefacts,
        families=('swap',), test_families=tuple(FORGERY_FAMILIES)), timings)
    train_csv, val_csv = split_validation(manifests['train'], seed=args.seed)
    for name, m in (('pre-training (real faces)', manifests['pretrain']), ('fine-tuning train', train_csv),
                    ('validation', val_csv), ('test (held-out identities)', manifests['test'])):
        n, fake, ids = count_rows(m)
        print(f'{name:28s} {n:4d} images, {fake:4d} fake, {ids:3d} identities  {m}')

    # 2. pre-training
    pre_args = main_pretrain.get_args_parser().parse_args(pretrain_argv(args, manifests['pretrain'],
                                                                        out / 'pretrain'))
    run_stage('pre-training', lambda: main_pretrain.main(pre_args), timings)
    pretrained = out / 'pretrain' / 'checkpoint-last.pth'

    # 3 + 4. fine-tuning, best epoch on the validation identities, then the held-out test identities
    ft_args = main_finetune.get_args_parser().parse_args(finetune_argv(args, pretrained, train_csv, val_csv,
                                                                       manifests['test'], out / 'finetune'))
    ft = run_stage('fine-tuning + evaluation', lambda: main_finetune.main(ft_args), timings)
    return manifests, pretrained, out / 'finetune' / 'checkpoint-best.pth', ft


def main(args):
    args = resolve(args)
    out = Path(args.out)
    timings, start = {}, time.time()
    manifests, pretrained, detector, ft = train(args, timings)
    test = next(iter(ft['test'].values()))
    protocols = run_stage('evaluation protocols', lambda: evaluation_protocols(args, detector, manifests, out),
                          timings)

    # 5. figures
    def figures():
        model = viz.load_autoencoder(pretrained, args.device)
        samples = viz.load_samples(manifests['test'])
        written = viz.write_pretrain_figures(model, samples, out / 'figures', num_images=args.num_images,
                                             num_freq_images=2, seed=args.seed)
        written[4] = viz.write_discrepancy_figure(detector, samples, out / 'figures',
                                                  viz.manifest_groups(manifests['test']), args.seed,
                                                  device=args.device, per_group=2)
        written[5] = viz.write_self_blend_figure(samples, out / 'figures', seed=args.seed)
        return written
    written = run_stage('figures', figures, timings)

    total = time.time() - start
    summary = dict(test={k: test.get(k) for k in ('auc', 'video_auc', 'eer', 'ap', 'acc')},
                   best_val_auc=ft.get('best_val_auc'), **protocols,
                   timings_s={k: round(v, 1) for k, v in timings.items()}, total_s=round(total, 1), args=vars(args))
    (out / 'summary.json').write_text(json.dumps(summary, indent=2, default=str))
    print('\n=== done ===')
    print('held-out identities: ' + ', '.join(f'{k} {v:.3f}' for k, v in summary['test'].items() if v is not None))
    print(f'total {total:.0f} s (' + ', '.join(f'{k} {v:.0f} s' for k, v in timings.items()) + ')')
    print(f'data:        {out / "data"}  (manifests all / train / test / pretrain / finetune_train / val .csv)')
    print(f'pre-trained: {pretrained}')
    print(f'detector:    {detector}')
    print(f'metrics:     {out / "finetune" / "eval.md"} (eval.json, ROC curves beside it)')
    print(f'protocols:   {out / "families" / "eval.md"} (AUC per forgery family), '
          f'{out / "robustness" / "robustness.md"} (crop protocol)')
    for num, path in sorted(written.items()):
        print(f'figure {num}:    {path}')
    print(f'summary:     {out / "summary.json"}')
    return summary


if __name__ == '__main__':
    main(argparse.ArgumentParser('MIFAE demo', parents=[get_args_parser()]).parse_args())
