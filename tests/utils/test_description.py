"""A checkpoint describes its model (alfo_torchreid.utils.description), and
evaluation, predict and training from weights read it instead of trusting the
config they are given."""
import contextlib
import io
import shutil

import numpy as np
import pytest
import torch
import torchreid
from alfo_run import (CONFIG, checkpoint_model, load_tool, market_split, refused_run, run_tool,
                      toy_images)

from alfo_torchreid import config
from alfo_torchreid.data.attributes import MARKET_SCHEMA, AttributeSchema
from alfo_torchreid.engine import ImageFocalVoteEngine
from alfo_torchreid.serving import inference
from alfo_torchreid.utils import description, weights
from alfo_torchreid.utils.checkpoints import load_checkpoint
from alfo_torchreid.utils.errors import CheckpointError

TINY = ['train.max_epoch', '1', 'train.batch_size', '16', 'test.batch_size', '64',
        'train.print_freq', '100']

# configs/alfo_toy.yaml's model and input, by hand
TOY_SETTINGS = {
    'model.name': 'alfo', 'data.height': 128, 'data.width': 64,
    'data.norm_mean': [0.485, 0.456, 0.406], 'data.norm_std': [0.229, 0.224, 0.225],
    'alfo.last_stride': 1, 'alfo.num_parts': 6, 'alfo.stripe_height': 0,
    'alfo.stripe_stride': 0, 'alfo.global_branch': True, 'alfo.local_branch': True,
    'alfo.attr_pred': 'voted', 'alfo.feature': 'global', 'alfo.neck': 'none',
}


@pytest.fixture(scope='module')
def main_run(toy_root, module_tmp):
    """A one-epoch toy ALFO run of tools/main.py at 128x64: its folder."""
    run = module_tmp('main') / 'run'
    with contextlib.redirect_stdout(io.StringIO()):
        status = load_tool('main').main(['--config-file', str(CONFIG), '--root', str(toy_root),
                                         'data.save_dir', str(run), *TINY])
    assert status == 0
    return run


def python_engine(toy_root):
    """The README's "Using it from Python": its engine on the toy data at 128x64."""
    datamanager = torchreid.data.ImageDataManager(
        root=str(toy_root), sources='market1501_attr', height=128, width=64,
        batch_size_train=16, workers=0)
    model = torchreid.models.build_model('alfo', datamanager.num_train_pids,
                                         loss='softmax', pretrained=False)
    optimizer = torchreid.optim.build_optimizer(model, optim='adam', lr=0.0003)
    return ImageFocalVoteEngine(datamanager, model, optimizer, use_gpu=False)


@pytest.fixture(scope='module')
def python_run(toy_root, module_tmp):
    """:func:`python_engine` trained for one epoch: the run folder."""
    run = module_tmp('python') / 'run'
    with contextlib.redirect_stdout(io.StringIO()):
        python_engine(toy_root).run(save_dir=str(run), max_epoch=1, print_freq=100)
    return run


