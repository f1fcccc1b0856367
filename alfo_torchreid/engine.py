"""Engines: torchreid's ``ImageSoftmaxEngine`` with what long runs need, and ALFO's.

:class:`BaselineEngine` trains any torchreid softmax model (the PCB and
ResNet-50 baselines) exactly as torchreid's ``ImageSoftmaxEngine`` does, and
adds: atomic checkpoints with RNG state after every epoch (exact resume), a
per-epoch history, the fast rank evaluator, and the test results kept for
``tools/main.py`` to save.

:class:`ImageFocalVoteEngine` is ALFO's: its ``forward_backward`` adds the
voted focal attribute loss to the identity loss, and its ``test`` adds the
attribute metrics to torchreid's re-ID evaluation. ``run()`` is torchreid's.
"""
import contextlib
import json
import os
import os.path as osp
import time

import numpy as np
import torch
import torchreid

from alfo_torchreid import checkpoints, compat
from alfo_torchreid.attribute_match import attribute_disagreement, attribute_reranked
from alfo_torchreid.errors import ConfigError, TrainingError
from alfo_torchreid.losses import ALFOLoss, attribute_logit_widths
from alfo_torchreid.metrics import attribute_metrics, evaluate_rank, format_attribute_table

HISTORY = 'history.jsonl'


class BaselineEngine(compat.ImageSoftmaxEngine):
    """torchreid's softmax engine with resumable, crash-safe runs.

    Args (beyond ``ImageSoftmaxEngine``'s):
        evaluator: ``'alfo'`` (vectorised, same numbers) or ``'torchreid'``.
    """

    def __init__(self, datamanager, model, optimizer, scheduler=None, use_gpu=True,
                 label_smooth=True, evaluator='alfo'):
        super().__init__(datamanager, model, optimizer, scheduler=scheduler,
                         use_gpu=use_gpu, label_smooth=label_smooth)
        self.evaluator = evaluator
        self.save_dir = 'log'
        self.results = {}  # target name -> {'rank1', 'mAP', 'cmc', ...} of the last test
        self._epoch_sums = {}

    def run(self, save_dir='log', **kwargs):
        """torchreid's ``Engine.run``; remembers ``save_dir`` for the per-epoch checkpoint."""
        self.save_dir = save_dir
        return super().run(save_dir=save_dir, **kwargs)

    # -- training ---------------------------------------------------------
    def train(self, **kwargs):
        """One epoch of torchreid's loop, then the resume checkpoint and history line."""
        self._epoch_sums = {}
        start = time.time()
        super().train(**kwargs)
        record = {'epoch': self.epoch + 1, 'lr': self.get_current_lr(),
                  'epoch_time': time.time() - start}
        record.update({k: v / self.num_batches for k, v in self._epoch_sums.items()})
        self._append_history(record)
        self.save_model(self.epoch, rank1=None, save_dir=self.save_dir, latest=True)

    def forward_backward(self, data):
        summary = super().forward_backward(data)
        self._check_finite({'loss': summary['loss']})
        return self._accumulate(summary)

    def _accumulate(self, summary):
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
        os.makedirs(self.save_dir, exist_ok=True)
        with open(osp.join(self.save_dir, HISTORY), 'a') as f:
            f.write(json.dumps(record) + '\n')

    # -- checkpoints ------------------------------------------------------
    def save_model(self, epoch, rank1, save_dir, is_best=False, latest=False):
        """Writes ``<save_dir>/model/model.pth.tar-<epoch+1>`` (or, with
        ``latest``, the per-epoch ``latest.pth.tar``) atomically, with
        torchreid's keys plus RNG state and the model's signature."""
        state = {
            'state_dict': self.model.state_dict(),
            'epoch': epoch + 1,
            'rank1': None if rank1 is None else float(rank1),
            'optimizer': self.optimizer.state_dict(),
            'scheduler': None if self.scheduler is None else self.scheduler.state_dict(),
            'rng': checkpoints.rng_state(),
            'signature': checkpoints.model_signature(self.datamanager.num_train_pids,
                                                     getattr(self.model, 'schema', None)),
        }
        name = checkpoints.LATEST if latest else f'model.pth.tar-{epoch + 1}'
        fpath = osp.join(save_dir, 'model', name)
        checkpoints.save_training_state(state, fpath)
        if is_best:
            checkpoints.save_training_state(state, osp.join(save_dir, 'model', 'model-best.pth.tar'))
        return fpath

    # -- evaluation -------------------------------------------------------
    def test(self, **kwargs):
        """torchreid's re-ID test, with our evaluator and its numbers kept in ``results``."""
        targets = list(self.test_loader.keys())
        with self._recording_evaluator() as records:
            rank1 = super().test(**kwargs)
        for name, (cmc, mAP) in zip(targets, records):
            self.results[name] = {'rank1': float(cmc[0]), 'mAP': float(mAP),
                                  'cmc': [float(c) for c in cmc], 'epoch': self.epoch + 1}
        return rank1

    @contextlib.contextmanager
    def _recording_evaluator(self):
        """Routes torchreid's ``metrics.evaluate_rank`` (called inside
        ``Engine._evaluate``) to the configured evaluator and records its output."""
        original = torchreid.metrics.evaluate_rank
        records = []

        def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, **kwargs):
            distmat = self.ranking_distances(distmat)
            if self.evaluator == 'alfo':
                kwargs.pop('use_cython', None)
                out = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, **kwargs)
            else:
                out = original(distmat, q_pids, g_pids, q_camids, g_camids, **kwargs)
            records.append(out)
            return out

        torchreid.metrics.evaluate_rank = evaluate
        try:
            yield records
        finally:
            torchreid.metrics.evaluate_rank = original

    def ranking_distances(self, distmat):
        """The ``[Q, G]`` distances the evaluator ranks: torchreid's, here."""
        return distmat


