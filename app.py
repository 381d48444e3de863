"""A web page for a detector: drop a photo or a short video and see each face's verdict (Gradio).

    python app.py [--checkpoint CK | FOLDER | HUB_ID | detector.onnx] [--host 127.0.0.1] [--port 7860]

Without --checkpoint it serves the demo's detector (demo_output/finetune/checkpoint-best.pth, written by
`python demo.py`). Faces are found and scored exactly as predict.py does it (its Predictor): a photo shows
each face's box on the image with its probability of fake and verdict, and the heat maps (reconstruction
discrepancy and Grad-CAM); a video shows its per-track verdicts; both give the results as a CSV. The photo
analysis is also the API endpoint /predict (gradio_client): one image file in, a JSON object out,
{"faces": [{"box", "p_fake", "verdict"}], "message"}.

Safe by default: the page binds 127.0.0.1 unless --host says otherwise; uploads are limited in size
(--max_upload_mb), pixels (--max_megapixels) and video length (--max_video_s); a file that is not a usable
image or video gets a message on the page, never a stack trace, and the server keeps serving; no path of
the server's file system is shown (files are named by their upload name); requests wait in one queue and
are served one at a time (--queue_size waiting at most), so two users at once both get answers.
"""
import argparse
import csv
import math
import os
import shutil
import sys
import tempfile
import threading
from functools import partial
from pathlib import Path

import cv2
import numpy as np

import predict
import util.hub as hub
import util.misc as misc
from preprocess import faces as face_utils

ROOT = Path(__file__).resolve().parent
DEMO_DETECTOR = ROOT / 'demo_output' / 'finetune' / 'checkpoint-best.pth'      # where demo.py leaves its detector
error = partial(misc.usage_error, 'app.py')      # raise error('--flag ...: what to do')
MAX_SHOWN_SIDE = 1024                            # the annotated photo is scaled down to this side for the page


def get_args_parser():
    p = argparse.ArgumentParser('MIFAE web page: verdicts for photos and short videos', add_help=False)
    p.add_argument('--checkpoint', default='', help='fine-tuning checkpoint, Hub-format folder, Hub id or .onnx '
                                                    '(default: the demo\'s detector, after python demo.py)')
    p.add_argument('--host', default='127.0.0.1', help='address to bind (0.0.0.0 serves the whole network)')
    p.add_argument('--port', default=7860, type=int)
    p.add_argument('--max_upload_mb', default=50.0, type=float, help='largest upload accepted')
    p.add_argument('--max_megapixels', default=40.0, type=float, help='largest photo accepted (before decoding)')
    p.add_argument('--max_video_s', default=60.0, type=float, help='longest video accepted')
    p.add_argument('--frames', default=16, type=int, help='frames sampled evenly over a video')
    p.add_argument('--queue_size', default=16, type=int, help='requests waiting at most; more are turned away')
    p.add_argument('--threshold', default=None, type=float, help='fake probability above which the verdict is '
                                                                  'FAKE (default: the detector\'s, else 0.5)')
    p.add_argument('--device', default='cpu')
    return p


def check_args(args):
    def fail(msg):
        raise error(msg)
    if not args.checkpoint:
        if not DEMO_DETECTOR.is_file():
            fail('no detector: pass --checkpoint (a main_finetune.py checkpoint, a Hub-format folder or id, or an '
                 '.onnx file), or run `python demo.py` first, which trains one into demo_output/')
        args.checkpoint = str(DEMO_DETECTOR)
    if not predict.is_onnx(args.checkpoint) and (problem := hub.source_problem(args.checkpoint, 'checkpoint')):
        fail(problem)
    if predict.is_onnx(args.checkpoint) and not Path(args.checkpoint).is_file():
        fail(f'--checkpoint {args.checkpoint} does not exist')
    for flag in ('max_upload_mb', 'max_megapixels', 'max_video_s'):
        if not (math.isfinite(getattr(args, flag)) and getattr(args, flag) > 0):
            fail(f'--{flag} must be a number > 0')
    if args.frames < 1 or args.queue_size < 1 or not 0 < args.port < 65536:
        fail('--frames and --queue_size must be at least 1, --port in 1-65535')
    if problem := misc.device_problem(args.device) or misc.number_problem(args, unit_interval=('threshold',)):
        fail(problem)


