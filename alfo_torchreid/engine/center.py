"""Center loss, as the strong baseline trains it (Wen et al., "A Discriminative
Feature Learning Approach for Deep Face Recognition", ECCV 2016; Luo et al.
2019, "Bag of Tricks", section 4.6; docs/method.md, "The strong baseline").

Every training identity ``k`` has a learnt center ``c_k`` in the space of the
feature the triplet loss reads (before a BNNeck, 2048-d for ResNet-50). For a
batch of features ``f_i`` ``[B, D]`` with identities ``y_i``::

    L_C = 1/B * sum_i ||f_i - c_{y_i}||^2

The run minimises ``weight * L_C`` beside its other losses, with the centers
updated by their own SGD at ``lr``. BoT divides the centers' gradients by
``weight`` before that step, so the centers move by the gradient of the
unweighted ``L_C`` while the network gets the weighted one;
:class:`CenterTerm` builds exactly those gradients into the term it returns
(no gradient is edited afterwards), which keeps it right under fp16's
gradient scaling as well.
"""
import torch
import torch.nn as nn


class CenterLoss(nn.Module):
    """``L_C`` of the module docstring.

    Args:
        num_classes: ``N``, training identities.
        dim: ``D``, size of the feature.
    """

    def __init__(self, num_classes, dim):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim))  # as BoT initialises them

    def forward(self, features, pids):
        """``[B, D]`` features, ``[B]`` identities -> scalar ``L_C``."""
        return (features - self.centers[pids]).pow(2).sum(1).mean()


class CenterTerm:
    """The center loss of a run: its centers, weight and SGD optimizer.

    Calling it gives the term to add to the run's loss, ``weight * L_C`` in
    value, whose gradient is ``weight * dL_C/df`` for the features and
    ``dL_C/dc`` for the centers (BoT's rule). Step :attr:`optimizer` after
    the backward pass.

    Args:
        num_classes, dim: see :class:`CenterLoss`.
        weight: the term's weight (``loss.center.weight``).
        lr: the centers' SGD learning rate (``loss.center.lr``).
        use_gpu: whether the centers live on the GPU.
    """

    def __init__(self, num_classes, dim, weight, lr=0.5, use_gpu=False):
        self.loss = CenterLoss(num_classes, dim)
        if use_gpu:
            self.loss = self.loss.cuda()
        self.weight = weight
        self.lr = lr
        self.optimizer = torch.optim.SGD(self.loss.parameters(), lr=lr)

    def __call__(self, features, pids):
        """``[B, D]`` features, ``[B]`` identities -> the scalar term (fp32)."""
        features = features.float()
        network_part = self.weight * _with_frozen_centers(self.loss, features, pids)
        centers_part = self.loss(features.detach(), pids)
        # value: weight * L_C (the last two cancel); gradients: weight * dL/df for
        # the features, dL/dc for the centers
        return network_part + (centers_part - centers_part.detach())

    def state_dict(self):
        """Centers and optimizer state, for checkpoints."""
        return {'centers': self.loss.state_dict(), 'optimizer': self.optimizer.state_dict()}

    def load_state_dict(self, state):
        """Restores :meth:`state_dict`'s result (nothing when ``state`` is None).
        The learning rate stays :attr:`lr`, the config's, as the run's own
        optimizer keeps the config's settings over a checkpoint's."""
        if state is not None:
            self.loss.load_state_dict(state['centers'])
            self.optimizer.load_state_dict(state['optimizer'])
            for group in self.optimizer.param_groups:
                if group['lr'] != self.lr:
                    print(f'Resume: the config\'s loss.center.lr {self.lr:g} replaces the '
                          f'checkpoint\'s {group["lr"]:g}')
                    group['lr'] = self.lr


def _with_frozen_centers(loss, features, pids):
    """``L_C`` with the centers taken as constants."""
    return (features - loss.centers.detach()[pids]).pow(2).sum(1).mean()
