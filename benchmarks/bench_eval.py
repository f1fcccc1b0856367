"""Re-ID evaluation: alfo_torchreid.evaluation.metrics.evaluate_rank against torchreid's.

For each problem size (queries x gallery) one synthetic Market-like problem is
built and every evaluator runs on it in interleaved rounds (ours, torchreid's,
ours, ...), so that drifts of the machine's speed hit both alike; each figure
is the median over the rounds, and each speed-up a ratio of two medians of the
same run. torchreid's Python evaluator takes minutes at Market scale, so it
runs fewer rounds at the larger sizes (--torchreid-repeats). Its compiled
(Cython) evaluator is timed too when it is importable.

Also measured: the results agree (largest CMC and mAP difference), how time
grows with the gallery at a fixed number of queries (the exponent of a
power-law fit), and ours' peak memory at the largest size (tracemalloc: the
NumPy allocations made by the call, on top of its inputs).

Prints a table and writes everything to JSON.

Usage::

    python benchmarks/bench_eval.py [benchmarks/results/bench_eval.json] [--quick]
"""
import argparse
import json
import os
import platform
import statistics
import time
import tracemalloc
import warnings

import numpy as np
import torch

with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # torchreid warns when its Cython evaluator is absent
    import torchreid
    TORCHREID_RANK = torchreid.metrics.rank

from alfo_torchreid.evaluation.metrics import evaluate_rank

MARKET = (3368, 15913)  # Market-1501's query and gallery sizes
SIZES = [(500, 2500), (1000, 5000), (2000, 10000), MARKET]
GROWTH_QUERIES = 500
GROWTH_GALLERIES = [2500, 5000, 10000, 15913]
IMAGES_PER_ID = 17
NUM_CAMERAS = 6
DISTRACTOR_FRACTION = 0.18  # Market's gallery: 2,798 junk/distractor images of 15,913


