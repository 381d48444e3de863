"""Face detection, 68-point landmarks and square face crops.

Shared by ``prepare_faces.py`` (data preparation) and ``predict.py`` (inference),
so that training and inference see faces cropped the same way.

Pipeline, in the order the functions appear below:

1. read pixels:      ``load_image_rgb(path)``, ``read_video_frames(path, num_frames)``
2. find faces:       ``build_landmarker(name, ...)`` -> ``.detect(img)`` -> boxes
3. 68 landmarks:     ``.landmarks(img, boxes)`` -> [68, 2] float32 arrays (iBUG-68 order)
4. crop:             ``crop_face(img, landmarks, margin, size)``
5. all of the above: ``extract_faces(img, landmarker, ...)`` (one image) and
                     ``extract_faces_batch(images, landmarker, ...)`` (many, batched on a GPU)

Two landmarkers:

* ``dlib``: a dlib face detector (``DETECTORS``: by default HOG proposals on the image and
  on rolled copies, each verified by dlib's CNN face detector on its own crop) + the 68-point
  shape predictor, both shipped in the ``face_recognition_models`` package. CPU only, fully
  offline. Note that the 68-point model's training data (iBUG 300-W) does not allow
  commercial use.
* ``face_alignment``: S3FD detector + FAN 2D 68 points (``face-alignment`` package),
  batched, on the GPU when there is one. Its weights come from ``TORCH_HOME`` (or
  ``weights_dir``) and are downloaded on first use when the network allows it.

Neither dlib nor face_alignment (nor torch) is imported at module level: this module
imports on a machine that has none of them.

Conventions: images are RGB ``uint8`` arrays [H, W, 3]; boxes are ``(x0, y0, x1, y1)``
floats in pixels, optionally followed by the face's in-plane roll in degrees (counter-clockwise
on screen; the landmarker looks at the face upright); landmark ``(x, y)`` are pixel coordinates
(pixel centres at integers) of the original image, whatever view the detector used.
A detector that verifies its candidates returns the dropped ones apart: they are never faces.
"""
import importlib.util
import os

import cv2
import numpy as np

from util.formats import IMAGE_EXTENSIONS, is_image_file  # noqa: F401 - the shared facts, defined once
from util.formats import read_image_rgb as load_image_rgb  # noqa: F401 - the one image reader of every stage
from util.landmarks import NUM_LANDMARKS  # noqa: F401

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv')

# Reasons why a frame/image yields no face (used in failures.csv).
NO_FACE = 'no face'
FACE_TOO_SMALL = 'face too small'

DEFAULT_MIN_FACE = 40        # px, longest side of the detector box in the original image
DEFAULT_DET_MAX_SIDE = 640   # detection runs on a copy downscaled to this longest side
# Of the detections, the largest face is kept; those scoring under this fraction of the best
# one are not faces to choose from: dlib reports weak false positives (score ~0.03 beside a face
# at ~1.5) that can be larger than the face. S3FD's scores (above its threshold 0.5) all pass.
MIN_SCORE_FRACTION = 0.5


def is_video_file(path):
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


# ---------------------------------------------------------------------------------
# 1. Reading pixels
# ---------------------------------------------------------------------------------

