"""Sharing a detector: Hub-format folders (round trip, config and card, push, Hub ids offline, the scripts that
take them) and ONNX (metadata, parity with PyTorch through predict.py, one-line refusals). Offline throughout:
the Hub's cache is a folder made here, and the push goes to a stand-in for the Hub's API."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import app
import export
import models_vit
import predict
import util.hub as hub
import util.onnx_runtime as onnx_runtime
from conftest import ROOT

FOLDER_FILES = ['README.md', 'config.json', 'model.safetensors']


@pytest.fixture(scope='module')
def shared(micro_checkpoints, tmp_path_factory):
    """The micro checkpoints exported: dict(detector=folder, autoencoder=folder, onnx=file)."""
    out = tmp_path_factory.mktemp('shared')
    for key, fmt, dest in (('detector', 'hub', 'detector'), ('autoencoder', 'hub', 'autoencoder'),
                           ('detector', 'onnx', 'detector.onnx')):
        argv = ['--checkpoint', str(micro_checkpoints[key]), '--format', fmt, '--out', str(out / dest)]
        assert export.main(argv) == 0
    return dict(detector=out / 'detector', autoencoder=out / 'autoencoder', onnx=out / 'detector.onnx')


@pytest.fixture(scope='module')
def media(tmp_path_factory):
    """A folder with the page's examples (astronaut photo, 2-s clip), a faceless photo and a text file named .jpg."""
    d = tmp_path_factory.mktemp('share_media')
    app.write_examples(d)
    cv2.imwrite(str(d / 'blank.png'), np.full((200, 200, 3), 127, np.uint8))
    (d / 'notes.jpg').write_text('not an image')
    return d


def probs_of(model, x):
    with torch.no_grad():
        return model.fake_prob(model(x))


def one_line(excinfo):
    msg = str(excinfo.value)
    assert '\n' not in msg and 'Traceback' not in msg
    return msg


# ---------------------------------------------------------------------- Hub-format folders
def test_folder_round_trip_gives_identical_probabilities(micro_checkpoints, shared):
    folder = shared['detector']
    assert sorted(os.listdir(folder)) == FOLDER_FILES
    model, meta = models_vit.load_detector(micro_checkpoints['detector'])
    again, meta_again = models_vit.load_detector(folder)                 # what predict.py and --eval do
    direct = models_vit.MIFAEDetector.from_pretrained(str(folder))       # the mixin, as a user would
    x = onnx_runtime.check_faces(meta, n=8)
    p = probs_of(model, x)
    assert p.max() - p.min() > 0.1                                       # a spread, so equality means something
    assert torch.equal(p, probs_of(again, x)) and torch.equal(p, probs_of(direct, x))
    assert meta_again == dict(meta, threshold=hub.DEFAULT_THRESHOLD)

    config = json.loads((folder / 'config.json').read_text())
    assert config['kind'] == 'mifae_detector' and config['model'] == 'vit_micro_patch8' and config['img_size'] == 64
    assert config['mean'] == list(meta['mean']) and config['std'] == list(meta['std'])
    assert config['threshold'] == 0.5 and config['recipe'] == 'light' and config['epoch'] == 3
    assert config['train_data'] == dict(files=['train.csv'], datasets=['synthetic'])
    assert config['eval_data']['files'] == ['train.csv']

    card = (folder / 'README.md').read_text()
    auc = json.loads((micro_checkpoints['detector'].parent / 'eval.json').read_text())['sets']['train']['auc']
    assert card.startswith('---\n') and 'library_name: mifae-forensics' in card
    row = next(line for line in card.splitlines() if line.startswith('| train |'))   # eval.json's metrics table
    assert f' {auc:.4f} |' in row
    assert f'python predict.py --checkpoint {folder} ' in card and '## Intended use and limits' in card
    assert f'synthetic: {hub.DATA_LICENCES["synthetic"]}' in card


def test_autoencoder_folder_is_taken_where_its_checkpoint_is(micro_checkpoints, shared):
    import models_mae
    from Visualization import visualize
    folder = shared['autoencoder']
    assert sorted(os.listdir(folder)) == FOLDER_FILES
    saved = torch.load(micro_checkpoints['autoencoder'], weights_only=False)
    config = json.loads((folder / 'config.json').read_text())
    assert config['kind'] == 'mifae_autoencoder' and config['mask_ratio'] == 0.75
    # main_pretrain.py --init_from
    model = models_mae.build_autoencoder(saved['args'])
    models_mae.load_pretrained(model, str(folder))
    assert all(torch.equal(v, saved['model'][k]) for k, v in model.state_dict().items())
    # main_finetune.py --finetune: the encoder and the decoder of the detector, and the model name
    det = models_vit.MODELS['vit_micro_patch8'](img_size=64)
    info = models_vit.load_pretrained(det, str(folder))
    assert info['decoder_loaded'] and info['norm_pix_loss'] is False
    assert torch.equal(det.blocks[0].attn.qkv.weight, saved['model']['blocks.0.attn.qkv.weight'])
    assert torch.equal(det.decoder_pred.weight, saved['model']['decoder_pred.weight'])
    assert hub.load_checkpoint(str(folder), mmap=True)['args']['model'] == 'mae_vit_micro_patch8'
    # Visualization/visualize.py --checkpoint
    viz = visualize.load_autoencoder(str(folder))
    assert torch.equal(viz.decoder_embed.weight, saved['model']['decoder_embed.weight'])


