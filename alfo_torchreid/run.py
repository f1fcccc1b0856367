"""One training/evaluation run, wired from a config (behind ``tools/main.py``).

The run folder (``data.save_dir``) receives what a user and
``tools/compare.py`` need: ``config.yaml`` (the merged config), ``train.log``,
TensorBoard events, ``model/`` checkpoints, ``history.jsonl`` (per-epoch
losses and times) and ``metrics.json`` (Rank-k, mAP, the CMC curve, attribute
metrics, parameters and GFLOPs). An evaluation-only run
(``test.evaluate True``) writes the same files into
``<save_dir>/eval-<weights file name>/`` and never touches what training wrote;
a folder that holds a finished evaluation refuses another, as a training
folder does.

Everything that can be refused (config, data, weights, the folder's state) is
checked before the first file of the run is written: bad input leaves an
earlier run's folder exactly as it was.

Under torchrun (docs/distributed.md) every process runs :func:`main`: each
joins the process group, loads its share of every global batch and trains a
``DistributedDataParallel`` model; the main process (rank 0) alone holds the
folder's lock, prints the log and writes the run's files. A job that torchrun
restarts (``--max-restarts``) continues from ``model/latest.pth.tar``.
"""
import contextlib
import datetime
import io
import json
import os
import os.path as osp
import sys
import time

import torch
import torch.nn as nn
import torchreid

import alfo_torchreid  # noqa: F401  (registers datasets and models into torchreid)
from alfo_torchreid import config
from alfo_torchreid.data import samplers
from alfo_torchreid.data.datasets import attribute_files
from alfo_torchreid.data.manifest import register_manifest_dataset
from alfo_torchreid.engine import precision, schedule
from alfo_torchreid.engine.center import CenterTerm
from alfo_torchreid.engine.engine import (BaselineEngine, BaselineTripletEngine,
                                          ImageFocalVoteEngine, unwrap)
from alfo_torchreid.utils import checkpoints, compat, description, distributed, weights
from alfo_torchreid.utils.atomic import write_file
from alfo_torchreid.utils.errors import (CheckpointError, ConfigError, DatasetError,
                                         RunFolderError)
from alfo_torchreid.utils.run_folder import (RunFolder, read_history, restore_history,
                                              resumed_history)

METRICS = 'metrics.json'
# the subfolders a run writes into: checkpoints, test.visrank's ranked lists
RUN_SUBFOLDERS = ('model', 'visrank_*')


def command_line_overrides(args):
    """torchreid's ``--root/-s/-t/--transforms`` flags as ``KEY VALUE`` pairs."""
    opts = []
    for flag, key in (('root', 'data.root'), ('sources', 'data.sources'),
                      ('targets', 'data.targets'), ('transforms', 'data.transforms')):
        value = getattr(args, flag, None)
        if value:
            opts += [key, value if isinstance(value, str) else str(list(value))]
    return opts


def main(config_file='', opts=(), verbose=False, quiet=False):
    """Runs what the config says.

    What is printed also goes to the run's log (``train.log``, ``test.log``).
    The config and torchreid's data tables (transforms, datasets, summary) go
    to the log alone unless ``verbose``; with ``quiet`` the console gets only
    the run's headlines (resumed, nothing to train) and its last line,
    :func:`summary_line`, which every run that tests ends with.

    Returns:
        The engine (its ``results`` hold the metrics), or None when a resumed
        run had nothing left to train (nothing is written then).
    """
    cfg = config.load_config(config_file, opts)
    adopted = adopt_checkpoint_description(cfg)
    if cfg.test.evaluate:
        cfg.defrost()
        cfg.data.save_dir = evaluation_folder(cfg)
    with distributed.process_group(cfg.use_gpu), owned_folder(cfg.data.save_dir) as folder, \
            printed_log() as log, log.log_only(quiet):
        if adopted:
            print(adopted)
        return _run(cfg, log, folder, verbose)


