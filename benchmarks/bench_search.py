"""Gallery search: latency and memory of exact torch, FAISS flat and FAISS IVF-PQ.

Synthetic galleries of 2048-d re-ID-like features (identities of about ten
images: a centre plus noise) of 10k, 100k and 1M items; queries are new images
of gallery identities. Each backend is the search object ``tools/search.py``
uses (:mod:`alfo_torchreid.serving.search`), asked for one query's top 20 at a time, as
the tool asks; the backends run in interleaved rounds, one query each per
round. Reported per size and backend: median and 95th-percentile latency, also
with half the gallery filtered out (a ``--where``), the ratio to torch's
median, the memory the search structure holds, its build time, and for IVF-PQ
its recall@20 against the exact top 20 at nprobe 8, 32 (the tool's default)
and 128, with the tool's exact re-scoring of the shortlist and without it.

Usage::

    python benchmarks/bench_search.py [--sizes 10000 100000 1000000] [--queries 50]
        [--threads 1] [out.json]

(default output ``benchmarks/results/bench_search.json``; ``--quick``: a smoke
test at toy sizes). 1M items take 8 GiB as float32: galleries over 2 GiB are
written to a file under ``--scratch`` and memory-mapped, so that only the
FAISS flat index's copy of them takes private memory.
"""
import argparse
import json
import os
import os.path as osp
import resource
import statistics
import tempfile
import time

import numpy as np
import torch
from bench_eval import machine

from alfo_torchreid.serving.search import (FaissSearch, TorchSearch, build_ivfpq, import_faiss,
                                           ivfpq_settings)

DIM = 2048
TOP = 20
IMAGES_PER_ID = 10
NPROBES = (8, 32, 128)


