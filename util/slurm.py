"""Slurm launch through submitit, shared by submitit_pretrain.py and submitit_finetune.py.

The launcher parses the entry point's own flags plus the Slurm ones below, submits a `Trainer`, prints
the job id and where its logs go. Each Slurm task (one per GPU) turns submitit's JobEnvironment into
the RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT variables that torchrun would have set
(or a file rendezvous in the job folder) and calls the entry point's main(args); the entry point does not
know who started it. On pre-emption or time-out submitit calls Trainer.checkpoint() on rank 0, which
requeues a fresh Trainer resuming from output_dir/checkpoint-last.pth (written atomically every epoch).

submitit is imported inside functions only: training and evaluation never import this module, and the
machines that run them need not have submitit.
"""
import argparse
import contextlib
import copy
import importlib
import io
import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_LOCAL = ('/tmp', '/var/tmp', '/dev/shm')         # never visible from the other nodes


# ---------------------------------------------------------------------- flags
def build_parser(entry, prog, description):
    """The entry point's parser (every flag of `entry.get_args_parser()`) plus the Slurm group."""
    module = importlib.import_module(entry)
    parser = argparse.ArgumentParser(prog, parents=[module.get_args_parser()], description=description)
    g = parser.add_argument_group('slurm (submitit)', 'Here --output_dir defaults to --job_dir, and --device to cuda '
                                                      'on Slurm.')
    g.add_argument('--job_dir', default='', type=str,
                   help='job folder on a file system shared by all nodes: submitit pickles and logs, and by '
                        'default output_dir and TensorBoard logs; %%j becomes the Slurm job id')
    g.add_argument('--nodes', default=1, type=int, help='number of nodes (default 1)')
    g.add_argument('--ngpus', default=8, type=int, help='GPUs (= processes) per node (default 8)')
    g.add_argument('--timeout', default=4320, type=int, help='time limit of one allocation in minutes (default 4320)')
    g.add_argument('--partition', default=None, type=str, help='Slurm partition (default: the cluster default)')
    g.add_argument('--use_volta32', action='store_true', help='request 32 GB V100s (constraint volta32gb)')
    g.add_argument('--constraint', default=None, type=str, help='further Slurm --constraint features')
    g.add_argument('--comment', default=None, type=str, help='Slurm job comment')
    g.add_argument('--account', default=None, type=str, help='Slurm account, where the cluster wants one')
    g.add_argument('--qos', default=None, type=str, help='Slurm quality of service, where the cluster wants one')
    g.add_argument('--cpus_per_task', default=10, type=int, help='CPU cores per process (default 10)')
    g.add_argument('--mem_gb', default=None, type=int, help='memory per node in GB (default 40 x ngpus)')
    g.add_argument('--job_name', default=None, type=str, help=f'Slurm job name (default mifae_{entry.split("_")[-1]})')
    g.add_argument('--max_timeouts', default=30, type=int,
                   help='requeue after at most this many time-outs (default 30; pre-emptions do not count)')
    g.add_argument('--rendezvous', default='tcp', choices=['tcp', 'file'],
                   help="tcp: the first node's hostname and --master_port; file: a file in the job folder")
    g.add_argument('--master_port', default=None, type=int,
                   help='rendezvous port on the first node (default: derived from the job id)')
    g.add_argument('--cluster', default='slurm', choices=['slurm', 'local'],
                   help="local: submitit's LocalExecutor on this machine (one node, --ngpus processes), for tests")
    g.add_argument('--dry_run', action='store_true',
                   help='print the Slurm parameters, the final arguments, the effective batch size and lr; '
                        'submit nothing')
    # Parsed on a login node without GPUs: decide the device and output folder after parsing.
    parser.set_defaults(device=None, output_dir=None)
    return parser


# flags holding paths of either entry point, made absolute before submission
PATH_FLAGS = ('output_dir', 'log_dir', 'data_path', 'init_from', 'resume', 'finetune', 'decoder',
              'train_manifest', 'val_manifest', 'test_manifests')


def absolute(path):
    return os.path.abspath(os.path.expanduser(str(path)))


def is_node_local(path):
    return any(path == p or path.startswith(p + '/') for p in NODE_LOCAL)


def fail(prog, msg):
    raise SystemExit(f'{prog}: error: {msg}')


