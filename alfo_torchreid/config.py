"""The yacs configuration: torchreid's default tree plus an ``alfo`` section.

torchreid keeps its default config in ``scripts/default_config.py`` of its
repository, which the PyPI package does not ship; :func:`get_default_config`
rebuilds that tree (same keys and defaults, image re-ID only) and
:func:`add_alfo_config` adds what ALFO needs. The ``*_kwargs`` functions turn
a config into constructor arguments, as in torchreid's scripts.
"""
import contextlib
import difflib
import inspect
import math
import os
import re

import torch
import torchreid
import yaml
from yacs.config import CfgNode as CN

from alfo_torchreid.data.samplers import DISTRIBUTED_SAMPLERS
from alfo_torchreid.losses import ATTR_REDUCTIONS, VOTE_MODES
from alfo_torchreid.models.neck import NECKS
from alfo_torchreid.utils import compat, distributed
from alfo_torchreid.utils.errors import ConfigError
from alfo_torchreid.utils.yaml_keys import UniqueKeyLoader

ATTR_PRED_MODES = ('voted', 'mean')
AMP_MODES = ('off', 'bf16', 'fp16')  # train.amp (alfo_torchreid.engine.precision)
CHANNELS_LAST_MODES = ('auto', 'on', 'off')  # train.channels_last
FEATURE_MODES = ('global', 'local', 'global+local')
EVALUATORS = ('alfo', 'torchreid')
LOSSES = ('softmax', 'triplet')
# torchreid's own lists (optim.AVAI_OPTIMS, AVAI_SCH, data.sampler.AVAI_SAMPLERS,
# the names build_transforms knows), repeated here so that a bad value is
# refused before any data is read.
OPTIMIZERS = ('adam', 'amsgrad', 'sgd', 'rmsprop', 'radam')
SCHEDULERS = ('single_step', 'multi_step', 'cosine')
SAMPLERS = ('RandomSampler', 'SequentialSampler', 'RandomIdentitySampler', 'RandomDomainSampler',
            'RandomDatasetSampler')
TRANSFORMS = ('random_flip', 'random_crop', 'random_patch', 'color_jitter', 'random_erase')


