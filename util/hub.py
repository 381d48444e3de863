"""Hugging Face Hub folders: where a script takes a checkpoint, it also takes such a folder or a Hub id.

A Hub-format folder is what huggingface_hub's PyTorchModelHubMixin writes (models_mae.SpatialDecoder carries
it, so both stages have save_pretrained / from_pretrained / push_to_hub): model.safetensors, config.json and a
model card, README.md. config.json holds the model's __init__ arguments (the mixin records them) and what
`folder_config` adds: the model's kind and name, its decision threshold, the recipe, and the names of its
training and evaluation data -- everything needed to rebuild and run it, with no flags.

The one rule: `load_checkpoint(source)` returns the dict `util.checkpoint.load` returns for a file
({'model': state dict, 'args': {...}} and, for a detector, 'detector': its meta), whatever `source` is -- a
checkpoint file, a folder, or a Hub id (read from the local cache, downloaded when allowed). So the loaders
of both stages stay as they are and only change the call that reads the file. Every failure is one line
naming the source (FileNotFoundError or ValueError, like util.checkpoint.load). A Hub id that is not in the
cache with HF_HUB_OFFLINE=1 set says so; nothing else ever reaches the network.
"""
import contextlib
import csv
import io
import json
import re
from pathlib import Path

FILES = ('config.json', 'model.safetensors')                  # a Hub-format folder holds both (and README.md)
REPO_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[\w.-]+$')          # owner/name, as the Hub spells them
FILE_SUFFIXES = ('.pth', '.pt', '.ckpt', '.bin', '.safetensors', '.onnx')   # a missing file, never a Hub id

# kind (config.json "kind") -> (module, class): the one place a shareable model is registered
KINDS = {
    'mifae_detector': ('models_vit', 'MIFAEDetector'),
    'mifae_autoencoder': ('models_mae', 'MaskedImageFrequencyAutoencoder'),
}

# what a detector's checkpoint meta (models_vit.detector_meta) records beyond the model's __init__ arguments;
# config.json carries them under the same names
DETECTOR_EXTRAS = ('decoder', 'trainable_blocks', 'full_finetune', 'recon', 'recipe')

# the terms of the data sets this code prepares (the manifests' `dataset` column, preprocess.layouts), for the
# model card: they may restrict the use of weights trained on them
DATA_LICENCES = {
    'ffpp': 'FaceForensics++ Terms of Use: research only, non-commercial (access granted by its authors)',
    'dfd': 'Google/Jigsaw DeepFakeDetection, distributed with FaceForensics++ under its Terms of Use',
    'celebdf': 'Celeb-DF Terms of Use: non-commercial research only',
    'dfdc': 'DFDC data set licence agreement (Meta AI): research use under its terms',
    'wilddeepfake': 'WildDeepfake Terms of Use: non-commercial research only (access on request)',
    'vggface2': 'VGGFace2 licence: its annotations CC BY-SA 4.0, the images under their owners\' rights',
    'synthetic': 'none: procedural faces drawn by this code base (MIT licence, as the code)',
}
DEFAULT_THRESHOLD = 0.5          # fake probability above which the verdict is FAKE (predict.py's default)

CARD_TEMPLATE = """---
{{ card_data }}
---

{{ body }}
"""


# ---------------------------------------------------------------------- sources
def is_repo_id(source):
    return bool(REPO_ID.match(str(source))) and not str(source).lower().endswith(FILE_SUFFIXES)


def is_folder(source):
    """Whether `source` is a Hub-format folder here (config.json and model.safetensors)."""
    p = Path(source)
    return p.is_dir() and all((p / f).is_file() for f in FILES)


def source_problem(source, flag):
    """Why `source` (the value of --flag) cannot be a checkpoint, folder or Hub id, in one line; None when it
    can (a Hub id is only checked when it is read)."""
    p = Path(source)
    if p.is_file() or is_folder(p):
        return None
    if p.is_dir():
        return f'--{flag} {source}: a folder without {" and ".join(FILES)}; pass a checkpoint file or a ' \
               f'folder written by export.py --format hub'
    if not is_repo_id(source):
        return f'--{flag} {source} does not exist'
    return None


