"""Detection metrics from scikit-learn: frame and video AUC, EER, AP, accuracy at a threshold.

Conventions: label 1 = fake, 0 = real; a score is the fake probability. A metric that needs both
classes (AUC, EER) is None when the set holds one class only, and `note` says why; AP is None without
fakes. Video scores are the mean of their frames' scores, grouped by the `videos` ids.
"""
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def eer_from_roc(fpr, tpr):
    """Equal error rate: where FPR = FNR (= 1 - TPR) on the ROC, linearly interpolated between its points."""
    fpr, fnr = np.asarray(fpr, np.float64), 1.0 - np.asarray(tpr, np.float64)
    d = fnr - fpr                                   # non-increasing: +1 at (0, 0), -1 at (1, 1)
    i = int(np.argmax(d <= 0))                      # first ROC point at or past the crossing
    if d[i] == 0 or i == 0:
        return float(fpr[i])
    t = d[i - 1] / (d[i - 1] - d[i])                # fraction of the segment (i-1, i) before the crossing
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _binary_metrics(labels, scores, threshold):
    n_fake = int(labels.sum())
    n_real = int(len(labels) - n_fake)
    out = dict(n=int(len(labels)), n_real=n_real, n_fake=n_fake,
               acc=float(((scores > threshold).astype(np.int64) == labels).mean()) if len(labels) else None,
               auc=None, eer=None, ap=None)
    if n_fake:
        out['ap'] = float(average_precision_score(labels, scores))
    if n_fake and n_real:
        out['auc'] = float(roc_auc_score(labels, scores))
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        out['eer'] = eer_from_roc(fpr, tpr)
    return out


def video_scores(labels, scores, videos):
    """Group frames by video: (video ids, video labels, mean fake probability) in first-seen order.

    ValueError when one video has frames of both labels (video ids must be unique per video)."""
    videos = np.asarray([str(v) for v in videos])
    ids, first, inverse = np.unique(videos, return_index=True, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    mean = np.bincount(inverse, weights=scores, minlength=len(ids)) / counts
    lab_sum = np.bincount(inverse, weights=labels, minlength=len(ids))
    mixed = (lab_sum > 0) & (lab_sum < counts)
    if mixed.any():
        bad = str(ids[np.flatnonzero(mixed)[0]])
        raise ValueError(f'video {bad!r} has both real and fake frames: the video column must be unique per '
                         f'video ({int(mixed.sum())} such video(s))')
    order = np.argsort(first)
    return ids[order], (lab_sum[order] > 0).astype(np.int64), mean[order]


def compute_metrics(labels, scores, videos=None, threshold=0.5):
    """Frame metrics (auc, eer, ap, acc at `threshold`: fake when score > threshold, counts) and, with
    `videos`, the same over videos as video_auc, video_eer, video_ap, video_acc, n_videos."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f'{labels.shape[0]} labels but {scores.shape[0]} scores')
    if not np.isin(labels, (0, 1)).all():
        raise ValueError('labels must be 0 (real) or 1 (fake)')
    if not np.isfinite(scores).all():
        raise ValueError(f'{int((~np.isfinite(scores)).sum())} score(s) are not finite')
    out = _binary_metrics(labels, scores, threshold)
    if out['auc'] is None:
        only = 'real' if out['n_fake'] == 0 else 'fake'
        out['note'] = f'AUC and EER undefined: only {only} samples ({out["n"]})'
    if videos is not None:
        if len(videos) != len(labels):
            raise ValueError(f'{len(videos)} video ids for {len(labels)} frames')
        _, vlab, vscore = video_scores(labels, scores, videos)
        v = _binary_metrics(vlab, vscore, threshold)
        out.update(video_auc=v['auc'], video_eer=v['eer'], video_ap=v['ap'], video_acc=v['acc'],
                   n_videos=v['n'], n_real_videos=v['n_real'], n_fake_videos=v['n_fake'])
    return out


def score_file_results(path, group_by=None, threshold=0.5):
    """The evaluation table's rows recomputed from a scores_<set>.csv alone: {name: metrics} for the whole
    set and, with group_by='method', for each manipulation's fakes against all the reals."""
    from util.protocols import read_scores
    d = read_scores(path)
    name = str(path).rsplit('/', 1)[-1].removeprefix('scores_').removesuffix('.csv')
    out = {name: compute_metrics(d['label'], d['score'], d['video'], threshold=threshold)}
    if group_by == 'method':
        methods = sorted({m for m, lab in zip(d['method'], d['label']) if lab == 1 and m})
        for m in methods:
            keep = (d['label'] == 0) | np.array([x == m for x in d['method']])
            out[f'{name}/{m}'] = compute_metrics(d['label'][keep], d['score'][keep],
                                                 [v for v, k in zip(d['video'], keep) if k], threshold=threshold)
    return out


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser('python -m util.metrics', description='frame and video metrics recomputed from '
                                'score files (scores_<set>.csv written by main_finetune.py --eval)')
    p.add_argument('scores', nargs='+', help='scores_<set>.csv file(s)')
    p.add_argument('--group_by', default=None, choices=['method'], help='also a row per manipulation')
    p.add_argument('--threshold', default=0.5, type=float, help='fake probability above which a face is fake (ACC)')
    args = p.parse_args(argv)
    results = {}
    for path in args.scores:
        try:
            results.update(score_file_results(path, args.group_by, args.threshold))
        except FileNotFoundError:
            p.exit(2, f'python -m util.metrics: error: {path}: no such file\n')
        except (ValueError, KeyError) as e:           # read_scores names the file; compute_metrics does not
            msg = str(e) if str(e).startswith(f'{path}:') else f'{path}: {e}'
            p.exit(2, f'python -m util.metrics: error: {msg}\n')
    from util.reports import format_table
    print(format_table(results))
    return results


if __name__ == '__main__':
    main()
