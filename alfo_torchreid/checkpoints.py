"""Training state that survives crashes: atomic checkpoints and exact resume.

torchreid's ``save_checkpoint`` writes in place, so a crash while saving
destroys the previous file. Here every checkpoint is written atomically
(:mod:`alfo_torchreid.atomic`): a reader sees either the old complete file or
the new complete file.

Besides torchreid's keys (``state_dict``, ``epoch``, ``rank1``, ``optimizer``,
``scheduler``) a checkpoint holds the random number generators' states, so a
resumed run draws the same batches and augmentations as an uninterrupted one,
and what the weights were built for (``num_classes``, the attribute schema),
so that a checkpoint of another dataset is refused with a clear message.
"""
import random

import numpy as np
import torch

from alfo_torchreid import compat
from alfo_torchreid.atomic import PartialFile
from alfo_torchreid.errors import CheckpointError

LATEST = 'latest.pth.tar'


def atomic_save(obj, fpath):
    """``torch.save`` to ``fpath`` through a temporary file, fsync and rename.

    If writing fails at any point, the previous ``fpath`` (if any) is intact
    and no temporary file is left behind (see :mod:`alfo_torchreid.atomic`).
    """
    with PartialFile(fpath) as partial:
        torch.save(obj, partial.file)
        partial.sync()
        partial.replace()


def rng_state():
    """The states of Python's, numpy's and torch's generators, as plain data
    and tensors only (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)),
                  'pos': int(pos), 'has_gauss': int(has_gauss), 'gauss': float(gauss)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restores what :func:`rng_state` captured."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'],
                         n['has_gauss'], n['gauss']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def model_signature(num_classes, schema=None):
    """What a checkpoint must match to be loaded into a model: the number of
    training identities and, for attribute models, the attribute schema."""
    signature = {'num_classes': int(num_classes)}
    if schema is not None:
        signature['schema'] = schema.to_dict()
    return signature


def check_signature(checkpoint, fpath, num_classes, schema=None):
    """Raises CheckpointError naming what differs between a checkpoint and a
    model for ``num_classes`` identities and attribute ``schema``."""
    saved = checkpoint.get('signature') if isinstance(checkpoint, dict) else None
    if not saved:
        return
    if saved['num_classes'] != num_classes:
        raise CheckpointError(
            f'checkpoint "{fpath}" was trained with {saved["num_classes"]} identities, '
            f'the model has {num_classes}: the training data differ')
    a, b = saved.get('schema'), schema
    if a and b is not None and (tuple(a['names']), tuple(a['num_classes'])) != \
            (b.names, b.num_classes):
        raise CheckpointError(
            f'checkpoint "{fpath}" has the {a["dataset"]} attribute schema '
            f'({len(a["names"])} attributes), the model has the {b.dataset} schema '
            f'({len(b)} attributes)')


def load_training_state(fpath, model, num_classes, optimizer=None, scheduler=None,
                        trust=False, restore_rng=True):
    """Resumes from ``fpath``: weights, optimizer, scheduler and RNG states,
    after checking that the checkpoint fits ``num_classes`` and ``model.schema``.

    Returns:
        (start_epoch, checkpoint).
    """
    checkpoint = compat.load_checkpoint(fpath, trust)
    check_signature(checkpoint, fpath, num_classes, getattr(model, 'schema', None))
    start_epoch, checkpoint = compat.resume_from_checkpoint(fpath, model, optimizer, scheduler,
                                                            trust=trust, checkpoint=checkpoint)
    if restore_rng and 'rng' in checkpoint:
        set_rng_state(checkpoint['rng'])
    return start_epoch, checkpoint
