"""Files the project writes: atomically, into folders checked before any work starts.

Invariant: a file this project writes is either the complete new version or the complete previous one,
never a half-written mix. `atomic_write` writes a temporary file in the same folder, flushes it to disk
(fsync) and renames it over the target (os.replace, atomic on POSIX). A failure on the way (disk full,
permissions, a kill) leaves the previous file untouched; a temporary file left by a killed earlier write
of the same name (its process gone) is removed by the next one.

Every failure is one line naming the file (WriteError), with the mount point when the disk is full.
"""
import errno
import os
import socket
from pathlib import Path


class WriteError(OSError):
    """A write that failed; str() is a one-line message naming the file and saying the old one is intact."""


def mount_point(path):
    """The mount point holding `path` (the device a full disk is on), e.g. '/' or '/data'."""
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return str(p)


def _no_space(e):
    """Whether an exception or any exception it was raised from is ENOSPC (torch.save's writer wraps it)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or 'No space left on device' in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _alive(pid):
    """Whether the process of a temporary file's pid suffix still runs (then the file is its, not stale)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:                                            # another user's process
        return True
    return True


def atomic_write(path, write_fn, mode='w', **open_kw):
    """Write `path` by calling write_fn(file object) on a temporary file in the same folder, then rename.

    mode 'w' (text; newline='' unless given) or 'wb'. Raises WriteError (one line) when the write fails
    for lack of space or permission; other exceptions of write_fn propagate. Either way the previous
    file, if any, is untouched and the temporary file is gone. -> Path"""
    path = Path(path)
    for stale in path.parent.glob(f'.{path.name}.tmp*'):       # left by a killed earlier write
        if not _alive(stale.name.rsplit('.tmp', 1)[1]):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    if 'b' not in mode:
        open_kw.setdefault('newline', '')
        open_kw.setdefault('encoding', 'utf-8')
    existed = path.exists()
    try:
        with open(tmp, mode, **open_kw) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        kept = f'the previous {path.name} is intact' if existed else 'nothing was written'
        if _no_space(e):
            raise WriteError(f'no space left on {mount_point(path)} while writing {path}; {kept}') from e
        if isinstance(e, OSError):
            raise WriteError(f'cannot write {path} ({e.strerror or e}); {kept}') from e
        raise
    return path


def write_text(path, text):
    """atomic_write of a str. -> Path"""
    return atomic_write(path, lambda f: f.write(text))


def write_bytes(path, data):
    """atomic_write of bytes. -> Path"""
    return atomic_write(path, lambda f: f.write(data), mode='wb')


def output_dir_problem(folder):
    """Why `folder` cannot take this run's files (created if missing), or None when it can: '' is no
    folder, a file is not one, and a folder must accept a new file (probed, as a read-only mount only
    shows when written to)."""
    if str(folder) == '':
        return "'' names no folder"
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f'cannot write to {folder}: it is a file, not a folder'
    probe = folder / f'.write_probe-{socket.gethostname()}-{os.getpid()}'     # unique on a shared file system
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b'')
        probe.unlink(missing_ok=True)
    except OSError as e:
        return f'cannot write to {folder} ({e.strerror or e})'
    return None
