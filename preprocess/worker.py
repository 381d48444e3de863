"""Work on one item of prepare_faces.py (decode, detect, landmark, crop, write), in the worker processes.

process_item(item) -> {'key', 'rows', 'failures', 'stats', 'retry'} never raises; init_worker /
init_pool_worker build the process's landmarker into _STATE first. Functions are looked up here at call
time (a pool pickles them by name), so a replacement set on this module reaches the workers.
"""
import itertools
import os
import shutil
from collections import Counter

import numpy as np

from preprocess import faces as F
from preprocess.journal import JOURNAL_DIR, journal_rows
from preprocess.layouts import dfb_landmark_path, join_rel, out_stems, rel_path, safe_name, strip_ext

# ---------------------------------------------------------------------------------
# 2. Work on one item (runs in the worker processes)
# ---------------------------------------------------------------------------------

_STATE = {}   # per process: landmarker and options


def init_worker(opts):
    """Build this process's landmarker: for an in-process run, and in the main process
    before a pool starts (a landmarker that cannot be built is then one error line)."""
    landmarker = None
    if opts['needs_landmarker']:
        landmarker = F.build_landmarker(opts['landmarker'], device=opts['device'],
                                        weights_dir=opts['weights_dir'], batch_size=opts['batch_size'],
                                        allow_download=opts['allow_download'],
                                        **({'detector': opts['detector']} if opts['landmarker'] == 'dlib' else {}))
    _STATE.update(opts=opts, landmarker=landmarker)


def release_worker():
    """Drop this process's landmarker (and with it any GPU memory it holds)."""
    _STATE.clear()


def init_pool_worker(opts):
    """Pool initializer. A failure is kept and reported by process_item: raised here,
    it would print a traceback in every worker and leave the pool without a reason."""
    import signal

    import cv2
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is handled by the main process
    cv2.setNumThreads(1)
    if opts['landmarker'] == 'face_alignment' and opts['needs_landmarker']:
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // opts['workers']))
    try:
        init_worker(opts)
    except Exception as e:
        _STATE['error'] = f'a worker process could not build its landmarker: {e}'


def _write_face(out_stem, face, opts):
    """Write the crop and its landmarks; return (image path, npy path) as given."""
    import cv2
    os.makedirs(os.path.dirname(os.path.join(opts['output'], out_stem)), exist_ok=True)
    if opts['jpeg_quality'] > 0:
        img_rel = out_stem + '.jpg'
        params = [cv2.IMWRITE_JPEG_QUALITY, opts['jpeg_quality']]
    else:
        img_rel, params = out_stem + '.png', []
    if not cv2.imwrite(os.path.join(opts['output'], img_rel), face['crop'][:, :, ::-1], params):
        raise OSError(f'cannot write {img_rel}')
    np.save(os.path.join(opts['output'], out_stem + '.npy'), face['landmarks'].astype(np.float32))
    return img_rel, out_stem + '.npy'


def _pad(img, fraction):
    import cv2
    if not fraction:
        return img
    p = int(round(fraction * max(img.shape[:2])))
    return cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_CONSTANT, value=0)


def _faces_for(pairs, opts, landmarker):
    """(key, image) pairs -> (key, faces, reason), extract_faces_batch on one batch at a
    time: the pairs are consumed as they go (a video's frames are never all in memory)."""
    step = opts['batch_size'] if opts['landmarker'] == 'face_alignment' else 8
    pairs = iter(pairs)
    while True:
        chunk = list(itertools.islice(pairs, step))
        if not chunk:
            return
        found = F.extract_faces_batch([img for _, img in chunk], landmarker, margin=opts['margin'],
                                      size=opts['size'], largest_only=True, min_face=opts['min_face'])
        for (key, _), (faces, reason) in zip(chunk, found):
            yield key, faces, reason


def process_item(item):
    """Decode, detect, landmark, crop and write one item. Never raises: problems
    become failures; unexpected errors mark the item for retry on the next run; a
    worker without a landmarker returns {'key', 'fatal': reason} (the run stops)."""
    if 'error' in _STATE:
        return dict(key=item['key'], fatal=_STATE['error'])
    opts, landmarker = _STATE['opts'], _STATE['landmarker']
    result = dict(key=item['key'], rows=[], failures=[], retry=False,
                  stats=Counter(videos=0, images=0, frames=0, frames_unreadable=0, faces=0))
    try:
        handler = dict(video=_process_video, frames=_process_images, images=_process_images,
                       dfb=_process_dfb)[item['kind']]
        handler(item, opts, landmarker, result)
    except Exception as e:   # a bug or a transient error (disk full, CUDA OOM): retry next time
        result['failures'].append((item.get('path') or item['source'], f'error: {type(e).__name__}: {e}'))
        result['retry'] = True
    result['stats'] = dict(result['stats'])
    return result


def _process_video(item, opts, landmarker, result):
    stats = result['stats']
    stats['videos'] += 1
    path = item['path']
    if (opts.get('perturb') or ('',))[0] == 'h264':                    # frame protocol: re-encode first
        from util.perturb import compress_video, parameter
        path = os.path.join(opts['output'], JOURNAL_DIR, 'h264', f'{safe_name(item["key"])}.mp4')
        try:
            compress_video(item['path'], path, parameter(*opts['perturb']))
        except RuntimeError as e:
            result['failures'].append((item['path'], f'unreadable video ({e})'))
            return
    try:
        try:
            reader = F.read_video_frames(path, opts['frames_per_video'])
        except ValueError as e:
            result['failures'].append((item['path'], f'unreadable video ({e})'))
            return
        _faces_of_video(item, reader, opts, landmarker, result)
    finally:
        if path != item['path'] and os.path.exists(path):
            os.remove(path)


