"""Inputs that used to give a silently wrong result, a traceback, a hang or
leftover files (issue 20), each refused in one line naming what is wrong,
with nothing already saved changed."""
import contextlib
import json
import os
import re
import shutil
import threading
from unittest import mock

import numpy as np
import pytest
import torch
import torchreid
from alfo_run import CONFIG, REPO, load_tool, market_split, refusal, refused_run, run_tool

from alfo_torchreid import config, reproduce, run as run_lib
from alfo_torchreid.data.attributes import MARKET_SCHEMA
from alfo_torchreid.serving import gallery_index, inference
from alfo_torchreid.utils import atomic, checkpoints, distributed
from alfo_torchreid.utils.errors import AlfoError, CheckpointError, TrainingError
from alfo_torchreid.utils.run_folder import read_history

@contextlib.contextmanager
def fifo(path):
    """A FIFO at ``path`` with a writer that opens and closes it again and
    again: a reader that opens it reads an empty file instead of waiting
    forever (the code before issue 20 then fails on the empty content)."""
    os.mkfifo(path)
    done = threading.Event()

    def write_nothing():
        while not done.is_set():
            open(path, 'wb').close()  # waits for a reader

    writer = threading.Thread(target=write_nothing, daemon=True)
    writer.start()
    try:
        yield path
    finally:
        done.set()
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # the writer's open returns
        writer.join()
        os.close(reader)


# -- config files --------------------------------------------------------------

@pytest.mark.parametrize('text, expected', [
    ('_BASE_: alfo_toy.yaml\ntrain:\n  lr: 0.1\ntrain:\n  max_epoch: 2\n',
     'line 4: key "train" is given twice in one mapping (first on line 2)'),
    ('_BASE_: alfo_toy.yaml\ntrain:\n  lr: 0.1\n  lr: 0.2\n', 'key "lr" is given twice'),
    ("_BASE_: alfo_toy.yaml\nmodel:\n  name: !!python/object/apply:os.system ['true']\n",
     'line 3: the YAML tag "!!python/object/apply:os.system" is not allowed in a config'),
    ('_BASE_: alfo_toy.yaml\ntest:\n  ranks: &r [1, 5]\ntrain:\n  stepsize: *r\n',
     'YAML anchors and aliases (&r, *r) are not allowed'),
    ('x: ' + '[' * 2000 + ']' * 2000 + '\n', 'the YAML is nested more than 16 levels deep'),
    ('x: ' + '{a: ' * 40 + '1' + '}' * 40 + '\n', 'the YAML is nested more than 16 levels deep'),
])
def test_a_config_file_yaml_cannot_mean_plainly_is_refused(text, expected, toy_root, tmp_path):
    path = tmp_path / 'configs' / 'bad.yaml'
    path.parent.mkdir()
    shutil.copy(CONFIG, path.parent / 'alfo_toy.yaml')
    path.write_text(text)
    line = refused_run(toy_root, tmp_path, config_file=path)
    assert expected in line and str(path) in line, line


def test_a_fifo_as_config_file_is_refused_without_reading_it(toy_root, tmp_path):
    with fifo(tmp_path / 'config.yaml') as path:
        line = refused_run(toy_root, tmp_path, config_file=path)
    assert line == f'error: config file "{path}" is not a regular file'


@pytest.mark.parametrize('opts, expected', [
    (['train.stepsize', '[]'], 'train.stepsize must be a non-empty list of values >= 1, got []'),
    (['train.stepsize', '[[5]]'], 'train.stepsize must be a non-empty list of values >= 1'),
    (['data.sources', '[]'], 'data.sources must be a non-empty list'),
    (['data.targets', '[]'], 'data.targets must be a non-empty list'),
    (['data.norm_std', "['a', 'b', 'c']"],
     "data.norm_std must be a list of 3 numbers that are > 0 and finite, got ['a', 'b', 'c']"),
    (['data.norm_std', '[0.0, 0.0, 0.0]'], 'data.norm_std must be a list of 3 numbers that are '
                                           '> 0 and finite'),
    (['data.norm_mean', '[0.5]'], 'data.norm_mean must be a list of 3 numbers'),
    (['train.batch_size', '64'], 'train.batch_size 64 is larger than what the training data '
                                 "['market1501_attr'] gives (32 images"),
])
def test_a_value_that_used_to_crash_or_train_nothing_is_refused(opts, expected, toy_root,
                                                                tmp_path):
    # refused_run also checks that the refused run made no folder
    line = refused_run(toy_root, tmp_path, *opts)
    assert expected in line, line


