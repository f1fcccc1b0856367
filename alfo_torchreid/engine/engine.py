"""Engines: torchreid's image engines with what long runs need, and ALFO's.

:class:`BaselineEngine` and :class:`BaselineTripletEngine` train any torchreid
model (the PCB and ResNet-50 baselines) exactly as torchreid's
``ImageSoftmaxEngine`` / ``ImageTripletEngine`` do. What they add is
:class:`ResumableEngineMixin`: checkpoints with RNG state written atomically
after every epoch (exact resume), never with non-finite weights; a per-epoch
history; a progress bar while features are extracted; the fast rank evaluator;
and the test results kept for ``tools/main.py`` to save.

:class:`ImageFocalVoteEngine` is ALFO's: its ``forward_backward`` adds the
voted focal attribute loss (and, with ``loss.name triplet``, torchreid's hard
triplet loss on ``ALFOOutputs.features``: the retrieval feature read before the
neck, i.e. with ``alfo.neck bnneck`` the global feature before the BNNeck,
whereas retrieval uses it after) to the identity loss, and its
evaluation adds the attribute metrics of each target's gallery. ``run()`` and
``test()`` are torchreid's.

Under torchrun (docs/distributed.md) the same engines train a
``DistributedDataParallel`` model: every process runs torchreid's loop on its
share of each global batch, the logged losses are averaged over the processes,
the main process (rank 0) alone writes TensorBoard, history and checkpoints,
and evaluation extracts features on every process and ranks them on rank 0.
"""
import json
import os
import os.path as osp
import sys
import time
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchreid
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from alfo_torchreid import config
from alfo_torchreid.data.attributes import UNKNOWN, convert_labels
from alfo_torchreid.engine.precision import MixedPrecision
from alfo_torchreid.evaluation.attribute_match import (attribute_disagreement, attribute_reranked,
                                                       named_labels, named_predictions)
from alfo_torchreid.evaluation.metrics import (attribute_metrics, evaluate_rank,
                                               format_attribute_table)
from alfo_torchreid.evaluation.rank_grid import TRUTH_LEGEND, draw_ranking
from alfo_torchreid.losses import ALFOLoss, attribute_logit_widths
from alfo_torchreid.models import model_name
from alfo_torchreid.utils import checkpoints, compat, description, distributed
from alfo_torchreid.utils.atomic import write_file
from alfo_torchreid.utils.errors import ConfigError, TrainingError
from alfo_torchreid.utils.run_folder import HISTORY


def unwrap(model):
    """The model inside a ``DataParallel`` / ``DistributedDataParallel`` wrapper
    (the model itself otherwise): where ALFO's own methods and attributes live."""
    return getattr(model, 'module', model)


class Extracted(NamedTuple):
    """What feature extraction gives for one split (query or gallery).

    features: ``[N, D]`` retrieval features (CPU). pids, camids: ``[N]`` int
    arrays. attributes: list of ``m`` tensors ``[N, c_j]`` of attribute class
    probabilities (ALFO with its local branch), else None.
    """
    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    attributes: Optional[list] = None

    @classmethod
    def concatenate(cls, parts):
        """One :class:`Extracted` of ``parts`` (batches, or processes' shares)
        in their order; None parts (empty shares) are skipped."""
        parts = [p for p in parts if p is not None]
        attributes = None
        if parts[0].attributes is not None:
            attributes = [torch.cat(columns) for columns in zip(*(p.attributes for p in parts))]
        return cls(torch.cat([p.features for p in parts]), np.concatenate([p.pids for p in parts]),
                   np.concatenate([p.camids for p in parts]), attributes)


