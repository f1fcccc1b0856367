"""Datasets of the user's own: a manifest CSV plus a schema file, end to end.

* the toy Market tree written as a manifest (tools/make_manifest.py) with
  Market's schema file is market1501_attr: same items, same batches, same
  first-epoch losses, bit for bit;
* a custom toy set with other attributes (5: one of 3 classes, a colour group
  of 3; labels per identity) trains, evaluates, predicts and searches with its
  names, exports with ONNX parity and resumes;
* an identity-only source trains beside it;
* malformed manifests end in one line naming file, line and column.
"""
import contextlib
import csv
import io
import json
import pickle
import random
import re
import shutil

import numpy as np
import pytest
import torch
import torchreid
import yaml
from alfo_run import (REPO, history_without_times, load_tool, market_split, refusal, refused_run,
                      run_tool)
from test_schema_file import mutations

from alfo_torchreid import config
from alfo_torchreid.data.attributes import MARKET_SCHEMA, load_schema
from alfo_torchreid.data.manifest import read_manifest, register_manifest_dataset
from alfo_torchreid.losses import ALFOLoss, attribute_logit_widths
from alfo_torchreid.models import ALFO
from alfo_torchreid.utils.errors import AttributeFileError, ConfigError, DatasetError

TOY_CONFIG = REPO / 'configs' / 'alfo_toy.yaml'
CUSTOM_CONFIG = REPO / 'configs' / 'alfo_custom.yaml'
# one epoch on the CPU, as the toy config trains
TINY = ['use_gpu', 'False', 'model.pretrained', "''", 'data.height', '128', 'data.width', '64',
        'data.workers', '0', 'train.max_epoch', '1', 'train.batch_size', '16',
        'test.batch_size', '64', 'train.print_freq', '1', 'train.stepsize', '[5]']

SCHEMA = """\
dataset: toyshop
attributes:
  gender: [man, woman]
  age: [child, adult, senior]
  shirt_red: [no, yes]
  shirt_blue: [no, yes]
  shirt_green: [no, yes]
colour_groups:
  shirt: [shirt_red, shirt_blue, shirt_green]
"""
# the toy Market look's labels that give each custom attribute
FROM_MARKET = {'gender': 'gender', 'shirt_red': 'upred', 'shirt_blue': 'upblue',
               'shirt_green': 'upgreen'}
AGE = ('child', 'adult', 'adult', 'senior')  # Market's young, teenager, adult, old


def trained(*args):
    status, out, err = run_tool('main', *args)
    assert status == 0, out[-3000:] + err[-3000:]
    return out


def write_csv(path, rows):
    with open(path, 'w', newline='', encoding='utf-8') as f:
        csv.writer(f).writerows(rows)


@pytest.fixture(scope='module')
def market_manifest(toy_datasets, toy_root, module_tmp):
    """tools/make_manifest.py's manifest of the toy Market tree, with its labels."""
    path = module_tmp('market-manifest') / 'manifest.csv'
    status = load_tool('make_manifest').main([
        str(toy_datasets['market1501'].data_dir), '--out', str(path),
        '--attributes', str(toy_root / 'market1501' / 'market_attribute.mat')])
    assert status == 0
    return path


@pytest.fixture(scope='module')
def custom_root(toy_datasets, module_tmp):
    """A folder as a user brings it: manifest.csv (no attribute columns),
    schema.yaml (5 attributes) and identities.csv (labels per identity)."""
    toy = toy_datasets['market1501']
    root = module_tmp('custom-data')
    status = load_tool('make_manifest').main([str(toy.data_dir),
                                              '--out', str(root / 'manifest.csv')])
    assert status == 0
    (root / 'schema.yaml').write_text(SCHEMA)
    rows = [['pid', 'gender', 'age', 'shirt_red', 'shirt_blue', 'shirt_green']]
    market = load_schema('market1501')
    for pid, labels in sorted({**toy.train_labels, **toy.test_labels}.items()):
        value = dict(zip(market.names, labels))
        rows.append([pid, ('man', 'woman')[value['gender']], AGE[value['age']],
                     *(('no', 'yes')[value[FROM_MARKET[n]]] for n in rows[0][3:])])
    write_csv(root / 'identities.csv', rows)
    return root