def local_folder(source):
    """A Hub-format folder here for a folder or a Hub id (the cached snapshot; downloaded unless offline)."""
    if is_folder(source):
        return Path(source)
    p = Path(source)
    if p.is_dir():
        raise ValueError(f'{source}: a folder without {" and ".join(FILES)} (not written by save_pretrained)')
    if not is_repo_id(source):
        raise FileNotFoundError(f'{source}: no such checkpoint file or folder, and not a Hub id (owner/name)')
    from huggingface_hub import constants, snapshot_download
    try:
        return Path(snapshot_download(str(source), allow_patterns=list(FILES) + ['README.md']))
    except Exception as e:  # noqa: BLE001 -- every Hub failure (offline, unknown repo, network) is one line
        if constants.is_offline_mode():
            why = 'is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set (download it once ' \
                  'without it, or pass a folder)'
        else:
            why = f'could not be read from the Hugging Face Hub ({type(e).__name__}: ' \
                  f'{(str(e).strip().splitlines() or [""])[0][:160]})'
        raise FileNotFoundError(f'{source}: no such file or folder here, and the Hub model {source} {why}') from None


def read_config(folder):
    try:
        config = json.loads((Path(folder) / 'config.json').read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f'{folder}/config.json: unreadable ({type(e).__name__})') from None
    if not isinstance(config, dict) or config.get('kind') not in KINDS:
        raise ValueError(f'{folder}/config.json: not a MIFAE model (its "kind" is not one of {", ".join(KINDS)})')
    return config


def model_class(kind):
    import importlib
    module, name = KINDS[kind]
    return getattr(importlib.import_module(module), name)


def from_pretrained(source):
    """The model of a folder or Hub id, through the mixin's from_pretrained (all tensors must fit: strict),
    in eval mode on the CPU. -> (model, config dict)"""
    folder = local_folder(source)
    config = read_config(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()):          # the mixin prints where it loads from
            model = model_class(config['kind']).from_pretrained(str(folder), strict=True)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        why = (str(e).strip().splitlines() or [''])[0][:200]
        raise ValueError(f'{source}: its model.safetensors does not fit its config.json ({why})') from None
    return model, config


def load_checkpoint(source, mmap=False):
    """`util.checkpoint.load` for a checkpoint file, a Hub-format folder or a Hub id: the same dict either way."""
    from util import checkpoint
    if Path(source).is_file():
        return checkpoint.load(source, mmap=mmap)
    model, config = from_pretrained(source)
    return dict(model=model.state_dict(), hub=str(source), **model.checkpoint_entries(config))


# ---------------------------------------------------------------------- writing a folder (export.py)
def data_names(manifests):
    """For the card and config: each manifest's file name and the data sets its `dataset` column names (when
    the file is still where the run read it). -> dict(files=[...], datasets=[...])"""
    files, datasets = [], set()
    for m in manifests:
        if not m:
            continue
        p = Path(m)
        files.append(p.name)
        if p.is_file() and p.suffix.lower() == '.csv':
            with open(p, newline='') as f:
                datasets.update(r['dataset'] for r in csv.DictReader(f) if r.get('dataset'))
        elif p.is_dir():
            datasets.add(p.name)
    return dict(files=files, datasets=sorted(datasets))


def folder_config(model, ckpt, threshold=None, eval_doc=None):
    """config.json of a checkpoint's model: its __init__ arguments (as the mixin records them) and the facts
    the scripts and the card need."""
    args = ckpt.get('args') or {}
    config = dict(model._hub_mixin_config or {})
    if 'detector' in ckpt:
        meta = ckpt['detector']
        config.update(kind='mifae_detector', model=meta['model'],
                      threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                      **{k: meta[k] for k in DETECTOR_EXTRAS if k in meta})
        evaluated = [s['manifest'] for s in (eval_doc or {}).get('sets', {}).values() if s.get('manifest')]
        config.update(train_data=data_names([args.get('train_manifest')]),
                      val_data=data_names([args.get('val_manifest')]),
                      eval_data=data_names(evaluated or args.get('test_manifests') or []))
    else:
        config.update(kind='mifae_autoencoder', model=args['model'], train_data=data_names([args.get('data_path')]))
    config.update(epoch=ckpt.get('epoch'))
    return config


def licence_lines(datasets, given=None):
    if given:
        return [given]
    return [f'{d}: {DATA_LICENCES.get(d, "unknown: state it with export.py --data_licence")}' for d in datasets] \
        or ['unknown (the training manifests were not found at export): state it with export.py --data_licence']


