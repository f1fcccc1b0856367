"""Images per second of ALFO's training step: processes, precision, memory format.

A step is the engine's own (``ImageFocalVoteEngine.forward_backward``: forward
under autocast, fp32 loss and vote, backward, Adam update, vote tally; under
torchrun with DDP's gradient averaging and the vote's all-reduce) on random
images, Market-1501's 751 identities and 27 attributes.

* Processes (CPU): the same global batch trained by 1 process with 2 threads
  and by 2 gloo processes of 1 thread each (``torchrun --nproc_per_node 2``),
  each case a fresh job, the cases alternated round after round; medians.
* Precision and memory format (the current device, CUDA when present): ALFO
  in fp32, bf16, fp16 (CUDA only), each contiguous and channels-last, against
  torchreid's ``pcb_p6`` fp32 step, all in one process, timed in interleaved
  rounds; medians.

Prints tables of images/s and ratios, and writes everything to JSON.

Usage::

    python benchmarks/bench_scale.py [--batch-size 32] [--rounds 3] [--steps 4]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torchreid

from alfo_torchreid.data.attributes import MARKET_SCHEMA
from alfo_torchreid.engine.engine import BaselineEngine, ImageFocalVoteEngine
from alfo_torchreid.engine.precision import MixedPrecision
from alfo_torchreid.models import ALFO
from alfo_torchreid.utils import distributed

NUM_IDS = 751  # Market-1501's training identities
HERE = os.path.abspath(__file__)


def build_engine(model_name, amp, channels_last, device):
    """The engine of ``model_name`` ('alfo' or 'pcb_p6') on ``device``, with
    its model wrapped in DDP under torchrun."""
    use_gpu = device.type == 'cuda'
    if model_name == 'alfo':
        model = ALFO(NUM_IDS, MARKET_SCHEMA)
    else:
        model = torchreid.models.build_model(model_name, NUM_IDS, pretrained=False)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if distributed.is_initialized():
        model = distributed.wrap(model, use_gpu)
    manager = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=NUM_IDS,
                              sources=[])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    if model_name == 'alfo':
        return ImageFocalVoteEngine(manager, model, optimizer, use_gpu=use_gpu,
                                    precision=MixedPrecision(amp, use_gpu),
                                    channels_last=channels_last)
    return BaselineEngine(manager, model, optimizer, use_gpu=use_gpu)


def random_batch(batch_size, height, width):
    """A training batch of random images, identities and attribute labels (CPU)."""
    return {'img': torch.randn(batch_size, 3, height, width),
            'pid': torch.randint(NUM_IDS, (batch_size,)),
            'attrs': torch.stack([torch.randint(c, (batch_size,))
                                  for c in MARKET_SCHEMA.num_classes], dim=1)}


def timed_steps(engine, batch, steps, device):
    """Seconds of ``steps`` training steps of ``engine`` on ``batch``."""
    engine.model.train()
    engine.epoch = engine.batch_idx = 0
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        engine.forward_backward(batch)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


# -- processes -----------------------------------------------------------------

def worker(args):
    """One job of the processes comparison (plain or under torchrun): prints
    the global images/s of ``args.steps`` steps after one warm-up step."""
    torch.set_num_threads(args.threads)
    device = torch.device('cpu')
    with distributed.process_group(use_gpu=False):
        torch.manual_seed(distributed.rank())
        engine = build_engine('alfo', 'off', False, device)
        batch = random_batch(args.batch_size // distributed.world_size(), args.height,
                             args.width)
        timed_steps(engine, batch, 1, device)
        seconds = timed_steps(engine, batch, args.steps, device)
        seconds = max(distributed.gather_to_main(seconds) or [0])
        if distributed.is_main_process():
            print(json.dumps({'images_per_s': args.batch_size * args.steps / seconds}))


def processes_case(processes, args):
    """Images/s of a fresh job of ``processes`` processes sharing 2 threads."""
    options = ['--worker', '--batch-size', str(args.batch_size), '--height', str(args.height),
               '--width', str(args.width), '--steps', str(args.steps),
               '--threads', str(2 // processes)]
    launcher = [] if processes == 1 else ['-m', 'torch.distributed.run', '--standalone',
                                          '--nproc_per_node', str(processes)]
    env = dict(os.environ, OMP_NUM_THREADS=str(2 // processes))
    out = subprocess.run([sys.executable, *launcher, HERE, *options], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])['images_per_s']


def compare_processes(args):
    """Median images/s of 1 x 2 threads and 2 x 1 thread, alternated per round."""
    measured = {'1 process x 2 threads': [], '2 processes x 1 thread': []}
    for _ in range(args.rounds):
        for processes, name in ((1, '1 process x 2 threads'), (2, '2 processes x 1 thread')):
            measured[name].append(processes_case(processes, args))
    medians = {n: statistics.median(v) for n, v in measured.items()}
    print(f'\nCPU, global batch {args.batch_size} at {args.height}x{args.width}, '
          f'median of {args.rounds} jobs of {args.steps} steps')
    print(f'{"case":<26}{"images/s":>10}')
    for name, value in medians.items():
        print(f'{name:<26}{value:>10.2f}')
    ratio = medians['2 processes x 1 thread'] / medians['1 process x 2 threads']
    print(f'{"ratio 2 x 1 / 1 x 2":<26}{ratio:>10.3f}')
    return {'images_per_s': measured, 'median': medians, 'ratio': ratio}


# -- precision and memory format ----------------------------------------------

def precision_cases(device):
    """(name, model, amp, channels_last) of the current device's cases."""
    amps = ('off', 'bf16', 'fp16') if device.type == 'cuda' else ('off', 'bf16')
    cases = [('pcb_p6 fp32', 'pcb_p6', 'off', False)]
    for amp in amps:
        for channels_last in (False, True):
            name = f'alfo {"fp32" if amp == "off" else amp}{" channels-last" * channels_last}'
            cases.append((name, 'alfo', amp, channels_last))
    return cases


