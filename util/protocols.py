"""Evaluation protocols on labelled samples: manipulation groups, frame sampling, video ids, score files and
the robustness report.

Invariants: a video is one (dataset, method, video id) triple -- FF++'s `000_003` under Deepfakes and under
Face2Face are two videos, never merged; a group of fakes (one manipulation, one data set) is always scored
against *all* the reals of the same set; frames are taken in manifest order. Scores are fake probabilities
(label 1 = fake, 0 = real).
"""
import csv
import json
import math
import os
import zlib
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np

from util.datasets import FaceDataset
from util.perturb import LEVELS, perturb, stream_key

# the short names of the papers -> FaceForensics++'s folder names, which the ffpp preset writes
METHOD_ALIASES = {'DF': 'Deepfakes', 'F2F': 'Face2Face', 'FS': 'FaceSwap', 'NT': 'NeuralTextures',
                  'FSh': 'FaceShifter', 'DFD': 'DeepFakeDetection'}
GROUP_KEYS = ('method', 'dataset')
SCORE_COLUMNS = ('path', 'video', 'label', 'method', 'score')
VIDEO_COLUMNS = ('video', 'label', 'method', 'frames', 'score')


def resolve_methods(text):
    """'DF,F2F,FS' -> ['Deepfakes', 'Face2Face', 'FaceSwap'] (other names kept as given)."""
    names = [t.strip() for t in str(text).split(',') if t.strip()]
    return [METHOD_ALIASES.get(t, t) for t in names]


def select_methods(samples, methods):
    """All reals, and the fakes whose method is one of `methods` ('DF,F2F' or a list; names or aliases)."""
    keep = set(resolve_methods(methods if isinstance(methods, str) else ','.join(methods)))
    return [s for s in samples if s.label == 0 or s.method in keep]


def video_key(s):
    return s.dataset, s.method, s.video


def qualify_videos(samples):
    """Video ids that occur under more than one (dataset, method) of the same label become
    'dataset/method/video', so that they are never merged. A real and a fake sharing an id stay as they are:
    that is a labelling error the caller reports. -> (samples, number of ids qualified)."""
    owners = {}
    for s in samples:
        owners.setdefault((s.label, s.video), set()).add((s.dataset, s.method))
    shared = {k for k, o in owners.items() if len(o) > 1}
    if not shared:
        return samples, 0
    return [replace(s, video=f'{s.dataset}/{s.method}/{s.video}') if (s.label, s.video) in shared else s
            for s in samples], len(shared)


def even_frames(samples, n):
    """At most `n` frames per video, evenly spaced over its frames in manifest order (all when it has
    fewer): the fixed-frames protocol (e.g. 32) computed from a manifest holding more frames."""
    if not n:
        return samples
    by_video = OrderedDict()
    for i, s in enumerate(samples):
        by_video.setdefault(video_key(s), []).append(i)
    keep = []
    for idx in by_video.values():
        k = len(idx)
        keep += idx if k <= n else [idx[j] for j in np.unique(np.round(np.linspace(0, k - 1, n)).astype(int))]
    return [samples[i] for i in sorted(keep)]


def groups(samples, by):
    """{group name: indices into samples} for each group of fakes (by 'method' or 'dataset'), each with all
    the reals; fakes without a method form no group."""
    reals = [i for i, s in enumerate(samples) if s.label == 0]
    fakes = OrderedDict()
    for i, s in enumerate(samples):
        g = getattr(s, by)
        if s.label == 1 and g:
            fakes.setdefault(g, []).append(i)
    return OrderedDict((g, sorted(reals + idx)) for g, idx in sorted(fakes.items()))


def frame_seed(sample, seed, kind, level):
    """Seed of one frame's perturbation: the same frame draws the same whatever the order, selection, worker
    or machine (the video key and the file name, not the index, identify it), and whatever other types the
    perturbation table holds (util.perturb.stream_key)."""
    key = f'{sample.dataset}/{sample.method}/{sample.video}/{os.path.basename(sample.path)}'
    return [int(seed), stream_key(kind), int(level), zlib.crc32(key.encode())]


class PerturbedFaces(FaceDataset):
    """Evaluation crops degraded by util.perturb (crop protocol) as read, before the resize to the input
    size; each frame decoded once, its generator seeded by frame_seed."""

    def __init__(self, samples, transform, kind, level, seed=0, **kwargs):
        super().__init__(samples, transform, **kwargs)
        self.kind, self.level, self.seed = kind, level, seed

    def _read(self, sample):
        img, lm = super()._read(sample)
        rng = np.random.default_rng(frame_seed(sample, self.seed, self.kind, self.level))
        return perturb(img, self.kind, self.level, rng), lm


# ---------------------------------------------------------------------------------------------------
# score files

def _write_csv(path, header, rows):
    tmp = Path(path).with_name(f'.{Path(path).name}.tmp')
    with open(tmp, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)


