"""Files written so that a reader sees either the old or the new complete file.

The content goes into a fresh hidden file beside the destination (the same
folder, so that the rename is atomic), is flushed to the disk, and only then
renamed over the destination; the folder is fsynced so that the rename itself
survives a crash. If anything fails before the rename, the temporary file (and
any folder made for it) is removed and the destination is left as it was.
"""
import contextlib
import os
import re
import secrets

# the name of a PartialFile, and nothing else: '.<name of dest>.<12 hex digits>.part'
PARTIAL_NAME = re.compile(r'\..+\.[0-9a-f]{12}\.part')


class PartialFile:
    """A new file beside ``dest`` that becomes ``dest`` only by :meth:`replace`.

    Created with ``open(..., 'xb')``, so it gets the umask's mode, as ``dest``
    would (``mkstemp``'s 0600 would hide it from the group). Use it as a context
    manager: leaving the block without :meth:`replace` (an exception, Ctrl-C)
    removes it::

        with PartialFile(dest) as partial:
            partial.file.write(data)
            partial.sync()
            partial.replace()

    :func:`replacing` is that block for a writer that needs nothing but the file.

    Attributes:
        dest (str): the absolute path of the destination.
        path (str): the temporary file, ``.<name of dest>.<12 hex digits>.part``
            (:data:`PARTIAL_NAME`).
        file: the temporary file, open for binary writing.

    Raises:
        OSError: the folder cannot be created or written to.
    """

    def __init__(self, dest):
        self.dest = os.path.abspath(dest)
        folder, name = os.path.split(self.dest)
        self.path = os.path.join(folder, f'.{name}.{secrets.token_hex(6)}.part')
        self._made = _missing_folders(folder)
        os.makedirs(folder, exist_ok=True)
        try:
            self.file = open(self.path, 'xb')
        except OSError:
            self._remove_made_folders()
            raise

    def sync(self):
        """Flushes what was written to the disk, so that the renamed file is
        complete even after a power failure."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def replace(self):
        """Closes the file and renames it over :attr:`dest`, durably."""
        self.file.close()
        os.replace(self.path, self.dest)
        fsync_folder(os.path.dirname(self.dest))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        try:
            self.file.close()
        finally:
            if os.path.exists(self.path):  # not replaced: an error
                os.remove(self.path)
                self._remove_made_folders()

    def _remove_made_folders(self):
        """Removes the folders this file's creation made, deepest first, as
        long as they are empty: a failed write leaves the tree as it was."""
        for folder in reversed(self._made):
            try:
                os.rmdir(folder)
            except OSError:
                return


def _missing_folders(folder):
    """The ancestors of ``folder`` (itself included) that do not exist yet, top first."""
    missing = []
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing[::-1]


@contextlib.contextmanager
def replacing(dest):
    """A binary file to write in a ``with`` block; it becomes ``dest`` (synced,
    renamed) when the block ends without an error, and is removed otherwise."""
    with PartialFile(dest) as partial:
        yield partial.file
        partial.sync()
        partial.replace()


def write_file(dest, data):
    """Writes ``data`` (bytes) to ``dest`` through a :class:`PartialFile`."""
    with replacing(dest) as f:
        f.write(data)


def fsync_folder(folder):
    """Makes a rename in ``folder`` durable (POSIX); a no-op where folders
    cannot be opened or synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
