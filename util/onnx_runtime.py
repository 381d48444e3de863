"""The detector's classification path as an ONNX model, and running it with onnxruntime on the CPU.

The graph takes what the PyTorch detector takes -- face crops resized to the input size and normalised,
float32 [N, 3, S, S], any N -- and returns `logits` [N, 2] and `p_fake` [N] (softmax, label 1 = fake).
Everything before it (finding the face, cropping, resizing, normalising) is stated in the file's metadata
(`mifae` in metadata_props: the detector meta predict.py reads from a checkpoint, plus the threshold and a
sentence on the pre-processing), so the file alone says how to feed it.

The invariant: an exported file gives PyTorch's probabilities. `export` checks it on 32 face crops of
skimage's astronaut photo and removes the file when the largest difference exceeds `TOLERANCE`.
`OnnxDetector` stands in for the PyTorch model where predict.py only scores: called on a normalised batch it
returns the logits, and `fake_prob` is the detector's own; heat maps need the PyTorch model.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import torch

OPSET = 17
TOLERANCE = 1e-4            # largest |p_fake(onnxruntime) - p_fake(PyTorch)| an export may show
CHECK_FACES = 32
PREPROCESSING = ('RGB face crop (dlib 68 landmarks, square of 1.3 x the landmark box), resized to input_size '
                 'x input_size (centre crop eval_crop_pct first when set), scaled to [0, 1], then '
                 '(x - mean) / std per channel; layout [N, 3, H, W] float32')


class _Classifier(torch.nn.Module):
    """logits and P(fake) of a detector, nothing else (the decoder is left out of the graph)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        return logits, self.model.fake_prob(logits)


def check_faces(meta, n=CHECK_FACES, seed=0):
    """`n` normalised face crops of skimage's astronaut, shifted and scaled at random. -> [n, 3, S, S]"""
    from skimage import data as skdata

    from util.datasets import FaceTransform
    photo = skdata.astronaut()                              # 512 x 512, the face near (x 170-290, y 40-190)
    rng = np.random.default_rng(seed)
    tf = FaceTransform(meta['input_size'], train=False, mean=meta['mean'], std=meta['std'],
                       crop_pct=meta.get('eval_crop_pct'))
    crops = []
    for _ in range(n):
        side = int(rng.integers(150, 260))
        cx, cy = 230 + rng.integers(-25, 26), 115 + rng.integers(-20, 21)
        x0, y0 = int(np.clip(cx - side // 2, 0, 512 - side)), int(np.clip(cy - side // 2, 0, 512 - side))
        crops.append(tf(np.ascontiguousarray(photo[y0:y0 + side, x0:x0 + side]))[0])
    return torch.stack(crops)


def export(model, meta, path, threshold):
    """Write `model`'s classification path to `path` (opset OPSET, dynamic batch) with its metadata, then check
    it against PyTorch on CHECK_FACES faces. -> largest probability difference. ValueError (the file removed)
    when it exceeds TOLERANCE."""
    import onnx
    path = Path(path)
    model = model.float().eval()
    x = check_faces(meta)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')                     # the tracer's notes on Python branches (constant here)
        torch.onnx.export(_Classifier(model), (x[:2],), str(path), dynamo=False, opset_version=OPSET,
                          input_names=['faces'], output_names=['logits', 'p_fake'],
                          dynamic_axes={'faces': {0: 'batch'}, 'logits': {0: 'batch'}, 'p_fake': {0: 'batch'}})
    graph = onnx.load(str(path))
    doc = {k: meta[k] for k in ('kind', 'model', 'input_size', 'mean', 'std', 'eval_crop_pct', 'num_classes')
           if k in meta}
    doc.update(threshold=threshold, preprocessing=PREPROCESSING,
               outputs='logits [N, 2]; p_fake [N] = P(label 1 = fake)')
    onnx.helper.set_model_props(graph, {'mifae': json.dumps(doc)})
    onnx.save(graph, str(path))
    with torch.no_grad():
        want = model.fake_prob(model(x)).numpy()
    got = OnnxDetector(path).probs(x.numpy())
    diff = float(np.abs(got - want).max())
    if not diff <= TOLERANCE:
        path.unlink(missing_ok=True)
        raise ValueError(f'{path}: onnxruntime differs from PyTorch by {diff:.2e} in p(fake) on {len(x)} faces '
                         f'(more than {TOLERANCE:g}); the file was removed')
    return diff


class OnnxDetector:
    """An exported detector run by onnxruntime on the CPU. `meta` holds what predict.py reads from a
    checkpoint's detector meta (model, input_size, mean, std, eval_crop_pct) and threshold; decoder False."""

    def __init__(self, path, threads=None):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])
        except Exception as e:  # noqa: BLE001 -- onnxruntime raises its own types for unreadable files
            why = (str(e).strip().splitlines() or [''])[0][:200]
            raise ValueError(f'{path}: not a readable ONNX model ({why})') from None
        props = self.session.get_modelmeta().custom_metadata_map
        if 'mifae' not in props:
            raise ValueError(f'{path}: an ONNX model without MIFAE metadata (not written by export.py --format onnx)')
        self.meta = dict(json.loads(props['mifae']), decoder=False, onnx=True)

    def probs(self, x):
        """Normalised faces, float32 numpy [N, 3, S, S] -> P(fake) [N] float32."""
        return self.session.run(['p_fake'], {'faces': np.ascontiguousarray(x, np.float32)})[0]

    def __call__(self, x):
        """Like the PyTorch detector's forward: a normalised batch (tensor) -> logits [N, 2] (tensor)."""
        logits = self.session.run(['logits'], {'faces': x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(logits)

    def fake_prob(self, logits):
        """P(label 1 = fake), by the PyTorch detector's own rule. [N, 2] -> [N]"""
        from models_vit import MIFAEDetector
        return MIFAEDetector.fake_prob(self, logits)

    def to(self, device):
        return self

    def eval(self):
        return self


def load_detector(path):
    """(OnnxDetector, meta) -- the pair models_vit.load_detector gives for a checkpoint."""
    det = OnnxDetector(path)
    return det, det.meta