def available_cores():
    """The CPU cores this process may run on: its affinity mask where the OS
    has one (``os.sched_getaffinity``), else ``os.cpu_count()``."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def get_default_config():
    """torchreid's default config tree (image re-ID part), with its defaults."""
    cfg = CN()
    cfg.use_gpu = torch.cuda.is_available()

    cfg.model = CN()
    cfg.model.name = 'resnet50'
    # 'imagenet' (torchreid's ImageNet initialisation; YAML True means the same),
    # a model-zoo name (e.g. 'resnet50_market1501'), a path to a weights file,
    # or '' (YAML False) for random initialisation.
    cfg.model.pretrained = 'imagenet'
    cfg.model.load_weights = ''  # weights to load before training or evaluation
    cfg.model.resume = ''  # checkpoint to resume training from
    cfg.model.trust_checkpoint = False  # allow full unpickling (can run code)

    cfg.data = CN()
    cfg.data.type = 'image'
    cfg.data.root = 'reid-data'
    cfg.data.sources = ['market1501']
    cfg.data.targets = ['market1501']
    cfg.data.workers = min(4, available_cores())  # DataLoader processes
    cfg.data.split_id = 0
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.combineall = False
    cfg.data.transforms = ['random_flip']
    # probability of torchreid's random_erase (its build_transforms fixes 0.5, BoT's
    # value; alfo_torchreid.run.set_erase_probability applies this one)
    cfg.data.erase_probability = 0.5
    cfg.data.k_tfm = 1
    cfg.data.norm_mean = [0.485, 0.456, 0.406]  # ImageNet statistics
    cfg.data.norm_std = [0.229, 0.224, 0.225]
    cfg.data.save_dir = 'log'
    cfg.data.load_train_targets = False

    cfg.market1501 = CN()
    cfg.market1501.use_500k_distractors = False
    cfg.cuhk03 = CN()
    cfg.cuhk03.labeled_images = False
    cfg.cuhk03.classic_split = False
    cfg.cuhk03.use_metric_cuhk03 = False

    cfg.sampler = CN()
    cfg.sampler.train_sampler = 'RandomSampler'
    cfg.sampler.train_sampler_t = 'RandomSampler'
    cfg.sampler.num_instances = 4
    cfg.sampler.num_cams = 1
    cfg.sampler.num_datasets = 1

    cfg.train = CN()
    cfg.train.optim = 'adam'
    cfg.train.lr = 0.0003
    cfg.train.weight_decay = 5e-4
    cfg.train.max_epoch = 60
    cfg.train.start_epoch = 0
    cfg.train.batch_size = 32
    cfg.train.fixbase_epoch = 0
    # Layers trained alone for fixbase_epoch epochs, and those at the full lr with
    # staged_lr (the rest at base_lr_mult x lr). Empty: the model's new layers,
    # those not pretrained: torchreid models' classifier; ALFO's identity
    # classifier and stripe attribute heads (alfo_torchreid.run.new_layers).
    cfg.train.open_layers = []
    cfg.train.staged_lr = False
    cfg.train.new_layers = []
    cfg.train.base_lr_mult = 0.1
    cfg.train.lr_scheduler = 'single_step'
    cfg.train.stepsize = [20]
    cfg.train.gamma = 0.1
    # Linear warm-up (BoT): over the first warmup_epochs epochs the lr rises from
    # warmup_factor x the scheduled lr to it; 0 epochs: none (torchreid's schedule)
    cfg.train.warmup_epochs = 0
    cfg.train.warmup_factor = 0.1
    cfg.train.print_freq = 20
    cfg.train.seed = 1
    cfg.train.resume = False  # resume from <save_dir>/model/latest.pth.tar when it exists
    cfg.train.deterministic = False  # torch.use_deterministic_algorithms, for exact resume
    # model/latest.pth.tar always holds the optimizer (what a run resumes from); the
    # numbered snapshots model.pth.tar-N hold the weights alone unless this is True
    # (Market ALFO: 102 MB instead of 305 MB with Adam's state).
    cfg.train.save_optimizer_in_snapshots = False
    # Mixed precision of the forward pass: 'off' (fp32), 'bf16' (CUDA or CPU) or 'fp16'
    # (CUDA, with gradient scaling); the loss and the vote stay fp32 (ALFO models).
    cfg.train.amp = 'off'
    # Model and batches in channels-last memory format: 'auto' (on when training on
    # CUDA), 'on' or 'off'.
    cfg.train.channels_last = 'auto'
    # Under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA)
    # instead of each process's share. A single process has nothing to synchronise.
    cfg.train.sync_bn = False

    cfg.sgd = CN()
    cfg.sgd.momentum = 0.9
    cfg.sgd.dampening = 0.
    cfg.sgd.nesterov = False
    cfg.rmsprop = CN()
    cfg.rmsprop.alpha = 0.99
    cfg.adam = CN()
    cfg.adam.beta1 = 0.9
    cfg.adam.beta2 = 0.999

    cfg.loss = CN()
    cfg.loss.name = 'softmax'
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = True
    cfg.loss.triplet = CN()
    cfg.loss.triplet.margin = 0.3  # distance margin of the hard triplet loss
    cfg.loss.triplet.weight_t = 1.  # weight of the triplet loss
    # weight of the identity (softmax) loss beside it. torchreid's default is 0,
    # the triplet loss alone; 1 is the usual softmax + triplet recipe, and for
    # ALFO the identity loss is part of the method (it multiplies alfo.id_weight).
    cfg.loss.triplet.weight_x = 1.
    # BoT's center loss on the feature the triplet loss reads (before a BNNeck):
    # weight > 0 adds weight x mean squared distance to the identity's center; the
    # centers learn by their own SGD at lr (BoT: weight 0.0005, lr 0.5)
    cfg.loss.center = CN()
    cfg.loss.center.weight = 0.
    cfg.loss.center.lr = 0.5

    cfg.test = CN()
    cfg.test.batch_size = 100
    cfg.test.dist_metric = 'euclidean'
    cfg.test.normalize_feature = False
    cfg.test.ranks = [1, 5, 10, 20]
    cfg.test.evaluate = False
    cfg.test.eval_freq = -1
    cfg.test.start_eval = 0
    cfg.test.rerank = False
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    # 'alfo': vectorised, same numbers; 'torchreid': its own Python evaluator, which
    # fails under numpy 2 when a query has fewer than 50 valid gallery images
    cfg.test.evaluator = 'alfo'
    return cfg


