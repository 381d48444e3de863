"""Stage 2's evaluation: labelled test sets, their loaders and metrics, the protocols of EVALUATION.md
(grouping by manipulation or data set, cross-manipulation training, frame sampling, robustness under
degradations), the score files and reports, and the whole `main_finetune.py --eval` path.

A test set is scored once per image: repeated rows and missing files are left out and counted, unreadable
images are left out and counted, never replaced by others. Groups of fakes are scored against all the reals of
their set. Errors are one line through main_finetune.py's prefix.
"""
import json
import sys
from functools import partial
from pathlib import Path

from torch.utils.data import DataLoader

import models_vit
import util.misc as misc
from engine_finetune import ShardSampler, evaluate_frames
from util import protocols
from util.datasets import NO_LABEL, ExitOnDataError, FaceDataset, FaceTransform, Sample, drop_duplicates, read_manifest
from util.fileio import WriteError
from util.metrics import compute_metrics
from util.perturb import VIDEO_KINDS, parse_spec
from util.reports import format_table, write_eval_report

error = partial(misc.usage_error, 'main_finetune.py')


# ---------------------------------------------------------------------- flags
def check_protocol_args(args, fail):
    if args.eval_frames < 0:
        fail('--eval_frames must be >= 0 (0 = every frame)')
    if args.perturb:
        try:
            specs = [p for spec in args.perturb for p in parse_spec(spec)]
        except ValueError as e:
            fail(f'--perturb: {e}')
        if not args.eval:
            fail('--perturb evaluates a trained detector: use it with --eval --resume <checkpoint>')
        video = sorted({k for k, _ in specs if k in VIDEO_KINDS})
        if video:
            fail(f'--perturb {video[0]} re-encodes whole videos: degrade them before cropping with '
                 f'prepare_faces.py --perturb {video[0]}:LEVEL (frame protocol, EVALUATION.md)')
    if args.train_methods and args.eval:
        fail('--train_methods selects training data; --eval trains nothing (use --group_by method to score '
             'each manipulation)')
    if args.train_methods and not protocols.resolve_methods(args.train_methods):
        fail('--train_methods names no manipulation (e.g. DF,F2F,FS)')



# ---------------------------------------------------------------------- labelled sets
def read_labelled(manifest, videos=False):
    """Samples of a labelled manifest; one-line errors for a malformed file, rows without a label and, with
    `videos` (sets that get video metrics), a video id holding both real and fake frames."""
    try:
        samples = read_manifest(manifest)
    except (ValueError, FileNotFoundError) as e:
        raise error(str(e)) from None
    unlabelled = [s.path for s in samples if s.label == NO_LABEL]
    if unlabelled:
        raise error(f'{manifest}: {len(unlabelled)} row(s) have no label, '
                    f'e.g. {unlabelled[0]} (stage 2 needs 0 = real / 1 = fake)')
    samples, _ = protocols.qualify_videos(samples)     # one video = one (dataset, method, video id)
    if videos:
        label_of = {}
        for s in samples:
            if label_of.setdefault(s.video, s.label) != s.label:
                raise error(f'{manifest}: video {s.video!r} has both real and fake '
                            f'frames: the video column must be unique per video')
    return samples


def load_labelled(manifest, strict=False, videos=False, keep_repeats=False):
    """read_labelled's samples with image files that exist; landmarks are not needed in stage 2.

    Rows that repeat an earlier row exactly are left out and counted (each image is scored once), or with
    `keep_repeats` (training) kept and counted.
    Missing files: counted and listed (first few) and skipped, or an error with `strict`. -> (samples, missing)"""
    samples = read_labelled(manifest, videos)
    unique, repeats = drop_duplicates(samples)
    if repeats:
        if misc.is_main_process():
            print(f'[data] {manifest}: {repeats} rows repeat an earlier row exactly; '
                  f'{"kept" if keep_repeats else "left out: each image is scored once"}', flush=True)
        samples = samples if keep_repeats else unique
    missing = [s.path for s in samples if not Path(s.path).is_file()]
    if missing:
        msg = (f'{manifest}: {len(missing)} of {len(samples)} image file(s) missing, e.g. '
               f'{", ".join(missing[:3])}')
        if strict:
            raise error(f'{msg} (--strict_data)')
        if misc.is_main_process():
            print(f'[data] {msg}; continuing without them (--strict_data makes this an error)', flush=True)
        gone = set(missing)
        samples = [s for s in samples if s.path not in gone]
        if not samples:
            raise error(f'{manifest}: none of its {len(missing)} image files exist')
    samples = [Sample(s.path, None, s.label, s.video, s.dataset, s.method) for s in samples]
    return samples, len(missing)


