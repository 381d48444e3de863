"""Speed of the face preparation: decode + detect + landmarks + crop + write.

Writes a short video of ``skimage.data.astronaut()`` moving across a frame
(``--height`` pixels high, 16:9), then times what ``prepare_faces.py`` does per
video with each landmarker and device, and prints one JSON line per config:
faces per second, wall-clock milliseconds per face and their split between
decoding, detection + landmarks, and crop + write, and the CPU time per face
(``cpu_ms_per_face``: all threads of this process; with ``--threads 1`` that is the
work of one core, a figure that holds on a busy machine too).

    python -m benchmarks.prepare --landmarker dlib --device cpu --threads 1
    python -m benchmarks.prepare --landmarker face_alignment --device cuda --random_weights

``--random_weights`` (face_alignment without its real weights, e.g. offline): FAN and
S3FD get random weights saved in a temporary TORCH_HOME; the detector is set to find
nothing and the face box is taken from where the astronaut was drawn. The network
work is the same as with the real weights, so the timing holds; only the few real
detections' post-processing is left out.
"""
import argparse
import json
import os
import platform
import tempfile
import time

import cv2
import numpy as np

from preprocess import faces as F
from util.misc import num_threads

ASTRONAUT_FACE = (179.0, 83.0, 266.0, 170.0)   # dlib's box on the 512 x 512 astronaut


def get_args_parser():
    p = argparse.ArgumentParser('Benchmark face preparation')
    p.add_argument('--landmarker', default='dlib', help='comma-separated: dlib,face_alignment')
    p.add_argument('--device', default='cpu', help='comma-separated: cpu,cuda (dlib always runs on the CPU)')
    p.add_argument('--frames', default=64, type=int, help='frames in the test video (all are used)')
    p.add_argument('--height', default=720, type=int, help='frame height (width = 16:9)')
    p.add_argument('--size', default=256, type=int)
    p.add_argument('--batch_size', default=32, type=int)
    p.add_argument('--threads', default=1, type=int, help='CPU threads for OpenCV and torch (0 = library default)')
    p.add_argument('--repeats', default=2, type=int, help='timed passes over the video (after one warm-up)')
    p.add_argument('--procs', default='1', help='comma-separated numbers of parallel processes to time')
    p.add_argument('--random_weights', action='store_true', help='face_alignment with random weights (offline)')
    p.add_argument('--weights_dir', default=None)
    p.add_argument('--jpeg_quality', default=0, type=int)
    p.add_argument('--workdir', default=None, help='where the video and crops go (default: a temp folder)')
    return p


def make_video(path, frames, height):
    """Astronaut (height x height) sliding across a 16:9 frame; returns per-frame face boxes."""
    width = int(round(height * 16 / 9)) // 2 * 2
    face = cv2.resize(__import__('skimage.data', fromlist=['astronaut']).astronaut()[:, :, ::-1],
                      (height, height), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 25, (width, height))
    s = height / 512.0
    boxes = []
    for i in range(frames):
        x = int((width - height) * i / max(1, frames - 1))
        frame = np.zeros((height, width, 3), np.uint8)
        frame[:, x:x + height] = face
        writer.write(frame)
        b = ASTRONAUT_FACE
        boxes.append((b[0] * s + x, b[1] * s, b[2] * s + x, b[3] * s))
    writer.release()
    return boxes


