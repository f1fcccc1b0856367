"""Center loss (alfo_torchreid.engine.center) by hand: its value, the
gradients BoT gives the network and the centers, the centers' SGD step and
the state a checkpoint keeps, and what resuming it keeps from the config."""
import pytest
import torch

from alfo_torchreid.engine.center import CenterLoss, CenterTerm
from alfo_torchreid.utils import checkpoints
from alfo_torchreid.utils.errors import CheckpointError

N, D, WEIGHT, LR = 3, 4, 0.0005, 0.5
# float32 sums of a few products of values ~1
TOL = dict(atol=1e-6, rtol=1e-5)


def batch():
    torch.manual_seed(0)
    features = torch.randn(5, D, requires_grad=True)
    pids = torch.tensor([0, 2, 2, 1, 0])
    return features, pids


def by_hand(features, pids, centers):
    """1/B sum_i ||f_i - c_{y_i}||^2 written as a loop."""
    total = 0.0
    for f, y in zip(features.tolist(), pids.tolist()):
        total += sum((a - b) ** 2 for a, b in zip(f, centers[y].tolist()))
    return total / len(pids)


def test_center_loss_value():
    features, pids = batch()
    loss = CenterLoss(N, D)
    assert abs(loss(features, pids).item() - by_hand(features, pids, loss.centers)) < 1e-5


def test_term_value_and_gradients():
    features, pids = batch()
    term = CenterTerm(N, D, WEIGHT, LR)
    centers = term.loss.centers.detach().clone()
    value = term(features, pids)
    assert abs(value.item() - WEIGHT * by_hand(features, pids, centers)) < 1e-8
    value.backward()
    diff = features.detach() - centers[pids]  # [B, D]
    # the network gets the weighted gradient: weight * 2 (f_i - c_{y_i}) / B
    torch.testing.assert_close(features.grad, WEIGHT * 2 * diff / len(pids), **TOL)
    # the centers get the unweighted one (BoT divides theirs by the weight):
    # dL/dc_k = -2/B * sum over the batch's images of k of (f_i - c_k)
    expected = torch.zeros(N, D).index_add_(0, pids, -2 * diff / len(pids))
    torch.testing.assert_close(term.loss.centers.grad, expected, **TOL)
    assert term.loss.centers.grad[1].abs().sum() > 0  # identity 1 has one image
    # SGD at lr: c <- c - lr * dL/dc
    term.optimizer.step()
    torch.testing.assert_close(term.loss.centers.detach(), centers - LR * expected, **TOL)


def test_state_round_trip():
    features, pids = batch()
    term = CenterTerm(N, D, WEIGHT, LR)
    term(features, pids).backward()
    term.optimizer.step()
    other = CenterTerm(N, D, WEIGHT, LR)
    other.load_state_dict(term.state_dict())
    assert torch.equal(other.loss.centers, term.loss.centers)
    other.load_state_dict(None)  # a checkpoint without one: nothing changes
    assert torch.equal(other.loss.centers, term.loss.centers)


def test_a_resumed_term_steps_at_the_configs_learning_rate(capsys):
    features, pids = batch()
    term = CenterTerm(N, D, WEIGHT, LR)
    term(features, pids).backward()
    term.optimizer.step()
    resumed = CenterTerm(N, D, WEIGHT, lr=0.1)  # loss.center.lr changed before resuming
    resumed.load_state_dict(term.state_dict())
    assert "the config's loss.center.lr 0.1 replaces the checkpoint's 0.5" in \
        capsys.readouterr().out
    centers = resumed.loss.centers.detach().clone()
    resumed(features, pids).backward()
    resumed.optimizer.step()
    torch.testing.assert_close(resumed.loss.centers.detach(),
                               centers - 0.1 * resumed.loss.centers.grad, **TOL)


@pytest.mark.parametrize('saved, resumed, expected', [
    (True, False, 'was saved by a run with a center loss and this run has none'),
    (False, True, 'was saved by a run without a center loss and this run has one'),
])
def test_resuming_with_the_center_loss_turned_on_or_off_is_refused(tmp_path, saved, resumed,
                                                                   expected):
    model = torch.nn.Linear(D, N)
    optimizer = torch.optim.Adam(model.parameters())
    path = tmp_path / 'latest.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'epoch': 1, 'optimizer': optimizer.state_dict(),
                **({'center_loss': CenterTerm(N, D, WEIGHT, LR).state_dict()} if saved else {})},
               path)
    with pytest.raises(CheckpointError, match=f'{expected}: loss.center.weight must be 0 in both '
                                              'or above 0 in both'):
        checkpoints.load_training_state(path, model, N, optimizer,
                                        center=CenterTerm(N, D, WEIGHT, LR) if resumed else None)
