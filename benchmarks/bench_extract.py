"""Feature extraction speed of ALFO against torchreid's resnet50 and pcb_p6.

Eval mode, no gradients: what ``Engine.test`` does for every query and
gallery image. The models run in interleaved rounds in one process (so a drift
of the machine's speed hits all alike); each figure is the median over the
rounds, reported as images per second and as a ratio to resnet50.

Usage::

    python benchmarks/bench_extract.py [--batch-size 64] [--repeats 5]

Same cases and input sizes as ``bench_train_step.py``.
"""
import argparse
import json
import os
import platform
import statistics
import time

import alfo_torchreid  # noqa: F401  (first: silences torchreid's Cython notice)
import torch

from bench_train_step import CASES, build_model, input_size, synchronize


def time_extraction(names, args, device):
    """Median seconds per batch of each case, timed in interleaved rounds."""
    runs = {}
    for name in names:
        model = build_model(name, device).eval()
        images = torch.randn(args.batch_size, 3, *input_size(name, args), device=device)
        runs[name] = (model, images)
    times = {n: [] for n in names}
    with torch.no_grad():
        for model, images in runs.values():  # warm-up
            model(images)
        for _ in range(args.repeats):
            for name, (model, images) in runs.items():
                synchronize(device)
                start = time.perf_counter()
                model(images)
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--height', type=int, default=128)
    parser.add_argument('--width', type=int, default=64)
    parser.add_argument('--s2-height', type=int, default=256)
    parser.add_argument('--s2-width', type=int, default=128)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      'results', 'extract.json'))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    seconds = time_extraction(args.cases, args, device)
    rate = {n: args.batch_size / s for n, s in seconds.items()}
    print(f'Feature extraction, batch {args.batch_size}, {device}, median of {args.repeats}')
    print(f'{"model":<18}{"input":>10}{"images/s":>12}{"vs same-input baseline":>26}')
    baseline = {'s1': 'pcb_p6', 's2': 'resnet50'}
    for name in args.cases:
        base = baseline[CASES[name][2]]
        ratio = f'{rate[name] / rate[base]:.3f} x {base}' if base in rate else '-'
        size = 'x'.join(map(str, input_size(name, args)))
        print(f'{name:<18}{size:>10}{rate[name]:>12.1f}{ratio:>26}')
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump({'machine': {'device': str(device), 'platform': platform.platform(),
                               'cpu_threads': torch.get_num_threads(),
                               'torch': torch.__version__},
                   'batch_size': args.batch_size, 'repeats': args.repeats,
                   'seconds_per_batch': seconds, 'images_per_second': rate}, f, indent=1)
    print(f'written to {args.out}')


if __name__ == '__main__':
    main()