def market_like_problem(num_q, num_g, seed=0, dim=256):
    """A synthetic problem shaped like Market-1501's test split.

    ~17 gallery images per identity spread over up to 6 cameras, 18% of the
    gallery distractors (id -1), queries of the same identities taken by
    cameras that also hold gallery images of them (so each query loses some
    items to the same-camera rule). Distances are squared Euclidean between
    features made of an identity centre, a camera bias and noise, in float32
    as torchreid computes them; the noise gives Rank-1 about 0.93 and mAP
    about 0.7 at Market scale, like a trained ResNet-50.

    Returns:
        (distmat [num_q, num_g] float32, q_pids, g_pids, q_camids, g_camids)
    """
    rng = np.random.default_rng(seed)
    num_real = round(num_g * (1 - DISTRACTOR_FRACTION))
    num_ids = max(num_real // IMAGES_PER_ID, 1)
    id_cameras = [rng.choice(NUM_CAMERAS, rng.integers(2, NUM_CAMERAS + 1), replace=False)
                  for _ in range(num_ids)]
    g_pids = np.concatenate([rng.integers(0, num_ids, num_real),
                             np.full(num_g - num_real, -1)])
    g_camids = np.array([rng.choice(id_cameras[p]) if p >= 0 else rng.integers(NUM_CAMERAS)
                         for p in g_pids])
    q_pids = rng.integers(0, num_ids, num_q)
    q_camids = np.array([rng.choice(id_cameras[p]) for p in q_pids])

    centres = rng.standard_normal((num_ids + 1, dim)).astype(np.float32)
    camera_bias = 0.5 * rng.standard_normal((NUM_CAMERAS, dim)).astype(np.float32)

    def features(pids, camids):
        noise = 1.5 * rng.standard_normal((len(pids), dim)).astype(np.float32)
        return centres[pids] + camera_bias[camids] + noise  # pid -1: a centre of its own

    q_feat, g_feat = torch.from_numpy(features(q_pids, q_camids)), \
        torch.from_numpy(features(g_pids, g_camids))
    distmat = torchreid.metrics.compute_distance_matrix(q_feat, g_feat, 'euclidean').numpy()
    return distmat, q_pids, g_pids, q_camids, g_camids


def evaluators():
    """name -> evaluation function (distmat, q_pids, g_pids, q_camids, g_camids)."""
    found = {
        'ours': evaluate_rank,
        'torchreid_python': lambda *a: TORCHREID_RANK.evaluate_rank(*a, use_cython=False),
    }
    if TORCHREID_RANK.IS_CYTHON_AVAI:
        found['torchreid_cython'] = lambda *a: TORCHREID_RANK.evaluate_rank(*a, use_cython=True)
    return found


def timed(fn, problem):
    start = time.perf_counter()
    result = fn(*problem)
    return time.perf_counter() - start, result


def compare(problem, names, repeats):
    """Interleaved rounds of each evaluator on one problem.

    Args:
        names: evaluators to run.
        repeats: {name: rounds}; an evaluator runs in the first ``repeats[name]``
            rounds only.

    Returns:
        {name: {'seconds': [..], 'median_s', 'cmc', 'mAP'}}
    """
    fns = evaluators()
    runs = {name: {'seconds': []} for name in names}
    for round_idx in range(max(repeats.values())):
        for name in names:
            if round_idx < repeats[name]:
                seconds, (cmc, mAP) = timed(fns[name], problem)
                runs[name]['seconds'].append(seconds)
                runs[name].update(cmc=cmc, mAP=mAP)
    for run in runs.values():
        run['median_s'] = statistics.median(run['seconds'])
    return runs


def agreement(runs, reference='torchreid_python'):
    """Largest |CMC difference| and |mAP difference| of ours against the reference."""
    ours, theirs = runs['ours'], runs[reference]
    return {'max_abs_cmc_diff': float(np.abs(ours['cmc'] - theirs['cmc']).max()),
            'abs_map_diff': abs(ours['mAP'] - float(theirs['mAP']))}


def peak_memory_bytes(problem):
    """Peak NumPy/Python allocation during one call of ours, beyond its inputs."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    evaluate_rank(*problem)
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return peak


def power_law_exponent(sizes, seconds):
    """b of seconds ~ a * size**b, least squares in log-log."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def machine():
    return {'cpu': cpu_name(), 'cpu_cores': os.cpu_count(), 'python': platform.python_version(),
            'numpy': np.__version__, 'torch': torch.__version__,
            'torchreid': getattr(torchreid, '__version__', 'unknown'),
            'torchreid_cython': bool(TORCHREID_RANK.IS_CYTHON_AVAI),
            # Other jobs on the machine slow the long torchreid runs unevenly.
            'load_average_1min_at_start': os.getloadavg()[0]}


def run_sizes(sizes, ours_repeats, torchreid_repeats):
    names = list(evaluators())
    rows = []
    for num_q, num_g in sizes:
        problem = market_like_problem(num_q, num_g)
        reps = {'ours': ours_repeats, 'torchreid_python': torchreid_repeats(num_q * num_g),
                'torchreid_cython': ours_repeats}
        runs = compare(problem, names, reps)
        row = {'queries': num_q, 'gallery': num_g, 'rank1': float(runs['ours']['cmc'][0]),
               'mAP': runs['ours']['mAP'], **agreement(runs)}
        for name in names:
            row[f'{name}_s'] = runs[name]['median_s']
            row[f'{name}_repeats'] = len(runs[name]['seconds'])
            if name != 'ours':
                row[f'speedup_vs_{name}'] = runs[name]['median_s'] / runs['ours']['median_s']
        rows.append(row)
        print_size_row(row, names)
    return rows


def run_growth(galleries, num_q, ours_repeats, torchreid_repeats):
    names = ['ours', 'torchreid_python']
    rows = []
    for num_g in galleries:
        problem = market_like_problem(num_q, num_g, seed=1)
        runs = compare(problem, names, {'ours': ours_repeats,
                                        'torchreid_python': torchreid_repeats(num_q * num_g)})
        rows.append({'queries': num_q, 'gallery': num_g,
                     **{f'{n}_s': runs[n]['median_s'] for n in names}})
        print(f'  gallery {num_g:>6}: ours {rows[-1]["ours_s"]:.4f} s, '
              f'torchreid {rows[-1]["torchreid_python_s"]:.3f} s', flush=True)
    g = [r['gallery'] for r in rows]
    return {'rows': rows,
            'exponent_ours': power_law_exponent(g, [r['ours_s'] for r in rows]),
            'exponent_torchreid_python': power_law_exponent(
                g, [r['torchreid_python_s'] for r in rows])}


def print_size_row(row, names):
    cells = [f'{row["queries"]:>6} x {row["gallery"]:<6}', f'{row["ours_s"]:9.4f}']
    for name in names[1:]:
        cells += [f'{row[f"{name}_s"]:9.3f}', f'{row[f"speedup_vs_{name}"]:8.0f}x']
    cells += [f'{row["max_abs_cmc_diff"]:.1e}', f'{row["abs_map_diff"]:.1e}',
              f'{100 * row["rank1"]:5.1f}', f'{100 * row["mAP"]:5.1f}']
    print('  '.join(cells), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', nargs='?', default='benchmarks/results/bench_eval.json')
    parser.add_argument('--quick', action='store_true',
                        help='small sizes and one round each: a smoke test, not a measurement')
    parser.add_argument('--repeats', type=int, default=7, help='rounds of ours (and Cython)')
    args = parser.parse_args()

    if args.quick:
        sizes, galleries, growth_q, repeats = [(100, 500), (200, 1000)], [500, 1000], 100, 1
        torchreid_repeats = lambda entries: 1
    else:
        sizes, galleries, growth_q, repeats = SIZES, GROWTH_GALLERIES, GROWTH_QUERIES, args.repeats
        # torchreid's Python evaluator: ~110 s at Market scale on 2 cores.
        torchreid_repeats = lambda entries: 5 if entries <= 2e6 else 3 if entries <= 6e6 else 1

    info = machine()
    cython = 'yes' if info['torchreid_cython'] else 'not importable'
    print(f'CPU: {info["cpu"]} ({info["cpu_cores"]} cores); numpy {info["numpy"]}, '
          f'torch {info["torch"]}, torchreid {info["torchreid"]}, '
          f'torchreid Cython evaluator: {cython}; '
          f'load average {info["load_average_1min_at_start"]:.1f}')
    header = ['   queries x gallery', '  ours (s)']
    for name in list(evaluators())[1:]:
        header += [f'{name} (s)', 'speed-up']
    print('  '.join(header + ['max|dCMC|', '|dmAP|', 'R1(%)', 'mAP(%)']))
    sizes_rows = run_sizes(sizes, repeats, torchreid_repeats)

    print(f'Time against gallery size ({growth_q} queries):')
    growth = run_growth(galleries, growth_q, repeats, torchreid_repeats)
    print(f'  time ~ gallery^b: b = {growth["exponent_ours"]:.2f} (ours), '
          f'{growth["exponent_torchreid_python"]:.2f} (torchreid Python)')

    largest = sizes[-1]
    peak = peak_memory_bytes(market_like_problem(*largest))
    distmat_bytes = largest[0] * largest[1] * 4
    print(f'Peak memory of ours at {largest[0]} x {largest[1]}: {peak / 2**20:.1f} MiB '
          f'({peak / distmat_bytes:.3f} x the float32 distance matrix it reads)')

    info['load_average_1min_at_end'] = os.getloadavg()[0]
    results = {'machine': info, 'sizes': sizes_rows, 'growth_with_gallery': growth,
               'peak_memory': {'queries': largest[0], 'gallery': largest[1],
                               'peak_bytes': peak, 'distmat_bytes': distmat_bytes,
                               'ratio_to_distmat': peak / distmat_bytes},
               'quick': args.quick}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