class _NoWriter:
    """TensorBoard's writer on the processes other than the main one: writes nothing."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


class ResumableEngineMixin:
    """Crash-safe runs for a torchreid engine (put it before the engine class).

    Args (keyword, beyond the engine's own):
        evaluator: ``'alfo'`` (vectorised, torchreid's numbers) or ``'torchreid'``.
        snapshot_optimizer: whether the numbered snapshots ``model.pth.tar-N``
            also hold the optimizer and scheduler states. ``latest.pth.tar``
            always does (it is what a run resumes from); the snapshots are
            weights for evaluation and fine-tuning, 1/3 of the size without them.
        precision: :class:`alfo_torchreid.engine.precision.MixedPrecision` of the
            training steps (``train.amp``; fp32 when None). Its gradient
            scaler's state goes into ``latest.pth.tar``.
        channels_last: whether the batches this package's steps feed the model
            go in channels-last memory format (``train.channels_last``; the
            model was converted by the run): the test's extraction, ALFO's
            training step and the center-loss triplet step. torchreid's own
            steps (BaselineEngine's, BaselineTripletEngine's without a center
            loss) feed the batches as loaded.
        description: what every checkpoint says the model is
            (:mod:`alfo_torchreid.utils.description`; ``tools/main.py`` gives
            its config's). None: :meth:`default_description` at :meth:`run`.
        center: the run's :class:`alfo_torchreid.engine.center.CenterTerm`
            (``loss.center.weight``), or None. Its centers and optimizer go into
            ``latest.pth.tar``; the engines that train with it add it to their loss.
    """

    def __init__(self, *args, evaluator='alfo', snapshot_optimizer=False, precision=None,
                 channels_last=False, description=None, center=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.description = description
        self.center = center
        self.evaluator = evaluator
        self.snapshot_optimizer = snapshot_optimizer
        self.precision = precision or MixedPrecision()
        self.channels_last = channels_last
        self.save_dir = 'log'
        self.results = {}  # target name -> {'rank1', 'mAP', 'cmc', ...} of the last test
        self._epoch_sums = {}

    @property
    def network(self):
        """The model being trained, unwrapped from (Distributed)DataParallel."""
        return unwrap(self.model)

    def run(self, save_dir='log', start_epoch=0, test_only=False, **kwargs):
        """torchreid's ``Engine.run``; remembers ``save_dir`` for the per-epoch
        checkpoint. Only the main process opens TensorBoard's writer; a resumed
        run opens it with ``purge_step``, the first step it trains again
        (torchreid's step of a batch is ``epoch * batches per epoch + batch``),
        so that TensorBoard drops what the interrupted run logged from there on
        instead of showing those steps twice. An
        engine built from Python (no ``description``) describes its model
        with :meth:`default_description` and, where it can, writes
        ``<save_dir>/config.yaml`` as ``tools/main.py`` does (:meth:`_write_config`)."""
        self.save_dir = save_dir
        if self.description is None:
            self.description = self.default_description(kwargs)
            if self.description is not None and distributed.is_main_process():
                self._write_config(save_dir, dict(kwargs, test_only=test_only))
        if not distributed.is_main_process():
            self.writer = _NoWriter()
        elif start_epoch > 0 and not test_only and self.writer is None:
            self.writer = SummaryWriter(log_dir=save_dir,
                                        purge_step=start_epoch * len(self.train_loader))
        return super().run(save_dir=save_dir, start_epoch=start_epoch, test_only=test_only,
                           **kwargs)

    def default_description(self, run_kwargs):
        """Hook: the description of a model this engine was given without one
        (built from Python); None: the checkpoints carry none."""
        return None

    def _write_config(self, save_dir, run_kwargs):
        """``<save_dir>/config.yaml`` (unless there is one) for a run from
        Python: the defaults with the described settings, the data manager's
        datasets and batch size, and ``run_kwargs`` (``Engine.run``'s), so that
        the tools read the run as one of ``tools/main.py``."""
        path = osp.join(save_dir, 'config.yaml')
        if osp.exists(path):
            return
        dataset = self.datamanager.train_loader.dataset
        settings = {**self.description['settings'],
                    'use_gpu': bool(self.use_gpu),
                    'data.root': getattr(dataset, 'root', config.get_config().data.root),
                    'data.sources': list(self.datamanager.sources),
                    'data.targets': list(self.datamanager.targets),
                    'train.batch_size': self.datamanager.train_loader.batch_size,
                    'test.evaluate': bool(run_kwargs.get('test_only', False)),
                    'data.save_dir': save_dir}
        settings.update({key: run_kwargs[name] for name, key in config.RUN_KEYS.items()
                         if run_kwargs.get(name) is not None})
        cfg = config.get_config()
        config.adopt_settings(cfg, settings)
        os.makedirs(save_dir, exist_ok=True)
        write_file(path, cfg.dump().encode())

    # -- training ---------------------------------------------------------
    def train(self, **kwargs):
        """One epoch of torchreid's loop, then the resume checkpoint and history
        line (``lr``: the learning rate the epoch trained at, read before
        torchreid's loop steps the scheduler). A sampler with ``set_epoch``
        (torchrun's) is set to the epoch first."""
        self._epoch_sums = {}
        set_epoch = getattr(getattr(self.train_loader, 'sampler', None), 'set_epoch', None)
        if set_epoch is not None:
            set_epoch(self.epoch)
        start = time.time()
        lr = self.get_current_lr()
        super().train(**kwargs)
        record = {'epoch': self.epoch + 1, 'lr': lr, 'epoch_time': time.time() - start}
        record.update({k: v / self.num_batches for k, v in self._epoch_sums.items()})
        self.save_model(self.epoch, rank1=None, save_dir=self.save_dir, latest=True,
                        history=record)
        if distributed.is_main_process():
            self._append_history(record)

    def two_stepped_transfer_learning(self, epoch, fixbase_epoch, open_layers, model=None):
        """torchreid's, on the model inside a (Distributed)DataParallel wrapper,
        whose layers torchreid can name."""
        return super().two_stepped_transfer_learning(
            epoch, fixbase_epoch, open_layers, self.network if model is None else model)

    def forward_backward(self, data):
        summary = super().forward_backward(data)
        self._check_finite(summary)
        return self._accumulate(summary)

    def _in_memory_format(self, imgs):
        """``imgs`` in channels-last memory format when the run asks for it."""
        return imgs.contiguous(memory_format=torch.channels_last) if self.channels_last else imgs

    def _accumulate(self, summary):
        """Adds a step's logged values (under torchrun: their means over the
        processes, the global batch's values) to the epoch's sums."""
        summary = distributed.mean_over_ranks(summary)
        for key, value in summary.items():
            self._epoch_sums[key] = self._epoch_sums.get(key, 0.0) + float(value)
        return summary

    def _check_finite(self, parts):
        """Stops training when a loss part is NaN or infinite (nothing is saved)."""
        for name, value in parts.items():
            value = value.item() if torch.is_tensor(value) else float(value)
            if not np.isfinite(value):
                raise TrainingError(
                    f'loss part "{name}" is {value} at epoch {self.epoch + 1}, iteration '
                    f'{self.batch_idx + 1}: training stopped; the last good checkpoint in '
                    f'"{self.save_dir}" is kept (lower train.lr, or check the data)')

    def _append_history(self, record):
        """Appends one JSON line with a single write, flushed and fsynced, so a
        crash leaves at most a torn last line (which a resumed run drops)."""
        os.makedirs(self.save_dir, exist_ok=True)
        with open(osp.join(self.save_dir, HISTORY), 'a') as f:
            f.write(json.dumps(record) + '\n')
            f.flush()
            os.fsync(f.fileno())

    # -- checkpoints ------------------------------------------------------
    def save_model(self, epoch, rank1, save_dir, is_best=False, latest=False, history=None):
        """Writes ``<save_dir>/model/model.pth.tar-<epoch+1>`` (or, with
        ``latest``, the per-epoch ``latest.pth.tar``) atomically, with
        torchreid's keys plus the model's signature and :attr:`description`;
        ``latest`` (and the snapshots with ``snapshot_optimizer``) also hold the optimizer,
        scheduler, gradient scaler, center loss and RNG states (under torchrun, ``rng`` is
        rank 0's and ``rng_ranks`` every process's) and ``history``, the
        epoch's line of ``history.jsonl`` (written after the checkpoint: a
        resumed run puts it back if a crash lost it). Non-finite weights are
        never written. Under torchrun only the main process writes; every
        process must call this."""
        whole = latest or self.snapshot_optimizer
        rng = distributed.gather_to_main(checkpoints.rng_state()) if whole else None
        name = checkpoints.LATEST if latest else f'model.pth.tar-{epoch + 1}'
        fpath = osp.join(save_dir, 'model', name)
        if not distributed.is_main_process():
            return fpath
        state = {
            'state_dict': self.network.state_dict(),
            'epoch': epoch + 1,
            'rank1': None if rank1 is None else float(rank1),
            'signature': checkpoints.model_signature(self.datamanager.num_train_pids,
                                                     getattr(self.network, 'schema', None)),
        }
        if self.description is not None:
            state[description.KEY] = self.description
        if whole:
            state.update({
                'optimizer': self.optimizer.state_dict(),
                'scheduler': None if self.scheduler is None else self.scheduler.state_dict(),
                'rng': rng[0],
            })
            if len(rng) > 1:
                state['rng_ranks'] = rng
            if self.precision.scaler is not None:
                state['grad_scaler'] = self.precision.state_dict()
            if self.center is not None:
                state['center_loss'] = self.center.state_dict()
        if history is not None:
            state['history'] = history
        checkpoints.save_training_state(state, fpath)
        if is_best:
            checkpoints.save_training_state(state, osp.join(save_dir, 'model',
                                                            'model-best.pth.tar'))
        return fpath

    # -- evaluation -------------------------------------------------------
    def test(self, **kwargs):
        """torchreid's ``Engine.test``. Under torchrun every process first takes
        rank 0's buffers (BatchNorm statistics), so that all evaluate the very
        weights rank 0 saves."""
        distributed.broadcast_buffers(self.network)
        return super().test(**kwargs)

    @torch.no_grad()
    def _evaluate(self, dataset_name='', query_loader=None, gallery_loader=None,
                  dist_metric='euclidean', normalize_feature=False, visrank=False,
                  visrank_topk=10, save_dir='', use_metric_cuhk03=False,
                  ranks=(1, 5, 10, 20), rerank=False):
        """torchreid's ``Engine._evaluate``, step for step (features, distances,
        optional re-ranking, CMC and mAP, optional ranked lists), with a progress
        bar during extraction, the configured evaluator, and the results kept in
        :attr:`results` (plus what :meth:`_after_ranking` adds).

        Under torchrun every process extracts its share of query and gallery;
        the main process ranks them all, and every process returns (and keeps in
        :attr:`results`) the main process's numbers.

        Returns:
            (Rank-1, mAP) as fractions, as torchreid's.
        """
        query = self.extract(query_loader, f'{dataset_name} query')
        gallery = self.extract(gallery_loader, f'{dataset_name} gallery')
        scores = None
        if distributed.is_main_process():
            scores = self._rank_and_report(dataset_name, query, gallery, dist_metric,
                                           normalize_feature, visrank, visrank_topk, save_dir,
                                           use_metric_cuhk03, ranks, rerank)
        if distributed.is_initialized():
            scores, self.results = distributed.broadcast_from_main((scores, self.results))
        return scores

    def _rank_and_report(self, dataset_name, query, gallery, dist_metric, normalize_feature,
                         visrank, visrank_topk, save_dir, use_metric_cuhk03, ranks, rerank):
        """Distances, CMC and mAP of the extracted ``query`` and ``gallery``,
        printed and kept; returns (Rank-1, mAP)."""
        qf, gf = query.features, gallery.features
        if normalize_feature:
            qf, gf = F.normalize(qf, p=2, dim=1), F.normalize(gf, p=2, dim=1)
        print(f'Computing distance matrix with metric={dist_metric} ...')
        distmat = torchreid.metrics.compute_distance_matrix(qf, gf, dist_metric).numpy()
        if rerank:
            print('Applying person re-ranking ...')
            distmat = torchreid.utils.re_ranking(
                distmat, torchreid.metrics.compute_distance_matrix(qf, qf, dist_metric).numpy(),
                torchreid.metrics.compute_distance_matrix(gf, gf, dist_metric).numpy())
        distmat = self.ranking_distances(distmat, query, gallery)
        print('Computing CMC and mAP ...')
        cmc, mAP = self._rank(distmat, query, gallery, use_metric_cuhk03)
        print('** Results **')
        print(f'mAP: {mAP:.1%}')
        print('CMC curve')
        for r in ranks:
            print(f'Rank-{r:<3}: {cmc[r - 1]:.1%}')
        self.results[dataset_name] = {'rank1': float(cmc[0]), 'mAP': float(mAP),
                                      'cmc': [float(c) for c in cmc], 'epoch': self.epoch + 1}
        self._after_ranking(dataset_name, query, gallery)
        if visrank:
            self._visualize(dataset_name, distmat, query, gallery,
                            osp.join(save_dir, 'visrank_' + dataset_name), visrank_topk)
        return cmc[0], mAP

    def extract(self, loader, what):
        """Features of every image of ``loader`` (in its order), with a
        progress bar on a terminal and one summary line for logs. Under
        torchrun each process extracts its share (:func:`distributed.shard`)
        and the main process gathers them.

        Returns:
            :class:`Extracted` (None on the processes other than the main one).
        """
        if distributed.is_initialized():
            loader = distributed.shard(loader)
        parts = []
        start = time.time()
        batches = tqdm(loader, desc=f'Extracting {what}', unit='batch', leave=False,
                       disable=not (sys.stderr.isatty() and distributed.is_main_process()))
        for data in batches:
            imgs, batch_pids, batch_camids = self.parse_data_for_eval(data)
            if self.use_gpu:
                imgs = imgs.cuda()
            batch_features, batch_extras = self.extract_batch(self._in_memory_format(imgs))
            parts.append(Extracted(batch_features.cpu(), np.asarray(batch_pids),
                                   np.asarray(batch_camids), batch_extras))
        extracted = Extracted.concatenate(parts) if parts else None
        if distributed.is_initialized():
            shares = distributed.gather_to_main(extracted)
            extracted = Extracted.concatenate(shares) if shares is not None else None
        if extracted is not None:
            n, d = extracted.features.shape
            seconds = time.time() - start
            print(f'Extracted {what}: {n}-by-{d} features in {seconds:.1f} s '
                  f'({n / max(seconds, 1e-9):.0f} images/s)')
        return extracted

    def extract_features(self, imgs):
        """torchreid's, past a ``DistributedDataParallel`` wrapper: each process
        extracts its own share, with no collective."""
        return (self.network if distributed.is_initialized() else self.model)(imgs)

    def extract_batch(self, imgs):
        """``[B, 3, H, W]`` -> (retrieval features ``[B, D]``, extras or None)."""
        return self.extract_features(imgs), None

    def _rank(self, distmat, query, gallery, use_metric_cuhk03):
        """CMC and mAP by the configured evaluator (same numbers either way)."""
        evaluate = evaluate_rank if self.evaluator == 'alfo' else torchreid.metrics.evaluate_rank
        return evaluate(distmat, query.pids, gallery.pids, query.camids, gallery.camids,
                        use_metric_cuhk03=use_metric_cuhk03)

    def ranking_distances(self, distmat, query, gallery):
        """Hook: the ``[Q, G]`` distances to rank (and draw with visrank), from
        torchreid's (ALFO: plus the attribute term of ``test.attr_rerank_weight``)."""
        return distmat

    def _after_ranking(self, dataset_name, query, gallery):
        """Hook for what a model adds to a target's results (ALFO: attributes)."""

    def _visualize(self, dataset_name, distmat, query, gallery, out_dir, topk):
        """torchreid's ranked-list images of every query."""
        torchreid.utils.visualize_ranked_results(
            distmat, self.datamanager.fetch_test_loaders(dataset_name),
            self.datamanager.data_type, width=self.datamanager.width,
            height=self.datamanager.height, save_dir=out_dir, topk=topk)


class BaselineEngine(ResumableEngineMixin, compat.ImageSoftmaxEngine):
    """torchreid's ``ImageSoftmaxEngine`` with resumable, crash-safe runs
    (:class:`ResumableEngineMixin`)."""


class BaselineTripletEngine(ResumableEngineMixin, compat.ImageTripletEngine):
    """torchreid's ``ImageTripletEngine`` (hard triplet + softmax) with
    resumable, crash-safe runs (:class:`ResumableEngineMixin`) and, with
    ``center``, BoT's center loss on the triplet loss's feature (logged as
    ``loss_c``, weighted)."""

    def forward_backward(self, data):
        """torchreid's step, plus the center term when there is one."""
        if self.center is None:
            return super().forward_backward(data)
        imgs, pids = self.parse_data_for_train(data)
        if self.use_gpu:
            imgs, pids = imgs.cuda(), pids.cuda()
        outputs, features = self.model(self._in_memory_format(imgs))
        parts = {'loss_c': self.center(features, pids)}
        if self.weight_t > 0:
            parts['loss_t'] = self.compute_loss(self.criterion_t, features, pids)
        if self.weight_x > 0:
            parts['loss_x'] = self.compute_loss(self.criterion_x, outputs, pids)
        self._check_finite(parts)
        loss = parts['loss_c'] + self.weight_t * parts.get('loss_t', 0) + \
            self.weight_x * parts.get('loss_x', 0)
        self.optimizer.zero_grad()
        self.center.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.center.optimizer.step()
        summary = {k: v.item() for k, v in parts.items()}
        if self.weight_x > 0:
            summary['acc'] = torchreid.metrics.accuracy(outputs, pids)[0].item()
        return self._accumulate(summary)


class ImageFocalVoteEngine(BaselineEngine):
    """ALFO's engine: identity loss + voted focal attribute loss (+ triplet loss)
    (+ center loss on the triplet loss's feature, with ``center``; logged as
    ``loss_center``, weighted, and included in ``loss``).

    Args (beyond :class:`BaselineEngine`'s):
        vote_mode, focal, alpha, gamma, id_weight, attr_weight, attr_reduction,
            triplet_weight, margin: see :class:`alfo_torchreid.losses.ALFOLoss`.
        attr_rerank_weight: above 0, the test ranks (and visrank draws) by
            re-ID distance plus this weight times the attribute term of
            :func:`alfo_torchreid.evaluation.attribute_match.attribute_reranked`, what
            ``tools/search.py --attr-weight`` does; 0 leaves torchreid's ranking.
        precision, channels_last, description: see :class:`ResumableEngineMixin`;
            the forward pass runs under ``precision``'s autocast, the loss in fp32.

    Every batch must carry ``attrs`` (the ``*_attr`` datasets add it). Under
    torchrun the vote is the global batch's (the ballots of all processes are
    summed, :func:`alfo_torchreid.losses.vote`), so every process records the
    same winners and holds the same tally.
    """

    def __init__(self, datamanager, model, optimizer, scheduler=None, use_gpu=True,
                 label_smooth=True, evaluator='alfo', snapshot_optimizer=False,
                 vote_mode='majority', focal=True, alpha=0.5, gamma=2.0, id_weight=1.0,
                 attr_weight=1.0, attr_reduction='sum', triplet_weight=0.0, margin=0.3,
                 attr_rerank_weight=0.0, precision=None, channels_last=False, description=None,
                 center=None):
        super().__init__(datamanager, model, optimizer, scheduler=scheduler, use_gpu=use_gpu,
                         label_smooth=label_smooth, evaluator=evaluator,
                         snapshot_optimizer=snapshot_optimizer, precision=precision,
                         channels_last=channels_last, description=description, center=center)
        if attr_rerank_weight and not self.network.local_branch:
            raise ConfigError('test.attr_rerank_weight needs attribute heads: this ALFO has '
                              'no local branch (alfo.local_branch False)')
        self.attr_rerank_weight = attr_rerank_weight
        self.schema = self.network.schema
        self.criterion = ALFOLoss(
            datamanager.num_train_pids, attribute_logit_widths(self.schema.num_classes),
            id_weight=id_weight, attr_weight=attr_weight, alpha=alpha, gamma=gamma,
            focal=focal, vote_mode=vote_mode, label_smooth=label_smooth,
            use_gpu=self.use_gpu, attr_reduction=attr_reduction,
            triplet_weight=triplet_weight, margin=margin,
            sum_over_ranks=distributed.sum_over_ranks if distributed.is_initialized() else None)

    def default_description(self, run_kwargs):
        """The description of :attr:`network` read from it and the data
        manager, for a run built from Python (``run_kwargs``: ``Engine.run``'s)."""
        network = self.network
        settings = {'model.name': model_name(network.schema),
                    **config.alfo_settings(network.settings()),
                    **compat.input_settings(self.datamanager)}
        normalize = bool(run_kwargs.get('normalize_feature')) or \
            run_kwargs.get('dist_metric') == 'cosine'
        return description.describe(settings, self.datamanager.num_train_pids, network.schema,
                                    normalize)

    def parse_data_for_train(self, data):
        if 'attrs' not in data:
            raise TrainingError(
                'training batches carry no "attrs": ALFO trains on an attribute dataset '
                '(e.g. market1501_attr or dukemtmcreid_attr, not market1501)')
        return data['img'], data['pid'], data['attrs']

    def forward_backward(self, data):
        imgs, pids, attrs = self.parse_data_for_train(data)
        if self.use_gpu:
            imgs, pids, attrs = imgs.cuda(), pids.cuda(), attrs.cuda()
        with self.precision.autocast():
            outputs = self.model(self._in_memory_format(imgs))
        out = self.criterion(outputs, pids, attrs)
        parts = {'loss': out.total, 'loss_id': out.id, 'loss_attr': out.attr,
                 'loss_triplet': out.triplet}
        optimizers = [self.optimizer]
        if self.center is not None:
            parts['loss_center'] = self.center(outputs.features, pids)
            parts['loss'] = out.total + parts['loss_center']
            optimizers.append(self.center.optimizer)
        parts = {k: v for k, v in parts.items() if v is not None}
        self._check_finite(parts)

        for optimizer in optimizers:
            optimizer.zero_grad()
        self.precision.backward_and_step(parts['loss'], *optimizers)

        summary = {k: v.item() for k, v in parts.items()}
        if out.id is not None:
            summary['acc'] = torchreid.metrics.accuracy(outputs.id_logits, pids)[0].item()
        if out.winners is not None:
            self.network.record_votes(out.winners)
            self._log_winners(out.winners)
        return self._accumulate(summary)

    def _log_winners(self, winners):
        if self.writer is None:
            return
        n_iter = self.epoch * self.num_batches + self.batch_idx
        for name, stripe in zip(self.schema.names, winners.tolist()):
            self.writer.add_scalar(f'Vote/{name}', stripe, n_iter)

    # -- evaluation -------------------------------------------------------
    def extract_batch(self, imgs):
        """Retrieval features ``[B, D]`` and, from the same backbone pass, the
        attribute probabilities (a list of ``m`` tensors ``[B, c_j]``, CPU)."""
        if not self.network.local_branch:
            return self.extract_features(imgs), None
        features, probs = self.network.features_and_attributes(imgs)
        return features, [p.cpu() for p in probs]

    def ranking_distances(self, distmat, query, gallery):
        """torchreid's distances plus, with ``attr_rerank_weight``, the attribute
        term of the query's and gallery's predicted attributes."""
        if not self.attr_rerank_weight:
            return distmat
        disagreement = attribute_disagreement(torch.cat(query.attributes, dim=1),
                                              torch.cat(gallery.attributes, dim=1), self.schema)
        return attribute_reranked(distmat, disagreement, self.attr_rerank_weight).numpy()

    def _visualize(self, dataset_name, distmat, query, gallery, out_dir, topk):
        """torchreid's ranked lists (the ``topk`` valid gallery images of each
        query, true matches framed green), each crop with a caption strip of
        its predicted attributes and, when the dataset has them, its true ones
        (disagreements in red): ``<out_dir>/<query image>.png``."""
        if gallery.attributes is None:
            return super()._visualize(dataset_name, distmat, query, gallery, out_dir, topk)
        query_items, gallery_items = self.datamanager.fetch_test_loaders(dataset_name)
        named_query = named_predictions(torch.cat(query.attributes, dim=1), self.schema)
        named_gallery = named_predictions(torch.cat(gallery.attributes, dim=1), self.schema)
        truths = self._gallery_truths(dataset_name, gallery_items)
        print(f'Drawing the top-{topk} ranked lists of {len(query_items)} queries in "{out_dir}"')
        for q, (path, pid, camid, _) in enumerate(query_items):
            # as torchreid: the query's own camera's images of its identity are left out
            valid = ~((gallery.pids == pid) & (gallery.camids == camid))
            order = np.argsort(distmat[q], kind='stable')
            ranked = order[valid[order]][:topk]
            name = osp.splitext(osp.basename(path))[0]
            draw_ranking(path, named_query[q],
                         [(gallery_items[g][0], distmat[q, g], named_gallery[g]) for g in ranked],
                         self.schema, osp.join(out_dir, f'{name}.png'),
                         title='' if truths is None else TRUTH_LEGEND,
                         truths=None if truths is None else [truths[g] for g in ranked])

    def _gallery_truths(self, dataset_name, gallery_items):
        """The named true labels of each gallery item
        (:func:`~alfo_torchreid.evaluation.attribute_match.named_labels`, in the
        model's schema; None for an image without any, such as Market's
        distractors), or None when the dataset has no attributes the model knows."""
        dataset = self.test_loader[dataset_name]['gallery'].dataset
        schema = getattr(dataset, 'schema', None)
        if not schema or any(n not in self.schema.names for n in schema.names):
            return None
        labels = convert_labels(np.stack([dataset.image_attrs[item[0]] for item in gallery_items]),
                                schema, self.schema)
        return [named if (row != UNKNOWN).any() else None
                for row, named in zip(labels, named_labels(labels, self.schema))]

    def _after_ranking(self, dataset_name, query, gallery):
        """Attribute metrics on the gallery images of real identities of the target."""
        if gallery.attributes is None:
            return
        dataset = self.test_loader[dataset_name]['gallery'].dataset
        schema = getattr(dataset, 'schema', None)
        if not schema:
            print(f'** No attribute evaluation on {dataset_name}: it has no attribute labels')
            return
        if any(n not in self.schema.names for n in schema.names):
            print(f'** No attribute evaluation on {dataset_name}: the model lacks its '
                  'attributes')
            return
        # test loaders keep the dataset's order
        target = torch.from_numpy(np.stack([dataset.image_attrs[item[0]]
                                            for item in dataset.data]))
        real = (target != -1).any(1)  # junk and distractor images carry no attributes
        if not real.any():
            print(f'** No attribute evaluation on {dataset_name}: its gallery has no labels')
            return
        # in the target's attribute order (a union schema may hold more attributes)
        probs = [gallery.attributes[self.schema.index(n)][real] for n in schema.names]
        metrics = attribute_metrics(None, target[real], schema, probs=probs)
        print(f'** Attribute results on {dataset_name} (gallery, {int(real.sum())} images) **')
        print(format_attribute_table(metrics))
        self.results[dataset_name]['attributes'] = metrics
        if self.writer is not None:
            self.writer.add_scalar(f'Test/{dataset_name}/attr_mA', metrics['mA'], self.epoch)
