"""Re-ID ranking metrics (CMC, mAP) and pedestrian attribute metrics.

:func:`evaluate_rank` is a drop-in replacement for
``torchreid.metrics.evaluate_rank`` that returns the numbers of torchreid's
Python evaluator a few hundred times faster. A query's average precision needs
only the ranks of its true matches, and its CMC only the first of them; the
rank of a true match is one plus the number of valid gallery items ordered
before it. Those counts come from sorting the values of each distance row
(``np.sort``, SIMD-fast, no index bookkeeping) and one binary search per true
match, a small chunk of queries at a time.

:func:`attribute_metrics` computes the attribute results the engine reports:
per-attribute accuracy, mA, instance-level accuracy/precision/recall/F1 and the
annotators' group accuracy.
"""
import math
import warnings

import numpy as np

from alfo_torchreid.data.attributes import UNKNOWN

# Queries are processed in chunks of about this many distance entries: the
# sorted copy of a chunk (1 MB in float32) stays in the CPU's cache while its
# rows are searched, and memory stays bounded whatever the matrix size.
_CHUNK_ENTRIES = 1 << 18
_CUHK03_REPEATS = 10


# --------------------------------------------------------------------------
# Re-ID ranking
# --------------------------------------------------------------------------

def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50,
                  use_metric_cuhk03=False):
    """CMC curve and mAP under the Market-1501 protocol, as torchreid computes them.

    Same signature and numbers as ``torchreid.metrics.evaluate_rank`` with
    ``use_cython=False``: for each query, the gallery items of the same identity
    taken by the same camera are removed; a query with no remaining item of its
    identity is skipped; CMC and AP are averaged over the remaining queries.

    Ties: torchreid ranks a row with ``np.argsort(distmat, axis=1)``, whose
    default kind is not stable, so the order of equal distances is whatever that
    implementation produces (it depends on the CPU's SIMD sort). Without ties
    the ranks of the true matches do not depend on the sort, and they are
    counted directly. Ties matter only when a true match and a valid non-match
    have equal distance (ties among true matches, or with removed items, do not
    change CMC or AP); such rows, and rows containing NaN, are detected and
    ranked with the very same ``np.argsort`` call on the same values and dtype,
    so the tie order is torchreid's by construction.

    Gallery smaller than ``max_rank``: like torchreid, a warning is issued and
    the curve has the gallery's length. Where a query's valid gallery is shorter
    than ``max_rank`` (torchreid then builds a ragged array and fails), the
    curve of that query stays at 1 beyond its last item, as its match was found.

    Args:
        distmat (numpy.ndarray or torch.Tensor): distances, shape
            ``[num_query, num_gallery]``; smaller is closer. Any real dtype;
            values are compared in that dtype.
        q_pids, q_camids (numpy.ndarray): identities and cameras of the
            queries, shape ``[num_query]``.
        g_pids, g_camids (numpy.ndarray): identities and cameras of the
            gallery, shape ``[num_gallery]``.
        max_rank (int): length of the CMC curve.
        use_metric_cuhk03 (bool): CUHK03's single-gallery-shot CMC (one random
            gallery image per identity, 10 repeats). torchreid's version uses
            ``np.bool``, gone in NumPy 2; this one is its algorithm with the
            same calls to NumPy's global random state, so after the same
            ``np.random.seed`` the curve is identical. It loops over queries in
            Python and is not fast. mAP is the same as without it.

    Returns:
        tuple: ``(cmc, mAP)``; ``cmc`` is a float32 array, ``cmc[r]`` the
        fraction of valid queries with a true match within the first ``r + 1``
        ranks, of length ``min(max_rank, num_gallery)`` (with
        ``use_metric_cuhk03``, ``min(max_rank, gallery identities)`` as in
        torchreid); ``mAP`` a float in [0, 1].

    Raises:
        ValueError: inputs of inconsistent shapes, an empty matrix, or no query
            with a true match in the gallery.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_rank_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        warnings.warn(f'number of gallery samples is quite small, got {num_g}; '
                      f'the CMC curve has {num_g} ranks instead of {max_rank}')
        max_rank = num_g

    average_precision = np.empty(num_q)
    first_rank = np.empty(num_q, dtype=np.int64)
    num_matches = np.empty(num_q, dtype=np.int64)
    gallery = _GalleryByIdentity(g_pids, g_camids)
    rows_per_chunk = max(1, _CHUNK_ENTRIES // num_g)
    for start in range(0, num_q, rows_per_chunk):
        chunk = slice(start, start + rows_per_chunk)
        ranks, counts = _match_ranks(distmat[chunk], q_pids[chunk], q_camids[chunk], gallery)
        average_precision[chunk] = _average_precision(ranks, counts)
        first_rank[chunk] = ranks[:, 0] if ranks.shape[1] else 0
        num_matches[chunk] = counts

    valid = num_matches > 0
    if not valid.any():
        raise ValueError(
            f'none of the {num_q} queries has a true match in the gallery (an item of '
            'the same identity from another camera); cannot compute CMC and mAP')
    if use_metric_cuhk03:
        cmc = _cuhk03_cmc(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    else:
        cmc = _cmc_from_first_ranks(first_rank[valid], max_rank)
    return cmc, float(np.mean(average_precision[valid]))


def _check_rank_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    distmat = _to_numpy(distmat)
    if distmat.ndim != 2 or distmat.size == 0:
        raise ValueError('distmat must be a non-empty 2-D array [num_query, num_gallery], '
                         f'got shape {distmat.shape}')
    if distmat.dtype.kind not in 'fiu':
        raise ValueError(f'distmat must hold real numbers, got dtype {distmat.dtype}')
    num_q, num_g = distmat.shape
    arrays = []
    for name, values, expected in (('q_pids', q_pids, num_q), ('g_pids', g_pids, num_g),
                                   ('q_camids', q_camids, num_q),
                                   ('g_camids', g_camids, num_g)):
        values = _to_numpy(values).reshape(-1)
        if len(values) != expected:
            raise ValueError(f'{name} has {len(values)} entries but distmat of shape '
                             f'{distmat.shape} needs {expected}')
        arrays.append(values)
    if int(max_rank) < 1:
        raise ValueError(f'max_rank must be at least 1, got {max_rank}')
    return (distmat, *arrays)


class _GalleryByIdentity:
    """Gallery indices grouped by identity, to find a query's same-id items fast."""

    def __init__(self, g_pids, g_camids):
        self.pids = g_pids
        self.camids = g_camids
        self.order = np.argsort(g_pids, kind='stable')
        self.sorted_pids = g_pids[self.order]

    def same_identity(self, q_pids):
        """Gallery items sharing each query's identity.

        Returns:
            ``(rows, cols)``: int arrays over all pairs, ``rows`` ascending,
            query row within ``q_pids`` and gallery column.
        """
        start = np.searchsorted(self.sorted_pids, q_pids, side='left')
        count = np.searchsorted(self.sorted_pids, q_pids, side='right') - start
        rows = np.repeat(np.arange(len(q_pids)), count)
        offset_in_row = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
        cols = self.order[np.repeat(start, count) + offset_in_row]
        return rows, cols