def adopt_checkpoint_description(cfg):
    """Reads the description of the ``model.load_weights`` checkpoint
    (:mod:`alfo_torchreid.utils.description`) against the config's settings.
    An evaluation (``test.evaluate``) takes the checkpoint's values where they
    differ; training from the weights with other settings is refused. A
    checkpoint without a description leaves the config as it is.

    Returns:
        The line to log when ``cfg`` took the checkpoint's values, else ''.

    Raises:
        ConfigError: training with settings the checkpoint's model lacks.
    """
    path = cfg.model.load_weights
    if not path:
        return ''
    described = description.of_checkpoint(
        checkpoints.load_checkpoint(path, cfg.model.trust_checkpoint), path)
    differing = described and description.differences(
        described, config.described_settings(cfg, described['settings']))
    if not differing:
        return ''
    if not cfg.test.evaluate:
        raise ConfigError(
            f'model.load_weights "{path}" was trained with other settings than the config\'s: '
            f'{description.format_differences(differing)}; set them as the checkpoint has '
            f'them, or start from its backbone alone with model.pretrained "{path}"')
    config.adopt_settings(cfg, {key: saved for key, saved, _ in differing})
    cfg.freeze()
    return (f'Evaluating "{path}" with the settings it was trained with, which its checkpoint '
            f'holds: {description.format_differences(differing)}')


@contextlib.contextmanager
def owned_folder(path):
    """The run folder (:class:`RunFolder`, whose lock an existing run folder
    gives at once) for the ``with`` block, on the main process (None on the
    others); under torchrun the others wait until it holds it."""
    with RunFolder(path) if distributed.is_main_process() else contextlib.nullcontext() \
            as folder:
        distributed.barrier()
        yield folder


@contextlib.contextmanager
def printed_log():
    """``sys.stdout`` as a :class:`Tee` for the ``with`` block. Under torchrun
    the processes other than the main one print and log nothing (their errors
    still reach stderr)."""
    console = sys.stdout
    quiet = not distributed.is_main_process()
    with contextlib.ExitStack() as stack:
        log = Tee(stack.enter_context(open(os.devnull, 'w')) if quiet else console)
        if quiet:
            log.open(os.devnull)
        sys.stdout = log
        try:
            yield log
        finally:
            sys.stdout = console
            log.close()


def evaluation_folder(cfg):
    """``<save_dir>/eval-<name of the weights evaluated>``."""
    weights_name = cfg.model.load_weights or cfg.model.pretrained or 'random-init'
    return osp.join(cfg.data.save_dir, f'eval-{osp.basename(osp.normpath(weights_name))}')


def refuse_finished_evaluation(folder):
    """Raises RunFolderError when the evaluation folder ``folder`` holds a
    finished evaluation (its ``metrics.json``), which a new one would replace,
    as a training run refuses a folder that holds a run."""
    if osp.isfile(osp.join(folder, METRICS)):
        raise RunFolderError(
            f'evaluation folder "{folder}" already holds an evaluation of these weights '
            f'({METRICS}): give this evaluation another data.save_dir (it writes into '
            '<data.save_dir>/eval-<weights file>), or remove that folder to evaluate again')


class Tee:
    """Writes to the console and to the run's log file. Until :meth:`open` the
    log part is kept in memory, so a run refused for bad input writes no log.
    (torchreid's ``Logger`` truncates the log, which a resumed run must not
    do, and closes the console on exit.)"""

    def __init__(self, console):
        self.console = console
        self.file = io.StringIO()
        self.muted = False  # inside log_only: the log file alone

    @contextlib.contextmanager
    def log_only(self, on=True):
        """With ``on``, what is printed in the ``with`` block goes to the log
        file alone (:meth:`headline` still reaches the console)."""
        before, self.muted = self.muted, self.muted or on
        try:
            yield
        finally:
            self.muted = before

    def headline(self, line):
        """Prints ``line`` to the console and the log, even inside :meth:`log_only`."""
        self.console.write(line + '\n')
        self.file.write(line + '\n')

    def open(self, path):
        """From now on the log goes to ``path`` (appended), the text so far first.
        The file is line-buffered: each line reaches it whole when printed, so a
        run killed (SIGKILL, SIGTERM) keeps the log of what it did."""
        buffered = self.file.getvalue()
        self.file = open(path, 'a', buffering=1)
        self.file.write(buffered)

    def write(self, text):
        if not self.muted:
            self.console.write(text)
        self.file.write(text)

    def flush(self):
        self.console.flush()
        self.file.flush()

    def isatty(self):
        return False

    def close(self):
        self.file.close()


