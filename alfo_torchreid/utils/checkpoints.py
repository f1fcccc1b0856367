"""Checkpoints, the whole contract in one place: save atomically, load safely,
check that a file fits the model, resume a run.

A training checkpoint holds torchreid's keys (``state_dict``, ``epoch``,
``rank1``, ``optimizer``, ``scheduler``) and ours: ``rng`` (the random
generators' states, so a resumed run draws the same batches and augmentations
as an uninterrupted one; a run of several processes under torchrun also keeps
``rng_ranks``, every process's, rank 0's first), ``grad_scaler`` (fp16 runs'
gradient scale) and ``signature`` (what the weights were built for:
``num_classes`` and the attribute schema, so that a checkpoint of another
dataset is refused with a clear message).

* Saving: torchreid's ``save_checkpoint`` writes in place, so a crash while
  saving destroys the previous file. :func:`atomic_save` writes through a
  temporary file (:mod:`alfo_torchreid.utils.atomic`): a reader sees the old or the
  new complete file. :func:`save_training_state` also refuses to write
  weights or buffers that are not finite, so the last checkpoint on disk is
  always one training can continue from.
* Loading: torchreid's ``load_checkpoint`` calls ``torch.load`` without
  ``weights_only``; since torch 2.6 that refuses the numpy scalar torchreid
  stores as ``rank1``. :func:`load_checkpoint` allow-lists exactly the types
  torchreid's ``save_checkpoint`` writes and refuses anything that would need
  full unpickling unless the caller trusts the file.
* Resuming: :func:`load_training_state` restores weights, optimizer,
  scheduler and RNG states, refuses a checkpoint whose optimizer setup differs
  from the run's (one line saying what differs), and lets the config's
  optimizer and schedule settings override the saved ones.
"""
import errno
import hashlib
import os
import pickle
import random
from collections import OrderedDict

import numpy as np
import torch

from alfo_torchreid.utils import distributed
from alfo_torchreid.utils.atomic import replacing
from alfo_torchreid.utils.errors import CheckpointError, TrainingError, UntrustedCheckpointError

LATEST = 'latest.pth.tar'

# Optimizer and scheduler entries that are the run's progress, not its settings:
# everything else in a param group or a scheduler's state comes from the config.
_OPTIMIZER_PROGRESS = ('params', 'lr', 'initial_lr')
_SCHEDULER_PROGRESS = ('last_epoch', '_step_count', '_last_lr', '_get_lr_called_within_step',
                       'base_lrs', '_is_initial')


# -- saving -----------------------------------------------------------------

def atomic_save(obj, fpath):
    """``torch.save`` to ``fpath`` through a temporary file, fsync and rename.

    If writing fails at any point, the previous ``fpath`` (if any) is intact
    and no temporary file is left behind (see :mod:`alfo_torchreid.utils.atomic`).
    """
    with replacing(fpath) as f:
        torch.save(obj, f)


def non_finite_tensors(state_dict):
    """Names of the floating-point tensors of ``state_dict`` holding NaN or inf."""
    return [name for name, tensor in state_dict.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point()
            and not torch.isfinite(tensor).all()]


def save_training_state(state, fpath):
    """Writes a checkpoint atomically, unless its weights are not finite.

    Args:
        state (dict): the checkpoint; ``state['state_dict']`` is checked,
            parameters and buffers (BatchNorm's running statistics) alike.
        fpath (str): where to write it.

    Raises:
        TrainingError: a tensor is NaN or infinite; nothing is written, so the
            previous checkpoint at ``fpath`` stays.
        CheckpointError: the file could not be written (a full disk, say); the
            previous checkpoint at ``fpath`` stays.
    """
    bad = non_finite_tensors(state['state_dict'])
    if bad:
        raise TrainingError(
            f'the model\'s {", ".join(bad[:3])}{" and others" if len(bad) > 3 else ""} '
            f'became NaN or infinite at epoch {state["epoch"]}: training stopped without '
            f'writing "{fpath}", so the last checkpoint on disk is still a good one (lower '
            'train.lr, then resume with train.resume True)')
    try:
        atomic_save(state, fpath)
    except (OSError, RuntimeError) as exc:  # torch's zip writer raises RuntimeError
        reason = 'the disk is full' if disk_full(exc) else ' '.join(str(exc).split())
        raise CheckpointError(
            f'could not write checkpoint "{fpath}" ({reason}); the previous file of that '
            'name, if any, is intact') from None


