"""The training samplers of a torchrun job's processes, against one process's."""
import random
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from alfo_torchreid.data.samplers import DistributedIdentitySampler, process_train_loader
from alfo_torchreid.utils import compat

BATCH, K, WORLD, SEED = 16, 4, 2, 5
SHARE = BATCH // WORLD


def samples():
    """(path, pid, camid, dsetid) of 13 identities of 2 to 9 images: some
    identities have fewer than K images (torchreid then repeats some)."""
    sizes = [2, 5, 9, 4, 3, 8, 6, 4, 7, 5, 2, 9, 4]
    return [(f'{pid}_{i}.jpg', pid, i % 3, 0) for pid, n in enumerate(sizes) for i in range(n)]


def shares_of(epoch, world=WORLD, seed=SEED):
    """Every process's indices for ``epoch``, as its ``DistributedIdentitySampler`` gives them."""
    out = []
    for rank in range(world):
        sampler = DistributedIdentitySampler(samples(), BATCH, K, rank, world, seed)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
        assert len(sampler) == len(out[-1])
    return out


def global_batches(shares):
    """The shares of each step, joined in rank order: the global batches."""
    share = BATCH // len(shares)
    steps = len(shares[0]) // share
    return [[i for s in shares for i in s[step * share:(step + 1) * share]] for step in range(steps)]


@pytest.mark.parametrize('epoch', [0, 3])
def test_the_shares_join_into_torchreids_identity_batches(epoch):
    random.seed(SEED + epoch)
    np.random.seed(SEED + epoch)
    expected = list(compat.RandomIdentitySampler(samples(), BATCH, K))
    batches = global_batches(shares_of(epoch))
    assert [i for batch in batches for i in batch] == expected
    assert len(expected) % BATCH == 0 and len(batches) == len(expected) // BATCH >= 2


def test_each_process_holds_whole_identities_of_k_images():
    pids = [item[1] for item in samples()]
    sizes = Counter(pids)
    shares = shares_of(epoch=1)
    for share in shares:
        assert len(share) % SHARE == 0
        for step in range(len(share) // SHARE):
            counts = Counter(pids[i] for i in share[step * SHARE:(step + 1) * SHARE])
            assert sorted(counts.values()) == [K] * (SHARE // K)
    for batch in global_batches(shares):  # P = BATCH / K identities per global batch
        assert sorted(Counter(pids[i] for i in batch).values()) == [K] * (BATCH // K)
    # per epoch, as RandomIdentitySampler: each identity in whole groups of K, at most
    # the groups its images make (K for fewer than K images), no image twice otherwise
    per_epoch = Counter(pids[i] for share in shares for i in share)
    for pid, count in per_epoch.items():
        assert count % K == 0 and count <= max(sizes[pid], K) // K * K
        drawn = [i for share in shares for i in share if pids[i] == pid]
        assert len(set(drawn)) == len(drawn) or sizes[pid] < K


def test_the_draw_is_fixed_by_seed_and_epoch_and_leaves_the_global_generators():
    python_state, numpy_state = random.getstate(), np.random.get_state()[1].copy()
    assert shares_of(epoch=2) == shares_of(epoch=2)
    assert random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert shares_of(epoch=2) != shares_of(epoch=3)
    assert shares_of(epoch=2) != shares_of(epoch=2, seed=SEED + 100)


class _Indices(Dataset):
    """A dataset of sample indices, with torchreid's ``train`` list."""

    def __init__(self):
        self.train = samples()

    def __len__(self):
        return len(self.train)

    def __getitem__(self, index):
        return index


def _steps(name, rank, world, epoch):
    loader = process_train_loader(DataLoader(_Indices(), batch_size=BATCH), name, BATCH, K, rank,
                                  world, SEED)
    loader.sampler.set_epoch(epoch)
    return [batch.tolist() for batch in loader]


@pytest.mark.parametrize('name', ['RandomSampler', 'SequentialSampler', 'RandomIdentitySampler'])
def test_process_loaders_split_one_process_batches_disjointly(name):
    for epoch in (0, 1):
        whole = _steps(name, 0, 1, epoch)
        parts = [_steps(name, rank, WORLD, epoch) for rank in range(WORLD)]
        assert len(whole) >= 2 and all(len(p) == len(whole) for p in parts)
        for step, batch in enumerate(whole):
            shares = [p[step] for p in parts]
            assert all(len(s) == SHARE for s in shares)
            assert sorted(shares[0] + shares[1]) == sorted(batch)
            if name != 'RandomIdentitySampler':  # which repeats images of small identities
                assert not set(shares[0]) & set(shares[1])


def test_the_random_sampler_is_a_permutation_from_seed_plus_epoch():
    n = len(samples())
    for epoch in (0, 1):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED + epoch)).tolist()
        expected = [order[i:i + BATCH] for i in range(0, n // BATCH * BATCH, BATCH)]
        assert _steps('RandomSampler', 0, 1, epoch) == expected
    assert _steps('RandomSampler', 0, 1, 0) != _steps('RandomSampler', 0, 1, 1)