def test_a_refused_run_leaves_an_existing_lock_file_as_it_was(toy_root, tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / '.lock').write_text('4242')
    status = load_tool('main').main(['--config-file', str(CONFIG), '--root', str(toy_root),
                                     'data.save_dir', str(run), 'train.stepsize', '[]'])
    assert status == 2 and 'train.stepsize' in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ['.lock']
    assert (run / '.lock').read_text() == '4242'


def test_an_infinite_epoch_in_the_history_is_a_damaged_line(tmp_path):
    (tmp_path / 'history.jsonl').write_text('{"epoch": 1e999}\n{"epoch": 2}\n')
    with pytest.raises(AlfoError, match=r'line 1 is not a history record'):
        read_history(str(tmp_path))


# -- weights ----------------------------------------------------------------------

def test_alfo_evaluated_with_a_pcb_checkpoint_names_the_layers_left_unloaded(toy_root,
                                                                             tmp_path):
    weights = tmp_path / 'pcb.pth'
    pcb = torchreid.models.build_model('pcb_p6', 8, pretrained=False)
    torch.save({'state_dict': pcb.state_dict(), 'epoch': 1}, weights)
    line = refused_run(toy_root, tmp_path, 'test.evaluate', 'True',
                       'model.load_weights', weights)
    assert (f'checkpoint "{weights}" leaves 3 of the alfo model\'s tensors unloaded '
            '(vote_counts, attribute_heads.weight, attribute_heads.bias)') in line, line


