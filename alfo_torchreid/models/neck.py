"""BNNeck: the strong baseline's batch norm between the pooled feature and the
identity classifier (Luo et al., "Bag of Tricks and A Strong Baseline for Deep
Person Re-identification", CVPRW 2019, section 4.5; docs/method.md, "The strong
baseline").

With ``neck='bnneck'`` a model pools its map to ``f_t`` ``[B, 2048]``, the
feature the triplet (and center) loss reads; :class:`BNNeck` normalises it to
``f_i``, which the identity classifier (a linear layer without bias) reads and
which is the retrieval feature. With ``neck='none'`` there is no neck and the
classifier keeps torchreid's bias: the paper's network.

ALFO (:mod:`.alfo`) and the baseline :class:`ResNet50BNNeck` both call
:func:`attach_neck`, so the two sides of a comparison are built the same way.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from alfo_torchreid.utils import compat, weights
from alfo_torchreid.utils.errors import ConfigError

NECKS = ('none', 'bnneck')
# BoT initialises the bias-free classifier with this standard deviation
CLASSIFIER_STD = 0.001


class BNNeck(nn.Module):
    """BatchNorm1d whose shift is frozen at 0, as BoT's ``bias.requires_grad_(False)``.

    The shift is a buffer, not a parameter: torchreid's loop sets
    ``requires_grad`` on every parameter at each epoch (``open_all_layers``),
    which would unfreeze a parameter. The statistics live in a plain
    ``BatchNorm1d`` without affine terms, so ``SyncBatchNorm`` can replace it.

    Args:
        dim: ``C``, channels of the pooled feature.
    """

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer('bias', torch.zeros(dim))

    def forward(self, x):
        """``[B, C]`` -> ``[B, C]``: batch-normalised, scaled by ``weight``, shifted by 0."""
        return torch.addcmul(self.bias, self.norm(x), self.weight)


def attach_neck(model, neck, num_classes):
    """Gives ``model`` (a torchreid ``ResNet``) the ``neck``: sets ``model.neck``
    (a :class:`BNNeck`, or None for ``'none'``) and, with a neck, replaces its
    identity classifier (if it has one) by a bias-free ``Linear`` initialised
    as BoT's (normal, std :data:`CLASSIFIER_STD`).
    """
    if neck not in NECKS:
        raise ConfigError(f'neck must be one of {NECKS}, got {neck!r}')
    model.neck = None
    if neck == 'bnneck':
        model.neck = BNNeck(model.feature_dim)
        if getattr(model, 'classifier', None) is not None:
            model.classifier = nn.Linear(model.feature_dim, num_classes, bias=False)
            nn.init.normal_(model.classifier.weight, 0, CLASSIFIER_STD)


def after_neck(model, feature):
    """``[B, C]`` pooled feature -> the feature after ``model.neck`` (itself without one)."""
    return feature if model.neck is None else model.neck(feature)


class ResNet50BNNeck(compat.ResNet):
    """The strong baseline's network: torchreid's ResNet-50 with a BNNeck.

    Train mode returns the identity logits ``[B, N]`` (``loss='softmax'``) or
    (logits, ``f_t`` ``[B, 2048]`` before the neck) for ``loss='triplet'``, as
    torchreid's engines expect; eval mode returns ``f_i`` ``[B, 2048]``, after
    the neck.

    Args:
        num_classes: training identities.
        loss: ``'softmax'`` or ``'triplet'``.
        last_stride: stride of ResNet's last stage (BoT: 1).
        pretrained: as :class:`alfo_torchreid.models.alfo.ALFO`'s.
    """

    def __init__(self, num_classes, loss='softmax', last_stride=1, pretrained=False):
        if loss not in ('softmax', 'triplet'):
            raise ConfigError(f"loss must be 'softmax' or 'triplet', got {loss!r}")
        super().__init__(num_classes, loss, compat.Bottleneck, [3, 4, 6, 3],
                         last_stride=last_stride)
        attach_neck(self, 'bnneck', num_classes)
        if pretrained:
            weights.load_weights(self, 'imagenet' if pretrained is True else pretrained)

    def forward(self, x):
        """``[B, 3, H, W]`` -> see the class docstring."""
        f_t = F.adaptive_avg_pool2d(self.featuremaps(x), 1).flatten(1)
        f_i = after_neck(self, f_t)
        if not self.training:
            return f_i
        logits = self.classifier(f_i)
        return logits if self.loss == 'softmax' else (logits, f_t)