def _run(cfg, log, folder, verbose=False):
    started = time.monotonic()
    if cfg.test.evaluate:
        refuse_finished_evaluation(cfg.data.save_dir)
    elif cfg.train.start_epoch:
        # refused here, not in check_config: config.yaml files of earlier versions
        # hold a resumed run's start epoch, and the tools still read them
        raise ConfigError(
            f'train.start_epoch {cfg.train.start_epoch}: a run starts at epoch 0, or where the '
            'checkpoint it resumes ended; to continue a run, resume it with train.resume True '
            '(its model/latest.pth.tar) or model.resume <checkpoint>, and set train.start_epoch 0')
    if distributed.is_initialized():
        print(distributed.job_line(cfg.train.batch_size))
    with log.log_only(not verbose):
        print(f'Config:\n{cfg}\n')
        seed_everything(cfg.train.seed + distributed.rank(), cfg.train.deterministic,
                        cfg.use_gpu)
        datamanager = build_datamanager(cfg)
    print(data_line(cfg, datamanager))
    model = build_model(cfg, datamanager)
    trained_epoch = load_trained_weights(cfg, model, datamanager.num_train_pids)
    resolve_new_layers(cfg, model)
    model = place_on_device(cfg, model)
    # the unwrapped model: torchreid names staged_lr's layers past DataParallel only
    optimizer = torchreid.optim.build_optimizer(unwrap(model), **config.optimizer_kwargs(cfg))
    scheduler = schedule.build_scheduler(optimizer, **config.scheduler_kwargs(cfg))
    mixed = precision.MixedPrecision(cfg.train.amp, cfg.use_gpu)
    center = build_center_term(cfg, unwrap(model), datamanager.num_train_pids)
    final_test_only, start_epoch, resumed = False, 0, None
    if not cfg.test.evaluate:
        start_epoch, resumed_from, resumed = resume(cfg, model, datamanager.num_train_pids,
                                                    optimizer, scheduler, mixed, center)
        if start_epoch >= cfg.train.max_epoch:
            if start_epoch > cfg.train.max_epoch or \
                    osp.isfile(osp.join(cfg.data.save_dir, METRICS)):
                log.headline(f'Nothing to train: the run in "{cfg.data.save_dir}" is at epoch '
                             f'{start_epoch} and train.max_epoch is {cfg.train.max_epoch}; no '
                             'file was changed (raise train.max_epoch to train on, or evaluate '
                             'it with test.evaluate True)')
                return None
            log.headline(f'The run in "{cfg.data.save_dir}" was stopped in its final test: '
                         f'testing its epoch-{start_epoch} weights now')
            final_test_only = True
        elif resumed_from:
            log.headline(f'Resumed from "{resumed_from}": continuing at epoch {start_epoch + 1} '
                         f'of {cfg.train.max_epoch}')
    history = None
    if distributed.is_main_process() and resumed is not None:
        # read before the folder is claimed: a damaged history is refused unchanged
        history = resumed_history(cfg.data.save_dir, start_epoch, resumed.get('history'))

    # from here on the run writes into its folder (the main process does)
    if distributed.is_main_process():
        folder.claim(RUN_SUBFOLDERS)
        restore_history(cfg.data.save_dir, history)
        log.open(osp.join(cfg.data.save_dir, 'test.log' if cfg.test.evaluate else 'train.log'))
        if not final_test_only:
            write_file(osp.join(cfg.data.save_dir, 'config.yaml'), cfg.dump().encode())
    engine = build_engine(cfg, datamanager, model, optimizer, scheduler, mixed, center)
    if cfg.test.evaluate or final_test_only:
        # results, TensorBoard and (after torchreid's final test, when its loop
        # has no epoch left to train) the final snapshot name the epoch tested
        engine.epoch = max((trained_epoch if cfg.test.evaluate else start_epoch) - 1, 0)
    engine.run(**config.engine_run_kwargs(cfg), start_epoch=start_epoch,
               test_only=cfg.test.evaluate)
    if distributed.is_main_process():
        metrics = save_metrics(cfg, engine,
                               trained_epoch if cfg.test.evaluate else cfg.train.max_epoch)
        log.headline(summary_line(metrics, time.monotonic() - started, cfg.data.save_dir))
    return engine


