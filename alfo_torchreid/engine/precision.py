"""Mixed precision and memory format of ALFO's training steps (docs/distributed.md).

* ``train.amp``: ``off`` (fp32, the default), ``bf16`` (CUDA and the CPU) or
  ``fp16`` (CUDA only). ``torch.autocast`` runs the model's forward pass in
  that precision; the loss (identity loss, focal loss, vote, triplet loss) is
  computed in fp32 from the model's outputs cast back
  (:class:`alfo_torchreid.losses.ALFOLoss`); weights, gradients and the
  optimizer stay fp32. fp16 gradients are scaled by ``torch.amp.GradScaler``
  against underflow (bf16 has fp32's range and needs no scaling).
* ``train.channels_last``: ``auto`` (on when training on CUDA, where cuDNN's
  convolutions are faster in NHWC), ``on`` or ``off``: the model's weights in
  ``torch.channels_last`` memory format, and the batches of the test and of
  ALFO's (and the center-loss triplet) training steps; torchreid's baseline
  steps feed theirs as loaded.
"""
import contextlib

import torch

_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def uses_channels_last(setting, use_gpu):
    """Whether ``train.channels_last`` ``setting`` puts a run on ``use_gpu`` in channels-last."""
    return setting == 'on' or (setting == 'auto' and use_gpu)


class MixedPrecision:
    """The autocast context and the backward/step of one ``train.amp`` mode.

    Args:
        amp: one of :data:`alfo_torchreid.config.AMP_MODES`.
        use_gpu: whether the model runs on CUDA (autocast's device type).
    """

    def __init__(self, amp='off', use_gpu=False):
        self.amp = amp
        self.device_type = 'cuda' if use_gpu else 'cpu'
        self.scaler = torch.amp.GradScaler(self.device_type) if amp == 'fp16' else None

    def autocast(self):
        """The context of a forward pass (no change with ``off``)."""
        if self.amp == 'off':
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.amp])

    def backward_and_step(self, loss, *optimizers):
        """``loss.backward()`` and each optimizer's ``step()`` (the model's, then
        e.g. the center loss's); with fp16 through the gradient scaler, which
        skips the steps when a gradient overflowed."""
        if self.scaler is None:
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            return
        self.scaler.scale(loss).backward()
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self):
        """The gradient scaler's state (None without one), for checkpoints."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state):
        """Restores :meth:`state_dict`'s result (ignored without a scaler)."""
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)