def card_body(config, source, eval_doc=None, data_licence=None):
    """The model card's Markdown below its metadata: what the model is, how to use it from `source` (its Hub id
    or folder), how it was trained, the metrics of eval.json when there is one, intended use and limits, and the
    licence of the training data."""
    from preprocess.faces import DEFAULT_MIN_FACE as min_face
    detector = config['kind'] == 'mifae_detector'
    train = config.get('train_data', {})
    size, name = config['img_size'], config['model']
    mean, std = config.get('mean'), config.get('std')
    lines = [f'# MIFAE-Forensics {"deepfake detector" if detector else "pre-trained autoencoder"}: {name}, {size} px',
             '']
    if detector:
        lines += [
            f'A ViT ({name}) that scores a face crop: the probability that it is fake (label 1 = fake, 0 = real), '
            f'FAKE above {config["threshold"]}. It is the stage-2 detector of MIFAE-Forensics (Masked '
            'Image-Frequency AutoEncoder, ICASSP 2025): an encoder pre-trained with facial-region and '
            'high-frequency masking, fine-tuned with the frozen pre-training decoder reconstructing the input.', '',
            '## Use', '', '```bash',
            f'python predict.py --checkpoint {source} photo.jpg clip.mp4',
            f'python app.py --checkpoint {source}      # a web page on 127.0.0.1', '```', '',
            '```python', 'from models_vit import MIFAEDetector',
            f'model = MIFAEDetector.from_pretrained("{source}")',
            '```', '',
            f'Input: RGB face crops found by dlib (68 landmarks; the square crop is 1.3 x the landmark box), resized '
            f'to {size} x {size}, scaled to [0, 1] and normalised with mean {mean} and std {std}'
            + (f', centre crop {config["crop_pct"]}' if config.get('crop_pct') else '') + '.', '']
    else:
        lines += [
            f'The stage-1 model of MIFAE-Forensics (ICASSP 2025): a ViT masked autoencoder ({name}) pre-trained on '
            'real faces with facial-region masking and high-frequency masking. Start a detector from it with '
            f'`python main_finetune.py --finetune {source} ...`.', '']
    lines += ['## Training', '',
              f'- data: {", ".join(train.get("files", [])) or "not recorded"}'
              + (f' (data sets: {", ".join(train["datasets"])})' if train.get('datasets') else ''),
              f'- epochs: {config["epoch"] + 1 if config.get("epoch") is not None else "not recorded"}']
    if detector:
        blocks = 'the whole encoder' if config.get('full_finetune') else \
            f'the last {config.get("trainable_blocks")} block(s), norm and head'
        lines += [f'- recipe: {config.get("recipe", "not recorded")}; trained: {blocks}; '
                  f'reconstruction: {config.get("recon", "not recorded")}']
    lines += ['', '## Evaluation', '']
    if eval_doc and eval_doc.get('sets'):
        from util.reports import format_table
        lines += [format_table(eval_doc['sets'], markdown=True), '',
                  f'Test data: {", ".join(config.get("eval_data", {}).get("files", []))}. The table is the one '
                  'main_finetune.py --eval writes (eval.json): frame and video metrics per test set.']
    else:
        lines += ['No eval.json was found beside the checkpoint: this card reports no metrics.']
    lines += ['', '## Intended use and limits', '',
              '- For research on face-forgery detection and for screening media with a person checking the result. '
              'A score is evidence, not proof: never the only ground for a decision about a person.',
              f'- It sees only faces it can find (frontal to moderately turned, at least {min_face} px) and knows '
              'only the forgeries of its training data; new generators, heavy compression and unusual faces lower its '
              'accuracy. Re-evaluate on your own data before relying on its threshold.',
              '- dlib\'s 68-point landmark model, used to crop the faces, was trained on iBUG 300-W, whose licence '
              'forbids commercial use.',
              '', '## Licence of the training data', '',
              'The terms of the data the weights were trained on may restrict their use; check them:', '']
    lines += [f'- {line}' for line in licence_lines(train.get('datasets', []), data_licence)]
    lines += ['', 'The code that trained them is MIT-licensed (MIFAE-Forensics).']
    return '\n'.join(lines)