def data_line(cfg, datamanager):
    """One line in place of torchreid's dataset tables (which go to the log):
    ``'Data: market1501_attr, 751 identities, 12,936 training images; testing on
    market1501_attr (config and dataset tables in the log; --verbose prints them)'``."""
    train = datamanager.train_loader.dataset
    return (f'Data: {", ".join(cfg.data.sources)}, {datamanager.num_train_pids:,} identities, '
            f'{len(train):,} training images; testing on {", ".join(cfg.data.targets)} '
            '(config and dataset tables in the log; --verbose prints them)')


def summary_line(metrics, seconds, folder):
    """The last line of a run, from :func:`save_metrics`' summary:
    ``'Done: market1501_attr Rank-1 16.7%, mAP 13.3%, mA 53.1%; 1 epoch, 0:06:19;
    "log/toy/alfo"'`` (mA for targets with attributes; ``seconds``: the run's
    wall time)."""
    figures = []
    for target, result in metrics['results'].items():
        shown = [f'Rank-1 {100 * result["rank1"]:.1f}%', f'mAP {100 * result["mAP"]:.1f}%']
        if 'attributes' in result:
            shown.append(f'mA {100 * result["attributes"]["mA"]:.1f}%')
        figures.append(f'{target} {", ".join(shown)}')
    epochs = metrics['epochs']
    return (f'Done: {"; ".join(figures)}; {epochs} epoch{"s" * (epochs != 1)}, '
            f'{datetime.timedelta(seconds=round(seconds))}; "{folder}"')


def seed_everything(seed, deterministic=False, use_gpu=False):
    """Seeds every generator; ``deterministic`` asks torch for deterministic
    kernels, else a GPU run lets cuDNN pick the fastest convolution algorithms
    (``cudnn.benchmark``, as torchreid's ``scripts/main.py`` does)."""
    torchreid.utils.set_random_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif use_gpu:
        torch.backends.cudnn.benchmark = True


def build_datamanager(cfg):
    """``torchreid.data.ImageDataManager`` after checking that every dataset folder exists
    (torchreid would otherwise try to download a missing one, or fail obscurely).
    Under torchrun its training loader is replaced by this process's
    (:func:`alfo_torchreid.data.samplers.process_train_loader`)."""
    if cfg.data.custom.name:
        c = cfg.data.custom
        register_manifest_dataset(c.name, c.manifest, c.schema, c.identity_attributes)
    for name in dict.fromkeys(list(cfg.data.sources) + list(cfg.data.targets)):
        check_dataset_folder(cfg.data.root, name)
    with attribute_files(**cfg.alfo.attr_file):
        datamanager = torchreid.data.ImageDataManager(**config.imagedata_kwargs(cfg))
    set_erase_probability(datamanager, cfg.data.erase_probability)
    if distributed.is_initialized():
        datamanager.train_loader = samplers.process_train_loader(
            datamanager.train_loader, cfg.sampler.train_sampler, cfg.train.batch_size,
            cfg.sampler.num_instances, distributed.rank(), distributed.world_size(),
            cfg.train.seed)
    if not cfg.test.evaluate:
        check_batches(cfg, datamanager.train_loader)
    return datamanager


def set_erase_probability(datamanager, probability):
    """Gives the random erasing of ``datamanager``'s training transform (torchreid's
    ``random_erase``, built at probability 0.5 with no way to pass another) the
    probability ``probability``. The training sets hold that very transform."""
    for step in datamanager.transform_tr.transforms:
        if isinstance(step, torchreid.data.transforms.RandomErasing):
            step.probability = probability


