"""CLI fuzz: a few hundred seeded random bad inputs to tools/main.py and tools/compare.py.

The inputs are random mutations of valid ones, each of a kind that must be
refused: config values out of range or of the wrong type, unknown keys, YAML
files that do not parse or are not a mapping, dataset trees with a missing or
empty split, badly named images or damaged attribute files, damaged weights and
metrics files. For every case: exit status 2, exactly one ``error:`` line, no
traceback, and the folder of an earlier run (the run folder of every main.py
case) left byte for byte as it was, its lock file included.
"""
import contextlib
import io
import json
import random
import runpy
import shutil
from pathlib import Path

import pytest
import yaml

from alfo_torchreid import config
from alfo_run import market_split

REPO = Path(__file__).resolve().parents[1]
MAIN = runpy.run_path(str(REPO / 'tools' / 'main.py'))['main']
COMPARE = runpy.run_path(str(REPO / 'tools' / 'compare.py'))['main']
TOY_CONFIG = REPO / 'configs' / 'alfo_toy.yaml'
SEED = 20261129

# Values each key must refuse, as typed on a command line.
BAD_VALUES = {
    'train.optim': ['adamw', 'SGD', "''"],
    'train.lr': ['0', '-0.1'],
    'train.max_epoch': ['0', '-3'],
    'train.batch_size': ['0', '64'],  # 64: more than the toy training set's 32 images
    'train.lr_scheduler': ['step', 'cosine_annealing'],
    'train.stepsize': ['[0]', '[-5]', '[]', '[[5]]'],
    'train.gamma': ['0'],
    'train.print_freq': ['0'],
    'train.weight_decay': ['-1e-4'],
    'train.fixbase_epoch': ['-1'],
    'train.amp': ['fp8', 'FP16'],
    'train.channels_last': ['yes', 'NHWC'],
    'test.batch_size': ['0', '-1'],
    'test.dist_metric': ['l2', 'cos'],
    'test.ranks': ['[0]', '[51]'],
    'test.visrank_topk': ['0'],
    'test.visrank': ['True'],
    'test.evaluator': ['cython'],
    'data.workers': ['-1'],
    'data.height': ['8'],
    'data.k_tfm': ['0'],
    'data.transforms': ["['random_rotate']"],
    'data.sources': ["['nope']", '[]'],
    'data.norm_std': ["['a', 'b', 'c']", '[0.0, 0.0, 0.0]', '[0.2]'],
    'data.norm_mean': ["['x', 0.5, 0.5]"],
    'data.targets': ["['market1501_attr', 'nope']"],
    'sampler.train_sampler': ['Random', 'RandomIdentity'],
    'sampler.num_instances': ['0'],
    'sgd.momentum': ['1.5'],
    'adam.beta1': ['2.0'],
    'loss.name': ['xent', 'softmax+triplet'],
    'loss.triplet.margin': ['-1.0'],
    'model.name': ['resnet', 'alfo_market'],
    'model.pretrained': ['/nonexistent/w.pth'],
    'model.load_weights': ['/nonexistent/w.pth'],
    'model.resume': ['/nonexistent/c.pth'],
    'alfo.vote': ['max'],
    'alfo.attr_pred': ['argmax'],
    'alfo.feature': ['both'],
    'alfo.focal_alpha': ['1.5', '-0.1'],
    'alfo.focal_gamma': ['-1.0'],
    'alfo.num_parts': ['0', '9'],
    'alfo.last_stride': ['3'],
    'alfo.attr_reduction': ['median'],
    'alfo.id_weight': ['-1.0'],
}


def _default_keys():
    """(dotted key, default value) of every leaf of the config tree."""
    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f'{prefix}{key}.')
            else:
                yield f'{prefix}{key}', value
    return list(walk(config.get_config(), ''))


def _wrong_type(value):
    """A command-line value yacs cannot coerce to the type of ``value``."""
    if isinstance(value, bool):
        return 'maybe'
    if isinstance(value, (int, float)):
        return 'abc'
    if isinstance(value, str):
        return '[1, 2]'
    return '5'  # a list or tuple


def config_cases(rng, count):
    """(name, overrides, yaml text or None) of bad command lines and files."""
    keys = _default_keys()
    base = TOY_CONFIG.read_text()
    cases = []
    for i in range(count):
        kind = rng.choice(['value', 'value', 'type', 'unknown', 'odd', 'flag', 'yaml'])
        if kind == 'value':
            key = rng.choice(sorted(BAD_VALUES))
            value = rng.choice(BAD_VALUES[key])
            cases.append((f'{i}-value-{key}={value}', [key, value], None))
        elif kind == 'type':
            key, value = rng.choice(keys)
            cases.append((f'{i}-type-{key}', [key, _wrong_type(value)], None))
        elif kind == 'unknown':
            section = rng.choice(['train', 'data', 'alfo', 'test', 'loss', 'model'])
            cases.append((f'{i}-unknown', [f'{section}.no_{rng.randrange(10 ** 6)}', '1'], None))
        elif kind == 'odd':
            key, value = rng.choice(keys)
            cases.append((f'{i}-odd', ['train.max_epoch', '1', key], None))
        elif kind == 'flag':
            cases.append((f'{i}-flag', ['train.max_epoch', '1', rng.choice(['-t', '-s', '--root']),
                                        'x'], None))
        else:
            cases.append((f'{i}-yaml', [], _bad_yaml(rng, base)))
    return cases


