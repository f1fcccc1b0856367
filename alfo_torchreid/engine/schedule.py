"""The learning-rate schedule: torchreid's, optionally after a linear warm-up
(Luo et al. 2019, "Bag of Tricks", section 4.1; docs/method.md, "The strong
baseline").

With ``warmup_epochs = W > 0`` and ``warmup_factor = f`` the learning rate of
epoch ``e`` (0-based, the epoch torchreid's loop trains next) is::

    lr(e) = lr_torchreid(e) * (f + (1 - f) * min(e, W) / W)

so it rises linearly from ``f x lr`` at epoch 0 to the schedule's own value
at epoch ``W`` and follows that schedule from then on. The two factors are
torch's chainable schedulers (torchreid's ``StepLR`` / ``MultiStepLR`` /
``CosineAnnealingLR`` and a ``LinearLR``) in a ``ChainedScheduler``: each
step multiplies the optimizer's current lr by both ratios, so the product
holds at every epoch, and a resumed run (the optimizer's lr and both
schedulers' states restored, :mod:`alfo_torchreid.utils.checkpoints`)
continues it exactly.
"""
import torch
import torchreid


def build_scheduler(optimizer, warmup_epochs=0, warmup_factor=0.1, **kwargs):
    """torchreid's ``build_lr_scheduler(optimizer, **kwargs)``, chained after a
    linear warm-up of ``warmup_epochs`` epochs from ``warmup_factor`` x lr.

    Returns:
        torchreid's scheduler itself when ``warmup_epochs`` is 0, else a
        ``ChainedScheduler`` of it and the warm-up (``LinearLR``).
    """
    scheduler = torchreid.optim.build_lr_scheduler(optimizer, **kwargs)
    if not warmup_epochs:
        return scheduler
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=warmup_factor,
                                               end_factor=1.0, total_iters=warmup_epochs)
    return torch.optim.lr_scheduler.ChainedScheduler([scheduler, warmup])
