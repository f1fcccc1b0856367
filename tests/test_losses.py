"""Focal loss, stripe vote and the ALFO total loss, against hand computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from alfo_torchreid.data.attributes import MARKET_SCHEMA
from alfo_torchreid.losses import (ALFOLoss, attribute_logit_widths, attribute_losses, focal_loss,
                                   logits_to_probabilities, vote)
from alfo_torchreid.models import ALFOOutputs
from alfo_torchreid.utils.errors import ConfigError

MARKET_WIDTHS = attribute_logit_widths(MARKET_SCHEMA.num_classes)


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def hand_binary_focal(z, y, alpha, gamma):
    p = sigmoid(z)
    if y == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p ** gamma * math.log(1 - p)


def test_attribute_logit_widths():
    assert MARKET_WIDTHS == (4,) + (1,) * 26
    assert attribute_logit_widths((2, 3, 2)) == (1, 3, 1)


@pytest.mark.parametrize('alpha, gamma', [(0.25, 2.0), (0.5, 2.0), (0.7, 1.0), (0.5, 0.0)])
def test_binary_focal_matches_equation_1(alpha, gamma):
    z = [0.0, 2.0, -1.5, 3.0, -0.3]
    y = [1, 1, 0, 0, 1]
    got = focal_loss(torch.tensor(z), torch.tensor(y), alpha, gamma)
    want = [hand_binary_focal(zi, yi, alpha, gamma) for zi, yi in zip(z, y)]
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_binary_focal_at_zero_logit():
    # p = 0.5: positive -> 0.25 * 0.5^2 * ln 2, negative -> 0.75 * 0.5^2 * ln 2
    got = focal_loss(torch.zeros(2), torch.tensor([1, 0]), alpha=0.25, gamma=2.0)
    assert got.tolist() == pytest.approx([0.0625 * math.log(2), 0.1875 * math.log(2)], rel=1e-6)


def test_multiclass_focal_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([2, 0])
    total = sum(math.exp(v) for v in (1, 2, 3, 4))
    p0 = math.exp(3) / total
    want = [-0.3 * (1 - p0) ** 2 * math.log(p0), -0.3 * 0.75 ** 2 * math.log(0.25)]
    got = focal_loss(logits, target, alpha=0.3, gamma=2.0)
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_gamma_0_alpha_half_is_half_cross_entropy():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, generator=g) * 3
    y = torch.randint(2, (50,), generator=g)
    bce = F.binary_cross_entropy_with_logits(z, y.float(), reduction='none')
    assert torch.allclose(focal_loss(z, y, 0.5, 0.0), bce / 2, atol=1e-6)
    logits = torch.randn(50, 4, generator=g) * 3
    t = torch.randint(4, (50,), generator=g)
    ce = F.cross_entropy(logits, t, reduction='none')
    assert torch.allclose(focal_loss(logits, t, 0.5, 0.0), ce / 2, atol=1e-6)


def test_focal_gamma_shrinks_easy_examples_more():
    easy, hard = focal_loss(torch.tensor([4.0, -1.0]), torch.tensor([1, 1]), 0.5, 2.0)
    ce_easy, ce_hard = focal_loss(torch.tensor([4.0, -1.0]), torch.tensor([1, 1]), 0.5, 0.0)
    assert easy / ce_easy < hard / ce_hard < 1


def test_focal_masks_unknown_labels_and_reduces_over_known():
    z = torch.tensor([0.0, 5.0, -2.0])
    y = torch.tensor([1, -1, 0])
    per_sample = focal_loss(z, y, 0.25, 2.0)
    assert per_sample[1] == 0
    known = [hand_binary_focal(0.0, 1, 0.25, 2.0), hand_binary_focal(-2.0, 0, 0.25, 2.0)]
    assert focal_loss(z, y, 0.25, 2.0, 'sum').item() == pytest.approx(sum(known), rel=1e-6)
    assert focal_loss(z, y, 0.25, 2.0, 'mean').item() == pytest.approx(sum(known) / 2, rel=1e-6)
    assert focal_loss(z, torch.full((3,), -1), reduction='mean').item() == 0
    age = focal_loss(torch.randn(3, 4), torch.tensor([-1, 3, -1]))
    assert age[0] == 0 and age[2] == 0 and age[1] > 0


@pytest.mark.parametrize('gamma', [0.0, 2.0])
def test_focal_is_finite_for_extreme_logits(gamma):
    z = torch.tensor([-200.0, 200.0, -200.0, 200.0], requires_grad=True)
    loss = focal_loss(z, torch.tensor([1, 1, 0, 0]), 0.5, gamma)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(z.grad).all()
    assert loss[0].item() == pytest.approx(100, rel=1e-4)  # -0.5 * 1^gamma * log(e^-200)
    logits = torch.tensor([[300.0, -300.0, 0.0, 0.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0]), 0.5, gamma)
    loss.sum().backward()
    assert loss.item() == 0 and torch.isfinite(logits.grad).all()


def test_focal_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r'logits \(3, 5\).*target \(4,\)'):
        focal_loss(torch.zeros(3, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="reduction.*'avg'"):
        focal_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long), reduction='avg')


def test_logits_to_probabilities():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, -2.0]])  # widths (1, 4, 1)
    probs = logits_to_probabilities(logits, (1, 4, 1))
    assert probs[0, 0].item() == pytest.approx(0.5)
    assert torch.allclose(probs[0, 1:5], torch.softmax(logits[0, 1:5], 0))
    assert probs[0, 5].item() == pytest.approx(sigmoid(-2.0), rel=1e-6)


# ---- vote -------------------------------------------------------------------

# 4 samples x 3 stripes. Each sample's lowest loss: stripe 1, 1, 0, 2.
LOSSES = torch.tensor([[0.9, 0.1, 0.5],
                       [0.8, 0.2, 0.3],
                       [0.1, 0.7, 0.6],
                       [0.6, 0.5, 0.4]])


def test_majority_vote_by_hand():
    loss, winner = vote(LOSSES, 'majority')
    assert winner.item() == 1  # 2 votes for stripe 1
    assert loss.item() == pytest.approx((0.1 + 0.2 + 0.7 + 0.5) / 4)


def test_majority_vote_ties_go_to_the_lower_stripe():
    # votes: stripe 2, 0 -> tie between 0 and 2 -> stripe 0
    losses = torch.tensor([[0.5, 0.6, 0.1], [0.2, 0.9, 0.4]])
    loss, winner = vote(losses, 'majority')
    assert winner.item() == 0
    assert loss.item() == pytest.approx((0.5 + 0.2) / 2)
    # a sample whose stripes tie votes for the lower one: stripe 1 (not 2) here
    loss, winner = vote(torch.tensor([[0.9, 0.3, 0.3]]), 'majority')
    assert winner.item() == 1


def test_min_vote_by_hand():
    # stripe means: 0.6, 0.375, 0.45 -> stripe 1
    loss, winner = vote(LOSSES, 'min')
    assert winner.item() == 1 and loss.item() == pytest.approx(0.375)
    # where the majority and the minimum disagree: stripe 0 gets 2 votes, stripe 1 the
    # lowest mean
    losses = torch.tensor([[0.1, 0.2], [0.1, 0.2], [5.0, 0.2]])
    assert vote(losses, 'majority')[1].item() == 0
    assert vote(losses, 'min')[1].item() == 1
    # tie of means -> lower stripe
    assert vote(torch.tensor([[0.3, 0.1, 0.2], [0.1, 0.3, 0.2]]), 'min')[1].item() == 0


def test_mean_vote_by_hand():
    loss, winner = vote(LOSSES, 'mean')
    assert winner.item() == -1
    assert loss.item() == pytest.approx(LOSSES.mean().item())


def test_vote_ignores_invalid_samples():
    valid = torch.tensor([False, False, True, True])  # votes: stripe 0, stripe 2 -> 0
    loss, winner = vote(LOSSES, 'majority', valid)
    assert winner.item() == 0 and loss.item() == pytest.approx((0.1 + 0.6) / 2)
    loss, winner = vote(LOSSES, 'min', valid)  # means over samples 2, 3: .35, .6, .5
    assert winner.item() == 0 and loss.item() == pytest.approx(0.35)
    loss, winner = vote(LOSSES, 'mean', torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0 and winner.item() == -1


@pytest.mark.parametrize('mode', ['majority', 'min', 'mean'])
def test_vote_is_vectorised_over_attributes(mode):
    g = torch.Generator().manual_seed(1)
    losses = torch.rand(8, 6, 5, generator=g)
    valid = torch.rand(8, 5, generator=g) > 0.3
    valid[:, 4] = False  # an attribute without any known label
    loss, winner = vote(losses, mode, valid)
    for j in range(5):
        lj, wj = vote(losses[:, :, j], mode, valid[:, j])
        assert loss[j].item() == pytest.approx(lj.item()) and winner[j] == wj
    assert loss[4] == 0 and winner[4] == -1


@pytest.mark.parametrize('mode', ['majority', 'min'])
def test_vote_gradient_reaches_only_the_winning_stripe(mode):
    g = torch.Generator().manual_seed(2)
    losses = torch.rand(8, 6, 3, generator=g).requires_grad_()
    valid = torch.ones(8, 3, dtype=torch.bool)
    valid[:3, 1] = False
    loss, winner = vote(losses, mode, valid)
    loss.sum().backward()
    for j in range(3):
        grad = losses.grad[:, :, j]
        others = [p for p in range(6) if p != winner[j]]
        assert (grad[:, others] == 0).all()
        expected = valid[:, j].float() / valid[:, j].sum()
        assert torch.allclose(grad[:, winner[j]], expected)


def test_mean_vote_gradient_reaches_every_stripe():
    losses = torch.rand(4, 6, requires_grad=True)
    vote(losses, 'mean')[0].backward()
    assert torch.allclose(losses.grad, torch.full((4, 6), 1 / 24))


def test_vote_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="vote mode.*'best'"):
        vote(LOSSES, 'best')


# ---- per-stripe attribute losses and the total --------------------------------

def random_batch(B=5, P=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, P, sum(MARKET_WIDTHS), generator=g) * 2
    attrs = torch.stack([torch.randint(c, (B,), generator=g)
                         for c in MARKET_SCHEMA.num_classes], dim=1)
    attrs[0, :5] = -1
    attrs[:, 7] = -1  # no known label in the batch
    return logits, attrs


def test_attribute_losses_match_a_per_attribute_loop():
    logits, attrs = random_batch()
    losses, valid = attribute_losses(logits, attrs, MARKET_WIDTHS, 0.25, 2.0)
    assert losses.shape == (5, 6, 27) and torch.equal(valid, attrs >= 0)
    start = 0
    for j, w in enumerate(MARKET_WIDTHS):
        for p in range(6):
            z = logits[:, p, start] if w == 1 else logits[:, p, start:start + w]
            assert torch.allclose(losses[:, p, j], focal_loss(z, attrs[:, j], 0.25, 2.0))
        start += w
    age_logits = logits[1, 2, :4]
    p_t = torch.softmax(age_logits, 0)[attrs[1, 0]].item()
    assert losses[1, 2, 0].item() == pytest.approx(-0.25 * (1 - p_t) ** 2 * math.log(p_t),
                                                   rel=1e-5)


def test_alfo_loss_combines_id_and_voted_attribute_losses():
    logits, attrs = random_batch()
    id_logits = torch.randn(5, 10)
    pids = torch.tensor([0, 3, 3, 9, 1])
    criterion = ALFOLoss(10, MARKET_WIDTHS, id_weight=0.7, attr_weight=2.0, alpha=0.25,
                         gamma=2.0, use_gpu=False)
    out = criterion(ALFOOutputs(id_logits, logits), pids, attrs)
    want_id = F.cross_entropy(id_logits, pids, label_smoothing=0.1)
    losses, valid = attribute_losses(logits, attrs, MARKET_WIDTHS, 0.25, 2.0)
    per_attribute, winners = vote(losses, 'majority', valid)
    want_attr = per_attribute.sum()  # attribute 7 has no known label: its loss is 0
    assert per_attribute[7] == 0
    assert out.id.item() == pytest.approx(want_id.item(), rel=1e-5)
    assert out.attr.item() == pytest.approx(want_attr.item(), rel=1e-5)
    assert out.total.item() == pytest.approx(0.7 * want_id.item() + 2.0 * want_attr.item(),
                                             rel=1e-5)
    assert torch.equal(out.winners, winners) and out.winners[7] == -1


def test_mean_reduction_is_the_sum_over_the_number_of_attributes():
    logits, attrs = random_batch()
    attrs[0, 7] = 1  # every attribute has a known label: m = 27 in the mean
    outputs, pids = ALFOOutputs(torch.randn(5, 10), logits), torch.zeros(5, dtype=torch.long)
    summed = ALFOLoss(10, MARKET_WIDTHS, use_gpu=False)(outputs, pids, attrs)
    mean = ALFOLoss(10, MARKET_WIDTHS, attr_reduction='mean', use_gpu=False)(outputs, pids, attrs)
    assert mean.attr.item() == (summed.attr / 27).item()
    assert torch.equal(mean.per_attribute, summed.per_attribute)
    assert mean.total.item() == pytest.approx((summed.id + summed.attr / 27).item(), rel=1e-7)
    attrs[0, 7] = -1  # attribute 7 unknown in the batch: the mean runs over the other 26
    mean = ALFOLoss(10, MARKET_WIDTHS, attr_reduction='mean', use_gpu=False)(outputs, pids, attrs)
    summed = ALFOLoss(10, MARKET_WIDTHS, use_gpu=False)(outputs, pids, attrs)
    assert mean.attr.item() == (summed.attr / 26).item()


def test_unknown_attribute_reduction_is_refused():
    with pytest.raises(ConfigError, match="attr_reduction must be one of .*'median'"):
        ALFOLoss(10, MARKET_WIDTHS, attr_reduction='median', use_gpu=False)


def test_alfo_loss_without_focal_is_half_cross_entropy():
    logits, attrs = random_batch()
    plain = ALFOLoss(10, MARKET_WIDTHS, focal=False, use_gpu=False)
    half_ce = ALFOLoss(10, MARKET_WIDTHS, alpha=0.5, gamma=0.0, use_gpu=False)
    outputs = ALFOOutputs(None, logits)
    pids = torch.zeros(5, dtype=torch.long)
    assert plain(outputs, pids, attrs).total.item() == half_ce(outputs, pids, attrs).total.item()
    ce = F.binary_cross_entropy_with_logits(logits[1:, 0, 5], attrs[1:, 2].float())
    losses, _ = attribute_losses(logits, attrs, MARKET_WIDTHS, plain.alpha, plain.gamma)
    assert losses[1:, 0, 2].mean().item() == pytest.approx(ce.item() / 2, rel=1e-5)


def test_alfo_loss_branch_switches():
    logits, attrs = random_batch()
    id_logits, pids = torch.randn(5, 10), torch.zeros(5, dtype=torch.long)
    criterion = ALFOLoss(10, MARKET_WIDTHS, id_weight=0.5, attr_weight=3.0, use_gpu=False)
    local_only = criterion(ALFOOutputs(None, logits), pids, attrs)
    assert local_only.id is None and local_only.total.item() == pytest.approx(
        3.0 * local_only.attr.item())
    global_only = criterion(ALFOOutputs(id_logits, None), pids, attrs)
    assert global_only.attr is None and global_only.winners is None
    assert global_only.total.item() == pytest.approx(0.5 * global_only.id.item())


def test_alfo_loss_creates_no_tensor_off_the_inputs_device():
    # On the meta device any tensor made without device= (it would be a CPU
    # tensor) fails to mix with the inputs, as it would on a GPU.
    logits, attrs = random_batch()
    logits = logits.to('meta').requires_grad_()
    criterion = ALFOLoss(10, MARKET_WIDTHS, use_gpu=False)
    for mode in ('majority', 'min', 'mean'):
        criterion.vote_mode = mode
        out = criterion(ALFOOutputs(None, logits), torch.zeros(5, dtype=torch.long,
                                                                 device='meta'), attrs.to('meta'))
        out.total.backward()
        assert out.total.device.type == 'meta' and out.winners.device.type == 'meta'


def test_alfo_loss_rejects_unknown_vote_mode():
    with pytest.raises(ConfigError, match="vote mode.*'sum'"):
        ALFOLoss(10, MARKET_WIDTHS, vote_mode='sum', use_gpu=False)