def _faces_of_video(item, reader, opts, landmarker, result):
    stats = result['stats']
    for index, faces, reason in _faces_for(_perturbed(reader, item, opts), opts, landmarker):
        if not faces:
            result['failures'].append((f'{item["path"]}#frame={index}', reason))
            continue
        img_rel, npy_rel = _write_face(f'{item["out"]}/{index:06d}', faces[0], opts)
        stats['faces'] += 1
        result['rows'] += journal_rows(item, img_rel, npy_rel, index, item['source'])
    stats['frames'] += reader.read
    stats['frames_unreadable'] += reader.skipped
    if reader.skipped:
        result['failures'].append((item['path'], f'unreadable frames: {reader.skipped} of {len(reader)}'))
    if not reader.read:
        result['failures'].append((item['path'], 'unreadable video (no frame decoded)'))


def _process_images(item, opts, landmarker, result):
    """Photos (each its own output) or a folder of frames (sampled evenly), read as
    they are needed."""
    stats = result['stats']
    if item['kind'] == 'frames':
        stats['videos'] += 1
        paths = item['frames']
        keep = F.evenly_spaced_indices(len(paths), opts['frames_per_video'])
        stems = out_stems([os.path.basename(p) for p in paths])
        entries = [dict(path=paths[i], source=_rel_to(paths[i], item), frame=i,
                        out=f'{item["out"]}/{stems[os.path.basename(paths[i])]}', video=None)
                   for i in keep]
    else:
        entries = [dict(e, frame=None) for e in item['images']]

    def load():
        for e in entries:
            try:
                img = _pad(F.load_image_rgb(e['path']), item.get('pad', 0.0))
            except ValueError as err:
                why = str(err).removeprefix(f'{e["path"]}: ')                # the row names the file already
                result['failures'].append((e['path'], f'unreadable image ({why})'))
                stats['frames_unreadable'] += 1
                continue
            stats['images' if item['kind'] == 'images' else 'frames'] += 1
            yield e, img

    for e, faces, reason in _faces_for(_perturbed(load(), item, opts), opts, landmarker):
        if not faces:
            result['failures'].append((e['path'], reason))
            continue
        img_rel, npy_rel = _write_face(e['out'], faces[0], opts)
        stats['faces'] += 1
        result['rows'] += journal_rows(item, img_rel, npy_rel, e['frame'], e['source'], e['video'])


def _rel_to(path, item):
    return join_rel(item['source'], os.path.basename(path))


def _process_dfb(item, opts, landmarker, result):
    """DeepfakeBench: keep its frames as they are, write the first 68 of its 81 points."""
    stats = result['stats']
    stats['videos'] += 1
    root, paths = item['root'], item['frames']
    keep = F.evenly_spaced_indices(len(paths), opts['frames_per_video'])
    for i in keep:
        img_path = paths[i]
        lmk_path = dfb_landmark_path(img_path)
        try:
            F.load_image_rgb(img_path)      # unreadable frames are failures, as elsewhere
        except ValueError as err:
            why = str(err).removeprefix(f'{img_path}: ')                 # the row names the file already
            result['failures'].append((img_path, f'unreadable image ({why})'))
            stats['frames_unreadable'] += 1
            continue
        stats['frames'] += 1
        if not os.path.isfile(lmk_path):
            result['failures'].append((img_path, 'no landmarks file'))
            continue
        try:
            lm = np.load(lmk_path).astype(np.float32).reshape(-1, 2)
        except (ValueError, OSError) as err:
            result['failures'].append((lmk_path, f'unreadable landmarks ({err})'))
            continue
        if lm.shape[0] < F.NUM_LANDMARKS or not np.isfinite(lm[:F.NUM_LANDMARKS]).all():
            result['failures'].append((lmk_path, f'bad landmarks shape {lm.shape}'))
            continue
        rel = rel_path(img_path, root)
        img_rel = f'{item["out"]}/{rel}'
        npy_rel = f'{item["out"]}/{strip_ext(rel)}.npy'
        dst = os.path.join(opts['output'], img_rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if opts.get('perturb'):                        # frame protocol: the degraded frame, not a link
            import cv2
            (_, img), = _perturbed([(i, F.load_image_rgb(img_path))], item, opts)
            if not cv2.imwrite(dst, np.ascontiguousarray(img[:, :, ::-1])):
                raise OSError(f'cannot write {dst}')
        else:
            _link_or_copy(img_path, dst)
        np.save(os.path.join(opts['output'], npy_rel), lm[:F.NUM_LANDMARKS])   # iBUG-68 = first 68 of 81
        stats['faces'] += 1
        frame = int(strip_ext(os.path.basename(rel))) if strip_ext(os.path.basename(rel)).isdigit() else i
        result['rows'] += journal_rows(item, img_rel, npy_rel, frame, rel)


def _link_or_copy(src, dst):
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _perturbed(pairs, item, opts):
    """(key, RGB frame) pairs degraded by --perturb: each frame's generator seeded by the item and the
    frame, so a re-run degrades every frame the same way."""
    import zlib

    from util.perturb import VIDEO_KINDS, perturb, stream_key
    kind, level = opts.get('perturb') or (None, None)
    if kind is None or kind in VIDEO_KINDS:
        yield from pairs
        return
    seed = [stream_key(kind), level, zlib.crc32(item['key'].encode())]
    for n, (key, img) in enumerate(pairs):
        frame = key if isinstance(key, int) else key.get('frame') if isinstance(key, dict) else None
        yield key, perturb(img, kind, level, np.random.default_rng(seed + [n if frame is None else frame]))