def _match_ranks(dist, q_pids, q_camids, gallery):
    """Rank of every true match of each query, among that query's valid gallery.

    Args:
        dist: distances of a chunk of queries, ``[B, G]``.
        q_pids, q_camids: their identities and cameras, ``[B]``.
        gallery: the gallery's :class:`_GalleryByIdentity`.

    Returns:
        ``(ranks, counts)``: ``ranks[i, k]`` is the 1-based position of query
        ``i``'s ``k``-th true match in its ranked valid gallery (ascending along
        ``k``; entries ``k >= counts[i]`` are padding), ``counts[i]`` its number
        of true matches.
    """
    rows, cols = gallery.same_identity(q_pids)
    is_match = gallery.camids[cols] != q_camids[rows]
    matches, counts = _padded_sorted(
        rows[is_match], dist[rows[is_match], cols[is_match]], len(dist))

    # The valid gallery items that are not matches are exactly those of other
    # identities: push the query's own identity to the end and sort each row.
    others = dist.copy()
    others[rows, cols] = _largest(dist.dtype)
    others.sort(axis=1)
    closer = np.stack([np.searchsorted(row, row_matches)
                       for row, row_matches in zip(others, matches)])
    k = np.arange(matches.shape[1])
    ranks = 1 + closer + k  # ties among matches do not change CMC or AP

    # A non-match as close as a match: the result depends on the tie order.
    next_other = np.take_along_axis(others, np.minimum(closer, others.shape[1] - 1), axis=1)
    tied = ((next_other == matches) & (k < counts[:, None])).any(axis=1)
    if dist.dtype.kind == 'f':
        tied |= np.isnan(others[:, -1]) | np.isnan(matches).any(axis=1)  # sort puts NaN last
    if tied.any():
        ranks[tied] = _match_ranks_by_argsort(
            dist[tied], q_pids[tied], q_camids[tied], gallery, matches.shape[1])
    return ranks, counts


