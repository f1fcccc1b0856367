"""Searching a gallery by appearance and by attributes.

The re-ID distance is the squared Euclidean distance between retrieval
features (torchreid's ``euclidean`` metric; on L2-normalised features it is
``2 - 2 cos``, the same ranking as its ``cosine`` one). Three backends find
the nearest items:

* ``torch``: exact, a matrix-vector product over the whole gallery picks a
  shortlist, re-scored exactly (:class:`TorchSearch`);
* ``faiss-flat``: exact, FAISS's ``IndexFlatL2`` (the ``faiss`` extra), its
  results re-scored exactly (:class:`FaissSearch`);
* ``faiss-ivfpq``: approximate, FAISS's ``IndexIVFPQ`` for large galleries,
  its shortlist re-scored exactly; the default from
  :data:`AUTO_IVFPQ_ITEMS` images on when FAISS is installed.

Every backend reports the distances of :func:`exact_distances`: ``(g - q)²``
summed in float64 from the float32 features, within a relative ``D * 2**-53``
of the true value. The two exact backends return the true ``k`` nearest items
(ties by row), however close their distances: the fast float32 computations
only choose which items to re-score, with a margin of their rounding error.

:func:`rank_gallery` ranks for one query: only the items whose predicted
attributes meet a ``--where`` filter (FAISS filters inside the search), and
re-ranked by :func:`~alfo_torchreid.evaluation.attribute_match.attribute_reranked` when
an attribute weight is given.
"""
from dataclasses import dataclass

import numpy as np
import torch

from alfo_torchreid.evaluation.attribute_match import (attribute_disagreement, attribute_reranked,
                                                       where_mask)
from alfo_torchreid.utils.errors import SearchError

BACKENDS = ('torch', 'faiss-flat', 'faiss-ivfpq')
ADD_CHUNK = 100000  # rows copied into FAISS at a time (800 MB of 2048-d float32)
IVFPQ_MIN_ITEMS = 10000  # FAISS wants >= 39 * 256 points to train 8-bit PQ codebooks
IVFPQ_REFINE = 10  # IVF-PQ returns this many times the asked-for items, re-scored exactly
FLAT_REFINE = 2  # FAISS's exact search returns at least this many times k, re-scored
RESCORE_CHUNK = 4096  # rows re-scored at a time (64 MB of 2048-d float64)
FLOAT32_UNIT, FLOAT64_UNIT = 2.0 ** -24, 2.0 ** -53  # unit roundoffs
AUTO_IVFPQ_ITEMS = 100000  # where IVF-PQ answers 10x faster than torch (benchmarks/README.md)
MAX_ATTR_WEIGHT = 1000.0  # beyond it the attribute term alone orders the ranking
SCALE_SAMPLE = 20000  # gallery items giving a query's median distance (all of Market's)


def import_faiss():
    """The ``faiss`` module, or a one-line error naming the extra that installs it."""
    try:
        import faiss
    except ImportError:
        raise SearchError('FAISS is not installed: pip install alfo-torchreid[faiss] '
                          '(the faiss-cpu package), or use the torch backend') from None
    return faiss


def default_backend(count):
    """The backend for a gallery of ``count`` items: ``faiss-ivfpq`` from
    :data:`AUTO_IVFPQ_ITEMS` on when FAISS is installed, else ``torch``
    (exact; for one query it is faster than FAISS's exact ``faiss-flat``,
    see benchmarks/README.md)."""
    if count < AUTO_IVFPQ_ITEMS:
        return 'torch'
    try:
        import faiss  # noqa: F401
    except ImportError:
        return 'torch'
    return 'faiss-ivfpq'


def search_settings(backend, count):
    """The settings of ``backend`` for a gallery of ``count`` items
    (IVF-PQ's: :func:`ivfpq_settings`)."""
    if backend not in BACKENDS:
        raise SearchError(f'unknown search backend {backend!r}; expected one of {list(BACKENDS)}')
    if backend == 'torch':
        return {}
    import_faiss()
    if backend == 'faiss-flat':
        return {}
    if count < IVFPQ_MIN_ITEMS:
        raise SearchError(f'faiss-ivfpq is for large galleries (at least {IVFPQ_MIN_ITEMS:,} '
                          f'images; this one has {count:,}): use faiss-flat or torch, both exact')
    return ivfpq_settings(count)


