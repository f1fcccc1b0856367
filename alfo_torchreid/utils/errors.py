"""The errors this package raises for bad input, and how the tools report them.

Each names the file or value at fault and what was expected. The command-line
tools run through :func:`run_command`, which prints an :class:`AlfoError` as
one line and exits with status 2.
"""
import contextlib
import os
import signal
import sys
import threading


class AlfoError(Exception):
    """Base class of every error about the user's input."""


class ConfigError(AlfoError, ValueError):
    """A configuration key or value that cannot be used."""


class DatasetError(AlfoError):
    """A dataset folder or split that is missing, empty or malformed."""


class AttributeFileError(AlfoError, ValueError):
    """An attribute annotation file that cannot be used."""


class ImageReadError(AlfoError, OSError):
    """An image that is missing, truncated or not an image."""


class CheckpointError(AlfoError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that needs full unpickling, which can run arbitrary code."""


class DownloadError(AlfoError):
    """A file that could not be fetched or failed its checksum."""


class RunFolderError(AlfoError):
    """A run folder that cannot be used, is in use, or holds a damaged file."""


class TrainingError(AlfoError):
    """Training cannot go on (e.g. a loss became NaN or infinite)."""


class SearchError(AlfoError, ValueError):
    """A gallery index, search filter or query that cannot be used."""


class ExportError(AlfoError):
    """An exported model that does not reproduce PyTorch's outputs, or an
    export format whose libraries are missing."""


class OutputError(AlfoError, ValueError):
    """An output path that would write over one of the command's own inputs."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by ``timeout``, schedulers, torchrun), raised in the main
    thread so that it ends a tool as Ctrl-C does."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Raises :class:`Terminated` on SIGTERM within the ``with`` block (in the
    main thread; elsewhere Python cannot handle signals and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:  # None: a handler set outside Python, which cannot be put back but as the default
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def run_command(action, debug=False, interrupted='interrupted: what was saved is kept'):
    """Runs a command-line tool's ``action()`` and returns the tool's exit status.

    Every tool of this package runs through here, so that bad input and a
    machine that refuses (a full disk, a read-only folder) end the same way.

    Args:
        action (callable): the tool's work, called without arguments.
        debug (bool): re-raise instead of printing one line (the traceback shows).
        interrupted (str): the line printed on Ctrl-C.

    Returns:
        int: 0 when ``action`` returns; 2 when it raises an :class:`AlfoError`
        or an ``OSError`` from the file system, after printing ``error:
        <message>`` as one line on stderr (stdout is flushed first; in a
        process of a torchrun job of several, ``error: [rank R of W] <message>``);
        130 on Ctrl-C (SIGINT) and 143 on SIGTERM (128 + the signal's number, as
        a shell reports it), after printing the ``interrupted`` line on stderr:
        both stop the tool the same way, keeping every file saved so far.
    """
    try:
        with sigterm_as_interrupt():
            action()
    except (AlfoError, OSError) as exc:
        if debug:
            raise
        sys.stdout.flush()
        print(f'error: {_rank_prefix()}{one_line(exc)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        sys.stdout.flush()
        print(interrupted, file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    return 0


def _rank_prefix():
    """``'[rank R of W] '`` in a process of a torchrun job of W > 1 processes
    (torchrun's environment: ``RANK``, ``WORLD_SIZE``), else ``''``."""
    world = os.environ.get('WORLD_SIZE', '1')
    return f'[rank {os.environ["RANK"]} of {world}] ' if 'RANK' in os.environ and world != '1' \
        else ''


def one_line(exc):
    """The message of ``exc`` on one line.

    A DataLoader worker's error reaches the main process re-raised with the
    worker's whole traceback as its message ("Caught X in DataLoader worker
    process 0. Original Traceback ..."); its last line is the original message.
    An ``OSError`` is said with the file it concerns.
    """
    message = str(exc)
    if 'Original Traceback' in message:
        last = message.strip().splitlines()[-1]
        message = last.split(': ', 1)[1] if ': ' in last else last
    elif isinstance(exc, OSError) and not isinstance(exc, AlfoError) and exc.strerror:
        target = f': "{exc.filename}"' if exc.filename else ''
        message = f'{exc.strerror}{target}'
    return ' '.join(message.split())
