"""benchmarks/ablation.py: a tiny grid runs end to end (cells, table, JSON and figure agree), and an interrupted
grid resumes: the same cells, those already finished neither recomputed nor changed, pre-training not redone."""
import json
from pathlib import Path

import numpy as np
import pytest

import main_pretrain
from benchmarks import ablation

ARGV = ['--quick', '--seeds', '2', '--stage1', 'none', 'mifae', '--ft_data', 'swap', '--threads', '1']
STOP_AFTER = 3                   # fine-tuning cells finished before the interruption


@pytest.fixture(scope='module')
def grid(tmp_path_factory):
    """The tiny grid run twice into one --out: interrupted after STOP_AFTER fine-tuning cells, then rerun."""
    out = tmp_path_factory.mktemp('ablation')
    argv = [*ARGV, '--out', str(out)]
    with pytest.MonkeyPatch.context() as mp:
        return _interrupt_and_resume(mp, out, argv)


def _interrupt_and_resume(mp, out, argv):
    real_ft, calls = ablation.finetune_cell, []

    def failing(*a, **kw):
        if len(calls) == STOP_AFTER:
            raise KeyboardInterrupt
        calls.append(Path(a[6]).name)                              # the run folder: the cell's name
        return real_ft(*a, **kw)
    mp.setattr(ablation, 'finetune_cell', failing)
    with pytest.raises(KeyboardInterrupt):
        ablation.main(ablation.get_args_parser().parse_args(argv))
    first = {p.name: p.read_bytes() for p in (out / 'cells').glob('*.json')}
    mp.setattr(ablation, 'finetune_cell', None)                  # --report runs no cell
    partial = ablation.main(ablation.get_args_parser().parse_args([*argv, '--report']))
    partial_md = (out / 'results.md').read_text()

    counts = dict(finetune=[], probe=0, pretrain=0)

    def counting_ft(*a, **kw):
        counts['finetune'].append(Path(a[6]).name)
        return real_ft(*a, **kw)

    def counting(name, fn):
        def wrapped(*a, **kw):
            counts[name] += 1
            return fn(*a, **kw)
        return wrapped
    mp.setattr(ablation, 'finetune_cell', counting_ft)
    mp.setattr(ablation, 'probe_cell', counting('probe', ablation.probe_cell))
    mp.setattr(main_pretrain, 'main', counting('pretrain', main_pretrain.main))
    result = ablation.main(ablation.get_args_parser().parse_args(argv))
    return dict(out=out, argv=argv, first=first, interrupted=calls, counts=counts, result=result, partial=partial,
                partial_md=partial_md)


@pytest.mark.slow
def test_tiny_grid_writes_consistent_cells_table_json_and_figure(grid):
    out, result = grid['out'], grid['result']
    families = list(ablation.generalisation.forgery_families())
    args = ablation.resolve(ablation.get_args_parser().parse_args(grid['argv']))[0]
    cells = ablation.plan(args, families)
    lengths = ablation.length_epochs(args)
    assert lengths == [1, 2]                                     # 5 % and 25 % of 2 epochs -> 1, 100 % -> 2
    probe = [c for c in cells if c[0] == 'probe']
    assert len(probe) == (1 + len(lengths)) * len(ablation.DATA) * 2        # none: one length; mifae: each
    assert len(cells) - len(probe) == 2 * 2 * 2                  # partial, full x none, mifae x 2 seeds
    assert sorted(p.stem for p in (out / 'cells').glob('*.json')) == sorted(ablation.cell_name(*c) for c in cells)
    docs = [json.loads((out / 'cells' / f'{ablation.cell_name(*c)}.json').read_text()) for c in cells]
    for doc in docs:
        aucs = [doc['auc']] if doc['reading'] != 'probe' else list(doc['auc'].values())
        assert all(len(a) == len(families) and all(0 <= v <= 1 for v in a.values()) for a in aucs)
        if doc['reading'] == 'probe':
            assert set(doc['auc']) == set(ablation.POOLS) and all(set(a) == set(families) for a in doc['auc'].values())
    for ep in lengths:                                            # the checkpoints of each length were kept
        assert (out / 'pretrain' / 'mifae' / f'checkpoint-{ep - 1}.pth').exists()
    saved = json.loads((out / 'results.json').read_text())
    assert saved['summary'] == result['summary'] and saved['meta']['finished'] == len(cells)
    assert [r['epoch'] for r in saved['curves']['mifae']] == [0, 1]
    assert all(np.isfinite(r['spat_loss']) and np.isfinite(r['freq_loss']) for r in saved['curves']['mifae'])
    for row in result['summary']:                                 # every summary row is its cells' mean and sd
        mine = [d for d in docs if (d['reading'], d['stage1'], d['epochs'], d['data'])
                == (row['reading'], row['stage1'], row['epochs'], row['data'])]
        auc = [d['auc'][row['pool']] if row['pool'] else d['auc'] for d in mine]
        assert len(auc) == 2 and row['seeds'] == [0, 1]
        trained = 'sbi' if row['data'] == 'sbi' else 'swap'
        assert row['train_family'] == trained
        assert np.isclose(row['train_auc']['mean'], np.mean([a[trained] for a in auc]))
        unseen = [np.mean([a[f] for f in families if f != trained]) for a in auc]
        assert np.isclose(row['unseen_auc']['mean'], np.mean(unseen))
        assert np.isclose(row['unseen_auc']['sd'], np.std(unseen, ddof=1))
    md = (out / 'results.md').read_text()
    assert md.count('**linear probe') == 4 and md.count('**partial fine-tuning') == 1
    assert md.count('**whole-encoder') == 1 and 'full MIFAE' in md and 'no pre-training' in md
    assert (out / 'ablation.png').stat().st_size > 10000


@pytest.mark.slow
def test_interrupted_grid_resumes_without_recomputing(grid):
    out, first, counts = grid['out'], grid['first'], grid['counts']
    assert len(grid['interrupted']) == STOP_AFTER
    finished_ft = [n for n in first if not n.startswith('probe_')]
    assert len(finished_ft) == STOP_AFTER and len(first) > STOP_AFTER     # and every probe (they run first)
    for name, data in first.items():                              # finished cells: untouched by the rerun
        assert (out / 'cells' / name).read_bytes() == data
    total_ft = 2 * 2 * 2
    assert len(counts['finetune']) == total_ft - STOP_AFTER        # only the missing cells ran
    assert not {f'{name}.json' for name in counts['finetune']} & set(first)
    assert {f'{name}.json' for name in grid['interrupted']} <= set(first)
    assert counts['pretrain'] == 0                                # the finished pre-training was reused
    probes = len(list((out / 'cells').glob('probe_*.json')))
    assert counts['probe'] == probes - sum(n.startswith('probe_') for n in first)
    assert not (out / 'ft_runs').exists() or not any((out / 'ft_runs').iterdir())
    partial = grid['partial']['meta']                             # the report of the interrupted grid: what is missing
    assert partial['finished'] == len(first) and len(partial['missing']) == partial['cells'] - len(first)
    assert not {f'{name}.json' for name in partial['missing']} & set(first)
    assert f'{len(first)} of {partial["cells"]} cells finished; missing: {partial["missing"][0]}' in grid['partial_md']
    assert grid['result']['meta']['missing'] == [] and 'missing' not in (out / 'results.md').read_text()
    with pytest.raises(SystemExit, match='holds a grid with other settings'):     # refused before any work
        ablation.main(ablation.get_args_parser().parse_args([*grid['argv'], '--pre_epochs', '3']))