def add_alfo_config(cfg):
    """Adds the ``alfo`` section (stripes, vote, losses and branch switches) and
    ``test.attr_rerank_weight``."""
    cfg.alfo = CN()
    cfg.alfo.last_stride = 1  # 1 as in PCB: a 16x8 map for 256x128 input
    cfg.alfo.num_parts = 6  # the paper found 6 stripes best
    cfg.alfo.stripe_height = 0  # 0: derived from the map height (docs/method.md)
    cfg.alfo.stripe_stride = 0  # 0: derived from the map height
    cfg.alfo.global_branch = True
    cfg.alfo.local_branch = True
    cfg.alfo.vote = 'majority'
    cfg.alfo.attr_pred = 'voted'
    cfg.alfo.feature = 'global'
    # 'bnneck': the strong baseline's BatchNorm between the global pool and a
    # bias-free identity classifier (alfo_torchreid.models.neck); 'none': the paper
    cfg.alfo.neck = 'none'
    cfg.alfo.focal = True  # False: plain cross entropy (the "no focal loss" ablation)
    cfg.alfo.focal_alpha = 0.5
    cfg.alfo.focal_gamma = 2.0
    # L = id_weight * L_ID + attr_weight * sum over attributes of the voted losses:
    # the paper's total loss is "the ID loss plus the voted attribute losses" (end
    # of its section 2.1, docs/method.md "Loss"). attr_reduction 'mean' divides the
    # sum by the number of attributes, APR's weighting (1/m of the paper's term).
    cfg.alfo.id_weight = 1.0
    cfg.alfo.attr_weight = 1.0
    cfg.alfo.attr_reduction = 'sum'
    # Annotation files other than <root>/<dataset_dir>/*_attribute.mat ('' = default).
    cfg.alfo.attr_file = CN()
    cfg.alfo.attr_file.market1501_attr = ''
    cfg.alfo.attr_file.dukemtmcreid_attr = ''
    # A dataset of the user's own (alfo_torchreid.data.manifest), registered into
    # torchreid under data.custom.name for data.sources / data.targets. Files are
    # relative to data.root: the manifest CSV, the schema YAML (or a shipped
    # schema's name, e.g. market1501; '' for a dataset without attributes) and
    # an optional CSV of labels per identity.
    cfg.data.custom = CN()
    cfg.data.custom.name = ''
    cfg.data.custom.manifest = ''
    cfg.data.custom.schema = ''
    cfg.data.custom.identity_attributes = ''
    # > 0: the test ranks by re-ID distance + this x the query's median distance x
    # the attribute disagreement (attribute_match.attribute_reranked), as
    # tools/search.py --attr-weight does; 0: torchreid's ranking
    cfg.test.attr_rerank_weight = 0.0
    return cfg


def get_config():
    """torchreid's defaults plus the ALFO section."""
    return add_alfo_config(get_default_config())


def load_config(config_file='', opts=()):
    """Builds the config: defaults, then ``config_file``, then ``KEY VALUE`` overrides.

    Raises:
        ConfigError: a file that cannot be read as a config, an unknown key, a
            value of the wrong type, or a value outside :data:`SCHEMA`; the
            message names the file or the command line.
    """
    cfg = get_config()
    if config_file:
        merge_config_file(cfg, str(config_file))
    opts = [str(o) for o in opts]
    flags = [o for o in opts[::2] if o.startswith('-')]
    if flags:
        raise ConfigError(
            f'"{flags[0]}" on the command line comes after the KEY VALUE overrides; flags go '
            f'first: tools/main.py --config-file FILE [--root R] [-s ...] [-t ...] '
            f'[--transforms ...] [KEY VALUE ...]')
    with _as_config_error('the command line'):
        cfg.merge_from_list(_floats_as_floats(cfg, opts))
    check_config(cfg)
    return cfg


@contextlib.contextmanager
def _as_config_error(where):
    """Turns yacs' and YAML's errors into a ConfigError naming ``where``."""
    try:
        yield
    except yaml.YAMLError as exc:  # its args start with None; str() has the message and line
        raise ConfigError(f'{_plain(str(exc))} (in {where})') from None
    except (KeyError, ValueError, AssertionError, TypeError, AttributeError) as exc:
        raise ConfigError(f'{_plain(str(exc.args[0] if exc.args else exc))} (in {where})') from None


# yacs' "Type mismatch (<class 'int'> vs. <class 'str'>) with values (6 vs. abc)
# for config key: alfo.num_parts"
_TYPE_MISMATCH = re.compile(r"Type mismatch \(<class '(\w+)'> vs\. <class '\w+'>\) with values "
                            r"\((.*) vs\. (.*)\) for config key: (\S+)", re.S)


_TYPE_NAMES = {'int': 'an integer', 'float': 'a number', 'bool': 'True or False',
               'str': 'a string', 'list': 'a list', 'tuple': 'a list'}


def _plain(message):
    """yacs' wording of an error, as a user of the command line reads it."""
    message = ' '.join(message.split())
    match = _TYPE_MISMATCH.search(message)
    if match:
        kind, default, value, key = match.groups()
        kind = _TYPE_NAMES.get(kind, f'a {kind}')
        return f'{key} must be {kind} like its default {default}, got {value!r}'
    # yacs says "Non-existent config key: a.b" for unknown keys
    unknown = _UNKNOWN_KEY.search(message)
    if unknown:
        near = nearest_keys(unknown.group(1), flatten(get_config()))
        return f'unknown config key: {unknown.group(1)}' + (
            f'; did you mean {" or ".join(near)}?' if near else '')
    return message


_UNKNOWN_KEY = re.compile(r'Non-existent (?:config )?key: (\S+)')


def nearest_keys(key, known, cutoff=0.7, most=3):
    """The known keys that an unknown dotted ``key`` most likely means: those
    whose last part is the most like ``key``'s (``difflib``'s ratio, at least
    ``cutoff``), the most like the whole ``key`` first, ``most`` at most
    (``train.max_epochs`` and ``max_epoch`` give ``['train.max_epoch']``)."""
    def likeness(a, b):
        return difflib.SequenceMatcher(None, a, b).ratio()
    leaf = key.rsplit('.', 1)[-1]
    scores = {k: likeness(leaf, k.rsplit('.', 1)[-1]) for k in known}
    best = max(scores.values(), default=0)
    if best < cutoff:
        return []
    return sorted((k for k, score in scores.items() if score == best),
                  key=lambda k: -likeness(key, k))[:most]


