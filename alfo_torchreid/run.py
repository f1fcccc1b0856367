"""One training/evaluation run, wired from a config (behind ``tools/main.py``).

The run folder (``data.save_dir``) receives what a user and
``tools/compare.py`` need: ``config.yaml`` (the merged config), ``train.log``
or ``test.log``, TensorBoard events, ``model/`` checkpoints,
``history.jsonl`` (per-epoch losses and times) and ``metrics.json``
(Rank-k, mAP, the CMC curve, attribute metrics, parameters and GFLOPs).
"""
import json
import os
import os.path as osp
import sys
import time

import torch
import torchreid

import alfo_torchreid  # noqa: F401  (registers datasets and models into torchreid)
from alfo_torchreid import checkpoints, config, weights
from alfo_torchreid.atomic import PartialFile
from alfo_torchreid.datasets import attribute_files
from alfo_torchreid.engine import HISTORY, BaselineEngine, ImageFocalVoteEngine
from alfo_torchreid.errors import DatasetError

METRICS = 'metrics.json'


def command_line_overrides(args):
    """torchreid's ``--root/-s/-t/--transforms`` flags as ``KEY VALUE`` pairs."""
    opts = []
    for flag, key in (('root', 'data.root'), ('sources', 'data.sources'),
                      ('targets', 'data.targets'), ('transforms', 'data.transforms')):
        value = getattr(args, flag, None)
        if value:
            opts += [key, value if isinstance(value, str) else str(list(value))]
    return opts


def main(config_file='', opts=()):
    """Runs what the config says; returns the engine (its ``results`` hold the metrics)."""
    cfg = config.load_config(config_file, opts)
    os.makedirs(cfg.data.save_dir, exist_ok=True)
    log_name = 'test.log' if cfg.test.evaluate else 'train.log'
    console = sys.stdout
    with open(osp.join(cfg.data.save_dir, log_name), 'a') as log:
        sys.stdout = Tee(console, log)
        try:
            return _run(cfg)
        finally:
            sys.stdout = console


class Tee:
    """Writes to the console and a log file. (torchreid's ``Logger`` truncates
    the log, which a resumed run must not do, and closes the console on exit.)"""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()


def _run(cfg):
    print(f'Config:\n{cfg}\n')
    with open(osp.join(cfg.data.save_dir, 'config.yaml'), 'w') as f:
        f.write(cfg.dump())
    seed_everything(cfg.train.seed, cfg.train.deterministic)

    datamanager = build_datamanager(cfg)
    model = build_model(cfg, datamanager)
    if cfg.use_gpu:
        model = model.cuda()
    optimizer = torchreid.optim.build_optimizer(model, **config.optimizer_kwargs(cfg))
    scheduler = torchreid.optim.build_lr_scheduler(optimizer, **config.lr_scheduler_kwargs(cfg))
    resume_path = resume_checkpoint(cfg)
    if resume_path:
        start_epoch, _ = checkpoints.load_training_state(
            resume_path, model, datamanager.num_train_pids, optimizer, scheduler,
            trust=cfg.model.trust_checkpoint)
        print(f'Resumed from "{resume_path}": continuing at epoch {start_epoch + 1}')
        cfg.defrost()
        cfg.train.start_epoch = start_epoch
    engine = build_engine(cfg, datamanager, model, optimizer, scheduler)
    engine.run(**config.engine_run_kwargs(cfg))
    save_metrics(cfg, engine, model)
    return engine


def seed_everything(seed, deterministic=False):
    torchreid.utils.set_random_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_datamanager(cfg):
    """``torchreid.data.ImageDataManager`` after checking that every dataset folder exists
    (torchreid would otherwise try to download a missing one, or fail obscurely)."""
    for name in dict.fromkeys(list(cfg.data.sources) + list(cfg.data.targets)):
        check_dataset_folder(cfg.data.root, name)
    with attribute_files(**cfg.alfo.attr_file):
        return torchreid.data.ImageDataManager(**config.imagedata_kwargs(cfg))


def check_dataset_folder(root, name):
    """Raises DatasetError when ``root/<dataset_dir>`` of dataset ``name`` is missing."""
    registry = vars(torchreid.data.datasets)['__image_datasets']
    if name not in registry:
        raise DatasetError(f'unknown dataset "{name}"; known: {sorted(registry)}')
    dataset_dir = getattr(registry[name], 'dataset_dir', None)
    folder = osp.join(osp.abspath(osp.expanduser(root)), dataset_dir or '')
    if dataset_dir and not osp.isdir(folder):
        raise DatasetError(
            f'dataset folder "{folder}" for {name} does not exist: pass --root (data.root) '
            f'pointing at the folder that holds "{dataset_dir}" (tools/download.py --layout '
            f'prints the expected layout)')


def is_alfo(cfg):
    return cfg.model.name.startswith('alfo')