def to_rgb_uint8(img):
    """Convert an OpenCV-decoded array (BGR/BGRA/gray, 8/16-bit or float) to RGB uint8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        scale = 255.0 if np.nanmax(img) <= 1.0 else 1.0
        img = np.clip(np.nan_to_num(img) * scale, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)   # alpha is dropped
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def evenly_spaced_indices(total, num):
    """``num`` frame indices evenly spaced over ``range(total)`` (all of them when
    ``num`` is 0 or ``num >= total``), unique and sorted."""
    if total <= 0:
        return []
    if num <= 0 or num >= total:
        return list(range(total))
    return sorted(set(np.linspace(0, total - 1, num).round().astype(int).tolist()))


class VideoFrames:
    """Iterable over ``(frame_index, rgb_frame)`` for frames evenly spaced by index.

    Frames are decoded sequentially (accurate on every codec, unlike seeking).
    Frames that cannot be decoded are skipped and counted in ``skipped``
    (a truncated video counts the wanted frames past its end). ``read`` counts the
    frames returned. ``ValueError`` is raised at construction if the file cannot be
    opened at all.
    """

    def __init__(self, path, num_frames):
        self.path = os.fspath(path)
        self.num_frames = int(num_frames)
        self.skipped = 0
        self.read = 0
        if not os.path.isfile(self.path):
            raise ValueError(f'{self.path}: video file not found')
        if os.path.getsize(self.path) == 0:
            raise ValueError(f'{self.path}: zero-byte video file')
        cap = cv2.VideoCapture(self.path)
        ok = cap.isOpened()
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
        cap.release()
        if not ok:
            raise ValueError(f'{self.path}: cannot open video (corrupt or unsupported format)')
        if self.frame_count <= 0:          # container without a frame count: count by decoding
            self.frame_count = self._count_frames()
        self.indices = evenly_spaced_indices(self.frame_count, self.num_frames)

    def _count_frames(self):
        cap = cv2.VideoCapture(self.path)
        n = 0
        while cap.grab():
            n += 1
        cap.release()
        return n

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        wanted = set(self.indices)
        last = self.indices[-1] if self.indices else -1
        cap = cv2.VideoCapture(self.path)
        try:
            index = 0
            while index <= last:
                if not cap.grab():
                    # end of stream before the reported end: the rest is unreadable
                    self.skipped += sum(1 for i in self.indices if i >= index)
                    return
                if index in wanted:
                    ok, frame = cap.retrieve()
                    if ok and frame is not None and frame.size > 0:
                        self.read += 1
                        yield index, to_rgb_uint8(frame)
                    else:
                        self.skipped += 1
                index += 1
        finally:
            cap.release()


def read_video_frames(path, num_frames):
    """``num_frames`` frames evenly spaced by index over the whole video (all frames
    when the video is shorter or ``num_frames`` is 0).

    Returns a :class:`VideoFrames` iterable of ``(frame_index, img_rgb)``; after
    iterating, ``.skipped`` holds the number of unreadable frames and ``.read`` the
    number returned.
    """
    return VideoFrames(path, num_frames)


# ---------------------------------------------------------------------------------
# 2./3. Landmarkers: face boxes and 68 landmarks
# ---------------------------------------------------------------------------------

def _downscale(img, max_side):
    """Return (image downscaled so that its longest side <= max_side, scale factor)."""
    h, w = img.shape[:2]
    scale = min(1.0, float(max_side) / max(h, w)) if max_side else 1.0
    if scale >= 1.0:
        return img, 1.0
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    return small, scale


class Landmarker:
    """Interface: face boxes and 68 landmarks for RGB uint8 images.

    Subclasses implement ``detect_with_scores`` and ``landmarks``; the ``*_batch``
    methods default to loops and are overridden where batching pays (GPU).
    """
    name = 'base'

    def detect_with_scores(self, img_rgb):
        """Return (boxes, scores): lists of (x0, y0, x1, y1) floats and floats."""
        raise NotImplementedError

    def detect(self, img_rgb):
        """Face boxes (x0, y0, x1, y1) as floats, in no particular order."""
        return self.detect_with_scores(img_rgb)[0]

    def landmarks(self, img_rgb, boxes):
        """One float32 [68, 2] array of (x, y) image coordinates per box."""
        raise NotImplementedError

    def detect_batch(self, images):
        return [self.detect_with_scores(img) for img in images]

    def landmarks_batch(self, images, boxes_per_image):
        return [self.landmarks(img, boxes) if len(boxes) else []
                for img, boxes in zip(images, boxes_per_image)]


def dlib_model_path(name='shape_predictor_68_face_landmarks.dat'):
    """Path of one of dlib's model files in the face_recognition_models package (the 68-point
    shape predictor, or ``mmod_human_face_detector.dat``), found without importing it (its
    import fails with new setuptools)."""
    spec = importlib.util.find_spec('face_recognition_models')
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError('the dlib 68-point model comes from the face_recognition_models package: '
                           'pip install face_recognition_models==0.3.0')
    path = os.path.join(list(spec.submodule_search_locations)[0], 'models', name)
    if not os.path.isfile(path):
        raise RuntimeError(f'{path} is missing: reinstall face_recognition_models')
    return path


# dlib face detectors (``--detector``). Every option returns boxes in the original image's pixels
# and, as a fifth box element, the in-plane roll (degrees, counter-clockwise on screen) at which the
# face stands upright; the landmarks are found on that upright view and returned in image pixels.
DETECTORS = {
    'hog': 'HOG frontal detector on the upright image only, unverified (fast; misses rolls past ~35 deg)',
    'hybrid': 'HOG proposals on the image and on copies rolled by +-25 and +-50 deg (and upsampled '
              'when nothing is found), each verified by the CNN on its own crop',
    'cnn': 'CNN (MMOD) detector on the whole image, upsampled once (slow on a CPU)',
}
DEFAULT_DETECTOR = 'hybrid'


def _rolled(img, angle):
    """``img`` rolled by ``angle`` degrees (counter-clockwise) on a canvas holding all of it
    -> (rolled image, affine [2, 3] from image to rolled pixels)."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(w * cos + h * sin)), int(np.ceil(w * sin + h * cos))
    m[:, 2] += ((nw - 1) / 2.0 - (w - 1) / 2.0, (nh - 1) / 2.0 - (h - 1) / 2.0)
    return cv2.warpAffine(img, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), m