class ImageFocalVoteEngine(BaselineEngine):
    """ALFO's engine: identity loss + voted focal attribute loss.

    Args (beyond :class:`BaselineEngine`'s):
        vote_mode, focal, alpha, gamma, id_weight, attr_weight: see
            :class:`alfo_torchreid.losses.ALFOLoss`.
        attr_rerank_weight: above 0, the test ranks by re-ID distance plus this
            weight times the attribute disagreement term of
            :func:`alfo_torchreid.attribute_match.attribute_reranked` (what
            ``tools/search.py --attr-weight`` does); 0 leaves torchreid's
            ranking. torchreid's ``visrank`` still draws torchreid's ranking.

    Every batch must carry ``attrs`` (the ``*_attr`` datasets add it).
    """

    def __init__(self, datamanager, model, optimizer, scheduler=None, use_gpu=True,
                 label_smooth=True, evaluator='alfo', vote_mode='majority', focal=True,
                 alpha=0.5, gamma=2.0, id_weight=1.0, attr_weight=1.0, attr_rerank_weight=0.0):
        super().__init__(datamanager, model, optimizer, scheduler=scheduler, use_gpu=use_gpu,
                         label_smooth=label_smooth, evaluator=evaluator)
        if attr_rerank_weight and not model.local_branch:
            raise ConfigError('test.attr_rerank_weight needs attribute heads: this ALFO has '
                              'no local branch (alfo.local_branch False)')
        self.attr_rerank_weight = attr_rerank_weight
        self.schema = model.schema
        self.criterion = ALFOLoss(
            datamanager.num_train_pids, attribute_logit_widths(self.schema.num_classes),
            id_weight=id_weight, attr_weight=attr_weight, alpha=alpha, gamma=gamma,
            focal=focal, vote_mode=vote_mode, label_smooth=label_smooth,
            use_gpu=self.use_gpu)
        self._attribute_batches = None  # during test(): attribute probabilities per batch

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
        outputs = self.model(imgs)
        out = self.criterion(outputs, pids, attrs)
        parts = {'loss': out.total, 'loss_id': out.id, 'loss_attr': out.attr}
        parts = {k: v for k, v in parts.items() if v is not None}
        self._check_finite(parts)

        self.optimizer.zero_grad()
        out.total.backward()
        self.optimizer.step()

        summary = {k: v.item() for k, v in parts.items()}
        if out.id is not None:
            summary['acc'] = torchreid.metrics.accuracy(outputs.id_logits, pids)[0].item()
        if out.winners is not None:
            self.model.record_votes(out.winners)
            self._log_winners(out.winners)
        return self._accumulate(summary)

    def _log_winners(self, winners):
        if self.writer is None:
            return
        n_iter = self.epoch * self.num_batches + self.batch_idx
        for name, stripe in zip(self.schema.names, winners.tolist()):
            self.writer.add_scalar(f'Vote/{name}', stripe, n_iter)

    # -- evaluation -------------------------------------------------------
    def test(self, **kwargs):
        """torchreid's re-ID test, then attribute metrics on each target's gallery.

        The attribute probabilities come from the same backbone pass as the
        re-ID features (:meth:`extract_features`), not from a second pass.
        """
        measure = self.model.local_branch and not kwargs.get('visrank')
        self._attribute_batches = [] if measure or self.attr_rerank_weight else None
        try:
            rank1 = super().test(**kwargs)
            batches = self._attribute_batches
        finally:
            self._attribute_batches = None
        if measure:
            self._report_attributes(batches)
        return rank1

    def extract_features(self, input):
        """Retrieval features ``[B, D]``; during :meth:`test` also keeps the
        batch's attribute probabilities."""
        if self._attribute_batches is None:
            return self.model(input)
        features, probs = self.model.features_and_attributes(input)
        self._attribute_batches.append([p.cpu() for p in probs])
        return features

    def ranking_distances(self, distmat):
        """torchreid's distances plus, with ``attr_rerank_weight``, the attribute
        term computed from the probabilities kept during this target's query and
        gallery extraction (the last ``Q + G`` rows kept)."""
        if not self.attr_rerank_weight:
            return distmat
        probs = torch.cat([torch.cat(batch, dim=1) for batch in self._attribute_batches])
        num_query, num_gallery = distmat.shape
        probs = probs[len(probs) - num_query - num_gallery:]
        disagreement = attribute_disagreement(probs[:num_query], probs[num_query:], self.schema)
        return attribute_reranked(distmat, disagreement, self.attr_rerank_weight).numpy()

    def _report_attributes(self, batches):
        """Splits the probabilities kept during the test by target and split
        (torchreid extracts each target's query, then its gallery, in order)
        and reports each gallery's attribute metrics."""
        for name, loaders in self.test_loader.items():
            num_query = len(loaders['query'])
            gallery = batches[num_query:num_query + len(loaders['gallery'])]
            batches = batches[num_query + len(loaders['gallery']):]
            self._gallery_attribute_metrics(name, loaders['gallery'].dataset, gallery)

    def _gallery_attribute_metrics(self, name, dataset, batches):
        """Attribute metrics on the gallery images of real identities of ``name``."""
        schema = getattr(dataset, 'schema', None)
        if schema is None or any(n not in self.schema.names for n in schema.names):
            print(f'** No attribute evaluation on {name}: the model lacks its attributes')
            return
        # test loaders keep the dataset's order
        target = torch.from_numpy(np.stack([dataset.image_attrs[item[0]]
                                            for item in dataset.data]))
        real = (target != -1).any(1)  # junk and distractor images carry no attributes
        probs = [torch.cat(columns)[real] for columns in zip(*batches)]
        # in the target's attribute order (a union schema may hold more attributes)
        probs = [probs[self.schema.index(n)] for n in schema.names]
        metrics = attribute_metrics(None, target[real], schema, probs=probs)
        print(f'** Attribute results on {name} (gallery, {int(real.sum())} images) **')
        print(format_attribute_table(metrics))
        self.results.setdefault(name, {})['attributes'] = metrics
        if self.writer is not None:
            self.writer.add_scalar(f'Test/{name}/attr_mA', metrics['mA'], self.epoch)