def ivfpq_settings(count):
    """IVF-PQ's settings for ``count`` items: ``nlist = round(sqrt(count))``
    inverted lists, codes of ``m = 64`` bytes (8 bits per sub-vector),
    ``nprobe = 32`` lists visited per query."""
    return {'build': {'nlist': int(round(count ** 0.5)), 'm': 64}, 'nprobe': 32}


def build_ivfpq(features, nlist, m, train_size=None, seed=0):
    """A trained FAISS IVF-PQ index of ``features`` ``[N, D]`` (``D`` divisible
    by ``m``), trained on a random sample of ``train_size`` rows (default
    ``max(64 * nlist, 39 * 256)``, FAISS's advice for the lists and the 8-bit
    codebooks)."""
    faiss = import_faiss()
    num, dim = features.shape
    train_size = train_size or max(64 * nlist, 39 * 256)
    sample = np.sort(np.random.default_rng(seed).permutation(num)[:train_size])
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, m, 8)
    index.cp.seed = seed
    index.train(np.ascontiguousarray(features[sample], dtype=np.float32))
    add_in_chunks(index, features)
    return index


def add_in_chunks(index, features):
    """Adds ``features`` ``[N, D]`` to a FAISS ``index`` :data:`ADD_CHUNK` rows
    at a time, so that a memory-mapped gallery stays on disk."""
    for start in range(0, len(features), ADD_CHUNK):
        index.add(np.ascontiguousarray(features[start:start + ADD_CHUNK], dtype=np.float32))


def rounding_bound(terms, unit):
    """``gamma_n = n u / (1 - n u)``: the relative error bound of a sum or dot
    product of ``terms`` floating-point products with unit roundoff ``unit``,
    in any summation order (Higham, *Accuracy and Stability of Numerical
    Algorithms*, 3.1)."""
    return terms * unit / (1 - terms * unit)