def custom_args(root, save_dir, *extra):
    return ['--config-file', CUSTOM_CONFIG, '--root', root, *TINY, 'data.save_dir', save_dir,
            'data.custom.identity_attributes', 'identities.csv', *extra]


def test_the_readmes_example_is_a_valid_schema_and_manifest(tmp_path):
    readme = (REPO / 'README.md').read_text()
    schema_text = re.search(r'^```yaml\n# my-data/schema.yaml\n(.*?)^```$', readme,
                            re.M | re.S).group(1)
    manifest_text = re.search(r'^```\n(image,pid,camid,split.*?)^```$', readme,
                              re.M | re.S).group(1)
    (tmp_path / 'schema.yaml').write_text(schema_text)
    (tmp_path / 'manifest.csv').write_text(manifest_text)
    for row in list(csv.reader(io.StringIO(manifest_text)))[1:]:
        (tmp_path / row[0]).parent.mkdir(exist_ok=True)
        (tmp_path / row[0]).write_bytes(b'')
    schema = load_schema(tmp_path / 'schema.yaml')
    manifest = read_manifest(tmp_path / 'manifest.csv', schema)
    assert schema.colour_forms() == {'shirt_colour': {'red': 'shirt_red', 'blue': 'shirt_blue',
                                                      'green': 'shirt_green'}}
    assert [len(manifest.train), len(manifest.query), len(manifest.gallery)] == [4, 1, 2]
    assert manifest.image_attrs[str(tmp_path / 'train' / '0002_c3_001.jpg')].tolist() == \
        [0, -1, 0, 0, 1]


# -- the toy Market as a manifest --------------------------------------------

def test_the_manifest_of_toy_market_is_market1501_attr(market_manifest, toy_root):
    register_manifest_dataset('toy_manifest', str(market_manifest), 'market1501')
    ours, theirs = (torchreid.data.datasets.init_image_dataset(name, root=str(toy_root),
                                                               verbose=False)
                    for name in ('toy_manifest', 'market1501_attr'))
    assert (ours.train, ours.query, ours.gallery) == (theirs.train, theirs.query, theirs.gallery)
    assert ours.schema == theirs.schema == MARKET_SCHEMA
    assert ours.image_attrs.keys() == theirs.image_attrs.keys()
    for path, labels in theirs.image_attrs.items():
        assert np.array_equal(ours.image_attrs[path], labels), path
    # what a spawned DataLoader worker receives
    assert pickle.loads(pickle.dumps(ours)).schema == ours.schema


def first_batch(cfg):
    torchreid.utils.set_random_seed(cfg.train.seed)
    with contextlib.redirect_stdout(io.StringIO()):
        datamanager = torchreid.data.ImageDataManager(**config.imagedata_kwargs(cfg))
    return next(iter(datamanager.train_loader))


def test_same_batches_and_first_epoch_losses_as_market1501_attr(market_manifest, toy_root,
                                                                tmp_path):
    custom = ['data.custom.name', 'toy_manifest', 'data.custom.manifest', market_manifest,
              'data.custom.schema', 'market1501', 'data.sources', "['toy_manifest']",
              'data.targets', "['toy_manifest']"]
    common = ['use_gpu', 'False', 'data.root', str(toy_root), 'train.max_epoch', '1',
              'train.batch_size', '16', 'test.batch_size', '64', 'train.print_freq', '1']
    register_manifest_dataset('toy_manifest', str(market_manifest), 'market1501')
    ours = first_batch(config.load_config(TOY_CONFIG, common + custom))
    theirs = first_batch(config.load_config(TOY_CONFIG, common))
    assert ours['impath'] == theirs['impath']
    for key in ('img', 'pid', 'camid', 'attrs'):
        assert torch.equal(ours[key], theirs[key]), key
    for name, extra in (('ours', custom), ('theirs', [])):
        trained('--config-file', TOY_CONFIG, *common, 'data.save_dir', tmp_path / name, *extra)
    assert history_without_times(tmp_path / 'ours') == history_without_times(tmp_path / 'theirs')