def _padded_sorted(rows, values, num_rows):
    """Per-row ascending values, padded at the end with the dtype's largest value.

    Returns:
        ``(padded [num_rows, K], counts [num_rows])``; K is the longest row
        (0 when there are no values).
    """
    counts = np.bincount(rows, minlength=num_rows)
    order = np.lexsort((values, rows))
    rows, values = rows[order], values[order]
    position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    padded = np.full((num_rows, counts.max(initial=0)), _largest(values.dtype), values.dtype)
    padded[rows, position] = values
    return padded, counts


def _largest(dtype):
    return np.inf if dtype.kind == 'f' else np.iinfo(dtype).max


def _match_ranks_by_argsort(dist, q_pids, q_camids, gallery, width):
    """:func:`_match_ranks` by torchreid's own ordering, ``np.argsort(dist, axis=1)``.

    Used for rows whose result depends on the order of tied distances.
    Returns ``ranks [B, width]`` (padding 0).
    """
    order = np.argsort(dist, axis=1)
    same_id = gallery.pids[order] == q_pids[:, None]
    same_cam = gallery.camids[order] == q_camids[:, None]
    removed = same_id & same_cam
    match = same_id & ~same_cam
    position_among_kept = np.cumsum(~removed, axis=1)
    rows, cols = np.nonzero(match)  # row-major: ascending position within a row
    counts = np.bincount(rows, minlength=len(dist))
    k = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    ranks = np.zeros((len(dist), width), dtype=np.int64)
    ranks[rows, k] = position_among_kept[rows, cols]
    return ranks


def _average_precision(ranks, counts):
    """AP of each query from the ranks of its true matches (0 with no match)."""
    k = np.arange(1, ranks.shape[1] + 1)
    precision_at_match = np.where(k <= counts[:, None], k / np.maximum(ranks, 1), 0.0)
    return precision_at_match.sum(axis=1) / np.maximum(counts, 1)


def _cmc_from_first_ranks(first_rank, max_rank):
    """CMC curve (float32, like torchreid) from each valid query's first match rank."""
    hits = np.bincount(np.minimum(first_rank, max_rank + 1) - 1, minlength=max_rank + 1)
    return np.cumsum(hits[:max_rank]).astype(np.float32) / np.float32(len(first_rank))