def flatten(node, prefix=''):
    """``{'a.b': value}`` of a nested config."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f'{prefix}{key}.'))
        else:
            flat[prefix + key] = value
    return flat


BASE_KEY = '_BASE_'


def merge_config_file(cfg, config_file, _chain=()):
    """Merges a yaml file into ``cfg``. A file may name another under
    ``_BASE_`` (relative to itself), merged first: the ablation configs state
    only what they change.

    Raises:
        ConfigError: the file is missing, unreadable, not a YAML mapping, holds
            an unknown key or a value of the wrong type, or includes itself.
    """
    path = os.path.abspath(config_file)
    if path in _chain:
        raise ConfigError(f'config file "{config_file}" includes itself through {BASE_KEY} '
                          f'({" -> ".join(_chain + (path,))})')
    where = f'"{config_file}"'
    if not os.path.exists(path):
        raise ConfigError(f'config file "{config_file}" does not exist')
    if not os.path.isfile(path):  # a folder, or a FIFO whose reading would wait forever
        raise ConfigError(f'config file "{config_file}" is not a regular file')
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f'config file "{config_file}" cannot be read ({exc})') from None
    with _as_config_error(where):
        content = yaml.load(text, Loader=ConfigLoader)
    if not isinstance(content, dict):
        raise ConfigError(f'config file "{config_file}" is not a YAML mapping of config keys '
                          f'(it holds {type(content).__name__})')
    with _as_config_error(where):
        other = CN(content)
    base = other.pop(BASE_KEY, None)
    if base:
        merge_config_file(cfg, os.path.join(os.path.dirname(path), str(base)), _chain + (path,))
    with _as_config_error(where):
        cfg.merge_from_other_cfg(_booleans_as_words(other))


MAX_DEPTH = 16  # nesting of a config file (the default tree has 3 levels)


class ConfigLoader(UniqueKeyLoader):
    """YAML's safe loader, stricter for config files: a key given twice in
    one mapping (a second ``train:`` section would silently replace the
    first; :class:`UniqueKeyLoader`), anchors and aliases, tags
    (``!!python/...``) and nesting deeper than :data:`MAX_DEPTH` are refused
    with an error naming the line."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, 'anchor', None):
            raise ConfigError(f'line {line}: YAML anchors and aliases (&{event.anchor}, '
                              f'*{event.anchor}) are not allowed in a config; write the '
                              'values out')
        self._depth = getattr(self, '_depth', 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError(f'line {line}: the YAML is nested more than {MAX_DEPTH} '
                                  'levels deep; a config has sections of keys')
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_undefined(self, node):
        tag = node.tag.replace('tag:yaml.org,2002:', '!!')
        raise ConfigError(f'line {node.start_mark.line + 1}: the YAML tag "{tag}" is not '
                          'allowed in a config (plain values only)')


ConfigLoader.add_constructor(None, ConfigLoader.construct_undefined)


# String keys whose YAML booleans name a value: torchreid configs say
# ``pretrained: True``, and YAML reads ``on`` / ``off`` as booleans.
BOOLEAN_WORDS = {
    'model.pretrained': {True: 'imagenet', False: ''},
    'train.amp': {False: 'off'},
    'train.channels_last': {True: 'on', False: 'off'},
}


def _booleans_as_words(other):
    """``other`` (a config node from a file) with the booleans of
    :data:`BOOLEAN_WORDS`' keys replaced by the words they stand for."""
    for key, words in BOOLEAN_WORDS.items():
        section, name = key.split('.')
        node = other.get(section)
        if isinstance(node, CN) and isinstance(node.get(name), bool) and node[name] in words:
            node[name] = words[node[name]]
    return other


def _floats_as_floats(cfg, opts):
    """``KEY VALUE`` pairs with integer literals given to float keys written
    as floats, since yacs refuses ``alfo.focal_gamma 0`` for a float default."""
    if len(opts) % 2:
        raise ConfigError(f'the override "{opts[-1]}" has no value: overrides come in KEY VALUE '
                          'pairs')
    out = list(opts)
    for i in range(0, len(opts), 2):
        node, *path = cfg, *opts[i].split('.')
        for part in path[:-1] if path else ():
            node = node.get(part) if isinstance(node, CN) else None
        default = node.get(path[-1]) if isinstance(node, CN) and path else None
        if isinstance(default, float) and str(opts[i + 1]).lstrip('-').isdigit():
            out[i + 1] = str(float(opts[i + 1]))
        elif opts[i] in BOOLEAN_WORDS and opts[i + 1] in ('True', 'False'):
            out[i + 1] = BOOLEAN_WORDS[opts[i]].get(opts[i + 1] == 'True', opts[i + 1])
    return out


# -- the declared schema of allowed values -----------------------------------

def one_of(*allowed):
    return lambda v: v in allowed, f'one of {list(allowed)}'


def at_least(low):
    return lambda v: v >= low, f'>= {low}'


def above(low):
    return lambda v: v > low, f'> {low}'


def between(low, high):
    return lambda v: low <= v <= high, f'in [{low}, {high}]'


def all_items(check):
    test, expected = check
    return lambda v: all(test(x) for x in v), f'a list of values {expected}'


def non_empty(check):
    """``check`` of a list, which must also hold at least one value."""
    test, expected = check
    return lambda v: len(v) > 0 and test(v), f'a non-empty {expected[2:]}'


def numbers(count, check):
    """A list of ``count`` numbers (not strings, lists or booleans) meeting ``check``."""
    test, expected = check
    return (lambda v: len(v) == count and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and test(x) for x in v),
        f'a list of {count} numbers {expected}')


