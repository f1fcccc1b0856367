"""CLI fuzz: a few hundred seeded random bad inputs to every tool: main.py,
compare.py, predict.py, search.py (index and query), export.py and reproduce.py.

The inputs are random mutations of valid ones, each of a kind that must be
refused: config values out of range or of the wrong type, unknown keys, YAML
files that do not parse or are not a mapping, dataset trees with a missing or
empty split, badly named images or damaged attribute files, damaged weights,
configs, indexes and metrics files, missing inputs, bad search filters,
reproduction arguments, and outputs that would write over one of the tool's
own inputs. For every case: exit status 2, exactly one ``error:`` line, no
traceback, and the files of earlier runs (the run folder of every main.py
case; an earlier run, index and outputs of every other tool's) left byte for
byte as they were, the earlier run's lock file included.
"""
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from alfo_torchreid import config
from alfo_torchreid.serving import gallery_index
from alfo_run import REPO, market_split, refusal

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
    'alfo.neck': ['bn'],
    'data.erase_probability': ['1.5'],
    'train.warmup_epochs': ['-1'],
    'train.warmup_factor': ['0.0', '1.5'],
    'loss.center.weight': ['-1.0'],
    'loss.center.lr': ['0.0'],
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


@pytest.mark.parametrize('name, overrides, text', CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(name, overrides, text, toy_root, unchanged, tmp_path):
    config_file = TOY_CONFIG
    if text is not None:
        config_file = tmp_path / 'bad.yaml'
        config_file.write_bytes(text.replace('{self}', 'bad.yaml').encode())
    refusal('main', '--config-file', config_file, '--root', toy_root,
            'data.save_dir', unchanged, *overrides)


EVERY_BAD_VALUE = [(key, value) for key in sorted(BAD_VALUES) for value in BAD_VALUES[key]]


@pytest.mark.parametrize('key, value', EVERY_BAD_VALUE,
                         ids=[f'{k}={v}' for k, v in EVERY_BAD_VALUE])
def test_every_bad_value_of_the_table_is_refused(key, value, toy_root, unchanged):
    # the random cases draw from the table; this runs each value once
    refusal('main', '--config-file', TOY_CONFIG, '--root', toy_root,
            'data.save_dir', unchanged, key, value)


@pytest.mark.parametrize('name, mutate', TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_bad_tree(name, mutate, toy_root, unchanged, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(toy_root / 'market1501', root / 'market1501')
    mutate(root)
    refusal('main', '--config-file', TOY_CONFIG, '--root', root, 'data.save_dir', unchanged)


@pytest.mark.parametrize('name, key, content', FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_file(name, key, content, toy_root, unchanged, tmp_path):
    path = tmp_path / 'damaged.pth'
    path.write_bytes(content)
    line = refusal('main', '--config-file', TOY_CONFIG, '--root', toy_root,
                   'data.save_dir', unchanged, key, path)
    assert str(path) in line


@pytest.mark.parametrize('name, content', METRICS_CASES, ids=[c[0] for c in METRICS_CASES])
def test_bad_metrics_file(name, content, tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'metrics.json').write_bytes(content)
    line = refusal('compare', tmp_path / 'run', '--out', tmp_path / 'report')
    assert 'metrics.json' in line
    assert not (tmp_path / 'report').exists()


def test_an_unwritable_report_folder_is_one_line(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'metrics.json').write_text(json.dumps(
        {'model': 'alfo', 'params': 1, 'gflops': 1.0, 'results': {'m': {'mAP': 0.5,
                                                                     'cmc': [0.5]}}}))
    (tmp_path / 'a_file').write_text('')
    line = refusal('compare', tmp_path / 'run', '--out', tmp_path / 'a_file' / 'report')
    assert 'a_file' in line


def test_the_fuzz_covers_hundreds_of_cases_of_every_kind():
    kinds = {name.split('-')[1] for name, *_ in CONFIG_CASES}
    assert len(CONFIG_CASES) + len(TREE_CASES) + len(FILE_CASES) + len(METRICS_CASES) >= 300
    assert kinds == {'value', 'type', 'unknown', 'odd', 'flag', 'yaml'}
    assert yaml.safe_load(TOY_CONFIG.read_text())  # the base the mutations start from is valid


# -- the tools that use a trained model, compare and reproduce ------------------

CHECKPOINT_BYTES = [b'', b'PK\x03\x04broken zip', b'\x80\x02garbage pickle', b'{"json": true}']
# config files that no run of ALFO can use; the last two are valid YAML
BAD_MODEL_CONFIGS = ['- a\n- b\n', 'data: [unclosed\n', 'model:\n\tname: alfo\n',
                     'train:\n  no_such_key: 1\n', 'alfo:\n  num_parts: 0\n',
                     'model:\n  name: pcb_p6\n']
BAD_RUN_CONFIGS = BAD_MODEL_CONFIGS[:5] + ['train:\n  max_epoch: many\n']
BAD_WHERE = ['colour=red', 'gender=yes', 'backpack', 'upcolour=pink', 'gender=female,age']
# config values every run of a reproduction must refuse
BAD_OVERRIDES = [('train.lr', '0'), ('train.max_epoch', '0'), ('train.optim', 'adamw'),
                 ('alfo.num_parts', '0'), ('alfo.focal_gamma', '-1.0'),
                 ('test.dist_metric', 'l2')]
EARLIER_OUTPUTS = {
    'predictions': ('features.npy', 'index.csv', 'predictions.jsonl'),
    'export': ('alfo.onnx', 'alfo.onnx.json'),
    'report': ('comparison.md', 'comparison.csv', 'cmc.png', 'attributes.png'),
    'reproduce': ('configs.json', 'reproduction.md', 'reproduction.csv'),
}


@dataclass
class Earlier:
    """What a case of the other tools finds: under ``folder`` a run (``run/``:
    config.yaml and model/model.pth.tar-1), an index of the toy queries
    (``index/``), a query photo and the outputs of earlier calls of predict,
    export, compare and reproduce (:data:`EARLIER_OUTPUTS`), all of which must
    stay as they are; ``tmp``: the case's own folder."""
    folder: Path
    toy_root: Path
    tmp: Path = None

    @property
    def weights(self):
        return self.folder / 'run' / 'model' / 'model.pth.tar-1'

    @property
    def gallery(self):
        return market_split(self.toy_root, 'query')

    def write(self, name, content):
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def link(self, name, target):
        """A link ``tmp/name`` to ``target``: an output path that is an input."""
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        return path


@pytest.fixture(scope='module')
def earlier(alfo_weights, trained_alfo, toy_root, module_tmp):
    folder = module_tmp('earlier-outputs')
    shutil.copytree(alfo_weights.parent.parent, folder / 'run')
    gallery_index.build_index(folder / 'index', trained_alfo, [market_split(toy_root, 'query')],
                              'torch')
    shutil.copy(sorted(market_split(toy_root, 'query').glob('*.jpg'))[0], folder / 'query.jpg')
    for name, files in EARLIER_OUTPUTS.items():
        (folder / name).mkdir()
        for file in files:
            (folder / name / file).write_text('{}' if file.endswith('.json') else f'{file}\n')
    return Earlier(folder, toy_root)


def _state(folder):
    """Every file of ``folder`` but the lock: its bytes, or for a file over 1 MB
    (the weights, read once per case otherwise) its inode, size and
    modification time, which any write changes."""
    state = {}
    for path in folder.rglob('*'):
        if path.is_file() and path.name != '.lock':
            info = path.stat()
            state[path] = path.read_bytes() if info.st_size < 2 ** 20 else \
                (info.st_ino, info.st_size, info.st_mtime_ns)
    return state


MODEL_KINDS = ('weights-damaged', 'weights-missing', 'config-bad', 'config-missing')


def _kinds(rng, kinds, count):
    """``count`` kinds of case: each of ``kinds`` once, in random order, then random ones."""
    return rng.sample(kinds, len(kinds)) + rng.choices(kinds, k=count - len(kinds))


def model_mutation(rng, kind):
    """env -> ``--weights``/``--config`` arguments of a model that cannot be loaded
    (``kind``: one of :data:`MODEL_KINDS`)."""
    content = rng.choice(CHECKPOINT_BYTES + [bytes(rng.randrange(256) for _ in range(64))])
    text = rng.choice(BAD_MODEL_CONFIGS)

    def arguments(env):
        if kind == 'weights-damaged':
            return ['--weights', env.write('damaged.pth', content)]
        if kind == 'weights-missing':
            return ['--weights', env.tmp / 'missing.pth']
        return ['--weights', env.weights, '--config',
                env.write('bad.yaml', text) if kind == 'config-bad' else env.tmp / 'missing.yaml']
    return arguments


def predict_cases(rng, count):
    cases = []
    for i, kind in enumerate(_kinds(rng, MODEL_KINDS + ('input-missing', 'input-empty',
                                                        'out-over-input'), count)):
        file = rng.choice(EARLIER_OUTPUTS['predictions'])
        if kind in MODEL_KINDS:
            model = model_mutation(rng, kind)

            def build(env, model=model):
                return [env.gallery, *model(env), '--out', env.folder / 'predictions']
        elif kind == 'out-over-input':  # an output that is the weights or an input image
            target = rng.choice(['weights', 'image'])

            def build(env, file=file, target=target):
                image = sorted(env.gallery.glob('*.jpg'))[0]
                env.link(f'out/{file}', env.weights if target == 'weights' else image)
                return [env.gallery, '--weights', env.weights, '--out', env.tmp / 'out']
        else:
            def build(env, kind=kind):
                inputs = [env.gallery, env.tmp / 'missing.jpg']
                if kind == 'input-empty':  # a folder of no image, alone
                    inputs = [env.tmp]
                return [*inputs, '--weights', env.weights, '--out', env.folder / 'predictions']
        cases.append((f'{i}-predict-{kind}', 'predict', build))
    return cases


def export_cases(rng, count):
    cases = []
    for i, kind in enumerate(_kinds(rng, MODEL_KINDS + ('out-over-weights', 'out-over-config',
                                                        'description-over-weights'), count)):
        if kind in MODEL_KINDS:
            model = model_mutation(rng, kind)

            def build(env, model=model):
                return [*model(env), '--out', env.folder / 'export' / 'alfo.onnx']
        else:
            def build(env, kind=kind):
                out = {'out-over-weights': env.weights,
                       'out-over-config': env.folder / 'run' / 'config.yaml'}.get(kind)
                if out is None:
                    env.link('alfo.onnx.json', env.weights)
                    out = env.tmp / 'alfo.onnx'
                return ['--weights', env.weights, '--out', out]
        cases.append((f'{i}-export-{kind}', 'export', build))
    return cases


def index_cases(rng, count):
    """The cases but the damaged weights load the model first (as tools/search.py
    index does, like predict): a few."""
    cases = []
    for i, kind in enumerate(_kinds(rng, ('weights-damaged', 'gallery-missing', 'gallery-empty',
                                          'out-is-a-file', 'index-over-weights'), count)):
        model = model_mutation(rng, kind) if kind in MODEL_KINDS else None

        def build(env, kind=kind, model=model):
            gallery, out = env.gallery, env.folder / 'index'
            if kind in ('gallery-missing', 'gallery-empty'):
                gallery = env.tmp / 'gallery'
                if kind == 'gallery-empty':
                    gallery.mkdir()
            elif kind == 'out-is-a-file':
                out = env.folder / 'export' / 'alfo.onnx'
            elif kind == 'index-over-weights':
                out = env.link('index/index.json', env.weights).parent
            return ['index', gallery, *(model(env) if model else ['--weights', env.weights]),
                    '--out', out, '--backend', 'torch']
        cases.append((f'{i}-index-{kind}', 'search', build))
    return cases


def query_cases(rng, count):
    cases = []
    for i, kind in enumerate(_kinds(rng, ('no-index', 'torn-index', 'missing-file', 'where',
                                          'out-over-index', 'out-over-query', 'weights-damaged'),
                                    count)):
        cut, key, where = rng.random(), rng.choice(['features', 'attributes', 'items']), \
            rng.choice(BAD_WHERE)
        content = rng.choice(CHECKPOINT_BYTES)

        def build(env, kind=kind, cut=cut, key=key, where=where, content=content):
            index, extra = env.folder / 'index', ['--out', env.tmp / 'searches']
            photo = env.folder / 'query.jpg'
            if kind == 'no-index':
                index = env.tmp
            elif kind in ('torn-index', 'missing-file'):
                index = env.tmp / 'index'
                shutil.copytree(env.folder / 'index', index)
                meta = index / 'index.json'
                if kind == 'torn-index':
                    meta.write_bytes(meta.read_bytes()[:int(cut * meta.stat().st_size)])
                else:
                    (index / json.loads(meta.read_text())['files'][key]).unlink()
            elif kind == 'where':
                extra += ['--where', where]
            elif kind == 'out-over-index':  # index.jpg's ranking would be index/index.json
                photo = env.tmp / 'index.jpg'
                shutil.copy(env.folder / 'query.jpg', photo)
                extra = ['--out', env.folder / 'index']
            elif kind == 'out-over-query':  # query.png's picture would be the photo itself
                photo = env.tmp / 'query.png'
                shutil.copy(env.folder / 'query.jpg', photo)
                extra = ['--out', env.tmp]
            else:
                extra += ['--weights', env.write('damaged.pth', content)]
            return ['query', index, photo, *extra]
        cases.append((f'{i}-query-{kind}', 'search', build))
    return cases


def compare_cases(rng, count):
    cases = []
    for i, kind in enumerate(_kinds(rng, ('no-metrics', 'config-bad', 'config-over-report'),
                                    count)):
        text, file = rng.choice(BAD_RUN_CONFIGS), rng.choice(EARLIER_OUTPUTS['report'])

        def build(env, kind=kind, text=text, file=file):
            out = env.folder / 'report'
            if kind == 'no-metrics':
                return [env.folder / 'run', '--out', out]
            config_file = env.write('bad.yaml', text) if kind == 'config-bad' else out / file
            return ['--configs', config_file, '--out', out]
        cases.append((f'{i}-compare-{kind}', 'compare', build))
    return cases


def reproduce_cases(rng, count):
    cases = []
    for i, kind in enumerate(_kinds(rng, ('dataset', 'seeds', 'own-key', 'value', 'no-dataset',
                                          'out-over-input'), count)):
        dataset = rng.choice(['market', 'duke', 'msmt17', 'market1501_attr'])
        seeds = rng.choice([['-1'], ['1', '1'], ['2', '-3']])
        own = rng.choice(['data.save_dir', 'data.root', 'data.sources', 'train.seed',
                          'train.resume'])
        override = rng.choice(BAD_OVERRIDES)
        table = rng.choice(EARLIER_OUTPUTS['reproduce'])

        def build(env, kind=kind, dataset=dataset, seeds=seeds, own=own, override=override,
                  table=table):
            out = env.folder / 'reproduce'
            argv = ['--dataset', dataset if kind == 'dataset' else 'market1501', '--quick',
                    '--root', env.tmp if kind == 'no-dataset' else env.toy_root, '--out', out]
            if kind == 'seeds':
                argv += ['--seeds', *seeds]
            return argv + {'own-key': [own, '1'], 'value': list(override),
                           'out-over-input': ['model.pretrained', out / table]}.get(kind, [])
        cases.append((f'{i}-reproduce-{kind}', 'reproduce', build))
    return cases


TOOL_CASES = (predict_cases(RNG, 14) + export_cases(RNG, 10) + index_cases(RNG, 5)
              + query_cases(RNG, 16) + compare_cases(RNG, 8) + reproduce_cases(RNG, 14))


@pytest.mark.parametrize('name, tool, build', TOOL_CASES, ids=[c[0] for c in TOOL_CASES])
def test_bad_tool_input(name, tool, build, earlier, tmp_path):
    env = Earlier(earlier.folder, earlier.toy_root, tmp_path)
    before = _state(env.folder)
    refusal(tool, *build(env))
    assert _state(env.folder) == before


def test_the_tool_fuzz_covers_every_tool_and_kind():
    kinds = {tuple(name.split('-', 2)[1:]) for name, *_ in TOOL_CASES}
    assert {tool for tool, _ in kinds} == {'predict', 'export', 'index', 'query', 'compare',
                                           'reproduce'}
    assert len(kinds) == 7 + 7 + 5 + 7 + 3 + 6
    assert len(CONFIG_CASES) + len(TREE_CASES) + len(FILE_CASES) + len(METRICS_CASES) + \
        len(TOOL_CASES) >= 370
