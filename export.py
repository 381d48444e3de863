"""Share a trained model: a Hugging Face Hub folder (and the Hub), or an ONNX file for CPU inference.

    python export.py --checkpoint runs/ft/checkpoint-best.pth --format hub --out my_detector/ [--push USER/NAME]
    python export.py --checkpoint runs/ft/checkpoint-best.pth --format onnx --out detector.onnx
    python export.py --checkpoint runs/pretrain/checkpoint-last.pth --format hub --out my_mifae/

--format hub writes model.safetensors, config.json and a model card (README.md) with huggingface_hub's
PyTorchModelHubMixin (util.hub says what they hold); the scripts take the folder, or its Hub id once pushed,
wherever they take a checkpoint. --format onnx writes a detector's classification path and checks it
against PyTorch with onnxruntime (util.onnx_runtime); predict.py runs the file.
"""
import argparse
import json
import sys
from functools import partial
from pathlib import Path

import models_mae
import models_vit
import util.checkpoint as checkpoint
import util.hub as hub
import util.misc as misc
import util.onnx_runtime as onnx_runtime
from util.fileio import output_dir_problem

error = partial(misc.usage_error, 'export.py')      # raise error('--flag ...: what to do')


def get_args_parser():
    p = argparse.ArgumentParser('MIFAE export: a Hub-format folder or an ONNX file', add_help=False)
    p.add_argument('--checkpoint', required=True,
                   help='checkpoint of main_finetune.py (detector) or main_pretrain.py (autoencoder, --format hub)')
    p.add_argument('--format', required=True, choices=['hub', 'onnx'])
    p.add_argument('--out', required=True, help='folder (--format hub) or .onnx file (--format onnx)')
    p.add_argument('--push', default='', metavar='REPO_ID',
                   help='--format hub: also upload the folder to this Hugging Face Hub model repository')
    p.add_argument('--private', action='store_true', help='--push: create the repository private')
    p.add_argument('--threshold', default=None, type=float,
                   help=f'detector: fake probability above which the verdict is FAKE (default {hub.DEFAULT_THRESHOLD})')
    p.add_argument('--eval_json', default='', help='metrics for the model card (default: eval.json beside the '
                                                   'checkpoint, when there is one)')
    p.add_argument('--data_licence', default='', help='the training data\'s terms, for the model card (default: '
                                                      'looked up by the data set names the manifests give)')
    return p


def check_args(args):
    def fail(msg):
        raise error(msg)
    if not Path(args.checkpoint).is_file():
        fail(f'--checkpoint {args.checkpoint}: no such file (a checkpoint of main_finetune.py or main_pretrain.py)')
    if problem := misc.number_problem(args, unit_interval=('threshold',)):
        fail(problem)
    if args.push and args.format != 'hub':
        fail('--push uploads a Hub-format folder: use it with --format hub')
    if args.push and not hub.is_repo_id(args.push):
        fail(f'--push {args.push}: a Hub repository id is owner/name')
    if args.eval_json and not Path(args.eval_json).is_file():
        fail(f'--eval_json {args.eval_json} does not exist')
    out = Path(args.out)
    if args.format == 'onnx':
        if out.suffix.lower() != '.onnx' or out.is_dir():
            fail(f'--out {args.out}: name the ONNX file, e.g. detector.onnx')
        folder = out.parent
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            fail(f'--out {args.out}: exists and is not an empty folder; choose a new folder')
        folder = out
    if problem := output_dir_problem(folder):
        fail(f'--out {args.out}: {problem}')


def load_model(path):
    """The model of a checkpoint, as the scripts rebuild it. -> (model, ckpt)"""
    try:
        ckpt = checkpoint.load(path)
        if 'detector' in ckpt:
            return models_vit.load_detector(path)[0], ckpt
        model = models_mae.load_autoencoder(path)
        if model.old_freq_decoder:
            raise ValueError(f'{path}: {model.old_freq_decoder}; continue its training with main_pretrain.py '
                             f'--init_from first')
    except (FileNotFoundError, ValueError) as e:
        raise error(f'--checkpoint {e}') from None
    return model, ckpt


def export_hub(model, ckpt, args):
    eval_path = Path(args.eval_json) if args.eval_json else Path(args.checkpoint).with_name('eval.json')
    eval_doc = json.loads(eval_path.read_text()) if eval_path.is_file() and 'detector' in ckpt else None
    config = hub.folder_config(model, ckpt, args.threshold, eval_doc)
    card = dict(body=hub.card_body(config, args.push or args.out, eval_doc, args.data_licence or None))
    model.save_pretrained(args.out, config=config, model_card_kwargs=card)
    print(f'Wrote {args.out}: model.safetensors, config.json, README.md ({config["kind"]}, {config["model"]}'
          f'{f"; metrics of {eval_path}" if eval_doc else "; no eval.json: no metrics in the card"})')
    if args.push:
        try:
            url = model.push_to_hub(args.push, config=config, model_card_kwargs=card, private=args.private or None)
        except Exception as e:  # noqa: BLE001 -- every Hub failure (login, network, rights) is one line
            raise error(f'--push {args.push}: the upload failed ({type(e).__name__}: '
                        f'{(str(e).strip().splitlines() or [""])[0][:200]}); {args.out} is written') from None
        print(f'Pushed to {url}')


def export_onnx(model, ckpt, args):
    if 'detector' not in ckpt:
        raise error(f'--checkpoint {args.checkpoint}: --format onnx exports a detector (a main_finetune.py '
                    f'checkpoint); this is a pre-training checkpoint')
    threshold = hub.DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    try:
        diff = onnx_runtime.export(model, ckpt['detector'], args.out, threshold)
    except ValueError as e:
        raise error(str(e)) from None
    print(f'Wrote {args.out} (opset {onnx_runtime.OPSET}, dynamic batch); onnxruntime matches PyTorch on '
          f'{onnx_runtime.CHECK_FACES} faces: largest p(fake) difference {diff:.1e}')


def main(argv=None):
    args = argparse.ArgumentParser('MIFAE export', parents=[get_args_parser()]).parse_args(argv)
    check_args(args)
    model, ckpt = load_model(args.checkpoint)
    (export_hub if args.format == 'hub' else export_onnx)(model, ckpt, args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