def exact_distances(features, rows, query):
    """Squared Euclidean distances of ``features[rows]`` to ``query`` ``[D]``,
    ``sum((g - q)²)`` in float64 from the float32 values (the query rounded to
    float32 first, as every backend does): no cancellation, so within a
    relative ``rounding_bound(D + 2, 2**-53)`` (5e-13 for D = 2048) of the
    true value.

    Args:
        features: ``[N, D]`` (may be memory-mapped); read :data:`RESCORE_CHUNK` rows at a time.
        rows: ``[M]`` int row numbers.

    Returns:
        ``[M]`` float64.
    """
    query = np.asarray(query, dtype=np.float32).astype(np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty(len(rows))
    for start in range(0, len(rows), RESCORE_CHUNK):
        block = np.asarray(features[rows[start:start + RESCORE_CHUNK]], dtype=np.float64)
        out[start:start + RESCORE_CHUNK] = ((block - query) ** 2).sum(1)
    return out


def by_distance(distances, rows, k):
    """The ``k`` smallest ``distances`` and their ``rows``, nearest first, ties by row."""
    order = np.lexsort((rows, distances))[:k]
    return distances[order], rows[order]


class TorchSearch:
    """Exact nearest neighbours with torch.

    ``|g|² - 2 g·q + |q|²`` over the whole gallery (one float32
    matrix-vector product, torch's default ``highest`` precision) cancels
    badly for unnormalised features: its error reaches ``2 gamma_D |g| |q|``
    (``gamma_D`` = :func:`rounding_bound` of ``D`` float32 terms; 24 for
    2048-d features of norm² 1e5, whose distances are ~700). So it only picks
    the items to re-score: every item whose lower bound (value minus its
    error bound) is at most the ``k``-th smallest upper bound, a set that
    holds the true ``k`` nearest. Those are re-scored by
    :func:`exact_distances`.

    Args:
        features: ``[N, D]`` gallery features, a writable array (float32 and
            C-contiguous ones are used in place).
    """

    def __init__(self, features):
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.norms = torch.linalg.vector_norm(self.features, dim=1, dtype=torch.float64)

    def nearest(self, query, k, allowed=None):
        """The ``k`` gallery rows nearest to ``query`` ``[D]`` among the
        ``allowed`` ones (``[N]`` bool; None: all).

        Returns:
            (squared distances ``[k']`` float64 of :func:`exact_distances`,
            rows ``[k']`` int64), nearest first, ties by row; ``k' < k`` when
            fewer rows are allowed.
        """
        query32 = torch.from_numpy(np.asarray(query, dtype=np.float32))
        query_norm = float(torch.linalg.vector_norm(query32, dtype=torch.float64))
        fast = self.norms ** 2 - 2 * (self.features @ query32).double() + query_norm ** 2
        dim = self.features.shape[1]
        error = (2 * rounding_bound(dim, FLOAT32_UNIT) * self.norms * query_norm
                 + rounding_bound(dim + 3, FLOAT64_UNIT) * (self.norms + query_norm) ** 2)
        if allowed is not None:
            fast[~torch.from_numpy(allowed)] = float('inf')
            k = min(k, int(allowed.sum()))
        k = min(k, len(fast))
        if k == 0:
            return np.empty(0), np.empty(0, dtype=np.int64)
        upper = (fast + error).kthvalue(k).values  # >= the k-th smallest true distance
        shortlist = torch.nonzero(fast - error <= upper).flatten().numpy()
        return by_distance(exact_distances(self.features.numpy(), shortlist, query),
                           shortlist, k)


class FaissSearch:
    """Nearest neighbours with a FAISS index; ``allowed`` rows are filtered
    inside FAISS's search (an ID selector).

    With ``features``, FAISS's results are re-scored by
    :func:`exact_distances`. With ``IndexFlatL2``, whose single-query search
    sums ``(g - q)²`` in float32 (relative error at most ``gamma_{D+2}``,
    :func:`rounding_bound`), more items are asked for until the last one
    returned is beyond that margin of the ``k``-th exact distance: the
    result is then the true ``k`` nearest. IVF-PQ's shortlist of
    ``IVFPQ_REFINE * k`` items is approximate; its re-scoring orders it exactly.

    Args:
        index: a FAISS ``IndexFlatL2`` (exact) or ``IndexIVFPQ`` (approximate).
        features: ``[N, D]`` exact features (may be memory-mapped).
        nprobe: IVF lists visited per query.
    """

    def __init__(self, index, features=None, nprobe=None):
        self.faiss = import_faiss()
        self.index, self.features, self.nprobe = index, features, nprobe
        self.ivf = isinstance(index, self.faiss.IndexIVF)

    @classmethod
    def flat(cls, features):
        faiss = import_faiss()
        index = faiss.IndexFlatL2(features.shape[1])
        add_in_chunks(index, features)
        return cls(index, features)

    def nearest(self, query, k, allowed=None):
        """As :meth:`TorchSearch.nearest` (float32 FAISS distances without ``features``)."""
        faiss = self.faiss
        params = faiss.SearchParametersIVF(nprobe=self.nprobe) if self.ivf \
            else faiss.SearchParameters()
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder='little')  # referenced until the search ends
            params.sel = faiss.IDSelectorBitmap(bitmap)
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        margin = 1 + rounding_bound(query.shape[1] + 2, FLOAT32_UNIT)
        asked = k * (IVFPQ_REFINE if self.ivf else FLAT_REFINE)
        while True:
            asked = min(asked, self.index.ntotal)
            distances, rows = self.index.search(query, asked, params=params)
            found = rows[0] >= 0
            distances, rows = distances[0][found], rows[0][found]
            if self.features is None:
                return distances[:k], rows[:k]
            exact, rows = by_distance(exact_distances(self.features, rows, query[0]), rows,
                                      len(rows))
            if self.ivf or len(rows) < asked or asked == self.index.ntotal or \
                    distances[-1] > exact[min(k, len(rows)) - 1] * margin:
                return exact[:k], rows[:k]
            asked *= 4


def open_search(index):
    """The search object of a :class:`~alfo_torchreid.serving.gallery_index.GalleryIndex`'s backend."""
    if index.backend == 'torch':
        return TorchSearch(np.load(index.file('features')))  # in memory, not mapped
    if index.backend == 'faiss-flat':
        return FaissSearch.flat(index.features)
    faiss = import_faiss()
    with open(index.file('ivfpq'), 'rb') as f:
        ivfpq = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
    return FaissSearch(ivfpq, index.features, index.meta['backend']['nprobe'])


@dataclass
class Hit:
    """One ranked gallery item. ``distance`` orders the ranking: the re-ID
    distance, plus the attribute term when re-ranking."""
    rank: int
    row: int
    path: str
    distance: float
    reid_distance: float
    disagreement: float


