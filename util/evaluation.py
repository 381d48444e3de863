"""Stage 2's evaluation: labelled test sets, their loaders and metrics, the protocols of EVALUATION.md
(grouping by manipulation or data set, cross-manipulation training, frame sampling, robustness under
degradations), the score files and reports, and the whole `main_finetune.py --eval` path.

A test set is scored once per image: repeated rows and missing files are left out and counted, unreadable
images are left out and counted, never replaced by others. Groups of fakes are scored against all the reals of
their set. Errors are one line through main_finetune.py's prefix.
"""
import hashlib
import json
import os
import sys
from functools import partial
from pathlib import Path

import torch

import models_vit
import util.checkpoint as checkpoint
import util.misc as misc
from engine_finetune import evaluate_frames
from util import loaders, protocols
from util.fileio import WriteError
from util.metrics import compute_metrics
from util.perturb import LEVELS, VIDEO_KINDS, parse_spec
from util.reports import format_table, write_eval_report

error = partial(misc.usage_error, 'main_finetune.py')


UNTRAINED_MARGIN = 0.05        # a best validation AUC this close to 0.5 means the detector learnt nothing


# ---------------------------------------------------------------------- flags
def earlier_report_problem(args):
    """--eval into a folder whose eval.json reports another checkpoint or other test sets (a training run's test
    report, an earlier evaluation) would replace it and leave its score files and ROC curves unlisted: one line,
    or None. The same command again (same checkpoint and sets) rewrites its own report."""
    path = Path(args.output_dir) / 'eval.json'
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        doc = None
    doc = doc if isinstance(doc, dict) else {}
    manifests = sorted(s['manifest'] for s in (doc.get('sets') or {}).values() if 'manifest' in s)
    if doc.get('checkpoint') == str(args.resume) and manifests == sorted(map(str, args.test_manifests)):
        return None
    of = doc.get('checkpoint') or 'another evaluation'
    return (f'--output_dir {args.output_dir} holds the evaluation report of {of} (eval.json, eval.md, score files): '
            f'choose another --output_dir, or --overwrite to move it into {args.output_dir}/replaced-<date-time>/')


def untrained_note(best_auc, epoch=None):
    """The closing line when the best validation AUC is within UNTRAINED_MARGIN of chance, else None."""
    if best_auc is None or abs(best_auc - 0.5) > UNTRAINED_MARGIN:
        return None
    return (f'main_finetune.py: note: the best validation AUC is {best_auc:.3f}'
            + (f' (epoch {epoch})' if epoch is not None else '')
            + f', within {UNTRAINED_MARGIN} of chance: the detector has not learned to separate real from fake '
              f'faces; more epochs, --recipe light, or a checkpoint from a longer pre-training usually help')


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
        samples, missing = loaders.load_labelled(m, args.strict_data)
        samples = protocols.even_frames(samples, args.eval_frames)
        loader = loaders.eval_loader(samples, input_size, mean, std, args, crop_pct)
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


def weights_fingerprint(model):
    """sha256 of a model's tensors (names and bytes): the same for the same weights, wherever they were read from."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def samples_fingerprint(samples):
    """sha256 of a test set's rows and of each file's size and modification time: a set rewritten in place
    (new faces under the same names) gets another."""
    h = hashlib.sha256()
    for s in samples:
        try:
            st = os.stat(s.path)
            stamp = f'{st.st_size}:{st.st_mtime_ns}'
        except OSError:
            stamp = 'missing'
        h.update(f'{s.path}\t{s.label}\t{s.video}\t{stamp}\n'.encode())
    return h.hexdigest()


def run_robustness(model, results, input_size, mean, std, device, amp_dtype, args, ckpt_path, crop_pct=None):
    """Crop protocol: every --perturb (type, level) on every test set; robustness.json / .md / .png written
    after each evaluation, and evaluations already in robustness.json skipped, so an interrupted run resumes
    where it stopped. Reused only for the same weights (weights_fingerprint, not the checkpoint's path), seed and
    frames, and per set for the same faces (samples_fingerprint): anything else is evaluated afresh."""
    from tqdm import tqdm
    todo = list(dict.fromkeys(p for spec in args.perturb for p in parse_spec(spec)))
    out = Path(args.output_dir)
    setting = dict(checkpoint=str(ckpt_path), weights=weights_fingerprint(model), seed=args.seed,
                   eval_frames=args.eval_frames)
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
        samples, _ = loaders.load_labelled(m['manifest'], args.strict_data)
        sets[name] = protocols.even_frames(samples, args.eval_frames)
        faces = samples_fingerprint(sets[name])
        entry = doc['sets'].get(name, {})
        if entry.get('faces') != faces:
            entry = doc['sets'][name] = dict(faces=faces)
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
        loader = _CountingLoader(loaders.eval_loader(samples, input_size, mean, std, args, crop_pct, (kind, level)),
                                 bar)
        metrics, _, _, _ = evaluate_frames(model, samples, loader, device, amp_dtype, name=f'{name} {kind}:{level}',
                                           quiet=True, threshold=args.threshold)
        per = doc['sets'][name]['perturbations'].setdefault(kind, {})
        per[str(level)] = {k: metrics.get(k) for k in ('auc', 'video_auc', 'eer', 'n', 'unreadable')}
        if misc.is_main_process():
            protocols.write_robustness_json(out, doc)
    bar.close()
    if misc.is_main_process():
        levels = sorted({int(lv) for e in doc['sets'].values() for per in e['perturbations'].values() for lv in per})
        text = protocols.write_robustness(out, doc, tuple(levels) or LEVELS)
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
    saved = checkpoint.load(args.resume, mmap=True)             # what its training recorded of validation
    if (note := untrained_note(saved.get('best_val_auc'), saved.get('best_epoch'))) and misc.is_main_process():
        print(note, flush=True)
    return results