class _FullDisk:
    """A binary file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, real, room):
        self.real, self.room = real, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(28, 'No space left on device')
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_full_disk_while_saving_a_checkpoint_says_the_disk_is_full(tmp_path):
    path = tmp_path / 'latest.pth.tar'
    real_open = open
    with mock.patch.object(atomic, 'open', lambda *a, **k: _FullDisk(real_open(*a, **k), 500),
                           create=True), \
            pytest.raises(CheckpointError) as raised:
        checkpoints.save_training_state({'state_dict': {'w': torch.ones(1000)}, 'epoch': 1},
                                        path)
    assert str(raised.value) == (f'could not write checkpoint "{path}" (the disk is full); the '
                                 'previous file of that name, if any, is intact')
    assert not list(tmp_path.iterdir())


# -- predict and search ------------------------------------------------------------

@pytest.fixture(scope='module')
def small_index(trained_alfo, toy_root, module_tmp):
    """A torch-backend index of six toy gallery images."""
    folder = module_tmp('index') / 'index'
    images = sorted(market_split(toy_root, 'bounding_box_test').glob('*.jpg'))[:6]
    return gallery_index.build_index(folder, trained_alfo, images, 'torch')[0]


def _query(toy_root):
    return sorted(market_split(toy_root, 'query').glob('*.jpg'))[0]


@pytest.mark.parametrize('option, value, expected', [
    ('--top', '0', '--top must be an integer >= 1, got 0'),
    ('--top', '-1', '--top must be an integer >= 1, got -1'),
    ('--attr-weight', 'nan', '--attr-weight must be a number in [0, 1000]'),
    ('--attr-weight', 'inf', '--attr-weight must be a number in [0, 1000]'),
    ('--attr-weight', '1e308', '--attr-weight must be a number in [0, 1000]'),
])
def test_search_refuses_a_top_or_attribute_weight_it_cannot_rank_with(
        option, value, expected, small_index, toy_root, tmp_path):
    line = refusal('search', 'query', small_index.folder, _query(toy_root),
                     '--out', tmp_path / 'grid.png', option, value)
    assert expected in line
    assert not list(tmp_path.iterdir())


def _features(folder, array):
    np.save(folder / json.loads((folder / 'index.json').read_text())['files']['features'], array)


def _attributes(folder, array):
    np.save(folder / json.loads((folder / 'index.json').read_text())['files']['attributes'],
            array)


def _items(folder, text):
    (folder / json.loads((folder / 'index.json').read_text())['files']['items']).write_text(text)


def _index_json(folder, change):
    """Applies ``change`` to the dict of ``folder/index.json`` and writes it back."""
    meta = json.loads((folder / 'index.json').read_text())
    change(meta)
    (folder / 'index.json').write_text(json.dumps(meta))


DAMAGED_INDEXES = {
    'no backend': (lambda f, i: _index_json(f, lambda m: m.pop('backend')),
                   'its index.json has no "backend" (an object)'),
    'no weights': (lambda f, i: _index_json(f, lambda m: m.pop('weights')),
                   'its index.json has no "weights" (a path)'),
    'no config': (lambda f, i: _index_json(f, lambda m: m.pop('config')),
                  'its index.json has no "config" (a path)'),
    'unknown backend': (lambda f, i: _index_json(f, lambda m: m['backend'].update(kind='hnsw')),
                        'the "kind" of its index.json\'s "backend" is \'hnsw\', expected one '
                        "of ['torch', 'faiss-flat', 'faiss-ivfpq']"),
    'int8 features': (lambda f, i: _features(f, i.features.astype(np.int8)),
                      'its features are a 2-D array of int8, expected 2-D float'),
    'complex features': (lambda f, i: _features(f, i.features.astype(np.complex64)),
                         'its features are a 2-D array of complex64'),
    'string features': (lambda f, i: _features(f, i.features.astype(str)),
                        'its features are a 2-D array of <U'),
    '1-D features': (lambda f, i: _features(f, i.features[:, 0].copy()),
                     'its features are a 1-D array of float32'),
    'NaN features': (lambda f, i: _features(f, np.where(np.arange(i.features.shape[1]) == 3,
                                                        np.nan, i.features)),
                     'its features hold NaN or infinite values'),
    'NaN attributes': (lambda f, i: _attributes(f, i.attributes * np.nan),
                       'its attributes hold NaN or infinite values'),
    'attributes above 1': (lambda f, i: _attributes(f, i.attributes * 3),
                           'its attribute probabilities are not all in [0, 1]'),
    'narrow attributes': (lambda f, i: _attributes(f, i.attributes[:, :5].copy()),
                          f'its attributes have 5 columns, its schema '
                          f'{sum(MARKET_SCHEMA.num_classes)}'),
    'a row fewer': (lambda f, i: _features(f, i.features[:-1].copy()),
                    '6 items in index.json, 6 paths, 5 features, 6 attribute rows'),
    'a one-column row': (lambda f, i: _items(f, 'path,size,mtime_ns\nphoto.jpg\n'),
                         "line 2 is ['photo.jpg'], expected path, size, mtime_ns"),
}


@pytest.mark.parametrize('damage', sorted(DAMAGED_INDEXES))
def test_a_damaged_index_is_one_line_naming_what_is_wrong(damage, small_index, toy_root,
                                                          tmp_path):
    folder = tmp_path / 'index'
    shutil.copytree(small_index.folder, folder)
    mutate, expected = DAMAGED_INDEXES[damage]
    mutate(folder, gallery_index.load_index(small_index.folder))
    line = refusal('search', 'query', folder, _query(toy_root),
                     '--out', tmp_path / 'grid.png')
    assert line.startswith(f'error: gallery index "{folder}" is damaged') and expected in line, \
        line


@pytest.mark.parametrize('option, value, expected', [
    ('--batch-size', '0', 'the batch size (--batch-size) must be an integer >= 1, got 0'),
    ('--workers', '-1', 'the image-reading processes (--workers) must be an integer >= 0, '
                        'got -1'),
])
@pytest.mark.parametrize('command', [['predict'], ['search', 'index']])
def test_a_batch_size_or_workers_it_cannot_use_is_refused_before_out_is_made(
        command, option, value, expected, alfo_weights, toy_root, tmp_path):
    line = refusal(*command, _query(toy_root), '--weights', alfo_weights,
                   '--out', tmp_path / 'out', option, value)
    assert expected in line
    assert not (tmp_path / 'out').exists()


def test_a_fifo_named_like_an_image_is_not_read(alfo_weights, trained_alfo, toy_root, tmp_path):
    photos = tmp_path / 'photos'
    photos.mkdir()
    shutil.copy(_query(toy_root), photos / 'a.jpg')
    with fifo(photos / 'b.jpg'):
        status, out, err = run_tool('predict', photos, '--weights', alfo_weights,
                                    '--out', tmp_path / 'out')
    assert status == 0, err
    assert '1 images, features of' in out
    with fifo(tmp_path / 'query.jpg') as query, pytest.raises(AlfoError, match='is not a '
                                                                               'regular file'):
        inference.predict_image(trained_alfo, str(query))


def test_predict_outputs_are_replaced_all_together_or_not_at_all(trained_alfo, toy_root,
                                                                 tmp_path):
    images = sorted(str(p) for p in market_split(toy_root, 'query').glob('*.jpg'))
    out = tmp_path / 'out'
    inference.write_predictions(out, inference.predict(trained_alfo, images[:2]),
                                trained_alfo.schema)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    newer = inference.predict(trained_alfo, images[2:5])
    # the disk fills up while the last of the three files is written
    with mock.patch.object(inference, 'split_attributes',
                           side_effect=OSError(28, 'No space left on device')), \
            pytest.raises(OSError):
        inference.write_predictions(out, newer, trained_alfo.schema)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    inference.write_predictions(out, newer, trained_alfo.schema)
    assert np.load(out / 'features.npy').shape[0] == 3


# -- compare and reproduce ----------------------------------------------------------

def _metrics(folder, **changes):
    folder.mkdir(parents=True)
    metrics = {'name': folder.name, 'model': 'alfo', 'params': 1, 'gflops': 1.0,
               'results': {'market1501_attr': {'mAP': 0.5, 'cmc': [0.5, 0.7]}}}
    metrics.update(changes)
    (folder / 'metrics.json').write_text(json.dumps(metrics))
    return folder


@pytest.mark.parametrize('changes, expected', [
    ({'results': {'m': {'mAP': float('nan'), 'cmc': [0.5]}}}, 'results of "m" lack an "mAP"'),
    ({'results': {'m': {'mAP': 0.5, 'cmc': [float('inf')]}}}, 'a "cmc" list of fractions'),
    ({'results': {'m': {'mAP': 1.5, 'cmc': [0.5]}}}, 'fractions in [0, 1]'),
    ({'gflops': float('nan')}, '"gflops" is missing or not a finite number >= 0'),
    ({'params': True}, '"params" is missing or not a finite number >= 0'),
    ({'train_time_per_epoch': 'slow'}, '"train_time_per_epoch" is not a finite number'),
    ({'results': {'m': {'mAP': 0.5, 'cmc': [0.5], 'attributes': {
        'mA': 0.5, 'balanced_accuracy': {'gender': 'high'}}}}}, '"balanced_accuracy" of'),
    ({'results': {'m': {'mAP': 0.5, 'cmc': [0.5], 'attributes': {
        'mA': 0.5, 'balanced_accuracy': {'gender': float('inf')}}}}}, '"balanced_accuracy" of'),
    ({'results': {'m': {'mAP': 0.5, 'cmc': [0.5], 'attributes': {
        'mA': float('inf'), 'balanced_accuracy': {}}}}}, 'lack an "mA"'),
])
def test_compare_refuses_metrics_that_are_not_fractions(changes, expected, tmp_path):
    run = _metrics(tmp_path / 'run', **changes)
    line = refusal('compare', run, '--out', tmp_path / 'report')
    assert f'"{run / "metrics.json"}" is not a metrics file' in line and expected in line, line
    assert not (tmp_path / 'report').exists()


def test_compare_accepts_attributes_without_any_known_label(tmp_path):
    # tools/main.py on custom data whose gallery labels no one's hat (m), or
    # nothing at all (n): NaN balanced accuracy and mA, as json writes them
    nan = float('nan')
    labelled = {'mA': 0.7, 'balanced_accuracy': {'gender': 0.7, 'hat': nan},
                'mA_excluded': [], 'num_classes': {'gender': 2, 'hat': 2}}
    unlabelled = dict(labelled, mA=nan, balanced_accuracy={'gender': nan, 'hat': nan})
    run = _metrics(tmp_path / 'run', results={
        'm': {'mAP': 0.5, 'cmc': [0.5], 'attributes': labelled},
        'n': {'mAP': 0.5, 'cmc': [0.5], 'attributes': unlabelled}})
    assert 'NaN' in (run / 'metrics.json').read_text()
    status, out, err = run_tool('compare', run, '--out', tmp_path / 'report')
    assert status == 0, err
    assert '| run | alfo | m | 50.00 | - | - | 50.00 | 70.00 |' in out
    assert '| run | alfo | n | 50.00 | - | - | 50.00 | nan |' in out
    assert (tmp_path / 'report' / 'attributes.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.parametrize('damage', ['missing', 'not fractions'])
def test_compare_checks_its_run_folders_before_training_any_config(damage, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(run_lib, 'main',
                        lambda *args, **kwargs: pytest.fail('a config was trained first'))
    run = tmp_path / 'run'
    if damage == 'not fractions':
        _metrics(run, gflops=float('nan'))
    line = refusal('compare', run, '--configs', CONFIG, '--out', tmp_path / 'report')
    expected = 'has no metrics.json' if damage == 'missing' else 'is not a metrics file'
    assert str(run) in line and expected in line, line
    assert not (tmp_path / 'report').exists()


def test_compare_refuses_two_runs_of_one_name(tmp_path):
    runs = [_metrics(tmp_path / seed / 'seed1') for seed in ('a', 'b')]
    line = refusal('compare', *runs, '--out', tmp_path / 'report')
    assert line == (f'error: runs "{runs[0]}" and "{runs[1]}" are both named "seed1": their rows '
                    'could not be told apart; compare runs whose folders (or metrics.json '
                    'names) differ')
    assert not (tmp_path / 'report').exists()


@pytest.mark.parametrize('row, model, attributes, expected', [
    ('pcb', 'alfo', True, 'holds the results of a alfo model with attribute results, not of '
                          "row pcb's pcb_p6"),
    ('pcb', 'pcb_p6', True, 'pcb_p6 model with attribute results, not of row pcb'),
    ('alfo', 'alfo', False, "alfo model without attribute results, not of row alfo's alfo "
                            'with attribute heads'),
])
def test_reproduce_refuses_metrics_of_another_row(row, model, attributes, expected, tmp_path):
    result = {'mAP': 0.5, 'cmc': [0.5] * 5}
    if attributes:
        result['attributes'] = {'mA': 0.6, 'balanced_accuracy': {'gender': 0.6}}
    _metrics(tmp_path / row, model=model, results={'market1501_attr': result})
    run = reproduce.Run(row, 1, str(REPO / 'configs' / reproduce.CONFIGS['quick'][
        reproduce.ROWS[row].model]), (), str(tmp_path / row))
    with pytest.raises(AlfoError, match=re.escape(expected)):
        reproduce.run_results(run, 'market1501_attr', config.load_config(run.config_file))


def test_reproduce_refuses_a_torn_record_of_configs(toy_root, tmp_path):
    out = tmp_path / 'repro'
    out.mkdir()
    (out / 'configs.json').write_text('{"alfo/seed1": {"model.na')
    line = refusal('reproduce', '--dataset', 'market1501', '--quick', '--root',
                     toy_root, '--out', out)
    assert line.startswith(f'error: "{out / "configs.json"}", the record of the configs of the '
                           f'runs in "{out}", is damaged'), line
    assert sorted(p.name for p in out.iterdir()) == ['configs.json']


def test_the_repositorys_config_files_pass_the_stricter_loader():
    for path in sorted((REPO / 'configs').rglob('*.yaml')):
        assert config.load_config(str(path)).model.name, path


def test_a_collective_whose_peer_died_is_one_error():
    gloo = RuntimeError('[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Read error '
                        '[127.0.0.1]:29500: Connection reset by peer')
    with pytest.raises(TrainingError, match=r'^another process of the job ended \(Connection '
                                            r'reset by peer\): this one stops too'):
        with distributed.peer_loss_as_error():
            raise gloo
    with pytest.raises(RuntimeError, match='other'), distributed.peer_loss_as_error():
        raise RuntimeError('other')