def check_batches(cfg, train_loader):
    """Refuses a training set that gives no batch per epoch (torchreid drops
    the last, incomplete one): the run would test an untrained model."""
    if len(train_loader) == 0:
        raise ConfigError(
            f'train.batch_size {cfg.train.batch_size} is larger than what the training data '
            f'{list(cfg.data.sources)} gives ({len(train_loader.dataset)} images, '
            f'sampler.train_sampler {cfg.sampler.train_sampler}): an epoch would have no '
            'batch; lower train.batch_size')


def check_dataset_folder(root, name):
    """Raises DatasetError when ``root/<dataset_dir>`` of dataset ``name`` is missing."""
    registry = compat.image_datasets()
    if name not in registry:
        raise DatasetError(f'unknown dataset "{name}"; known: {sorted(registry)}')
    dataset_dir = getattr(registry[name], 'dataset_dir', None)
    folder = osp.join(osp.abspath(osp.expanduser(root)), dataset_dir or '')
    if dataset_dir and not osp.isdir(folder):
        raise DatasetError(
            f'dataset folder "{folder}" for {name} does not exist: pass --root (data.root) '
            f'pointing at the folder that holds "{dataset_dir}" (python tools/download.py '
            '--layout prints the expected layout)')


def build_model(cfg, datamanager):
    """ALFO sized for the training data's attribute schema, or a torchreid
    model, with the ``model.pretrained`` weights."""
    num_classes = datamanager.num_train_pids
    if config.is_alfo(cfg):
        schema = getattr(datamanager.train_loader.dataset, 'schema', None)
        if not schema:
            raise DatasetError(
                f'model {cfg.model.name} needs attribute labels but the training data '
                f'{list(cfg.data.sources)} has none: use market1501_attr, dukemtmcreid_attr or '
                'a manifest with a schema (data.custom), listed first in data.sources')
        from alfo_torchreid.models import ALFO, overlapping_stripes

        # fail before training when the map is too short for the stripes
        overlapping_stripes(cfg.data.height // (16 * cfg.alfo.last_stride), cfg.alfo.num_parts,
                            cfg.alfo.stripe_height or None, cfg.alfo.stripe_stride or None)
        model = ALFO(num_classes, schema=schema, loss=cfg.loss.name, pretrained=False,
                     **config.alfo_model_kwargs(cfg))
    else:
        model = torchreid.models.build_model(cfg.model.name, num_classes, loss=cfg.loss.name,
                                             pretrained=False, use_gpu=cfg.use_gpu)
    if cfg.model.pretrained and cfg.model.load_weights:
        print(f'model.pretrained "{cfg.model.pretrained}" is not loaded: model.load_weights '
              f'"{cfg.model.load_weights}" gives the weights')
    elif cfg.model.pretrained:
        loaded, skipped = weights.load_weights(model, cfg.model.pretrained,
                                               trust=cfg.model.trust_checkpoint)
        print(f'Loaded {len(loaded)} pretrained tensors from "{cfg.model.pretrained}"; '
              f'skipped {len(skipped)}: {", ".join(skipped) or "none"}')
    return model


def load_trained_weights(cfg, model, num_classes):
    """Loads ``model.load_weights`` (a checkpoint of this package or torchreid)
    into ``model`` after checking its signature.

    Returns:
        The checkpoint's epoch (0 when it names none, or no file is given).
    """
    if not cfg.model.load_weights:
        return 0
    checkpoint = checkpoints.load_checkpoint(cfg.model.load_weights, cfg.model.trust_checkpoint)
    checkpoints.check_signature(checkpoint, cfg.model.load_weights, num_classes,
                                getattr(model, 'schema', None))
    loaded, skipped = checkpoints.load_matching_weights(
        model, checkpoints.state_dict_of(checkpoint))
    # the identity classifier alone may stay new: the test does not use it, and
    # fine-tuning from a torchreid checkpoint of other identities trains a new one
    unloaded = [k for k in model.state_dict()
                if k not in loaded and not k.startswith('classifier.')]
    if unloaded:
        raise CheckpointError(
            f'checkpoint "{cfg.model.load_weights}" leaves {len(unloaded)} of the '
            f'{cfg.model.name} model\'s tensors unloaded ({", ".join(unloaded[:6])}'
            f'{", ..." if len(unloaded) > 6 else ""}): it holds another model\'s weights; '
            'give a checkpoint of this model (model.name, alfo.* as trained)')
    print(f'Loaded weights from "{cfg.model.load_weights}" ({len(loaded)} tensors, '
          f'{len(skipped)} skipped)')
    epoch = checkpoint.get('epoch') if isinstance(checkpoint, dict) else None
    return int(epoch) if isinstance(epoch, int) else 0


