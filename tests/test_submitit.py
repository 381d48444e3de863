"""Slurm launchers (submitit_pretrain.py, submitit_finetune.py, util/slurm.py) on the CPU, without Slurm.

submitit's LocalExecutor runs the real pre-training entry point in separate processes (gloo); the requeue
path is driven by the pre-emption signal submitit listens to (SIGUSR2), as Slurm would send it.
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip('submitit')

from util import slurm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED = ('--nodes 8 --use_volta32 --batch_size 64 --model mae_vit_base_patch16 --norm_pix_loss --mask_ratio 0.75 '
        '--mask_radius 16 --epochs 800 --warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05').split()
TINY = ['--model', 'mae_vit_tiny_patch16', '--input_size', '112', '--batch_size', '8', '--num_workers', '0',
        '--device', 'cpu', '--warmup_epochs', '1', '--quiet', '--dist_timeout', '60', '--save_freq', '100']


def subset_manifest(manifest, n, out):
    """The first n rows of a manifest, paths made absolute, written to `out`."""
    manifest = Path(manifest)
    with open(manifest, newline='') as f:
        rows = list(csv.DictReader(f))[:n]
    for r in rows:
        r['path'] = str(manifest.parent / r['path'])
        r['landmarks'] = str(manifest.parent / r['landmarks']) if r['landmarks'] else ''
    with open(out, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def finetune_available():
    return (ROOT / 'main_finetune.py').is_file()


def clear_rank_env(monkeypatch):
    """Unset the torchrun variables now, and again after the test (also when the test itself set them)."""
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.setenv(k, '')                   # recorded, so that teardown removes what the test sets
        monkeypatch.delenv(k)


@pytest.fixture
def local_job_env(monkeypatch):
    """Processes started by the LocalExecutor inherit this environment: 1 thread each, no stray rank variables."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    clear_rank_env(monkeypatch)
    return monkeypatch


def wait_until(cond, job, deadline_s, what):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > deadline_s:
            raise AssertionError(f'{what}: not within {deadline_s} s; stdout so far:\n{job.stdout()}')
        time.sleep(0.1)


def logged_epochs(out):
    log = Path(out) / 'log.txt'
    return [json.loads(line)['epoch'] for line in log.read_text().splitlines()] if log.is_file() else []