# -- a custom toy set with its own attributes ------------------------------------

@pytest.fixture(scope='module')
def custom_run(custom_root, module_tmp):
    """One epoch of ALFO on the custom set, by configs/alfo_custom.yaml."""
    run = module_tmp('custom-run') / 'run'
    trained(*custom_args(custom_root, run))
    return run


def test_a_custom_schema_trains_and_evaluates(custom_run):
    metrics = json.loads((custom_run / 'metrics.json').read_text())
    result = metrics['results']['my_data']
    assert 0 <= result['rank1'] <= 1 and 0 <= result['mAP'] <= 1
    attributes = result['attributes']
    assert 0 <= attributes['mA'] <= 1
    assert set(attributes['accuracy']) == {'gender', 'age', 'shirt_red', 'shirt_blue',
                                           'shirt_green'}
    checkpoint = torch.load(custom_run / 'model' / 'model.pth.tar-1', weights_only=True)
    assert checkpoint['signature']['schema']['classes'][1] == ['child', 'adult', 'senior']


def test_a_custom_model_predicts_with_its_names(custom_run, toy_root, tmp_path, capsys):
    out = tmp_path / 'predictions'
    status = load_tool('predict').main(['--weights', str(custom_run / 'model' / 'model.pth.tar-1'),
                                        str(market_split(toy_root, 'query')), '--out', str(out)])
    assert status == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / 'index.csv').open()))
    assert list(rows[0]) == ['path', 'gender', 'age', 'shirt_red', 'shirt_blue', 'shirt_green',
                             'shirt_colour']
    assert {r['age'] for r in rows} <= {'child', 'adult', 'senior'}
    assert {r['gender'] for r in rows} <= {'man', 'woman'}
    assert {r['shirt_colour'] for r in rows} <= {'red', 'blue', 'green'}


def test_a_custom_model_searches_on_its_names(custom_run, toy_root, tmp_path, capsys):
    weights = custom_run / 'model' / 'model.pth.tar-1'
    search = load_tool('search')
    assert search.main(['index', '--weights', str(weights), str(market_split(toy_root, 'query')),
                        '--out', str(tmp_path / 'index')]) == 0
    query = sorted(market_split(toy_root, 'query').glob('*.jpg'))[0]
    capsys.readouterr()
    for where in ('age=senior,gender=woman', 'shirt_colour=green'):
        assert search.main(['query', str(tmp_path / 'index'), str(query), '--where', where,
                            '--out', str(tmp_path / 'searches')]) == 0
    ranking = json.loads((tmp_path / 'searches' / f'{query.stem}.json').read_text())
    assert all(hit['attributes']['shirt_colour'][0] == 'green' for hit in ranking['hits'])
    assert search.main(['query', str(tmp_path / 'index'), str(query), '--where',
                        'upcolour=red']) == 2
    assert 'the toyshop schema has gender=man|woman' in capsys.readouterr().err


@pytest.mark.filterwarnings('ignore:The feature will be removed:DeprecationWarning')
@pytest.mark.filterwarnings('ignore:You are using the legacy TorchScript-based ONNX export')
def test_a_custom_model_exports_with_onnx_parity(custom_run, tmp_path):
    pytest.importorskip('onnxruntime', reason='the export extra is not installed')
    out = tmp_path / 'custom.onnx'
    assert load_tool('export').main(['--weights', str(custom_run / 'model' / 'model.pth.tar-1'),
                                     '--format', 'onnx', '--out', str(out)]) == 0
    described = json.loads((tmp_path / 'custom.onnx.json').read_text())
    age = next(c for c in described['outputs']['attributes']['columns']
               if c['attribute'] == 'age')
    assert age == {'attribute': 'age', 'classes': ['child', 'adult', 'senior'], 'columns': [2, 5]}
    assert described['outputs']['attributes']['shape'] == ['batch', 11]
    assert max(described['max_abs_diff_vs_pytorch'].values()) <= 1e-4