def new_layers(model):
    """The layers of ``model`` that pretrained weights do not give: the
    identity classifier, a BNNeck and, for ALFO, the stripes' attribute heads."""
    return [name for name in ('classifier', 'neck', 'attribute_heads')
            if getattr(model, name, None) is not None]


def resolve_new_layers(cfg, model):
    """Fills ``train.new_layers`` / ``train.open_layers`` left empty with
    :func:`new_layers`, so ``staged_lr`` and ``fixbase_epoch`` treat ALFO's
    attribute heads as new (torchreid's default names the classifier alone)."""
    cfg.defrost()
    for key in ('new_layers', 'open_layers'):
        if not cfg.train[key]:
            cfg.train[key] = new_layers(model)
    cfg.freeze()


def place_on_device(cfg, model):
    """The model on the GPU with ``use_gpu`` (under torchrun: this process's
    GPU), in channels-last memory format with ``train.channels_last``. Under
    torchrun, wrapped in ``DistributedDataParallel``; otherwise, with several
    GPUs visible, in ``nn.DataParallel`` as torchreid's ``scripts/main.py`` does."""
    if cfg.use_gpu:
        model = model.cuda()
    if precision.uses_channels_last(cfg.train.channels_last, cfg.use_gpu):
        model = model.to(memory_format=torch.channels_last)
    if distributed.is_initialized():
        return distributed.wrap(model, cfg.use_gpu, sync_bn=cfg.train.sync_bn,
                                find_unused_parameters=cfg.train.fixbase_epoch > 0)
    if cfg.use_gpu and torch.cuda.device_count() > 1:
        print(f'Using nn.DataParallel over {torch.cuda.device_count()} GPUs')
        model = nn.DataParallel(model)
    return model


def build_center_term(cfg, model, num_classes):
    """The run's :class:`~alfo_torchreid.engine.center.CenterTerm` with
    ``loss.center.weight`` above 0 (else None), in the space of the feature
    the triplet loss reads: ALFO's training ``features`` (``retrieval_dim``),
    a torchreid model's ``feature_dim``."""
    if not cfg.loss.center.weight or cfg.test.evaluate:
        return None
    dim = getattr(model, 'retrieval_dim', None) or model.feature_dim
    return CenterTerm(num_classes, dim, cfg.loss.center.weight, cfg.loss.center.lr,
                      use_gpu=cfg.use_gpu)


def resume(cfg, model, num_classes, optimizer, scheduler, mixed=None, center=None):
    """Restores the run to continue, if any.

    ``model.resume`` names a checkpoint; ``train.resume`` continues the run
    folder's ``model/latest.pth.tar``, as does a job that torchrun restarted,
    ``model.resume`` or not (its command line is the first attempt's: its
    ``model.resume`` is where that attempt started, ``latest.pth.tar`` where it
    stopped). Without either, a folder that already
    holds a run is refused, so a new run never mixes its files with an older one's.
    Under torchrun every process loads the same checkpoint. Nothing is
    written: the caller restores the folder's history (:func:`resumed_history`,
    :func:`restore_history`) once the run goes ahead.

    Args:
        mixed: the run's :class:`alfo_torchreid.engine.precision.MixedPrecision`
            (its gradient scaler's state is restored).
        center: the run's center term (:func:`build_center_term`; its centers
            and optimizer are restored), or None.

    Returns:
        (the epoch to start from, the path resumed from or '', the loaded
        checkpoint or None).

    Raises:
        RunFolderError, CheckpointError.
    """
    path = cfg.model.resume
    latest = osp.join(cfg.data.save_dir, 'model', checkpoints.LATEST)
    if osp.isfile(latest) and (distributed.restarted() or (cfg.train.resume and not path)):
        path = latest
    if not path:
        previous = [f for f in ('model/' + checkpoints.LATEST, METRICS, 'history.jsonl')
                    if osp.exists(osp.join(cfg.data.save_dir, f))]
        if previous:
            raise RunFolderError(
                f'run folder "{cfg.data.save_dir}" already holds a run ({", ".join(previous)}): '
                'continue it with train.resume True, or give this run another data.save_dir')
        return 0, '', None
    start_epoch, checkpoint = checkpoints.load_training_state(
        path, unwrap(model), num_classes, optimizer, scheduler, trust=cfg.model.trust_checkpoint,
        precision=mixed, center=center)
    return start_epoch, path, checkpoint