# ---------------------------------------------------------------------- bundled examples
def write_examples(folder):
    """The page's examples, made here: skimage's astronaut (a real photo, one face) and a 2-s clip of her
    face drifting across the frame (H.264 by the FFmpeg util.perturb uses). -> [photo path, video path]"""
    from skimage import data as skdata

    from util.perturb import compress_video
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photo = skdata.astronaut()
    cv2.imwrite(str(folder / 'astronaut.png'), photo[:, :, ::-1])
    raw = folder / 'clip_raw.avi'
    vw = cv2.VideoWriter(str(raw), cv2.VideoWriter_fourcc(*'MJPG'), 10, (320, 320))
    face = cv2.resize(photo[0:320, 100:420], (240, 240))[:, :, ::-1]
    for i in range(20):
        frame = np.zeros((320, 320, 3), np.uint8)
        frame[40:280, 4 * i:4 * i + 240] = face
        vw.write(frame)
    vw.release()
    compress_video(raw, folder / 'astronaut_clip.mp4', crf=28)
    raw.unlink()
    return [str(folder / 'astronaut.png'), str(folder / 'astronaut_clip.mp4')]


# ---------------------------------------------------------------------- the analysis
class Analyser:
    """One Predictor for every request (the queue serves one at a time); results named by upload name only."""

    def __init__(self, predictor, threshold, args, workdir):
        self.predictor, self.threshold, self.args = predictor, threshold, args
        self.workdir = Path(workdir)
        self.lock = threading.Lock()           # one analysis at a time, whichever event (page, /predict) asks

    def verdict(self, p):
        return 'fake' if p > self.threshold else 'real'

    def problem(self, path, name):
        """Why an upload is refused before any decoding, or None."""
        mb = os.path.getsize(path) / 2 ** 20
        if mb > self.args.max_upload_mb:
            return f'{name}: {mb:.1f} MB; this page takes files up to {self.args.max_upload_mb:g} MB'
        if face_utils.is_image_file(name):
            from PIL import Image, UnidentifiedImageError
            try:
                with Image.open(path) as im:                           # reads the header only
                    w, h = im.size
            except (UnidentifiedImageError, OSError, ValueError):
                return None                                            # the decoder says what is wrong
            if w * h > self.args.max_megapixels * 1e6:
                return f'{name}: {w} x {h} pixels; this page takes photos up to {self.args.max_megapixels:g} ' \
                       f'megapixels'
        elif face_utils.is_video_file(name):
            cap = cv2.VideoCapture(path)
            frames, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
            cap.release()
            if frames > 0 and fps > 0 and frames / fps > self.args.max_video_s:
                return f'{name}: {frames / fps:.0f} s long; this page takes videos up to ' \
                       f'{self.args.max_video_s:g} s'
        else:
            return f'{name}: not a photo or a video (by its extension); drop an image ' \
                   f'({", ".join(face_utils.IMAGE_EXTENSIONS)}) or a video ({", ".join(face_utils.VIDEO_EXTENSIONS)})'
        return None

    def run(self, path, name, heatmaps=True):
        """predict.py's result for one upload, with every message naming the upload, not the server's path."""
        if (why := self.problem(path, name)) is not None:
            return dict(status='refused', message=why, type='image' if face_utils.is_image_file(name) else 'video')
        with self.lock:
            if face_utils.is_image_file(name):
                res = self.predictor.predict_image(path, all_faces=True, with_heatmaps=heatmaps and self.heat)
            else:
                res = self.predictor.predict_video(path, self.args.frames)
        res['path'] = name
        if res.get('message'):
            res['message'] = res['message'].replace(str(path), name)
        if res['status'] == 'ok':
            res['verdict'] = self.verdict(res['prob'])
        return res

    @property
    def heat(self):
        return bool(self.predictor.meta.get('decoder', True))

    # ------------------------------------------------------------------ the API endpoint
    def api(self, path):
        """/predict: one image file -> {"faces": [{"box", "p_fake", "verdict"}], "message"}."""
        if not path:
            return dict(faces=[], message='no file received')
        name = Path(path).name
        try:
            if not face_utils.is_image_file(name):
                return dict(faces=[], message=f'{name}: /predict takes one image file; use the page for videos')
            res = self.run(path, name, heatmaps=False)
        except Exception as e:  # noqa: BLE001 -- the server answers and keeps serving, whatever the file
            return dict(faces=[], message=f'{name}: could not be analysed ({type(e).__name__})')
        if res['status'] != 'ok':
            return dict(faces=[], message=res['message'])
        faces = [dict(box=f['box'], p_fake=f['prob'], verdict=self.verdict(f['prob'])) for f in res['faces']]
        return dict(faces=faces, message=f'{len(faces)} face(s); p(fake) of the most fake-looking: '
                                         f'{res["prob"]:.3f}, {res["verdict"].upper()}')

    # ------------------------------------------------------------------ the page
    def page(self, path):
        """The page's outputs for an upload: verdict, annotated photo, faces table, heat maps, tracks, CSV."""
        blank = ('', None, '', None, '', None)
        if not path:
            return blank
        name = Path(path).name
        try:
            res = self.run(path, name)
        except Exception as e:  # noqa: BLE001 -- the server answers and keeps serving, whatever the file
            return (f'### Could not analyse {name}\n{type(e).__name__}',) + blank[1:]
        if res['status'] != 'ok':
            return (f'### No verdict\n{res["message"]}',) + blank[1:]
        line = predict.verdict_line(res, self.threshold)
        head = f'### {res["verdict"].upper()}: p(fake) = {res["prob"]:.3f}\n{line}'
        csv_path = self.write_csv(res, name)
        if res['type'] == 'image':
            img = face_utils.load_image_rgb(path)
            panels = res.pop('_panels', None) or []
            rows = [f'| {f["face"]} | {", ".join(f"{v:.0f}" for v in f["box"])} | {f["prob"]:.3f} | '
                    f'{self.verdict(f["prob"]).upper()} |' for f in res['faces']]
            table = '| face | box (x0, y0, x1, y1) | p(fake) | verdict |\n|---|---|---|---|\n' + '\n'.join(rows)
            return head, self.annotate(img, res['faces']), table, stack_panels(panels), '', csv_path
        rows = [f'| {t["track"]} | {t["frames"]} | {t["prob"]:.3f} | {t["min"]:.3f} - {t["max"]:.3f} | '
                f'{self.verdict(t["prob"]).upper()} | {"yes" if t["decides"] else "no (too brief)"} |'
                for t in res['tracks']]
        tracks = '| track | frames | p(fake), mean | min - max | verdict | counts |\n|---|---|---|---|---|---|\n' \
            + '\n'.join(rows)
        return head, None, '', None, tracks, csv_path

    def annotate(self, img, faces):
        """The photo with each face's box, number, p(fake) and verdict drawn in (red fake, green real)."""
        scale = min(1.0, MAX_SHOWN_SIDE / max(img.shape[:2]))
        out = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img.copy()
        thick = max(2, round(max(out.shape[:2]) / 300))
        for f in faces:
            x0, y0, x1, y1 = (int(round(v * scale)) for v in f['box'])
            colour = (220, 40, 40) if f['prob'] > self.threshold else (40, 180, 60)
            cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick)
            label = f'{f["face"]}: {f["prob"]:.2f} {self.verdict(f["prob"]).upper()}'
            size = max(0.5, thick / 3)
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, size, thick)
            ty = y0 - 4 if y0 - th - 8 > 0 else y1 + th + 4
            cv2.rectangle(out, (x0, ty - th - 4), (x0 + tw + 4, ty + 4), colour, -1)
            cv2.putText(out, label, (x0 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), thick, cv2.LINE_AA)
        return out

    def write_csv(self, res, name):
        """The result as a CSV named after the upload, in a folder of its own. -> path"""
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        path = folder / f'{Path(name).stem}_verdicts.csv'
        with open(path, 'w', newline='') as f:
            w = csv.writer(f)
            if res['type'] == 'image':
                w.writerow(['file', 'face', 'x0', 'y0', 'x1', 'y1', 'p_fake', 'verdict'])
                w.writerows([name, x['face'], *x['box'], f'{x["prob"]:.6f}', self.verdict(x['prob'])]
                            for x in res['faces'])
            else:
                w.writerow(['file', 'frame', 'track', 'x0', 'y0', 'x1', 'y1', 'p_fake', 'track_p_fake',
                            'track_verdict'])
                per = {t['track']: t for t in res['tracks']}
                w.writerows([name, x['frame'], x['track'], *x['box'], f'{x["prob"]:.6f}',
                             f'{per[x["track"]]["prob"]:.6f}', self.verdict(per[x['track']]['prob'])]
                            for x in res['frames'])
        return str(path)


