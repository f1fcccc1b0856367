"""The yacs configuration: torchreid's default tree plus an ``alfo`` section.

torchreid keeps its default config in ``scripts/default_config.py`` of its
repository, which the PyPI package does not ship; :func:`get_default_config`
rebuilds that tree (same keys and defaults, image re-ID only) and
:func:`add_alfo_config` adds what ALFO needs. The ``*_kwargs`` functions turn
a config into constructor arguments, as in torchreid's scripts.
"""
import inspect
import os

import torch
import torchreid
from yacs.config import CfgNode as CN

from alfo_torchreid.errors import ConfigError

VOTE_MODES = ('majority', 'min', 'mean')
ATTR_PRED_MODES = ('voted', 'mean')
FEATURE_MODES = ('global', 'local', 'global+local')
EVALUATORS = ('alfo', 'torchreid')


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
    cfg.data.workers = 4
    cfg.data.split_id = 0
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.combineall = False
    cfg.data.transforms = ['random_flip']
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
    cfg.train.open_layers = ['classifier']
    cfg.train.staged_lr = False
    cfg.train.new_layers = ['classifier']
    cfg.train.base_lr_mult = 0.1
    cfg.train.lr_scheduler = 'single_step'
    cfg.train.stepsize = [20]
    cfg.train.gamma = 0.1
    cfg.train.print_freq = 20
    cfg.train.seed = 1
    cfg.train.resume = False  # resume from <save_dir>/model/latest.pth.tar when it exists
    cfg.train.deterministic = False  # torch.use_deterministic_algorithms, for exact resume

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
    cfg.alfo.stripe_height = 0  # 0: derived from the map height (METHOD.md)
    cfg.alfo.stripe_stride = 0  # 0: derived from the map height
    cfg.alfo.global_branch = True
    cfg.alfo.local_branch = True
    cfg.alfo.vote = 'majority'
    cfg.alfo.attr_pred = 'voted'
    cfg.alfo.feature = 'global'
    cfg.alfo.focal = True  # False: plain cross entropy (the "no focal loss" ablation)
    cfg.alfo.focal_alpha = 0.5
    cfg.alfo.focal_gamma = 2.0
    cfg.alfo.id_weight = 1.0  # lambda of L_ID
    cfg.alfo.attr_weight = 1.0  # weight of the mean voted attribute loss
    # Annotation files other than <root>/<dataset_dir>/*_attribute.mat ('' = default).
    cfg.alfo.attr_file = CN()
    cfg.alfo.attr_file.market1501_attr = ''
    cfg.alfo.attr_file.dukemtmcreid_attr = ''
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
        ConfigError: an unknown key, a value of the wrong type, or a value out of range.
    """
    cfg = get_config()
    try:
        if config_file:
            merge_config_file(cfg, config_file)
        cfg.merge_from_list(_floats_as_floats(cfg, list(opts)))
    except FileNotFoundError:
        raise ConfigError(f'config file "{config_file}" does not exist') from None
    except (KeyError, ValueError, AssertionError, TypeError) as exc:
        message = exc.args[0] if exc.args else repr(exc)
        # yacs says "Non-existent config key: a.b" for unknown keys
        message = str(message).replace('Non-existent config key', 'unknown config key')
        message = message.replace('Non-existent key', 'unknown config key')
        raise ConfigError(f'{message} (in "{config_file or "command line"}")') from None
    check_config(cfg)
    return cfg


BASE_KEY = '_BASE_'


def merge_config_file(cfg, config_file):
    """Merges a yaml file into ``cfg``. A file may name another under
    ``_BASE_`` (relative to itself), merged first: the ablation configs state
    only what they change."""
    with open(config_file) as f:
        other = CN.load_cfg(f)
    base = other.pop(BASE_KEY, None)
    if base:
        merge_config_file(cfg, os.path.join(os.path.dirname(os.path.abspath(config_file)), base))
    cfg.merge_from_other_cfg(_pretrained_as_str(other))


def _pretrained_as_str(other):
    """torchreid configs say ``pretrained: True``; here the key also takes names
    and paths, so booleans become ``'imagenet'`` / ``''``."""
    model = other.get('model')
    if isinstance(model, CN) and isinstance(model.get('pretrained'), bool):
        model.pretrained = 'imagenet' if model.pretrained else ''
    return other


def _floats_as_floats(cfg, opts):
    """``KEY VALUE`` pairs with integer literals given to float keys written
    as floats, since yacs refuses ``alfo.focal_gamma 0`` for a float default."""
    if len(opts) % 2:
        raise ConfigError(f'overrides must come in KEY VALUE pairs, got {opts}')
    out = list(opts)
    for i in range(0, len(opts), 2):
        node, *path = cfg, *opts[i].split('.')
        for part in path[:-1] if path else ():
            node = node.get(part) if isinstance(node, CN) else None
        default = node.get(path[-1]) if isinstance(node, CN) and path else None
        if isinstance(default, float) and str(opts[i + 1]).lstrip('-').isdigit():
            out[i + 1] = str(float(opts[i + 1]))
        elif opts[i] == 'model.pretrained' and opts[i + 1] in ('True', 'False'):
            out[i + 1] = 'imagenet' if opts[i + 1] == 'True' else ''
    return out


def check_config(cfg):
    """Rejects values out of range, naming the key and what was expected."""
    a = cfg.alfo
    _choice('alfo.vote', a.vote, VOTE_MODES)
    _choice('alfo.attr_pred', a.attr_pred, ATTR_PRED_MODES)
    _choice('alfo.feature', a.feature, FEATURE_MODES)
    _choice('test.evaluator', cfg.test.evaluator, EVALUATORS)
    _choice('alfo.last_stride', a.last_stride, (1, 2))
    if a.num_parts < 1:
        raise ConfigError(f'alfo.num_parts must be >= 1, got {a.num_parts}')
    if not 0.0 <= a.focal_alpha <= 1.0:
        raise ConfigError(f'alfo.focal_alpha must be in [0, 1], got {a.focal_alpha}')
    if a.focal_gamma < 0:
        raise ConfigError(f'alfo.focal_gamma must be >= 0, got {a.focal_gamma}')
    for key in ('id_weight', 'attr_weight'):
        if a[key] < 0:
            raise ConfigError(f'alfo.{key} must be >= 0, got {a[key]}')
    if not (a.global_branch or a.local_branch):
        raise ConfigError('alfo.global_branch and alfo.local_branch are both False: '
                          'at least one branch must be on')
    for key in ('max_epoch', 'batch_size'):
        if cfg.train[key] < 1:
            raise ConfigError(f'train.{key} must be >= 1, got {cfg.train[key]}')
    if cfg.train.lr <= 0:
        raise ConfigError(f'train.lr must be > 0, got {cfg.train.lr}')
    rerank = cfg.test.attr_rerank_weight
    if rerank < 0:
        raise ConfigError(f'test.attr_rerank_weight must be >= 0, got {rerank}')
    if rerank and not (cfg.model.name.startswith('alfo') and a.local_branch):
        raise ConfigError(f'test.attr_rerank_weight {rerank} needs predicted attributes: '
                          'model.name alfo or alfo_duke with alfo.local_branch True')


def _choice(key, value, allowed):
    if value not in allowed:
        raise ConfigError(f'{key} must be one of {list(allowed)}, got {value!r}')


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


def engine_run_kwargs(cfg):
    """Arguments of ``Engine.run``."""
    return {
        'save_dir': cfg.data.save_dir,
        'max_epoch': cfg.train.max_epoch,
        'start_epoch': cfg.train.start_epoch,
        'fixbase_epoch': cfg.train.fixbase_epoch,
        'open_layers': cfg.train.open_layers,
        'start_eval': cfg.test.start_eval,
        'eval_freq': cfg.test.eval_freq,
        'test_only': cfg.test.evaluate,
        'print_freq': cfg.train.print_freq,
        'dist_metric': cfg.test.dist_metric,
        'normalize_feature': cfg.test.normalize_feature,
        'visrank': cfg.test.visrank,
        'visrank_topk': cfg.test.visrank_topk,
        'use_metric_cuhk03': cfg.cuhk03.use_metric_cuhk03,
        'ranks': cfg.test.ranks,
        'rerank': cfg.test.rerank,
    }


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
    }


def alfo_loss_kwargs(cfg):
    """Keyword arguments of the ALFO loss (focal, vote and weights)."""
    a = cfg.alfo
    return {
        'vote_mode': a.vote,
        'focal': a.focal,
        'alpha': a.focal_alpha,
        'gamma': a.focal_gamma,
        'id_weight': a.id_weight,
        'attr_weight': a.attr_weight,
        'label_smooth': cfg.loss.softmax.label_smooth,
    }
