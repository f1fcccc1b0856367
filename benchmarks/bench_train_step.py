"""One training step of ALFO against torchreid's resnet50 and pcb_p6, and of
ALFO on the strong baseline against the strong baseline (resnet50_bnneck).

A step is forward + loss + backward + SGD update (+ ALFO's vote tally), on
random images of one size, on the current device (CUDA when present). The
strong cases (``strong_*``) take the strong recipe's loss: label-smoothed
softmax + hard triplet on the feature before the BNNeck + center loss, whose
centers take their own SGD step, on batches of 4 images per identity.

* Step time: all models live in one process and are timed in interleaved
  rounds (model A, B, C, ..., then again), so that drifts of the machine's
  speed hit every model alike; each figure is the median over the rounds.
* Peak memory: each model runs in a fresh subprocess, so that memory cached
  by another model's steps does not count (CPU: the rise of the process's peak
  RSS over its RSS before the first step; CUDA: likewise with
  ``torch.cuda.max_memory_allocated``).

Prints a table of ratios and writes everything to JSON.

Usage::

    python benchmarks/bench_train_step.py [--batch-size 32] [--repeats 5]
    python benchmarks/bench_train_step.py --cases strong_baseline strong_alfo \
        --out benchmarks/results/train_step_strong.json

The stride-1 group (pcb_p6, alfo_s1*, strong_*) runs at --height x --width (128x64);
the stride-2 group (resnet50, alfo_s2*) at --s2-height x --s2-width (256x128),
since a 128-pixel input leaves last stride 2 only 4 rows, too few for 6 stripes.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torchreid

import alfo_torchreid.models as alfo_models
from alfo_torchreid.data.attributes import MARKET_SCHEMA
from alfo_torchreid.engine.center import CenterTerm
from alfo_torchreid.losses import ALFOLoss

NUM_IDS = 751  # Market-1501's training identities

# name -> (torchreid model name or None for ALFO, ALFO keyword arguments, input group).
# The strong cases' names start with STRONG.
# Last stride 2 divides the input height by 32: 6 stripes need >= 6 rows, so the
# stride-2 group runs at its own, taller input (--s2-height; 256 gives 8 rows).
CASES = {
    'resnet50': ('resnet50', {}, 's2'),
    'pcb_p6': ('pcb_p6', {}, 's1'),
    'alfo_s1': (None, {'last_stride': 1}, 's1'),
    'alfo_s1_no_local': (None, {'last_stride': 1, 'local_branch': False}, 's1'),
    'alfo_s2': (None, {'last_stride': 2}, 's2'),
    'alfo_s2_no_local': (None, {'last_stride': 2, 'local_branch': False}, 's2'),
    'strong_baseline': ('resnet50_bnneck', {}, 's1'),
    'strong_alfo': (None, {'last_stride': 1, 'neck': 'bnneck'}, 's1'),
}
STRONG = 'strong_'
IMAGES_PER_ID = 4  # the strong recipe's RandomIdentitySampler
CENTER_WEIGHT, CENTER_LR = 0.0005, 0.5  # BoT's

# (what, numerator, denominator, target: ratio must be <= this)
RATIOS = [
    ('step time', 'alfo_s1', 'alfo_s1_no_local', 1.05),
    ('step time', 'alfo_s2', 'alfo_s2_no_local', 1.05),
    ('step time', 'alfo_s1', 'pcb_p6', 1.00),
    ('step time', 'alfo_s2', 'resnet50', 1.10),
    ('peak memory', 'alfo_s1', 'pcb_p6', 1.00),
    ('step time', 'strong_alfo', 'strong_baseline', 1.02),
]


def input_size(name, args):
    """(height, width) of the images of case ``name``."""
    if CASES[name][2] == 's1':
        return args.height, args.width
    return args.s2_height, args.s2_width


def build_model(name, device):
    """The model of case ``name`` on ``device``, randomly initialised."""
    torchreid_name, alfo_kwargs, _ = CASES[name]
    loss = 'triplet' if name.startswith(STRONG) else 'softmax'
    if torchreid_name:
        model = torchreid.models.build_model(torchreid_name, NUM_IDS, loss=loss,
                                             pretrained=False)
    else:
        model = alfo_models.ALFO(NUM_IDS, MARKET_SCHEMA, **alfo_kwargs)
    return model.to(device)


def build_step(name, args, device):
    """A zero-argument function running one training step of case ``name``."""
    torchreid_name = CASES[name][0]
    batch_size, (height, width) = args.batch_size, input_size(name, args)
    use_gpu = device.type == 'cuda'
    model = build_model(name, device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch_size, 3, height, width, device=device)
    pids = torch.randint(NUM_IDS, (batch_size,), device=device)
    attrs = torch.stack([torch.randint(c, (batch_size,), device=device)
                         for c in MARKET_SCHEMA.num_classes], dim=1)
    if name.startswith(STRONG):
        return strong_step(model, optimizer, images, attrs, device)
    if torchreid_name:
        criterion = torchreid.losses.CrossEntropyLoss(NUM_IDS, use_gpu=use_gpu)

        def loss_of(outputs):
            if isinstance(outputs, (list, tuple)):  # PCB: one logit set per part
                return torchreid.losses.DeepSupervision(criterion, outputs, pids)
            return criterion(outputs, pids)
    else:
        criterion = ALFOLoss(NUM_IDS, model.logit_widths, use_gpu=use_gpu)

        def loss_of(outputs):
            result = criterion(outputs, pids, attrs)
            if result.winners is not None:
                model.record_votes(result.winners)
            return result.total

    def step():
        optimizer.zero_grad()
        loss_of(model(images)).backward()
        optimizer.step()

    return step


def strong_step(model, optimizer, images, attrs, device):
    """A step of the strong recipe: softmax + triplet + center loss, as the
    engines take it (BaselineTripletEngine, ImageFocalVoteEngine)."""
    use_gpu = device.type == 'cuda'
    pids = torch.arange(len(images), device=device) // IMAGES_PER_ID
    center = CenterTerm(NUM_IDS, model.feature_dim, CENTER_WEIGHT, CENTER_LR, use_gpu=use_gpu)
    if isinstance(model, alfo_models.ALFO):
        criterion = ALFOLoss(NUM_IDS, model.logit_widths, use_gpu=use_gpu, triplet_weight=1.0)

        def loss_of(outputs):
            result = criterion(outputs, pids, attrs)
            model.record_votes(result.winners)
            return result.total + center(outputs.features, pids)
    else:
        softmax = torchreid.losses.CrossEntropyLoss(NUM_IDS, use_gpu=use_gpu)
        triplet = torchreid.losses.TripletLoss(margin=0.3)

        def loss_of(outputs):
            logits, features = outputs
            return softmax(logits, pids) + triplet(features, pids) + center(features, pids)

    def step():
        optimizer.zero_grad()
        center.optimizer.zero_grad()
        loss_of(model(images)).backward()
        optimizer.step()
        center.optimizer.step()

    return step


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def time_steps(names, args, device):
    """Median seconds per step of each case, timed in interleaved rounds."""
    steps = {n: build_step(n, args, device) for n in names}
    for step in steps.values():  # warm-up: allocator, kernels, caches
        step()
    times = {n: [] for n in names}
    for _ in range(args.repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {n: {'median_s': statistics.median(t), 'all_s': t} for n, t in times.items()}


def _proc_status_kib(field):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def peak_memory_here(name, args, device):
    """Peak bytes that two training steps of ``name`` add in this process.

    Gradients, optimizer state and activations count; the weights, in memory
    before the first step, do not. CPU: peak RSS during the steps (``VmHWM``,
    reset through ``/proc/self/clear_refs``; Linux) minus RSS before them
    (``ru_maxrss`` would not do: Linux carries it over from the parent
    process). CUDA: peak of ``max_memory_allocated`` minus the allocation before.
    """
    step = build_step(name, args, device)
    if device.type == 'cuda':
        synchronize(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated() - before
    before = _proc_status_kib('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current RSS
    step()
    step()
    return (_proc_status_kib('VmHWM') - before) * 1024


def peak_memory(name, args):
    """:func:`peak_memory_here` of ``name`` in a fresh subprocess."""
    command = [sys.executable, os.path.abspath(__file__), '--memory-of', name,
               '--batch-size', str(args.batch_size), '--height', str(args.height),
               '--width', str(args.width), '--s2-height', str(args.s2_height),
               '--s2-width', str(args.s2_width), '--device', args.device,
               '--threads', str(args.threads)]
    # A fixed mmap threshold makes glibc return every freed tensor to the system
    # at once; its default, self-raising threshold keeps freed memory in the
    # heap, and RSS then varies by several MB between identical runs.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072')
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return int(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--height', type=int, default=128)
    parser.add_argument('--width', type=int, default=64)
    parser.add_argument('--s2-height', type=int, default=256,
                        help='input height of the last-stride-2 cases (resnet50, alfo_s2*)')
    parser.add_argument('--s2-width', type=int, default=128)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='CPU threads (1 gives steadier figures on a busy machine)')
    parser.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      'results', 'train_step.json'))
    parser.add_argument('--memory-of', choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_of:
        print(peak_memory_here(args.memory_of, args, device))
        return

    times = time_steps(args.cases, args, device)
    memory = {n: peak_memory(n, args) for n in args.cases}
    values = {'step time': {n: t['median_s'] for n, t in times.items()},
              'peak memory': memory}
    print(f'device {device} ({torch.get_num_threads()} CPU threads), batch {args.batch_size}, '
          f'median of {args.repeats} steps')
    print(f'{"case":<18}{"input":>9}{"step s":>9}{"peak MiB":>10}')
    for n in args.cases:
        size = 'x'.join(map(str, input_size(n, args)))
        print(f'{n:<18}{size:>9}{times[n]["median_s"]:>9.3f}{memory[n] / 2**20:>10.0f}')
    ratios = []
    for what, num, den, target in RATIOS:
        if num in values[what] and den in values[what]:
            ratio = values[what][num] / values[what][den]
            ratios.append({'what': what, 'numerator': num, 'denominator': den,
                           'ratio': ratio, 'target': target, 'met': ratio <= target})
    print(f'\n{"ratio":<40}{"value":>7}{"target":>8}  met')
    for r in ratios:
        label = f'{r["what"]}: {r["numerator"]} / {r["denominator"]}'
        print(f'{label:<40}{r["ratio"]:>7.3f}{r["target"]:>8.2f}  {"yes" if r["met"] else "NO"}')
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump({'machine': {'device': str(device), 'platform': platform.platform(),
                               'processor': platform.processor(),
                               'cpu_threads': torch.get_num_threads(),
                               'cuda': torch.cuda.get_device_name() if device.type == 'cuda'
                               else None,
                               'torch': torch.__version__},
                   'batch_size': args.batch_size,
                   'input': {n: input_size(n, args) for n in args.cases},
                   'repeats': args.repeats, 'times': times, 'peak_memory_bytes': memory,
                   'ratios': ratios}, f, indent=2)
    print(f'\nwritten {args.out}')


if __name__ == '__main__':
    main()