def _upright_view(img, center, side, roll, out_side):
    """Square ``out_side`` px view of ``img`` centred on ``center``, ``side`` image px wide, in which
    a face rolled by ``roll`` degrees stands upright -> (view, affine [2, 3] from image to view pixels)."""
    zoom, k = out_side / float(side), 1.0
    if zoom < 0.8:     # shrink by area averaging first, then warp by 0.8: a plain warp aliases
        k = zoom / 0.8
        img = cv2.resize(img, (max(1, round(img.shape[1] * k)), max(1, round(img.shape[0] * k))),
                         interpolation=cv2.INTER_AREA)
    center = np.asarray(center, dtype=np.float64) * k
    m = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), -roll, zoom / k)
    m[:, 2] += (out_side - 1) / 2.0 - center
    view = cv2.warpAffine(img, m, (out_side, out_side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    m[:, :2] *= k                                  # image -> view
    return view, m


def _apply(m, pts):
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]


def eye_roll(lm):
    """In-plane roll (degrees, counter-clockwise on screen) of a face's iBUG-68 landmarks: the
    angle of the line from its image-left eye to its image-right eye."""
    lm = np.asarray(lm, dtype=np.float64)
    (x0, y0), (x1, y1) = lm[36:42].mean(0), lm[42:48].mean(0)
    return float(np.degrees(np.arctan2(-(y1 - y0), x1 - x0)))


class DlibLandmarker(Landmarker):
    """dlib face detector (``detector``, one of ``DETECTORS``) + 68-point shape predictor (CPU,
    offline).

    ``hog``: the HOG frontal detector finds upright faces of about 80 px and more, and its
    cost grows with the image area, so detection runs on a downscaled copy: at most
    ``det_max_side`` px, or (``hog`` only), within a batch (frames of one video), the scale that
    brings the smallest face found in the previous frame to about ``FACE_PX`` pixels. A frame where that finds
    nothing is retried at full resolution (small images: with one 2x upsampling).

    ``hybrid`` (the default): the same upright pass, then HOG on copies rolled by ``ROLLS``
    (the upright filters reach ~35 deg, so +-40 covers +-75) and, when no face is verified, the
    rolled passes again on a copy enlarged ``ROLLED_UPSCALE`` times (faces down to 40 px).
    Proposals found at several rolls are one candidate (centres within half a box); each
    candidate is verified by the CNN detector on a ``VERIFY_PX`` view of it only, upright and its
    box scaled to ``VERIFY_FACE_PX`` (the CNN on that view costs ~0.09 s of CPU, on a whole
    640 x 480 frame seconds). The upright pass's box is kept where it has one, so frontal faces
    get the same box and landmarks as with ``hog``. docs/face_detection.md has the measurements.

    ``cnn``: the CNN detector on the whole (downscaled) image, upsampled once.

    Candidates that fail verification are returned by ``detect_batch`` as a third element
    (their boxes), never as faces.
    """
    name = 'dlib'
    FACE_PX = 80
    ROLLS = (-40, 40)                  # degrees: rolled copies searched by HOG (hybrid)
    ROLLED_UPSCALE = 1.6               # ... and again enlarged by this when no face is verified (0: never)
    SAME_FACE = 0.5                    # proposals whose centres are this many box sides apart are one
    VERIFY_PX, VERIFY_FACE_PX = 128, 80  # the CNN finds faces from ~64 px: margin for loose HOG boxes
    VERIFY_THRESHOLD = 0.0             # CNN confidence a verified face exceeds (dlib's own threshold)
    REFINE_ROLL = 15.0                 # landmarks again on a view levelled by the eyes past this residual
    # dlib's frontal detector holds five HOG filters: 0-2 upright faces (front, turned left, turned
    # right), 3 and 4 faces rolled one way and the other (they fire on the astronaut rolled 20-35 deg)
    FILTER_ROLL = {3: 25.0, 4: -25.0}

    def __init__(self, det_max_side=DEFAULT_DET_MAX_SIDE, model_path=None, detector=DEFAULT_DETECTOR,
                 cnn_model_path=None):
        try:
            import dlib
        except ImportError as e:
            raise RuntimeError('--landmarker dlib needs dlib: pip install dlib-bin==20.0.1.post1') from e
        if detector not in DETECTORS:
            raise ValueError(f'unknown detector {detector!r}: use one of {", ".join(DETECTORS)}')
        self._dlib = dlib
        self.det_max_side = det_max_side
        self.detector_name = detector
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(model_path or dlib_model_path())
        self.cnn = None
        if detector in ('hybrid', 'cnn'):
            self.cnn = dlib.cnn_face_detection_model_v1(
                cnn_model_path or dlib_model_path('mmod_human_face_detector.dat'))

    @staticmethod
    def _gray(img):
        # dlib's HOG and shape predictor work on intensities: gray saves ~25 % of the time
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img

    def _run(self, img, scale, upsample=0):
        if scale < 1.0:
            h, w = img.shape[:2]
            img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA)
        rects, scores, filters = self.detector.run(np.ascontiguousarray(img), upsample, 0.0)
        return ([tuple(float(v) / scale for v in (r.left(), r.top(), r.right(), r.bottom())) for r in rects],
                [float(x) for x in scores], [self.FILTER_ROLL.get(int(k), 0.0) for k in filters])

    def _detect_hog(self, img_rgb, scale, with_rolls=False):
        img_rgb = self._gray(img_rgb)
        found = self._run(img_rgb, scale)
        if not found[0] and scale < 1.0:
            found = self._run(img_rgb, 1.0)
        elif not found[0] and max(img_rgb.shape[:2]) <= self.det_max_side:
            found = self._run(img_rgb, 1.0, upsample=1)
        return found if with_rolls else found[:2]

    # -- hybrid: rolled HOG proposals, each verified by the CNN on its crop ----------------
    def _rolled_proposals(self, gray, scale, upsample=0):
        """HOG on ``gray`` resized by ``scale`` and rolled by each of ``ROLLS`` -> [(centre, side, roll, score)]
        in ``gray``'s pixels; a face found on the copy rolled by r is rolled by -r in the image."""
        h, w = gray.shape[:2]
        small = gray if scale == 1.0 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                     interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        out = []
        for roll in self.ROLLS:
            view, m = _rolled(small, roll)
            rects, scores, filters = self.detector.run(view, upsample, 0.0)
            inv = cv2.invertAffineTransform(m)
            for r, sc, k in zip(rects, scores, filters):
                c = _apply(inv, [((r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0)])[0] / scale
                out.append((c, max(r.right() - r.left(), r.bottom() - r.top()) / scale,
                            self.FILTER_ROLL.get(int(k), 0.0) - roll, float(sc)))
        return out

    def _verify(self, img_rgb, center, side, roll):
        """CNN confidence of the best face on the upright view of one candidate (-inf: none)."""
        view, _ = _upright_view(img_rgb, center, side * self.VERIFY_PX / self.VERIFY_FACE_PX, roll, self.VERIFY_PX)
        found = self.cnn(view, 0)
        return max((d.confidence for d in found), default=-np.inf)

    def _detect_hybrid(self, img_rgb, scale):
        gray = self._gray(img_rgb)
        cands = [(np.array([(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0]), max(b[2] - b[0], b[3] - b[1]), roll, s, b)
                 for b, s, roll in zip(*self._detect_hog(img_rgb, scale, with_rolls=True))]
        cands += [(c, side, roll, s, None) for c, side, roll, s in self._rolled_proposals(gray, scale, 0)]
        faces, rejected = self._verified(img_rgb, cands)
        if not faces and self.ROLLED_UPSCALE:
            # small faces: the rolled passes again, enlarged (the upright pass upsamples by itself)
            more = self._rolled_proposals(gray, self.ROLLED_UPSCALE * scale, 0)
            more = [(c, side, roll, s, None) for c, side, roll, s in more
                    if not any(self._same((c, side), r) for r in rejected)]
            faces, again = self._verified(img_rgb, more)
            rejected += again
        return ([f[0] for f in faces], [f[1] for f in faces],
                [(c[0] - s / 2, c[1] - s / 2, c[0] + s / 2, c[1] + s / 2, roll) for c, s, roll in rejected])

    def _same(self, a, b):
        return np.hypot(*(a[0] - b[0])) <= self.SAME_FACE * max(a[1], b[1])

    def _verified(self, img_rgb, cands):
        """Group proposals of one face (the upright pass's first, then by score), verify each group
        on its first member, then its second -> ([(box + roll, confidence)], [(centre, side, roll)] rejected)."""
        cands = sorted(cands, key=lambda c: (c[4] is None, -c[3]))
        groups = []
        for c in cands:
            for g in groups:
                if self._same(c, g[0]):
                    g.append(c)
                    break
            else:
                groups.append([c])
        faces, rejected = [], []
        for g in groups:
            tried = [g[0]] + [c for c in g[1:] if c[2] != g[0][2]][:1]
            for center, side, roll, _, box in tried:
                conf = self._verify(img_rgb, center, side, roll)
                if conf > self.VERIFY_THRESHOLD:
                    if box is None:
                        box = (center[0] - side / 2, center[1] - side / 2, center[0] + side / 2, center[1] + side / 2)
                    faces.append((tuple(float(v) for v in box[:4]) + (roll,), float(conf)))
                    break
            else:
                rejected.append((g[0][0], g[0][1], g[0][2]))
        return faces, rejected

    def _detect_cnn(self, img_rgb, scale):
        small = img_rgb if scale >= 1.0 else _downscale(img_rgb, max(1, round(max(img_rgb.shape[:2]) * scale)))[0]
        s = small.shape[1] / float(img_rgb.shape[1])
        found = self.cnn(np.ascontiguousarray(small), 1)
        return ([tuple(float(v) / s for v in (d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom())) + (0.0,)
                 for d in found], [float(d.confidence) for d in found])

    def _detect(self, img_rgb, scale):
        if self.detector_name == 'hybrid':
            return self._detect_hybrid(img_rgb, scale)
        if self.detector_name == 'cnn':
            return self._detect_cnn(img_rgb, scale)
        return self._detect_hog(img_rgb, scale)

    def detect_with_scores(self, img_rgb):
        return self._detect(img_rgb, min(1.0, self.det_max_side / float(max(img_rgb.shape[:2]))))[:2]

    def detect_batch(self, images):
        out, hint = [], None
        for img in images:
            scale = min(1.0, self.det_max_side / float(max(img.shape[:2])))
            if hint is not None and hint[0] == img.shape and self.detector_name == 'hog':
                scale = hint[1]      # hog only: a face the previous frame lacked may be too small then
            found = self._detect(img, scale)
            if found[0]:      # the smallest face of this frame, at ~FACE_PX in the next
                side = min(max(b[2] - b[0], b[3] - b[1]) for b in found[0])
                hint = (img.shape, min(1.0, self.FACE_PX / max(side, 1.0)))
            out.append(found)
        return out

    # -- landmarks --------------------------------------------------------------------------
    def _shape(self, img, box):
        rect = self._dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])), int(round(box[3])))
        return np.array([[p.x, p.y] for p in self.predictor(img, rect).parts()], dtype=np.float32)

    def _shape_rolled(self, img, box, roll):
        """68 points of the face in ``box`` seen upright (rolled by ``roll``), in image pixels."""
        c = np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])
        side = max(box[2] - box[0], box[3] - box[1])
        out_side = int(np.ceil(2 * side))
        view, m = _upright_view(img, c, out_side, roll, out_side)
        half = side / 2.0
        mid = (out_side - 1) / 2.0
        pts = self._shape(np.ascontiguousarray(view), (mid - half, mid - half, mid + half, mid + half))
        return _apply(cv2.invertAffineTransform(m), pts).astype(np.float32)

    def landmarks(self, img_rgb, boxes):
        """68 points per box; a box's fifth element is the roll at which its face is upright. A face
        whose eyes are still rolled by more than ``REFINE_ROLL`` is looked at again, levelled by them."""
        img = np.ascontiguousarray(self._gray(img_rgb))
        out = []
        for b in boxes:
            roll = float(b[4]) if len(b) > 4 else 0.0
            lm = self._shape(img, b) if roll == 0.0 else self._shape_rolled(img, b, roll)
            seen = eye_roll(lm)
            if abs(seen - roll) > self.REFINE_ROLL:
                lm = self._shape_rolled(img, b, seen)
            out.append(lm)
        return out