DATASET_NAME = (lambda v: isinstance(v, str) and bool(v), 'that are dataset names')

# key -> (test, what is expected); every key whose value is constrained is here.
SCHEMA = {
    'data.type': one_of('image'),
    'data.workers': at_least(0),
    'data.height': at_least(16),
    'data.width': at_least(16),
    'data.k_tfm': at_least(1),
    'data.split_id': at_least(0),
    'data.transforms': all_items(one_of(*TRANSFORMS)),
    'data.erase_probability': between(0, 1),
    'data.sources': non_empty(all_items(DATASET_NAME)),
    'data.targets': non_empty(all_items(DATASET_NAME)),
    'data.norm_mean': numbers(3, (math.isfinite, 'that are finite')),
    'data.norm_std': numbers(3, (lambda v: 0 < v < math.inf, 'that are > 0 and finite')),
    'sampler.train_sampler': one_of(*SAMPLERS),
    'sampler.train_sampler_t': one_of(*SAMPLERS),
    'sampler.num_instances': at_least(1),
    'sampler.num_cams': at_least(1),
    'sampler.num_datasets': at_least(1),
    'train.optim': one_of(*OPTIMIZERS),
    'train.lr': above(0),
    'train.weight_decay': at_least(0),
    'train.max_epoch': at_least(1),
    'train.start_epoch': at_least(0),
    'train.batch_size': at_least(1),
    'train.fixbase_epoch': at_least(0),
    'train.base_lr_mult': above(0),
    'train.lr_scheduler': one_of(*SCHEDULERS),
    'train.stepsize': non_empty(all_items(at_least(1))),
    'train.gamma': above(0),
    'train.warmup_epochs': at_least(0),
    'train.warmup_factor': (lambda v: 0 < v <= 1, 'in (0, 1]'),
    'train.print_freq': at_least(1),
    'train.amp': one_of(*AMP_MODES),
    'train.channels_last': one_of(*CHANNELS_LAST_MODES),
    'sgd.momentum': between(0, 1),
    'sgd.dampening': between(0, 1),
    'rmsprop.alpha': between(0, 1),
    'adam.beta1': between(0, 1),
    'adam.beta2': between(0, 1),
    'loss.name': one_of(*LOSSES),
    'loss.triplet.margin': at_least(0),
    'loss.triplet.weight_t': at_least(0),
    'loss.triplet.weight_x': at_least(0),
    'loss.center.weight': at_least(0),
    'loss.center.lr': above(0),
    'test.batch_size': at_least(1),
    'test.dist_metric': one_of('euclidean', 'cosine'),
    'test.ranks': all_items(between(1, 50)),
    'test.eval_freq': at_least(-1),
    'test.start_eval': at_least(0),
    'test.visrank_topk': at_least(1),
    'test.evaluator': one_of(*EVALUATORS),
    'test.attr_rerank_weight': at_least(0),
    'alfo.last_stride': one_of(1, 2),
    'alfo.num_parts': at_least(1),
    'alfo.stripe_height': at_least(0),
    'alfo.stripe_stride': at_least(0),
    'alfo.vote': one_of(*VOTE_MODES),
    'alfo.attr_pred': one_of(*ATTR_PRED_MODES),
    'alfo.feature': one_of(*FEATURE_MODES),
    'alfo.neck': one_of(*NECKS),
    'alfo.focal_alpha': between(0, 1),
    'alfo.focal_gamma': at_least(0),
    'alfo.id_weight': at_least(0),
    'alfo.attr_weight': at_least(0),
    'alfo.attr_reduction': one_of(*ATTR_REDUCTIONS),
}


def lookup(cfg, key):
    """The value of a dotted ``key`` of ``cfg``."""
    node = cfg
    for part in key.split('.'):
        node = node[part]
    return node


