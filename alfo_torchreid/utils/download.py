"""Atomic, checksum-verified downloads (annotation files, model weights).

:func:`download` streams into a temporary file beside the destination
(:class:`alfo_torchreid.utils.atomic.PartialFile`), checks the byte count and the
sha256, fsyncs, and only then renames it into place: the destination is either
the complete verified file or left as it was, never a partial download.
"""
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request

from alfo_torchreid.utils.atomic import PartialFile
from alfo_torchreid.utils.errors import DownloadError

CHUNK_BYTES = 1 << 16


def sha256_of(path):
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b''):
            digest.update(chunk)
    return digest.hexdigest()


def download(url, dest, sha256=None, progress=True, timeout=60.0):
    """Downloads ``url`` to ``dest`` atomically.

    Args:
        url (str): what to fetch (http, https or file).
        dest (str): the file to write; its folder is created if needed. An
            existing file is replaced only by a complete, verified download.
        sha256 (str, optional): expected hex digest; None skips the check.
        progress (bool or callable): True draws a progress bar on stderr; a
            callable is called as ``progress(received_bytes, total_bytes_or_None)``
            after every chunk (and, when the server announced no size, once more
            at the end with ``total = received``); False reports nothing.
        timeout (float): seconds a connection may stall before failing.

    Returns:
        str: the absolute path of ``dest``.

    Raises:
        DownloadError: offline, HTTP error, interrupted transfer or checksum
            mismatch; the message names the URL and where to put the file by hand.
    """
    dest = os.path.abspath(os.path.expanduser(str(dest)))
    report = _ProgressBar(os.path.basename(dest)) if progress is True else progress or None
    try:
        partial = PartialFile(dest)
    except OSError as exc:
        raise DownloadError(f'cannot write to "{os.path.dirname(dest)}" to download {url}: '
                            f'{exc}') from None
    with partial:
        digest = _fetch(url, dest, partial.file, report, timeout)
        _sync(partial, dest)
        if sha256 is not None and digest != sha256.lower():
            raise DownloadError(
                f'{url} has sha256 {digest}, expected {sha256}; not saved to "{dest}" '
                '(a changed or corrupted file: download it again or get it from the source)')
        try:
            partial.replace()
        except OSError as exc:
            raise DownloadError(f'cannot save the download of {url} as "{dest}": {exc}') from None
    return dest


def _fetch(url, dest, out, report, timeout):
    """Streams ``url`` into the open file ``out``; returns the hex sha256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = _content_length(response)
            received = 0
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b''):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if report:
                    report(received, total)
            if report and total is None:
                report(received, received)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f'{url} answered HTTP {exc.code} {exc.reason}; '
                            f'nothing was saved to "{dest}"') from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DownloadError(
            f'could not download {url} ({type(exc).__name__}: {exc}). If this machine is '
            f'offline, download it elsewhere and put it at "{dest}"') from None
    if total is not None and received != total:
        raise DownloadError(
            f'download of {url} was interrupted after {received} of {total} bytes; '
            f'nothing was saved to "{dest}" (try again, or put the file there by hand)')
    return digest.hexdigest()


def _sync(partial, dest):
    """Flushes the :class:`PartialFile` to the disk, so that the renamed file is
    complete after a crash."""
    try:
        partial.sync()
    except OSError as exc:
        raise DownloadError(f'cannot write the download for "{dest}": {exc}') from None


def _content_length(response):
    """The announced size in bytes, or None when absent or malformed."""
    try:
        return int(response.headers['Content-Length'])
    except (TypeError, ValueError):
        return None


class _ProgressBar:
    """A one-line progress report on stderr, redrawn when the percentage changes."""

    def __init__(self, name, stream=None, width=30):
        self.name = name
        self.stream = stream or sys.stderr
        self.width = width
        self.shown = None

    def __call__(self, received, total):
        if total:
            percent = min(100, received * 100 // total)
            if percent == self.shown:
                return
            self.shown = percent
            filled = self.width * percent // 100
            line = (f'{self.name} [{"#" * filled}{"." * (self.width - filled)}] {percent:3d}% '
                    f'{received / 1024:.1f}/{total / 1024:.1f} KiB')
        else:
            line = f'{self.name} {received / 1024:.1f} KiB'
        end = '\n' if total is not None and received >= total else ''
        self.stream.write(f'\r{line}{end}')
        self.stream.flush()
