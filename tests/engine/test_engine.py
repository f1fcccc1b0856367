"""ImageFocalVoteEngine on the toy dataset: it learns, tests, and places tensors right."""
import contextlib
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchreid
from torch.utils.tensorboard import SummaryWriter
from fake_cuda import cuda_reported_available, fake_cuda

import alfo_torchreid  # noqa: F401  (registers market1501_attr and alfo)
from alfo_torchreid.data.attributes import MARKET_SCHEMA, AttributeSchema
from alfo_torchreid.data.toy import make_toy_dataset
from alfo_torchreid.engine.engine import HISTORY, ImageFocalVoteEngine, ResumableEngineMixin
from alfo_torchreid.evaluation.metrics import attribute_metrics
from alfo_torchreid.models import ALFO
from alfo_torchreid.utils.errors import TrainingError

EPOCHS = 8  # x 4 iterations of batch 8 on the 32 toy training images


def make_datamanager(root, **kwargs):
    options = dict(root=str(root), sources='market1501_attr', height=128, width=64,
                   batch_size_train=8, batch_size_test=32, workers=0, use_gpu=False,
                   transforms=['random_flip'])
    options.update(kwargs)
    return torchreid.data.ImageDataManager(**options)


def make_engine(datamanager, lr=1e-3, seed=0, **loss_options):
    torch.manual_seed(seed)
    model = ALFO(datamanager.num_train_pids, schema=datamanager.train_loader.dataset.schema,
                 last_stride=1, num_parts=6)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return ImageFocalVoteEngine(datamanager, model, optimizer, use_gpu=False, **loss_options)


@pytest.fixture(scope='module')
def trained(toy_root, module_tmp):
    """One short ALFO run; returns (engine, save_dir, printed output)."""
    torchreid.utils.set_random_seed(0)
    engine = make_engine(make_datamanager(toy_root))
    save_dir = module_tmp('alfo-run')
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        engine.run(save_dir=str(save_dir), max_epoch=EPOCHS, print_freq=100)
    return engine, save_dir, printed.getvalue()


def history(save_dir):
    return [json.loads(line) for line in (save_dir / HISTORY).read_text().splitlines()]


def test_total_loss_falls(trained):
    _, save_dir, _ = trained
    losses = [h['loss'] for h in history(save_dir)]
    assert len(losses) == EPOCHS
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(h['loss_attr'] > 0 and h['loss_id'] > 0 for h in history(save_dir))


def true_class_log_loss(model, images, labels):
    """Mean -log P(true class) over the known labels of ``images`` ``[N, 3, H, W]``,
    by the model's eval-mode attribute probabilities; ``labels`` ``[N, m]``, -1 unknown."""
    model.eval()
    with torch.no_grad():
        probs = model.attribute_probabilities(images)  # m tensors [N, c_j]
    losses = [-p.gather(1, column.clamp(min=0)[:, None])[:, 0].clamp_min(1e-12).log()[column >= 0]
              for p, column in zip(probs, labels.T)]
    return torch.cat(losses).mean()


def test_training_lowers_the_attribute_loss_on_the_training_images(trained, toy_root):
    # against the same network at its initial weights (make_engine seeds them);
    # 32 steps on 32 images: its predictions are still close to each
    # attribute's majority class, so the test is on the probabilities
    engine, _, _ = trained
    train_eval = make_datamanager(toy_root, transforms=None).train_loader.dataset
    train_eval.transform = engine.datamanager.transform_te
    images = torch.stack([train_eval[i]['img'] for i in range(len(train_eval))])
    labels = torch.stack([train_eval[i]['attrs'] for i in range(len(train_eval))])
    initial = make_engine(make_datamanager(toy_root)).model
    before = true_class_log_loss(initial, images, labels)
    after = true_class_log_loss(engine.model, images, labels)
    assert after < 0.75 * before  # 0.45 against 0.94 when written, (float(after), float(before))