def test_a_custom_run_resumes(custom_run, custom_root, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(custom_run, run)
    out = trained(*custom_args(custom_root, run, 'train.resume', 'True', 'train.max_epoch', '2'))
    assert 'continuing at epoch 2' in out
    assert [r['epoch'] for r in history_without_times(run)] == [1, 2]


# -- a source without attributes ---------------------------------------------------

def test_an_identity_only_source_trains_beside_an_attribute_one(custom_root, toy_root, tmp_path):
    root = tmp_path / 'data'
    root.mkdir()
    for name in ('schema.yaml', 'identities.csv'):
        shutil.copy(custom_root / name, root)
    write_csv(root / 'manifest.csv', absolute(manifest_rows(custom_root), custom_root))
    # torchreid's market1501 under the same root, the same images under other paths
    (root / 'market1501').symlink_to(toy_root / 'market1501')
    out = trained(*custom_args(root, tmp_path / 'run', 'data.sources', "['my_data', 'market1501']",
                               'data.targets', "['my_data', 'market1501']"))
    assert '** No attribute evaluation on market1501: it has no attribute labels' in out
    results = json.loads((tmp_path / 'run' / 'metrics.json').read_text())['results']
    assert 'attributes' in results['my_data'] and 'attributes' not in results['market1501']
    checkpoint = torch.load(tmp_path / 'run' / 'model' / 'model.pth.tar-1', weights_only=True)
    assert checkpoint['signature']['num_classes'] == 16  # 8 identities of each source


def test_the_second_source_has_unknown_attributes(custom_root, toy_root, tmp_path):
    register_manifest_dataset('my_data', 'manifest.csv', 'schema.yaml', 'identities.csv')
    ours = torchreid.data.datasets.init_image_dataset('my_data', root=str(custom_root),
                                                      verbose=False)
    # the same images under other paths: a dataset's labels are keyed by image path
    (tmp_path / 'market1501').symlink_to(toy_root / 'market1501')
    plain = torchreid.data.datasets.init_image_dataset('market1501', root=str(tmp_path),
                                                       verbose=False)
    summed = ours + plain
    assert summed.schema == ours.schema and summed.num_train_pids == 16
    second = [item[0] for item in summed.train[len(ours.train):]]
    assert all((summed.image_attrs[p] == -1).all() for p in second)
    assert (np.stack([summed.image_attrs[p[0]] for p in ours.train]) != -1).all()


def test_a_batch_without_any_label_trains_the_identity_classifier_alone(custom_root):
    # a batch drawn wholly from the identity-only source: every attribute unknown
    torch.manual_seed(0)
    model = ALFO(16, schema=load_schema(custom_root / 'schema.yaml'), pretrained=False,
                 last_stride=1).train()
    widths = attribute_logit_widths(model.schema.num_classes)
    outputs = model(torch.randn(4, 3, 128, 64))
    pids = torch.tensor([8, 9, 9, 15])
    out = ALFOLoss(16, widths, use_gpu=False)(outputs, pids, torch.full((4, 5), -1))
    assert out.attr.item() == 0 and torch.equal(out.winners, torch.full((5,), -1))
    assert out.total.item() == out.id.item()
    out.total.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.attribute_heads.weight.grad.abs().sum() == 0
    model.record_votes(out.winners)
    assert model.vote_counts.sum() == 0


# -- faults --------------------------------------------------------------------------

def manifest_rows(custom_root):
    with open(custom_root / 'manifest.csv', newline='') as f:
        return list(csv.reader(f))


def absolute(rows, folder):
    """The manifest ``rows`` with image paths made absolute (they were under ``folder``)."""
    return [row if i == 0 else [str(folder / row[0])] + row[1:] for i, row in enumerate(rows)]


def with_labels(rows):
    """The manifest with per-image labels (every image 'man', 'adult', 'no' colours)."""
    return [rows[0] + ['gender', 'age', 'shirt_red', 'shirt_blue', 'shirt_green']] + \
        [row + ['man', 'adult', 'no', 'no', 'no'] for row in rows[1:]]


def first_of(rows, split):
    return next(i for i, row in enumerate(rows) if i and row[3] == split)


FAULTS = {
    'unknown class': (lambda rows: rows[3].__setitem__(5, 'elderly'),
                      r'line 4, column "age": "elderly" is not a class of age; expected one of '
                      r'child, adult, senior'),
    'class index out of range': (lambda rows: rows[2].__setitem__(5, '3'),
                                 r'line 3, column "age": "3" is not a class'),
    'missing image': (lambda rows: rows[5].__setitem__(0, 'gone.jpg'),
                      r'line 6, column "image": ".*gone.jpg" does not exist'),
    'bad pid': (lambda rows: rows[2].__setitem__(1, 'x7'), r'line 3, column "pid": "x7"'),
    'pid with underscore': (lambda rows: rows[2].__setitem__(1, '1_000'),
                            r'line 3, column "pid": "1_000" is not an integer >= 0'),
    'superscript class index': (lambda rows: rows[2].__setitem__(5, '²'),
                                r'line 3, column "age": "²" is not a class of age'),
    'camera 0': (lambda rows: rows[2].__setitem__(2, '0'), r'line 3, column "camid": "0" is not'),
    'unknown split': (lambda rows: rows[2].__setitem__(3, 'test'),
                      r'line 3, column "split": "test" is not one of train, query, gallery'),
    'short row': (lambda rows: rows[4].pop(), r'line 5: 8 fields, expected 9'),
    'bad header': (lambda rows: rows[0].__setitem__(1, 'person'),
                   r'line 1: the header must start with image,pid,camid,split'),
    'unknown column': (lambda rows: rows[0].__setitem__(8, 'hat'),
                       r'line 1: column "hat" is not an attribute of the toyshop schema'),
    'image twice': (lambda rows: rows.append(list(rows[1])),
                    r'is listed twice \(first on line 2\)'),
    'no query': (lambda rows: rows.__setitem__(slice(None), [r for r in rows if r[3] != 'query']),
                 r'split "query" has no image'),
    'query in one camera': (
        lambda rows: rows.__setitem__(slice(None), [r for r in rows if not (
            r[3] == 'gallery' and r[1] == rows[first_of(rows, 'query')][1])]),
        r'line \d+: query person \d+ \(camera \d\) has no gallery image from another camera'),
}


@pytest.mark.parametrize('name', sorted(FAULTS))
def test_a_malformed_manifest_is_one_line_naming_file_line_and_column(name, custom_root,
                                                                      tmp_path):
    rows = with_labels(manifest_rows(custom_root))
    damage, message = FAULTS[name]
    damage(rows)
    path = tmp_path / 'manifest.csv'
    write_csv(path, absolute(rows, custom_root))
    with pytest.raises(DatasetError, match=message) as raised:
        read_manifest(path, load_schema(custom_root / 'schema.yaml'))
    assert '\n' not in str(raised.value) and f'manifest "{path}"' in str(raised.value)


def test_a_manifest_without_attributes_is_an_identity_only_dataset(custom_root):
    contents = read_manifest(custom_root / 'manifest.csv', None, name='plain')
    assert len(contents.schema) == 0 and contents.schema.dataset == 'plain'
    assert {len(labels) for labels in contents.image_attrs.values()} == {0}
    assert sorted({item[1] for item in contents.train}) == list(range(8))


def test_make_manifest_refuses_a_missing_split_and_an_existing_manifest(toy_datasets, tmp_path,
                                                                         capsys):
    tool = load_tool('make_manifest')
    assert tool.main([str(tmp_path), '--out', str(tmp_path / 'm.csv')]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f'error: folder "{tmp_path}/bounding_box_train" does not exist; expected '
        f'bounding_box_train, query, bounding_box_test in "{tmp_path}"']
    (tmp_path / 'm.csv').write_text('labels written by hand')
    data_dir = str(toy_datasets['market1501'].data_dir)
    assert tool.main([data_dir, '--out', str(tmp_path / 'm.csv')]) == 2
    assert 'exists (it may hold labels written by hand); pass --force' in capsys.readouterr().err
    assert tool.main([data_dir, '--out', str(tmp_path / 'm.csv'), '--force']) == 0
    assert (tmp_path / 'm.csv').read_text().startswith('image,pid,camid,split\n')


def test_make_manifest_refuses_a_person_id_that_is_not_a_number(tmp_path):
    for folder in ('bounding_box_train', 'query', 'bounding_box_test'):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / '0001_c1_000.jpg').write_bytes(b'')
    odd = tmp_path / 'bounding_box_train' / '12-3_c1_000.jpg'
    odd.write_bytes(b'')
    line = refusal('make_manifest', tmp_path, '--out', tmp_path / 'm.csv')
    assert line == f'error: image "{odd}": person id "12-3" is not a number'
    assert not (tmp_path / 'm.csv').exists()