def synthetic_gallery(num, num_queries, path=None, seed=0):
    """(gallery ``[num, DIM]``, queries ``[num_queries, DIM]``) float32; the
    gallery in a memory-mapped ``.npy`` at ``path`` when given.

    Identities of about ten images fall into looks of about twenty identities
    (people dressed alike): item = look centre (non-negative, as pooled ReLU
    maps are) + identity offset + image noise, offsets and noise of random
    scales, so that a query's neighbours are at graded distances, as in real
    galleries, rather than all equally far. Queries are fresh images of
    gallery identities.
    """
    rng = np.random.default_rng(seed)
    num_ids = max(num // IMAGES_PER_ID, 1)
    looks = np.abs(rng.standard_normal((max(num_ids // 20, 1), DIM), dtype=np.float32))
    spread = rng.uniform(0.3, 0.8, (num_ids, 1)).astype(np.float32)  # distinct or not
    centres = looks[rng.integers(0, len(looks), num_ids)] + \
        spread * rng.standard_normal((num_ids, DIM), dtype=np.float32)

    def images(count):
        noise = rng.uniform(0.2, 0.6, (count, 1)).astype(np.float32)  # sharp or blurred
        return centres[rng.integers(0, num_ids, count)] + \
            noise * rng.standard_normal((count, DIM), dtype=np.float32)

    gallery = np.empty((num, DIM), dtype=np.float32) if path is None else \
        np.lib.format.open_memmap(path, mode='w+', dtype=np.float32, shape=(num, DIM))
    for start in range(0, num, 50000):  # in chunks: no temporaries of gigabytes
        gallery[start:start + 50000] = images(min(50000, num - start))
    return gallery, images(num_queries)


def latencies(searchers, queries, allowed=None):
    """{name: [seconds per query]}, the searchers interleaved query by query."""
    times = {name: [] for name in searchers}
    for searcher in searchers.values():  # warm-up
        searcher.nearest(queries[0], TOP, allowed)
    for query in queries:
        for name, searcher in searchers.items():
            start = time.perf_counter()
            searcher.nearest(query, TOP, allowed)
            times[name].append(time.perf_counter() - start)
    return times


def recall(searcher, queries, truth):
    """Mean fraction of the exact top 20 that ``searcher`` finds."""
    return float(np.mean([len(set(searcher.nearest(q, TOP)[1]) & set(t)) / TOP
                          for q, t in zip(queries, truth)]))


def summary(seconds):
    ordered = sorted(seconds)
    return {'median_ms': 1000 * statistics.median(ordered),
            'p95_ms': 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


def run_size(num, num_queries, scratch):
    faiss = import_faiss()
    # A large gallery lives in a file's page cache, which the kernel can reclaim,
    # so that it and the FAISS flat index's copy do not both take private memory.
    path = osp.join(scratch, f'bench_search_{num}.npy') if num * DIM * 4 > 2 ** 31 else None
    gallery, queries = synthetic_gallery(num, num_queries, path)
    allowed = np.random.default_rng(1).random(num) < 0.5
    row = {'gallery': num, 'dim': DIM, 'queries': num_queries, 'backends': {}}

    start = time.perf_counter()
    exact = TorchSearch(gallery)  # in place: no copy
    built = {'torch': (exact, time.perf_counter() - start, gallery.nbytes + 4 * num)}
    truth = [exact.nearest(q, TOP)[1] for q in queries]

    start = time.perf_counter()
    flat = FaissSearch.flat(gallery)
    built['faiss-flat'] = (flat, time.perf_counter() - start, 4 * DIM * flat.index.ntotal)

    settings = ivfpq_settings(num)  # also below the tool's IVFPQ_MIN_ITEMS
    start = time.perf_counter()
    ivfpq_index = build_ivfpq(gallery, **settings['build'])
    ivfpq = FaissSearch(ivfpq_index, gallery, settings['nprobe'])
    built['faiss-ivfpq'] = (ivfpq, time.perf_counter() - start,
                            int(faiss.serialize_index(ivfpq_index).nbytes))
    print(f'  {num:>9,} items: built (torch {built["torch"][1]:.1f} s, flat '
          f'{built["faiss-flat"][1]:.1f} s, IVF-PQ {built["faiss-ivfpq"][1]:.1f} s)', flush=True)

    searchers = {name: searcher for name, (searcher, _, _) in built.items()}
    plain, filtered = latencies(searchers, queries), latencies(searchers, queries, allowed)
    for name, (_, build_s, memory) in built.items():
        row['backends'][name] = {'build_s': build_s, 'memory_bytes': memory,
                                 'plain': summary(plain[name]),
                                 'half_filtered': summary(filtered[name])}
    torch_median = row['backends']['torch']['plain']['median_ms']
    for result in row['backends'].values():
        result['speedup_vs_torch'] = torch_median / result['plain']['median_ms']
    row['backends']['faiss-ivfpq'].update(settings)
    row['faiss_flat_recall_at_20'] = recall(flat, queries, truth)
    row['ivfpq_recall_at_20'] = {}
    for nprobe in NPROBES:
        for rescored in (True, False):
            searcher = FaissSearch(ivfpq_index, gallery if rescored else None, nprobe)
            key = f'nprobe={nprobe}' + ('' if rescored else ',no-rescoring')
            row['ivfpq_recall_at_20'][key] = recall(searcher, queries, truth)
    del flat, built, searchers, exact, ivfpq, gallery
    if path:
        os.remove(path)
    return row


def print_row(row):
    for name, result in row['backends'].items():
        print(f'  {row["gallery"]:>9,}  {name:<12} {result["plain"]["median_ms"]:9.2f} '
              f'{result["plain"]["p95_ms"]:9.2f} {result["half_filtered"]["median_ms"]:9.2f} '
              f'{result["speedup_vs_torch"]:8.1f}x {result["memory_bytes"] / 2 ** 20:10.1f} '
              f'{result["build_s"]:8.1f}', flush=True)
    print('  recall@20 ' + ', '.join(f'{k}: {v:.3f}' for k, v in
                                    {'flat': row['faiss_flat_recall_at_20'],
                                     **row['ivfpq_recall_at_20']}.items()), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', nargs='?', default='benchmarks/results/bench_search.json')
    parser.add_argument('--sizes', type=int, nargs='+', default=[10000, 100000, 1000000])
    parser.add_argument('--queries', type=int, default=50)
    parser.add_argument('--quick', action='store_true', help='toy sizes: a smoke test')
    parser.add_argument('--scratch', default=tempfile.gettempdir(),
                        help='folder for the features of galleries over 2 GiB')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch and FAISS threads (one query is memory-bound; on a '
                             'shared machine more threads mostly spin)')
    args = parser.parse_args()
    sizes = [2000, 5000] if args.quick else args.sizes
    torch.set_num_threads(args.threads)
    import_faiss().omp_set_num_threads(args.threads)

    info = machine()
    info.update(faiss=import_faiss().__version__, threads=args.threads)
    print(f'CPU: {info["cpu"]} ({info["cpu_cores"]} cores, {args.threads} thread(s) used); '
          f'torch {info["torch"]}, faiss {info["faiss"]}; '
          f'load average {info["load_average_1min_at_start"]:.1f}')
    print('    gallery  backend      median ms    p95 ms  half-filtered ms  vs torch  '
          'memory MiB  build s')
    rows = []
    for num in sizes:
        rows.append(run_size(num, args.queries, args.scratch))
        print_row(rows[-1])
    info['load_average_1min_at_end'] = os.getloadavg()[0]
    info['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump({'machine': info, 'top': TOP, 'sizes': rows, 'quick': args.quick}, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