def test_an_evaluation_from_python_writes_a_config_that_says_so(toy_root, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        python_engine(toy_root).run(save_dir=str(tmp_path), test_only=True)
    cfg = config.load_config(tmp_path / 'config.yaml')
    assert cfg.test.evaluate is True and config.described_settings(cfg) == TOY_SETTINGS


def test_a_tool_adopts_only_the_described_keys():
    described = description.describe(dict(TOY_SETTINGS, **{'data.save_dir': '/elsewhere'}), 8)
    cfg, _ = inference._model_config('weights.pth.tar', described, '', False)
    assert config.described_settings(cfg) == TOY_SETTINGS
    assert cfg.data.save_dir == config.get_config().data.save_dir


def test_every_checkpoint_carries_the_models_description(main_run, python_run):
    for run in (main_run, python_run):
        for name in ('model.pth.tar-1', 'latest.pth.tar'):
            found = description.of_checkpoint(load_checkpoint(run / 'model' / name))
            assert found['settings'] == TOY_SETTINGS, (run, name)
            assert found['num_classes'] == 8 and found['normalize_feature'] is False
            assert AttributeSchema.from_dict(found['schema']) == MARKET_SCHEMA


def test_evaluation_takes_the_checkpoints_input_size_and_downloads_nothing(
        main_run, toy_root, tmp_path, monkeypatch):
    def no_download(source, progress=True):
        raise AssertionError(f'tried to download {source.url}')

    monkeypatch.setattr(weights, 'fetch', no_download)
    checkpoint = main_run / 'model' / 'model.pth.tar-1'
    status, out, err = run_tool('main', '--config-file', CONFIG, '--root', toy_root, *TINY,
                                'data.save_dir', tmp_path, 'data.height', '256', 'data.width',
                                '128', 'model.pretrained', 'imagenet', 'test.evaluate', 'True',
                                'model.load_weights', checkpoint)
    assert status == 0, err
    said = (f'Evaluating "{checkpoint}" with the settings it was trained with, which its '
            'checkpoint holds: data.height 128 (config: 256), data.width 64 (config: 128)')
    folder = tmp_path / 'eval-model.pth.tar-1'
    assert said in out and said in (folder / 'test.log').read_text()
    assert f'model.pretrained "imagenet" is not loaded: model.load_weights "{checkpoint}"' in out
    evaluated = config.load_config(folder / 'config.yaml')
    assert (evaluated.data.height, evaluated.data.width) == (128, 64)
    assert '"input_size": [\n  128,\n  64\n ]' in (folder / 'metrics.json').read_text()


def test_training_from_weights_with_other_settings_is_refused(main_run, toy_root, tmp_path):
    checkpoint = main_run / 'model' / 'model.pth.tar-1'
    line = refused_run(toy_root, tmp_path, 'model.load_weights', str(checkpoint),
                       'alfo.num_parts', '4')
    assert line == (f'error: model.load_weights "{checkpoint}" was trained with other settings '
                    "than the config's: alfo.num_parts 6 (config: 4); set them as the "
                    'checkpoint has them, or start from its backbone alone with '
                    f'model.pretrained "{checkpoint}"')


def test_predict_refuses_a_config_that_disagrees_naming_the_key(main_run, toy_root, tmp_path):
    cfg = config.load_config(main_run / 'config.yaml', ['data.height', '256'])
    other = tmp_path / 'other.yaml'
    other.write_text(cfg.dump())
    checkpoint = main_run / 'model' / 'model.pth.tar-1'
    status, _, err = run_tool('predict', '--weights', checkpoint, '--config', other,
                              market_split(toy_root, 'query'), '--out', tmp_path / 'out')
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.strip() == (f'error: config "{other}" disagrees with checkpoint "{checkpoint}": '
                      'data.height 128 (config: 256); the checkpoint holds the settings it was '
                      'trained with (leave out --config to use them)')
    assert not (tmp_path / 'out').exists()


def predicted_features(checkpoint, images, out, *args):
    """tools/predict.py's features of ``images``, checked against the
    checkpoint's model on 128x64 inputs computed here."""
    status, _, err = run_tool('predict', '--weights', checkpoint, images, '--out', out, *args)
    assert status == 0, err
    features = np.load(out / 'features.npy')
    with torch.no_grad():
        expected = checkpoint_model(checkpoint)(toy_images(sorted(images.glob('*.jpg'))[:2]))
    np.testing.assert_allclose(features[:2], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_predict_needs_no_config_beside_a_described_checkpoint(main_run, toy_root, tmp_path):
    alone = tmp_path / 'elsewhere' / 'weights.pth.tar'
    alone.parent.mkdir()
    shutil.copy(main_run / 'model' / 'model.pth.tar-1', alone)
    predicted_features(alone, market_split(toy_root, 'query'), tmp_path / 'out')


def test_a_run_from_python_writes_a_config_that_predict_accepts(python_run, toy_root, tmp_path):
    cfg = config.load_config(python_run / 'config.yaml')
    assert config.described_settings(cfg) == TOY_SETTINGS
    assert list(cfg.data.sources) == ['market1501_attr'] and cfg.train.max_epoch == 1
    assert cfg.data.save_dir == str(python_run)
    predicted_features(python_run / 'model' / 'model.pth.tar-1',
                       market_split(toy_root, 'query'), tmp_path / 'out',
                       '--config', python_run / 'config.yaml')


def test_differences_name_each_key_and_a_malformed_description_is_refused():
    described = description.describe(TOY_SETTINGS, 8, MARKET_SCHEMA)
    given = dict(TOY_SETTINGS, **{'data.width': 128, 'data.norm_mean': (0.485, 0.456, 0.406)})
    found = description.differences(described, given)
    assert found == [('data.width', 64, 128)]  # a tuple equals the saved list
    assert description.format_differences(found) == 'data.width 64 (config: 128)'
    assert description.of_checkpoint({'state_dict': {}}) is None
    with pytest.raises(CheckpointError, match='"w.pth" has a malformed \'description\''):
        description.of_checkpoint({'description': {'num_classes': 8}}, 'w.pth')


def test_an_evaluation_adopts_only_the_described_keys(tmp_path):
    from alfo_torchreid import run
    weights_file = tmp_path / 'foreign.pth.tar'
    settings = dict(TOY_SETTINGS, **{'data.height': 256, 'data.save_dir': str(tmp_path / 'x')})
    torch.save({'state_dict': {}, description.KEY: description.describe(settings, 8)},
               weights_file)
    cfg = config.load_config(CONFIG, ['data.save_dir', tmp_path / 'run', 'test.evaluate', 'True',
                                      'model.load_weights', weights_file, 'use_gpu', 'False'])
    said = run.adopt_checkpoint_description(cfg)
    assert said.endswith('holds: data.height 256 (config: 128)')
    assert cfg.data.height == 256 and cfg.data.save_dir == str(tmp_path / 'run')
