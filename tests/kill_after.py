"""Run a project script and SIGKILL it (no clean-up, as a power cut) right after a checkpoint file is in place.

    python tests/kill_after.py checkpoint-best.pth:2 main_finetune.py --flags ...

kills the process the second time checkpoint-best.pth has been written (util.checkpoint.save) or copied
(util.checkpoint.copy) into place. The fault comes from here, the test side: the shipped modules carry no hook.
"""
import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv):
    target, script, args = argv[0], argv[1], argv[2:]
    name, _, times = target.partition(':')
    sys.path.insert(0, str(ROOT))
    import util.checkpoint as checkpoint
    placed = {'n': 0}

    def killing(write):
        def wrapped(*a, **kw):
            path = write(*a, **kw)
            if Path(path).name == name:
                placed['n'] += 1
                if placed['n'] == int(times or 1):
                    os.kill(os.getpid(), signal.SIGKILL)
            return path
        return wrapped

    checkpoint.save, checkpoint.copy = killing(checkpoint.save), killing(checkpoint.copy)
    sys.argv = [script] + args
    runpy.run_path(str(ROOT / script), run_name='__main__')


if __name__ == '__main__':
    main(sys.argv[1:])
