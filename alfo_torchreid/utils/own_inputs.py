"""No tool writes over one of its own inputs.

Each tool names the files it is about to write and the files it reads, and
calls :func:`refuse_writing_over_inputs` before it writes anything:
``tools/export.py --out`` naming the weights, or ``tools/search.py query
--out`` naming the query photo or the index's ``index.json``, would otherwise
replace them.
"""
import os

from alfo_torchreid.utils.errors import OutputError


def refuse_writing_over_inputs(outputs, inputs):
    """Raises OutputError when a file of ``outputs`` is one of ``inputs``.

    Two paths name the same file when they reach the same inode (through
    links, ``..`` or another spelling); a path that names no file (yet) is
    nobody's input.

    Args:
        outputs (iterable of str): the files the command will write.
        inputs (dict): ``{path: what it is}`` of the files it reads, e.g.
            ``{'run/model/model.pth.tar-60': 'the weights (--weights)'}``.
    """
    read = {}
    for path, what in inputs.items():
        key = _file_key(path)
        if key is not None:
            read.setdefault(key, (path, what))
    for out in outputs:
        key = _file_key(out)
        if key in read:
            path, what = read[key]
            raise OutputError(f'--out would write "{out}" over {what} "{path}", which this '
                              'command reads: give another --out')


def _file_key(path):
    """(device, inode) of the file ``path`` names, links followed; None when none."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino
