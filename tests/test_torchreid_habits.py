"""torchreid's options train the model the user asked for (issue: torchreid habits).

Each test here failed before the fix it guards: a loss name that was ignored,
attribute heads treated as backbone by staged_lr / fixbase_epoch, a
DataParallel-wrapped model, the extraction progress, the attribute plot.
"""
import contextlib
import io
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchreid
from alfo_run import REPO, load_tool, refused_run
from fake_cuda import cuda_reported_available, fake_cuda

from alfo_torchreid import config, run as run_lib
from alfo_torchreid.data.attributes import AttributeSchema
from alfo_torchreid.engine.engine import BaselineTripletEngine, ImageFocalVoteEngine, unwrap
from alfo_torchreid.evaluation import report
from alfo_torchreid.evaluation.metrics import attribute_metrics
from alfo_torchreid.models import ALFO
from alfo_torchreid.utils.checkpoints import load_checkpoint

MAIN = load_tool('main').main
TOY = ['data.height', '128', 'data.width', '64', 'data.workers', '0', 'train.batch_size', '8',
       'model.pretrained', '', 'data.transforms', '[]', 'use_gpu', 'False']
TRIPLET = ['loss.name', 'triplet', 'sampler.train_sampler', 'RandomIdentitySampler',
           'sampler.num_instances', '2']


def load(toy_root, *opts, config_file='alfo_toy.yaml'):
    return config.load_config(REPO / 'configs' / config_file,
                              ['data.root', str(toy_root), *TOY, *opts])


def engine_for(cfg, datamanager):
    torch.manual_seed(0)
    model = run_lib.build_model(cfg, datamanager)
    run_lib.resolve_new_layers(cfg, model)
    optimizer = torchreid.optim.build_optimizer(model, **config.optimizer_kwargs(cfg))
    engine = run_lib.build_engine(cfg, datamanager, model, optimizer, None)
    engine.epoch, engine.batch_idx, engine.num_batches = 0, 0, 1
    return engine


@pytest.fixture(scope='module')
def identity_batches(toy_root):
    cfg = load(toy_root, *TRIPLET)
    return run_lib.build_datamanager(cfg)


# -- 1. triplet loss ------------------------------------------------------------

def test_alfo_with_triplet_adds_the_hard_triplet_loss_of_the_retrieval_feature(
        toy_root, identity_batches):
    cfg = load(toy_root, *TRIPLET, 'loss.triplet.weight_t', '0.7', 'loss.triplet.weight_x',
               '0.5', 'loss.triplet.margin', '0.4')
    engine = engine_for(cfg, identity_batches)
    assert isinstance(engine, ImageFocalVoteEngine)
    batch = next(iter(identity_batches.train_loader))
    engine.model.train()
    with torch.no_grad():
        outputs = engine.model(batch['img'])
    # hard mining by hand: hardest positive and negative of each anchor
    dist = torch.cdist(outputs.features, outputs.features).clamp(min=1e-12)
    same = batch['pid'][:, None] == batch['pid'][None]
    hardest_positive = dist.masked_fill(~same, -1).max(1).values
    hardest_negative = dist.masked_fill(same, float('inf')).min(1).values
    triplet = (hardest_positive - hardest_negative + 0.4).clamp(min=0).mean().item()
    criterion = engine.criterion
    without = criterion.triplet_loss
    criterion.triplet_loss = None
    with torch.no_grad():
        parts = criterion(outputs, batch['pid'], batch['attrs'])
    criterion.triplet_loss = without
    summary = engine.forward_backward(batch)
    assert summary['loss_triplet'] == pytest.approx(triplet, rel=1e-4)
    assert summary['loss_id'] == pytest.approx(parts.id.item(), rel=1e-6)
    assert summary['loss'] == pytest.approx(
        0.5 * parts.id.item() + parts.attr.item() + 0.7 * triplet, rel=1e-4)


def test_a_torchreid_baseline_with_triplet_trains_with_both_losses(toy_root, identity_batches):
    cfg = load(toy_root, *TRIPLET, 'model.name', 'pcb_p6')
    engine = engine_for(cfg, identity_batches)
    assert isinstance(engine, BaselineTripletEngine)
    summary = engine.forward_backward(next(iter(identity_batches.train_loader)))
    assert summary['loss_t'] > 0 and summary['loss_x'] > 0


@pytest.mark.parametrize('opts, expected', [
    (['loss.name', 'foo'], "loss.name must be one of ['softmax', 'triplet'], got 'foo'"),
    (['loss.name', 'triplet'], 'loss.name triplet needs identities with several images in '
                               'every batch: set sampler.train_sampler RandomIdentitySampler'),
    (['model.name', 'resnet5o'], "model.name 'resnet5o' is not a torchreid or ALFO model"),
])
def test_a_loss_or_model_that_cannot_train_is_one_line(toy_root, tmp_path, opts,
                                                       expected):
    assert expected in refused_run(toy_root, tmp_path, *opts)


def test_an_override_before_a_flag_names_the_command_line(toy_root, tmp_path):
    line = refused_run(toy_root, tmp_path, 'test.evaluate', 'True', '-t', 'x')
    assert line.startswith('error: "-t" on the command line comes after the KEY VALUE '
                           'overrides; flags go first: tools/main.py --config-file FILE')
    line = refused_run(toy_root, tmp_path, 'alfo.nope', '1')
    assert line == 'error: unknown config key: alfo.nope (in the command line)'


# -- 2. new layers: staged_lr and fixbase_epoch ---------------------------------------

def _lr_of(optimizer, parameter):
    return next(g['lr'] for g in optimizer.param_groups
                if any(p is parameter for p in g['params']))


def test_staged_lr_gives_alfos_attribute_heads_the_full_learning_rate(toy_root,
                                                                       identity_batches):
    cfg = load(toy_root, 'train.staged_lr', 'True', 'train.lr', '0.01')
    engine = engine_for(cfg, identity_batches)
    model = engine.model
    assert cfg.train.new_layers == ['classifier', 'attribute_heads']
    assert _lr_of(engine.optimizer, model.attribute_heads.weight) == pytest.approx(0.01)
    assert _lr_of(engine.optimizer, model.classifier.weight) == pytest.approx(0.01)
    assert _lr_of(engine.optimizer, model.conv1.weight) == pytest.approx(0.001)
    # an explicit list is the user's choice
    cfg = load(toy_root, 'train.staged_lr', 'True', 'train.lr', '0.01',
               'train.new_layers', "['classifier']")
    engine = engine_for(cfg, identity_batches)
    assert _lr_of(engine.optimizer, engine.model.attribute_heads.weight) == pytest.approx(0.001)


def test_fixbase_epoch_trains_the_attribute_heads_with_the_classifier(toy_root,
                                                                     identity_batches):
    cfg = load(toy_root, 'train.fixbase_epoch', '1')
    engine = engine_for(cfg, identity_batches)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        engine.two_stepped_transfer_learning(0, cfg.train.fixbase_epoch, cfg.train.open_layers)
    assert "* Only train ['classifier', 'attribute_heads']" in printed.getvalue()
    model = engine.model
    assert model.attribute_heads.weight.requires_grad and model.classifier.weight.requires_grad
    assert not model.conv1.weight.requires_grad


def test_torchreid_models_keep_the_classifier_as_their_only_new_layer(toy_root,
                                                                      identity_batches):
    cfg = load(toy_root, 'model.name', 'resnet50')
    model = run_lib.build_model(cfg, identity_batches)
    assert run_lib.new_layers(model) == ['classifier']
    local_only = ALFO(5, local_branch=True, global_branch=False)
    assert run_lib.new_layers(local_only) == ['attribute_heads']


# -- several GPUs: nn.DataParallel as torchreid's scripts/main.py -----------------

def test_several_gpus_wrap_the_model_in_data_parallel(toy_root):
    cfg = load(toy_root)
    cfg.defrost()
    cfg.use_gpu = True
    model = ALFO(5)
    with fake_cuda(model), cuda_reported_available(), \
            mock.patch.object(torch.cuda, 'device_count', return_value=2), \
            mock.patch.object(nn, 'DataParallel', side_effect=lambda m: ('wrapped', m)):
        wrapped = run_lib.place_on_device(cfg, model)
    assert wrapped == ('wrapped', model)
    with fake_cuda(model), cuda_reported_available(), \
            mock.patch.object(torch.cuda, 'device_count', return_value=1):
        assert run_lib.place_on_device(cfg, model) is model


def test_the_engine_trains_and_saves_a_data_parallel_model(toy_root, identity_batches,
                                                          tmp_path):
    cfg = load(toy_root)
    torch.manual_seed(0)
    model = run_lib.build_model(cfg, identity_batches)
    wrapped = nn.DataParallel(model)  # no GPU: a pass-through, same attributes as on GPUs
    optimizer = torchreid.optim.build_optimizer(wrapped, **config.optimizer_kwargs(cfg))
    engine = run_lib.build_engine(cfg, identity_batches, wrapped, optimizer, None)
    engine.epoch, engine.batch_idx, engine.num_batches = 0, 0, 1
    assert unwrap(engine.model) is model and engine.schema is model.schema
    engine.forward_backward(next(iter(identity_batches.train_loader)))
    assert model.vote_counts.sum() == len(model.schema)
    path = engine.save_model(0, None, str(tmp_path), latest=True)
    saved = load_checkpoint(path)['state_dict']
    assert set(saved) == set(model.state_dict())  # no "module." prefix


# -- extraction progress -------------------------------------------------------

def test_extraction_prints_one_summary_line_and_no_bar_off_a_terminal(toy_root,
                                                                      identity_batches):
    engine = engine_for(load(toy_root), identity_batches)
    loader = identity_batches.test_loader['market1501_attr']['gallery']
    printed, bar = io.StringIO(), io.StringIO()
    engine.model.eval()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(bar):
        extracted = engine.extract(loader, 'market1501_attr gallery')
    n = len(loader.dataset)
    assert extracted.features.shape == (n, 2048) and len(extracted.attributes) == 27
    lines = printed.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f'Extracted market1501_attr gallery: {n}-by-2048 features in ')
    assert lines[0].endswith(' images/s)') and bar.getvalue() == ''


# -- 5. the attribute plot reads balanced accuracy --------------------------------

def test_the_attribute_plot_shows_balanced_accuracy(tmp_path):
    attributes = {'mA': 0.6, 'accuracy': {'downpink': 1.0, 'hat': 0.8},
                  'balanced_accuracy': {'downpink': 0.5, 'hat': 0.7}}
    runs = [{'name': 'alfo', 'results': {'market1501_attr': {'attributes': attributes}}}]
    assert report.attribute_series(runs) == [('alfo (market1501_attr)',
                                              {'downpink': 0.5, 'hat': 0.7})]
    assert report.plot_attributes(runs, tmp_path / 'attributes.png')
    assert (tmp_path / 'attributes.png').read_bytes()[:4] == b'\x89PNG'


def test_the_attribute_plot_flags_single_class_attributes_and_draws_chance(tmp_path):
    # hat is never worn in these test labels: 100 % for a constant "no", out of mA
    schema = AttributeSchema('toy', ('age', 'hat', 'bag'), (4, 2, 2), {})
    target = np.array([[0, 0, 1], [1, 0, 0], [2, 0, 1], [3, 0, 0]])
    constant = np.zeros_like(target)
    attributes = attribute_metrics(constant, target, schema)
    runs = [{'name': 'constant', 'results': {'market1501_attr': {'attributes': attributes}}}]
    plot = report.attribute_plot(runs)
    assert plot.names == ['age', 'hat', 'bag']
    assert plot.chance == {'age': 0.25, 'hat': 0.5, 'bag': 0.5}
    assert plot.flagged == [{'hat'}]
    # by hand: age recalls 1, 0, 0, 0 -> 25 %; bag (0 + 1) / 2 -> 50 %; mA over age and bag
    assert plot.series == [('constant (market1501_attr): mA 37.5%',
                            {'age': 0.25, 'hat': 1.0, 'bag': 0.5})]
    assert report.plot_attributes(runs, tmp_path / 'attributes.png')
    # a metrics.json of before: binary chance, nothing flagged
    old = {'mA': 0.6, 'balanced_accuracy': {'hat': 0.7}}
    plot = report.attribute_plot([{'name': 'old', 'results': {'d': {'attributes': old}}}])
    assert plot.chance == {'hat': 0.5} and plot.flagged == [set()]


# -- the tools run as commands --------------------------------------------------

@pytest.mark.parametrize('tool', sorted((REPO / 'tools').glob('*.py')), ids=lambda p: p.name)
def test_every_tool_is_an_executable_python_script(tool):
    assert tool.read_text().startswith('#!/usr/bin/env python\n'), tool
    assert tool.stat().st_mode & 0o111, f'{tool} lacks the executable bit'


@pytest.mark.parametrize('use_gpu, deterministic, benchmark', [
    (True, False, True), (True, True, False), (False, False, False)])
def test_cudnn_picks_its_fastest_algorithms_on_a_gpu_unless_deterministic(
        use_gpu, deterministic, benchmark, monkeypatch):
    # torchreid's scripts/main.py sets cudnn.benchmark on a GPU
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    with mock.patch.object(torch, 'use_deterministic_algorithms'):
        run_lib.seed_everything(0, deterministic, use_gpu)
    assert torch.backends.cudnn.benchmark == benchmark