def finalize_args(args, entry, prog):
    """Check the launcher flags (one-line reasons) and fill the defaults that depend on them."""
    if not args.job_dir:
        fail(prog, '--job_dir is required: a folder on a file system shared by all nodes '
                   '(submitit pickles, logs and checkpoints go there)')
    args.job_dir = os.path.abspath(os.path.expanduser(args.job_dir))
    if args.cluster == 'slurm' and is_node_local(args.job_dir):
        fail(prog, f'--job_dir {args.job_dir} is node-local; use a folder on a file system shared by all nodes')
    if args.nodes < 1 or args.ngpus < 1:
        fail(prog, f'--nodes {args.nodes} x --ngpus {args.ngpus} = {max(args.nodes, 0) * max(args.ngpus, 0)} '
                   f'processes; need at least 1 of each')
    if args.cluster == 'local' and args.nodes != 1:
        fail(prog, f'--cluster local runs on this machine only: --nodes must be 1, got {args.nodes}')
    if args.timeout < 1:
        fail(prog, f'--timeout {args.timeout} must be at least 1 minute')
    if args.master_port is not None and not 0 < args.master_port < 65536:
        fail(prog, f'--master_port {args.master_port} is not a TCP port')
    if args.device is None:      # the login node usually has no GPU: Slurm jobs train on CUDA
        args.device = ('cuda' if args.cluster == 'slurm'
                       else importlib.import_module(entry).get_args_parser().get_default('device'))
    if args.output_dir is None:
        args.output_dir = args.job_dir
    for name in PATH_FLAGS:                     # the job may start elsewhere: no relative paths
        value = getattr(args, name, None)
        if value:
            setattr(args, name, [absolute(v) for v in value] if isinstance(value, list) else absolute(value))
    for name in ('output_dir', 'log_dir'):      # a requeued job may land on another node
        if args.cluster == 'slurm' and getattr(args, name, None) and is_node_local(getattr(args, name)):
            fail(prog, f'--{name} {getattr(args, name)} is node-local; a requeued job on another node would not '
                       f'find its checkpoints there')
    args.job_name = args.job_name or f'mifae_{entry.split("_")[-1]}'
    args.world_size = world_size(args)          # informative: each task reads WORLD_SIZE from the job
    args.rendezvous_id = uuid.uuid4().hex
    return args


def world_size(args):
    return args.nodes * args.ngpus


def effective_batch(args):
    """(effective batch, lr) as the entry point computes them: batch x nodes x gpus x accum; blr x eff / 256."""
    eff = args.batch_size * world_size(args) * getattr(args, 'accum_iter', 1)
    lr = args.lr if getattr(args, 'lr', None) is not None else args.blr * eff / 256
    return eff, lr


def describe_batch(args):
    eff, lr = effective_batch(args)
    how = 'set by --lr' if getattr(args, 'lr', None) is not None else f'blr {args.blr:.3e} x {eff} / 256'
    return (f'effective batch size {eff} = {args.batch_size} per GPU x {args.nodes} nodes x {args.ngpus} GPUs x '
            f'{getattr(args, "accum_iter", 1)} accum_iter; lr {lr:.3e} ({how})')


def executor_parameters(args):
    """Parameters for submitit.AutoExecutor.update_parameters (None = not set)."""
    on_gpu = str(args.device).startswith('cuda')
    params = dict(name=args.job_name, nodes=args.nodes, tasks_per_node=args.ngpus,
                  gpus_per_node=args.ngpus if on_gpu else 0, cpus_per_task=args.cpus_per_task,
                  timeout_min=args.timeout)
    if args.cluster == 'slurm':
        constraint = ','.join(c for c in ([args.constraint] if args.constraint else []) +
                              (['volta32gb'] if args.use_volta32 else []))
        params.update(mem_gb=args.mem_gb or 40 * args.ngpus, slurm_signal_delay_s=120,
                      slurm_partition=args.partition, slurm_constraint=constraint or None,
                      slurm_comment=args.comment, slurm_account=args.account, slurm_qos=args.qos)
    return {k: v for k, v in params.items() if v is not None}


# ---------------------------------------------------------------------- inside the job
def expand_job_id(path, job_id):
    return path.replace('%j', str(job_id)) if isinstance(path, str) else path


def default_port(job_id):
    """A port every task of a job derives alike from the job id (20000-39999)."""
    digits = re.sub(r'\D', '', str(job_id)) or '0'
    return 20000 + int(digits) % 20000


class Trainer:
    """One Slurm task: distributed variables from the job, then `entry.main(args)`; requeued on a signal."""

    def __init__(self, entry, args):
        self.entry = entry        # module name, e.g. 'main_pretrain'
        self.args = args          # as submitted; main() gets a copy, so a requeue starts from these

    def job_args(self, job_id):
        args = copy.deepcopy(self.args)
        for name in ('job_dir', 'output_dir', 'log_dir'):
            setattr(args, name, expand_job_id(getattr(args, name, None), job_id))
        return args

    def __call__(self):
        import submitit
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        module = importlib.import_module(self.entry)
        env = submitit.JobEnvironment()
        args = self.job_args(env.job_id)
        setup_distributed(args, env)
        return module.main(args)

    def checkpoint(self):
        """submitit's requeue hook (rank 0, on pre-emption or time-out): a fresh Trainer that resumes
        from output_dir/checkpoint-last.pth when it exists (the entry point writes it every epoch)."""
        import submitit
        job_id = submitit.JobEnvironment().job_id
        args = copy.deepcopy(self.args)
        last = Path(expand_job_id(args.output_dir, job_id)) / 'checkpoint-last.pth'
        if last.is_file() and not getattr(args, 'eval', False):   # an evaluation keeps the checkpoint it scores
            args.resume = str(last)
        args.rendezvous_id = uuid.uuid4().hex           # a file rendezvous must not reuse the old file
        print(f'Requeueing job {job_id}: the next run resumes from {args.resume or "scratch"}', flush=True)
        return submitit.helpers.DelayedSubmission(type(self)(self.entry, args))