def disk_full(exc):
    """Whether ``exc``, raised by ``torch.save``, says that the disk is full:
    an ``OSError`` ENOSPC, or torch's zip writer's RuntimeError, which says only
    "unexpected pos" or "failed writing file" when a write came up short."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return any(text in str(exc) for text in ('unexpected pos', 'No space left on device'))


# -- loading ----------------------------------------------------------------

def _safe_globals():
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


def load_checkpoint(fpath, trust=False):
    """Loads a checkpoint written by ``torch.save`` without running code from it,
    onto the CPU, so that a GPU checkpoint loads on any machine
    (``load_state_dict`` moves the tensors where the model is).

    Args:
        fpath (str): checkpoint path.
        trust (bool): allow full unpickling for files that need it. Only for
            files from a source you trust: unpickling can run arbitrary code.

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
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(fpath, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise UntrustedCheckpointError(
                f'checkpoint "{fpath}" holds objects beyond tensors and plain data '
                f'({", ".join(_unsafe_globals(fpath))}); loading it means unpickling, which '
                'can run arbitrary code. If you trust its source, load it with '
                'trust_checkpoint=True (config: model.trust_checkpoint True)') from None
        detail = exc
    except Exception as exc:  # torch's safe unpickler fails on garbage in many ways
        raise CheckpointError(
            f'checkpoint "{fpath}" is not a readable torch checkpoint ({exc}); '
            'the file may be truncated or of another format') from None
    try:
        return torch.load(fpath, map_location='cpu', weights_only=False)
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


# -- what a checkpoint was made for ------------------------------------------

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


def weights_digest(state_dict):
    """sha256 (hex) of a state dict's tensors: names, dtypes, shapes and values.

    Two checkpoints of the same weights (``model.pth.tar-N`` and
    ``latest.pth.tar`` of the same epoch) have the same digest although their
    files differ (optimizer, RNG states).
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -- random generators -------------------------------------------------------

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


def restore_rng_states(checkpoint):
    """Restores this process's generators from a training checkpoint.

    Each process of a torchrun job takes its own state from ``rng_ranks`` when
    the checkpoint has one per process of this job. Otherwise (a single
    process's checkpoint, or another number of processes) the main process
    takes ``rng`` and the others keep theirs (seeded from ``train.seed`` and
    their rank): the run continues, with other random augmentations than an
    uninterrupted run would have drawn.
    """
    states = checkpoint.get('rng_ranks') or [checkpoint['rng']]
    if len(states) == distributed.world_size():
        set_rng_state(states[distributed.rank()])
        return
    if distributed.is_main_process():
        set_rng_state(checkpoint['rng'])
        print(f'Resume: the checkpoint holds the random generators of {len(states)} '
              f'process(es), this run has {distributed.world_size()}; the others keep theirs')


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


# -- resuming ---------------------------------------------------------------

def load_training_state(fpath, model, num_classes, optimizer=None, scheduler=None,
                        trust=False, restore_rng=True, precision=None, center=None):
    """Resumes from ``fpath``: weights, optimizer, scheduler, gradient scaler
    (into ``precision``, a :class:`alfo_torchreid.engine.precision.MixedPrecision`),
    center loss (into ``center``, a :class:`alfo_torchreid.engine.center.CenterTerm`)
    and RNG states (:func:`restore_rng_states`).

    The checkpoint must fit ``num_classes`` and ``model.schema`` and have been
    written with the same optimizer setup (type and parameter groups) and,
    exactly when ``center`` is given, a center loss; the settings of
    ``optimizer``, ``scheduler`` and ``center`` as built from the config
    (learning rate, weight decay, momentum, milestones, ...) replace the saved
    ones, and each replacement is printed.

    Returns:
        (start_epoch, checkpoint).

    Raises:
        CheckpointError: not a training checkpoint, or one that does not fit.
    """
    checkpoint = load_checkpoint(fpath, trust)
    missing = [k for k in ('state_dict', 'epoch') if not isinstance(checkpoint, dict)
               or k not in checkpoint]
    if missing:
        raise CheckpointError(
            f'checkpoint "{fpath}" is not a training checkpoint (it has no '
            f'{" or ".join(repr(k) for k in missing)}), so there is no run to resume: to start '
            f'a new run from its weights, use model.load_weights "{fpath}"')
    if optimizer is not None and checkpoint.get('optimizer') is None:
        raise CheckpointError(
            f'checkpoint "{fpath}" holds the weights alone (a snapshot written without '
            'train.save_optimizer_in_snapshots), not the optimizer and random generators a '
            'run continues with: resume from the run\'s model/latest.pth.tar (train.resume '
            f'True), or start a new run from these weights with model.load_weights "{fpath}"')
    check_signature(checkpoint, fpath, num_classes, getattr(model, 'schema', None))
    try:
        model.load_state_dict(state_dict_of(checkpoint))
    except RuntimeError as exc:
        raise CheckpointError(f'checkpoint "{fpath}" does not fit the model: {exc}') from None
    if optimizer is not None and checkpoint.get('optimizer') is not None:
        _restore_optimizer(optimizer, checkpoint['optimizer'], fpath)
    if scheduler is not None and checkpoint.get('scheduler') is not None:
        _restore_scheduler(scheduler, checkpoint['scheduler'], optimizer, fpath)
    if precision is not None:
        precision.load_state_dict(checkpoint.get('grad_scaler'))
    _check_center_loss(checkpoint.get('center_loss') is not None, center is not None, fpath)
    if center is not None:
        center.load_state_dict(checkpoint['center_loss'])
    if restore_rng and 'rng' in checkpoint:
        restore_rng_states(checkpoint)
    return int(checkpoint['epoch']), checkpoint


def _check_center_loss(saved, built, fpath):
    """Refuses a checkpoint whose run had a center loss (``saved``) when this
    run has none (``built``), or the reverse: the centers would be lost, or
    start afresh in the middle of a run."""
    if saved != built:
        differs = ('with a center loss and this run has none' if saved else
                   'without a center loss and this run has one')
        raise CheckpointError(
            f'checkpoint "{fpath}" was saved by a run {differs}: loss.center.weight must be 0 '
            'in both or above 0 in both to resume it (to start a new run from its weights, use '
            f'model.load_weights "{fpath}" with another data.save_dir)')


def _settings(group, progress):
    return {k: v for k, v in group.items() if k not in progress}


def _restore_optimizer(optimizer, saved, fpath):
    """Loads ``saved`` into ``optimizer``, keeping the config's settings."""
    fresh = [dict(group) for group in optimizer.param_groups]
    groups = saved.get('param_groups', [])
    sizes = [len(g['params']) for g in groups], [len(g['params']) for g in fresh]
    kinds = [sorted(_settings(g, _OPTIMIZER_PROGRESS)) for g in groups], \
        [sorted(_settings(g, _OPTIMIZER_PROGRESS)) for g in fresh]
    if sizes[0] != sizes[1] or kinds[0] != kinds[1]:
        raise CheckpointError(
            f'checkpoint "{fpath}" was saved by another optimizer setup '
            f'({_describe(groups)}) than this run builds ({_describe(fresh)}): train.optim, '
            f'train.staged_lr and train.new_layers must be those of the saved run to resume '
            f'it. To start a new run from its weights instead, use model.load_weights '
            f'"{fpath}" with another data.save_dir')
    _check_state_settings(groups, fresh, fpath)
    optimizer.load_state_dict(saved)
    for index, (group, config) in enumerate(zip(optimizer.param_groups, fresh)):
        for key, value in _settings(config, _OPTIMIZER_PROGRESS).items():
            if not _same(group[key], value):
                print(f'Resume: the config sets {key}={value} for parameter group {index} '
                      f'(the checkpoint had {group[key]})')
                group[key] = value
        base = config.get('initial_lr', config['lr'])
        saved_base = group.get('initial_lr', base)
        if not _same(saved_base, base):
            # keep the schedule's progress: the decay so far applies to the new base
            group['lr'] = group['lr'] * base / saved_base
            group['initial_lr'] = base
            print(f'Resume: the config\'s learning rate {base:g} replaces the checkpoint\'s '
                  f'{saved_base:g} for parameter group {index} (now {group["lr"]:g} at this '
                  'point of the schedule)')


def _check_state_settings(saved, fresh, fpath):
    """Refuses settings that change which state an optimizer keeps per parameter
    (:func:`_kept_state`): the saved state would lack what the next step reads."""
    before, now = [_kept_state(g) for g in saved], [_kept_state(g) for g in fresh]
    if before != now:
        differ = sorted({k for a, b in zip(before, now) for k in a ^ b})
        raise CheckpointError(
            f'checkpoint "{fpath}" was saved by an optimizer that keeps other state '
            f'({", ".join(differ)} kept by one and not the other: train.optim {{adam, amsgrad}}, '
            'or an RMSprop momentum turned on or off): resume with the saved run\'s optimizer, '
            f'or start a new run from its weights with model.load_weights "{fpath}" and '
            'another data.save_dir')


def _kept_state(group):
    """The per-parameter state that an optimizer with the settings of ``group``
    reads beyond the basic one: Adam's ``max_exp_avg_sq`` (amsgrad), RMSprop's
    ``grad_avg`` (centered) and ``momentum_buffer`` (momentum > 0)."""
    rmsprop = 'centered' in group
    return {name for name, kept in (('max_exp_avg_sq', group.get('amsgrad')),
                                    ('grad_avg', group.get('centered')),
                                    ('momentum_buffer', rmsprop and group['momentum'] > 0))
            if kept}


def _describe(groups):
    if not groups:
        return 'no parameter groups'
    names = sorted({k for g in groups for k in _settings(g, _OPTIMIZER_PROGRESS)})
    return (f'{len(groups)} parameter group(s) of {[len(g["params"]) for g in groups]} '
            f'tensors with settings {names}')


def _same(a, b):
    return (list(a) == list(b)) if isinstance(a, (list, tuple)) else a == b


def _restore_scheduler(scheduler, saved, optimizer, fpath=''):
    """Loads the schedule's progress from ``saved``; its settings come from the
    config. A chained schedule (a warm-up, :mod:`alfo_torchreid.engine.schedule`)
    is restored part by part.

    Raises:
        CheckpointError: the checkpoint's schedule has other parts (a warm-up
            where the config has none, or the reverse).
    """
    base_lrs = None
    if optimizer is not None:
        base_lrs = [g.get('initial_lr', g['lr']) for g in optimizer.param_groups]
    scheduler.load_state_dict(_merged_schedule(scheduler.state_dict(), saved, base_lrs, fpath))


def _merged_schedule(config, saved, base_lrs, fpath):
    """``saved``'s progress with ``config``'s settings (and ``base_lrs``, unless
    None), in each part of a chained schedule."""
    parts = [len(state.get('_schedulers', ())) for state in (saved, config)]
    if parts[0] != parts[1]:
        raise CheckpointError(
            f'checkpoint "{fpath}" was saved by a schedule of {parts[0] or 1} part(s) and this '
            f'run builds {parts[1] or 1}: train.warmup_epochs must be 0 in both or above 0 in '
            f'both to resume it (to start a new run from its weights, use model.load_weights '
            f'"{fpath}" with another data.save_dir)')
    merged = dict(saved)
    for key, value in config.items():
        if key in _SCHEDULER_PROGRESS:
            continue
        if key == '_schedulers':
            value = [_merged_schedule(c, s, base_lrs, fpath)
                     for c, s in zip(value, saved['_schedulers'])]
        elif key in saved and not _same(saved[key], value):
            print(f'Resume: the config sets the schedule\'s {key.lstrip("_")}={value} '
                  f'(the checkpoint had {saved[key]})')
        merged[key] = value
    if base_lrs is not None and 'base_lrs' in config:
        merged['base_lrs'] = base_lrs
    return merged
