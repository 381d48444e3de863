"""The demo's held-out AUC over several seeds: its data, pre-training and fine-tuning (demo.train) per seed.

Each seed draws its own faces and training randomness; the evaluation protocols and figures, which do not
change the AUC, are left out. A row per seed as it finishes, then min / mean / max. Any demo flag applies to
every seed.

  python -m benchmarks.demo_seeds --seeds 0,1,2,3,4 --out demo_seeds            # the table in docs/demo.md
  python -m benchmarks.demo_seeds --seeds 0,1 --quick --out demo_seeds_quick    # seconds
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import demo  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser('The demo\'s held-out AUC per seed', parents=[demo.get_args_parser()])
    p.add_argument('--seeds', default='0,1,2,3,4', help='comma-separated seeds')
    args = p.parse_args(argv)
    out, rows = Path(args.out), []
    for seed in (int(s) for s in args.seeds.split(',')):
        run = demo.resolve(argparse.Namespace(**dict(vars(args), seed=seed, out=str(out / f'seed{seed}'))))
        timings = {}
        _, _, _, ft = demo.train(run, timings)
        test = next(iter(ft['test'].values()))
        rows.append(dict(seed=seed, auc=test['auc'], best_val_auc=ft.get('best_val_auc'),
                         train_s=round(sum(timings.values()), 1)))
        print(json.dumps(rows[-1]), flush=True)
    aucs = np.array([r['auc'] for r in rows])
    summary = dict(seeds=rows, min=float(aucs.min()), mean=float(aucs.mean()), max=float(aucs.max()))
    (out / 'seeds.json').write_text(json.dumps(summary, indent=1))
    print(f'held-out AUC over {len(rows)} seeds: min {aucs.min():.3f}, mean {aucs.mean():.3f}, max {aucs.max():.3f}')
    return summary


if __name__ == '__main__':
    main()