def setup_distributed(args, env):
    """Set the torchrun variables from a submitit JobEnvironment; util.misc.init_distributed_mode reads them."""
    os.environ['RANK'] = str(env.global_rank)
    os.environ['LOCAL_RANK'] = str(env.local_rank)
    os.environ['WORLD_SIZE'] = str(env.num_tasks)
    os.environ['LOCAL_WORLD_SIZE'] = str(env.num_tasks // max(env.num_nodes, 1))
    if args.rendezvous == 'file':
        args.dist_url = (Path(args.job_dir) / f'{args.rendezvous_id}_init').as_uri()
        where = args.dist_url
    else:
        os.environ['MASTER_ADDR'] = env.hostnames[0]
        os.environ['MASTER_PORT'] = str(args.master_port or default_port(env.raw_job_id))
        args.dist_url = 'env://'
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    print(f'| submitit task: job {env.job_id}, node {env.node} ({env.hostname}), local rank {env.local_rank}, '
          f'rank {env.global_rank} of {env.num_tasks}; rendezvous {where}', flush=True)


# ---------------------------------------------------------------------- submission
def submit(entry, argv=None, prog=None, description=None):
    """Parse, check and submit; returns the submitit Job (None for --dry_run)."""
    prog = prog or f'submitit_{entry.split("_")[-1]}.py'
    parser = build_parser(entry, prog, description)
    args = finalize_args(parser.parse_args(argv), entry, prog)
    params = executor_parameters(args)
    module = importlib.import_module(entry)
    checked, problem = copy.deepcopy(args), None    # what the job's first step makes of the arguments (recipe)
    if str(args.device).startswith('cuda'):         # the job's GPUs are on the compute nodes, not here
        checked.device = 'cpu'
    try:
        getattr(module, 'prepare_args', module.check_args)(checked)
    except SystemExit as e:
        problem = str(e)

    print(f'{prog}: {args.cluster} job "{args.job_name}": {args.nodes} node(s) x {args.ngpus} GPU(s) = '
          f'{world_size(args)} processes, {params["timeout_min"]} min per allocation')
    print(describe_batch(checked))
    print(f'job folder {args.job_dir}; output_dir {args.output_dir}; TensorBoard {args.log_dir or args.output_dir}'
          + (' (%j = job id)' if '%j' in args.job_dir + args.output_dir else ''))
    if args.dry_run:
        print('Slurm parameters: ' + json.dumps(params, sort_keys=True))
        print('Arguments: ' + json.dumps(vars(args), sort_keys=True, default=str))
        if problem:
            print(f'warning: the job would stop at start: {problem}')
        print('Dry run: nothing submitted.')
        return None
    if problem:
        raise SystemExit(problem)

    import submitit
    if args.cluster == 'slurm':
        missing = [c for c in ('sbatch', 'srun') if shutil.which(c) is None]
        if missing:
            fail(prog, f'cannot submit: {" and ".join(missing)} not found on this machine '
                       f'(run on a Slurm login node; --dry_run checks the command anywhere)')
    try:
        Path(args.job_dir.split('%j')[0]).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(prog, f'--job_dir {args.job_dir}: cannot create it ({e.strerror or e})')
    try:
        executor = submitit.AutoExecutor(folder=args.job_dir, cluster=args.cluster,
                                         slurm_max_num_timeout=args.max_timeouts,
                                         local_max_num_timeout=args.max_timeouts)
        executor.update_parameters(**params)
        # Tasks unpickle util.slurm.Trainer and import the entry point: the repository must be importable.
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get('PYTHONPATH', '')) if p)
        with submitit.helpers.environment_variables(PYTHONPATH=path), \
                contextlib.redirect_stderr(io.StringIO()) as said:    # sbatch's own complaint: summarised below
            job = executor.submit(Trainer(entry, args))
        sys.stderr.write(said.getvalue())
    except submitit.core.utils.FailedJobError as e:      # sbatch said no (its stderr is the message)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = lines[-1] if lines else 'sbatch failed without a message'
        hint = f' (--partition {args.partition})' if args.partition and 'partition' in reason.lower() else ''
        fail(prog, f'Slurm rejected the job{hint}: {reason}')
    except (RuntimeError, OSError, ValueError) as e:
        fail(prog, f'submission failed: {type(e).__name__}: {" ".join(str(e).split())}')
    out = expand_job_id(args.output_dir, job.job_id)
    print(f'Submitted job {job.job_id}')
    print(f'logs: {job.paths.stdout} (and .err); output and checkpoints: {out}', flush=True)
    return job


def main(entry, argv=None, prog=None, description=None):
    """Command line: submit and print the job id; a --cluster local job is also waited for."""
    job = submit(entry, argv, prog, description)
    if job is not None and type(job).__name__ == 'LocalJob':
        print('waiting for the local job ...', flush=True)
        stats = job.results()[0]
        print(f'local job {job.job_id} finished: {stats}')
    return job