class WeightsNotFoundError(RuntimeError):
    """face_alignment weights are missing and could not be downloaded."""


def face_alignment_weight_files():
    """{'fan': (file name, url), 's3fd': (file name, url)} as face_alignment expects them."""
    try:
        from face_alignment.api import models_urls as fan_urls
        from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls
    except ImportError as e:
        raise RuntimeError('--landmarker face_alignment needs the face-alignment package '
                           '(pip install face-alignment==1.5.0), or use --landmarker dlib') from e
    urls = {'fan': fan_urls['2DFAN-4'], 's3fd': sfd_urls['s3fd']}
    return {k: (os.path.basename(u), u) for k, u in urls.items()}


def _hub_checkpoints_dir():
    import torch
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def find_face_alignment_weights(weights_dir=None, allow_download=True):
    """Paths {'fan': ..., 's3fd': ...} of the FAN and S3FD weights.

    Looked for in ``weights_dir`` (the files themselves, or ``checkpoints/`` or
    ``hub/checkpoints/`` below it), then in ``$TORCH_HOME/hub/checkpoints``; missing
    ones are downloaded there when ``allow_download``. Raises
    ``WeightsNotFoundError`` saying which files to put where otherwise.
    """
    files = face_alignment_weight_files()
    hub_dir = _hub_checkpoints_dir()
    search = []
    if weights_dir:
        search += [weights_dir, os.path.join(weights_dir, 'checkpoints'),
                   os.path.join(weights_dir, 'hub', 'checkpoints')]
    search.append(hub_dir)
    found, missing = {}, {}
    for key, (fname, url) in files.items():
        hits = [os.path.join(d, fname) for d in search if os.path.isfile(os.path.join(d, fname))]
        if hits:
            found[key] = hits[0]
        else:
            missing[key] = (fname, url)
    error = None
    if missing and allow_download:
        from face_alignment.utils import load_file_from_url
        target = weights_dir or hub_dir
        for key, (fname, url) in list(missing.items()):
            try:
                found[key] = load_file_from_url(url, model_dir=target)
                del missing[key]
            except Exception as e:   # no network, proxy, disk full, ...
                error = e
                break
    if missing:
        target = weights_dir or hub_dir
        lines = ['face_alignment weights not found'
                 + (f' and could not be downloaded ({error})' if error else '') + '.',
                 f'Put these files in {target}'
                 + ('' if weights_dir else ' (or in a folder given with --weights_dir)') + ':']
        lines += [f'  {fname}   (from {url})' for fname, url in missing.values()]
        lines.append('or use --landmarker dlib, which works offline.')
        raise WeightsNotFoundError('\n'.join(lines))
    return found


