"""A run folder (``data.save_dir``) that one run owns at a time.

:class:`RunFolder` takes an advisory ``fcntl`` lock on ``<folder>/.lock`` for
the run's lifetime (the OS releases it when the process ends, killed or not, so
a dead run never blocks the next; a second run on a locked folder is refused,
naming the holder's pid). Entering creates nothing; once the run has passed its
checks, :meth:`RunFolder.claim` creates the folder, writes the pid into its
lock and removes the hidden ``.part`` files that a process killed while saving
left behind, in the folders a run writes. A gallery index folder is locked the
same way.

:func:`read_history` reads ``history.jsonl``, dropping a torn last line;
:func:`resumed_history` gives it ending at the checkpoint a run resumes from,
which :func:`restore_history` writes.
"""
import contextlib
import fcntl
import glob
import json
import os
import os.path as osp
import stat
import time
import warnings

from alfo_torchreid.utils.atomic import PARTIAL_NAME, write_file
from alfo_torchreid.utils.errors import RunFolderError

LOCK = '.lock'
HISTORY = 'history.jsonl'


class RunFolderInUse(RunFolderError):
    """Another live process holds the run folder."""


class RunFolder:
    """Owns ``path`` while the ``with`` block runs.

    Entering creates nothing: it takes the lock of a folder that already has
    one, so that a second process is refused at once, and leaves the lock
    file's content alone. :meth:`claim`, once the process has passed its
    checks and goes ahead, creates the folder, takes its lock if not yet held,
    writes this process's pid into it and removes what interrupted saves left.
    A run refused before :meth:`claim` leaves no folder and no lock file behind.

    Args:
        path (str): the folder; made by :meth:`claim` when missing.
        kind, option, user (str): the words of the error messages: what the
            folder is, the option that names it and what uses it (a run
            folder's ``'run folder'``, ``'data.save_dir'``, ``'run'``).

    Attributes:
        locked_at (float): when :meth:`claim` ran (seconds since the epoch).

    Raises (on entering, or from :meth:`claim`):
        RunFolderError: ``path`` is empty, cannot be created or written to.
        RunFolderInUse: another process holds the lock.
    """

    def __init__(self, path, kind='run folder', option='data.save_dir', user='run'):
        if not str(path).strip():
            raise RunFolderError(f'{option} is empty: name the folder the {user} writes to')
        self.path = osp.abspath(osp.expanduser(str(path)))
        self.kind, self.option, self.user = kind, option, user
        self.locked_at = None
        self._lock = None

    def __enter__(self):
        self._check_usable()
        if osp.isfile(osp.join(self.path, LOCK)):
            self._lock = self._acquire()
        return self

    def __exit__(self, *exc_info):
        # closing the descriptor releases the lock; the file stays (harmless)
        if self._lock is not None:
            self._lock.close()

    def claim(self, subfolders=()):
        """The process goes ahead: the folder is made and locked (if it was
        not), the lock file names this process, and stale ``.part`` files of
        the folder and its ``subfolders`` are removed
        (:meth:`remove_stale_partial_files`)."""
        self.locked_at = time.time()
        if self._lock is None:
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as exc:
                raise self._unusable(exc.strerror or exc) from None
            self._lock = self._acquire()
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        self.remove_stale_partial_files(subfolders)
        return self

    def _check_usable(self):
        """Refuses a path that is not a folder, or under a file."""
        existing = self.path
        while not osp.exists(existing):
            existing = osp.dirname(existing)
        if not osp.isdir(existing):
            raise self._unusable(f'"{existing}" is not a folder')

    def _unusable(self, reason):
        return RunFolderError(f'cannot use "{self.path}" as the {self.kind} ({self.option}): '
                              f'{reason}')

    def _acquire(self):
        try:
            lock = open(osp.join(self.path, LOCK), 'a+')
        except OSError as exc:
            raise self._unusable(exc.strerror or exc) from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or 'unknown'
            lock.close()
            raise RunFolderInUse(
                f'{self.kind} "{self.path}" is in use by another {self.user} (pid {holder}): '
                f'wait for it to end, or give this {self.user} another {self.option}') from None
        return lock

    def remove_stale_partial_files(self, subfolders=(), before=None):
        """Removes the temporary files of :class:`alfo_torchreid.utils.atomic.PartialFile`
        (named as :data:`~alfo_torchreid.utils.atomic.PARTIAL_NAME`, regular files,
        nothing else) last written before ``before`` (seconds since the epoch;
        default :attr:`locked_at`): a process holding the folder writes only its
        own, so older ones belong to a dead one. :meth:`claim` calls it, once
        the process has passed its checks: a refused run removes nothing.

        Only the folder itself and its ``subfolders`` (names or glob patterns:
        the folders the process writes into) are searched, never deeper, never
        through a symbolic link, nor a subfolder locked on its own.

        Args:
            subfolders (tuple of str): e.g. a run's ``('model', 'visrank_*')``.

        Returns:
            list of the removed paths.
        """
        before = self.locked_at if before is None else before
        folders = [self.path] + [
            folder for pattern in subfolders for folder in sorted(glob.glob(
                osp.join(glob.escape(self.path), pattern)))
            if not osp.islink(folder) and osp.isdir(folder) and
            not osp.lexists(osp.join(folder, LOCK))]
        removed = []
        for folder in folders:
            for name in sorted(os.listdir(folder)):
                path = osp.join(folder, name)
                if PARTIAL_NAME.fullmatch(name) and _written_before(path, before):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
                        removed.append(path)
        if removed:
            print(f'Removed {len(removed)} unfinished file(s) of an interrupted save: '
                  f'{", ".join(osp.relpath(p, self.path) for p in removed)}')
        return removed