def _bad_yaml(rng, base):
    """A config file text that cannot be a config (``{self}`` names the file itself)."""
    lines = base.splitlines()
    at = rng.randrange(len(lines))
    return rng.choice([
        '- a\n- b\n', '42\n', '"a string"\n', '',
        '\n'.join(lines[:at] + ['data: [unclosed'] + lines[at:]),
        '\n'.join(lines[:at] + ['model:\n\tname: alfo']),
        '_BASE_: {self}\n',
        '_BASE_: missing_base.yaml\n',
        base + f'\ntrain:\n  no_{rng.randrange(1000)}: 1\n',
        base + '\ntrain:\n  max_epoch: many\n',
        base + '\ntrain:\n  max_epoch: 2\n',  # a second train: section
        base + '\nx: &a [1]\ny: *a\n',
        base + "\nmodel:\n  name: !!python/object/apply:os.getcwd []\n",
        'x: ' + '[' * 1000 + ']' * 1000 + '\n',
    ])


def tree_cases(rng, count):
    """(name, mutation of a copied toy tree) of trees that cannot be read."""
    def remove_split(root):
        shutil.rmtree(market_split(root, rng.choice(['bounding_box_train', 'bounding_box_test',
                                               'query'])))

    def empty_split(root):
        for image in market_split(root, rng.choice(['bounding_box_train', 'query'])).iterdir():
            image.unlink()

    def bad_name(root):
        folder = market_split(root, rng.choice(['bounding_box_train', 'bounding_box_test',
                                                'query']))
        image = rng.choice(sorted(folder.iterdir()))
        image.rename(folder / rng.choice(['photo.jpg', '0002_x1s1_000451_03.jpg',
                                          '0002_c9s1_000451_03.jpg', '9999_c1s1_000451_03.jpg']))

    def damaged_attributes(root):
        path = root / 'market1501' / 'market_attribute.mat'
        data = path.read_bytes()
        path.write_bytes(data[:rng.randrange(len(data))])

    def attributes_as_text(root):
        (root / 'market1501' / 'market_attribute.mat').write_text('MATLAB? no.')

    mutations = [remove_split, empty_split, bad_name, damaged_attributes, attributes_as_text]
    return [(f'{i}-{m.__name__}', m) for i, m in
            ((i, rng.choice(mutations)) for i in range(count))]


def file_cases(rng, count):
    """(name, key, bytes) of damaged weights and annotation files given by key."""
    keys = ['model.load_weights', 'model.pretrained', 'model.resume',
            'alfo.attr_file.market1501_attr']
    contents = [b'', b'PK\x03\x04broken zip', b'\x80\x02garbage pickle', b'{"json": true}',
                bytes(rng.randrange(256) for _ in range(64))]
    return [(f'{i}-{key}', key, rng.choice(contents)) for i, key in
            ((i, rng.choice(keys)) for i in range(count))]


def metrics_cases(rng, count):
    """(name, metrics.json bytes) that tools/compare.py must refuse."""
    valid = json.dumps({'name': 'x', 'model': 'alfo', 'params': 1, 'gflops': 1.0,
                        'results': {'m': {'mAP': 0.5, 'cmc': [0.5, 0.7]}}}).encode()
    shapes = [b'', b'[]', b'{"results": {}}', b'\xff\xfe', b'{"model": "alfo", "params": 1, '
              b'"gflops": 1, "results": {"m": {"mAP": "high", "cmc": []}}}',
              b'{"model": "alfo", "params": 1, "gflops": 1, "results": {"m": {"mAP": NaN, '
              b'"cmc": [0.5]}}}',
              b'{"model": "alfo", "params": 1, "gflops": Infinity, "results": {}}',
              b'{"model": "alfo", "params": 1, "gflops": 1, "results": {"m": {"mAP": 0.5, '
              b'"cmc": [7]}}}',
              b'{"model": "alfo", "params": 1, "gflops": 1, "results": {"m": {"mAP": 0.5, '
              b'"cmc": [0.5], "attributes": {"mA": 0.5}}}}']
    cases = []
    for i in range(count):
        if rng.random() < 0.5:
            cases.append((f'{i}-truncated', valid[:rng.randrange(len(valid) - 1)]))
        else:
            cases.append((f'{i}-shape', rng.choice(shapes)))
    return cases