def _load_state_dict(path):
    import torch
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise WeightsNotFoundError(
            f'{path}: cannot load face_alignment weights ({e}); the file may be incomplete: '
            f'delete it and download it again, or use --landmarker dlib') from e


def decode_heatmaps(heatmaps, centers, scales):
    """FAN heat maps [B, 68, 64, 64] -> image coordinates float32 [B, 68, 2].

    face_alignment's ``get_preds_fromhm`` (arg-max, quarter-pixel shift towards the
    higher neighbour, inverse crop transform), vectorised and without its final
    rounding to integers (and without its numba compile time).
    """
    b, c, h, w = heatmaps.shape
    idx = heatmaps.reshape(b, c, h * w).argmax(-1)
    ix, iy = idx % w, idx // w
    bi, ci = np.meshgrid(np.arange(b), np.arange(c), indexing='ij')
    xs, ys = np.clip(ix, 1, w - 2), np.clip(iy, 1, h - 2)
    inside = (ix > 0) & (ix < w - 1) & (iy > 0) & (iy < h - 1)
    dx = heatmaps[bi, ci, ys, xs + 1] - heatmaps[bi, ci, ys, xs - 1]
    dy = heatmaps[bi, ci, ys + 1, xs] - heatmaps[bi, ci, ys - 1, xs]
    px = ix + 0.5 + np.where(inside, np.sign(dx) * 0.25, 0.0)
    py = iy + 0.5 + np.where(inside, np.sign(dy) * 0.25, 0.0)
    zoom = (200.0 * np.asarray(scales, dtype=np.float64) / h)[:, None]   # heat-map px -> image px
    centers = np.asarray(centers, dtype=np.float64)
    x = (px - h / 2.0) * zoom + centers[:, None, 0]
    y = (py - h / 2.0) * zoom + centers[:, None, 1]
    return np.stack([x, y], -1).astype(np.float32)


