"""ALFO's losses: focal loss per attribute and stripe, the stripe vote, the total.

How an attribute is scored (the layout of the stripe heads' logits):
    a binary attribute has ONE logit ``z`` with ``p = sigmoid(z)`` = P(yes), as in
    the paper's eq. 1 (docs/method.md, "Loss"); an attribute of ``c > 2`` classes
    (Market's age) has ``c`` logits and a softmax. The logits of all attributes
    sit side by side, in schema order, in the last axis (width
    ``K = sum(attribute_logit_widths(...))``).

Labels are 0-based and ``-1`` (unknown) is masked: it contributes no loss and
no vote. Every tensor created here is created on the device of the inputs.
"""
from itertools import accumulate
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchreid

from alfo_torchreid.data.attributes import UNKNOWN
from alfo_torchreid.utils.errors import ConfigError

VOTE_MODES = ('majority', 'min', 'mean')
ATTR_REDUCTIONS = ('sum', 'mean')

# alpha = 0.5 weighs positives and negatives alike: the paper gives no value, and
# RetinaNet's 0.25 (tuned for detection's rare foreground) would down-weight the
# positives, which are the rare side of most attributes (hat, each colour). With
# 0.5 the "no focal loss" ablation (gamma = 0, alpha = 0.5) differs from ALFO by
# the focusing term alone. gamma = 2 is the focal-loss paper's default.
DEFAULT_ALPHA = 0.5
DEFAULT_GAMMA = 2.0


def attribute_logit_widths(num_classes: Sequence[int]) -> Tuple[int, ...]:
    """Logits per attribute: 1 for a binary attribute, ``c`` for ``c > 2`` classes."""
    return tuple(1 if c == 2 else c for c in num_classes)


def split_attribute_logits(logits, widths: Sequence[int]):
    """Splits ``[..., K]`` into one ``[..., w_j]`` view per attribute, in schema order."""
    return torch.split(logits, list(widths), dim=-1)


def logits_to_probabilities(logits, widths: Sequence[int]):
    """Per-logit probabilities ``[..., K]``: P(yes) (sigmoid) in a binary
    attribute's column, the softmax over its slice for a multi-class one."""
    return torch.cat([torch.sigmoid(z) if w == 1 else torch.softmax(z, dim=-1)
                      for z, w in zip(split_attribute_logits(logits, widths), widths)], dim=-1)


def _reduce(loss, valid, reduction):
    if reduction == 'none':
        return loss
    if reduction == 'sum':
        return loss.sum()
    if reduction == 'mean':
        return loss.sum() / valid.sum().clamp(min=1)
    raise ConfigError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def focal_loss(logits, target, alpha: float = DEFAULT_ALPHA, gamma: float = DEFAULT_GAMMA,
               reduction: str = 'none'):
    """Focal loss (the paper's eq. 1, docs/method.md "Loss"), binary or multi-class.

    Binary (``logits.shape == target.shape``, one logit per sample, ``p = sigmoid``)::

        FL = -alpha * (1 - p)^gamma * log p          if target == 1
        FL = -(1 - alpha) * p^gamma * log(1 - p)     if target == 0

    Multi-class (``logits`` has one more, last axis of ``c`` classes)::

        FL = -alpha_t * (1 - p_t)^gamma * log p_t,   p_t = softmax(logits)[target]

    with ``alpha_t = alpha`` for every class: a multi-class attribute has no
    positive/negative side to balance, and this keeps ``gamma = 0, alpha = 0.5``
    equal to half the cross entropy in both forms.

    Args:
        logits: ``[...]`` (binary) or ``[..., c]`` (multi-class), raw scores.
        target: ``[...]`` integer labels (0/1, or ``0..c-1``); ``-1`` is masked.
        alpha, gamma: as above; ``gamma = 0`` gives (alpha-weighted) cross entropy.
        reduction: ``'none'`` (``[...]``, 0 at masked entries), ``'sum'``, or
            ``'mean'`` over the unmasked entries (0 if there are none).
    """
    valid = target != UNKNOWN
    if logits.shape == target.shape:
        positive = target == 1
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        log_p_true = torch.where(positive, log_p, log_not_p)
        p_false = torch.sigmoid(torch.where(positive, -logits, logits))
        weight = torch.where(positive, alpha, 1 - alpha)
    elif logits.shape[:-1] == target.shape:
        log_probs = F.log_softmax(logits, dim=-1)
        log_p_true = log_probs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        p_false = -torch.expm1(log_p_true)
        weight = alpha
    else:
        raise ValueError(f'focal_loss: logits {tuple(logits.shape)} fit neither a binary '
                         f'(same shape) nor a multi-class (one more axis) target '
                         f'{tuple(target.shape)}')
    modulation = p_false.clamp(min=0).pow(gamma) if gamma else 1.0
    loss = torch.where(valid, -weight * modulation * log_p_true, 0.0)
    return _reduce(loss, valid, reduction)