def eval_loader(samples, input_size, mean, std, args, crop_pct=None, perturbation=None):
    """Every sample once, in order; an unreadable image is left out and counted, never replaced.
    `perturbation` (type, level): the crops degraded as read (crop protocol)."""
    transform = FaceTransform(input_size, train=False, mean=mean, std=std, normalize=False, crop_pct=crop_pct)
    kw = dict(strict=args.strict_data, require_label=True, drop_unusable=True)       # uint8; normalised on the device
    ds = (FaceDataset(samples, transform, **kw) if perturbation is None else
          protocols.PerturbedFaces(samples, transform, *perturbation, seed=args.seed, **kw))
    sampler = ShardSampler(len(ds), misc.get_rank(), misc.get_world_size())
    return ExitOnDataError(DataLoader(ds, sampler=sampler, batch_size=args.eval_batch_size or 2 * args.batch_size,
                                      num_workers=args.num_workers, drop_last=False,
                                      pin_memory=args.pin_mem and str(args.device).startswith('cuda')),
                           'main_finetune.py')


# ---------------------------------------------------------------------- evaluation on test sets
def evaluate_sets(model, manifests, input_size, mean, std, device, amp_dtype, args, ckpt_path=None, crop_pct=None):
    """Frame/video metrics per test manifest; table printed, eval.json / eval.md / ROC PNGs written (rank 0)."""
    results, curves, names = {}, {}, set()
    for m in manifests:
        name = Path(m).stem
        if name in names:
            name = f'{Path(m).parent.name}_{name}'
        while name in names:
            name += '_'
        names.add(name)
        samples, missing = load_labelled(m, args.strict_data)
        samples = protocols.even_frames(samples, args.eval_frames)
        loader = eval_loader(samples, input_size, mean, std, args, crop_pct)
        try:
            metrics, idx, labels, scores = evaluate_frames(model, samples, loader, device, amp_dtype, name=name,
                                                           quiet=args.quiet, threshold=args.threshold)
        except ValueError as e:                                # the metrics' own checks (video ids: checked up front)
            raise error(f'{m}: {e}') from None
        metrics.update(manifest=str(m), missing=missing)
        results[name], curves[name] = metrics, (labels, scores)
        evaluated = [samples[j] for j in idx]
        if args.group_by:
            for key, (metrics_g, curve) in group_results(name, evaluated, labels, scores, args).items():
                results[key], curves[key] = metrics_g, curve
        if misc.is_main_process() and args.output_dir:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            protocols.write_scores(args.output_dir, name, evaluated, scores)
    if misc.is_main_process():
        print(format_table(results), flush=True)              # first: a failing write loses no result
        try:
            write_eval_report(results, args.output_dir, ckpt_path, curves)
        except WriteError as e:
            raise error(str(e)) from None
        print(f'Wrote {Path(args.output_dir) / "eval.json"}, eval.md, ROC curves and per-frame / per-video score '
              f'files (scores_<set>.csv, videos_<set>.csv)', flush=True)
    return results


# ---------------------------------------------------------------------- evaluation protocols (EVALUATION.md)
def select_train_methods(samples, manifest, args):
    """The reals and the --train_methods fakes of a training / validation manifest."""
    kept = protocols.select_methods(samples, args.train_methods)
    if not any(s.label == 1 for s in kept):
        found = sorted({s.method for s in samples if s.label == 1})
        raise error(f'--train_methods {args.train_methods}: no such fake in {manifest} '
                         f'(its methods: {", ".join(found) or "none: no method column"})')
    if misc.is_main_process():
        print(f'[data] {manifest}: {sum(s.label == 1 for s in kept)} of {sum(s.label == 1 for s in samples)} fakes '
              f'from --train_methods {args.train_methods}; all {sum(s.label == 0 for s in kept)} reals', flush=True)
    return kept


def group_results(name, samples, labels, scores, args):
    """{'set/group': (metrics, (labels, scores))}: each --group_by group of fakes against all the set's reals."""
    out = {}
    for g, rows in protocols.groups(samples, args.group_by).items():
        metrics = compute_metrics(labels[rows], scores[rows], [samples[r].video for r in rows],
                                  threshold=args.threshold)
        metrics.update(group=g, group_by=args.group_by)
        out[f'{name}/{g}'] = (metrics, (labels[rows], scores[rows]))
    return out


class _CountingLoader:
    """A loader that advances one shared progress bar by the frames of each batch."""

    def __init__(self, loader, bar):
        self.loader, self.bar = loader, bar

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            self.bar.update(len(batch['index']))