def test_make_manifest_refuses_another_datasets_annotation(toy_datasets, tmp_path):
    market, duke = toy_datasets['market1501'], toy_datasets['dukemtmcreid']
    unlabelled = sorted(set(market.train_labels) - set(duke.train_labels))
    line = refusal('make_manifest', market.data_dir, '--out', tmp_path / 'm.csv',
                   '--attributes', duke.attribute_file)
    ids = ', '.join(f'{p:04d}' for p in unlabelled[:5])
    assert line == (f'error: attribute file "{duke.attribute_file}" has no labels for '
                    f'{len(unlabelled)} of the training identities of '
                    f'"{market.data_dir / "bounding_box_train"}" (e.g. {ids}); is it the '
                    'annotation of this dataset?')
    assert not (tmp_path / 'm.csv').exists()


def identities_without(custom_root, tmp_path, pids):
    """custom_root's identities.csv without the rows of ``pids``: its path."""
    with open(custom_root / 'identities.csv', newline='') as f:
        rows = [row for row in csv.reader(f) if row[0] not in {str(p) for p in pids}]
    write_csv(tmp_path / 'identities.csv', rows)
    return tmp_path / 'identities.csv'


def test_labels_per_identity_must_label_every_training_identity(custom_root, toy_datasets,
                                                                tmp_path):
    dropped = sorted(toy_datasets['market1501'].train_labels)[1:3]
    labels = identities_without(custom_root, tmp_path, dropped)
    with pytest.raises(AttributeFileError) as raised:
        read_manifest(custom_root / 'manifest.csv', load_schema(custom_root / 'schema.yaml'),
                      str(labels))
    ids = ', '.join(f'{p:04d}' for p in dropped)
    assert str(raised.value) == (
        f'identity attributes "{labels}" has no labels for 2 of the training identities of '
        f'manifest "{custom_root / "manifest.csv"}" (e.g. {ids}); is it the annotation of this '
        'dataset?')