def attribute_losses(attr_logits, attrs, widths: Sequence[int],
                     alpha: float = DEFAULT_ALPHA, gamma: float = DEFAULT_GAMMA):
    """Focal loss of every sample, stripe and attribute.

    Args:
        attr_logits: ``[B, P, K]`` logits of the ``P`` stripes' heads.
        attrs: ``[B, m]`` 0-based labels, ``-1`` unknown.
        widths: logits per attribute (:func:`attribute_logit_widths`), ``len m``.

    Returns:
        (losses ``[B, P, m]``, 0 where the label is unknown; valid ``[B, m]`` bool).
    """
    B, P, _ = attr_logits.shape
    device = attr_logits.device
    widths = list(widths)
    targets = attrs.unsqueeze(1).expand(B, P, len(widths))
    offsets = [0, *accumulate(widths)][:-1]
    binary = [j for j, w in enumerate(widths) if w == 1]
    binary_index = torch.tensor(binary, dtype=torch.long, device=device)
    columns = torch.tensor([offsets[j] for j in binary], dtype=torch.long, device=device)
    losses = attr_logits.new_zeros(B, P, len(widths))
    losses[..., binary_index] = focal_loss(attr_logits.index_select(2, columns),
                                           targets.index_select(2, binary_index), alpha, gamma)
    for j, (w, start) in enumerate(zip(widths, offsets)):
        if w > 1:  # the few multi-class attributes (Market: age)
            losses[..., j] = focal_loss(attr_logits[..., start:start + w], targets[..., j],
                                        alpha, gamma)
    return losses, attrs != UNKNOWN


def vote(losses, mode: str = 'majority', valid=None, sum_over_ranks=None):
    """Picks, per attribute, the stripe whose loss trains it (docs/method.md, "Loss").

    Modes:
        ``majority``: each valid sample votes for its lowest-loss stripe (ties:
            lower index); the stripe with most votes (ties: lower index) wins and
            the attribute's loss is that stripe's mean loss over the valid samples.
        ``min``: the stripe with the lowest mean loss over the valid samples wins.
        ``mean``: no winner; the loss is the mean over stripes of those means.

    The gradient reaches only the winning stripe's losses (all stripes for ``mean``).
    An attribute with no valid sample has loss 0 and winner -1.

    Under ``DistributedDataParallel`` (docs/distributed.md, "The vote"), each of
    the W processes holds a share of the global batch and ``sum_over_ranks``
    sums a tensor over them (:func:`alfo_torchreid.utils.distributed.sum_over_ranks`):
    the ballots, per-stripe loss sums and valid counts of all shares are summed
    before the winner is picked, so every process picks the winner of the
    global batch, and each returns ``W * (its valid samples' loss sum) /
    (valid samples of the global batch)``, whose mean over the processes (what
    DDP's gradient averaging takes) is the global batch's mean loss, exactly,
    however the valid labels fall among the processes.

    Args:
        losses: ``[B, P]`` (one attribute) or ``[B, P, m]`` per-sample losses.
        mode: one of :data:`VOTE_MODES`.
        valid: ``[B]`` or ``[B, m]`` bool; all valid if None.
        sum_over_ranks: None in a single process; see above.

    Returns:
        (loss ``[]`` or ``[m]``, winning stripe ``[]`` or ``[m]`` long, -1 for none).
    """
    if mode not in VOTE_MODES:
        raise ConfigError(f'vote mode must be one of {VOTE_MODES}, got {mode!r}')
    single = losses.dim() == 2
    if single:
        losses = losses.unsqueeze(2)
        valid = None if valid is None else valid.unsqueeze(1)
    if valid is None:
        valid = torch.ones_like(losses[:, 0], dtype=torch.bool)
    mask = valid.unsqueeze(1)  # [B, 1, m]
    sums = torch.where(mask, losses, 0.0).sum(0)  # [P, m]
    num_valid = valid.sum(0)  # [m]
    tally = None
    if mode == 'majority':
        ballots = F.one_hot(losses.detach().argmin(1), losses.shape[1])  # [B, m, P]
        tally = (ballots * valid.unsqueeze(2)).sum(0)  # [m, P]
    if sum_over_ranks is None:
        stripe_means = sums / num_valid.clamp(min=1)  # [P, m]
        global_means = stripe_means.detach()
    else:
        global_sums, num_valid, tally, num_ranks = _sum_ballots(sum_over_ranks, sums.detach(),
                                                                num_valid, tally)
        stripe_means = sums * num_ranks / num_valid.clamp(min=1)
        global_means = global_sums / num_valid.clamp(min=1)
    if mode == 'mean':
        loss = stripe_means.mean(0)
        winner = torch.full_like(num_valid, -1)
    else:
        winner = tally.argmax(1) if mode == 'majority' else global_means.argmin(0)
        loss = stripe_means.gather(0, winner.unsqueeze(0)).squeeze(0)
        winner = torch.where(num_valid > 0, winner, -1)
    if single:
        return loss.squeeze(0), winner.squeeze(0)
    return loss, winner