def build_engine(cfg, datamanager, model, optimizer, scheduler, mixed=None, center=None):
    """ALFO's engine, or torchreid's softmax / triplet engine for a baseline.

    Args:
        mixed: :class:`alfo_torchreid.engine.precision.MixedPrecision` of ALFO's
            steps (``train.amp``; the baselines train in fp32).
        center: the run's center term (:func:`build_center_term`), or None.
    """
    common = dict(scheduler=scheduler, use_gpu=cfg.use_gpu, center=center,
                  label_smooth=cfg.loss.softmax.label_smooth, evaluator=cfg.test.evaluator,
                  snapshot_optimizer=cfg.train.save_optimizer_in_snapshots,
                  channels_last=precision.uses_channels_last(cfg.train.channels_last,
                                                             cfg.use_gpu))
    triplet = cfg.loss.triplet
    schema = getattr(unwrap(model), 'schema', None)
    common['description'] = description.describe(
        config.described_settings(cfg), datamanager.num_train_pids, schema,
        cfg.test.normalize_feature or cfg.test.dist_metric == 'cosine')
    if config.is_alfo(cfg):
        kwargs = config.alfo_loss_kwargs(cfg)
        kwargs.pop('label_smooth')
        return ImageFocalVoteEngine(datamanager, model, optimizer, precision=mixed, **common,
                                    **kwargs, attr_rerank_weight=cfg.test.attr_rerank_weight)
    if cfg.loss.name == 'triplet':
        return BaselineTripletEngine(datamanager, model, optimizer, margin=triplet.margin,
                                     weight_t=triplet.weight_t, weight_x=triplet.weight_x,
                                     **common)
    return BaselineEngine(datamanager, model, optimizer, **common)


def save_metrics(cfg, engine, epochs):
    """Writes ``metrics.json``: the last test's results and the model's cost.

    Args:
        epochs: the epochs the evaluated weights were trained for.
    """
    model = engine.network
    # GFLOPs of inference (what torchreid counts: the layers run in eval mode);
    # parameters of the whole trained model, heads and classifiers included
    _, flops = torchreid.utils.compute_model_complexity(
        model, (1, 3, cfg.data.height, cfg.data.width), verbose=False, only_conv_linear=False)
    num_params = sum(p.numel() for p in model.parameters())
    times = [e['epoch_time'] for e in read_history(cfg.data.save_dir) if 'epoch_time' in e]
    summary = {
        'name': osp.basename(osp.normpath(cfg.data.save_dir)),
        'model': cfg.model.name,
        'sources': list(cfg.data.sources),
        'input_size': [cfg.data.height, cfg.data.width],
        'epochs': epochs,
        'weights': cfg.model.load_weights or None,
        'params': int(num_params),
        'gflops': flops / 1e9,
        'train_time_per_epoch': sum(times) / len(times) if times else None,
        # each test's epoch: that of the weights, also where the engine's epoch
        # counter cannot say it (0 for pretrained or zoo weights)
        'results': {target: dict(result, epoch=epochs)
                    for target, result in engine.results.items()},
        'written': time.strftime('%Y-%m-%d %H:%M:%S'),
    }
    path = osp.join(cfg.data.save_dir, METRICS)
    write_file(path, json.dumps(summary, indent=1).encode())
    print(f'Metrics written to "{path}"')
    return summary
