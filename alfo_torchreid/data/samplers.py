"""Training samplers and loaders of one process of a torchrun job (docs/distributed.md).

``train.batch_size`` is the global batch: each of the ``W`` processes loads
``batch_size / W`` images per step, and the W shares of step ``i`` together
are the batch ``i`` that one process would draw with the same sampler, seed
and epoch. Every sampler is reshuffled from ``train.seed`` and the epoch
(``set_epoch``, called by the engine at the start of each epoch), so every
process, and a resumed run, draws the same global batches.

* ``RandomSampler``: torch's ``DistributedSampler`` (a permutation from
  ``seed + epoch``; process ``r`` takes its positions ``r, r + W, ...``).
* ``SequentialSampler``: the same without shuffling.
* ``RandomIdentitySampler``: :class:`DistributedIdentitySampler`, torchreid's
  sampler (P identities x K images per global batch) with each global batch
  cut into W consecutive shares of whole identities.
"""
import contextlib
import random

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from alfo_torchreid.utils import compat

DISTRIBUTED_SAMPLERS = ('RandomSampler', 'SequentialSampler', 'RandomIdentitySampler')


@contextlib.contextmanager
def seeded_global_generators(seed):
    """Python's and NumPy's global generators seeded with ``seed`` inside the
    block, and restored to their previous states after it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class DistributedIdentitySampler(Sampler):
    """torchreid's ``RandomIdentitySampler`` shared by ``world_size`` processes.

    Each epoch, the global index list is exactly what ``RandomIdentitySampler``
    draws (every global batch: ``batch_size / num_instances`` identities with
    ``num_instances`` images each) with Python's and NumPy's generators seeded
    with ``seed + epoch`` (the global generators are left as they were). Process
    ``rank`` takes, of every global batch, the ``rank``-th of ``world_size``
    consecutive shares: ``batch_size / world_size`` images, whole identities
    when ``num_instances`` divides that share.

    Args:
        data_source: the training samples ``(path, pid, camid, ...)``.
        batch_size: the global batch (all processes together).
        num_instances: images of each identity in a batch (K).
        rank, world_size: this process and the number of processes.
        seed: ``train.seed``.
    """

    def __init__(self, data_source, batch_size, num_instances, rank, world_size, seed=0):
        self.sampler = compat.RandomIdentitySampler(data_source, batch_size, num_instances)
        self.batch_size, self.share = batch_size, batch_size // world_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self._drawn = (None, [])  # (epoch, global indices)

    def set_epoch(self, epoch):
        """Draws epoch ``epoch``'s batches from now on."""
        self.epoch = epoch

    def global_indices(self):
        """The epoch's indices for all processes, batch after batch."""
        if self._drawn[0] != self.epoch:
            with seeded_global_generators(self.seed + self.epoch):
                self._drawn = (self.epoch, list(self.sampler))
        return self._drawn[1]

    def __iter__(self):
        indices, start = self.global_indices(), self.rank * self.share
        return iter([i for batch in range(0, len(indices), self.batch_size)
                     for i in indices[batch + start:batch + start + self.share]])

    def __len__(self):
        return len(self.global_indices()) // self.world_size


def distributed_sampler(name, data_source, batch_size, num_instances, rank, world_size, seed):
    """The sampler of process ``rank`` for torchreid's sampler ``name``, one
    of :data:`DISTRIBUTED_SAMPLERS` (see the module; ``check_config`` refuses
    the others under torchrun)."""
    if name == 'RandomIdentitySampler':
        return DistributedIdentitySampler(data_source, batch_size, num_instances, rank,
                                          world_size, seed)
    if name in ('RandomSampler', 'SequentialSampler'):
        return DistributedSampler(data_source, num_replicas=world_size, rank=rank,
                                  shuffle=name == 'RandomSampler', seed=seed, drop_last=True)
    raise ValueError(f'{name} is not one of {DISTRIBUTED_SAMPLERS}')


def process_train_loader(loader, name, batch_size, num_instances, rank, world_size, seed):
    """Process ``rank``'s training loader in place of torchreid's ``loader``:
    the same dataset, transforms and workers, ``batch_size / world_size``
    images per step, drawn by :func:`distributed_sampler`, incomplete batches
    dropped (as torchreid does)."""
    sampler = distributed_sampler(name, loader.dataset.train, batch_size, num_instances, rank,
                                  world_size, seed)
    return DataLoader(loader.dataset, batch_size=batch_size // world_size, sampler=sampler,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      drop_last=True)