def _sum_ballots(sum_over_ranks, sums, num_valid, tally):
    """Sums over the processes, in one collective, the per-stripe loss sums
    ``[P, m]``, valid counts ``[m]`` and ballot tally ``[m, P]`` (or None).

    Returns:
        (sums, counts ``[m]`` long, tally ``[m, P]`` long or None, number of processes).
    """
    parts = [sums, num_valid] + ([] if tally is None else [tally])
    packed = torch.cat([p.flatten().double() for p in parts] + [sums.new_ones(1).double()])
    total = sum_over_ranks(packed)
    sizes = [p.numel() for p in parts]
    unpacked = [t.view(p.shape) for t, p in zip(total.split(sizes + [1])[:-1], parts)]
    sums = unpacked[0].to(sums.dtype)
    num_valid = unpacked[1].round().long()
    tally = unpacked[2].round().long() if tally is not None else None
    return sums, num_valid, tally, total[-1].to(sums.dtype)


def _fp32(tensor):
    """``tensor`` cast to fp32 if it is of a lower float precision (autocast's output)."""
    if tensor is not None and tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


class ALFOLossOutput(NamedTuple):
    """What :class:`ALFOLoss` returns; the parts are for logging.

    total: the scalar to minimise. id: identity loss (None without the global
    branch). attr: the voted attribute losses, summed (or averaged, see
    ``attr_reduction``) over the attributes (None without the local branch).
    per_attribute: ``[m]`` voted loss of each attribute. winners: ``[m]`` winning
    stripe of each attribute (-1: no vote), for ``ALFO.record_votes``.
    triplet: hard triplet loss of ``outputs.features`` (None when off).
    """
    total: torch.Tensor
    id: Optional[torch.Tensor]
    attr: Optional[torch.Tensor]
    per_attribute: Optional[torch.Tensor]
    winners: Optional[torch.Tensor]
    triplet: Optional[torch.Tensor] = None