def test_test_prints_reid_and_attribute_results(trained):
    engine, _, printed = trained
    assert 'Rank-1' in printed and 'mAP' in printed
    assert '** Attribute results on market1501_attr' in printed
    results = engine.results['market1501_attr']
    assert 0 <= results['rank1'] <= 1 and 0 <= results['mAP'] <= 1
    assert results['rank1'] == results['cmc'][0]
    attrs = results['attributes']
    assert set(attrs['accuracy']) == set(engine.schema.names)
    assert len(attrs['group_accuracy']) == 12  # the annotators' Market protocol


def test_vote_tally_is_counted_and_survives_the_state_dict(trained):
    engine, _, _ = trained
    model = engine.model
    tally = model.vote_counts
    # one vote per attribute per iteration (every toy attribute is known)
    assert (tally.sum(1) == EPOCHS * 4).all(), tally.sum(1)
    clone = ALFO(model.classifier.out_features, schema=model.schema, last_stride=1, num_parts=6)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    images = torch.randn(3, 3, 128, 64)
    assert torch.equal(clone.vote_counts, tally)
    assert torch.equal(clone.predict_attributes(images), model.predict_attributes(images))


def test_checkpoints_hold_rng_and_signature(trained):
    _, save_dir, _ = trained
    from alfo_torchreid.utils.checkpoints import load_checkpoint
    checkpoint = load_checkpoint(save_dir / 'model' / 'latest.pth.tar')
    assert checkpoint['epoch'] == EPOCHS
    assert checkpoint['signature']['schema']['dataset'] == 'market1501'
    assert {'python', 'numpy', 'torch'} <= set(checkpoint['rng'])


def test_snapshots_hold_the_optimizer_when_asked(trained, tmp_path):
    engine = trained[0]
    from alfo_torchreid.utils.checkpoints import load_checkpoint
    assert 'optimizer' not in load_checkpoint(engine.save_model(0, 0.5, str(tmp_path)))
    engine.snapshot_optimizer = True
    try:
        snapshot = load_checkpoint(engine.save_model(1, 0.5, str(tmp_path)))
    finally:
        engine.snapshot_optimizer = False
    assert snapshot['optimizer']['state'] and snapshot['rank1'] == 0.5


def test_batch_without_attributes_is_refused(toy_root):
    engine = make_engine(make_datamanager(toy_root))
    batch = next(iter(engine.train_loader))
    del batch['attrs']
    with pytest.raises(TrainingError, match='carry no "attrs".*market1501_attr'):
        engine.forward_backward(batch)


def _focal_by_hand(logits, label, alpha, gamma):
    """Focal loss of one sample, stripe and attribute (docs/method.md, eq. 1), in float64."""
    if logits.size == 1:  # binary: p = sigmoid(z) = P(yes)
        p = 1 / (1 + np.exp(-logits[0]))
        return -alpha * (1 - p) ** gamma * np.log(p) if label == 1 else \
            -(1 - alpha) * p ** gamma * np.log(1 - p)
    p = np.exp(logits - logits.max())
    p_t = p[label] / p.sum()
    return -alpha * (1 - p_t) ** gamma * np.log(p_t)


def _total_loss_by_hand(id_logits, attr_logits, pids, attrs, widths, alpha=0.5, gamma=2.0,
                        eps=0.1):
    """L_ID (label-smoothed cross entropy) + the sum over attributes of the
    majority-voted stripe's mean focal loss, with loops over samples and stripes."""
    num_ids = id_logits.shape[1]
    log_p = id_logits - id_logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    smooth = np.full(id_logits.shape, eps / num_ids)
    smooth[np.arange(len(pids)), pids] += 1 - eps
    total = -(smooth * log_p).sum(1).mean()
    B, P, _ = attr_logits.shape
    start = 0
    for j, width in enumerate(widths):
        losses = np.array([[_focal_by_hand(attr_logits[b, p, start:start + width], attrs[b, j],
                                           alpha, gamma) for p in range(P)] for b in range(B)])
        start += width
        known = attrs[:, j] >= 0
        if not known.any():
            continue
        ballots = np.bincount(losses[known].argmin(1), minlength=P)
        total += losses[known, ballots.argmax()].mean()
    return total


