"""The one place that knows torchreid's and torch's quirks.

* Layout: PyPI's ``torchreid==0.2.5`` is upstream torchreid 1.4.0 moved under
  ``torchreid.reid.*``; ``from torchreid.data.datasets import X`` fails there,
  while attribute access through the top-level package works in both. Every
  torchreid class this package needs is looked up here.
* Checkpoints: torchreid's ``load_checkpoint`` calls ``torch.load`` without
  ``weights_only``; since torch 2.6 that refuses the numpy scalar torchreid
  stores as ``rank1``. :func:`load_checkpoint` allow-lists exactly the types
  torchreid's ``save_checkpoint`` writes and refuses anything that would need
  full unpickling unless the caller trusts the file.
* Images: torchreid's ``read_image`` loops forever on an unreadable file;
  :func:`read_image` fails at once and names the file.
"""
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import torch
import torchreid
from PIL import Image

from alfo_torchreid.errors import (CheckpointError, ImageReadError,
                                   UntrustedCheckpointError)

Market1501 = torchreid.data.datasets.Market1501
DukeMTMCreID = torchreid.data.datasets.DukeMTMCreID
ImageDataset = torchreid.data.ImageDataset
ImageSoftmaxEngine = torchreid.engine.ImageSoftmaxEngine
ResNet = torchreid.models.resnet.ResNet
Bottleneck = torchreid.models.resnet.Bottleneck
resnet_model_urls = torchreid.models.resnet.model_urls


def model_factory():
    """torchreid's model registry: the dict behind ``build_model`` and
    ``show_avai_models`` (``__model_factory`` in ``torchreid.models``)."""
    return vars(torchreid.models)['__model_factory']


def read_image(path):
    """Reads an image as RGB, failing at once instead of retrying.

    Raises:
        ImageReadError: naming ``path``, if it is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except FileNotFoundError:
        raise ImageReadError(f'image "{path}" does not exist') from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(
            f'image "{path}" cannot be read ({exc}); expected a complete JPEG or PNG file'
        ) from None


def _checkpoint_safe_globals():
    """The non-tensor types in torchreid's checkpoints: ``rank1`` is a numpy
    scalar (``cmc[0]``), pickled as ``numpy._core.multiarray.scalar`` + dtype."""
    scalar = getattr(np, '_core', getattr(np, 'core', None)).multiarray.scalar
    dtype_classes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64,
                                                 np.int32, np.int64, np.bool_)]
    # files saved under numpy 1 (torchreid's model zoo) name numpy.core's scalar
    return [scalar, (scalar, 'numpy.core.multiarray.scalar'), np.dtype, *dtype_classes]


def _unsafe_globals(fpath):
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(fpath)
    except Exception:  # legacy (non-zip) format: cannot be listed without unpickling
        return ['(unknown: legacy pickle format)']


def load_checkpoint(fpath, trust=False, map_location='cpu'):
    """Loads a checkpoint written by ``torch.save`` without running code from it.

    Args:
        fpath (str): checkpoint path.
        trust (bool): allow full unpickling for files that need it. Only for
            files from a source you trust: unpickling can run arbitrary code.
        map_location: as in ``torch.load``; ``'cpu'`` by default so that a GPU
            checkpoint loads on any machine (``load_state_dict`` moves tensors).

    Returns:
        The loaded object (a dict for torchreid checkpoints).

    Raises:
        CheckpointError: the file is missing or not a readable checkpoint.
        UntrustedCheckpointError: the file needs full unpickling and ``trust`` is False.
    """
    fpath = os.path.abspath(os.path.expanduser(str(fpath)))
    if not os.path.isfile(fpath):
        raise CheckpointError(f'checkpoint "{fpath}" does not exist')
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            return torch.load(fpath, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise UntrustedCheckpointError(
                f'checkpoint "{fpath}" holds objects beyond tensors and plain data '
                f'({", ".join(_unsafe_globals(fpath))}); loading it means unpickling, which '
                'can run arbitrary code. If you trust its source, load it with '
                'trust_checkpoint=True (config: model.trust_checkpoint True)') from None
        detail = exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f'checkpoint "{fpath}" is not a readable torch checkpoint ({exc}); '
            'the file may be truncated or of another format') from None
    try:
        return torch.load(fpath, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f'checkpoint "{fpath}" cannot be loaded ({exc}; '
                              f'first error: {detail})') from None


def state_dict_of(checkpoint):
    """The model weights in a loaded checkpoint: torchreid stores them under
    ``state_dict``; a bare state dict is returned as is. ``module.`` prefixes
    (from ``DataParallel``) are removed."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError('checkpoint holds no state dict (expected a dict of tensors '
                              'or a dict with key "state_dict")')
    return OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in state.items())


def load_matching_weights(model, state_dict):
    """Copies the tensors of ``state_dict`` whose name and shape match ``model``.

    Returns:
        (loaded, skipped): lists of parameter names; ``skipped`` holds the
        names absent from the model or of another shape (e.g. classifiers).
    """
    own = model.state_dict()
    matched = OrderedDict((k, v) for k, v in state_dict.items()
                          if k in own and own[k].shape == v.shape)
    own.update(matched)
    model.load_state_dict(own)
    skipped = [k for k in state_dict if k not in matched]
    return list(matched), skipped


def resume_from_checkpoint(fpath, model, optimizer=None, scheduler=None, trust=False,
                           checkpoint=None):
    """Safe counterpart of ``torchreid.utils.resume_from_checkpoint``.

    Restores model weights (strictly), optimizer and scheduler state; pass
    ``checkpoint`` when it was already loaded from ``fpath``.

    Returns:
        (start_epoch, checkpoint): the epoch to continue from and the loaded dict,
        so that callers can restore what else they stored in it.
    """
    if checkpoint is None:
        checkpoint = load_checkpoint(fpath, trust)
    try:
        model.load_state_dict(state_dict_of(checkpoint))
    except RuntimeError as exc:
        raise CheckpointError(f'checkpoint "{fpath}" does not fit the model: {exc}') from None
    if optimizer is not None and 'optimizer' in checkpoint:
        optimizer.load_state_dict(checkpoint['optimizer'])
    if scheduler is not None and checkpoint.get('scheduler') is not None:
        scheduler.load_state_dict(checkpoint['scheduler'])
    return int(checkpoint['epoch']), checkpoint