class ALFOLoss(nn.Module):
    """``total = id_weight * L_ID + attr_weight * sum_j L_att(j)
    [+ triplet_weight * L_tri]`` (docs/method.md, "Loss").

    The paper's total loss is "the ID loss plus the voted attribute losses"
    (end of its section 2.1, "总损失为行人的 ID 损失与投票选出的属性损失之和"; the
    abstract says the same): a sum over the ``m`` attributes. ``L_ID`` is
    torchreid's label-smoothing cross entropy; ``L_att(j)`` is the voted focal
    loss of attribute ``j`` (0 for an attribute with no known label in the batch).
    ``attr_reduction='mean'`` divides the sum by the number of attributes with
    a known label, which is APR's weighting (its eq. 3), 1/m of the paper's.

    Args:
        num_classes: training identities.
        widths: logits per attribute (:func:`attribute_logit_widths`).
        id_weight: lambda. attr_weight: w.
        attr_reduction: ``'sum'`` (the paper) or ``'mean'`` (APR) over attributes.
        triplet_weight: weight of torchreid's hard-mining ``TripletLoss`` on
            ``ALFOOutputs.features`` (``loss.name triplet``): the retrieval
            feature read before the neck, so with ``neck='bnneck'`` the global
            feature before the BNNeck (retrieval uses it after); 0 leaves it out.
        margin: its margin.
        alpha, gamma: focal loss parameters.
        focal: False for the "no focal loss" ablation: gamma = 0, alpha = 0.5,
            i.e. half the cross entropy (docs/method.md, Table 1).
        vote_mode: see :func:`vote`.
        label_smooth: torchreid's label smoothing of ``L_ID``.
        use_gpu: as torchreid's CrossEntropyLoss, which moves its targets with
            ``.cuda()`` when set.
        sum_over_ranks: under DistributedDataParallel, the sum of a tensor over
            the processes (:func:`alfo_torchreid.utils.distributed.sum_over_ranks`):
            the vote is then the global batch's (see :func:`vote`); None in a
            single process.

    Outputs in fp16 or bf16 (``train.amp``) are cast to fp32 first: the losses
    and the vote are computed in fp32 whatever the autocast precision.
    """

    def __init__(self, num_classes, widths, id_weight=1.0, attr_weight=1.0,
                 alpha=DEFAULT_ALPHA, gamma=DEFAULT_GAMMA, focal=True,
                 vote_mode='majority', label_smooth=True, use_gpu=True, attr_reduction='sum',
                 triplet_weight=0.0, margin=0.3, sum_over_ranks=None):
        super().__init__()
        if vote_mode not in VOTE_MODES:
            raise ConfigError(f'vote mode must be one of {VOTE_MODES}, got {vote_mode!r}')
        if attr_reduction not in ATTR_REDUCTIONS:
            raise ConfigError(f'attr_reduction must be one of {ATTR_REDUCTIONS}, '
                              f'got {attr_reduction!r}')
        self.attr_reduction = attr_reduction
        self.widths = tuple(widths)
        self.id_weight, self.attr_weight = id_weight, attr_weight
        self.alpha, self.gamma = (alpha, gamma) if focal else (0.5, 0.0)
        self.vote_mode = vote_mode
        self.sum_over_ranks = sum_over_ranks
        self.id_loss = torchreid.losses.CrossEntropyLoss(
            num_classes, use_gpu=use_gpu, label_smooth=label_smooth)
        self.triplet_weight = triplet_weight
        self.triplet_loss = torchreid.losses.TripletLoss(margin=margin) if triplet_weight else None

    def forward(self, outputs, pids, attrs):
        """
        Args:
            outputs: the model's training output (``id_logits [B, N]`` or None,
                ``attr_logits [B, P, K]`` or None, ``features [B, D]``).
            pids: ``[B]`` identity labels. attrs: ``[B, m]`` labels, -1 unknown.
        """
        outputs = type(outputs)(*(_fp32(t) for t in outputs))
        total = id_loss = attr_loss = per_attribute = winners = triplet = None
        if outputs.id_logits is not None:
            id_loss = self.id_loss(outputs.id_logits, pids)
            total = self.id_weight * id_loss
        if outputs.attr_logits is not None:
            losses, valid = attribute_losses(outputs.attr_logits, attrs, self.widths,
                                             self.alpha, self.gamma)
            per_attribute, winners = vote(losses, self.vote_mode, valid, self.sum_over_ranks)
            attr_loss = per_attribute.sum()
            if self.attr_reduction == 'mean':
                attr_loss = attr_loss / self._known_attributes(valid).clamp(min=1)
            weighted = self.attr_weight * attr_loss
            total = weighted if total is None else total + weighted
        if self.triplet_loss is not None:
            triplet = self.triplet_loss(outputs.features, pids)
            total = total + self.triplet_weight * triplet
        return ALFOLossOutput(total, id_loss, attr_loss, per_attribute, winners, triplet)

    def _known_attributes(self, valid):
        """The number of attributes with a known label in the (global) batch."""
        known = valid.any(0)
        if self.sum_over_ranks is not None:
            known = self.sum_over_ranks(known.long()) > 0
        return known.sum()