def write_scores(output_dir, name, samples, scores):
    """scores_<name>.csv (one row per evaluated frame: path, video, label, method, score) and
    videos_<name>.csv (one row per video: video, label, method, frames, mean score). -> the two paths."""
    out = Path(output_dir)
    frames = out / f'scores_{name}.csv'
    videos = out / f'videos_{name}.csv'
    _write_csv(frames, SCORE_COLUMNS, [(s.path, s.video, s.label, s.method, f'{float(p):.8g}')
                                       for s, p in zip(samples, scores)])
    acc = OrderedDict()
    for s, p in zip(samples, scores):
        a = acc.setdefault(s.video, [s.label, s.method, 0, 0.0])
        a[2] += 1
        a[3] += float(p)
    _write_csv(videos, VIDEO_COLUMNS, [(v, lab, m, n, f'{t / n:.8g}') for v, (lab, m, n, t) in acc.items()])
    return frames, videos


def read_scores(path):
    """A scores_<set>.csv -> dict of numpy arrays / lists: label, score, video, method, path."""
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        missing = [c for c in SCORE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f'{path}: score file lacks column(s) {", ".join(missing)} '
                             f'(expected {",".join(SCORE_COLUMNS)})')
        rows = list(reader)
    if not rows:
        raise ValueError(f'{path}: score file has no rows')
    return dict(label=np.array([int(r['label']) for r in rows], np.int64),
                score=np.array([float(r['score']) for r in rows], np.float64),
                video=[r['video'] for r in rows], method=[r['method'] for r in rows], path=[r['path'] for r in rows])


# ---------------------------------------------------------------------------------------------------
# robustness report: {set: {'clean': metrics, 'perturbations': {type: {level: metrics}}}}

def _fmt(v):
    return 'n/a' if v is None else f'{v:.4f}'


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def robustness_table(entry, levels=LEVELS):
    """Markdown table of one set: a row per type, cells 'frame AUC / video AUC' per level, the mean over
    levels, and a first row for the clean set."""
    head = ['type'] + [f'level {lv}' for lv in levels] + ['mean']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join('---' for _ in head) + '|']
    cell = lambda m: f'{_fmt(m.get("auc"))} / {_fmt(m.get("video_auc"))}' if m else '-'  # noqa: E731
    clean = entry.get('clean') or {}
    lines.append('| clean | ' + ' | '.join(cell(clean) for _ in levels) + f' | {cell(clean)} |')
    for kind, per in entry.get('perturbations', {}).items():
        ms = [per.get(str(lv)) for lv in levels]
        done = [m for m in ms if m]
        mean = dict(auc=_mean([m.get('auc') for m in done]), video_auc=_mean([m.get('video_auc') for m in done]))
        lines.append(f'| {kind} | ' + ' | '.join(cell(m) for m in ms) + f' | {cell(mean) if done else "-"} |')
    return '\n'.join(lines)


def write_robustness_json(output_dir, doc):
    """robustness.json alone (after each evaluation: what a resumed run reads)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / '.robustness.json.tmp'
    tmp.write_text(json.dumps(doc, indent=2, default=lambda o: o.item() if hasattr(o, 'item') else str(o)))
    tmp.replace(out / 'robustness.json')


def write_robustness(output_dir, doc, levels=LEVELS):
    """robustness.json, robustness.md (frame AUC / video AUC per type and level) and robustness.png (frame
    AUC vs level, a line per type, the clean AUC dashed) in output_dir. -> the Markdown text."""
    out = Path(output_dir)
    write_robustness_json(out, doc)
    md = [f'# Robustness of `{doc.get("checkpoint")}`', '',
          f'Crop protocol: each perturbation applied to the evaluation crops (seed {doc.get("seed")}); '
          'cells are frame AUC / video AUC.', '']
    for name, entry in doc['sets'].items():
        md += [f'## {name}', '', robustness_table(entry, levels), '']
    md += ['![robustness](robustness.png)', '']
    text = '\n'.join(md)
    tmp = out / '.robustness.md.tmp'
    tmp.write_text(text)
    tmp.replace(out / 'robustness.md')
    _robustness_png(out / 'robustness.png', doc, levels)
    return text


def _robustness_png(path, doc, levels):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sets = list(doc['sets'].items())
    fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets), 3.8), dpi=110, squeeze=False)
    for ax, (name, entry) in zip(axes[0], sets):
        for j, (kind, per) in enumerate(entry.get('perturbations', {}).items()):
            pts = [(lv, per[str(lv)]['auc']) for lv in levels
                   if per.get(str(lv)) and per[str(lv)].get('auc') is not None]
            if pts:
                ax.plot(*zip(*pts), marker='o', ms=3, lw=1.4, color=f'C{j % 10}', label=kind)
        clean = (entry.get('clean') or {}).get('auc')
        if clean is not None and not math.isnan(clean):
            ax.axhline(clean, ls='--', lw=1.0, color='black', label='clean')
        ax.set(xticks=list(levels), xlabel='level', ylabel='frame AUC', title=name)
        ax.legend(fontsize=7, loc='best')
    fig.tight_layout()
    tmp = Path(path).with_name(f'.{Path(path).name}.tmp.png')
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