def test_the_engines_loss_is_the_id_loss_plus_the_sum_of_voted_focal_losses(toy_root):
    engine = make_engine(make_datamanager(toy_root))
    batch = next(iter(engine.train_loader))
    batch['attrs'][0, 3] = -1  # an unknown label is left out of its attribute's loss
    engine.model.train()
    with torch.no_grad():
        outputs = engine.model(batch['img'])
    expected = _total_loss_by_hand(outputs.id_logits.double().numpy(),
                                   outputs.attr_logits.double().numpy(),
                                   batch['pid'].numpy(), batch['attrs'].numpy(),
                                   engine.criterion.widths)
    summary = engine.forward_backward(batch)
    # float32 in the engine, float64 here: 1e-6 relative is float32's accuracy
    assert summary['loss'] == pytest.approx(expected, rel=1e-6)
    assert summary['loss_id'] + summary['loss_attr'] == pytest.approx(summary['loss'], rel=1e-6)


def test_non_finite_loss_stops_training_naming_the_part(toy_root, tmp_path):
    engine = make_engine(make_datamanager(toy_root))
    engine.epoch, engine.batch_idx, engine.save_dir = 2, 4, str(tmp_path)
    batch = next(iter(engine.train_loader))
    batch['img'][:] = float('nan')
    with pytest.raises(TrainingError, match=r'"loss" is nan at epoch 3, iteration 5'):
        engine.forward_backward(batch)


# -- device placement (no GPU here: a fake CUDA device checks the rule) ----

def _one_step_on_fake_gpu(datamanager, batch):
    """One forward_backward with use_gpu=True on the fake device; returns the
    tensors that were moved with .cuda()."""
    torch.manual_seed(0)
    model = ALFO(datamanager.num_train_pids, schema=datamanager.train_loader.dataset.schema)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with cuda_reported_available():  # torchreid: use_gpu = cuda available and asked for
        engine = ImageFocalVoteEngine(datamanager, model, optimizer, use_gpu=True)
    assert engine.use_gpu
    with fake_cuda(model) as moved:
        engine.forward_backward(batch)
    return moved


@pytest.fixture(scope='module')
def placement(toy_root):
    datamanager = make_datamanager(toy_root)
    return datamanager, next(iter(datamanager.train_loader))


def test_every_batch_tensor_moves_to_the_gpu(placement):
    moved = _one_step_on_fake_gpu(*placement)
    batch = placement[1]
    for key in ('img', 'pid', 'attrs'):
        assert any(t is batch[key] for t in moved), f'{key} was not moved with .cuda()'


def test_fake_gpu_catches_a_batch_tensor_left_on_the_cpu(placement, monkeypatch):
    original = ImageFocalVoteEngine.parse_data_for_train

    def keep_attrs_on_cpu(self, data):
        imgs, pids, attrs = original(self, data)
        return imgs, pids, _NoCuda(attrs)

    monkeypatch.setattr(ImageFocalVoteEngine, 'parse_data_for_train', keep_attrs_on_cpu)
    with pytest.raises(AssertionError, match='not moved to the device'):
        _one_step_on_fake_gpu(*placement)


def test_fake_gpu_catches_a_cpu_tensor_created_in_the_loss(placement, monkeypatch):
    from alfo_torchreid import losses
    original = losses.vote

    def vote_with_cpu_zeros(per_sample, mode='majority', valid=None, sum_over_ranks=None):
        loss, winner = original(per_sample, mode, valid, sum_over_ranks)
        return loss + torch.zeros(loss.shape), winner

    monkeypatch.setattr(losses, 'vote', vote_with_cpu_zeros)
    with pytest.raises(AssertionError, match='not moved to the device'):
        _one_step_on_fake_gpu(*placement)