def build_model(cfg, datamanager):
    """ALFO sized for the training data's attribute schema, or a torchreid model.

    Weights: ``model.pretrained`` first, then ``model.load_weights`` if given.
    """
    num_classes = datamanager.num_train_pids
    if is_alfo(cfg):
        schema = getattr(datamanager.train_loader.dataset, 'schema', None)
        if schema is None:
            raise DatasetError(
                f'model {cfg.model.name} needs attribute labels but the training data '
                f'{list(cfg.data.sources)} has none: use market1501_attr or dukemtmcreid_attr')
        from alfo_torchreid.models import ALFO, overlapping_stripes
        # fail before training when the map is too short for the stripes
        overlapping_stripes(cfg.data.height // (16 * cfg.alfo.last_stride), cfg.alfo.num_parts,
                            cfg.alfo.stripe_height or None, cfg.alfo.stripe_stride or None)
        model = ALFO(num_classes, schema=schema, pretrained=False,
                     **config.alfo_model_kwargs(cfg))
    else:
        model = torchreid.models.build_model(cfg.model.name, num_classes, loss=cfg.loss.name,
                                             pretrained=False, use_gpu=cfg.use_gpu)
    if cfg.model.pretrained:
        loaded, skipped = weights.load_weights(model, cfg.model.pretrained,
                                               trust=cfg.model.trust_checkpoint)
        print(f'Loaded {len(loaded)} pretrained tensors from "{cfg.model.pretrained}"; '
              f'skipped {len(skipped)}: {", ".join(skipped) or "none"}')
    if cfg.model.load_weights:
        checkpoint = checkpoints.load_checkpoint(cfg.model.load_weights,
                                                cfg.model.trust_checkpoint)
        checkpoints.check_signature(checkpoint, cfg.model.load_weights, num_classes,
                                    getattr(model, 'schema', None))
        loaded, skipped = checkpoints.load_matching_weights(
            model, checkpoints.state_dict_of(checkpoint))
        print(f'Loaded weights from "{cfg.model.load_weights}" ({len(loaded)} tensors, '
              f'{len(skipped)} skipped)')
    return model


def resume_checkpoint(cfg):
    """The checkpoint to resume from: ``model.resume``, or with ``train.resume``
    the run folder's ``model/latest.pth.tar`` when it exists."""
    if cfg.model.resume:
        return cfg.model.resume
    latest = osp.join(cfg.data.save_dir, 'model', checkpoints.LATEST)
    if cfg.train.resume and osp.isfile(latest):
        return latest
    return ''


def build_engine(cfg, datamanager, model, optimizer, scheduler):
    common = dict(scheduler=scheduler, use_gpu=cfg.use_gpu,
                  label_smooth=cfg.loss.softmax.label_smooth, evaluator=cfg.test.evaluator)
    if is_alfo(cfg):
        kwargs = config.alfo_loss_kwargs(cfg)
        kwargs.pop('label_smooth')
        return ImageFocalVoteEngine(datamanager, model, optimizer, **common, **kwargs,
                                    attr_rerank_weight=cfg.test.attr_rerank_weight)
    return BaselineEngine(datamanager, model, optimizer, **common)


def save_metrics(cfg, engine, model):
    """Writes ``metrics.json``: the last test's results and the model's cost."""
    # GFLOPs of inference (what torchreid counts: the layers run in eval mode);
    # parameters of the whole trained model, heads and classifiers included
    _, flops = torchreid.utils.compute_model_complexity(
        model, (1, 3, cfg.data.height, cfg.data.width), verbose=False, only_conv_linear=False)
    num_params = sum(p.numel() for p in model.parameters())
    epochs = read_history(cfg.data.save_dir)
    times = [e['epoch_time'] for e in epochs if 'epoch_time' in e]
    summary = {
        'name': osp.basename(osp.normpath(cfg.data.save_dir)),
        'model': cfg.model.name,
        'sources': list(cfg.data.sources),
        'input_size': [cfg.data.height, cfg.data.width],
        'epochs': cfg.train.max_epoch,
        'params': int(num_params),
        'gflops': flops / 1e9,
        'train_time_per_epoch': sum(times) / len(times) if times else None,
        'results': engine.results,
        'written': time.strftime('%Y-%m-%d %H:%M:%S'),
    }
    path = osp.join(cfg.data.save_dir, METRICS)
    with PartialFile(path) as partial:
        partial.file.write(json.dumps(summary, indent=1).encode())
        partial.sync()
        partial.replace()
    print(f'Metrics written to "{path}"')
    return summary


def read_history(save_dir):
    """The per-epoch records of ``history.jsonl`` (the last record of each epoch)."""
    path = osp.join(save_dir, HISTORY)
    if not osp.isfile(path):
        return []
    by_epoch = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            by_epoch[record['epoch']] = record
    return [by_epoch[k] for k in sorted(by_epoch)]