RNG = random.Random(SEED)
CONFIG_CASES = config_cases(RNG, 220)
TREE_CASES = tree_cases(RNG, 30)
FILE_CASES = file_cases(RNG, 30)
METRICS_CASES = metrics_cases(RNG, 30)


@pytest.fixture(scope='module')
def earlier_run(module_tmp):
    """The folder of an earlier, finished run (its files are what must not change)."""
    run = module_tmp('earlier') / 'run'
    (run / 'model').mkdir(parents=True)
    (run / 'config.yaml').write_text(TOY_CONFIG.read_text())
    (run / 'history.jsonl').write_text('{"epoch": 1, "loss": 3.2}\n')
    (run / 'metrics.json').write_text('{"results": {}}')
    (run / 'train.log').write_text('trained\n')
    (run / 'model' / 'latest.pth.tar').write_bytes(b'weights')
    (run / '.lock').write_text('4242')  # the pid of the process that ran it
    return run


def _files(folder):
    """Every file of ``folder``, its lock included (a refused run leaves it alone)."""
    return {p: p.read_bytes() for p in folder.rglob('*') if p.is_file()}


@pytest.fixture
def unchanged(earlier_run):
    before = _files(earlier_run)
    yield earlier_run
    assert _files(earlier_run) == before


def _refused(tool, argv):
    """Runs ``tool(argv)`` in-process; checks exit 2, one error line, no traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = tool([str(a) for a in argv])
    text = out.getvalue() + err.getvalue()
    errors = [line for line in err.getvalue().splitlines() if line.startswith('error: ')]
    assert status == 2, text[-2000:]
    assert len(errors) == 1 and err.getvalue().rstrip().endswith(errors[0]), err.getvalue()
    assert 'Traceback' not in text
    return errors[0]


@pytest.mark.parametrize('name, overrides, text', CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(name, overrides, text, toy_root, unchanged, tmp_path):
    config_file = TOY_CONFIG
    if text is not None:
        config_file = tmp_path / 'bad.yaml'
        config_file.write_bytes(text.replace('{self}', 'bad.yaml').encode())
    _refused(MAIN, ['--config-file', config_file, '--root', toy_root,
                    'data.save_dir', unchanged, *overrides])


EVERY_BAD_VALUE = [(key, value) for key in sorted(BAD_VALUES) for value in BAD_VALUES[key]]


@pytest.mark.parametrize('key, value', EVERY_BAD_VALUE,
                         ids=[f'{k}={v}' for k, v in EVERY_BAD_VALUE])
def test_every_bad_value_of_the_table_is_refused(key, value, toy_root, unchanged):
    # the random cases draw from the table; this runs each value once
    _refused(MAIN, ['--config-file', TOY_CONFIG, '--root', toy_root,
                    'data.save_dir', unchanged, key, value])


@pytest.mark.parametrize('name, mutate', TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_bad_tree(name, mutate, toy_root, unchanged, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(toy_root / 'market1501', root / 'market1501')
    mutate(root)
    _refused(MAIN, ['--config-file', TOY_CONFIG, '--root', root, 'data.save_dir', unchanged])


@pytest.mark.parametrize('name, key, content', FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_file(name, key, content, toy_root, unchanged, tmp_path):
    path = tmp_path / 'damaged.pth'
    path.write_bytes(content)
    line = _refused(MAIN, ['--config-file', TOY_CONFIG, '--root', toy_root,
                           'data.save_dir', unchanged, key, path])
    assert str(path) in line


@pytest.mark.parametrize('name, content', METRICS_CASES, ids=[c[0] for c in METRICS_CASES])
def test_bad_metrics_file(name, content, tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'metrics.json').write_bytes(content)
    line = _refused(COMPARE, [tmp_path / 'run', '--out', tmp_path / 'report'])
    assert 'metrics.json' in line
    assert not (tmp_path / 'report').exists()


def test_an_unwritable_report_folder_is_one_line(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'metrics.json').write_text(json.dumps(
        {'model': 'alfo', 'params': 1, 'gflops': 1.0, 'results': {'m': {'mAP': 0.5,
                                                                     'cmc': [0.5]}}}))
    (tmp_path / 'a_file').write_text('')
    line = _refused(COMPARE, [tmp_path / 'run', '--out', tmp_path / 'a_file' / 'report'])
    assert 'a_file' in line


def test_the_fuzz_covers_hundreds_of_cases_of_every_kind():
    kinds = {name.split('-')[1] for name, *_ in CONFIG_CASES}
    assert len(CONFIG_CASES) + len(TREE_CASES) + len(FILE_CASES) + len(METRICS_CASES) >= 300
    assert kinds == {'value', 'type', 'unknown', 'odd', 'flag', 'yaml'}
    assert yaml.safe_load(TOY_CONFIG.read_text())  # the base the mutations start from is valid
