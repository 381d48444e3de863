"""Temporary (not committed): tune the stage-2 end-to-end test config on a GPU."""
import csv, json, os, sys, time
sys.path.insert(0, '.'); sys.path.insert(0, 'tests')
import torch
from util.synthetic_faces import generate_dataset
import main_pretrain, main_finetune
from conftest import pretrain_args
LIMIT = float(sys.argv[1]) if len(sys.argv) > 1 else 270
T0 = time.time()
m = generate_dataset('/tmp/d', num_identities=40, frames_per_identity=4, size=128, seed=0, fake_ratio=0.5,
                     test_fraction=0.25, progress=False)
print('gen', round(time.time() - T0, 1), flush=True)
args = pretrain_args(m['pretrain'], '/tmp/pre', epochs=6, save_freq=3)
args.device, args.compile, args.amp, args.num_workers = 'cuda', 'off', 'none', 4
main_pretrain.main(args)
print('pretrain', round(time.time() - T0, 1), flush=True)
rows = list(csv.DictReader(open(m['train'])))
ids = sorted({r['identity'] for r in rows})
val_ids = set(ids[::5])
for name, keep in (('ft_train', lambda r: r['identity'] not in val_ids), ('ft_val', lambda r: r['identity'] in val_ids)):
    with open(f'/tmp/d/{name}.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=rows[0].keys()); w.writeheader(); w.writerows([r for r in rows if keep(r)])
print('val ids', len(val_ids), 'of', len(ids), flush=True)
C = []
def cfg(name, size=112, tb=1, lr=1e-3, ep=15, full=False, val=True, seed=0, rw=0.5, extra=()):
    C.append((name, size, tb, lr, ep, full, val, seed, rw, list(extra)))
cfg('full_lr5e-4_128', size=128, full=True, lr=5e-4)
cfg('tb4_lr5e-4_128', size=128, tb=4, lr=5e-4)
cfg('tb1_lr1e-3_128', size=128)
cfg('tb2_lr1e-3_128', size=128, tb=2)
cfg('full_lr5e-4_112', full=True, lr=5e-4)
cfg('tb1_lr1e-3_112')
cfg('full_lr2e-4_128', size=128, full=True, lr=2e-4)
cfg('tb1_lr3e-3_128_e20', size=128, lr=3e-3, ep=20)
cfg('full_lr5e-4_128_s1', size=128, full=True, lr=5e-4, seed=1)
for name, size, tb, lr, ep, full, val, seed, rw, extra in C:
    if time.time() - T0 > LIMIT:
        print('time limit: stopped before', name, flush=True); break
    out = f'/tmp/ft_{name}'
    argv = ['--finetune', '/tmp/pre/checkpoint-last.pth', '--train_manifest', '/tmp/d/ft_train.csv' if val else m['train'],
            '--test_manifests', str(m['test']), '--output_dir', out, '--input_size', str(size), '--batch_size', '16',
            '--epochs', str(ep), '--lr', str(lr), '--warmup_epochs', '1', '--num_workers', '4', '--device', 'cuda',
            '--compile', 'off', '--amp', 'none', '--quiet', '--print_freq', '5', '--no_auto_resume', '--seed', str(seed),
            '--trainable_blocks', str(tb), '--recon_weight', str(rw)] + (['--val_manifest', '/tmp/d/ft_val.csv'] if val else []) \
           + (['--full_finetune'] if full else []) + extra
    t = time.time()
    import contextlib, io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        r = main_finetune.main(main_finetune.get_args_parser().parse_args(argv))
    log = [json.loads(l) for l in open(f'{out}/log.txt')]
    test = next(iter(r['test'].values()))
    print(json.dumps(dict(name=name, test_auc=round(test['auc'], 4), test_vauc=round(test['video_auc'], 4),
                          test_acc=round(test['acc'], 3), best_val=r.get('best_val_auc'),
                          val=[round(x['val_auc'], 3) for x in log if x.get('val_auc') is not None],
                          ce=[round(x['ce_loss'], 3) for x in log][::3], rec=[round(x['recon_loss'], 3) for x in log][::5],
                          s=round(time.time() - t, 1))), flush=True)
if len(sys.argv) < 3:
    sys.exit(0)
# the CUDA defaults: compile on, bf16, then --eval with compile
t = time.time()
argv = ['--finetune', '/tmp/pre/checkpoint-last.pth', '--train_manifest', '/tmp/d/ft_train.csv', '--val_manifest',
        '/tmp/d/ft_val.csv', '--output_dir', '/tmp/ft_cuda', '--input_size', '128', '--batch_size', '16', '--epochs', '2',
        '--lr', '1e-3', '--num_workers', '4', '--quiet', '--no_auto_resume', '--mixup', '0.8', '--cutmix', '1.0']
r = main_finetune.main(main_finetune.get_args_parser().parse_args(argv))
print('cuda default train', round(time.time() - t, 1), r.get('best_val_auc'), flush=True)
t = time.time()
argv = ['--eval', '--resume', '/tmp/ft_cuda/checkpoint-best.pth', '--test_manifests', str(m['test']), '--output_dir',
        '/tmp/ft_cuda_eval', '--num_workers', '4', '--quiet']
r = main_finetune.main(main_finetune.get_args_parser().parse_args(argv))
print('cuda default eval', round(time.time() - t, 1), flush=True)
print('total', round(time.time() - T0, 1))
