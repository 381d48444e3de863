"""The evaluation's reports: the results table (text and Markdown), eval.json, eval.md and one ROC curve per set.

Rows are test sets (and `set/group` rows of --group_by); a metric that is undefined prints as n/a and is null in
eval.json, never a number standing in for it.
"""
import json
import math
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from util.fileio import atomic_write, write_text

REPORT_COLUMNS = (('set', 's'), ('n', 'd'), ('n_real', 'd'), ('n_fake', 'd'), ('n_videos', 'd'),
                  ('auc', 'f'), ('video_auc', 'f'), ('eer', 'f'), ('ap', 'f'), ('acc', 'f'), ('missing', 'd'),
                  ('unreadable', 'd'))


def _cell(v, kind):
    if v is None:
        return 'n/a'
    if kind == 'f':
        return f'{v:.4f}'
    return str(v)


def format_table(results, markdown=False):
    """results: {set name: metrics dict (plus 'missing')} -> a text (or Markdown) table."""
    head = [c for c, _ in REPORT_COLUMNS]
    rows = [[_cell(name if c == 'set' else m.get(c), k) for c, k in REPORT_COLUMNS] for name, m in results.items()]
    if markdown:
        lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join('---' for _ in head) + '|']
        lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        fmt = lambda r: '  '.join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [fmt(head), fmt(['-' * w for w in widths])] + [fmt(r) for r in rows]
    notes = [f'{name}: {m["note"]}' for name, m in results.items() if m.get('note')]
    if notes:
        lines += [''] + [('- ' if markdown else '') + n for n in notes]
    return '\n'.join(lines)


def save_roc_png(path, name, labels, scores, metrics):
    """ROC curve (matplotlib, Agg) with AUC and EER in the legend. False when the set has one class."""
    pts = roc_points(labels, scores)
    if pts is None:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fpr, tpr = pts
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    ax.plot(fpr, tpr, lw=1.8, label=f'AUC {metrics["auc"]:.4f}, EER {metrics["eer"]:.4f}')
    ax.plot([0, 1], [0, 1], ls='--', lw=0.8, color='gray')
    e = metrics['eer']
    ax.plot([e], [1 - e], 'o', ms=4, color='C3')
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel='false positive rate (real called fake)',
           ylabel='true positive rate (fake caught)', title=f'ROC: {name}')
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format='png'), mode='wb')
    finally:
        plt.close(fig)
    return True


def write_eval_report(results, output_dir, checkpoint=None, curves=None):
    """eval.json, eval.md and roc_<set>.png in output_dir; returns the printed table."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(results)
    rocs = {}
    for name, (labels, scores) in (curves or {}).items():
        png = out / f'roc_{name.replace("/", "_")}.png'                # 'set/group' rows of --group_by
        if save_roc_png(png, name, labels, scores, results[name]):
            rocs[name] = png.name
    doc = dict(checkpoint=str(checkpoint) if checkpoint else None, sets=results, roc=rocs)
    write_text(out / 'eval.json', json.dumps(doc, indent=2, default=_json_default))
    md = [f'# Evaluation of `{checkpoint}`' if checkpoint else '# Evaluation', '',
          format_table(results, markdown=True), '']
    md += [f'![ROC {n}]({f})' for n, f in rocs.items()]
    write_text(out / 'eval.md', '\n'.join(md) + '\n')
    return table


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def roc_points(labels, scores):
    """(fpr, tpr) of the ROC for plotting; None with one class."""
    labels = np.asarray(labels).astype(np.int64)
    if np.unique(labels).size < 2:
        return None
    fpr, tpr, _ = roc_curve(labels, np.asarray(scores, np.float64))
    return fpr, tpr