class _NoCuda(torch.Tensor):
    """A tensor whose .cuda() leaves it on the CPU (a forgotten move)."""

    def cuda(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


def test_majority_rate_helper_is_not_trivially_high(toy_datasets):
    # the accuracy test above is meaningful only if the majority rate is < 1
    labels = np.stack(list(toy_datasets['market1501'].train_labels.values()))
    majority = np.mean([np.bincount(col).max() / len(col) for col in labels.T])
    assert majority < 0.95


def test_torchreids_evaluator_gives_identical_results(trained, tmp_path):
    # torchreid's Python evaluator fails under numpy 2 when a query has fewer
    # than 50 valid gallery images (a ragged array): test on a larger gallery
    make_toy_dataset(tmp_path, 'market1501', num_train_ids=8, num_test_ids=8, images_per_id=8,
                     queries_per_id=1, cams_per_id=3)
    engine = trained[0]
    own_loaders, engine.test_loader = engine.test_loader, make_datamanager(tmp_path).test_loader
    results = {}
    try:
        for evaluator in ('alfo', 'torchreid'):
            engine.evaluator = evaluator
            with contextlib.redirect_stdout(io.StringIO()):
                engine.test()
            results[evaluator] = dict(engine.results['market1501_attr'])
    finally:
        engine.evaluator, engine.test_loader = 'alfo', own_loaders
    assert len(results['alfo']['cmc']) == 50
    for key in ('rank1', 'mAP', 'cmc'):
        assert results['alfo'][key] == pytest.approx(results['torchreid'][key], abs=1e-6), key
    assert 0 < results['alfo']['mAP'] < 1


def test_a_target_without_attributes_has_no_truths_to_draw():
    # an identity-only dataset (a manifest without a schema) has an empty schema
    gallery = SimpleNamespace(schema=AttributeSchema('custom', (), (), {}),
                              image_attrs={'a.jpg': np.zeros(0, dtype=np.int64)})
    engine = SimpleNamespace(schema=MARKET_SCHEMA,
                             test_loader={'custom': {'gallery': SimpleNamespace(dataset=gallery)}})
    assert ImageFocalVoteEngine._gallery_truths(engine, 'custom', [('a.jpg', 0, 0, 0)]) is None


def test_gallery_attribute_metrics_match_an_independent_pass(trained):
    engine = trained[0]
    with contextlib.redirect_stdout(io.StringIO()):
        engine.test()
    reported = engine.results['market1501_attr']['attributes']
    loader = engine.test_loader['market1501_attr']['gallery']
    engine.model.eval()
    probs, targets = [], []
    with torch.no_grad():
        for data in loader:
            probs.append(engine.model.attribute_probabilities(data['img']))
            targets.append(data['attrs'])
    target = torch.cat(targets)
    real = (target != -1).any(1)
    assert 0 < int(real.sum()) < len(target)  # the toy gallery holds junk and distractors
    expected = attribute_metrics(None, target[real], engine.schema,
                                 probs=[torch.cat(p)[real] for p in zip(*probs)])
    assert reported['mA'] == pytest.approx(expected['mA'], abs=1e-9)
    assert reported['accuracy'] == pytest.approx(expected['accuracy'], abs=1e-9)


class _LoggingLoop:
    """torchreid's loop reduced to its TensorBoard steps: ``epochs`` epochs of
    5 batches, each batch logged at ``epoch * 5 + batch``; ``stop`` ends the
    run (a crash) before that step."""

    def __init__(self, values):
        self.writer, self.train_loader, self.values = None, range(5), values

    def run(self, save_dir, start_epoch=0, test_only=False, stop=None):
        if self.writer is None:
            self.writer = SummaryWriter(log_dir=save_dir)
        for step in range(start_epoch * 5, 10 if stop is None else stop):
            self.writer.add_scalar('Train/loss', self.values[step], step)
        self.writer.close()


class _Resumable(ResumableEngineMixin, _LoggingLoop):
    pass


def test_a_resumed_run_logs_each_tensorboard_step_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _Resumable(values=[100.0] * 10).run(str(tmp_path), stop=8)  # killed in epoch 2 at step 8
    _Resumable(values=[float(s) for s in range(10)]).run(str(tmp_path), start_epoch=1)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars('Train/loss')]
    # epoch 1 from the first run, epoch 2 once, from the resumed one
    assert logged == [(s, 100.0) for s in range(5)] + [(s, float(s)) for s in range(5, 10)]