def task_pids(controller_pid):
    """The processes a LocalExecutor controller started (its children)."""
    pids = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            ppid = int(stat.read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == controller_pid:
            pids.append(int(stat.parent.name))
    return pids


# ---------------------------------------------------------------------- flags, dry run, bad input
@pytest.mark.parametrize('launcher,entry_flag', [('submitit_pretrain', '--mask_radius'),
                                                 ('submitit_finetune', '--finetune')])
def test_help_lists_slurm_and_entry_flags(launcher, entry_flag, capsys):
    if launcher == 'submitit_finetune' and not finetune_available():
        pytest.fail('main_finetune.py is missing')
    module = __import__(launcher)
    with pytest.raises(SystemExit) as e:
        module.main(['--help'])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ('--job_dir', '--nodes', '--ngpus', '--timeout', '--partition', '--use_volta32', '--comment',
                 '--account', '--qos', '--dry_run', '--batch_size', '--blr', '--output_dir', '--resume', entry_flag):
        assert flag in text, f'{launcher} --help lacks {flag}'


def test_dry_run_parses_the_seed_command(tmp_path, capsys):
    import submitit_pretrain
    job_dir = Path('/shared/mifae/jobs/%j')           # only printed: a dry run creates nothing
    assert submitit_pretrain.main(['--job_dir', str(job_dir)] + SEED + ['--data_path', str(tmp_path / 'faces.csv'),
                                                                        '--dry_run']) is None
    out = capsys.readouterr().out
    params = json.loads(out.split('Slurm parameters: ', 1)[1].splitlines()[0])
    assert params['nodes'] == 8 and params['tasks_per_node'] == 8 and params['gpus_per_node'] == 8
    assert params['slurm_constraint'] == 'volta32gb' and params['timeout_min'] == 4320
    args = json.loads(out.split('Arguments: ', 1)[1].splitlines()[0])
    assert args['model'] == 'mae_vit_base_patch16' and args['norm_pix_loss'] and args['mask_radius'] == 16
    assert args['epochs'] == 800 and args['device'] == 'cuda' and args['output_dir'] == str(job_dir)
    assert 'effective batch size 4096 = 64 per GPU x 8 nodes x 8 GPUs x 1 accum_iter' in out
    assert 'lr 2.400e-03' in out                                     # 1.5e-4 * 4096 / 256
    assert 'does not exist' in out and 'nothing submitted' in out    # data path checked, but only a warning
    assert not Path('/shared/mifae').exists()


def test_finetune_dry_run(capsys):
    if not finetune_available():
        pytest.fail('main_finetune.py is missing')
    import submitit_finetune
    submitit_finetune.main(['--job_dir', '/shared/mifae_ft/%j', '--ngpus', '4', '--batch_size', '32',
                            '--accum_iter', '2', '--finetune', '/shared/mifae/checkpoint-last.pth',
                            '--train_manifest', 'ffpp_train.csv', '--val_manifest', 'ffpp_val.csv', '--dry_run'])
    out = capsys.readouterr().out
    params = json.loads(out.split('Slurm parameters: ', 1)[1].splitlines()[0])
    assert params['nodes'] == 1 and params['tasks_per_node'] == 4 and params['name'] == 'mifae_finetune'
    blr = json.loads(out.split('Arguments: ', 1)[1].splitlines()[0])['blr']
    assert 'effective batch size 256 = 32 per GPU x 1 nodes x 4 GPUs x 2 accum_iter' in out
    assert f'lr {blr:.3e}' in out and 'nothing submitted' in out


def bad(argv, capsys):
    import submitit_pretrain
    with pytest.raises(SystemExit) as e:
        submitit_pretrain.main(argv)
    msg = str(e.value)
    assert msg.startswith('submitit_pretrain.py: error: ') and '\n' not in msg, msg
    return msg


def test_bad_launcher_input(tmp_path, synthetic_data, monkeypatch, capsys):
    data = ['--data_path', str(synthetic_data['pretrain'])]
    assert 'shared by all nodes' in bad(data + ['--nodes', '2'], capsys)
    shared = ['--job_dir', '/shared/mifae/%j']        # these fail before anything is created
    assert '--ngpus 0 = 0 processes' in bad(shared + ['--ngpus', '0'] + data, capsys)
    assert '--nodes 0 x' in bad(shared + ['--nodes', '0'] + data, capsys)
    assert 'node-local' in bad(['--job_dir', '/tmp/jobs'] + data, capsys)
    assert '--nodes must be 1' in bad(shared + ['--cluster', 'local', '--nodes', '2'] + data, capsys)

    # A partition Slurm rejects: sbatch (a stand-in here) fails, the launcher says why in one line.
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'srun').write_text('#!/bin/sh\nexit 0\n')
    (bin_dir / 'sbatch').write_text('#!/bin/sh\necho "sbatch: error: invalid partition specified: nosuch" >&2\n'
                                    'echo "sbatch: error: Batch job submission failed: Invalid partition name '
                                    'specified" >&2\nexit 1\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.setattr(slurm, 'NODE_LOCAL', ())      # pytest's tmp_path lies in /tmp
    msg = bad(['--job_dir', str(tmp_path / 'shared' / '%j'), '--partition', 'nosuch'] + data, capsys)
    assert 'Slurm rejected the job (--partition nosuch)' in msg and 'Invalid partition name' in msg
    capsys.readouterr()


@pytest.mark.slow
def test_unreachable_rendezvous_times_out_naming_the_address(tmp_path, synthetic_data):
    """Rank 1 of 2 with nobody at the rendezvous: a bounded wait, then a message naming where it waited."""
    with socket.socket() as s:                          # a localhost port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    init_file = tmp_path / 'rdv_init'
    script = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
import main_pretrain
for url in ('env://', {init_file.as_uri()!r}):
    args = main_pretrain.get_args_parser().parse_args(['--data_path', {str(synthetic_data['pretrain'])!r},
        '--output_dir', {str(tmp_path)!r}, '--device', 'cpu', '--dist_timeout', '2', '--dist_url', url])
    t0 = time.time()
    try:
        main_pretrain.main(args)
    except RuntimeError as e:
        print(f'{{time.time() - t0:.1f}} s: {{e}}', flush=True)
"""
    env = dict(os.environ, RANK='1', WORLD_SIZE='2', LOCAL_RANK='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(port), OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stdout.splitlines() if 'could not join the process group' in ln]
    assert len(lines) == 2, r.stdout + r.stderr
    assert f'127.0.0.1:{port}' in lines[0] and init_file.as_uri() in lines[1]
    for ln in lines:
        assert 'within 2 s' in ln and float(ln.split(' s:')[0]) < 30


# ---------------------------------------------------------------------- inside a job (environment only)
def fake_slurm_task(monkeypatch, rank, ntasks=16, nodes=2, job_id='4242'):
    monkeypatch.setenv('SUBMITIT_EXECUTOR', 'slurm')
    for k, v in dict(SLURM_JOB_ID=job_id, SLURM_NTASKS=ntasks, SLURM_JOB_NUM_NODES=nodes,
                     SLURM_NODEID=rank // (ntasks // nodes), SLURM_PROCID=rank, SLURM_LOCALID=rank % (ntasks // nodes),
                     SLURM_JOB_NODELIST='gpu[07-08]').items():
        monkeypatch.setenv(k, str(v))
    clear_rank_env(monkeypatch)


def launcher_args(tmp_path, monkeypatch, *extra):
    monkeypatch.setattr(slurm, 'NODE_LOCAL', ())      # pytest's tmp_path lies in /tmp
    parser = slurm.build_parser('main_pretrain', 'submitit_pretrain.py', None)
    args = parser.parse_args(['--job_dir', str(tmp_path / '%j'), '--data_path', 'x.csv'] + list(extra))
    return slurm.finalize_args(args, 'main_pretrain', 'submitit_pretrain.py')


def test_slurm_task_becomes_torchrun_variables(tmp_path, monkeypatch):
    import submitit
    args = launcher_args(tmp_path, monkeypatch, '--nodes', '2')
    fake_slurm_task(monkeypatch, rank=11)
    env = submitit.JobEnvironment()
    a = slurm.Trainer('main_pretrain', args).job_args(env.job_id)
    slurm.setup_distributed(a, env)
    assert (os.environ['RANK'], os.environ['LOCAL_RANK'], os.environ['WORLD_SIZE']) == ('11', '3', '16')
    assert os.environ['MASTER_ADDR'] == 'gpu07' and os.environ['MASTER_PORT'] == str(20000 + 4242)
    assert a.dist_url == 'env://' and a.output_dir == str(tmp_path / '4242')
    assert args.output_dir == str(tmp_path / '%j')            # the submitted arguments stay untouched

    args = launcher_args(tmp_path, monkeypatch, '--rendezvous', 'file')
    a = slurm.Trainer('main_pretrain', args).job_args(env.job_id)
    slurm.setup_distributed(a, env)
    assert a.dist_url == (tmp_path / '4242' / f'{args.rendezvous_id}_init').as_uri()


def test_rank_variables_do_not_leak():
    """The test above set RANK, WORLD_SIZE, ... in this process: later tests must not see them."""
    assert os.environ.get('WORLD_SIZE') != '16' and os.environ.get('MASTER_ADDR') != 'gpu07'


def test_checkpoint_method_requeues_a_fresh_trainer(tmp_path, monkeypatch):
    args = launcher_args(tmp_path, monkeypatch, '--resume', '/elsewhere/start.pth')
    fake_slurm_task(monkeypatch, rank=0)
    trainer = slurm.Trainer('main_pretrain', args)
    delayed = trainer.checkpoint()                 # nothing written yet: keep the original --resume
    assert delayed.function is not trainer and delayed.function.args.resume == '/elsewhere/start.pth'
    out = tmp_path / '4242'
    out.mkdir()
    (out / 'checkpoint-last.pth').write_bytes(b'')
    delayed = trainer.checkpoint()
    new = delayed.function
    assert isinstance(new, slurm.Trainer) and new.entry == 'main_pretrain'
    assert new.args.resume == str(out / 'checkpoint-last.pth')
    assert new.args.rendezvous_id != args.rendezvous_id and args.resume == '/elsewhere/start.pth'
    args.eval = True                               # an evaluation job keeps scoring the checkpoint it was given
    assert slurm.Trainer('main_pretrain', args).checkpoint().function.args.resume == '/elsewhere/start.pth'


@pytest.mark.slow
# ---------------------------------------------------------------------- real runs with the LocalExecutor
def test_local_executor_two_tasks_one_epoch(tmp_path, synthetic_data, local_job_env):
    data = subset_manifest(synthetic_data['pretrain'], 32, tmp_path / 'faces.csv')
    job = slurm.submit('main_pretrain', ['--cluster', 'local', '--job_dir', str(tmp_path / 'job' / '%j'),
                                         '--ngpus', '2', '--timeout', '10', '--epochs', '1',
                                         '--data_path', str(data)] + TINY)
    try:
        wait_until(job.done, job, 240, 'the 2-task job to finish')
        results = job.results()
    finally:
        job.cancel()
    out = tmp_path / 'job' / job.job_id
    assert [r['epoch'] for r in results] == [0, 0]
    logs = [job.task(k).stdout() for k in range(2)]
    for k, text in enumerate(logs):
        assert f'rank {k} of 2; rendezvous' in text
        assert f'| distributed init (rank {k} of 2, gloo)' in text
    addr = logs[0].split('rendezvous ')[1].split()[0]
    assert addr in logs[1]                                        # one process group
    assert 'effective batch size 16 = 8 x 1 accum x 2 processes' in logs[0]
    assert sorted(p.name for p in out.glob('checkpoint-*.pth')) == ['checkpoint-0.pth', 'checkpoint-last.pth']
    assert logged_epochs(out) == [0]                              # one log line, from rank 0 only
    assert list(out.glob('events.out.tfevents.*'))


def resumed_from(text):
    """(checkpoint, epoch in it, epoch continued at) for each 'Resumed from' line of a log."""
    out = []
    for line in (text or '').splitlines():
        if line.startswith('Resumed from '):
            path, rest = line[len('Resumed from '):].split(' (epoch ')
            out.append((path, int(rest.split(')')[0]), int(rest.rsplit(' ', 1)[1])))
    return out


@pytest.mark.slow
def test_requeue_resumes_from_checkpoint_last_twice(tmp_path, synthetic_data, local_job_env):
    """Two pre-emption signals: each requeued run resumes from checkpoint-last.pth after its newest epoch."""
    data = subset_manifest(synthetic_data['pretrain'], 16, tmp_path / 'faces.csv')
    epochs, out = 5, tmp_path / 'job'
    job = slurm.submit('main_pretrain', ['--cluster', 'local', '--job_dir', str(out), '--ngpus', '1',
                                         '--timeout', '10', '--epochs', str(epochs), '--data_path', str(data)] + TINY)
    seen = []                                   # newest logged epoch when each signal was sent
    try:
        for k in range(2):
            def run_k_finished_an_epoch():
                res, log = resumed_from(job.stdout()), logged_epochs(out)
                return len(res) == k and bool(log) and (k == 0 or log[-1] >= res[-1][2])
            wait_until(run_k_finished_an_epoch, job, 240, f'run {k} to finish an epoch')
            assert not job.done(), 'the job ended before it could be interrupted'
            seen.append(logged_epochs(out)[-1])
            for pid in task_pids(job._process.pid):
                os.kill(pid, signal.SIGUSR2)    # what Slurm sends ahead of a pre-emption or time-out
            wait_until(lambda: len(resumed_from(job.stdout())) == k + 1, job, 240, f'run {k + 1} to resume')
        wait_until(job.done, job, 240, 'the job to finish')
        result = job.result()
    finally:
        job.cancel()
    text = job.stdout()
    assert text.count('Requeueing job') == 2 and text.count('the next run resumes from') == 2
    resumed = resumed_from(text)
    for (path, ckpt_epoch, cont), newest in zip(resumed, seen):
        assert path == str(out / 'checkpoint-last.pth')
        assert ckpt_epoch >= newest and cont == ckpt_epoch + 1    # no finished epoch lost, none repeated
    assert resumed[1][1] > resumed[0][1]
    log = logged_epochs(out)
    assert log == sorted(set(log)) and log[0] == 0 and log[-1] == epochs - 1
    assert result['epoch'] == epochs - 1


def test_paths_become_absolute_and_node_local_output_is_refused(tmp_path, monkeypatch, capsys):
    """The job may start on another node in another folder: every path flag is made absolute, and an output
    folder only this node sees is refused (a requeue elsewhere would not find checkpoint-last.pth)."""
    import submitit_finetune
    monkeypatch.chdir(tmp_path)
    submitit_finetune.main(['--job_dir', '/shared/mifae_ft/%j', '--finetune', 'pre/checkpoint-last.pth',
                            '--train_manifest', 'train.csv', '--test_manifests', 'a.csv', 'b.csv', '--dry_run'])
    args = json.loads(capsys.readouterr().out.split('Arguments: ', 1)[1].splitlines()[0])
    assert args['finetune'] == str(tmp_path / 'pre' / 'checkpoint-last.pth')
    assert args['train_manifest'] == str(tmp_path / 'train.csv')
    assert args['test_manifests'] == [str(tmp_path / 'a.csv'), str(tmp_path / 'b.csv')]
    msg = bad(['--job_dir', '/shared/mifae/%j', '--output_dir', '/tmp/out', '--data_path', 'faces.csv'], capsys)
    assert '--output_dir /tmp/out is node-local' in msg
