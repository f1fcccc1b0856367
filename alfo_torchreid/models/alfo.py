"""ALFO: attribute-local feature overlap network (docs/method.md, "The network").

torchreid's ResNet-50 backbone with two branches on its 2048-channel map:

* global branch: global average pool -> FC -> identity logits. By default no BN
  neck or reduction layer: the paper has none, and the branch is then exactly
  torchreid's ``resnet50`` (softmax) baseline, so comparisons isolate the local
  branch. ``neck='bnneck'`` puts the strong baseline's BNNeck (:mod:`.neck`)
  between the pool and a bias-free classifier, as in ``resnet50_bnneck``.
* local branch: ``num_parts`` overlapping horizontal stripes (:mod:`.stripes`),
  each average-pooled to a 2048-d vector and scored by its own linear classifier
  for every attribute. All ``P x m`` classifiers are one weight tensor applied
  by one batched product: 12 M multiply-adds for a batch of 32 (Market: 30 logits
  per stripe) against the backbone's ~20-35 G at 128x64, so no per-stripe
  reduction layer (PCB's 2048 -> 256) is needed for speed.

The global and stripe pools are one matrix product (:func:`.stripes.pool_stripes`),
so the local branch adds only small tensors to a training step.

``ALFO`` subclasses torchreid's ``ResNet`` so that its backbone parameters keep
torchreid's names: ImageNet weights and torchreid's ``resnet50`` re-ID
checkpoints load into it by name.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from alfo_torchreid.data.attributes import MARKET_SCHEMA
from alfo_torchreid.losses import (attribute_logit_widths, logits_to_probabilities,
                                   split_attribute_logits)
from alfo_torchreid.models.neck import after_neck, attach_neck
from alfo_torchreid.models.stripes import overlapping_stripes, pool_stripes
from alfo_torchreid.utils import compat, weights
from alfo_torchreid.utils.errors import ConfigError

FEATURES = ('global', 'local', 'global+local')
ATTR_PRED = ('voted', 'mean')


class ALFOOutputs(NamedTuple):
    """ALFO's output in train mode.

    id_logits: ``[B, num_classes]`` identity logits; None without the global branch.
    attr_logits: ``[B, P, K]`` attribute logits of every stripe (``K`` = sum of
        the attributes' logit widths, schema order; split them per attribute with
        :func:`alfo_torchreid.losses.split_attribute_logits`); None without the
        local branch.
    features: ``[B, D]`` the retrieval feature as in eval mode, but read before
        the neck (what a metric loss such as the triplet loss trains; without a
        neck it is the eval-mode feature itself).
    """
    id_logits: Optional[torch.Tensor]
    attr_logits: Optional[torch.Tensor]
    features: Optional[torch.Tensor] = None


class StripeAttributeHeads(nn.Module):
    """The attribute classifiers of every stripe, applied as one batched product.

    Stripe ``p``'s classifier of attribute ``j`` is the slice
    ``weight[p, :, cols_j]`` (``cols_j``: attribute ``j``'s logit columns), so
    each stripe has its own parameters for every attribute. One ``bmm``
    over the stripes applies them all, reading the stripes in place.

    Args:
        in_channels: ``C``, channels of a pooled stripe.
        num_parts: ``P``.
        num_logits: ``K``, logits per stripe over all attributes.
    """

    def __init__(self, in_channels, num_parts, num_logits):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_parts, in_channels, num_logits))
        self.bias = nn.Parameter(torch.zeros(num_parts, num_logits))
        nn.init.normal_(self.weight, 0, 0.01)  # as torchreid initialises nn.Linear

    def forward(self, stripes):
        """``[B, P, C]`` pooled stripes -> ``[B, P, K]`` logits."""
        return torch.bmm(stripes.transpose(0, 1), self.weight).transpose(0, 1) + self.bias


class ALFO(compat.ResNet):
    """ALFO on a torchreid ResNet-50.

    Train mode returns :class:`ALFOOutputs`; eval mode returns the retrieval
    feature ``[B, D]``, as torchreid's ``Engine.test`` expects.

    Args:
        num_classes: training identities (size of the identity classifier).
        schema: the :class:`~alfo_torchreid.data.attributes.AttributeSchema` of the heads.
        loss: torchreid's loss name, ``'softmax'`` or ``'triplet'``; the output
            is the same for both (:class:`ALFOOutputs` carries the features
            a triplet loss needs, read before the neck), the losses are
            :class:`alfo_torchreid.losses.ALFOLoss`'s.
        last_stride: stride of ResNet's last stage, 1 (a 16x8 map for 256x128
            inputs) or 2 (8x4).
        num_parts: stripes ``P``. stripe_height, stripe_stride: override the
            default stripe geometry (see :func:`.stripes.overlapping_stripes`).
        feature: retrieval feature: ``'global'`` (2048-d pooled map, as
            torchreid's resnet50), ``'local'`` (the L2-normalised stripe
            vectors, concatenated: ``P * 2048``), ``'global+local'`` (the
            L2-normalised global vector followed by those: ``(P + 1) * 2048``).
            None: ``'global'``, or ``'local'`` when the global branch is off.
        attr_pred: ``'voted'`` reads each attribute from the stripe that won
            most votes in training (the mean rule for attributes never voted
            on); ``'mean'`` averages the stripes' probabilities.
        neck: ``'none'`` (the paper) or ``'bnneck'``: the global feature goes
            through :class:`.neck.BNNeck` before a bias-free identity
            classifier and before retrieval; the triplet loss reads it before
            the neck (:func:`.neck.attach_neck`).
        global_branch, local_branch: the ablation switches of docs/method.md (Table 1).
            Without the global branch the model is trained by the attribute
            loss alone; without the local branch it has no attribute heads.
        pretrained: False; True for torchreid's ImageNet ResNet-50 weights; or
            any spec of :func:`alfo_torchreid.utils.weights.load_weights` (a model-zoo
            name, the path of a weights file or checkpoint). Loaded safely,
            matched by name and shape, heads left as initialised.
    """

    def __init__(self, num_classes, schema=MARKET_SCHEMA, loss='softmax', last_stride=1,
                 num_parts=6, stripe_height=None, stripe_stride=None,
                 feature=None, attr_pred='voted', global_branch=True, local_branch=True,
                 neck='none', pretrained=False):
        feature = feature or ('global' if global_branch else 'local')
        _check_choice('loss', loss, ('softmax', 'triplet'))
        _check_choice('last_stride', last_stride, (1, 2))
        _check_choice('feature', feature, FEATURES)
        _check_choice('attr_pred', attr_pred, ATTR_PRED)
        if not (global_branch or local_branch):
            raise ConfigError('global_branch and local_branch are both off: nothing to train')
        if neck != 'none' and not global_branch:
            raise ConfigError(f'neck {neck!r} needs the global branch: the neck sits between '
                              'the global pool and the identity classifier')
        if num_parts < 1:
            raise ConfigError(f'num_parts must be at least 1, got {num_parts}')
        super().__init__(num_classes, loss, compat.Bottleneck, [3, 4, 6, 3],
                         last_stride=last_stride)
        self.schema = schema
        self.last_stride = last_stride
        self.num_parts = num_parts
        self.stripe_height, self.stripe_stride = stripe_height, stripe_stride
        self.feature = feature
        self.attr_pred = attr_pred
        self.logit_widths = attribute_logit_widths(schema.num_classes)
        if not global_branch:
            self.classifier = None
        attach_neck(self, neck, num_classes)
        self.attribute_heads = None
        if local_branch:
            self.attribute_heads = StripeAttributeHeads(
                self.feature_dim, num_parts, sum(self.logit_widths))
            # How often each stripe won each attribute's vote in training.
            self.register_buffer('vote_counts',
                                 torch.zeros(len(schema), num_parts, dtype=torch.long))
            column_attribute = torch.repeat_interleave(torch.tensor(self.logit_widths))
            self.register_buffer('column_attribute', column_attribute, persistent=False)
        if pretrained:
            weights.load_weights(self, 'imagenet' if pretrained is True else pretrained)

    def settings(self):
        """The constructor arguments that shape this network beyond
        ``num_classes`` and ``schema`` (those of
        :func:`alfo_torchreid.config.alfo_model_kwargs`)."""
        return {'last_stride': self.last_stride, 'num_parts': self.num_parts,
                'stripe_height': self.stripe_height, 'stripe_stride': self.stripe_stride,
                'global_branch': self.global_branch, 'local_branch': self.local_branch,
                'attr_pred': self.attr_pred, 'feature': self.feature,
                'neck': 'none' if self.neck is None else 'bnneck'}

    @property
    def retrieval_dim(self):
        """``D``, the size of the retrieval feature (see ``feature``)."""
        parts = {'global': 1, 'local': self.num_parts, 'global+local': self.num_parts + 1}
        return self.feature_dim * parts[self.feature]

    @property
    def global_branch(self):
        """Whether the model has the identity classifier."""
        return self.classifier is not None

    @property
    def local_branch(self):
        """Whether the model has the stripes' attribute heads."""
        return self.attribute_heads is not None

    def pool(self, fmap, stripes=True):
        """``[B, C, H, W]`` feature map -> (global ``[B, C]``, stripes ``[B, P, C]``
        or None if not ``stripes``), average pools."""
        if not stripes:
            return self.global_avgpool(fmap).flatten(1), None
        geometry = overlapping_stripes(fmap.shape[2], self.num_parts,
                                       self.stripe_height, self.stripe_stride)
        pooled = pool_stripes(fmap, geometry)
        return pooled[:, 0], pooled[:, 1:]

    def forward(self, x):
        """``[B, 3, H, W]`` images -> :class:`ALFOOutputs` (train) or ``[B, D]`` (eval)."""
        fmap = self.featuremaps(x)
        if not self.training:
            whole, stripes = self.pool(fmap, stripes=self.feature != 'global')
            return self.retrieval_feature(after_neck(self, whole), stripes)
        whole, stripes = self.pool(fmap, stripes=self.local_branch or self.feature != 'global')
        id_logits = attr_logits = None
        if self.global_branch:
            id_logits = self.classifier(after_neck(self, whole))
        if self.local_branch:
            attr_logits = self.attribute_heads(stripes)
        return ALFOOutputs(id_logits, attr_logits, self.retrieval_feature(whole, stripes))

    def retrieval_feature(self, whole, stripes):
        """Global ``[B, C]`` and stripes ``[B, P, C]`` -> ``[B, D]`` retrieval
        feature (see ``feature``)."""
        if self.feature == 'global':
            return whole
        parts = F.normalize(stripes, dim=2)
        if self.feature == 'global+local':
            parts = torch.cat((F.normalize(whole, dim=1).unsqueeze(1), parts), dim=1)
        return parts.flatten(1)

    def _require_local_branch(self):
        if not self.local_branch:
            raise ConfigError('this ALFO was built with local_branch=False: it has no '
                              'attribute heads, so it neither votes nor predicts attributes')

    def attribute_logits(self, images):
        """``[B, 3, H, W]`` -> ``[B, P, K]`` attribute logits of every stripe."""
        self._require_local_branch()
        return self.attribute_heads(self.pool(self.featuremaps(images))[1])

    def attribute_probabilities(self, images):
        """Class probabilities of every attribute by the ``attr_pred`` rule.

        Returns:
            list of ``m`` tensors ``[B, c_j]`` in schema order; a binary
            attribute's is ``[P(no), P(yes)]``.
        """
        return self.probabilities_from_logits(self.attribute_logits(images))

    def features_and_attributes(self, images):
        """One backbone pass -> (retrieval feature ``[B, D]`` as in eval mode,
        attribute probabilities as :meth:`attribute_probabilities`)."""
        self._require_local_branch()
        whole, stripes = self.pool(self.featuremaps(images))
        return (self.retrieval_feature(after_neck(self, whole), stripes),
                self.probabilities_from_logits(self.attribute_heads(stripes)))

    def probabilities_from_logits(self, attr_logits):
        """``[B, P, K]`` stripe logits -> :meth:`attribute_probabilities`' list."""
        stripe_probs = logits_to_probabilities(attr_logits, self.logit_widths)  # [B, P, K]
        probs = stripe_probs.mean(1)
        if self.attr_pred == 'voted':
            column_stripe = self.winning_stripes()[self.column_attribute]  # [K]
            index = column_stripe.clamp(min=0).expand(probs.shape[0], 1, -1)
            voted = stripe_probs.gather(1, index).squeeze(1)
            probs = torch.where(column_stripe >= 0, voted, probs)
        return [torch.stack((1 - p.squeeze(1), p.squeeze(1)), dim=1) if w == 1 else p
                for p, w in zip(split_attribute_logits(probs, self.logit_widths),
                                self.logit_widths)]

    def predict_attributes(self, images):
        """``[B, 3, H, W]`` -> ``[B, m]`` 0-based attribute labels (``attr_pred`` rule)."""
        return torch.stack([p.argmax(1) for p in self.attribute_probabilities(images)], dim=1)

    @torch.no_grad()
    def record_votes(self, winners):
        """Adds one training step's vote to the tally.

        Args:
            winners: ``[m]`` winning stripe per attribute, -1 for none (as
                returned by :class:`~alfo_torchreid.losses.ALFOLoss`).
        """
        self._require_local_branch()
        winners = winners.to(self.vote_counts.device)
        ballots = F.one_hot(winners.clamp(min=0), self.num_parts)
        self.vote_counts += ballots * (winners >= 0).unsqueeze(1)

    def winning_stripes(self):
        """``[m]`` the stripe that won each attribute's vote most often in
        training (ties: lower index); -1 for attributes never voted on."""
        self._require_local_branch()
        winners = self.vote_counts.argmax(1)
        return torch.where(self.vote_counts.sum(1) > 0, winners, -1)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f'{name} must be one of {choices}, got {value!r}')

