"""A stand-in CUDA device for testing device placement on a CPU-only machine.

With :func:`fake_cuda` active, ``Tensor.cuda()`` returns the same data as an :class:`OnDevice` tensor and
records the call, and a factory given ``device=`` creates an ``OnDevice``
tensor. Any torch operation that mixes an ``OnDevice`` tensor with a plain
(CPU) one raises AssertionError — as a real GPU would refuse it — except for
the model's parameters and buffers, which the caller moved with
``model.cuda()``. So a batch tensor that is not moved, or a tensor created on
the CPU inside the loss (``torch.zeros(n)`` without ``device=``), fails.
"""
import contextlib
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

FACTORIES = {'zeros', 'ones', 'empty', 'full', 'tensor', 'as_tensor', 'arange', 'rand',
             'randn', 'randint', 'eye', 'linspace'}
TO_HOST = {'cpu', 'numpy'}


class OnDevice(torch.Tensor):
    """A tensor that the code under test placed on the (fake) GPU."""


class _DeviceMixingCheck(TorchFunctionMode):

    def __init__(self, exempt):
        super().__init__()
        self.exempt = {id(t) for t in exempt}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', '')
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_device = any(isinstance(t, OnDevice) for t in tensors)
        if on_device and name not in TO_HOST:
            stray = [t for t in tensors if not isinstance(t, (OnDevice, torch.nn.Parameter))
                     and id(t) not in self.exempt]
            assert not stray, (f'torch.{name} mixes GPU tensors with a CPU tensor of shape '
                               f'{tuple(stray[0].shape)}: it was not moved to the device')
        out = func(*args, **kwargs)
        if name in FACTORIES and kwargs.get('device') is not None:
            return out.as_subclass(OnDevice)
        if name in TO_HOST and isinstance(out, OnDevice):
            return out.as_subclass(torch.Tensor)
        return out


def cuda_reported_available():
    """``torch.cuda.is_available()`` says True inside the block (only there:
    torch's own internals, e.g. the optimizers, would then look for a driver)."""
    return mock.patch.object(torch.cuda, 'is_available', return_value=True)


@contextlib.contextmanager
def fake_cuda(model=None):
    """Activates the fake device; yields the list of tensors ``.cuda()`` was called on."""
    moved = []

    def cuda(self, *args, **kwargs):
        moved.append(self)
        return self.as_subclass(OnDevice)

    exempt = [] if model is None else [*model.parameters(), *model.buffers()]
    with mock.patch.object(torch.Tensor, 'cuda', cuda), _DeviceMixingCheck(exempt):
        yield moved