def test_a_test_identity_without_labels_per_identity_is_unknown(custom_root, toy_datasets,
                                                                tmp_path):
    # as the built-in datasets: only training identities must be labelled
    dropped = sorted(toy_datasets['market1501'].test_labels)[0]
    labels = identities_without(custom_root, tmp_path, [dropped])
    contents = read_manifest(custom_root / 'manifest.csv',
                             load_schema(custom_root / 'schema.yaml'), str(labels))
    unlabelled = [contents.image_attrs[item[0]] for item in contents.query + contents.gallery
                  if item[1] == dropped]
    assert unlabelled and all((labels == -1).all() for labels in unlabelled)
    others = [contents.image_attrs[item[0]] for item in contents.query if item[1] != dropped]
    assert others and all((labels != -1).all() for labels in others)


def test_labels_in_two_places_or_without_schema_are_refused(custom_root):
    schema = load_schema(custom_root / 'schema.yaml')
    labelled = custom_root / 'labelled.csv'
    write_csv(labelled, with_labels(manifest_rows(custom_root)))
    with pytest.raises(DatasetError, match='labels per identity are given too'):
        read_manifest(labelled, schema, str(custom_root / 'identities.csv'))
    with pytest.raises(DatasetError, match=r'has attribute labels \(columns .*\) but no schema'):
        read_manifest(labelled, None)
    labelled.unlink()