def check_config(cfg):
    """Rejects values outside :data:`SCHEMA` and combinations that cannot
    work, naming the key and what was expected.

    Raises:
        ConfigError.
    """
    for key, (test, expected) in SCHEMA.items():
        value = lookup(cfg, key)
        try:
            valid = test(value)
        except TypeError:  # a string, list or None where numbers were expected
            valid = False
        if not valid:
            raise ConfigError(f'{key} must be {expected}, got {value!r}')
    models = compat.model_factory()
    if cfg.model.name not in models:
        raise ConfigError(f'model.name {cfg.model.name!r} is not a torchreid or ALFO model; '
                          f'known: {sorted(models)}')
    a = cfg.alfo
    if not (a.global_branch or a.local_branch):
        raise ConfigError('alfo.global_branch and alfo.local_branch are both False: '
                          'at least one branch must be on')
    if cfg.loss.name == 'triplet' and cfg.loss.triplet.weight_t + cfg.loss.triplet.weight_x == 0:
        raise ConfigError('loss.triplet.weight_t and loss.triplet.weight_x are both 0: '
                          'nothing to train')
    if cfg.loss.name == 'triplet' and not cfg.test.evaluate and \
            cfg.sampler.train_sampler != 'RandomIdentitySampler':
        raise ConfigError(
            f'loss.name triplet needs identities with several images in every batch: set '
            f'sampler.train_sampler RandomIdentitySampler (got {cfg.sampler.train_sampler!r}; '
            f'sampler.num_instances images per identity)')
    if cfg.loss.center.weight and cfg.loss.name != 'triplet':
        raise ConfigError(f'loss.center.weight {cfg.loss.center.weight} needs loss.name triplet: '
                          'the center loss reads the feature the triplet loss reads (before '
                          'the neck), as in BoT')
    if a.neck != 'none' and not is_alfo(cfg):
        raise ConfigError(f'alfo.neck {a.neck} is for ALFO models; model.name {cfg.model.name} '
                          'would ignore it: for the strong baseline use model.name '
                          'resnet50_bnneck (always with a BNNeck), or leave alfo.neck none')
    if a.neck != 'none' and not a.global_branch:
        raise ConfigError(f'alfo.neck {a.neck} needs alfo.global_branch True: the neck sits '
                          'between the global pool and the identity classifier')
    if cfg.test.visrank and not cfg.test.evaluate:
        raise ConfigError('test.visrank True needs test.evaluate True: ranked lists are drawn '
                          'when evaluating trained weights (model.load_weights), as in torchreid')
    if cfg.sampler.train_sampler == 'RandomIdentitySampler' and \
            cfg.train.batch_size % cfg.sampler.num_instances:
        raise ConfigError(
            f'train.batch_size {cfg.train.batch_size} is not a multiple of '
            f'sampler.num_instances {cfg.sampler.num_instances} (RandomIdentitySampler takes '
            f'that many images of each identity)')
    rerank = cfg.test.attr_rerank_weight
    if rerank and not (is_alfo(cfg) and a.local_branch):
        raise ConfigError(f'test.attr_rerank_weight {rerank} needs predicted attributes: '
                          'model.name alfo or alfo_duke with alfo.local_branch True')
    check_device(cfg)
    check_precision(cfg)
    check_processes(cfg, distributed.environment_world_size())
    check_custom_data(cfg.data)


CUSTOM_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')


def check_custom_data(data):
    """Refuses a ``data.custom`` section that cannot describe a dataset (the
    files themselves are checked when the dataset is built)."""
    custom = data.custom
    if not custom.name:
        given = [k for k in ('manifest', 'schema', 'identity_attributes') if custom[k]]
        if given:
            raise ConfigError(f'data.custom.{given[0]} is set but data.custom.name is empty: '
                              'name the dataset, and use that name in data.sources/targets')
        return
    if not CUSTOM_NAME.fullmatch(custom.name):
        raise ConfigError(f'data.custom.name must be letters, digits, "_", "." or "-", '
                          f'got {custom.name!r}')
    if not custom.manifest:
        raise ConfigError(f'data.custom.name {custom.name!r} needs data.custom.manifest, '
                          'the CSV of its images')
    if custom.identity_attributes and not custom.schema:
        raise ConfigError('data.custom.identity_attributes needs data.custom.schema, the '
                          'attributes its columns name')
    if custom.name not in list(data.sources) + list(data.targets):
        raise ConfigError(f'data.custom.name {custom.name!r} is in neither data.sources '
                          f'{list(data.sources)} nor data.targets {list(data.targets)}')


def check_device(cfg):
    """Refuses ``use_gpu True`` where torch sees no CUDA device (left out, it
    is ``torch.cuda.is_available()``: a run on a CPU-only machine takes the CPU path)."""
    if cfg.use_gpu and not torch.cuda.is_available():
        raise ConfigError('use_gpu True needs a CUDA device and torch sees none '
                          '(torch.cuda.is_available() is False): set use_gpu False, or leave '
                          'it out (it defaults to whether a GPU is visible)')


def check_precision(cfg):
    """Refuses a ``train.amp`` the run cannot use."""
    amp = cfg.train.amp
    if amp == 'fp16' and not (cfg.use_gpu and torch.cuda.is_available()):
        raise ConfigError(
            'train.amp fp16 needs CUDA (use_gpu True on a machine with a GPU): its gradient '
            'scaling is for GPUs; on the CPU use train.amp bf16')
    if amp != 'off' and not is_alfo(cfg):
        raise ConfigError(
            f'train.amp {amp} is for ALFO models, whose engine computes the loss in fp32; '
            f'torchreid\'s engine trains {cfg.model.name} in fp32: set train.amp off')