def query_scale(features, query):
    """The query's median squared distance to the gallery ``features`` ``[N, D]``
    (``torch.median``), over :data:`SCALE_SAMPLE` evenly spaced items at most:
    the ``s_q`` of :func:`~alfo_torchreid.evaluation.attribute_match.attribute_reranked`."""
    rows = np.unique(np.linspace(0, len(features) - 1, min(len(features), SCALE_SAMPLE))
                     .round().astype(np.int64))
    sample = torch.from_numpy(np.asarray(features[rows], dtype=np.float32))
    query = torch.from_numpy(np.asarray(query, dtype=np.float32))
    return float(((sample - query) ** 2).sum(1).median())


def allowed_items(index, where):
    """``[N]`` bool: the items of ``index`` whose predicted attributes meet the
    conditions ``where`` (:func:`~alfo_torchreid.evaluation.attribute_match.parse_where`);
    None when there are none (every item is allowed)."""
    if not where:
        return None
    return where_mask(where, torch.from_numpy(np.array(index.attributes)), index.schema).numpy()


def allowed_count(index, allowed):
    """How many items of ``index`` the ``allowed`` mask of :func:`allowed_items`
    lets through (all of them when it is None)."""
    return len(index.paths) if allowed is None else int(allowed.sum())


def check_query_settings(top, attr_weight):
    """Refuses a ``top`` below 1 and an ``attr_weight`` outside
    ``[0, MAX_ATTR_WEIGHT]`` (NaN, infinite, or so large that distances overflow)."""
    if not (isinstance(top, int) and top >= 1):
        raise SearchError(f'--top must be an integer >= 1, got {top}')
    if not 0 <= attr_weight <= MAX_ATTR_WEIGHT:  # False for NaN
        raise SearchError(f'--attr-weight must be a number in [0, {MAX_ATTR_WEIGHT:g}] (1 '
                          'weighs a full attribute disagreement as the median distance), got '
                          f'{attr_weight}')


def rank_gallery(index, searcher, query_feature, query_attributes, top=20, allowed=None,
                 attr_weight=0.0):
    """The ``top`` gallery items for one query.

    Args:
        index: a :class:`~alfo_torchreid.serving.gallery_index.GalleryIndex`.
        searcher: its :func:`open_search`.
        query_feature: ``[D]``, as the index stores features (normalised or not).
        query_attributes: ``[K]`` the query's attribute probabilities.
        allowed: ``[N]`` bool, the only items ranked: those whose predicted
            attributes meet a ``--where`` filter (:func:`allowed_items`); None: all.
        attr_weight: in ``[0, MAX_ATTR_WEIGHT]``; above 0, items are ranked by
            the re-ID distance plus ``attr_weight * s_q * A``
            (:func:`attribute_reranked`). The nearest items by re-ID distance
            are re-ranked, more of them until no item left out could enter the
            top (each item's added term is >= 0), so with an exact backend the
            result is that of re-ranking the whole gallery.

    Returns:
        list of :class:`Hit`, best first (fewer than ``top`` when fewer items
        are allowed).
    """
    check_query_settings(top, attr_weight)
    schema = index.schema
    available = allowed_count(index, allowed)
    if available == 0:
        return []
    query_attributes = torch.as_tensor(np.asarray(query_attributes)).reshape(1, -1)
    scale = query_scale(index.features, query_feature) if attr_weight > 0 else 0.0
    pool = top if attr_weight == 0 else max(4 * top, 100)
    while True:
        distances, rows = searcher.nearest(query_feature, pool, allowed)
        disagreement = attribute_disagreement(
            query_attributes, torch.from_numpy(np.asarray(index.attributes[rows])), schema)
        scores = attribute_reranked(torch.from_numpy(distances).reshape(1, -1), disagreement,
                                    attr_weight, scale=[scale])[0].numpy()
        order = np.argsort(scores, kind='stable')[:top]
        complete = pool >= available or len(rows) < pool
        if attr_weight == 0 or complete or distances[-1] >= scores[order[-1]]:
            break
        pool *= 4
    return [Hit(rank, int(rows[i]), index.paths[rows[i]], float(scores[i]), float(distances[i]),
                float(disagreement[0, i])) for rank, i in enumerate(order, 1)]