def test_push_uploads_the_folder(micro_checkpoints, tmp_path, monkeypatch):
    """--push goes through the mixin's push_to_hub; the Hub's API is a stand-in that records the upload."""
    import huggingface_hub.hub_mixin as mixin

    class Api:
        uploads = []

        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type('Repo', (), dict(repo_id=repo_id))

        def upload_folder(self, repo_id, folder_path, **kw):
            card = (folder_path / 'README.md').read_text()
            Api.uploads.append((repo_id, sorted(os.listdir(folder_path)),
                                json.loads((folder_path / 'config.json').read_text())['kind'],
                                'MIFAEDetector.from_pretrained("lab/mifae-micro")' in card))
            return f'https://huggingface.co/{repo_id}/commit/0'

    monkeypatch.setattr(mixin, 'HfApi', Api)
    export.main(['--checkpoint', str(micro_checkpoints['detector']), '--format', 'hub', '--out', str(tmp_path / 'a'),
                 '--push', 'lab/mifae-micro'])
    assert Api.uploads == [('lab/mifae-micro', FOLDER_FILES, 'mifae_detector', True)]     # the card names the id
    assert sorted(os.listdir(tmp_path / 'a')) == FOLDER_FILES

    def refuse(self, *a, **kw):
        raise PermissionError('401 Client Error: Unauthorized\nmore lines')
    monkeypatch.setattr(Api, 'upload_folder', refuse)
    with pytest.raises(SystemExit) as e:
        export.main(['--checkpoint', str(micro_checkpoints['detector']), '--format', 'hub',
                     '--out', str(tmp_path / 'b'), '--push', 'lab/mifae-micro'])
    assert '--push lab/mifae-micro: the upload failed (PermissionError: 401' in one_line(e)
    assert sorted(os.listdir(tmp_path / 'b')) == FOLDER_FILES                 # the folder is kept


@pytest.mark.slow
def test_hub_ids_offline(shared, media, tmp_path):
    """A Hub id is read from the local cache with HF_HUB_OFFLINE=1; one that is not cached ends in one line."""
    cache = tmp_path / 'hub'
    snapshot = cache / 'models--lab--mifae-micro' / 'snapshots' / ('0' * 40)   # the Hub cache's layout
    shutil.copytree(shared['detector'], snapshot)
    (cache / 'models--lab--mifae-micro' / 'refs').mkdir()
    (cache / 'models--lab--mifae-micro' / 'refs' / 'main').write_text('0' * 40)
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache))

    def run(checkpoint):
        return subprocess.run([sys.executable, 'predict.py', '--checkpoint', checkpoint, str(media / 'astronaut.png'),
                               '--quiet', '--device', 'cpu'], cwd=ROOT, env=env, capture_output=True, text=True)
    missing = run('lab/not-cached')
    assert missing.returncode != 0 and missing.stdout == ''
    assert missing.stderr.count('\n') == 1 and 'Traceback' not in missing.stderr
    assert 'lab/not-cached' in missing.stderr and 'HF_HUB_OFFLINE=1' in missing.stderr
    cached, folder = run('lab/mifae-micro'), run(str(shared['detector']))
    assert cached.returncode == 0 and 'p(fake) = ' in cached.stdout
    assert cached.stdout == folder.stdout


def test_scripts_refuse_what_is_not_a_model_in_one_line(micro_checkpoints, shared, tmp_path):
    assert 'without config.json and model.safetensors' in hub.source_problem(str(tmp_path), 'resume')
    assert hub.source_problem(str(shared['detector']), 'resume') is None
    assert hub.source_problem('runs/missing.pth', 'resume') == '--resume runs/missing.pth does not exist'
    bad = tmp_path / 'bad'
    shutil.copytree(shared['detector'], bad)
    config = json.loads((bad / 'config.json').read_text())
    (bad / 'config.json').write_text(json.dumps(dict(config, depth=config['depth'] - 1)))
    with pytest.raises(ValueError) as e:
        models_vit.load_detector(str(bad))
    assert 'model.safetensors does not fit its config.json' in one_line(e)
    with pytest.raises(SystemExit) as e:
        predict.main(['--checkpoint', str(shared['autoencoder']), str(tmp_path)])
    assert 'not a fine-tuning checkpoint' in one_line(e)