def check_processes(cfg, world_size):
    """Refuses what ``world_size`` processes (torchrun) cannot share: each
    takes ``train.batch_size / world_size`` images of every global batch."""
    if world_size == 1 or cfg.test.evaluate:
        return
    batch, k, sampler = cfg.train.batch_size, cfg.sampler.num_instances, cfg.sampler.train_sampler
    if batch % world_size:
        raise ConfigError(
            f'train.batch_size {batch} is not divisible by the {world_size} processes '
            f'(WORLD_SIZE): train.batch_size is the global batch, each process takes an '
            f'equal share')
    if sampler not in DISTRIBUTED_SAMPLERS:
        raise ConfigError(
            f'sampler.train_sampler {sampler} has no form for several processes; use one of '
            f'{list(DISTRIBUTED_SAMPLERS)} under torchrun')
    if sampler == 'RandomIdentitySampler' and (batch // world_size) % k:
        raise ConfigError(
            f'sampler.num_instances {k} does not divide each process\'s share of '
            f'train.batch_size ({batch} / {world_size} processes = {batch // world_size} '
            f'images): every process must hold whole identities')
    if cfg.loss.center.weight:
        raise ConfigError(
            f'loss.center.weight {cfg.loss.center.weight} trains in one process only: the '
            f'centers are not synchronised across the {world_size} processes (WORLD_SIZE); '
            'set loss.center.weight 0 under torchrun')
    if cfg.train.sync_bn and not cfg.use_gpu:
        raise ConfigError('train.sync_bn needs CUDA (use_gpu True): torch\'s SyncBatchNorm '
                          'synchronises GPU batches only')


def imagedata_kwargs(cfg):
    """Arguments of ``torchreid.data.ImageDataManager``."""
    kwargs = {
        'root': cfg.data.root,
        'sources': cfg.data.sources,
        'targets': cfg.data.targets,
        'height': cfg.data.height,
        'width': cfg.data.width,
        'transforms': cfg.data.transforms,
        'k_tfm': cfg.data.k_tfm,
        'norm_mean': cfg.data.norm_mean,
        'norm_std': cfg.data.norm_std,
        'split_id': cfg.data.split_id,
        'combineall': cfg.data.combineall,
        'load_train_targets': cfg.data.load_train_targets,
        'batch_size_train': cfg.train.batch_size,
        'batch_size_test': cfg.test.batch_size,
        'workers': cfg.data.workers,
        'num_instances': cfg.sampler.num_instances,
        'num_cams': cfg.sampler.num_cams,
        'num_datasets': cfg.sampler.num_datasets,
        'train_sampler': cfg.sampler.train_sampler,
        'train_sampler_t': cfg.sampler.train_sampler_t,
        'cuhk03_labeled': cfg.cuhk03.labeled_images,
        'cuhk03_classic_split': cfg.cuhk03.classic_split,
        'market1501_500k': cfg.market1501.use_500k_distractors,
    }
    # torchreid 1.4.0 takes use_gpu; its later master takes device.
    params = inspect.signature(torchreid.data.ImageDataManager).parameters
    if 'device' in params:
        kwargs['device'] = 'cuda' if cfg.use_gpu else 'cpu'
    else:
        kwargs['use_gpu'] = cfg.use_gpu
    return kwargs


def optimizer_kwargs(cfg):
    """Arguments of ``torchreid.optim.build_optimizer``."""
    return {
        'optim': cfg.train.optim,
        'lr': cfg.train.lr,
        'weight_decay': cfg.train.weight_decay,
        'momentum': cfg.sgd.momentum,
        'sgd_dampening': cfg.sgd.dampening,
        'sgd_nesterov': cfg.sgd.nesterov,
        'rmsprop_alpha': cfg.rmsprop.alpha,
        'adam_beta1': cfg.adam.beta1,
        'adam_beta2': cfg.adam.beta2,
        'staged_lr': cfg.train.staged_lr,
        'new_layers': cfg.train.new_layers,
        'base_lr_mult': cfg.train.base_lr_mult,
    }


def lr_scheduler_kwargs(cfg):
    """Arguments of ``torchreid.optim.build_lr_scheduler``."""
    stepsize = cfg.train.stepsize
    if cfg.train.lr_scheduler == 'single_step' and isinstance(stepsize, (list, tuple)):
        stepsize = stepsize[0]
    return {
        'lr_scheduler': cfg.train.lr_scheduler,
        'stepsize': stepsize,
        'gamma': cfg.train.gamma,
        'max_epoch': cfg.train.max_epoch,
    }


def scheduler_kwargs(cfg):
    """Arguments of :func:`alfo_torchreid.engine.schedule.build_scheduler`:
    :func:`lr_scheduler_kwargs` and the warm-up."""
    return dict(lr_scheduler_kwargs(cfg), warmup_epochs=cfg.train.warmup_epochs,
                warmup_factor=cfg.train.warmup_factor)


# ``Engine.run``'s arguments and the config keys that give them
RUN_KEYS = {
    'save_dir': 'data.save_dir',
    'max_epoch': 'train.max_epoch',
    'fixbase_epoch': 'train.fixbase_epoch',
    'open_layers': 'train.open_layers',
    'start_eval': 'test.start_eval',
    'eval_freq': 'test.eval_freq',
    'print_freq': 'train.print_freq',
    'dist_metric': 'test.dist_metric',
    'normalize_feature': 'test.normalize_feature',
    'visrank': 'test.visrank',
    'visrank_topk': 'test.visrank_topk',
    'use_metric_cuhk03': 'cuhk03.use_metric_cuhk03',
    'ranks': 'test.ranks',
    'rerank': 'test.rerank',
}


def engine_run_kwargs(cfg):
    """Arguments of ``Engine.run`` (:data:`RUN_KEYS`)."""
    return {name: lookup(cfg, key) for name, key in RUN_KEYS.items()}


def is_alfo(cfg):
    """Whether ``model.name`` is one of ALFO's (``alfo`` and its variants)."""
    return cfg.model.name.startswith('alfo')


def alfo_model_kwargs(cfg):
    """Keyword arguments of the ALFO constructor (beyond num_classes and schema)."""
    a = cfg.alfo
    return {
        'last_stride': a.last_stride,
        'num_parts': a.num_parts,
        'stripe_height': a.stripe_height or None,
        'stripe_stride': a.stripe_stride or None,
        'global_branch': a.global_branch,
        'local_branch': a.local_branch,
        'attr_pred': a.attr_pred,
        'feature': a.feature,
        'neck': a.neck,
    }


# The config keys a checkpoint's description holds (alfo_torchreid.utils.description):
# what the network is and what input it reads; ALFO's constructor keys for ALFO models.
DESCRIBED_KEYS = ('model.name', 'data.height', 'data.width', 'data.norm_mean', 'data.norm_std')
ALFO_DESCRIBED_KEYS = tuple(f'alfo.{name}' for name in (
    'last_stride', 'num_parts', 'stripe_height', 'stripe_stride', 'global_branch',
    'local_branch', 'attr_pred', 'feature', 'neck'))


def described_settings(cfg, keys=None):
    """``{config key: value}`` of ``keys`` that ``cfg`` has (default: those a
    description of ``cfg``'s model holds). Only described keys are taken: a
    checkpoint whose description names another (``data.save_dir``, say) gets
    it neither compared nor adopted."""
    keys = keys or DESCRIBED_KEYS + (ALFO_DESCRIBED_KEYS if is_alfo(cfg) else ())
    return {key: lookup(cfg, key) for key in keys if _describable(key) and _has(cfg, key)}


def described_only(settings):
    """The entries of a checkpoint description's ``settings`` that are
    described keys: the ones a tool adopts."""
    return {key: value for key, value in settings.items() if _describable(key)}


def _describable(key):
    return key in DESCRIBED_KEYS + ALFO_DESCRIBED_KEYS


def _has(cfg, key):
    try:
        lookup(cfg, key)
    except KeyError:
        return False
    return True


def alfo_settings(model_kwargs):
    """The ``alfo.*`` config keys of ALFO constructor arguments (the inverse of
    :func:`alfo_model_kwargs`: None stripe sizes are the config's 0)."""
    return {f'alfo.{name}': (0 if value is None and name.startswith('stripe') else value)
            for name, value in model_kwargs.items()}


def adopt_settings(cfg, settings):
    """Sets the ``{config key: value}`` of ``settings`` in ``cfg`` (left
    defrosted) and checks the result (:func:`check_config`)."""
    cfg.defrost()
    for key, value in settings.items():
        *path, name = key.split('.')
        node = lookup(cfg, '.'.join(path)) if path else cfg
        node[name] = list(value) if isinstance(value, tuple) else value
    check_config(cfg)


def alfo_loss_kwargs(cfg):
    """Keyword arguments of the ALFO loss (focal, vote, weights, and with
    ``loss.name triplet`` the triplet term: docs/method.md, "Loss")."""
    a = cfg.alfo
    kwargs = {
        'vote_mode': a.vote,
        'focal': a.focal,
        'alpha': a.focal_alpha,
        'gamma': a.focal_gamma,
        'id_weight': a.id_weight,
        'attr_weight': a.attr_weight,
        'attr_reduction': a.attr_reduction,
        'label_smooth': cfg.loss.softmax.label_smooth,
    }
    if cfg.loss.name == 'triplet':
        kwargs.update(id_weight=a.id_weight * cfg.loss.triplet.weight_x,
                      triplet_weight=cfg.loss.triplet.weight_t,
                      margin=cfg.loss.triplet.margin)
    return kwargs