def compare_precision(args):
    """Median images/s of every case of :func:`precision_cases`, interleaved."""
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.set_num_threads(args.threads)
    batch = random_batch(args.batch_size, args.height, args.width)
    engines = {name: build_engine(model, amp, cl, device)
               for name, model, amp, cl in precision_cases(device)}
    for engine in engines.values():
        timed_steps(engine, batch, 1, device)  # warm-up: allocator, kernels, caches
    measured = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            seconds = timed_steps(engine, batch, args.steps, device)
            measured[name].append(args.batch_size * args.steps / seconds)
    medians = {n: statistics.median(v) for n, v in measured.items()}
    base = medians['pcb_p6 fp32']
    print(f'\n{device} ({torch.get_num_threads()} CPU threads), batch {args.batch_size} at '
          f'{args.height}x{args.width}, median of {args.rounds} rounds of {args.steps} steps')
    print(f'{"case":<26}{"images/s":>10}{"x pcb_p6 fp32":>15}')
    for name, value in medians.items():
        print(f'{name:<26}{value:>10.2f}{value / base:>15.3f}')
    return {'device': str(device), 'images_per_s': measured, 'median': medians,
            'ratio_to_pcb_p6_fp32': {n: v / base for n, v in medians.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch-size', type=int, default=32, help='the global batch')
    parser.add_argument('--height', type=int, default=128)
    parser.add_argument('--width', type=int, default=64)
    parser.add_argument('--steps', type=int, default=4, help='timed steps per measurement')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2,
                        help='CPU threads of the precision comparison')
    parser.add_argument('--skip', choices=['processes', 'precision'])
    parser.add_argument('--out', default=os.path.join(os.path.dirname(HERE), 'results',
                                                      'scale.json'))
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    results = {'machine': {'platform': platform.platform(), 'processor': platform.processor(),
                           'cuda': torch.cuda.get_device_name() if torch.cuda.is_available()
                           else None, 'torch': torch.__version__},
               'batch_size': args.batch_size, 'input': [args.height, args.width],
               'steps': args.steps, 'rounds': args.rounds}
    if args.skip != 'processes':
        results['processes'] = compare_processes(args)
    if args.skip != 'precision':
        results['precision'] = compare_precision(args)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'\nwritten {args.out}')


if __name__ == '__main__':
    main()