@pytest.mark.parametrize('overrides, message', [
    (['data.custom.name', ''], 'data.custom.manifest is set but data.custom.name is empty'),
    (['data.custom.name', 'a b'], 'data.custom.name must be letters'),
    (['data.custom.manifest', ''], "data.custom.name 'my_data' needs data.custom.manifest"),
    (['data.custom.schema', ''], 'data.custom.identity_attributes needs data.custom.schema'),
    (['data.sources', "['market1501']", 'data.targets', "['market1501']"],
     "'my_data' is in neither data.sources"),
])
def test_bad_custom_keys_are_refused(overrides, message, custom_root):
    with pytest.raises(ConfigError, match=message):
        config.load_config(CUSTOM_CONFIG, ['data.custom.identity_attributes', 'x.csv',
                                           *overrides])


def test_files_are_found_under_the_data_root(custom_root):
    register_manifest_dataset('my_data', 'manifest.csv', 'nope.yaml')
    with pytest.raises(AttributeFileError, match=f'schema file "{custom_root}/nope.yaml" does '
                                                 'not exist'):
        torchreid.data.datasets.init_image_dataset('my_data', root=str(custom_root))
    register_manifest_dataset('my_data', 'nope.csv')
    with pytest.raises(DatasetError, match=f'manifest "{custom_root}/nope.csv" does not exist'):
        torchreid.data.datasets.init_image_dataset('my_data', root=str(custom_root))


def test_a_custom_name_may_not_hide_a_torchreid_dataset():
    with pytest.raises(ConfigError, match='"market1501" is already a torchreid or ALFO dataset'):
        register_manifest_dataset('market1501', 'manifest.csv')


def fuzzed(rng, rows):
    """One random fault in a labelled manifest."""
    line = rng.randrange(1, len(rows))
    column = rng.randrange(len(rows[0]))
    kind = rng.choice(['garbage', 'empty', 'negative', 'drop', 'extra'])
    if kind == 'drop':
        rows[line].pop(column)
    elif kind == 'extra':
        rows[line].append('x')
    elif column >= 4 and kind != 'garbage':
        rows[line][column] = str(rng.choice([7, -2, 99]))
    else:
        rows[line][column] = {'garbage': rng.choice(['?', 'nope', '1.5', 'a b']), 'empty': '',
                              'negative': '-3'}[kind]
    return rows


@pytest.mark.parametrize('seed', range(24))
def test_fuzzed_manifests_end_tools_main_in_one_line(seed, custom_root, tmp_path):
    root = tmp_path / 'data'
    root.mkdir()
    shutil.copy(custom_root / 'schema.yaml', root)
    rows = absolute(with_labels(manifest_rows(custom_root)), custom_root)
    write_csv(root / 'manifest.csv', fuzzed(random.Random(seed), rows))
    assert 'manifest.csv' in refused_run(root, tmp_path, *TINY, config_file=CUSTOM_CONFIG)


@pytest.mark.parametrize('seed', range(12))
def test_fuzzed_schema_files_end_tools_main_in_one_line(seed, custom_root, tmp_path):
    root = tmp_path / 'data'
    root.mkdir()
    shutil.copy(custom_root / 'identities.csv', root)
    write_csv(root / 'manifest.csv', absolute(manifest_rows(custom_root), custom_root))
    what, content = mutations(random.Random(seed), SCHEMA)
    (root / 'schema.yaml').write_text(yaml.safe_dump(content))
    assert 'schema.yaml' in refused_run(root, tmp_path, *TINY, config_file=CUSTOM_CONFIG), what