def _cuhk03_cmc(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid's single-gallery-shot CMC, with the same calls to NumPy's RNG."""
    curves = []
    for q_idx in range(len(distmat)):
        ranked = np.argsort(distmat[q_idx])  # the order of torchreid's row-wise argsort
        keep = ~((g_pids[ranked] == q_pids[q_idx]) & (g_camids[ranked] == q_camids[q_idx]))
        kept_pids = g_pids[ranked][keep]
        is_match = kept_pids == q_pids[q_idx]
        if not is_match.any():
            continue
        positions_by_pid = {}
        for position, pid in enumerate(kept_pids):
            positions_by_pid.setdefault(pid, []).append(position)
        curve = np.zeros(min(max_rank, len(positions_by_pid)), dtype=np.float32)
        for _ in range(_CUHK03_REPEATS):
            sampled = np.zeros(len(kept_pids), dtype=bool)
            for positions in positions_by_pid.values():
                sampled[np.random.choice(positions)] = True
            found = np.minimum(np.cumsum(is_match[sampled]), 1)
            curve += found[:max_rank].astype(np.float32)
        curves.append(curve / _CUHK03_REPEATS)
    # Every valid query keeps all gallery identities (its own through its
    # matches), so the curves have one length: min(max_rank, identities).
    return np.stack(curves).sum(axis=0) / np.float32(len(curves))


def _to_numpy(values):
    """A NumPy array from an array-like or a (possibly CUDA) tensor."""
    if hasattr(values, 'detach'):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


# --------------------------------------------------------------------------
# Pedestrian attributes
# --------------------------------------------------------------------------

def attribute_metrics(pred, target, schema, probs=None):
    """Attribute recognition results: per attribute, per instance and per group.

    Args:
        pred (array-like or None): predicted 0-based labels ``[N, m]`` in the
            schema's order; None to derive them from ``probs`` (argmax of each
            attribute's class probabilities; a binary attribute given as
            P(yes) is positive when P(yes) > 0.5).
        target (array-like): true 0-based labels ``[N, m]``; ``UNKNOWN`` (-1)
            marks an unknown label, left out of every metric that uses that
            attribute.
        schema (AttributeSchema): the attributes' names, classes and colour
            groups.
        probs (optional): the class probabilities the predictions come from;
            either a float array ``[N, m]`` of P(yes) (columns of multi-class
            attributes are ignored), or a sequence of ``m`` arrays, each ``[N]``
            (P(yes) of a binary attribute) or ``[N, num_classes]``. They decide
            the predicted colour of a colour group. Without them the group's
            argmax runs over the hard labels: the first colour predicted
            positive, or the group's first colour when none is.

    Returns:
        dict, fractions in [0, 1]:

        - ``accuracy``: ``{name: fraction of known labels predicted right}``.
        - ``balanced_accuracy``: ``{name: mean recall over the classes present
          in the target}``: (TP/P + TN/N)/2 for a binary attribute (docs/method.md's
          mA term; only the present term when P or N is 0), the mean per-class
          recall for a multi-class one (Market's age).
        - ``mean_accuracy``: the mean accuracy over attributes.
        - ``mA``: the mean balanced accuracy over the attributes whose known
          labels hold at least two classes.
        - ``mA_excluded``: the attributes left out of ``mA`` because their known
          labels hold one class only (no one wears a hat in a small gallery):
          their balanced accuracy is that class's recall, 100 % for a constant
          predictor, which would lift mA without telling anything. As FastAttr
          leaves them out; their balanced accuracy is still reported.
        - ``num_classes``: ``{name: classes}``, the schema's (a uniform random
          guess has balanced accuracy ``1 / classes``: chance).
        - ``instance_accuracy``, ``instance_precision``, ``instance_recall``,
          ``instance_f1``: over the binary attributes with a known label, per
          sample |P and G| / |P or G|, |P and G| / |P| and |P and G| / |G| (P:
          the attributes predicted positive, G: those truly positive),
          averaged over the samples with a known binary label; a ratio 0/0
          counts as 1 (the sample made no error of that kind). F1
          is 2PR/(P+R) of the averaged precision and recall, as in Li et al.
          (RAP, 2016); Jia et al. (2021) average per-sample F1 instead.
        - ``group_accuracy``: the annotators' protocol: every attribute outside
          a colour group is a group of its own, and each colour group is one
          prediction, the argmax of its colours. A group is scored on the
          samples whose colours of that group are all known and at least one
          positive; the prediction is right when the predicted colour is one
          of the sample's positive colours (23 DukeMTMC-attribute test
          identities have two or three lower-body colours: any of them counts).
          On Market-1501 these are the 12 groups of the
          annotators (gender, hair, age, up, down, clothes, hat, backpack, bag,
          handbag, upper and lower colour); on DukeMTMC the 10 of Lin et al.
        - ``mean_group_accuracy``: their mean.

        An attribute or group without any known label gives NaN and is left out
        of the means.
    """
    target = _to_numpy(target).astype(np.int64)
    class_probs = None if probs is None else _class_probabilities(probs, schema, len(target))
    if pred is None:
        pred = _labels_from_probabilities(class_probs, schema)
    pred = _to_numpy(pred).astype(np.int64)
    _check_attribute_inputs(pred, target, schema)

    accuracy, balanced = {}, {}
    for a, name in enumerate(schema.names):
        known = target[:, a] != UNKNOWN
        accuracy[name] = _mean(pred[known, a] == target[known, a])
        balanced[name] = _balanced_accuracy(pred[known, a], target[known, a],
                                            schema.num_classes[a])
    excluded = single_class_attributes(target, schema)
    metrics = {'accuracy': accuracy, 'balanced_accuracy': balanced,
               'mean_accuracy': _mean(list(accuracy.values())),
               'mA': _mean([b for name, b in balanced.items() if name not in excluded]),
               'mA_excluded': excluded,
               'num_classes': dict(zip(schema.names, schema.num_classes))}
    metrics.update(_instance_metrics(pred, target, schema))
    groups = _group_accuracy(pred, target, schema, class_probs, accuracy)
    metrics['group_accuracy'] = groups
    metrics['mean_group_accuracy'] = _mean(list(groups.values()))
    return metrics


def single_class_attributes(target, schema):
    """The names of the attributes whose known labels in ``target`` ``[N, m]``
    hold exactly one class (none known: not listed, their metrics are NaN)."""
    return [name for a, name in enumerate(schema.names)
            if len(np.unique(target[target[:, a] != UNKNOWN, a])) == 1]


def _check_attribute_inputs(pred, target, schema):
    expected = (len(target), len(schema))
    for name, labels in (('pred', pred), ('target', target)):
        if labels.ndim != 2 or labels.shape[1] != len(schema):
            raise ValueError(f'{name} must have shape [N, {len(schema)}] for the '
                             f'{schema.dataset} attributes, got {labels.shape}')
    if pred.shape != expected:
        raise ValueError(f'pred has shape {pred.shape} but target has {target.shape}')
    num_classes = np.asarray(schema.num_classes)
    for name, labels, lowest in (('pred', pred, 0), ('target', target, UNKNOWN)):
        bad = (labels < lowest) | (labels >= num_classes)
        if bad.any():
            row, a = np.argwhere(bad)[0]
            raise ValueError(
                f'{name}[{row}, {a}] = {labels[row, a]} is not a label of attribute '
                f'{schema.names[a]!r}, which has classes 0..{num_classes[a] - 1}'
                + (f' (or {UNKNOWN} for unknown)' if name == 'target' else ''))


def _class_probabilities(probs, schema, num_samples):
    """``probs`` as a list of ``m`` arrays ``[N, C]`` (None where not given)."""
    if hasattr(probs, 'detach') or isinstance(probs, np.ndarray):
        probs = _to_numpy(probs)
        if probs.shape != (num_samples, len(schema)):
            raise ValueError(f'probs given as one array must have shape '
                             f'[{num_samples}, {len(schema)}], got {probs.shape}')
        probs = [probs[:, a] if c == 2 else None for a, c in enumerate(schema.num_classes)]
    if len(probs) != len(schema):
        raise ValueError(f'probs has {len(probs)} entries but {schema.dataset} has '
                         f'{len(schema)} attributes')
    class_probs = []
    for name, values, num_classes in zip(schema.names, probs, schema.num_classes):
        if values is not None:
            values = _to_numpy(values).astype(np.float64)
            if values.ndim == 1 and num_classes == 2:
                values = np.stack([1 - values, values], axis=1)
            if values.shape != (num_samples, num_classes):
                raise ValueError(f'probs of attribute {name!r} must have shape '
                                 f'[{num_samples}, {num_classes}] (or [{num_samples}] '
                                 f'for a binary one), got {values.shape}')
        class_probs.append(values)
    return class_probs


def _labels_from_probabilities(class_probs, schema):
    if class_probs is None:
        raise ValueError('attribute_metrics needs pred or probs')
    missing = [n for n, p in zip(schema.names, class_probs) if p is None]
    if missing:
        raise ValueError(f'cannot derive labels of the multi-class attributes {missing} '
                         'from P(yes) columns: pass pred, or probs as a list with an '
                         '[N, num_classes] array for each of them')
    # argmax keeps the first class on ties: a binary attribute needs P(yes) > 0.5.
    return np.stack([p.argmax(axis=1) for p in class_probs], axis=1)


def _balanced_accuracy(pred, target, num_classes):
    """Mean recall over the classes present in ``target`` (NaN if none)."""
    recalls = [np.mean(pred[target == c] == c) for c in range(num_classes)
               if (target == c).any()]
    return _mean(recalls)


def _instance_metrics(pred, target, schema):
    binary = list(schema.binary)
    known = target[:, binary] != UNKNOWN
    scored = known.any(axis=1)
    if not scored.any():
        return {f'instance_{k}': math.nan for k in ('accuracy', 'precision', 'recall', 'f1')}
    predicted = ((pred[:, binary] == 1) & known)[scored]
    true = ((target[:, binary] == 1) & known)[scored]
    both = (predicted & true).sum(axis=1)
    precision = _ratio(both, predicted.sum(axis=1)).mean()
    recall = _ratio(both, true.sum(axis=1)).mean()
    return {'instance_accuracy': _ratio(both, (predicted | true).sum(axis=1)).mean(),
            'instance_precision': precision, 'instance_recall': recall,
            'instance_f1': 2 * precision * recall / (precision + recall)
            if precision + recall > 0 else 0.0}


def _ratio(numerator, denominator):
    """Per-sample ratio with 0/0 = 1."""
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 1.0).astype(float)


def _group_accuracy(pred, target, schema, class_probs, accuracy):
    groups = {name: accuracy[name] for name in schema.names if name not in schema.colour_members}
    for group, members in schema.colour_groups.items():
        columns = [schema.index(name) for name in members]
        truth = target[:, columns]
        scored = (truth != UNKNOWN).all(axis=1) & (truth == 1).any(axis=1)
        if class_probs is None:
            scores = pred[:, columns]
        else:
            scores = np.stack([class_probs[c][:, 1] for c in columns], axis=1)
        predicted_colour = scores.argmax(axis=1)
        is_positive = np.take_along_axis(truth, predicted_colour[:, None], axis=1)[:, 0] == 1
        groups[group] = _mean(is_positive[scored])
    return groups


def _mean(values):
    """Mean of the non-NaN values, NaN when there are none (no warning)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def format_attribute_table(metrics):
    """The result of :func:`attribute_metrics` as a printable table, in percent;
    the attributes left out of mA are marked ``*``, with a note saying why."""
    excluded = metrics.get('mA_excluded', [])
    lines = [f'{"attribute":<16}{"acc":>8}{"mA":>8}']
    for name, acc in metrics['accuracy'].items():
        lines.append(f'{name:<16}{_percent(acc)}{_percent(metrics["balanced_accuracy"][name])}'
                     + (' *' if name in excluded else ''))
    lines.append(f'{"mean":<16}{_percent(metrics["mean_accuracy"])}{_percent(metrics["mA"])}')
    if excluded:
        lines.append(f'* one class only in the test labels: left out of mA ({len(excluded)} '
                     f'of {len(metrics["accuracy"])} attributes)')
    lines += ['', f'{"instance":<16}{"acc":>8}{"prec":>8}{"recall":>8}{"F1":>8}',
              ' ' * 16 + ''.join(_percent(metrics[f'instance_{k}'])
                                 for k in ('accuracy', 'precision', 'recall', 'f1'))]
    lines += ['', f'{"group":<16}{"acc":>8}']
    lines += [f'{group:<16}{_percent(acc)}' for group, acc in metrics['group_accuracy'].items()]
    lines.append(f'{"mean":<16}{_percent(metrics["mean_group_accuracy"])}')
    return '\n'.join(lines)


def _percent(fraction):
    return f'{100 * fraction:8.2f}'