def run_robustness(model, results, input_size, mean, std, device, amp_dtype, args, ckpt_path, crop_pct=None):
    """Crop protocol: every --perturb (type, level) on every test set; robustness.json / .md / .png written
    after each evaluation, and evaluations already in robustness.json (same checkpoint, seed and frames)
    skipped, so an interrupted run resumes where it stopped."""
    from tqdm import tqdm
    todo = list(dict.fromkeys(p for spec in args.perturb for p in parse_spec(spec)))
    out = Path(args.output_dir)
    setting = dict(checkpoint=str(ckpt_path), seed=args.seed, eval_frames=args.eval_frames)
    doc = dict(setting, protocol='crop', sets={})
    old = out / 'robustness.json'
    if old.is_file():
        prev = json.loads(old.read_text())
        if all(prev.get(k) == v for k, v in setting.items()):
            doc['sets'] = prev.get('sets', {})
    sets = {}
    for name, m in results.items():
        if 'group' in m:
            continue
        samples, _ = load_labelled(m['manifest'], args.strict_data)
        sets[name] = protocols.even_frames(samples, args.eval_frames)
        entry = doc['sets'].setdefault(name, {})
        entry['clean'] = {k: m.get(k) for k in ('auc', 'video_auc', 'eer', 'n', 'n_videos')}
        entry.setdefault('perturbations', {})
    pending = [(name, k, lv) for name in sets for k, lv in todo
               if str(lv) not in doc['sets'][name]['perturbations'].get(k, {})]
    if misc.is_main_process() and len(pending) < len(todo) * len(sets):
        print(f'robustness: {len(todo) * len(sets) - len(pending)} evaluation(s) already in {old}; '
              f'{len(pending)} to go', flush=True)
    bar = tqdm(total=sum(len(sets[n]) for n, _, _ in pending), desc='robustness', unit='frame',
               disable=not misc.is_main_process() or args.quiet, dynamic_ncols=True, mininterval=2.0,
               file=sys.stdout)
    for name, kind, level in pending:
        samples = sets[name]
        bar.set_postfix_str(f'{name} {kind}:{level}')
        loader = _CountingLoader(eval_loader(samples, input_size, mean, std, args, crop_pct, (kind, level)), bar)
        metrics, _, _, _ = evaluate_frames(model, samples, loader, device, amp_dtype, name=f'{name} {kind}:{level}',
                                           quiet=True, threshold=args.threshold)
        per = doc['sets'][name]['perturbations'].setdefault(kind, {})
        per[str(level)] = {k: metrics.get(k) for k in ('auc', 'video_auc', 'eer', 'n', 'unreadable')}
        if misc.is_main_process():
            protocols.write_robustness_json(out, doc)
    bar.close()
    if misc.is_main_process():
        text = protocols.write_robustness(out, doc)
        print(text.split('\n## ', 1)[-1].split('![')[0].rstrip(), flush=True)
        print(f'Wrote {out / "robustness.json"}, robustness.md and robustness.png', flush=True)
    return doc


def eval_ignored_flags(args, training_only):
    """The flags of the `training_only` parser (main_finetune.training_only_flags: the checkpoint decides the
    model, and nothing trains) given with a value other than their default, as they would be typed."""
    shown = []
    for k in vars(training_only.parse_args([])):               # --balance / --no_balance: one dest
        v = getattr(args, k)
        if v != training_only.get_default(k):
            shown.append((f'--{k}' if v else f'--no_{k}') if isinstance(v, bool) else
                         f'--{k} {" ".join(map(str, v)) if isinstance(v, (list, tuple)) else v}')
    return shown


def run_eval(args, device, amp_dtype, ignored=()):
    """main_finetune.py --eval: the detector of --resume on every test set, and the --perturb robustness; `ignored`:
    the training flags given (eval_ignored_flags), noted once."""
    try:
        model, meta = models_vit.load_detector(args.resume, device)
    except ValueError as e:
        raise error(str(e)) from None
    if misc.is_main_process():
        if ignored:
            print(f'main_finetune.py: note: --eval takes the model from {args.resume} and trains nothing: '
                  f'ignoring {", ".join(ignored)}', flush=True)
        print(f'Evaluating {args.resume}: {meta["model"]} at {meta["input_size"]} px'
              f'{" (global pool)" if meta.get("global_pool") else ""}')
    net = misc.maybe_compile(model, device, args.compile)
    results = evaluate_sets(net, args.test_manifests, meta['input_size'], meta['mean'], meta['std'], device,
                            amp_dtype, args, ckpt_path=args.resume, crop_pct=model.crop_pct)
    if args.perturb:
        run_robustness(net, results, meta['input_size'], meta['mean'], meta['std'], device, amp_dtype, args,
                       args.resume, model.crop_pct)
    return results