def _written_before(path, before):
    """Whether ``path`` is a regular file (not a link) last modified before ``before``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_mtime < before


def read_history(save_dir):
    """The per-epoch records of ``<save_dir>/history.jsonl`` (the last record of each
    epoch, in epoch order).

    A last line cut short by a crash is dropped with a warning (the epoch it
    described is trained again on resume); a bad line elsewhere is an error.

    Raises:
        RunFolderError: a line other than the last is not a JSON record.
    """
    path = osp.join(save_dir, HISTORY)
    return _records(_bytes_of(path), path)


def _records(data, path):
    """The per-epoch records of the bytes ``data`` of the history file ``path``
    (see :func:`read_history`)."""
    lines = data.decode('utf-8', errors='replace').splitlines()
    by_epoch = {}
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            by_epoch[int(record['epoch'])] = record
        except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: 1e999
            if number < len(lines):
                raise RunFolderError(f'"{path}" line {number} is not a history record '
                                     f'({line[:60]!r}); the file is damaged') from None
            warnings.warn(f'"{path}": dropped its last line, cut short by an interrupted '
                          f'write ({line[:60]!r})')
    return [by_epoch[k] for k in sorted(by_epoch)]


def resumed_history(save_dir, epoch, record=None):
    """``history.jsonl`` ending at the checkpoint a run resumes from: the
    records of the epochs up to it, the later ones (which the run trains
    again) dropped. Reads only: a run calls it before it writes anything, so a
    damaged file is refused with the folder as it was; :func:`restore_history`
    writes the result once the run goes ahead.

    A torn last line is dropped with a warning. The engine writes an epoch's
    line just after its checkpoint, so a crash between the two leaves the
    checkpoint's epoch without a line: ``record``, the line the checkpoint
    keeps, is put back.

    Args:
        save_dir (str): the run folder.
        epoch (int): the epoch of the checkpoint resumed from (1-based).
        record (dict): that epoch's history record, as the checkpoint holds
            it (None for checkpoints written before it did, and for snapshots).

    Returns:
        The file's new content (bytes), or None when it needs no change.

    Raises:
        RunFolderError: a line other than the last is not a history record.
    """
    path = osp.join(save_dir, HISTORY)
    data = _bytes_of(path)
    records = _records(data, path)
    kept = [r for r in records if int(r['epoch']) <= epoch]
    if len(kept) < len(records):
        print(f'"{path}": dropped the lines of the epochs after {epoch}, which this run '
              'trains again')
    if record is not None and epoch not in [int(r['epoch']) for r in kept]:
        kept.append(record)
        print(f'"{path}": put back the line of epoch {epoch}, kept in its checkpoint '
              '(the run stopped between the two writes)')
    content = ''.join(json.dumps(r) + '\n' for r in kept).encode()
    return None if content == data else content


def restore_history(save_dir, content):
    """Writes ``content``, :func:`resumed_history`'s result, into
    ``history.jsonl`` atomically (nothing when it is None)."""
    if content is not None:
        write_file(osp.join(save_dir, HISTORY), content)


def _bytes_of(path):
    """The content of ``path``; empty when it does not exist."""
    if not osp.isfile(path):
        return b''
    with open(path, 'rb') as f:
        return f.read()
