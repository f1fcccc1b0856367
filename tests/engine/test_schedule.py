"""The warm-up schedule (alfo_torchreid.engine.schedule) by hand: the lr of
every epoch, and the same lrs after a resume from a checkpoint."""
import math

import pytest
import torch

from alfo_torchreid.engine.schedule import build_scheduler
from alfo_torchreid.utils import checkpoints
from alfo_torchreid.utils.errors import CheckpointError

LR, FACTOR, WARMUP, GAMMA = 3.5e-4, 0.1, 4, 0.1
STEPS = [6, 9]
EPOCHS = 12
# each step multiplies the lr by two ratios: a few float64 roundings per epoch
REL = 1e-12


def expected_lr(epoch, warmup_epochs=WARMUP):
    """BoT's WarmupMultiStepLR written out: linear from FACTOR x LR over the
    warm-up, times GAMMA for every milestone passed."""
    warm = 1.0 if not warmup_epochs else \
        FACTOR + (1 - FACTOR) * min(epoch, warmup_epochs) / warmup_epochs
    return LR * warm * GAMMA ** sum(epoch >= s for s in STEPS)


def build(warmup_epochs=WARMUP, scheduler='multi_step'):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    return model, optimizer, build_scheduler(
        optimizer, warmup_epochs=warmup_epochs, warmup_factor=FACTOR, lr_scheduler=scheduler,
        stepsize=STEPS, gamma=GAMMA, max_epoch=EPOCHS)


def lrs_from(optimizer, scheduler, first, last):
    """The lr of epochs ``first`` .. ``last - 1``, stepping after each, as torchreid's loop."""
    out = []
    for _ in range(first, last):
        out.append(optimizer.param_groups[0]['lr'])
        optimizer.step()  # no gradients: changes nothing, but keeps torch's order
        scheduler.step()
    return out


@pytest.mark.parametrize('warmup_epochs', [0, WARMUP])
def test_lr_of_every_epoch(warmup_epochs):
    _, optimizer, scheduler = build(warmup_epochs)
    got = lrs_from(optimizer, scheduler, 0, EPOCHS)
    want = [expected_lr(e, warmup_epochs) for e in range(EPOCHS)]
    assert got == pytest.approx(want, rel=REL)
    assert got[0] == pytest.approx(FACTOR * LR if warmup_epochs else LR, rel=REL)


def test_cosine_is_warmed_up_too():
    _, optimizer, scheduler = build(scheduler='cosine')
    got = lrs_from(optimizer, scheduler, 0, EPOCHS)
    want = [LR * (1 + math.cos(math.pi * e / EPOCHS)) / 2
            * (FACTOR + (1 - FACTOR) * min(e, WARMUP) / WARMUP) for e in range(EPOCHS)]
    assert got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize('stop', [2, WARMUP, 7])
def test_resume_continues_the_schedule(tmp_path, stop):
    model, optimizer, scheduler = build()
    lrs_from(optimizer, scheduler, 0, stop)
    path = str(tmp_path / 'latest.pth.tar')
    checkpoints.atomic_save({'state_dict': model.state_dict(), 'epoch': stop,
                             'optimizer': optimizer.state_dict(),
                             'scheduler': scheduler.state_dict()}, path)
    model, optimizer, scheduler = build()  # a fresh run, as after a crash
    start, _ = checkpoints.load_training_state(path, model, 2, optimizer, scheduler,
                                               restore_rng=False)
    assert start == stop
    got = lrs_from(optimizer, scheduler, stop, EPOCHS)
    assert got == pytest.approx([expected_lr(e) for e in range(stop, EPOCHS)], rel=REL)


def test_resume_refuses_another_schedule_shape(tmp_path):
    model, optimizer, scheduler = build(warmup_epochs=0)
    path = str(tmp_path / 'latest.pth.tar')
    checkpoints.atomic_save({'state_dict': model.state_dict(), 'epoch': 1,
                             'optimizer': optimizer.state_dict(),
                             'scheduler': scheduler.state_dict()}, path)
    model, optimizer, scheduler = build()
    with pytest.raises(CheckpointError, match='train.warmup_epochs'):
        checkpoints.load_training_state(path, model, 2, optimizer, scheduler, restore_rng=False)