def stack_panels(panels, min_height=160):
    """predict.py's heat-map panels (one per face), one under the other, enlarged (nearest neighbour) to at least
    `min_height` pixels each so that a small model's patches stay visible. -> uint8 RGB, or None without panels"""
    if not panels:
        return None
    k = max(1, -(-min_height // panels[0].shape[0]))
    rows = [np.kron(p, np.ones((k, k, 1), np.uint8)) for p in panels]
    gap = np.full((6, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for r in rows for x in (r, gap)][:-1])


def build_page(analyser, examples, title):
    import gradio as gr
    with gr.Blocks(title='MIFAE-Forensics', analytics_enabled=False) as page:
        gr.Markdown(f'## MIFAE-Forensics: is this face real or fake?\n{title}. Drop a photo or a short video '
                    f'(up to {analyser.args.max_upload_mb:g} MB, {analyser.args.max_video_s:g} s), or pick an '
                    f'example. A face is FAKE when its probability of fake is above {analyser.threshold:g}. '
                    'The score is evidence for a person to weigh, not proof.')
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label='photo or video', file_types=['image', 'video'], elem_id='upload')
                gr.Examples(examples=[[e] for e in examples], inputs=[upload], label='examples')
                verdict = gr.Markdown(elem_id='verdict')
                table = gr.Markdown(elem_id='faces')
                tracks = gr.Markdown(elem_id='tracks')
                download = gr.File(label='results (CSV)', elem_id='csv', interactive=False)
            with gr.Column(scale=1):
                annotated = gr.Image(label='faces found', type='numpy', elem_id='annotated', interactive=False)
                heatmaps = gr.Image(label='heat maps, a row per face: input | reconstruction | |difference| | '
                                    'Grad-CAM of the fake logit', type='numpy', elem_id='heatmaps', interactive=False,
                                    visible=analyser.heat)             # an .onnx model has no decoder
        upload.change(analyser.page, [upload], [verdict, annotated, table, heatmaps, tracks, download],
                      api_visibility='undocumented', concurrency_id='detector')
        # the API endpoint: hidden on the page, documented for gradio_client
        api_in = gr.File(visible=False, file_types=['image'])
        api_out = gr.JSON(visible=False)
        api_in.upload(analyser.api, [api_in], [api_out], api_name='predict', concurrency_id='detector')
    return page


def main(argv=None):
    args = argparse.ArgumentParser('MIFAE web page', parents=[get_args_parser()]).parse_args(argv)
    check_args(args)
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    try:
        predictor = predict.Predictor(args.checkpoint, args.device)
    except (ValueError, FileNotFoundError) as e:
        raise error(f'--checkpoint {e}') from None
    recorded = predictor.meta.get('threshold')
    threshold = args.threshold if args.threshold is not None else \
        (hub.DEFAULT_THRESHOLD if recorded is None else recorded)
    workdir = Path(tempfile.mkdtemp(prefix='mifae_app_'))
    try:
        examples = write_examples(workdir / 'examples')
        analyser = Analyser(predictor, threshold, args, workdir)
        analyser.run(examples[0], 'astronaut.png', heatmaps=False)      # loads the face finder before serving
        m = predictor.meta
        shown = args.checkpoint if args.checkpoint != str(DEMO_DETECTOR) else "the demo's detector"
        title = f'Detector: {m["model"]} at {m["input_size"]} px ({Path(shown).name if os.sep in shown else shown})'
        page = build_page(analyser, examples, title)
        page.queue(default_concurrency_limit=1, max_size=args.queue_size)
        print(f'app.py: {m["model"]} from {args.checkpoint}; serving http://{args.host}:{args.port}', flush=True)
        page.launch(server_name=args.host, server_port=args.port, max_file_size=f'{args.max_upload_mb:g}mb',
                    show_error=False, allowed_paths=[str(workdir / 'examples')], ssr_mode=False, quiet=True,
                    footer_links=['api'])
    except OSError as e:
        raise error(f'--port {args.port}: {e.strerror or e}') from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