def random_face_alignment_weights(torch_home):
    """Random FAN and S3FD state dicts under the names face_alignment expects; the
    S3FD classifiers are set to 'background everywhere' so nothing is detected."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN
    folder = os.path.join(torch_home, 'hub', 'checkpoints')
    os.makedirs(folder, exist_ok=True)
    files = F.face_alignment_weight_files()
    torch.save(FAN(4).state_dict(), os.path.join(folder, files['fan'][0]))
    det = s3fd().state_dict()
    for k in det:
        if '_mbox_conf' in k:
            det[k].zero_()
            if k.endswith('bias'):
                det[k][0] = 10.0          # background logit
    torch.save(det, os.path.join(folder, files['s3fd'][0]))
    return folder


class KnownBoxes(F.Landmarker):
    """Wrap a landmarker: run (and time) its detector, but return known face boxes."""

    def __init__(self, inner, boxes):
        self.inner, self.boxes, self.next = inner, boxes, []
        self.name = inner.name

    def detect_batch(self, images):
        found = self.inner.detect_batch(images)
        return [(b or [self.boxes[i]], s or [1.0]) for (b, s), i in zip(found, self.next)]

    def landmarks_batch(self, images, boxes):
        return self.inner.landmarks_batch(images, boxes)


def _one_pass(landmarker, video, step, size, out_dir, ext, params, sync):
    """decode -> detect + landmarks -> crop + write for one video: (faces, seconds per stage)."""
    t0 = time.time()
    frames = list(F.read_video_frames(video, 0))
    t_dec, t_det, t_write, faces = time.time() - t0, 0.0, 0.0, 0
    for start in range(0, len(frames), step):
        chunk = frames[start:start + step]
        if isinstance(landmarker, KnownBoxes):
            landmarker.next = [i for i, _ in chunk]
        t0 = time.time()
        results = F.extract_faces_batch([f for _, f in chunk], landmarker, size=size)
        sync()
        t_det += time.time() - t0
        t0 = time.time()
        for (index, _), (found, _) in zip(chunk, results):
            for face in found[:1]:
                stem = os.path.join(out_dir, f'{index:06d}')
                cv2.imwrite(stem + ext, face['crop'][:, :, ::-1], params)
                np.save(stem + '.npy', face['landmarks'])
                faces += 1
        t_write += time.time() - t0
    return faces, t_dec, t_det, t_write, frames[0][1].shape


def run_config(name, device, args, video, boxes, workdir, rank=0, barrier=None):
    """Build the landmarker, one warm-up pass, then ``args.repeats`` timed passes."""
    kwargs = dict(allow_download=not args.random_weights) if name == 'face_alignment' else {}
    t = time.time()
    landmarker = F.build_landmarker(name, device=device, weights_dir=args.weights_dir,
                                    batch_size=args.batch_size, **kwargs)
    build_s = time.time() - t
    if args.random_weights and name == 'face_alignment':
        landmarker = KnownBoxes(landmarker, boxes)
    step = args.batch_size if name == 'face_alignment' else 8
    sync = (lambda: __import__('torch').cuda.synchronize()) if 'cuda' in device else (lambda: None)
    out_dir = os.path.join(workdir, f'{name}_{device}_{rank}')
    os.makedirs(out_dir, exist_ok=True)
    ext = '.jpg' if args.jpeg_quality else '.png'
    params = [cv2.IMWRITE_JPEG_QUALITY, args.jpeg_quality] if args.jpeg_quality else []
    one = lambda: _one_pass(landmarker, video, step, args.size, out_dir, ext, params, sync)
    one()                                              # warm-up (cudnn autotune, caches)
    if barrier is not None:
        barrier.wait()
    wall0, cpu0 = time.time(), time.process_time()
    passes = [one() for _ in range(args.repeats)]
    wall1, cpu = time.time(), time.process_time() - cpu0
    faces = sum(p[0] for p in passes)
    dec, det, wr = (sum(p[k] for p in passes) for k in (1, 2, 3))
    shape = passes[0][4]
    per = lambda x: round(1000 * x / max(faces, 1), 2)
    return dict(landmarker=name, device=device if name == 'face_alignment' else 'cpu',
                threads=args.threads or 'default', procs=1, frame=f'{shape[1]}x{shape[0]}', crop=args.size,
                batch_size=args.batch_size if name == 'face_alignment' else None,
                faces=faces, seconds=round(wall1 - wall0, 3),
                faces_per_s=round(faces / (wall1 - wall0), 1), ms_per_face=per(wall1 - wall0),
                cpu_ms_per_face=per(cpu), decode_ms=per(dec), detect_landmarks_ms=per(det),
                crop_write_ms=per(wr), build_s=round(build_s, 2),
                random_weights=bool(args.random_weights and name == 'face_alignment'),
                machine=_machine(device), wall=(wall0, wall1))


def _proc(queue, barrier, name, device, args, video, boxes, workdir, rank):
    with num_threads(args.threads):
        queue.put(run_config(name, device, args, video, boxes, workdir, rank, barrier))


def run_parallel(name, device, args, video, boxes, workdir):
    """``args.procs`` processes, each with its own landmarker (like prepare_faces.py
    --workers), timed together from a common start."""
    import multiprocessing as mp
    ctx = mp.get_context('spawn')
    queue, barrier = ctx.Queue(), ctx.Barrier(args.procs)
    procs = [ctx.Process(target=_proc, args=(queue, barrier, name, device, args, video, boxes, workdir, r))
             for r in range(args.procs)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    start, end = min(r['wall'][0] for r in results), max(r['wall'][1] for r in results)
    faces = sum(r['faces'] for r in results)
    res = dict(results[0], procs=args.procs, faces=faces, seconds=round(end - start, 3),
               faces_per_s=round(faces / (end - start), 1), ms_per_face=round(1000 * (end - start) / faces, 2),
               cpu_ms_per_face=round(sum(r['cpu_ms_per_face'] * r['faces'] for r in results) / faces, 2))
    for k in ('decode_ms', 'detect_landmarks_ms', 'crop_write_ms'):
        res[k] = round(sum(r[k] * r['faces'] for r in results) / faces, 2)
    return res


def _machine(device):
    desc = f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores'
    try:
        with open('/proc/cpuinfo') as f:
            model = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        if model:
            desc = f'{model[0]}, {os.cpu_count()} cores'
    except OSError:
        pass
    if 'cuda' in device:
        import torch
        desc += f', GPU {torch.cuda.get_device_name(0)}'
    return desc


def main(args):
    workdir = args.workdir or tempfile.mkdtemp(prefix='bench_prepare_')
    os.makedirs(workdir, exist_ok=True)
    video = os.path.join(workdir, 'astronaut.mp4')
    boxes = make_video(video, args.frames, args.height)
    if 'face_alignment' in args.landmarker:
        if args.random_weights:
            os.environ['TORCH_HOME'] = os.path.join(workdir, 'torch_home')
            random_face_alignment_weights(os.environ['TORCH_HOME'])
    results = []
    for name in args.landmarker.split(','):
        for device in (['cpu'] if name == 'dlib' else args.device.split(',')):
            for procs in [int(n) for n in str(args.procs).split(',')]:
                one = argparse.Namespace(**dict(vars(args), procs=procs))
                if procs == 1:
                    with num_threads(args.threads):
                        res = run_config(name, device, one, video, boxes, workdir)
                else:
                    res = run_parallel(name, device, one, video, boxes, workdir)
                res.pop('wall')
                print(json.dumps(res), flush=True)
                results.append(res)
    return results


if __name__ == '__main__':
    main(get_args_parser().parse_args())