# ---------------------------------------------------------------------- ONNX
def test_onnx_file_states_its_input_and_takes_any_batch(micro_checkpoints, shared):
    import onnx
    graph = onnx.load(str(shared['onnx']))
    assert max(o.version for o in graph.opset_import if o.domain in ('', 'ai.onnx')) >= onnx_runtime.OPSET >= 17
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    doc = json.loads({p.key: p.value for p in graph.metadata_props}['mifae'])
    model, meta = models_vit.load_detector(micro_checkpoints['detector'])
    assert {k: doc[k] for k in ('model', 'input_size', 'mean', 'std')} == \
        {k: (list(meta[k]) if k in ('mean', 'std') else meta[k]) for k in ('model', 'input_size', 'mean', 'std')}
    assert doc['threshold'] == 0.5 and '(x - mean) / std' in doc['preprocessing']
    x = onnx_runtime.check_faces(meta, n=5, seed=3)
    ort = onnx_runtime.OnnxDetector(shared['onnx'])
    assert np.abs(ort.probs(x.numpy()) - probs_of(model, x).numpy()).max() <= onnx_runtime.TOLERANCE


@pytest.mark.slow
def test_predict_gives_the_same_results_with_onnx(micro_checkpoints, shared, media, tmp_path):
    def run(checkpoint):
        args = predict.get_args_parser().parse_args(['--checkpoint', str(checkpoint), str(media), '--frames', '4',
                                                     '--quiet', '--device', 'cpu'])
        return predict.run(args)
    torch_res, onnx_res = run(micro_checkpoints['detector']), run(shared['onnx'])
    kinds = {r['path'].rsplit('/', 1)[-1]: (r['type'], r['status']) for r in torch_res}
    assert kinds == {'astronaut.png': ('image', 'ok'), 'astronaut_clip.mp4': ('video', 'ok'),
                     'blank.png': ('image', 'no_face'), 'notes.jpg': ('image', 'unreadable')}
    for a, b in zip(torch_res, onnx_res, strict=True):
        assert (a['path'], a['status'], a.get('verdict')) == (b['path'], b['status'], b.get('verdict'))
        if a['status'] != 'ok':
            continue
        assert abs(a['prob'] - b['prob']) <= onnx_runtime.TOLERANCE
        items = 'faces' if a['type'] == 'image' else 'frames'
        assert [f['box'] for f in a[items]] == [f['box'] for f in b[items]]
        assert np.abs(np.array([f['prob'] for f in a[items]]) - [f['prob'] for f in b[items]]).max() <= 1e-4
        if a['type'] == 'video':
            assert [(t['track'], t['frames'], t['decides']) for t in a['tracks']] == \
                [(t['track'], t['frames'], t['decides']) for t in b['tracks']]
    with pytest.raises(SystemExit) as e:
        predict.main(['--checkpoint', str(shared['onnx']), str(media / 'astronaut.png'), '--heatmap', str(tmp_path)])
    assert '--heatmap needs the PyTorch detector' in one_line(e)


def test_export_refuses_in_one_line(micro_checkpoints, shared, tmp_path, monkeypatch):
    det, mae = str(micro_checkpoints['detector']), str(micro_checkpoints['autoencoder'])
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(micro_checkpoints['detector'].read_bytes()[:5000])
    cases = [
        (['--checkpoint', mae, '--format', 'onnx', '--out', str(tmp_path / 'x.onnx')], 'exports a detector'),
        (['--checkpoint', det, '--format', 'onnx', '--out', str(tmp_path / 'x.onnx'), '--push', 'a/b'],
         '--push uploads a Hub-format folder'),
        (['--checkpoint', det, '--format', 'hub', '--out', str(shared['detector'])], 'not an empty folder'),
        (['--checkpoint', det, '--format', 'onnx', '--out', str(tmp_path / 'x.txt')], 'name the ONNX file'),
        (['--checkpoint', str(tmp_path / 'none.pth'), '--format', 'hub', '--out', str(tmp_path / 'y')], 'no such file'),
        (['--checkpoint', str(truncated), '--format', 'hub', '--out', str(tmp_path / 'z')],
         'not a readable PyTorch checkpoint'),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as e:
            export.main(argv)
        assert expected in one_line(e), argv
    monkeypatch.setattr(onnx_runtime, 'TOLERANCE', -1.0)             # any difference now fails the check
    with pytest.raises(SystemExit) as e:
        export.main(['--checkpoint', det, '--format', 'onnx', '--out', str(tmp_path / 'far.onnx')])
    assert 'differs from PyTorch' in one_line(e) and not (tmp_path / 'far.onnx').exists()