class FanLandmarker(Landmarker):
    """face_alignment's S3FD detector + FAN (2D, 68 points), batched.

    The networks, their weights and the crop / heat-map decoding are face_alignment's
    (version 1.5.0); what is added here is batching over many images: detection
    batches same-sized images (video frames), landmarks batch all faces.
    """
    name = 'face_alignment'
    REFERENCE_SCALE = 195.0     # face_alignment's S3FD box -> FAN scale
    CENTER_Y_OFFSET = 0.12

    def __init__(self, device='cpu', weights_dir=None, batch_size=32, compile=False,
                 flip_input=False, det_threshold=0.5, det_max_side=DEFAULT_DET_MAX_SIDE,
                 allow_download=True):
        import torch
        from face_alignment.detection.sfd.net_s3fd import s3fd
        from face_alignment.models import FAN
        self.torch = torch
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.flip_input = flip_input
        self.det_threshold = det_threshold
        self.det_max_side = det_max_side
        self.weights = find_face_alignment_weights(weights_dir, allow_download)

        self.detector = s3fd()
        self.detector.load_state_dict(_load_state_dict(self.weights['s3fd']))
        self.detector.to(device).eval()
        self.fan = FAN(4)
        self.fan.load_state_dict(_load_state_dict(self.weights['fan']))
        self.fan.to(device).eval()
        if 'cuda' in str(device):
            torch.backends.cudnn.benchmark = True
        if compile:
            self.fan = torch.compile(self.fan)
            self.detector = torch.compile(self.detector)

    # -- detection ---------------------------------------------------------------
    def _detect_tensor(self, batch_uint8):
        """S3FD on a [B, H, W, 3] uint8 RGB array -> per image (boxes [N, 4], scores [N])."""
        import torch.nn.functional as F
        from face_alignment.detection.sfd.bbox import nms
        torch = self.torch
        x = torch.from_numpy(batch_uint8).to(self.device).permute(0, 3, 1, 2).float()
        x = x.flip(1) - torch.tensor([104.0, 117.0, 123.0], device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            out = self.detector(x)
        per_image = [[] for _ in range(x.shape[0])]
        for level in range(len(out) // 2):
            cls = F.softmax(out[2 * level], dim=1)[:, 1]
            keep = (cls > self.det_threshold).nonzero()
            if keep.numel() == 0:
                continue
            b, hh, ww = keep[:, 0], keep[:, 1], keep[:, 2]
            score = cls[b, hh, ww].cpu().numpy()
            loc = out[2 * level + 1][b, :, hh, ww].float().cpu().numpy()
            b, hh, ww = b.cpu().numpy(), hh.cpu().numpy(), ww.cpu().numpy()
            stride = 2 ** (level + 2)
            cx, cy, size = stride / 2 + ww * stride, stride / 2 + hh * stride, stride * 4
            bx = cx + loc[:, 0] * 0.1 * size
            by = cy + loc[:, 1] * 0.1 * size
            bw, bh = size * np.exp(loc[:, 2] * 0.2), size * np.exp(loc[:, 3] * 0.2)
            dets = np.stack([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2, score], 1)
            for i in np.unique(b):
                per_image[i].append(dets[b == i])
        results = []
        for dets in per_image:
            if not dets:
                results.append((np.zeros((0, 4)), np.zeros(0)))
                continue
            dets = np.concatenate(dets)
            dets = dets[nms(dets, 0.3)]
            results.append((dets[:, :4], dets[:, 4]))
        return results

    def detect_batch(self, images):
        results = [None] * len(images)
        by_shape = {}
        for i, img in enumerate(images):
            by_shape.setdefault(img.shape, []).append(i)
        for shape, idxs in by_shape.items():
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start:start + self.batch_size]
                smalls = [_downscale(images[i], self.det_max_side) for i in chunk]
                scale = smalls[0][1]
                dets = self._detect_tensor(np.stack([s for s, _ in smalls]))
                for i, (boxes, scores) in zip(chunk, dets):
                    results[i] = ([tuple(float(v) / scale for v in b) for b in boxes],
                                  [float(s) for s in scores])
        return results

    def detect_with_scores(self, img_rgb):
        return self.detect_batch([img_rgb])[0]

    # -- landmarks ---------------------------------------------------------------
    def _center_scale(self, box):
        x0, y0, x1, y1 = box[:4]
        center = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
        center[1] -= (y1 - y0) * self.CENTER_Y_OFFSET
        return center, (x1 - x0 + y1 - y0) / self.REFERENCE_SCALE

    def landmarks_batch(self, images, boxes_per_image):
        from face_alignment.utils import crop, flip
        torch = self.torch
        jobs, crops = [], []
        for i, (img, boxes) in enumerate(zip(images, boxes_per_image)):
            for box in boxes:
                center, scale = self._center_scale(box)
                jobs.append((i, center, scale))
                crops.append(crop(img, center, scale))
        results = [[] for _ in images]
        if not jobs:
            return results
        heatmaps = []
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(np.stack(crops[start:start + self.batch_size]))
                x = x.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
                out = self.fan(x)
                out = out[-1] if isinstance(out, (list, tuple)) else out
                if self.flip_input:
                    f = self.fan(flip(x))
                    f = f[-1] if isinstance(f, (list, tuple)) else f
                    out = out + flip(f, is_label=True)
                heatmaps.append(out.float().cpu().numpy())
        points = decode_heatmaps(np.concatenate(heatmaps),
                                 np.array([c for _, c, _ in jobs]), np.array([s for _, _, s in jobs]))
        for (i, _, _), pts in zip(jobs, points):
            results[i].append(pts)
        return results

    def landmarks(self, img_rgb, boxes):
        return self.landmarks_batch([img_rgb], [list(boxes)])[0]


def resolve_device(device):
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'."""
    if device in (None, '', 'auto'):
        try:
            import torch
            return 'cuda' if torch.cuda.is_available() else 'cpu'
        except ImportError:
            return 'cpu'
    return device


def build_landmarker(name='dlib', device='cpu', weights_dir=None, batch_size=32, **kwargs):
    """Build a :class:`Landmarker`.

    name: 'dlib' (CPU, offline; ``device`` is ignored) or 'face_alignment'
    (S3FD + FAN on ``device``, 'auto' picks the GPU when present).
    weights_dir: folder with the face_alignment weight files (else ``$TORCH_HOME``).
    batch_size: images / faces per network call (face_alignment).
    kwargs: passed to the landmarker (e.g. ``compile=False``, ``flip_input``,
    ``allow_download``, ``det_max_side``).
    """
    if name == 'dlib':
        kwargs = {k: v for k, v in kwargs.items() if k in ('det_max_side', 'model_path', 'detector')}
        return DlibLandmarker(**kwargs)
    if name in ('face_alignment', 'fan'):
        return FanLandmarker(device=resolve_device(device), weights_dir=weights_dir,
                             batch_size=batch_size, **kwargs)
    raise ValueError(f'unknown landmarker {name!r}: use dlib or face_alignment')


# ---------------------------------------------------------------------------------
# 4. Square face crops
# ---------------------------------------------------------------------------------

def crop_face(img_rgb, landmarks, margin=1.3, size=256, box=None):
    """Square crop around a face, resized to ``size`` x ``size``.

    The square is centred on the landmarks' bounding box (or on ``box``, a detector
    box, when given), its side is ``margin`` times the longer side of that box, and
    parts outside the image are padded with black.

    Returns ``(crop uint8 [size, size, 3], landmarks in crop pixels float32 [68, 2],
    square box (x0, y0, x1, y1) in image pixels)``.
    """
    lm = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)
    if box is None:
        (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    else:
        x0, y0, x1, y1 = [float(v) for v in box[:4]]
    side = max(2, int(round(max(x1 - x0, y1 - y0) * margin)))
    left = int(round((x0 + x1) / 2.0 - side / 2.0))
    top = int(round((y0 + y1) / 2.0 - side / 2.0))

    h, w = img_rgb.shape[:2]
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(left + side, w), min(top + side, h)
    if sx0 == left and sy0 == top and sx1 == left + side and sy1 == top + side:
        patch = img_rgb[sy0:sy1, sx0:sx1]
    else:
        patch = np.zeros((side, side, 3), dtype=np.uint8)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = img_rgb[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    crop = cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interp)

    # pixel centres: image x -> crop (x - left + 0.5) * size / side - 0.5
    s = size / float(side)
    lm_crop = (lm - np.array([left, top], dtype=np.float32) + 0.5) * s - 0.5
    return crop, lm_crop.astype(np.float32), (float(left), float(top), float(left + side), float(top + side))


# ---------------------------------------------------------------------------------
# 5. Everything together
# ---------------------------------------------------------------------------------

def _select_faces(boxes, scores, largest_only, min_face):
    """Drop detections smaller than ``min_face``, order the others largest first
    -> (kept [(box, score)], reason). With ``largest_only`` the one face is the largest
    of the confident detections (scoring at least ``MIN_SCORE_FRACTION`` of the best), so a
    large weak false positive does not win; otherwise every face is kept, weak ones too (a
    pasted or blurred face may well score lower, and predict.py scores every face)."""
    if not boxes:
        return [], NO_FACE
    dets = [d for d in zip(boxes, scores) if max(d[0][2] - d[0][0], d[0][3] - d[0][1]) >= min_face]
    if not dets:
        return [], FACE_TOO_SMALL
    if largest_only:
        best = max(s for _, s in dets)
        dets = [d for d in dets if d[1] >= min(best, best * MIN_SCORE_FRACTION)]
    dets.sort(key=lambda d: -(d[0][2] - d[0][0]) * (d[0][3] - d[0][1]))
    return (dets[:1] if largest_only else dets), None


def extract_faces_batch(images, landmarker, margin=1.3, size=256, largest_only=True,
                        min_face=DEFAULT_MIN_FACE, with_rejected=False):
    """:func:`extract_faces` for many images at once (batched on the GPU with
    face_alignment). Returns, per image, ``(faces, reason)`` where ``reason`` is
    None, ``NO_FACE`` or ``FACE_TOO_SMALL`` (the latter two with ``faces == []``);
    with ``with_rejected``, ``(faces, reason, rejected)``: the boxes of the candidates
    the detector's verification dropped (never among ``faces``)."""
    detections = landmarker.detect_batch(images)
    selected, reasons, rejected = [], [], []
    for boxes, scores, *dropped in detections:
        kept, reason = _select_faces(list(boxes), list(scores), largest_only, min_face)
        selected.append(kept)
        reasons.append(reason)
        rejected.append(list(dropped[0]) if dropped else [])
    all_landmarks = landmarker.landmarks_batch(images, [[b for b, _ in kept] for kept in selected])
    results = []
    for img, kept, lms, reason, dropped in zip(images, selected, all_landmarks, reasons, rejected):
        faces = []
        for (box, score), lm in zip(kept, lms):
            crop, lm_crop, square = crop_face(img, lm, margin=margin, size=size)
            faces.append(dict(crop=crop, landmarks=lm_crop, box=square,
                              detector_box=tuple(float(v) for v in box[:4]), score=float(score),
                              roll=float(box[4]) if len(box) > 4 else 0.0, image_landmarks=lm))
        results.append((faces, reason, dropped) if with_rejected else (faces, reason))
    return results


def extract_faces(img_rgb, landmarker, margin=1.3, size=256, largest_only=True,
                  min_face=DEFAULT_MIN_FACE):
    """Detect faces, find their 68 landmarks and crop them.

    Returns a list (largest face first; only the largest when ``largest_only``) of
    dicts: ``crop`` uint8 [size, size, 3], ``landmarks`` float32 [68, 2] in crop
    pixels, ``box`` the square crop box in image pixels, ``detector_box``, ``score``,
    ``roll`` (degrees, counter-clockwise, at which the detector found the face; the crop
    is not rotated: it is the axis-aligned square around the landmarks, as for every face)
    and ``image_landmarks`` (float32 [68, 2] in image pixels).
    Faces whose detector box is smaller than ``min_face`` pixels are dropped, and so are
    detections scoring under ``MIN_SCORE_FRACTION`` of the best one; an empty list
    means no (large enough) face.
    """
    return extract_faces_batch([img_rgb], landmarker, margin, size, largest_only, min_face)[0][0]
